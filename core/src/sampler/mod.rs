//! Sampling: DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), respaced, DDIM (Song et al. 2021) and
//! DPM-Solver++ (Lu et al. 2022, multistep orders 1 and 2: [`dpm_solver`]), following diffusers'
//! `DDPMScheduler.step`, `DDIMScheduler.step` and `DPMSolverMultistepScheduler.step` operation by operation in
//! f32.
//!
//! A run is step by step: [`Sampler::start`] puts x_T in the caller's arena, each [`Sampler::step`] denoises
//! the whole batch by one step, and [`Sampler::samples`] reads the current x_t. Everything lives in the arena,
//! so a run can be stopped and later resumed ([`Sampler::resume`]) with the same result as an uninterrupted run.
//!
//! Arena layout (from its first 16-byte aligned address, in f32 elements):
//! `[forward arena | ᾱ (T) | x_t (N·C·H·W) | x̂₀ (N·C·H·W) | model output (C_out·H·W) | sort scratch (C·H·W)]`.
//! The x̂₀ region holds each image's x̂₀ of the last step; DPM-Solver++ reads it back at the next step as the
//! previous data prediction of its multistep update (diffusers' `model_outputs[-2]`), so the multistep state
//! needs no buffer of its own: with the step count ([`State`]) it is the whole state of every method.

use crate::error::RunError;
use crate::format::{PredictionType, VarianceType, ALIGN};
use crate::model::Model;
use crate::rng;
use schedule::{alphas_cumprod, Timesteps};

pub mod dpm_solver;
pub mod schedule;

/// The sampling algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// DDPM ancestral sampling (`DDPMScheduler`), with the blob's variance type.
    Ddpm,
    /// DDIM (`DDIMScheduler`) with stochasticity `eta` (0 = deterministic).
    Ddim {
        /// η of Song et al. 2021, eq. 16.
        eta: f32,
    },
    /// DPM-Solver++ (`DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, `solver_type=
    /// "midpoint"`): deterministic, multistep. Its options are not in the blob's schedule record, so they are
    /// chosen here; [`Method::DPM_SOLVER`] has diffusers' defaults.
    DpmSolver {
        /// `solver_order`: 1 or 2 (3 is not supported).
        order: u8,
        /// `lower_order_final`: first order at the last step when the run has fewer than 15 steps.
        lower_order_final: bool,
        /// `final_sigmas_type`.
        final_sigmas: FinalSigmas,
    },
}

impl Method {
    /// DPM-Solver++ (2M) with diffusers' defaults: `solver_order=2`, `lower_order_final=True`,
    /// `final_sigmas_type="zero"`.
    pub const DPM_SOLVER: Method =
        Method::DpmSolver { order: 2, lower_order_final: true, final_sigmas: FinalSigmas::Zero };
}

/// DPM-Solver++'s `final_sigmas_type`: the σ the last step lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// `"zero"`: σ = 0, the clean sample (the last step is then always first order, as in diffusers).
    Zero,
    /// `"sigma_min"`: σ of training timestep 0, √((1 − ᾱ_0)/ᾱ_0).
    SigmaMin,
}

impl FinalSigmas {
    /// diffusers' name.
    pub fn name(self) -> &'static str {
        match self {
            FinalSigmas::Zero => "zero",
            FinalSigmas::SigmaMin => "sigma_min",
        }
    }
}

/// What to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSpec {
    /// Algorithm.
    pub method: Method,
    /// Number of inference steps `k` (`set_timesteps(k)`); at most the training steps.
    pub steps: u32,
    /// Images in the batch.
    pub batch: u32,
    /// Seed of the noise stream ([`crate::rng`]).
    pub seed: u64,
    /// Class label for class-conditional models.
    pub class: Option<u32>,
    /// Index of this batch's first image in the noise stream. A batch split into sub-batches (one per core,
    /// say) draws exactly the noise of the whole batch when each part starts at its offset.
    pub first_image: u32,
}

