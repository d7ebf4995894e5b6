//! The sampler against diffusers (fixtures from tests/fixtures/make_sampler_fixtures.py):
//! - every scheduler option, step by step, against `DDPMScheduler.step` / `DDIMScheduler.step` with the same
//!   inputs and noise: ᾱ and timesteps agree, and each step's x_{t−1} and x̂₀ agree to f32 precision (relative
//!   1e-5 of the largest value: the ε → x̂₀ division by √ᾱ_t ≈ 0.006 at t = 999 magnifies rounding ~150×, so
//!   exact bit equality is not expected from a different summation order of the same f32 formula);
//! - whole runs (the diffusers loop with the same model and the same noise) of 1000 DDPM steps, a respaced
//!   50-step DDPM run and 20-step DDIM runs, in two ways:
//!   * teacher-forced: every step starts from diffusers' own x_t (trajectory[i]) and must land on
//!     trajectory[i+1] within 1e-4;
//!   * free-running: the final samples agree to max abs error 1e-3, for every replay whose reference is itself
//!     reproducible to that bound: the fixture records how far the final sample moves when the whole diffusers
//!     loop is rerun in float64. The deterministic DDIM replay of the random-weight fixture model is chaotic
//!     (the float64 rerun lands 0.2 away), so no f32 implementation can meet 1e-3 there, and only its
//!     teacher-forced check applies.
//!
//! Run with `cargo test -p host-cli --test sampler_parity`.

mod common;

use std::path::Path;

use common::{fixtures, host_cli_ok, read_npy};
use ddpm_convert::diffusers::scheduler;
use ddpm_convert::graph::{Data, Graph};
use ddpm_core::sampler::schedule::alphas_cumprod;
use ddpm_core::sampler::{Method, SampleSpec, Sampler, Steps};
use ddpm_core::TensorView;
use host_cli::blobfile::{arena, AlignedBlob};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn assert_close(name: &str, what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    let scale = max_abs(want).max(1.0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * scale, "{name}: {what}[{i}] = {g}, diffusers {w} (scale {scale})");
    }
}

#[test]
fn every_scheduler_option_matches_diffusers_step() {
    let path = fixtures().join("scheduler/steps.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = all["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "expected the full option matrix");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut graph = Graph::default();
        let (sched, _) = scheduler::from_json(case["config"].as_object().unwrap(), &mut graph).unwrap();
        let trained = graph.tensors.first().map(|t| match &t.data {
            Data::F32(d) => d.clone(),
            _ => panic!("{name}: trained betas are not f32"),
        });
        let method = match case["scheduler"].as_str().unwrap() {
            "DDIM" => Method::Ddim { eta: case["eta"].as_f64().unwrap_or(0.0) as f32 },
            _ => Method::Ddpm,
        };
        let k = case["num_inference_steps"].as_u64().unwrap() as u32;
        let steps = Steps::new(sched, method, k).unwrap_or_else(|| panic!("{name}: steps rejected"));

        let mut ac = vec![0f32; sched.num_train_timesteps as usize];
        alphas_cumprod(&sched, trained.as_deref().map(TensorView::F32), &mut ac);
        assert_close(name, "alphas_cumprod", &ac, &floats(&case["alphas_cumprod"]), 1e-6);
        let want_ts: Vec<u64> = case["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        let got_ts: Vec<u64> = (0..steps.timesteps.len()).map(|i| u64::from(steps.timesteps.get(i).unwrap())).collect();
        assert_eq!(got_ts, want_ts, "{name}: timesteps");

        for st in case["steps"].as_array().unwrap() {
            let i = st["index"].as_u64().unwrap() as usize;
            let sc = steps.scalars(&ac, i).unwrap();
            assert_eq!(u64::from(sc.t), st["t"].as_u64().unwrap(), "{name}: t of step {i}");
            let mut x = floats(&st["sample"]);
            let model_out = floats(&st["model_output"]);
            let noise = floats(&st["noise"]);
            let mut x0 = vec![0f32; x.len()];
            let mut scratch = vec![0f32; x.len()];
            let mut draw = |d: &mut [f32]| d.copy_from_slice(&noise);
            steps.step_one(&sc, steps.adds_noise(i), &mut x, &mut x0, &model_out, &mut scratch, &mut draw).unwrap();
            let what = format!("step {i} (t={})", sc.t);
            assert_close(
                name,
                &format!("{what} pred_original_sample"),
                &x0,
                &floats(&st["pred_original_sample"]),
                1e-5,
            );
            assert_close(name, &format!("{what} prev_sample"), &x, &floats(&st["prev_sample"]), 1e-5);
        }
    }
}

