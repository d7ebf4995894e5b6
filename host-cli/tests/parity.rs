//! Parity with diffusers: every fixture model (tests/fixtures/unet/*, made by tests/fixtures/make_fixtures.py
//! from diffusers itself) is converted through the CLI from its own file format and run at several timesteps
//! (and classes); the output must match diffusers' `UNet2DModel(x, t, class_labels).sample`.
//!
//! Bounds (max abs error relative to max |reference|): f32 ≤ 1e-4, f16 ≤ 5e-3. f32 differs from PyTorch only in
//! summation order; f16 adds weight rounding (2^-11 relative per weight). int8 (calibrated here on 2 short
//! trajectories) rounds every activation to 1/127 of its calibrated range (about 0.4 % of it per tensor, ~30
//! tensors deep), so its bound is INT8_TOL, which catches wiring mistakes only; the int8 bounds on a trained
//! model are in `tests/int8.rs`. Measured by `cargo test -p host-cli --test parity -- --nocapture` (prints the
//! error of each fixture).

mod common;

use std::path::Path;

use common::{fixtures, host_cli_ok, read_npy, rel_err};
use serde_json::Value;

const F32_TOL: f32 = 1e-4;
const F16_TOL: f32 = 5e-3;
const INT8_TOL: f32 = 0.3;

/// Converts a fixture model as its case.json says, with `extra` arguments.
fn convert(dir: &Path, case: &Value, precision: &str, out: &Path) -> String {
    let input = dir.join(case["path"].as_str().unwrap());
    // A diffusers pipeline is converted from its root folder, like a user would.
    let input = if case["format"] == "diffusers_pipeline" { dir.to_path_buf() } else { input };
    let mut args: Vec<String> = vec![
        "convert".into(),
        input.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--precision".into(),
        precision.into(),
    ];
    if precision == "int8" {
        args.extend(["--calibration-trajectories", "2", "--calibration-steps", "10"].map(String::from));
    }
    if let Some(c) = case["config"].as_str() {
        args.extend(["--config".into(), dir.join(c).display().to_string()]);
    }
    if let Some(k) = case["key"].as_str() {
        args.extend(["--key".into(), k.into()]);
    }
    if case["config"].is_null() && case["format"] != "diffusers_pipeline" {
        // No config file: give the options that tensors cannot tell, as a user would with --set.
        for k in ["sample_size", "norm_num_groups", "attention_head_dim"] {
            args.push("--set".into());
            args.push(format!("{k}={}", case["expected_config"][k]));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host_cli_ok(&args)
}

/// Runs every case of a converted model and returns the worst relative error.
fn worst_error(dir: &Path, case: &Value, blob: &Path) -> f32 {
    let mut worst = 0f32;
    for c in case["cases"].as_array().unwrap() {
        let t = c["timestep"].to_string();
        let out = blob.with_extension(format!("t{t}.npy"));
        let mut args = vec![
            "forward".to_string(),
            blob.display().to_string(),
            "--input".into(),
            dir.join(c["input"].as_str().unwrap()).display().to_string(),
            "--timestep".into(),
            t,
            "-o".into(),
            out.display().to_string(),
        ];
        if let Some(class) = c["class"].as_u64() {
            args.extend(["--class".into(), class.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host_cli_ok(&args);
        let (shape, got) = read_npy(&out);
        let (ref_shape, want) = read_npy(&dir.join(c["output"].as_str().unwrap()));
        assert_eq!(shape, ref_shape, "{}: output shape", dir.display());
        worst = worst.max(rel_err(&got, &want));
    }
    worst
}

fn check_fixture(name: &str) {
    let dir = fixtures().join("unet").join(name);
    let case: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (precision, tol) in [("f32", F32_TOL), ("f16", F16_TOL), ("int8", INT8_TOL)] {
        let blob = tmp.path().join(format!("{name}-{precision}.blob"));
        convert(&dir, &case, precision, &blob);
        let err = worst_error(&dir, &case, &blob);
        eprintln!("{name} {precision}: max rel error {err:.2e}");
        assert!(err <= tol, "{name} {precision}: relative error {err:.3e} exceeds {tol:.0e}");
    }
    // Alternative files of the same weights (e.g. the same model saved with torch.save and as safetensors).
    if let Some(also) = case.get("also").and_then(Value::as_array) {
        for alt in also {
            let mut alt_case = case.clone();
            alt_case["path"] = alt.get("path").cloned().unwrap_or_else(|| alt.clone());
            alt_case["format"] = alt.get("format").cloned().unwrap_or(case["format"].clone());
            let blob = tmp.path().join(format!("{name}-alt.blob"));
            convert(&dir, &alt_case, "f32", &blob);
            let err = worst_error(&dir, &alt_case, &blob);
            assert!(err <= F32_TOL, "{name} ({alt}): relative error {err:.3e}");
        }
    }
}

#[test]
fn a_ddpm_pipeline_folder() {
    check_fixture("a_ddpm");
}

#[test]
fn b_scale_shift_torch_ema_key_classes() {
    check_fixture("b_scale_shift");
}

#[test]
fn c_old_attention_names_cuda_pickle_inferred_config() {
    check_fixture("c_old_attn");
}

#[test]
fn d_safetensors_mid_attention_without_norm() {
    check_fixture("d_safetensors");
}

#[test]
fn e_f16_checkpoints() {
    check_fixture("e_f16");
}

/// The converter's notes say which state dict it used, and the decoy 'model' weights give other outputs.
#[test]
fn key_selection_is_reported_and_honoured() {
    let dir = fixtures().join("unet/b_scale_shift");
    let case: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("ema.blob");
    let notes = convert(&dir, &case, "f32", &blob);
    assert!(notes.contains("'ema'"), "convert should say it used 'ema': {notes}");
    let mut decoy = case.clone();
    decoy["key"] = "model".into();
    let decoy_blob = tmp.path().join("model.blob");
    let notes = convert(&dir, &decoy, "f32", &decoy_blob);
    assert!(notes.contains("'model'"), "{notes}");
    assert!(worst_error(&dir, &case, &decoy_blob) > 1e-2, "the 'model' weights should not match the 'ema' reference");
}
