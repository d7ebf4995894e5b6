//! Layouts and mistakes met on real checkpoint files: a flat model folder with its scheduler config beside
//! `config.json`, and Git LFS pointer files in place of the weights.

use std::path::{Path, PathBuf};

use ddpm_convert::{convert_path, AlignedBlob, Calibration, ConvertArgs};
use ddpm_core::Precision;

fn a_ddpm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unet/a_ddpm")
}

fn args(input: &Path) -> ConvertArgs {
    ConvertArgs {
        input: input.to_path_buf(),
        precision: Precision::F32,
        key: None,
        config: None,
        scheduler: None,
        sets: vec![],
        scheduler_sets: vec![],
        calibration: Calibration::default(),
    }
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