/// Why sampling cannot start or continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleError {
    /// `steps` is 0, exceeds the training steps, or gives timesteps outside `0..T` (e.g. with `steps_offset`).
    BadSteps,
    /// `batch` is 0.
    EmptyBatch,
    /// `eta` is negative or not finite.
    BadEta,
    /// The model predicts 2·C channels (learned variance) but the schedule's variance type is fixed, or the
    /// output channels fit neither C nor 2·C.
    OutputChannels,
    /// A noise slice given to the sampler has the wrong length, or a step that adds noise got none.
    BadNoise,
    /// DPM-Solver++'s `solver_order` is not 1 or 2.
    BadSolverOrder,
    /// Resuming a multistep (DPM-Solver++) run needs the previous step's x̂₀ as well as x_t.
    NeedsHistory,
    /// The run already finished, or a resume point is past the end.
    Finished,
    /// The forward pass failed.
    Run(RunError),
}

impl core::fmt::Display for SampleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SampleError::BadSteps => f.write_str("invalid number of steps for this schedule"),
            SampleError::EmptyBatch => f.write_str("batch size must be at least 1"),
            SampleError::BadEta => f.write_str("eta must be a finite number >= 0"),
            SampleError::OutputChannels => f.write_str("model output channels do not fit the schedule's variance type"),
            SampleError::BadNoise => f.write_str("noise has the wrong size, or a noisy step got no noise"),
            SampleError::BadSolverOrder => f.write_str("DPM-Solver++ solver_order must be 1 or 2"),
            SampleError::NeedsHistory => {
                f.write_str("resuming a DPM-Solver++ run needs the previous step's x0 prediction as well as x_t")
            }
            SampleError::Finished => f.write_str("the sampling run is already finished"),
            SampleError::Run(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SampleError {}

impl From<RunError> for SampleError {
    fn from(e: RunError) -> Self {
        SampleError::Run(e)
    }
}

/// Progress of a run: the number of denoising steps done. With the arena, it is the whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Steps done so far.
    pub done: usize,
}

/// Per-step scalars, named as in diffusers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// The timestep t.
    pub t: u32,
    /// ᾱ_t (`alpha_prod_t`).
    pub alpha_prod_t: f32,
    /// ᾱ_{prev} (`alpha_prod_t_prev`): 1 (or ᾱ_0 for DDIM without `set_alpha_to_one`, or for DPM-Solver++
    /// with `final_sigmas_type="sigma_min"`) past the end.
    pub alpha_prod_t_prev: f32,
    /// DPM-Solver++ only: the solver's scalars of this step.
    pub dpm: Option<dpm_solver::DpmScalars>,
}

/// The stepping of a schedule, without a model: which timesteps, which ᾱ, which steps add noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steps {
    /// The schedule.
    pub schedule: crate::Schedule,
    /// The algorithm.
    pub method: Method,
    /// The inference timesteps.
    pub timesteps: Timesteps,
}

impl Steps {
    /// `set_timesteps(k)` for `method`; `None` for an impossible `k` (see [`Timesteps::new`] and
    /// [`Timesteps::new_dpm`]), a bad η or a DPM-Solver++ order other than 1 and 2.
    pub fn new(schedule: crate::Schedule, method: Method, k: u32) -> Option<Self> {
        let timesteps = match method {
            Method::Ddim { eta } if !(eta.is_finite() && eta >= 0.0) => return None,
            Method::DpmSolver { order, .. } if !(1..=2).contains(&order) => return None,
            Method::DpmSolver { .. } => Timesteps::new_dpm(&schedule, k)?,
            _ => Timesteps::new(&schedule, k)?,
        };
        Some(Steps { schedule, method, timesteps })
    }

    /// Whether step `i` adds noise (DDPM: t > 0; DDIM: η > 0; DPM-Solver++: never), as diffusers decides.
    pub fn adds_noise(&self, i: usize) -> bool {
        match self.method {
            Method::Ddpm => self.timesteps.get(i).is_some_and(|t| t > 0),
            Method::Ddim { eta } => eta > 0.0,
            Method::DpmSolver { .. } => false,
        }
    }

    /// Whether step `i` reads the x̂₀ of step `i − 1` (a second-order DPM-Solver++ step), so that resuming a
    /// run at `i` needs it.
    pub fn reads_previous_x0(&self, i: usize) -> bool {
        i < self.timesteps.len() && dpm_solver::order_at(self.method, i, self.timesteps.len()) == 2
    }

