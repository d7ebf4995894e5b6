//! lucidrains' `denoising-diffusion-pytorch` checkpoints converted natively (by name mapping) run like PyTorch.
//!
//! Fixtures: `tests/fixtures/lucidrains/` made by `python3 tests/fixtures/make_lucidrains_fixtures.py`: a
//! `Trainer.save` file whose EMA weights are moved away from the online ones, a bare `Unet` state dict with
//! learned sinusoidal features and learned variance, a self-conditioned `Unet`, PyTorch's outputs of the (EMA)
//! `Unet` at t = 0, T/2, T − 1. Bounds, relative to the largest reference magnitude: f32 1e-4 (the ops run in f32
//! like PyTorch's; sums in another order differ by a few ulps per op), f16 5e-3 (weights rounded to half:
//! relative error 2^-11 per weight, accumulated over a few layers), int8 0.15 as for imported programs
//! (`onnx.rs`), and within 1.5× the error of the ONNX route's int8 conversion of the same `Unet`.
//! `cargo test -p ddpm-convert --test lucidrains -- --nocapture` prints the measured figures.

use std::path::{Path, PathBuf};

use ddpm_convert::onnx::{convert_onnx, read_onnx, OnnxRequest};
use ddpm_convert::{AlignedBlob, Calibration, ConvertArgs, Converted};
use ddpm_core::format::{BetaSchedule, PredictionType, VarianceType};
use ddpm_core::Precision;

fn fixtures(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lucidrains").join(case)
}

fn trainer_file() -> PathBuf {
    fixtures("trainer").join("model-1.pt")
}

fn args(input: &Path, precision: Precision, sets: &[&str]) -> ConvertArgs {
    ConvertArgs { sets: sets.iter().map(|s| s.to_string()).collect(), ..ConvertArgs::new(input, precision) }
}

fn convert(input: &Path, precision: Precision, sets: &[&str]) -> Converted {
    ddpm_convert::convert_path(&args(input, precision, sets)).unwrap_or_else(|e| panic!("{}: {e}", input.display()))
}

/// An in-memory f32 conversion of `state_dict` at 8×8.
fn request(state_dict: ddpm_convert::StateDict) -> ddpm_convert::Request {
    ddpm_convert::Request {
        state_dict,
        config: None,
        config_overrides: ddpm_convert::parse_overrides(&["sample_size=8".into()]).unwrap(),
        scheduler: None,
        scheduler_overrides: Default::default(),
        precision: Precision::F32,
        calibration: Calibration::default(),
    }
}

fn npy(p: &Path) -> Vec<f32> {
    ddpm_convert::load::read_npy(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).1
}

fn timesteps(case: &str) -> Vec<u32> {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures("cases.json")).expect("cases.json")).expect("json");
    cases[case]["timesteps"].as_array().expect("timesteps").iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

/// The blob's forward at timestep `t` on the case's `x.npy`.
fn forward(blob: &AlignedBlob, case: &str, t: u32) -> Vec<f32> {
    let m = blob.model().expect("valid blob");
    let x = npy(&fixtures(case).join("x.npy"));
    let mut arena = vec![0u8; m.arena_bytes() + 16];
    let mut out = vec![0.0; x.len() * m.out_channels() / m.in_channels()];
    m.forward(&mut arena, &x, t as f32, None, &mut out).expect("forward");
    out
}

/// Largest |blob's forward − PyTorch| over the case's timesteps, and the largest |ref|.
fn error(blob: &[u8], case: &str) -> (f32, f32) {
    let blob = AlignedBlob::from_bytes(blob);
    let (mut err, mut big) = (0.0f32, 0.0f32);
    for t in timesteps(case) {
        let want = npy(&fixtures(case).join(format!("out_{t}.npy")));
        let got = forward(&blob, case, t);
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            err = err.max((a - b).abs());
            big = big.max(b.abs());
        }
    }
    (err, big)
}

#[test]
fn trainer_checkpoint_converts_with_its_ema_weights_like_pytorch() {
    let out = convert(&trainer_file(), Precision::F32, &["sample_size=8"]);
    let notes = out.notes.join("\n");
    assert!(notes.contains("using the EMA weights") && notes.contains("online_model.*) are dropped"), "{notes}");
    assert!(notes.contains("assuming GaussianDiffusion's default pred_v"), "{notes}");
    let (e32, big) = error(&out.blob, "trainer");
    eprintln!("trainer f32: max abs err {e32:.3e} = {:.1e} x max|ref| {big:.3}", e32 / big);
    assert!(big > 0.5 && e32 <= 1e-4 * big, "trainer f32: {e32} > 1e-4 x {big}");
    let (e16, _) = error(&convert(&trainer_file(), Precision::F16, &["sample_size=8"]).blob, "trainer");
    eprintln!("trainer f16: max abs err {e16:.3e} = {:.1e} x max|ref|", e16 / big);
    assert!(e16 <= 5e-3 * big, "trainer f16: {e16} > 5e-3 x {big}");
}

