//! `host-cli compare`: how far a lower-precision blob (f16, int8) is from a reference blob (f32) of the same
//! model, measured two ways.
//!
//! 1. **Forward error per timestep.** The reference model's DDPM sampler (respaced) runs a few trajectories
//!    from the seed; at every step both models get the same x_t and t, and their outputs are compared over all
//!    trajectories: relative RMS error ‖o − r‖₂ / ‖r‖₂, max |o − r|, cosine similarity ⟨o, r⟩ / (‖o‖₂ ‖r‖₂),
//!    and the mean of o − r (bias: a systematic shift, which rounding noise alone would not cause).
//!    The whole output is compared (for learned variance, the variance channels too). The inputs are the ones
//!    the model meets when sampling, not random noise. Each step runs the reference network twice (once here,
//!    once inside [`Sampler::step`], which keeps its output to itself): a third more work than necessary, for a
//!    trajectory that is exactly the sampler's.
//! 2. **Sample agreement.** Both models sample the same images (seed, sampler, steps, η, class) exactly as
//!    `host-cli sample` does: one [`Sampler`] per image at its offset in the noise stream draws exactly what
//!    `sample`'s sub-batches draw, bit for bit (the checksums printed are `sample`'s). Each OTHER image is
//!    scored against its REF twin by PSNR, peak 1, on pixels `(x / 2 + 0.5).clamp(0, 1)` before 8-bit
//!    rounding ([`crate::image`]), so that differences below one grey level still count.
//!
//! Every figure is computed in f64 and does not depend on the thread count. In the JSON, a non-finite number
//! (the PSNR of identical images) is the string `"inf"` (or `"-inf"`, `"nan"`), as in the text report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use ddpm_core::sampler::schedule::alphas_cumprod;
use ddpm_core::sampler::{Method, SampleError, SampleSpec, Sampler};
use ddpm_core::{Model, Schedule};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::blobfile;

/// A comparison request from the command line.
pub struct CompareArgs {
    /// The reference blob (f32).
    pub reference: PathBuf,
    /// The blob measured against it.
    pub other: PathBuf,
    /// Reference DDPM trajectories for the forward error.
    pub trajectories: u32,
    /// Steps of each trajectory (respaced DDPM).
    pub trajectory_steps: u32,
    /// Sampler of the sample comparison.
    pub method: Method,
    /// Images sampled by each model.
    pub num: u32,
    /// Seed of the noise stream, for the trajectories and the samples.
    pub seed: u64,
    /// Inference steps of the sample comparison (default: the training steps for DDPM, 50 for DDIM).
    pub steps: Option<u32>,
    /// Class label for class-conditional models.
    pub class: Option<u32>,
    /// Where to write the figures as JSON.
    pub json: Option<PathBuf>,
}

/// The forward error at one step of the trajectories.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepError {
    /// The timestep t.
    pub t: u32,
    /// ‖o − r‖₂ / ‖r‖₂ over all trajectories.
    pub rel_rms: f64,
    /// max |o − r|.
    pub max_abs: f64,
    /// ⟨o, r⟩ / (‖o‖₂ ‖r‖₂).
    pub cosine: f64,
    /// The mean of o − r (a systematic shift; quantization noise alone averages out).
    pub bias: f64,
}

/// The forward error along the reference trajectories, one entry per step.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardReport {
    /// Trajectories (images).
    pub trajectories: u32,
    /// Steps, from t = T − 1 down.
    pub steps: Vec<StepError>,
}

impl ForwardReport {
    /// The mean relative RMS error over the steps.
    pub fn mean_rel_rms(&self) -> f64 {
        self.steps.iter().map(|s| s.rel_rms).sum::<f64>() / self.steps.len().max(1) as f64
    }

    /// The step with the largest relative RMS error (a NaN counts as the largest).
    pub fn worst(&self) -> Option<StepError> {
        self.steps.iter().copied().reduce(|w, s| if s.rel_rms.is_nan() || s.rel_rms > w.rel_rms { s } else { w })
    }
}

/// How closely OTHER's samples match REF's.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleReport {
    /// Per image: (mean squared pixel error, PSNR in dB; infinite for identical images).
    pub images: Vec<(f64, f64)>,
    /// Inference steps run.
    pub steps: usize,
    /// `sample`'s checksum (FNV-1a 64 over the f32 bits) of REF's samples.
    pub checksum_ref: u64,
    /// The same for OTHER's samples.
    pub checksum_other: u64,
}

impl SampleReport {
    /// The mean PSNR in dB (infinite when any image is identical).
    pub fn mean_psnr(&self) -> f64 {
        self.images.iter().map(|i| i.1).sum::<f64>() / self.images.len().max(1) as f64
    }