    /// The scalars of step `i`, given ᾱ (`alphas_cumprod`, length T). DDPM and DPM-Solver++ step to the next
    /// inference timestep; DDIM to `t − T // k`, as diffusers does whatever the spacing.
    pub fn scalars(&self, alphas_cumprod: &[f32], i: usize) -> Option<StepScalars> {
        let t = self.timesteps.get(i)?;
        let s = &self.schedule;
        let prev: i64 = match self.method {
            Method::Ddpm | Method::DpmSolver { .. } => self.timesteps.get(i + 1).map_or(-1, i64::from),
            Method::Ddim { .. } => i64::from(t) - i64::from(s.num_train_timesteps / self.timesteps.requested()),
        };
        let alpha_prod_t = *alphas_cumprod.get(t as usize)?;
        let final_alpha = match self.method {
            Method::Ddim { .. } if !s.set_alpha_to_one => *alphas_cumprod.first()?,
            Method::DpmSolver { final_sigmas: FinalSigmas::SigmaMin, .. } => *alphas_cumprod.first()?,
            _ => 1.0,
        };
        let alpha_prod_t_prev = if prev >= 0 { *alphas_cumprod.get(prev as usize)? } else { final_alpha };
        let dpm = match self.method {
            Method::DpmSolver { .. } => Some(dpm_solver::scalars(self, alphas_cumprod, i)?),
            _ => None,
        };
        Some(StepScalars { t, alpha_prod_t, alpha_prod_t_prev, dpm })
    }

    /// Step `i` for one image: `x` (x_t in, x_{t−1} out), `x0` (x̂₀ out; for DPM-Solver++ also in: the
    /// previous step's x̂₀), the model output (ε, x₀ or v; for learned variance followed by the variance
    /// channels), `scratch` of x's length, and `noise` filling a buffer with z when the step adds noise.
    #[allow(clippy::too_many_arguments)]
    pub fn step_one(
        &self,
        sc: &StepScalars,
        adds_noise: bool,
        x: &mut [f32],
        x0: &mut [f32],
        model_out: &[f32],
        scratch: &mut [f32],
        noise: &mut dyn FnMut(&mut [f32]),
    ) -> Result<(), SampleError> {
        let len = x.len();
        if x0.len() != len || scratch.len() < len || model_out.len() < len {
            return Err(SampleError::BadNoise);
        }
        let (eps, var) = model_out.split_at(len);
        match self.method {
            Method::Ddpm => ddpm_step(x, x0, eps, var, scratch, &self.schedule, sc, adds_noise, noise),
            Method::Ddim { eta } => ddim_step(x, x0, eps, scratch, &self.schedule, sc, eta, noise),
            Method::DpmSolver { .. } => {
                let dpm = sc.dpm.as_ref().ok_or(SampleError::BadSteps)?;
                dpm_solver::step(x, x0, eps, scratch, &self.schedule, dpm)
            }
        }
    }
}

/// [`Sampler::arena_bytes`] computed from the blob's bytes in a `const` context, so firmware can size a static
/// arena at compile time: `static mut ARENA: [u8; sampler_arena_bytes(BLOB, 1)]`. It reads the header fields
/// without validating the blob (validation happens at run time in [`Model::new_checked`]); for bytes that are
/// not a blob the result is meaningless (or a compile-time error when the header is too short). The same for
/// every method: DPM-Solver++ keeps its multistep state in the x̂₀ region that every run has.
pub const fn sampler_arena_bytes(blob: &[u8], batch: usize) -> usize {
    use crate::format::{header::field as h, read_u32, schedule::field as s};
    let cin = read_u32(blob, h::IN_CHANNELS) as usize;
    let cout = read_u32(blob, h::OUT_CHANNELS) as usize;
    let (height, width) = (read_u32(blob, h::HEIGHT) as usize, read_u32(blob, h::WIDTH) as usize);
    let forward = read_u32(blob, h::ARENA_BYTES) as usize;
    let at = read_u32(blob, h::SCHEDULE) as usize + s::NUM_TRAIN_TIMESTEPS.start;
    let train_steps = read_u32(blob, at..at + 4) as usize;
    let sample = cin * height * width;
    forward + 4 * (train_steps + 2 * batch * sample + cout * height * width + sample)
}

/// A configured sampler for one model.
#[derive(Debug, Clone, Copy)]
pub struct Sampler<'m, 'a> {
    model: &'m Model<'a>,
    spec: SampleSpec,
    steps: Steps,
    sample_len: usize,
    learned: bool,
}

fn split_f32_ref(arena: &[u8]) -> &[f32] {
    let skip = arena.as_ptr().align_offset(ALIGN).min(arena.len());
    let usable = (arena.len() - skip) / 4 * 4;
    bytemuck::try_cast_slice(&arena[skip..skip + usable]).unwrap_or(&[])
}

