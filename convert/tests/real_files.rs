//! Layouts and mistakes met on real checkpoint files: a flat model folder with its scheduler config beside
//! `config.json`, Git LFS pointer files in place of the weights, latent and conditional pipelines, config keys
//! diffusers ignores, and options a bare state dict cannot tell.

use std::path::{Path, PathBuf};

use ddpm_convert::{convert_path, AlignedBlob, ConvertArgs};
use ddpm_core::Precision;

fn a_ddpm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unet/a_ddpm")
}

fn args(input: &Path) -> ConvertArgs {
    ConvertArgs::new(input, Precision::F32)
}

#[test]
fn a_flat_model_folder_takes_its_schedule_from_the_scheduler_config_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(a_ddpm().join("unet")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let sched = r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 500, "beta_schedule": "squaredcos_cap_v2"}"#;
    std::fs::write(tmp.path().join("scheduler_config.json"), sched).unwrap();
    let out = convert_path(&args(tmp.path())).unwrap();
    let blob = AlignedBlob::from_bytes(&out.blob);
    let s = blob.model().unwrap().schedule();
    assert_eq!(s.num_train_timesteps, 500);
    assert!(out.notes.iter().any(|n| n.contains("scheduler_config.json")), "{:?}", out.notes);
}

#[test]
fn a_git_lfs_pointer_is_named_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 143510016\n";
    for name in ["model.safetensors", "ckpt.pt", "model.onnx"] {
        let p = tmp.path().join(name);
        std::fs::write(&p, pointer).unwrap();
        let e = convert_path(&args(&p)).unwrap_err().to_string();
        assert!(e.contains("Git LFS pointer to 143510016 bytes") && e.contains("git lfs pull"), "{name}: {e}");
    }
    // Inside a model folder too.
    let dir = tmp.path().join("folder");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(a_ddpm().join("unet/config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors"), pointer).unwrap();
    let e = convert_path(&args(&dir)).unwrap_err().to_string();
    assert!(e.contains("Git LFS pointer"), "{e}");
}

/// A copy of the a_ddpm pipeline folder whose files `edit` may change.
fn pipeline_copy(edit: impl Fn(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for sub in ["unet", "scheduler"] {
        std::fs::create_dir(tmp.path().join(sub)).unwrap();
        for f in std::fs::read_dir(a_ddpm().join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, tmp.path().join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(a_ddpm().join("model_index.json"), tmp.path().join("model_index.json")).unwrap();
    edit(tmp.path());
    tmp
}

fn edit_json(p: &Path, f: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut m);
    std::fs::write(p, serde_json::to_string(&m).unwrap()).unwrap();
}

#[test]
fn a_latent_pipeline_is_refused_as_one() {
    let tmp = pipeline_copy(|d| {
        edit_json(&d.join("model_index.json"), |m| {
            m.insert("_class_name".into(), "LDMPipeline".into());
            m.insert("vqvae".into(), serde_json::json!(["diffusers", "VQModel"]));
        })
    });
    let e = convert_path(&args(tmp.path())).unwrap_err().to_string();
    assert!(e.contains("LDMPipeline") && e.contains("vqvae") && e.contains("not a pixel-space DDPM"), "{e}");
}

#[test]
fn a_conditional_unet_is_refused_as_one() {
    let tmp = pipeline_copy(|d| {
        edit_json(&d.join("unet/config.json"), |m| {
            m.insert("in_channels".into(), 6.into());
        })
    });
    let e = convert_path(&args(tmp.path())).unwrap_err().to_string();
    assert!(e.contains("in_channels 6 and out_channels 3") && e.contains("conditional UNet"), "{e}");
}

#[test]
fn config_keys_diffusers_ignores_are_a_warning() {
    let tmp = pipeline_copy(|d| {
        edit_json(&d.join("unet/config.json"), |m| {
            m.insert("my_training_note".into(), "lr 1e-4".into());
        })
    });
    let out = convert_path(&args(tmp.path())).unwrap();
    assert!(out.notes.iter().any(|n| n.starts_with("warning") && n.contains("my_training_note")), "{:?}", out.notes);
    // A key that changes the network stays strict.
    let tmp = pipeline_copy(|d| {
        edit_json(&d.join("unet/config.json"), |m| {
            m.insert("act_fn".into(), "gelu".into());
        })
    });
    assert!(convert_path(&args(tmp.path())).is_err());
}

#[test]
fn options_a_bare_state_dict_cannot_tell_are_named_with_diffusers_defaults() {
    let e = convert_path(&args(&a_ddpm().join("unet/diffusion_pytorch_model.safetensors"))).unwrap_err().to_string();
    assert!(e.contains("norm_num_groups (diffusers' default 32") && e.contains("--set norm_num_groups=32"), "{e}");
    assert!(e.contains("sample_size") && e.contains("--set sample_size=..."), "{e}");
}