    /// The lowest PSNR in dB and its image (a NaN counts as the lowest).
    pub fn min_psnr(&self) -> (f64, usize) {
        let mut worst = (f64::INFINITY, 0);
        for (i, &(_, p)) in self.images.iter().enumerate() {
            if !worst.0.is_nan() && (p.is_nan() || p < worst.0) {
                worst = (p, i);
            }
        }
        worst
    }
}

/// Running sums over the outputs of the two models at one step.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    diff_sq: f64,
    ref_sq: f64,
    other_sq: f64,
    dot: f64,
    max_abs: f64,
    diff_sum: f64,
    count: f64,
}

impl Sums {
    // r (out) vs o (out), the two models' outputs for one image
    fn add(&mut self, r: &[f32], o: &[f32]) {
        for (&r, &o) in r.iter().zip(o) {
            let (r, o) = (f64::from(r), f64::from(o));
            let d = o - r;
            self.diff_sq += d * d;
            self.ref_sq += r * r;
            self.other_sq += o * o;
            self.dot += o * r;
            self.max_abs = nan_max(self.max_abs, d.abs());
            self.diff_sum += d;
            self.count += 1.0;
        }
    }

    fn merge(mut self, b: &Sums) -> Sums {
        self.diff_sq += b.diff_sq;
        self.ref_sq += b.ref_sq;
        self.other_sq += b.other_sq;
        self.dot += b.dot;
        self.max_abs = nan_max(self.max_abs, b.max_abs);
        self.diff_sum += b.diff_sum;
        self.count += b.count;
        self
    }

    fn error(&self, t: u32) -> StepError {
        // Exact agreement is 0 and 1 whatever the norms (a zero output would make both 0/0).
        let same = self.diff_sq == 0.0;
        StepError {
            t,
            rel_rms: if same { 0.0 } else { (self.diff_sq / self.ref_sq).sqrt() },
            max_abs: self.max_abs,
            cosine: if same { 1.0 } else { self.dot / (self.ref_sq.sqrt() * self.other_sq.sqrt()) },
            bias: self.diff_sum / self.count.max(1.0),
        }
    }
}

/// max that keeps a NaN (`f64::max` drops it).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// How two blobs differ as sampling problems: sample shape, output channels, classes and schedule (ᾱ included,
/// so that trained betas are compared too). Empty when they can be compared; the networks themselves may differ.
pub fn differences(r: &Model<'_>, o: &Model<'_>) -> Vec<String> {
    let shape = |m: &Model<'_>| {
        format!("{} x {} x {} -> {} channels", m.in_channels(), m.height(), m.width(), m.out_channels())
    };
    let mut diffs = Vec::new();
    if shape(r) != shape(o) {
        diffs.push(format!("sample {} vs {}", shape(r), shape(o)));
    }
    if r.num_classes() != o.num_classes() {
        diffs.push(format!("{} vs {}", classes(r), classes(o)));
    }
    // The tensor index of the trained betas is a detail of the layout; their values are compared through ᾱ.
    let sched = |m: &Model<'_>| Schedule { trained_betas_tensor: 0, ..m.schedule() };
    let ac = |m: &Model<'_>| {
        let mut a = vec![0f32; m.schedule().num_train_timesteps as usize];
        alphas_cumprod(&m.schedule(), m.trained_betas(), &mut a);
        a.into_iter().map(f32::to_bits).collect::<Vec<_>>()
    };
    if sched(r) != sched(o) || ac(r) != ac(o) {
        let (a, b) = (r.schedule().num_train_timesteps, o.schedule().num_train_timesteps);
        diffs.push(if a != b {
            format!("{a} vs {b} training steps")
        } else {
            "different schedules (see host-cli inspect)".to_string()
        });
    }
    diffs
}

/// `"unconditional"` or `"10 classes"`.
fn classes(m: &Model<'_>) -> String {
    match m.num_classes() {
        0 => "unconditional".to_string(),
        n => format!("{n} classes"),
    }
}

/// A sampler error with the option that caused it.
fn explain(m: &Model<'_>, option: &str, steps: u32, e: SampleError) -> anyhow::Error {
    match e {
        SampleError::BadSteps => anyhow!(
            "{option} {steps}: must be between 1 and the {} training steps, with every timestep inside them \
             (steps_offset {})",
            m.schedule().num_train_timesteps,
            m.schedule().steps_offset
        ),
        SampleError::OutputChannels => anyhow!(
            "the model predicts {} channels for {}-channel images but the blob's variance_type is {}: convert \
             again with --scheduler-set variance_type=learned_range (or learned)",
            m.out_channels(),
            m.in_channels(),
            m.schedule().variance_type.name()
        ),
        e => anyhow!("{e}"),
    }
}