fn split_f32(arena: &mut [u8]) -> &mut [f32] {
    let skip = arena.as_ptr().align_offset(ALIGN).min(arena.len());
    let usable = (arena.len() - skip) / 4 * 4;
    bytemuck::try_cast_slice_mut(&mut arena[skip..skip + usable]).unwrap_or(&mut [])
}

impl<'m, 'a> Sampler<'m, 'a> {
    /// Checks a sampling request against the model and its schedule.
    pub fn new(model: &'m Model<'a>, spec: SampleSpec) -> Result<Self, SampleError> {
        let s = model.schedule();
        match spec.method {
            Method::Ddim { eta } if !(eta.is_finite() && eta >= 0.0) => return Err(SampleError::BadEta),
            Method::DpmSolver { order, .. } if !(1..=2).contains(&order) => return Err(SampleError::BadSolverOrder),
            _ => {}
        }
        let steps = Steps::new(s, spec.method, spec.steps).ok_or(SampleError::BadSteps)?;
        if spec.batch == 0 {
            return Err(SampleError::EmptyBatch);
        }
        let (cin, cout) = (model.in_channels(), model.out_channels());
        let learned_type = s.variance_type.is_learned();
        // DDIM and DPM-Solver++ read the first C channels of a learned-variance output and ignore the rest.
        let learned = cout == 2 * cin && (learned_type || !matches!(spec.method, Method::Ddpm));
        let fixed_ok = cout == cin && !learned_type;
        if !fixed_ok && !learned {
            return Err(SampleError::OutputChannels);
        }
        model.check_class(spec.class)?;
        let sample_len = cin * model.height() * model.width();
        Ok(Sampler { model, spec, steps, sample_len, learned })
    }

    /// Number of denoising steps of the run.
    pub fn num_steps(&self) -> usize {
        self.steps.timesteps.len()
    }

    /// The timestep of step `i`.
    pub fn timestep(&self, i: usize) -> Option<u32> {
        self.steps.timesteps.get(i)
    }

    /// The schedule stepping of this run.
    pub fn steps(&self) -> &Steps {
        &self.steps
    }

    /// Elements of one image (C·H·W).
    pub fn sample_len(&self) -> usize {
        self.sample_len
    }

    fn offsets(&self) -> [usize; 6] {
        let fwd = self.model.arena_bytes() / 4;
        let t = self.model.schedule().num_train_timesteps as usize;
        let n = self.spec.batch as usize * self.sample_len;
        let out = self.model.out_channels() * self.model.height() * self.model.width();
        let ac = fwd;
        let x = ac + t;
        let x0 = x + n;
        let mo = x0 + n;
        let scratch = mo + out;
        [ac, x, x0, mo, scratch, scratch + self.sample_len]
    }

    /// Arena bytes a run needs, counted from a 16-byte aligned start (add 15 if the start is not aligned):
    /// the forward arena plus ᾱ, x_t and x̂₀ for the batch, one model output and one sort buffer.
    pub fn arena_bytes(&self) -> usize {
        self.offsets()[5] * 4
    }

