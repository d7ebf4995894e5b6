//! `--backend gpu` through the CLI. Without the `gpu` feature the flag gives a clear error naming the fix;
//! with it (`cargo test -p host-cli --features gpu --test gpu_cli`), the GPU forward pass and sampler agree with
//! the CPU path: forward ≤ 1e-4 × max |ref|, same-seed samples ≤ 1e-3 max abs.

mod common;

use common::{fixtures, host_cli, host_cli_ok};
#[cfg(feature = "gpu")]
use common::{read_npy, rel_err};

fn blob(dir: &std::path::Path) -> std::path::PathBuf {
    let b = dir.join("a.blob");
    host_cli_ok(&["convert", fixtures().join("unet/a_ddpm").to_str().unwrap(), "-o", b.to_str().unwrap()]);
    b
}

#[cfg(not(feature = "gpu"))]
#[test]
fn gpu_backend_not_built_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let b = blob(tmp.path());
    let x = fixtures().join("unet/a_ddpm/x.npy");
    let out = tmp.path().join("y.npy");
    let o = host_cli(&[
        "forward",
        b.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--timestep",
        "3",
        "-o",
        out.to_str().unwrap(),
        "--backend",
        "gpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--features gpu"), "{err}");
    assert!(!out.exists());
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_backend_matches_cpu_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let b = blob(tmp.path());
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let x = fixtures().join("unet/a_ddpm/x.npy");
    let x = x.to_str().unwrap();
    for backend in ["cpu", "gpu"] {
        host_cli_ok(&[
            "forward",
            b.to_str().unwrap(),
            "--input",
            x,
            "--timestep",
            "17",
            "-o",
            &p(&format!("f_{backend}.npy")),
            "--backend",
            backend,
        ]);
    }
    let (_, fc) = read_npy(std::path::Path::new(&p("f_cpu.npy")));
    let (_, fg) = read_npy(std::path::Path::new(&p("f_gpu.npy")));
    assert!(rel_err(&fg, &fc) <= 1e-4, "forward: {}", rel_err(&fg, &fc));
    let err = sample_difference(&b, tmp.path(), "5", "6");
    assert!(err <= 1e-3, "sample: max abs difference {err}");
}

/// `host-cli sample BLOB -n 2 --seed SEED --steps STEPS` on the CPU and on the GPU: the largest absolute
/// difference between the two sets of images.
#[cfg(feature = "gpu")]
fn sample_difference(b: &std::path::Path, tmp: &std::path::Path, seed: &str, steps: &str) -> f32 {
    let p = |n: &str| tmp.join(n).to_str().unwrap().to_string();
    for backend in ["cpu", "gpu"] {
        host_cli_ok(&[
            "sample",
            b.to_str().unwrap(),
            "-n",
            "2",
            "--seed",
            seed,
            "--steps",
            steps,
            "--npy",
            &p(&format!("s_{backend}.npy")),
            "-o",
            &p(&format!("s_{backend}.png")),
            "--backend",
            backend,
        ]);
    }
    let (_, sc) = read_npy(std::path::Path::new(&p("s_cpu.npy")));
    let (_, sg) = read_npy(std::path::Path::new(&p("s_gpu.npy")));
    sc.iter().zip(&sg).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// An ONNX-imported network (the MNIST tutorial UNet: layer norms, transposed convolutions, a timestep table)
/// samples on the GPU as on the CPU.
#[cfg(feature = "gpu")]
#[test]
fn gpu_backend_samples_an_onnx_import() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("tutorial.blob");
    let onnx = fixtures().join("onnx/tutorial/legacy.onnx");
    host_cli_ok(&["convert", onnx.to_str().unwrap(), "-o", b.to_str().unwrap()]);
    let err = sample_difference(&b, tmp.path(), "7", "4");
    assert!(err <= 1e-3, "sample: max abs difference {err}");
}

/// int8 programs run on the CPU only: the GPU backend says so instead of failing later.
#[cfg(feature = "gpu")]
#[test]
fn gpu_backend_refuses_int8_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("a8.blob");
    let a = fixtures().join("unet/a_ddpm");
    let calib = ["--calibration-trajectories", "1", "--calibration-steps", "4"];
    host_cli_ok(
        &[&["convert", a.to_str().unwrap(), "-o", b.to_str().unwrap(), "--precision", "int8"][..], &calib].concat(),
    );
    let png = tmp.path().join("x.png");
    let o = host_cli(&[
        "sample",
        b.to_str().unwrap(),
        "-n",
        "1",
        "--steps",
        "2",
        "-o",
        png.to_str().unwrap(),
        "--backend",
        "gpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("int8"), "{err}");
    assert!(!png.exists());
}