/// The fixture's online weights differ from the EMA ones by ~0.05 per parameter: converting them (`--key
/// model`) misses the EMA outputs by far more than the bound, so the test above fails on the wrong weights.
#[test]
fn the_online_weights_miss_the_ema_outputs() {
    let mut a = args(&trainer_file(), Precision::F32, &["sample_size=8"]);
    a.key = Some("model".into());
    let out = ddpm_convert::convert_path(&a).expect("online weights convert");
    assert!(!out.notes.iter().any(|n| n.contains("EMA weights")), "{:?}", out.notes);
    let (err, big) = error(&out.blob, "trainer");
    eprintln!("trainer, online weights: max abs err {err:.3e} = {:.2} x max|ref|", err / big);
    assert!(err > 1e-2 * big, "the online weights match the EMA outputs: {err}");
}

/// The schedule is the file's: its `betas` as trained betas, 250 steps; the engine's ᾱ from them matches the
/// stored `alphas_cumprod` (both products run in f64; the betas are f32 in both files, and 1 − β is rounded to
/// f32 here, a relative error of 2^-24 per factor: within T·2^-23 relative, or 1e-6 absolute where ᾱ is tiny).
/// The objective defaults to pred_v and follows `--set objective=`; x̂₀ is clipped to [-1, 1] as lucidrains
/// samples.
#[test]
fn schedule_comes_from_the_stored_buffers() {
    let out = convert(&trainer_file(), Precision::F32, &["sample_size=8"]);
    let blob = AlignedBlob::from_bytes(&out.blob);
    let m = blob.model().unwrap();
    let s = m.schedule();
    assert_eq!(s.beta_schedule, BetaSchedule::TrainedBetas);
    assert_eq!(s.num_train_timesteps, 250);
    assert_eq!(s.prediction_type, PredictionType::VPrediction);
    assert!(s.clip_sample && s.clip_sample_range == 1.0);
    assert_eq!(s.variance_type, VarianceType::FixedSmall);
    let (sd, _) = ddpm_convert::load::load_torch(&trainer_file(), None).unwrap();
    let want = &sd.get("ema_model.alphas_cumprod").expect("stored alphas_cumprod").data;
    let mut got = vec![0.0f32; 250];
    ddpm_core::sampler::schedule::alphas_cumprod(&s, m.trained_betas(), &mut got);
    let tol = 250.0 * f32::EPSILON;
    let mut worst = 0.0f32;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-6 + tol * b, "alphas_cumprod[{i}]: {a} vs stored {b}");
        worst = worst.max((a - b).abs());
    }
    eprintln!("alphas_cumprod from the blob vs stored: max abs diff {worst:.3e}");
    for (objective, want) in [("pred_noise", PredictionType::Epsilon), ("pred_x0", PredictionType::Sample)] {
        let set = format!("objective={objective}");
        let out = convert(&trainer_file(), Precision::F32, &["sample_size=8", &set]);
        let pt = AlignedBlob::from_bytes(&out.blob).model().unwrap().schedule().prediction_type;
        assert_eq!(pt, want, "{objective}");
        assert!(!out.notes.iter().any(|n| n.contains("assuming")), "{:?}", out.notes);
    }
}

/// Buffers that contradict each other are an error, not a silent choice.
#[test]
fn inconsistent_schedule_buffers_are_an_error() {
    let (mut sd, _) = ddpm_convert::load::load_torch(&trainer_file(), None).unwrap();
    sd.tensors.get_mut("ema_model.alphas_cumprod").unwrap().data[100] *= 1.01;
    let r = request(sd);
    let e = ddpm_convert::convert(r).unwrap_err().to_string();
    assert!(e.contains("alphas_cumprod[100]"), "{e}");
}