/// `sample`'s default number of steps: the training steps for DDPM, 50 for DDIM, 20 for DPM-Solver++.
fn default_steps(m: &Model<'_>, method: Method) -> u32 {
    match method {
        Method::Ddpm => m.schedule().num_train_timesteps,
        Method::Ddim { .. } => 50,
        Method::DpmSolver { .. } => 20,
    }
}

/// The sampler of image `image` alone: at its offset in the noise stream, it draws what that image draws in
/// any batch.
fn one_image<'m, 'a>(m: &'m Model<'a>, spec: SampleSpec, image: u32, option: &str) -> Result<Sampler<'m, 'a>> {
    Sampler::new(m, SampleSpec { batch: 1, first_image: image, ..spec }).map_err(|e| explain(m, option, spec.steps, e))
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}  eta {{eta}}"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The forward error of `o` against `r` along `trajectories` DDPM runs of `r` with `steps` steps.
pub fn forward_error(
    r: &Model<'_>,
    o: &Model<'_>,
    trajectories: u32,
    steps: u32,
    seed: u64,
    class: Option<u32>,
) -> Result<ForwardReport> {
    if trajectories == 0 {
        bail!("--trajectories must be at least 1");
    }
    o.check_class(class).map_err(|e| anyhow!("{e}"))?;
    let spec = SampleSpec { method: Method::Ddpm, steps, batch: 1, seed, class, first_image: 0 };
    let first = one_image(r, spec, 0, "--trajectory-steps")?;
    let k = first.num_steps();
    let out_len = r.out_channels() * r.height() * r.width();
    let bar = progress(trajectories as usize * k, "trajectory steps");
    let per_image = (0..trajectories)
        .into_par_iter()
        .map(|image| {
            let s = one_image(r, spec, image, "--trajectory-steps")?;
            let mut arena = blobfile::arena(s.arena_bytes());
            let mut fwd = blobfile::arena(r.arena_bytes().max(o.arena_bytes()));
            let (mut out_r, mut out_o) = (vec![0f32; out_len], vec![0f32; out_len]);
            let mut state = s.start(bytemuck::cast_slice_mut(&mut arena), None).map_err(|e| anyhow!("{e}"))?;
            let mut sums = vec![Sums::default(); k];
            for (i, sum) in sums.iter_mut().enumerate() {
                let t = s.timestep(i).unwrap_or(0) as f32;
                let x_t = s.samples(bytemuck::cast_slice(&arena));
                r.forward(bytemuck::cast_slice_mut(&mut fwd), x_t, t, class, &mut out_r).map_err(|e| anyhow!("{e}"))?;
                o.forward(bytemuck::cast_slice_mut(&mut fwd), x_t, t, class, &mut out_o).map_err(|e| anyhow!("{e}"))?;
                sum.add(&out_r, &out_o);
                s.step(bytemuck::cast_slice_mut(&mut arena), &mut state, None).map_err(|e| anyhow!("{e}"))?;
                bar.inc(1);
            }
            Ok(sums)
        })
        .collect::<Result<Vec<Vec<Sums>>>>()?;
    bar.finish_and_clear();
    let steps = (0..k)
        .map(|i| {
            let total = per_image.iter().fold(Sums::default(), |acc, sums| acc.merge(&sums[i]));
            total.error(first.timestep(i).unwrap_or(0))
        })
        .collect();
    Ok(ForwardReport { trajectories, steps })
}

