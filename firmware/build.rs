//! Chooses the model blob and the sampling run at build time.
//!
//! Environment (all optional; the defaults sample one digit from the shipped int8 MNIST model, so that
//! `cargo run --release` works as cloned):
//! - `DDPM_BLOB`: path of the blob to embed, relative to this crate (default `../weights/mnist/mnist-int8.blob`).
//! - `DDPM_SEED` (default 7), `DDPM_STEPS` (default 10), `DDPM_SAMPLER` (`ddim`, `ddpm` or `dpm-solver`,
//!   default `dpm-solver`: 10 of its steps match 50 DDIM steps on the MNIST model), `DDPM_ETA` (DDIM's η,
//!   default 0), `DDPM_SOLVER_ORDER` (DPM-Solver++'s `solver_order`,
//!   1 or 2, default 2; `lower_order_final` and a zero final σ as diffusers' defaults), `DDPM_CLASS` (class
//!   label for class-conditional models, default none).
//! - `DDPM_PROFILE=1`: also time one forward pass op by op (the `ddpm_profile` cfg).
//!
//! They become constants in `$OUT_DIR/config.rs`; the blob's absolute path goes to `include_bytes!` through
//! the `DDPM_BLOB_PATH` compile-time variable. A missing blob or a bad value is a one-line build error naming
//! the variable.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

fn var(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

/// Fails the build with one line (cargo prints it as `error: ...`), not a panic's backtrace.
fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    std::process::exit(0)
}

fn parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    match var(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| fail(&format!("{name}={v:?} is not a valid value"))),
    }
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));

    // memory.x must be on the linker's search path for cortex-m-rt's link.x.
    std::fs::copy(dir.join("memory.x"), out.join("memory.x")).expect("cannot copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");

    let blob = var("DDPM_BLOB").map_or_else(|| dir.join("../weights/mnist/mnist-int8.blob"), |p| dir.join(p));
    if let Err(e) = std::fs::File::open(&blob).and_then(|f| f.metadata()).and_then(|m| {
        if m.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a file"))
        }
    }) {
        fail(&format!("DDPM_BLOB: cannot read the model blob {} ({e}); set DDPM_BLOB=path/to/model.blob", blob.display()));
    }
    let blob = blob.canonicalize().unwrap_or_else(|e| fail(&format!("DDPM_BLOB: cannot resolve {}: {e}", blob.display())));
    println!("cargo:rerun-if-changed={}", blob.display());
    println!("cargo:rustc-env=DDPM_BLOB_PATH={}", blob.display());

    let seed: u64 = parse("DDPM_SEED", 7);
    let steps: u32 = parse("DDPM_STEPS", 10);
    let eta: f32 = parse("DDPM_ETA", 0.0);
    let class: Option<u32> =
        var("DDPM_CLASS").map(|v| v.parse().unwrap_or_else(|_| fail(&format!("DDPM_CLASS={v:?} is not an integer"))));
    let order: u8 = parse("DDPM_SOLVER_ORDER", 2);
    let method = match var("DDPM_SAMPLER").as_deref().unwrap_or("dpm-solver") {
        "ddim" => format!("Method::Ddim {{ eta: {eta:?}_f32 }}"),
        "ddpm" => "Method::Ddpm".to_string(),
        "dpm-solver" => format!(
            "Method::DpmSolver {{ order: {order}, lower_order_final: true, \
             final_sigmas: ddpm_core::sampler::FinalSigmas::Zero }}"
        ),
        other => fail(&format!("DDPM_SAMPLER={other:?}: expected ddim, ddpm or dpm-solver")),
    };
    // DDPM_PROFILE=1 adds a per-op profile of one forward pass (uses `Model::forward_observed`).
    println!("cargo:rustc-check-cfg=cfg(ddpm_profile)");
    if var("DDPM_PROFILE").is_some_and(|v| v != "0") {
        println!("cargo:rustc-cfg=ddpm_profile");
    }
    let name = blob.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());

    let mut cfg = String::new();
    writeln!(cfg, "/// File name of the embedded blob.\npub const BLOB_NAME: &str = {name:?};").unwrap();
    writeln!(cfg, "/// Seed of the noise stream.\npub const SEED: u64 = {seed};").unwrap();
    writeln!(cfg, "/// Inference steps.\npub const STEPS: u32 = {steps};").unwrap();
    writeln!(cfg, "/// Sampling algorithm.\npub const METHOD: Method = {method};").unwrap();
    writeln!(cfg, "/// Class label.\npub const CLASS: Option<u32> = {class:?};").unwrap();
    std::fs::write(out.join("config.rs"), cfg).expect("cannot write config.rs");
}
