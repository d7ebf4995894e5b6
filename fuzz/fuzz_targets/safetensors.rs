//! Any byte string given to the safetensors reader yields a state dict or an error, never a panic; every
//! tensor it returns holds exactly `shape.iter().product()` elements.
#![no_main]

use ddpm_convert::load::load_safetensors_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = load_safetensors_bytes(data) else { return };
    for (name, t) in &sd.tensors {
        assert_eq!(t.data.len(), t.numel(), "tensor {name}");
    }
});