/// Samples `num` images with each model as `host-cli sample` does and scores OTHER's against REF's.
pub fn sample_agreement(
    r: &Model<'_>,
    o: &Model<'_>,
    method: Method,
    num: u32,
    steps: Option<u32>,
    seed: u64,
    class: Option<u32>,
) -> Result<SampleReport> {
    if num == 0 {
        bail!("-n must be at least 1");
    }
    let steps = steps.unwrap_or(default_steps(r, method));
    let spec = SampleSpec { method, steps, batch: 1, seed, class, first_image: 0 };
    // Both models are checked before either runs.
    let k = one_image(r, spec, 0, "--steps")?.num_steps();
    one_image(o, spec, 0, "--steps")?;
    let bar = progress(2 * num as usize * k, "sampling steps");
    let run = |m: &Model<'_>, image: u32| -> Result<Vec<f32>> {
        let s = one_image(m, spec, image, "--steps")?;
        let mut arena = blobfile::arena(s.arena_bytes());
        let mut state = s.start(bytemuck::cast_slice_mut(&mut arena), None).map_err(|e| anyhow!("{e}"))?;
        for _ in 0..k {
            s.step(bytemuck::cast_slice_mut(&mut arena), &mut state, None).map_err(|e| anyhow!("{e}"))?;
            bar.inc(1);
        }
        Ok(s.samples(bytemuck::cast_slice(&arena)).to_vec())
    };
    let (refs, others): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (0..num)
        .into_par_iter()
        .map(|image| Ok((run(r, image)?, run(o, image)?)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    bar.finish_and_clear();
    let pixel = |x: f32| f64::from((x / 2.0 + 0.5).clamp(0.0, 1.0));
    let images = refs
        .iter()
        .zip(&others)
        .map(|(a, b)| {
            let se: f64 = a.iter().zip(b).map(|(&a, &b)| (pixel(b) - pixel(a)).powi(2)).sum();
            let mse = se / a.len().max(1) as f64;
            // peak 1: PSNR = 10 log10(1 / mse), +inf for identical images
            (mse, -10.0 * mse.log10())
        })
        .collect();
    let checksum = |images: &[Vec<f32>]| ddpm_core::fnv1a64(bytemuck::cast_slice(&images.concat()));
    Ok(SampleReport { images, steps: k, checksum_ref: checksum(&refs), checksum_other: checksum(&others) })
}

/// A whole comparison: what was compared and the figures.
pub struct Report {
    /// (path, precision name) of REF and OTHER.
    pub blobs: [(String, String); 2],
    /// `"1 x 28 x 28 -> 1 channels, unconditional, 1000 training steps"`.
    pub model: String,
    /// Seed of the trajectories and samples.
    pub seed: u64,
    /// Sampler of the sample comparison.
    pub method: Method,
    /// Class label.
    pub class: Option<u32>,
    /// Part 1.
    pub forward: ForwardReport,
    /// Part 2.
    pub samples: SampleReport,
}

/// A number for the text report: `inf` for +∞.
fn fmt_db(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        format!("{v}")
    }
}

/// A number for the JSON: non-finite ones as the strings "inf", "-inf", "nan".
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(format!("{v}").to_lowercase())
    }
}

fn method_name(m: Method) -> String {
    match m {
        Method::Ddpm => "DDPM".to_string(),
        Method::Ddim { eta } => format!("DDIM (eta {eta})"),
        Method::DpmSolver { order, lower_order_final, final_sigmas } => format!(
            "DPM-Solver++ (order {order}, lower_order_final {lower_order_final}, final sigma {})",
            final_sigmas.name()
        ),
    }
}