    fn arena<'b>(&self, arena: &'b mut [u8]) -> Result<&'b mut [f32], SampleError> {
        let need = self.arena_bytes();
        let have = arena.len().saturating_sub(arena.as_ptr().align_offset(ALIGN));
        let a = split_f32(arena);
        a.get_mut(..need / 4).ok_or(SampleError::Run(RunError::ArenaTooSmall { need, have }))
    }

    fn prepare<'b>(&self, arena: &'b mut [u8]) -> Result<&'b mut [f32], SampleError> {
        let [ac, x, ..] = self.offsets();
        let a = self.arena(arena)?;
        let s = self.model.schedule();
        alphas_cumprod(&s, self.model.trained_betas(), &mut a[ac..x]);
        Ok(a)
    }

    /// Starts a run: x_T from the noise stream (draw 0), or from `x_t` (N·C·H·W) when given.
    pub fn start(&self, arena: &mut [u8], x_t: Option<&[f32]>) -> Result<State, SampleError> {
        let [_, x, x0, ..] = self.offsets();
        let a = self.prepare(arena)?;
        let xs = &mut a[x..x0];
        match x_t {
            Some(given) if given.len() == xs.len() => xs.copy_from_slice(given),
            Some(_) => return Err(SampleError::BadNoise),
            None => {
                for (n, img) in xs.chunks_mut(self.sample_len).enumerate() {
                    rng::fill_normal(img, self.spec.seed, self.spec.first_image.wrapping_add(n as u32), 0);
                }
            }
        }
        Ok(State { done: 0 })
    }

    /// Resumes a run `done` steps in, from its saved x_t ([`Sampler::samples`], N·C·H·W) and, for a
    /// DPM-Solver++ run whose next step is second order ([`Steps::reads_previous_x0`]), its saved x̂₀
    /// ([`Sampler::pred_original`], N·C·H·W): [`SampleError::NeedsHistory`] without it. A given x̂₀ is
    /// restored for every method.
    pub fn resume(&self, arena: &mut [u8], x_t: &[f32], x0: Option<&[f32]>, done: usize) -> Result<State, SampleError> {
        if done > self.num_steps() {
            return Err(SampleError::Finished);
        }
        if x0.is_none() && self.steps.reads_previous_x0(done) {
            return Err(SampleError::NeedsHistory);
        }
        let [_, x, x0s, mo, ..] = self.offsets();
        if x0.is_some_and(|v| v.len() != mo - x0s) || x_t.len() != x0s - x {
            return Err(SampleError::BadNoise);
        }
        self.start(arena, Some(x_t))?;
        if let Some(v) = x0 {
            self.arena(arena)?[x0s..mo].copy_from_slice(v);
        }
        Ok(State { done })
    }

    /// Whether step `i` adds noise.
    pub fn step_adds_noise(&self, i: usize) -> bool {
        self.steps.adds_noise(i)
    }

    /// Runs denoising step `state.done` for the whole batch. `noise` (N·C·H·W) replaces the stream's draw
    /// `state.done + 1` for a step that adds noise; it is ignored by a step that adds none.
    pub fn step(&self, arena: &mut [u8], state: &mut State, noise: Option<&[f32]>) -> Result<(), SampleError> {
        let i = state.done;
        if i >= self.num_steps() {
            return Err(SampleError::Finished);
        }
        let [ac, x, x0, mo, scratch, end] = self.offsets();
        let fwd_bytes = self.model.arena_bytes();
        let a = self.arena(arena)?;
        let sc = self.steps.scalars(&a[ac..x], i).ok_or(SampleError::BadSteps)?;
        let adds_noise = self.steps.adds_noise(i);
        if let Some(n) = noise {
            if n.len() != x0 - x {
                return Err(SampleError::BadNoise);
            }
        }
        let len = self.sample_len;
        let (fwd, rest) = a.split_at_mut(x);
        let (xs, rest) = rest.split_at_mut(x0 - x);
        let (x0s, rest) = rest.split_at_mut(mo - x0);
        let (out, rest) = rest.split_at_mut(scratch - mo);
        let sort = &mut rest[..end - scratch];
        let fwd_bytes_slice: &mut [u8] = bytemuck::cast_slice_mut(&mut fwd[..fwd_bytes / 4]);
        for (n, (xi, x0i)) in xs.chunks_mut(len).zip(x0s.chunks_mut(len)).enumerate() {
            self.model.forward(fwd_bytes_slice, xi, sc.t as f32, self.spec.class, out)?;
            let out = if self.learned { &out[..] } else { &out[..len] };
            let mut draw = |dst: &mut [f32]| match noise {
                Some(given) => dst.copy_from_slice(&given[n * len..(n + 1) * len]),
                None => {
                    rng::fill_normal(dst, self.spec.seed, self.spec.first_image.wrapping_add(n as u32), i as u32 + 1)
                }
            };
            self.steps.step_one(&sc, adds_noise, xi, x0i, out, sort, &mut draw)?;
        }
        state.done += 1;
        Ok(())
    }

    /// The current samples x_t (after the last step: x_0), N·C·H·W.
    pub fn samples<'b>(&self, arena: &'b [u8]) -> &'b [f32] {
        let [_, x, x0, ..] = self.offsets();
        split_f32_ref(arena).get(x..x0).unwrap_or(&[])
    }

    /// The prediction of x_0 made by the last step (after clipping or thresholding), N·C·H·W. For DPM-Solver++
    /// it is the data prediction its next step reads: save it with [`Sampler::samples`] to resume a run.
    pub fn pred_original<'b>(&self, arena: &'b [u8]) -> &'b [f32] {
        let [_, _, x0, mo, ..] = self.offsets();
        split_f32_ref(arena).get(x0..mo).unwrap_or(&[])
    }
}