/// A bare `Unet.state_dict()` with learned sinusoidal features (tabulated per timestep) and learned variance
/// (`LearnedGaussianDiffusion`: noise prediction, variance interpolated between β̃ and β).
#[test]
fn bare_unet_with_learned_features_and_variance_matches_pytorch() {
    let input = fixtures("learned").join("unet.pt");
    let out = convert(&input, Precision::F32, &["sample_size=8"]);
    let notes = out.notes.join("\n");
    assert!(notes.contains("no schedule in the file: using DDPMScheduler defaults"), "{notes}");
    let (e32, big) = error(&out.blob, "learned");
    eprintln!("learned f32: max abs err {e32:.3e} = {:.1e} x max|ref| {big:.3}", e32 / big);
    assert!(big > 0.5 && e32 <= 1e-4 * big, "learned f32: {e32} > 1e-4 x {big}");
    let s = AlignedBlob::from_bytes(&out.blob).model().unwrap().schedule();
    assert_eq!((s.prediction_type, s.variance_type), (PredictionType::Epsilon, VarianceType::LearnedRange));
    assert_eq!((s.beta_schedule, s.num_train_timesteps), (BetaSchedule::Linear, 1000));
    let (e16, _) = error(&convert(&input, Precision::F16, &["sample_size=8"]).blob, "learned");
    eprintln!("learned f16: max abs err {e16:.3e} = {:.1e} x max|ref|", e16 / big);
    assert!(e16 <= 5e-3 * big, "learned f16: {e16} > 5e-3 x {big}");
}

/// The ONNX route's conversion of the same EMA `Unet`, with the schedule of the native blob.
fn onnx_blob(precision: Precision) -> Vec<u8> {
    let (sd, _) = ddpm_convert::load::load_torch(&trainer_file(), None).unwrap();
    let betas = &sd.get("ema_model.betas").unwrap().data;
    let mut sched = serde_json::Map::new();
    sched.insert("trained_betas".into(), serde_json::json!(betas));
    sched.insert("num_train_timesteps".into(), betas.len().into());
    sched.insert("prediction_type".into(), "v_prediction".into());
    sched.insert("clip_sample".into(), true.into());
    let out = convert_onnx(OnnxRequest {
        model: read_onnx(&fixtures("trainer").join("unet.onnx")).unwrap(),
        options: Default::default(),
        scheduler: Some(sched),
        scheduler_overrides: Default::default(),
        precision,
        calibration: Calibration::default(),
    })
    .expect("ONNX route");
    out.blob
}

/// The native blob computes what the ONNX route's blob of the same network computes (both run f32 ops in
/// nearly the same order: within 1e-5 × max|out|).
#[test]
fn native_blob_matches_the_onnx_route() {
    let native = AlignedBlob::from_bytes(&convert(&trainer_file(), Precision::F32, &["sample_size=8"]).blob);
    let onnx = AlignedBlob::from_bytes(&onnx_blob(Precision::F32));
    let (mut diff, mut big) = (0.0f32, 0.0f32);
    for t in timesteps("trainer") {
        for (a, b) in forward(&native, "trainer", t).iter().zip(&forward(&onnx, "trainer", t)) {
            diff = diff.max((a - b).abs());
            big = big.max(b.abs());
        }
    }
    eprintln!("trainer f32: native vs ONNX route max abs diff {diff:.3e}, max |out| {big:.3}");
    assert!(diff <= 1e-5 * big, "native vs ONNX: {diff} > 1e-5 x {big}");
}

/// int8: calibrated along sampling trajectories like every other program; within 0.15 × max|ref| (the bound of
/// imported programs) and within 1.5× the ONNX route's int8 error for the same network and schedule (that route
/// tabulates the whole timestep sub-graph in f32, the time MLP and every block's projection of it, where the
/// native program runs those linear layers in int8).
#[test]
fn int8_conversion_is_as_accurate_as_the_onnx_route() {
    let native = convert(&trainer_file(), Precision::Int8, &["sample_size=8"]);
    let (e8, big) = error(&native.blob, "trainer");
    let (onnx, _) = error(&onnx_blob(Precision::Int8), "trainer");
    eprintln!("trainer int8: native {:.3} x max|ref|, ONNX route {:.3} x max|ref|", e8 / big, onnx / big);
    assert!(e8 <= 0.15 * big && e8 <= 1.5 * onnx, "int8: native {e8}, ONNX {onnx}, max|ref| {big}");
}

