//! Sampling behaviour that does not need diffusers: determinism across runs and thread counts, stop and
//! resume, and clear errors for bad sampling input.

mod common;

use common::{fixtures, host_cli, host_cli_ok};
use ddpm_core::sampler::{FinalSigmas, Method, SampleError, SampleSpec, Sampler};
use host_cli::blobfile::{arena, AlignedBlob};

fn convert_d(dir: &std::path::Path) -> std::path::PathBuf {
    let d = fixtures().join("unet/a_ddpm");
    let blob = dir.join("a.blob");
    host_cli_ok(&["convert", d.to_str().unwrap(), "-o", blob.to_str().unwrap()]);
    blob
}

#[test]
fn same_seed_same_bits_across_runs_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert_d(tmp.path());
    let run = |threads: &str, seed: &str, tag: &str| {
        let npy = tmp.path().join(format!("{tag}.npy"));
        host_cli_ok(&[
            "--threads",
            threads,
            "sample",
            blob.to_str().unwrap(),
            "-n",
            "2",
            "--steps",
            "8",
            "--seed",
            seed,
            "--npy",
            npy.to_str().unwrap(),
            "-o",
            tmp.path().join(format!("{tag}.png")).to_str().unwrap(),
        ]);
        std::fs::read(npy).unwrap()
    };
    let one = run("1", "7", "a");
    assert_eq!(one, run("1", "7", "b"), "run to run");
    assert_eq!(one, run("2", "7", "c"), "1 vs 2 threads");
    assert_eq!(one, run("4", "7", "d"), "1 vs 4 threads");
    assert_ne!(one, run("2", "8", "e"), "another seed must give other images");
}

/// `host-cli noise` writes exactly what a seeded run draws: replaying it gives the seeded run's bits.
#[test]
fn dumped_noise_replays_the_seeded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert_d(tmp.path());
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let b = blob.to_str().unwrap();
    host_cli_ok(&["noise", b, "-n", "3", "--seed", "11", "--steps", "6", "-o", &p("noise.npy")]);
    host_cli_ok(&[
        "sample",
        b,
        "-n",
        "3",
        "--seed",
        "11",
        "--steps",
        "6",
        "--npy",
        &p("seeded.npy"),
        "-o",
        &p("a.png"),
    ]);
    host_cli_ok(&[
        "sample",
        b,
        "--noise",
        &p("noise.npy"),
        "--steps",
        "6",
        "--npy",
        &p("replayed.npy"),
        "-o",
        &p("b.png"),
    ]);
    assert_eq!(std::fs::read(p("seeded.npy")).unwrap(), std::fs::read(p("replayed.npy")).unwrap());
}

#[test]
fn const_arena_size_matches_the_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = AlignedBlob::read(&convert_d(tmp.path())).unwrap();
    let m = blob.model().unwrap();
    for batch in [1, 3] {
        for method in [Method::Ddpm, Method::Ddim { eta: 0.0 }, Method::DPM_SOLVER] {
            let s =
                Sampler::new(&m, SampleSpec { method, steps: 5, batch, seed: 0, class: None, first_image: 0 }).unwrap();
            assert_eq!(ddpm_core::sampler::sampler_arena_bytes(blob.bytes(), batch as usize), s.arena_bytes());
        }
    }
}

#[test]
fn stop_and_resume_gives_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = AlignedBlob::read(&convert_d(tmp.path())).unwrap();
    let m = blob.model().unwrap();
    let dpm_sigma_min = Method::DpmSolver { order: 2, lower_order_final: false, final_sigmas: FinalSigmas::SigmaMin };
    let dpm_first_order = Method::DpmSolver { order: 1, lower_order_final: true, final_sigmas: FinalSigmas::Zero };
    for method in [Method::Ddpm, Method::Ddim { eta: 0.3 }, Method::DPM_SOLVER, dpm_sigma_min, dpm_first_order] {
        let spec = SampleSpec { method, steps: 10, batch: 2, seed: 3, class: None, first_image: 0 };
        let s = Sampler::new(&m, spec).unwrap();
        let mut a1 = arena(s.arena_bytes());
        let a1: &mut [u8] = bytemuck::cast_slice_mut(&mut a1);
        let mut st = s.start(a1, None).unwrap();
        while st.done < s.num_steps() {
            s.step(a1, &mut st, None).unwrap();
        }
        let straight = s.samples(a1).to_vec();
        // Stop after 4 steps, keep only x_t, x̂₀ (DPM-Solver++'s multistep state) and the step count, resume in a
        // fresh arena.
        let mut a2 = arena(s.arena_bytes());
        let a2: &mut [u8] = bytemuck::cast_slice_mut(&mut a2);
        let mut st = s.start(a2, None).unwrap();
        for _ in 0..4 {
            s.step(a2, &mut st, None).unwrap();
        }
        let saved = s.samples(a2).to_vec();
        let saved_x0 = s.pred_original(a2).to_vec();
        let mut a3 = arena(s.arena_bytes());
        let a3: &mut [u8] = bytemuck::cast_slice_mut(&mut a3);
        let multistep = s.steps().reads_previous_x0(st.done);
        assert_eq!(multistep, matches!(method, Method::DpmSolver { order: 2, .. }), "{method:?}");
        if multistep {
            assert_eq!(s.resume(a3, &saved, None, st.done), Err(SampleError::NeedsHistory), "{method:?}");
        }
        let x0 = multistep.then_some(&saved_x0[..]);
        let mut st = s.resume(a3, &saved, x0, st.done).unwrap();
        while st.done < s.num_steps() {
            s.step(a3, &mut st, None).unwrap();
        }
        assert_eq!(s.samples(a3), &straight[..], "{method:?}: resumed run differs");
        assert!(s.step(a3, &mut st, None).is_err(), "stepping past the end must be an error");
    }
}