impl Report {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let [(rp, rprec), (op, oprec)] = &self.blobs;
        let class = self.class.map_or(String::new(), |c| format!(", class {c}"));
        let _ = writeln!(s, "REF    {rp} ({rprec})");
        let _ = writeln!(s, "OTHER  {op} ({oprec})");
        let _ = writeln!(s, "model  {}", self.model);
        let f = &self.forward;
        let _ = writeln!(
            s,
            "\nforward error: OTHER vs REF on the x_t of {} DDPM trajectories of REF ({} steps, seed {}{class})",
            f.trajectories,
            f.steps.len(),
            self.seed
        );
        let _ =
            writeln!(s, "{:>5} {:>5} {:>12} {:>12} {:>12} {:>12}", "step", "t", "rel RMS", "max abs", "cosine", "bias");
        for (i, e) in f.steps.iter().enumerate() {
            let _ = writeln!(
                s,
                "{i:>5} {:>5} {:>12.3e} {:>12.3e} {:>12.8} {:>12.3e}",
                e.t, e.rel_rms, e.max_abs, e.cosine, e.bias
            );
        }
        if let Some(w) = f.worst() {
            let _ = writeln!(s, "rel RMS error: mean {:.3e}, worst {:.3e} (t = {})", f.mean_rel_rms(), w.rel_rms, w.t);
        }
        let p = &self.samples;
        let _ = writeln!(
            s,
            "\nsample agreement: {} images, {}, {} steps, seed {}{class}; PSNR of OTHER vs REF, pixels in [0, 1]",
            p.images.len(),
            method_name(self.method),
            p.steps,
            self.seed
        );
        let _ = writeln!(s, "{:>5} {:>10} {:>12}", "image", "PSNR dB", "MSE");
        for (i, (mse, psnr)) in p.images.iter().enumerate() {
            let _ = writeln!(s, "{i:>5} {:>10} {mse:>12.3e}", fmt_db(*psnr));
        }
        let (min, at) = p.min_psnr();
        let _ = writeln!(s, "PSNR: mean {} dB, min {} dB (image {at})", fmt_db(p.mean_psnr()), fmt_db(min));
        let _ = writeln!(
            s,
            "checksums (as host-cli sample prints): REF {:016x}, OTHER {:016x}",
            p.checksum_ref, p.checksum_other
        );
        s
    }

    /// The same figures as JSON.
    pub fn json(&self) -> Value {
        let [(rp, rprec), (op, oprec)] = &self.blobs;
        let f = &self.forward;
        let p = &self.samples;
        let (sampler, eta) = match self.method {
            Method::Ddpm => ("ddpm", 0.0),
            Method::Ddim { eta } => ("ddim", eta),
            Method::DpmSolver { .. } => ("dpm-solver", 0.0),
        };
        let worst = f.worst();
        let (min, at) = p.min_psnr();
        json!({
            "reference": { "path": rp, "precision": rprec },
            "other": { "path": op, "precision": oprec },
            "model": self.model,
            "seed": self.seed,
            "class": self.class,
            "forward": {
                "trajectories": f.trajectories,
                "steps": f.steps.len(),
                "per_step": f.steps.iter().map(|e| json!({
                    "t": e.t,
                    "rel_rms": num(e.rel_rms),
                    "max_abs": num(e.max_abs),
                    "cosine": num(e.cosine),
                    "bias": num(e.bias),
                })).collect::<Vec<_>>(),
                "mean_rel_rms": num(f.mean_rel_rms()),
                "worst_rel_rms": num(worst.map_or(0.0, |w| w.rel_rms)),
                "worst_t": worst.map(|w| w.t),
            },
            "samples": {
                "sampler": sampler,
                "eta": eta,
                "steps": p.steps,
                "n": p.images.len(),
                "per_image": p.images.iter().map(|&(mse, psnr)| json!({
                    "psnr_db": num(psnr),
                    "mse": num(mse),
                })).collect::<Vec<_>>(),
                "mean_psnr_db": num(p.mean_psnr()),
                "min_psnr_db": num(min),
                "min_psnr_image": at,
                "checksum_ref": format!("{:016x}", p.checksum_ref),
                "checksum_other": format!("{:016x}", p.checksum_other),
            },
        })
    }
}

/// Reads both blobs, checks they describe the same model, and measures.
pub fn compare(a: &CompareArgs) -> Result<Report> {
    let (rb, ob) = (blobfile::read(&a.reference)?, blobfile::read(&a.other)?);
    let context = |p: &Path, e: ddpm_core::BlobError| anyhow!("{}: {e}", p.display());
    let r = rb.model().map_err(|e| context(&a.reference, e))?;
    let o = ob.model().map_err(|e| context(&a.other, e))?;
    let diffs = differences(&r, &o);
    if !diffs.is_empty() {
        bail!("{} and {} are not the same model: {}", a.reference.display(), a.other.display(), diffs.join(", "));
    }
    // Every option is checked before the first of the long runs starts (the models share shape and schedule,
    // so checking REF checks OTHER).
    if a.trajectories == 0 || a.num == 0 {
        bail!("--trajectories and -n must be at least 1");
    }
    let probe = |method, steps, option| {
        let spec = SampleSpec { method, steps, batch: 1, seed: a.seed, class: a.class, first_image: 0 };
        one_image(&r, spec, 0, option)
    };
    probe(Method::Ddpm, a.trajectory_steps, "--trajectory-steps")?;
    probe(a.method, a.steps.unwrap_or(default_steps(&r, a.method)), "--steps")?;
    let forward = forward_error(&r, &o, a.trajectories, a.trajectory_steps, a.seed, a.class)?;
    let samples = sample_agreement(&r, &o, a.method, a.num, a.steps, a.seed, a.class)?;
    Ok(Report {
        blobs: [
            (a.reference.display().to_string(), r.precision().name().to_string()),
            (a.other.display().to_string(), o.precision().name().to_string()),
        ],
        model: format!(
            "{} x {} x {} -> {} channels, {}, {} training steps",
            r.in_channels(),
            r.height(),
            r.width(),
            r.out_channels(),
            classes(&r),
            r.schedule().num_train_timesteps
        ),
        seed: a.seed,
        method: a.method,
        class: a.class,
        forward,
        samples,
    })
}

/// `host-cli compare`: prints the report and writes the JSON.
pub fn run(a: &CompareArgs) -> Result<()> {
    let report = compare(a)?;
    print!("{}", report.text());
    if let Some(path) = &a.json {
        let mut text = serde_json::to_string_pretty(&report.json())?;
        text.push('\n');
        blobfile::write_atomic(path, text.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