/// The error of a conversion that must fail (its notes, not the blob, if it succeeds).
fn refusal(input: &Path, sets: &[&str]) -> String {
    match ddpm_convert::convert_path(&args(input, Precision::F32, sets)) {
        Ok(out) => panic!("{} {sets:?} converted: {:?}", input.display(), out.notes),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_variants_and_options_are_errors_naming_them() {
    let e = refusal(&fixtures("selfcond").join("unet.pt"), &["sample_size=8"]);
    assert!(e.contains("self_condition=True") && e.contains("torch.onnx.export"), "{e}");
    let e = refusal(&trainer_file(), &[]);
    assert!(e.contains("--set sample_size="), "{e}");
    let e = refusal(&trainer_file(), &["sample_size=7"]);
    assert!(e.contains("divide by 2"), "{e}");
    let e = refusal(&trainer_file(), &["sample_size=8", "objective=pred_eps"]);
    assert!(e.contains("objective must be"), "{e}");
    let e = refusal(&trainer_file(), &["sample_size=8", "dim=8"]);
    assert!(e.contains("unknown option \"dim\""), "{e}");
    // A tensor the mapping does not know (a variant of the Unet) is named, with the ONNX route.
    let (mut sd, _) = ddpm_convert::load::load_torch(&fixtures("learned").join("unet.pt"), None).unwrap();
    let extra = sd.get("final_conv.bias").unwrap().clone();
    sd.tensors.insert("final_conv.extra".into(), extra);
    let r = request(sd);
    let e = ddpm_convert::convert(r).map(|o| o.notes).unwrap_err().to_string();
    assert!(e.contains("final_conv.extra") && e.contains("torch.onnx.export"), "{e}");
}

/// Tensors of the wrong shape, in any module, are errors naming the tensor (never a panic or an invalid blob).
#[test]
fn malformed_tensors_are_errors_naming_them() {
    let (base, _) = ddpm_convert::load::load_torch(&trainer_file(), None).unwrap();
    let p = "ema_model.model.";
    let cases: [(&str, Vec<usize>); 8] = [
        ("downs.0.2.mem_kv", vec![3, 4, 32, 4]),
        ("downs.1.2.mem_kv", vec![2, 4, 4]),
        ("downs.0.2.to_qkv.weight", vec![96, 8, 1, 1]),
        ("ups.0.0.mlp.1.weight", vec![16, 32]),
        ("mid_attn.to_out.weight", vec![4, 128, 1, 1]),
        ("init_conv.weight", vec![8, 3, 8, 8]),
        ("downs.0.3.1.weight", vec![8, 16, 1, 1]),
        ("final_conv.weight", vec![5, 8, 1, 1]),
    ];
    for (name, shape) in cases {
        let mut sd = base.clone();
        let numel = shape.iter().product();
        sd.tensors.insert(format!("{p}{name}"), ddpm_convert::load::Tensor { shape, data: vec![0.5; numel] });
        let r = request(sd);
        let e = ddpm_convert::convert(r).map(|o| o.notes).unwrap_err().to_string();
        eprintln!("{name}: {e}");
        assert!(!e.contains("internal error"), "{name}: {e}");
    }
    let mut sd = base.clone();
    sd.tensors.get_mut("ema_model.betas").unwrap().data[3] = f32::NAN;
    let r = request(sd);
    let e = ddpm_convert::convert(r).map(|o| o.notes).unwrap_err().to_string();
    assert!(e.contains("alphas_cumprod[3]"), "{e}");
}

/// Older files name the network `denoise_fn` (and an older `Trainer` stored the EMA `GaussianDiffusion` state
/// dict itself under `ema`): the same tensors under those names give the same blob.
#[test]
fn the_old_denoise_fn_prefix_converts_the_same() {
    let (sd, _) = ddpm_convert::load::load_torch(&trainer_file(), None).unwrap();
    let mut old = ddpm_convert::StateDict::default();
    for (k, v) in &sd.tensors {
        if let Some(rest) = k.strip_prefix("ema_model.") {
            let name = rest.strip_prefix("model.").map_or(rest.to_string(), |n| format!("denoise_fn.{n}"));
            old.tensors.insert(name, v.clone());
        }
    }
    assert!(old.tensors.contains_key("denoise_fn.init_conv.weight") && old.tensors.contains_key("betas"));
    let r = request(old);
    let out = ddpm_convert::convert(r).expect("denoise_fn.* converts");
    assert!(out.notes.iter().any(|n| n.contains("the Unet is denoise_fn.*")), "{:?}", out.notes);
    let native = convert(&trainer_file(), Precision::F32, &["sample_size=8"]);
    assert_eq!(out.blob, native.blob);
}