/// A saved `DPMSolverMultistepScheduler` config converts (Python's `-Infinity` included), and the options the
/// engine cannot follow are errors naming them.
#[test]
fn dpm_solver_scheduler_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = fixtures().join("unet/a_ddpm");
    let cfg = |extra: &str| {
        let path = tmp.path().join("scheduler_config.json");
        let text = format!(
            r#"{{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver++", "solver_order": 2,
                "solver_type": "midpoint", "lambda_min_clipped": -Infinity, "variance_type": null,
                "use_karras_sigmas": false, "final_sigmas_type": "zero", "lower_order_final": true{extra}}}"#
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let blob = tmp.path().join("dpm.blob");
    let (b, o) = (blob.to_str().unwrap(), tmp.path().join("x.png"));
    let convert = |extra: &str| {
        let c = cfg(extra);
        host_cli(&["convert", d.to_str().unwrap(), "--scheduler", c.to_str().unwrap(), "-o", b])
    };
    let out = convert("");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inspect = String::from_utf8_lossy(&host_cli(&["inspect", b]).stdout).into_owned();
    assert!(inspect.contains("linspace"), "a DPMSolverMultistepScheduler config defaults to linspace: {inspect}");
    host_cli_ok(&["sample", b, "-n", "1", "--sampler", "dpm-solver", "--steps", "4", "-o", o.to_str().unwrap()]);
    for (extra, needle) in [
        (r#", "algorithm_type": "sde-dpmsolver++""#, "algorithm_type"),
        (r#", "solver_type": "heun""#, "solver_type"),
        (r#", "use_karras_sigmas": true"#, "use_karras_sigmas"),
        (r#", "solver_order": 3"#, "solver_order"),
        (r#", "lambda_min_clipped": -5.1"#, "lambda_min_clipped"),
        (r#", "euler_at_final": true"#, "euler_at_final"),
    ] {
        let out = convert(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {err}");
        assert!(err.contains(needle) && err.contains("unsupported"), "{extra}: {err}");
    }
}

fn fails(args: &[&str], code: i32, needle: &str) {
    let out = host_cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_sampling_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = convert_d(tmp.path());
    let b = blob.to_str().unwrap();
    let png = tmp.path().join("x.png");
    let o = png.to_str().unwrap();
    fails(&["sample", b, "--steps", "0", "-o", o], 1, "steps");
    fails(&["sample", b, "--steps", "1001", "-o", o], 1, "steps");
    fails(&["sample", b, "--class", "3", "-o", o], 1, "unconditional");
    fails(&["sample", b, "--seed", "abc", "-o", o], 2, "seed");
    fails(&["sample", b, "-n", "0", "-o", o], 1, "batch");
    fails(&["sample", b, "--sampler", "ddim", "--eta", "-1", "-o", o], 1, "eta");
    fails(&["sample", b, "--sampler", "dpm-solver", "--solver-order", "3", "-o", o], 2, "solver-order");
    fails(&["sample", b, "--sampler", "dpm-solver", "--final-sigmas", "karras", "-o", o], 2, "final-sigmas");
    // DPM-Solver++ on linspace with k = T would repeat a timestep: refused like any impossible --steps.
    fails(&["sample", b, "--sampler", "dpm-solver", "--steps", "1000", "-o", o], 1, "steps");
    // A noise file of the wrong shape: the model's x.npy is [2, 3, 16, 16], not [K, N, 3, 16, 16].
    let x = fixtures().join("unet/a_ddpm/x.npy");
    fails(&["sample", b, "--steps", "4", "--noise", x.to_str().unwrap(), "-o", o], 1, "noise file");
    assert!(!png.exists(), "a failed run must not write an image");
    // Class-conditional model: a label out of range.
    let bdir = fixtures().join("unet/b_scale_shift");
    let cblob = tmp.path().join("b.blob");
    let conv = |extra: &[&str]| {
        let cfg = bdir.join("config.json");
        let mut a: Vec<String> = vec![
            "convert".into(),
            bdir.join("ckpt.pt").display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
            "-o".into(),
            cblob.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        host_cli_ok(&a)
    };
    // Without a scheduler config the variance is fixed: the converter warns, the sampler explains.
    let notes = conv(&[]);
    assert!(notes.contains("learned variance"), "{notes}");
    fails(
        &["sample", cblob.to_str().unwrap(), "--class", "1", "--steps", "2", "-o", o],
        1,
        "--scheduler-set variance_type=learned_range",
    );
    conv(&["--scheduler-set", "variance_type=learned_range"]);
    fails(&["sample", cblob.to_str().unwrap(), "--class", "10", "--steps", "2", "-o", o], 1, "out of range");
    fails(&["sample", cblob.to_str().unwrap(), "--steps", "2", "-o", o], 1, "class label is required");
}