fn replay(name: &str) {
    let dir = fixtures().join("replay").join(name);
    let case: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let model = fixtures().join(case["model"].as_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("m.blob");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    host_cli_ok(&[
        "convert",
        &p(&model.join("model.safetensors")),
        "--config",
        &p(&model.join("config.json")),
        "--scheduler",
        &p(&dir.join("scheduler_config.json")),
        "-o",
        &p(&blob),
    ]);
    let steps = case["steps"].as_u64().unwrap() as u32;
    let eta = case["eta"].as_f64().unwrap_or(0.0) as f32;
    let sampler = case["sampler"].as_str().unwrap();

    // Teacher-forced: one step at a time from diffusers' trajectory.
    let (_, traj) = read_npy(&dir.join("trajectory.npy"));
    let (noise_shape, noise) = read_npy(&dir.join("noise.npy"));
    let aligned = AlignedBlob::read(&blob).unwrap();
    let m = aligned.model().unwrap();
    let method = if sampler == "ddim" { Method::Ddim { eta } } else { Method::Ddpm };
    let batch = noise_shape[1] as u32;
    let s = Sampler::new(&m, SampleSpec { method, steps, batch, seed: 0, class: None, first_image: 0 }).unwrap();
    let per = s.sample_len() * batch as usize;
    let mut arena = arena(s.arena_bytes());
    let a: &mut [u8] = bytemuck::cast_slice_mut(&mut arena);
    let mut worst_step = 0f32;
    for i in 0..s.num_steps() {
        let mut st = s.resume(a, &traj[i * per..(i + 1) * per], i).unwrap();
        s.step(a, &mut st, Some(&noise[(i + 1) * per..(i + 2) * per])).unwrap();
        let want = &traj[(i + 1) * per..(i + 2) * per];
        let err = s.samples(a).iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        worst_step = worst_step.max(err);
    }
    eprintln!("{name}: teacher-forced max abs error per step {worst_step:.2e}");
    assert!(worst_step <= 1e-4, "{name}: a step differs from diffusers by {worst_step:.3e}");

    // Free-running through the CLI, as a user replays a PyTorch run.
    let out = tmp.path().join("out.npy");
    host_cli_ok(&[
        "sample",
        &p(&blob),
        "--noise",
        &p(&dir.join("noise.npy")),
        "--sampler",
        sampler,
        "--steps",
        &steps.to_string(),
        "--eta",
        &eta.to_string(),
        "--npy",
        &p(&out),
        "-o",
        &p(&tmp.path().join("out.png")),
    ]);
    let (shape, got) = read_npy(&out);
    let (want_shape, want) = read_npy(&dir.join("expected.npy"));
    assert_eq!(shape, want_shape);
    let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let reproducible = case["sensitivity_float64"].as_f64().unwrap() < 1e-3;
    eprintln!("{name}: free-running max abs error {err:.2e} (reference reproducible to 1e-3: {reproducible})");
    if reproducible {
        assert!(err <= 1e-3, "{name}: max abs error {err:.3e} exceeds 1e-3");
    }
}

#[test]
fn replay_ddpm_1000_steps() {
    replay("ddpm_1000");
}

#[test]
fn replay_ddpm_50_respaced_steps() {
    replay("ddpm_50");
}

#[test]
fn replay_ddim_20_steps() {
    replay("ddim_20");
}

#[test]
fn replay_ddim_20_steps_with_eta() {
    replay("ddim_20_eta");
}
