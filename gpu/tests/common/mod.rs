//! Helpers shared by the GPU integration tests (`parity.rs`, `onnx.rs`): the device or a loud skip, inputs,
//! error measures and the CPU reference forward pass.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ddpm_core::Model;
use ddpm_gpu::Device;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Deterministic pseudo-random inputs in [-1, 1).
pub fn inputs(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / 8_388_608.0 - 1.0
        })
        .collect()
}

pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// The device for GPU tests, or `None` (after a loud message) where there is none and none is required.
pub fn gpu_device() -> Option<Device> {
    match Device::new(std::env::var("DDPM_GPU_DEVICE").ok().as_deref()) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("DDPM_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("DDPM_REQUIRE_GPU=1 but no Vulkan device: {e}");
            }
            // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
            let msg = format!("\n*** SKIPPED (GPU test): {e}\n*** Set DDPM_REQUIRE_GPU=1 to make this a failure.\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            None
        }
    }
}

/// `batch` forward passes of `m` on the CPU at timestep `t`, one sample after another (`x` holds them all).
pub fn cpu_forward(m: &Model<'_>, x: &[f32], batch: usize, t: f32, class: Option<u32>) -> Vec<f32> {
    let (il, ol) = (x.len() / batch, m.out_channels() * m.height() * m.width());
    let mut arena = vec![0u8; m.arena_bytes_unaligned()];
    let mut out = vec![0f32; batch * ol];
    for (xi, oi) in x.chunks(il).zip(out.chunks_mut(ol)) {
        m.forward(&mut arena, xi, t, class, oi).unwrap();
    }
    out
}
