//! Any bytes given to the ONNX reader and lowering yield a blob or an error, never a panic; a blob it makes
//! passes the target's validator (checked inside the converter, which reports a failure as an internal error,
//! so that text is a finding) and runs a forward pass without failing.
#![no_main]

use ddpm_convert::onnx::{convert_onnx, parse, OnnxRequest};
use ddpm_convert::{AlignedBlob, Calibration};
use ddpm_core::{Precision, RunError};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = parse(data, None) else { return };
    let mut sched = Map::new();
    // Few timesteps keep the timestep tables, and so each run, small.
    sched.insert("num_train_timesteps".into(), Value::from(8));
    let req = OnnxRequest {
        model,
        options: Map::new(),
        scheduler: Some(sched),
        scheduler_overrides: Map::new(),
        precision: Precision::F32,
        calibration: Calibration::default(),
    };
    let out = match convert_onnx(req) {
        Ok(out) => out,
        Err(e) => {
            assert!(!e.to_string().contains("internal error"), "{e}");
            return;
        }
    };
    let blob = AlignedBlob::from_bytes(&out.blob);
    let m = blob.model().expect("the converter checked this blob");
    if m.arena_bytes() > 1 << 26 {
        return;
    }
    let hw = m.height() * m.width();
    let x = vec![0.5f32; m.in_channels() * hw];
    let mut y = vec![0.0f32; m.out_channels() * hw];
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    let class = (m.num_classes() > 0).then_some(0);
    match m.forward(&mut arena, &x, 3.0, class, &mut y) {
        Ok(()) | Err(RunError::TimestepNotInTable { .. }) => {}
        Err(e) => panic!("forward failed: {e}"),
    }
});
