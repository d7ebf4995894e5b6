//! Any byte string given to the restricted unpickler yields an object graph or an error, never a panic, and
//! the graph's accessors (the ones the `torch.save` reader uses) stay in bounds on whatever it returns.
#![no_main]

use ddpm_convert::load::unpickle_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = unpickle_bytes(data) else { return };
    let _ = p.type_name(p.root);
    for o in &p.objects {
        let _ = o.type_name();
    }
    if let Some(d) = p.dict(p.root) {
        for &(k, v) in d.entries() {
            let _ = (p.str(k), p.tensor(v), p.dict(v), p.type_name(v));
        }
        let _ = p.dict_get(d, "state_dict");
    }
});
