//! `host-cli inspect` states what a user sizes a device by: the parameter count equals the checkpoint's
//! (counted independently from the safetensors file), the blob size equals the file's, and the memory plan,
//! FLOPs and schedule lines are present and sane.

mod common;

use common::{fixtures, host_cli_ok};

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("inspect prints no '{name}' line:\n{out}"))
        .trim()
}

fn first_number(s: &str) -> f64 {
    s.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("no number in '{s}'"))
}

#[test]
fn inspect_reports_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("a.blob");
    let dir = fixtures().join("unet/a_ddpm");
    host_cli_ok(&["convert", dir.to_str().unwrap(), "-o", blob.to_str().unwrap(), "--precision", "f16"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host-cli"))
        .args(["inspect", blob.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();

    let sd = ddpm_convert::load::load_safetensors(&dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let params: usize = sd.tensors.values().map(|t| t.data.len()).sum();
    assert_eq!(first_number(field(&out, "parameters")) as usize, params);
    assert_eq!(first_number(field(&out, "blob bytes")) as u64, std::fs::metadata(&blob).unwrap().len());
    assert_eq!(field(&out, "precision"), "f16");
    assert_eq!(field(&out, "family"), "diffusers UNet2DModel");
    assert_eq!(field(&out, "sample"), "3 x 16 x 16 -> 3 channels");
    let arena = first_number(field(&out, "arena bytes"));
    let sample_arena = first_number(field(&out, "sample arena"));
    assert!(arena > 0.0 && sample_arena > arena, "arena {arena}, sample arena {sample_arena}");
    // 2·params·(16×16) is an upper bound for a net whose largest maps are 16×16; the attention adds a little.
    let gflops = first_number(field(&out, "flops"));
    assert!(gflops > 0.01 && gflops < 2.0 * params as f64 * 256.0 / 1e9 * 1.5, "flops {gflops} G");
    assert!(field(&out, "schedule").starts_with("1000 train steps, linear betas"), "{out}");
    assert!(field(&out, "config").contains("\"block_out_channels\":[16,32]"), "{out}");
}

#[test]
fn an_onnx_graph_converts_inspects_and_samples_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("t.blob");
    let onnx = fixtures().join("onnx/tutorial/legacy.onnx");
    host_cli_ok(&["convert", onnx.to_str().unwrap(), "-o", blob.to_str().unwrap()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host-cli"))
        .args(["inspect", blob.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    assert_eq!(field(&out, "family"), "ONNX graph");
    assert_eq!(field(&out, "sample"), "1 x 28 x 28 -> 1 channels");
    let png = tmp.path().join("t.png");
    host_cli_ok(&[
        "sample",
        blob.to_str().unwrap(),
        "-n",
        "1",
        "--steps",
        "5",
        "--sampler",
        "ddim",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&png).unwrap().len() > 0);
}