/// x̂₀ from the model output (diffusers' `prediction_type`).
fn predict_x0(x: f32, m: f32, prediction_type: PredictionType, sqrt_a: f32, sqrt_b: f32) -> f32 {
    match prediction_type {
        PredictionType::Sample => m,
        PredictionType::VPrediction => sqrt_a * x - sqrt_b * m,
        PredictionType::Epsilon => (x - sqrt_b * m) / sqrt_a,
    }
}

/// Clips or dynamically thresholds x̂₀ (Saharia et al. 2022, §3.3; diffusers `_threshold_sample`): the
/// `dynamic_thresholding_ratio` quantile `s` of |x̂₀| (linear interpolation, like `torch.quantile`), clamped
/// to `[1, sample_max_value]`; then x̂₀ ← clamp(x̂₀, −s, s) / s.
fn clip_or_threshold(x0: &mut [f32], sort: &mut [f32], s: &crate::Schedule) {
    if s.thresholding {
        let n = x0.len().min(sort.len());
        sort[..n].copy_from_slice(&x0[..n]);
        if let Some(t) = threshold_scale(&mut sort[..n], s) {
            x0.iter_mut().for_each(|v| *v = v.max(-t).min(t) / t);
        }
    } else if s.clip_sample {
        let r = s.clip_sample_range;
        x0.iter_mut().for_each(|v| *v = v.max(-r).min(r));
    }
}

/// The dynamic-thresholding scale s of x̂₀ (`values`, replaced by its sorted absolute values): the
/// `dynamic_thresholding_ratio` quantile of |x̂₀|, interpolated like `torch.quantile`, clamped to
/// `[1, sample_max_value]`. `None` for an empty slice.
fn threshold_scale(values: &mut [f32], s: &crate::Schedule) -> Option<f32> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    values.iter_mut().for_each(|v| *v = libm::fabsf(*v));
    values.sort_unstable_by(f32::total_cmp);
    let rank = s.dynamic_thresholding_ratio * (n - 1) as f32;
    let lo = (libm::floorf(rank).max(0.0) as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let w = rank - lo as f32;
    let (a, b) = (values[lo], values[hi]);
    let q = if w < 0.5 { a + w * (b - a) } else { b - (b - a) * (1.0 - w) };
    Some(q.max(1.0).min(s.sample_max_value))
}

