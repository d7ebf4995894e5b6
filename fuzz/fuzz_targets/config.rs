//! Any JSON object given to the `UNet2DModel` config reader yields a config or an error, never a panic.
//!
//! The input is a JSON object, read as `config.json` by `UNetConfig::from_json`. Two keys that config files
//! never hold (the reader skips `_`-prefixed keys) also drive the no-config path of `ddpm_convert::convert`:
//! `"_tensors": {name: [dims]}` is a state dict (shapes only, zero data) and `"_sets": ["KEY=VALUE", ...]` the
//! `--set` overrides; the target infers a config from them (`UNetConfig::infer`), applies the overrides and
//! validates the result with `from_json`. A config that validates parses back from its own `json` unchanged.
#![no_main]

use ddpm_convert::diffusers::config::{normalize_names, parse_overrides, UNetConfig};
use ddpm_convert::load::{StateDict, Tensor};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Largest tensor the target materialises (zeros); bigger ones are left out of the state dict.
const MAX_NUMEL: usize = 1 << 12;

fn check(m: &Map<String, Value>) {
    if let Ok(cfg) = UNetConfig::from_json(m) {
        assert_eq!(UNetConfig::from_json(&cfg.json).ok().as_ref(), Some(&cfg), "config does not round-trip");
    }
}

fn state_dict(tensors: &Map<String, Value>) -> StateDict {
    let mut sd = StateDict::default();
    for (name, dims) in tensors {
        let Some(dims) = dims.as_array() else { continue };
        let Some(shape) = dims.iter().map(|d| d.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>() else {
            continue;
        };
        match shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
            Some(n) if n <= MAX_NUMEL => {
                sd.tensors.insert(name.clone(), Tensor { shape, data: vec![0.0; n] });
            }
            _ => {}
        }
    }
    sd
}

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(user)) = serde_json::from_slice::<Value>(data) else { return };
    check(&user);
    let Some(Value::Object(tensors)) = user.get("_tensors") else { return };
    let sets: Vec<String> = match user.get("_sets") {
        Some(Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let Ok(overrides) = parse_overrides(&sets) else { return };
    let mut sd = state_dict(tensors);
    normalize_names(&mut sd);
    let Ok((mut inferred, _note)) = UNetConfig::infer(&sd, &overrides) else { return };
    inferred.extend(overrides);
    check(&inferred);
});
