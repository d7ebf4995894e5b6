//! `host-cli compare`: a blob against itself agrees exactly, the shipped f16 MNIST blob is close to the f32 one
//! but not identical, its samples are the ones `host-cli sample` draws, and blobs of different models are
//! refused with one `error:` line.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, host_cli, host_cli_ok};
use serde_json::Value;

fn mnist(precision: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../weights/mnist/mnist-{precision}.blob"))
}

/// Settings small enough for a few seconds.
const SMALL: [&str; 8] = ["-n", "2", "--steps", "10", "--trajectories", "1", "--trajectory-steps", "5"];

/// The arguments of `compare REF OTHER opts --json JSON`.
fn compare_args<'a>(reference: &'a Path, other: &'a Path, opts: &[&'a str], json: &'a Path) -> Vec<&'a str> {
    let mut args = vec!["compare", reference.to_str().unwrap(), other.to_str().unwrap()];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    args
}

/// Runs `compare REF OTHER opts --json` and returns (stdout, the JSON).
fn compare(reference: &Path, other: &Path, opts: &[&str]) -> (String, Value) {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("c.json");
    let args = compare_args(reference, other, opts, &json);
    let out = host_cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "host-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&json).unwrap();
    (stdout, serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{text}")))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a finite number: {v}"))
}

/// The report line starting with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' line in:\n{out}"))
}

#[test]
fn a_blob_agrees_exactly_with_itself() {
    let f32_blob = mnist("f32");
    let (out, j) = compare(&f32_blob, &f32_blob, &SMALL);
    let f = &j["forward"];
    let steps = f["per_step"].as_array().unwrap();
    assert_eq!(steps.len(), 5, "{j}");
    for s in steps {
        assert_eq!(num(&s["rel_rms"]), 0.0, "{s}");
        assert_eq!(num(&s["max_abs"]), 0.0, "{s}");
        assert_eq!(num(&s["cosine"]), 1.0, "{s}");
        assert_eq!(num(&s["bias"]), 0.0, "{s}");
    }
    assert_eq!(num(&f["mean_rel_rms"]), 0.0);
    assert_eq!(num(&f["worst_rel_rms"]), 0.0);
    let s = &j["samples"];
    let images = s["per_image"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{j}");
    for i in images {
        assert_eq!(i["psnr_db"], "inf", "{i}");
        assert_eq!(num(&i["mse"]), 0.0, "{i}");
    }
    assert_eq!(s["mean_psnr_db"], "inf");
    assert_eq!(s["min_psnr_db"], "inf");
    assert_eq!(s["checksum_ref"], s["checksum_other"]);
    assert!(line(&out, "PSNR:").contains("mean inf dB, min inf dB"), "{out}");
    assert!(line(&out, "rel RMS error:").contains("mean 0.000e0"), "{out}");
}

#[test]
fn f16_is_close_to_f32_but_not_identical() {
    let (out, j) = compare(&mnist("f32"), &mnist("f16"), &SMALL);
    assert_eq!(j["reference"]["precision"], "f32");
    assert_eq!(j["other"]["precision"], "f16");
    let f = &j["forward"];
    let (mean, worst) = (num(&f["mean_rel_rms"]), num(&f["worst_rel_rms"]));
    assert!(mean > 0.0 && mean < 1e-2, "mean relative error {mean}");
    assert!(worst >= mean && worst < 5e-2, "worst relative error {worst}");
    // The respaced DDPM trajectory: 5 steps from t = 800 down to t = 0 ("leading" spacing of 1000 steps).
    let ts: Vec<u64> = f["per_step"].as_array().unwrap().iter().map(|s| s["t"].as_u64().unwrap()).collect();
    assert_eq!(ts, [800, 600, 400, 200, 0]);
    for s in f["per_step"].as_array().unwrap() {
        let (rel, cos) = (num(&s["rel_rms"]), num(&s["cosine"]));
        assert!(rel > 0.0 && rel < 5e-2 && cos > 0.99 && cos < 1.0, "{s}");
        assert!(num(&s["max_abs"]) > 0.0, "{s}");
    }
    let s = &j["samples"];
    assert_eq!((s["sampler"].as_str(), s["steps"].as_u64(), s["n"].as_u64()), (Some("ddim"), Some(10), Some(2)));
    let psnr: Vec<f64> = s["per_image"].as_array().unwrap().iter().map(|i| num(&i["psnr_db"])).collect();
    assert_eq!(psnr.len(), 2);
    assert!(psnr.iter().all(|&p| p > 30.0), "PSNR {psnr:?}");
    let (mean, min) = (num(&s["mean_psnr_db"]), num(&s["min_psnr_db"]));
    assert!((mean - (psnr[0] + psnr[1]) / 2.0).abs() < 1e-9 && min == psnr[0].min(psnr[1]), "{s}");
    assert_ne!(s["checksum_ref"], s["checksum_other"]);
    assert!(!line(&out, "PSNR:").contains("inf"), "{out}");
}

/// The samples compared are the ones `host-cli sample` makes with the same options, whatever the thread count.
#[test]
fn samples_are_those_of_host_cli_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("s.png");
    let (_, j) =
        compare(&mnist("f32"), &mnist("f16"), &["--sampler", "ddpm", "--steps", "4", "-n", "3", "--trajectories", "1"]);
    for (blob, key) in [(mnist("f32"), "checksum_ref"), (mnist("f16"), "checksum_other")] {
        let err = host_cli_ok(&[
            "--threads",
            "1",
            "sample",
            blob.to_str().unwrap(),
            "-n",
            "3",
            "--steps",
            "4",
            "-o",
            png.to_str().unwrap(),
        ]);
        let checksum = line(&err, "checksum ").trim_start_matches("checksum ").trim();
        assert_eq!(j["samples"][key], checksum, "{}: {err}", blob.display());
    }
}

/// Asserts that `compare REF OTHER opts --json` exits with status 1, one `error:` line mentioning every needle,
/// and no report or JSON.
fn fails_cleanly(reference: &Path, other: &Path, opts: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("c.json");
    let args = compare_args(reference, other, opts, &json);
    let out = host_cli(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "host-cli {args:?}: expected exit 1, got {:?}: {err}", out.status);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "host-cli {args:?}: expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "host-cli {args:?}: error should mention {n:?}: {err}");
    }
    assert!(out.stdout.is_empty(), "a failed compare printed a report");
    assert!(!json.exists(), "a failed compare wrote {}", json.display());
}

#[test]
fn different_models_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("a.blob");
    host_cli_ok(&["convert", fixtures().join("unet/a_ddpm").to_str().unwrap(), "-o", other.to_str().unwrap()]);
    let needles = ["not the same model", "1 x 28 x 28 -> 1 channels vs 3 x 16 x 16 -> 3 channels"];
    fails_cleanly(&mnist("f32"), &other, &SMALL, &needles);
}

#[test]
fn bad_options_are_refused() {
    let (f32_blob, f16_blob) = (mnist("f32"), mnist("f16"));
    fails_cleanly(&f32_blob, &f16_blob, &["--class", "3"], &["unconditional"]);
    fails_cleanly(&f32_blob, &f16_blob, &["--steps", "5000"], &["--steps 5000"]);
    fails_cleanly(&f32_blob, &f16_blob, &["--trajectory-steps", "0"], &["--trajectory-steps 0"]);
    fails_cleanly(&f32_blob, Path::new("no/such.blob"), &SMALL, &["no/such.blob"]);
}