/// One DDPM step for one image (diffusers `DDPMScheduler.step`):
/// 1. x̂₀ from the model output (Ho et al. eq. 15 for ε-prediction), clipped or thresholded;
/// 2. the posterior mean μ̃_t = (√ᾱ_{t−1} β_t / (1 − ᾱ_t)) x̂₀ + (√α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)) x_t (eq. 7);
/// 3. x_{t−1} = μ̃_t + σ_t z for t > 0 (Algorithm 2, line 4), with σ_t from `variance_type`.
#[allow(clippy::too_many_arguments)]
fn ddpm_step(
    x: &mut [f32],
    x0: &mut [f32],
    model_out: &[f32],
    predicted_variance: &[f32],
    sort: &mut [f32],
    s: &crate::Schedule,
    sc: &StepScalars,
    adds_noise: bool,
    draw: &mut dyn FnMut(&mut [f32]),
) -> Result<(), SampleError> {
    let (alpha_prod_t, alpha_prod_t_prev) = (sc.alpha_prod_t, sc.alpha_prod_t_prev);
    let beta_prod_t = 1.0 - alpha_prod_t;
    let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
    let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
    let current_beta_t = 1.0 - current_alpha_t;
    let (sqrt_a, sqrt_b) = (libm::sqrtf(alpha_prod_t), libm::sqrtf(beta_prod_t));
    for ((o, xv), m) in x0.iter_mut().zip(x.iter()).zip(model_out) {
        *o = predict_x0(*xv, *m, s.prediction_type, sqrt_a, sqrt_b);
    }
    clip_or_threshold(x0, sort, s);
    // 2. posterior mean coefficients
    let pred_original_sample_coeff = (libm::sqrtf(alpha_prod_t_prev) * current_beta_t) / beta_prod_t;
    let current_sample_coeff = libm::sqrtf(current_alpha_t) * beta_prod_t_prev / beta_prod_t;
    for (xv, o) in x.iter_mut().zip(x0.iter()) {
        *xv = pred_original_sample_coeff * *o + current_sample_coeff * *xv;
    }
    if !adds_noise {
        return Ok(());
    }
    // 3. σ_t: the posterior variance β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t (eq. 7), clamped at 1e-20.
    let variance = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
    let z = &mut sort[..x.len()];
    draw(z);
    match s.variance_type {
        // learned: the model predicts σ_t² directly
        VarianceType::Learned => {
            if predicted_variance.len() != x.len() {
                return Err(SampleError::OutputChannels);
            }
            for ((xv, zv), v) in x.iter_mut().zip(z.iter()).zip(predicted_variance) {
                *xv += libm::sqrtf(*v) * zv;
            }
        }
        // learned_range: log σ_t² interpolates between log β̃_t and log β_t (Nichol & Dhariwal 2021, eq. 15)
        VarianceType::LearnedRange => {
            if predicted_variance.len() != x.len() {
                return Err(SampleError::OutputChannels);
            }
            let (min_log, max_log) = (libm::logf(variance), libm::logf(current_beta_t));
            for ((xv, zv), v) in x.iter_mut().zip(z.iter()).zip(predicted_variance) {
                let frac = (v + 1.0) / 2.0;
                let log_var = frac * max_log + (1.0 - frac) * min_log;
                *xv += libm::expf(0.5 * log_var) * zv;
            }
        }
        fixed => {
            let std = match fixed {
                VarianceType::FixedSmallLog => libm::expf(0.5 * libm::logf(variance)),
                VarianceType::FixedLarge => libm::sqrtf(current_beta_t),
                // fixed_large_log: diffusers takes the square root of log β_t, a NaN; we use its evident
                // meaning, σ_t = exp(½ log β_t) = √β_t (see docs/sampling.md).
                VarianceType::FixedLargeLog => libm::expf(0.5 * libm::logf(current_beta_t)),
                _ => libm::sqrtf(variance),
            };
            for (xv, zv) in x.iter_mut().zip(z.iter()) {
                *xv += std * zv;
            }
        }
    }
    Ok(())
}

/// One DDIM step for one image (diffusers `DDIMScheduler.step`; Song et al. 2021, eq. 12):
/// x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z, σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}).
#[allow(clippy::too_many_arguments)]
fn ddim_step(
    x: &mut [f32],
    x0: &mut [f32],
    model_out: &[f32],
    sort: &mut [f32],
    s: &crate::Schedule,
    sc: &StepScalars,
    eta: f32,
    draw: &mut dyn FnMut(&mut [f32]),
) -> Result<(), SampleError> {
    let (alpha_prod_t, alpha_prod_t_prev) = (sc.alpha_prod_t, sc.alpha_prod_t_prev);
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sqrt_a, sqrt_b) = (libm::sqrtf(alpha_prod_t), libm::sqrtf(beta_prod_t));
    for ((o, xv), m) in x0.iter_mut().zip(x.iter()).zip(model_out) {
        *o = predict_x0(*xv, *m, s.prediction_type, sqrt_a, sqrt_b);
    }
    let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
    let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
    let std_dev_t = eta * libm::sqrtf(variance);
    let dir_coeff = libm::sqrtf(1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t);
    let sqrt_prev = libm::sqrtf(alpha_prod_t_prev);
    // ε̂ comes from the unclipped x̂₀ (diffusers' default `use_clipped_model_output=False`), so compute the
    // direction term before clipping; x is overwritten with it and then completed.
    for (xv, (o, m)) in x.iter_mut().zip(x0.iter().zip(model_out)) {
        let pred_epsilon = match s.prediction_type {
            PredictionType::Sample => (*xv - sqrt_a * *o) / sqrt_b,
            PredictionType::VPrediction => sqrt_a * *m + sqrt_b * *xv,
            PredictionType::Epsilon => *m,
        };
        *xv = dir_coeff * pred_epsilon;
    }
    clip_or_threshold(x0, sort, s);
    for (xv, o) in x.iter_mut().zip(x0.iter()) {
        *xv += sqrt_prev * *o;
    }
    if eta > 0.0 {
        let z = &mut sort[..x.len()];
        draw(z);
        for (xv, zv) in x.iter_mut().zip(z.iter()) {
            *xv += std_dev_t * zv;
        }
    }
    Ok(())
}
