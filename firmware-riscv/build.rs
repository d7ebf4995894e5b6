//! Chooses the model blob and the sampling run at build time, and checks them before anything is compiled.
//!
//! Environment (all optional):
//! - `DDPM_BLOB`: path of the blob to embed (default `../weights/mnist/mnist-int8.blob`, the shipped MNIST model
//!   in int8; a relative path is relative to this crate).
//! - `DDPM_SEED` (default 7), `DDPM_STEPS` (default 10), `DDPM_SAMPLER` (`ddim` or `ddpm`, default `ddim`),
//!   `DDPM_ETA` (DDIM's η, default 0), `DDPM_CLASS` (class label of a class-conditional model, default none).
//! - `DDPM_PROFILE=1`: also count the instructions of one forward pass op by op (the `ddpm_profile` cfg).
//!
//! Every mistake (no blob, a file that is not a valid blob, a bad number, steps the schedule does not allow) is
//! one `cargo::error` line naming the variable, not a panic: the blob is validated here with the same
//! `Model::new_checked` and `Sampler::new` the firmware runs. The settings become constants in
//! `$OUT_DIR/config.rs`; the blob's absolute path goes to `include_bytes!` through `DDPM_BLOB_PATH`.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ddpm_core::sampler::{Method, SampleSpec, Sampler};
use ddpm_core::Model;

fn var(name: &str) -> Option<String> {
    println!("cargo::rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse<T: std::str::FromStr>(name: &str, default: T, what: &str) -> Result<T, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name}={v:?}: expected {what}")),
    }
}

/// The blob's bytes in a 16-byte aligned buffer (the blob format's alignment, which `Model::new_checked` checks).
fn read_aligned(path: &Path) -> std::io::Result<(Vec<u128>, usize)> {
    let bytes = std::fs::read(path)?;
    let mut buf = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
    Ok((buf, bytes.len()))
}

/// Checks the settings against the blob and writes `config.rs`; an `Err` is the one-line build error.
fn configure(dir: &Path, out: &Path) -> Result<(), String> {
    let given = var("DDPM_BLOB");
    let blob = dir.join(given.as_deref().unwrap_or("../weights/mnist/mnist-int8.blob"));
    let shown = given.as_deref().map_or_else(|| format!("(default) {}", blob.display()), str::to_string);
    let (buf, len) = read_aligned(&blob).map_err(|e| format!("DDPM_BLOB={shown}: cannot read the model blob: {e}"))?;
    let blob = blob.canonicalize().map_err(|e| format!("DDPM_BLOB={shown}: {e}"))?;
    println!("cargo::rerun-if-changed={}", blob.display());
    let model = Model::new_checked(&bytemuck::cast_slice::<u128, u8>(&buf)[..len])
        .map_err(|e| format!("DDPM_BLOB={shown}: not a valid model blob: {e}"))?;

    let seed: u64 = parse("DDPM_SEED", 7, "an unsigned integer")?;
    let steps: u32 = parse("DDPM_STEPS", 10, "an unsigned integer")?;
    let eta: f32 = parse("DDPM_ETA", 0.0, "a number")?;
    let class: Option<u32> = match var("DDPM_CLASS") {
        None => None,
        Some(v) => Some(v.parse().map_err(|_| format!("DDPM_CLASS={v:?}: expected an unsigned integer"))?),
    };
    let sampler = var("DDPM_SAMPLER").unwrap_or_else(|| "ddim".into());
    let (method, code) = match sampler.as_str() {
        "ddim" => (Method::Ddim { eta }, format!("Method::Ddim {{ eta: {eta:?}_f32 }}")),
        "ddpm" => (Method::Ddpm, "Method::Ddpm".to_string()),
        other => return Err(format!("DDPM_SAMPLER={other:?}: expected ddim or ddpm")),
    };
    // The same check the firmware makes at run time, so a bad combination fails here, not under QEMU.
    let spec = SampleSpec { method, steps, batch: 1, seed, class, first_image: 0 };
    Sampler::new(&model, spec)
        .map_err(|e| format!("DDPM_STEPS={steps} DDPM_SAMPLER={sampler} DDPM_ETA={eta} DDPM_CLASS={class:?}: {e}"))?;

    println!("cargo::rustc-env=DDPM_BLOB_PATH={}", blob.display());
    println!("cargo::rustc-env=DDPM_TARGET={}", env::var("TARGET").unwrap_or_default());
    println!("cargo::rustc-check-cfg=cfg(ddpm_profile)");
    if var("DDPM_PROFILE").is_some_and(|v| v != "0") {
        println!("cargo::rustc-cfg=ddpm_profile");
    }
    let name = blob.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut cfg = String::new();
    writeln!(cfg, "/// File name of the embedded blob.\npub const BLOB_NAME: &str = {name:?};").unwrap();
    writeln!(cfg, "/// Seed of the noise stream.\npub const SEED: u64 = {seed};").unwrap();
    writeln!(cfg, "/// Inference steps.\npub const STEPS: u32 = {steps};").unwrap();
    writeln!(cfg, "/// Sampling algorithm.\npub const METHOD: Method = {code};").unwrap();
    writeln!(cfg, "/// Its name, as `host-cli sample --sampler` spells it.\npub const SAMPLER: &str = {sampler:?};")
        .unwrap();
    writeln!(cfg, "/// Class label.\npub const CLASS: Option<u32> = {class:?};").unwrap();
    std::fs::write(out.join("config.rs"), cfg).map_err(|e| format!("cannot write config.rs: {e}"))
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));

    // memory.x must be on the linker's search path: riscv-rt's link.x includes it (its `memory` feature).
    println!("cargo::rerun-if-changed=memory.x");
    let copied = std::fs::copy(dir.join("memory.x"), out.join("memory.x"));
    println!("cargo::rustc-link-search={}", out.display());

    let result = copied.map_err(|e| format!("cannot copy memory.x: {e}")).and_then(|_| configure(&dir, &out));
    if let Err(msg) = result {
        // One line; cargo stops the build after this script with the message and no backtrace.
        println!("cargo::error={}", msg.replace('\n', " "));
    }
}
