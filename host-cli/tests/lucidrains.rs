//! `host-cli convert` on lucidrains' `denoising-diffusion-pytorch` files: a `Trainer.save` checkpoint converts
//! natively, saying on stderr that it took the EMA weights and which objective it assumed, and samples; a
//! variant the mapping does not know is one `error:` line naming it and the ONNX route.

mod common;

use common::{fixtures, host_cli, host_cli_ok};

#[test]
fn trainer_checkpoint_converts_with_the_ema_weights_and_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("m.blob");
    let ckpt = fixtures().join("lucidrains/trainer/model-1.pt");
    let err = host_cli_ok(&["convert", ckpt.to_str().unwrap(), "-o", blob.to_str().unwrap(), "--set", "sample_size=8"]);
    assert!(err.contains("using the EMA weights"), "{err}");
    assert!(err.contains("assuming GaussianDiffusion's default pred_v (v_prediction)"), "{err}");
    assert!(err.contains("250 trained betas"), "{err}");
    // inspect names the family and the stored betas' range (cosine, clipped at 0.999)
    let out = host_cli(&["inspect", blob.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("family        lucidrains denoising-diffusion-pytorch Unet"), "{text}");
    assert!(text.contains("250 train steps, trained_betas betas 0.00019") && text.contains("..0.999,"), "{text}");
    let (npy, png) = (tmp.path().join("x.npy"), tmp.path().join("x.png"));
    let (npy_s, png_s) = (npy.to_str().unwrap(), png.to_str().unwrap());
    host_cli_ok(&["sample", blob.to_str().unwrap(), "-n", "1", "--steps", "5", "--npy", npy_s, "-o", png_s]);
    let (shape, x) = common::read_npy(&npy);
    assert_eq!(shape, [1, 3, 8, 8]);
    assert!(x.iter().all(|v| v.is_finite()), "non-finite sample");
}

#[test]
fn self_conditioned_unet_is_refused_naming_the_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("m.blob");
    let pt = fixtures().join("lucidrains/selfcond/unet.pt");
    let out = host_cli(&["convert", pt.to_str().unwrap(), "-o", blob.to_str().unwrap(), "--set", "sample_size=8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains("self_condition=True"), "{err}");
    assert!(lines[0].contains("torch.onnx.export"), "{err}");
    assert!(!blob.exists());
}
