//! Bad input: every failure is one line on stderr starting with `error:`, exit status 1 (a panic would be 101),
//! and no output file left behind.

mod common;

use std::path::Path;

use common::{fixtures, host_cli, host_cli_ok};

/// Asserts a clean failure whose message contains every string of `needles`.
fn fails_cleanly(args: &[&str], needles: &[&str]) {
    let out = host_cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "host-cli {args:?}: expected exit 1, got {:?}: {err}", out.status);
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "host-cli {args:?}: expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "host-cli {args:?}: error should mention {n:?}: {err}");
    }
}

/// Converting `input` fails naming `needles`, and leaves no output behind.
fn convert_fails(input: &Path, extra: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.blob");
    let mut args = vec!["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    fails_cleanly(&args, needles);
    assert!(!out.exists(), "a failed convert left {} behind", out.display());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "a failed convert left a temporary file");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A converted blob is an ordinary readable file, not a private temporary one.
#[cfg(unix)]
#[test]
fn converted_blob_is_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.blob");
    host_cli_ok(&["convert", fixtures().join("unet/a_ddpm").to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn hostile_pickles_are_refused_without_running_anything() {
    let marker = Path::new("/tmp/pwned");
    let existed = marker.exists();
    convert_fails(&fixtures().join("bad/os_system.pt"), &[], &["posix.system"]);
    convert_fails(&fixtures().join("bad/eval.pt"), &[], &["eval"]);
    assert_eq!(marker.exists(), existed, "the hostile pickle's command ran");
}

#[test]
fn empty_truncated_and_garbled_files() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("unet/c_old_attn/model.pth")).unwrap();
    let set = ["--set", "sample_size=[16,8]", "--set", "norm_num_groups=8", "--set", "attention_head_dim=8"];
    convert_fails(&write(tmp.path(), "empty.pt", b""), &set, &["empty.pt"]);
    convert_fails(&write(tmp.path(), "half.pt", &good[..good.len() / 2]), &set, &["half.pt"]);
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    convert_fails(&write(tmp.path(), "garbage.pt", &garbage), &set, &["garbage.pt"]);
    convert_fails(&write(tmp.path(), "garbage.safetensors", &garbage), &[], &["garbage.safetensors"]);
    let st = std::fs::read(fixtures().join("unet/d_safetensors/model.safetensors")).unwrap();
    convert_fails(&write(tmp.path(), "cut.safetensors", &st[..st.len() - 1000]), &[], &["cut.safetensors"]);
    convert_fails(&fixtures().join("bad/legacy.pt"), &set, &["legacy"]);
    convert_fails(&tmp.path().join("missing.pt"), &[], &["no such file"]);
}

#[test]
fn wrong_family_and_wrong_config() {
    convert_fails(&fixtures().join("bad/not_a_unet.safetensors"), &[], &["not a diffusers UNet2DModel", "fc1.bias"]);
    // The right weights with another model's config: the first mismatching tensor is named with both shapes.
    let d = fixtures().join("unet/d_safetensors");
    let wrong = fixtures().join("unet/a_ddpm/unet/config.json");
    convert_fails(
        &d.join("model.safetensors"),
        &["--config", wrong.to_str().unwrap()],
        &["tensor ", "expected [", "found ["],
    );
    // No config and nothing to say what the tensors cannot tell.
    convert_fails(&fixtures().join("unet/c_old_attn/model.pth"), &[], &["sample_size", "norm_num_groups", "--set"]);
}

#[test]
fn unsupported_options_name_the_option() {
    convert_fails(&fixtures().join("bad/unsupported_config"), &[], &["act_fn", "mish"]);
    let a = fixtures().join("unet/a_ddpm");
    for (set, option) in [
        ("time_embedding_type=fourier", "time_embedding_type"),
        ("upsample_type=resnet", "upsample_type"),
        ("downsample_type=resnet", "downsample_type"),
        ("resnet_time_scale_shift=spatial", "resnet_time_scale_shift"),
        ("class_embed_type=timestep", "class_embed_type"),
        ("mid_block_type=UNetMidBlock2DCrossAttn", "mid_block_type"),
        ("downsample_padding=2", "downsample_padding"),
        ("down_block_types=[\"SkipDownBlock2D\",\"AttnDownBlock2D\"]", "down_block_types"),
        ("cross_attention_dim=64", "cross_attention_dim"),
    ] {
        convert_fails(&a, &["--set", set], &[option]);
    }
}

#[test]
fn bad_blobs_and_bad_forward_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("b.blob");
    let b = fixtures().join("unet/b_scale_shift");
    host_cli_ok(&[
        "convert",
        b.join("ckpt.pt").to_str().unwrap(),
        "--config",
        b.join("config.json").to_str().unwrap(),
        "-o",
        blob.to_str().unwrap(),
    ]);
    let x = b.join("x.npy");
    let out = tmp.path().join("y.npy");
    let fwd = |model: &Path, extra: &[&str], needles: &[&str]| {
        let mut args =
            vec!["forward", model.to_str().unwrap(), "--input", x.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        fails_cleanly(&args, needles);
        assert!(!out.exists());
    };
    let bytes = std::fs::read(&blob).unwrap();
    fwd(&write(tmp.path(), "empty.blob", b""), &["--timestep", "1"], &["truncated"]);
    fwd(&write(tmp.path(), "cut.blob", &bytes[..bytes.len() / 3]), &["--timestep", "1"], &["truncated"]);
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    fwd(&write(tmp.path(), "flip.blob", &flipped), &["--timestep", "1"], &["checksum"]);
    fwd(&x, &["--timestep", "1"], &["bad magic"]);
    fwd(&blob, &["--timestep", "1"], &["class label is required"]);
    fwd(&blob, &["--timestep", "1", "--class", "10"], &["class label 10 out of range"]);
    fwd(&blob, &["--timestep", "inf", "--class", "1"], &["timestep"]);
    let a = tmp.path().join("a.blob");
    host_cli_ok(&["convert", fixtures().join("unet/a_ddpm").to_str().unwrap(), "-o", a.to_str().unwrap()]);
    let out2 = tmp.path().join("z.npy");
    fails_cleanly(
        &[
            "forward",
            a.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--timestep",
            "3",
            "-o",
            out2.to_str().unwrap(),
        ],
        &["shape", "[N, 3, 16, 16]"],
    );
    let ax = fixtures().join("unet/a_ddpm/x.npy");
    fails_cleanly(
        &[
            "forward",
            a.to_str().unwrap(),
            "--input",
            ax.to_str().unwrap(),
            "--timestep",
            "3",
            "--class",
            "1",
            "-o",
            out2.to_str().unwrap(),
        ],
        &["unconditional"],
    );
    assert!(!out2.exists());
    // A non-number timestep is a usage error (exit 2), still without a panic.
    let o = host_cli(&[
        "forward",
        a.to_str().unwrap(),
        "--input",
        ax.to_str().unwrap(),
        "--timestep",
        "soon",
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// Output into a pipe that closes early (`host-cli … | head -1`) ends the run without a panic message.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let model = fixtures().join("../../weights/mnist/mnist-f32.blob");
    let mut child = Command::new(env!("CARGO_BIN_EXE_host-cli"))
        .args(["--threads", "1", "bench", model.to_str().unwrap(), "--iters", "2", "--warmup", "0", "--per-op"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start host-cli");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is dropped here: every later write of the child meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty(), "no output at all: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
