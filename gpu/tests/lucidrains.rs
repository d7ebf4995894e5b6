//! A lucidrains `denoising-diffusion-pytorch` Trainer checkpoint converted natively (no ONNX) runs on the GPU:
//! the fixture of `tests/fixtures/lucidrains/trainer` (made by `tests/fixtures/make_lucidrains_fixtures.py`), in
//! f32 and f16, against the CPU's exact executor at the fixture's three timesteps, and in f32 against PyTorch's
//! own outputs. Bounds as in `onnx.rs`: 1e-4 × max|ref| (same program and weights, only the order of the sums
//! and the device's exp/sqrt differ); PyTorch parity uses the converter's own bound (`convert/tests/lucidrains.rs`).
//!
//! Without a Vulkan device the test prints a loud SKIPPED line and passes, unless `DDPM_REQUIRE_GPU=1`.

mod common;

use ddpm_convert::{AlignedBlob, ConvertArgs};
use ddpm_core::{Kernels, Precision};
use ddpm_gpu::GpuModel;

use common::{cpu_forward, gpu_device, max_abs, max_diff, workspace};

const FORWARD_TOL: f32 = 1e-4;

#[test]
fn lucidrains_trainer_checkpoint_runs_on_the_gpu() {
    let Some(d) = gpu_device() else { return };
    let dir = workspace().join("tests/fixtures/lucidrains/trainer");
    let npy = |name: &str| ddpm_convert::load::read_npy(&dir.join(name)).unwrap().1;
    let x = npy("x.npy");
    for precision in [Precision::F32, Precision::F16] {
        let args =
            ConvertArgs { sets: vec!["sample_size=8".into()], ..ConvertArgs::new(dir.join("model-1.pt"), precision) };
        let blob = AlignedBlob::from_bytes(&ddpm_convert::convert_path(&args).unwrap().blob);
        let m = blob.model().unwrap().with_kernels(Kernels::Exact);
        let steps = m.schedule().num_train_timesteps;
        let mut g = GpuModel::new(&d, &m, 1).unwrap();
        for t in [0, steps / 2, steps - 1] {
            let got = g.forward(&x, t as f32, None).unwrap();
            let want = cpu_forward(&m, &x, 1, t as f32, None);
            let err = max_diff(&got, &want) / max_abs(&want);
            eprintln!("lucidrains {} t = {t}: max |gpu - cpu| {err:.3e} x max|cpu|", precision.name());
            assert!(err <= FORWARD_TOL, "{} t = {t}: {err:e}", precision.name());
            if precision == Precision::F32 {
                let torch = npy(&format!("out_{t}.npy"));
                let err = max_diff(&got, &torch) / max_abs(&torch);
                eprintln!("lucidrains f32 t = {t}: max |gpu - torch| {err:.3e} x max|torch|");
                assert!(err <= FORWARD_TOL, "t = {t} against PyTorch: {err:e}");
            }
        }
    }
}
