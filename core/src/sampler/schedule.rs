//! Noise schedules and inference timesteps, following diffusers' `DDPMScheduler` / `DDIMScheduler` and
//! `DPMSolverMultistepScheduler` (`__init__` and `set_timesteps`) option by option, in the same floating-point
//! precision.

use crate::format::{BetaSchedule, Schedule, TimestepSpacing};
use crate::model::TensorView;

/// β_t for `t in 0..T` into `out` (length T), as diffusers computes them in f32:
/// - linear: `torch.linspace(β_start, β_end, T)` (f32; torch fills the first half from the start and the second
///   half from the end);
/// - scaled_linear: `linspace(√β_start, √β_end, T)²`;
/// - squaredcos_cap_v2: `β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), 0.999)` with `ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)`
///   (Nichol & Dhariwal 2021, eq. 17), computed in f64 and rounded;
/// - sigmoid: `σ(linspace(−6, 6, T))·(β_end − β_start) + β_start`;
/// - trained: the blob's tensor.
fn betas(s: &Schedule, trained: Option<TensorView<'_>>, out: &mut [f32]) {
    let n = out.len();
    let linspace = |out: &mut [f32], start: f32, end: f32| {
        let step = if n > 1 { (end - start) / (n - 1) as f32 } else { 0.0 };
        let half = n / 2;
        for (i, o) in out.iter_mut().enumerate() {
            *o = if i < half { start + step * i as f32 } else { end - step * (n - i - 1) as f32 };
        }
    };
    match s.beta_schedule {
        BetaSchedule::ScaledLinear => {
            linspace(out, libm::sqrt(f64::from(s.beta_start)) as f32, libm::sqrt(f64::from(s.beta_end)) as f32);
            out.iter_mut().for_each(|b| *b = *b * *b);
        }
        BetaSchedule::SquaredcosCapV2 => {
            let abar = |t: f64| {
                let c = libm::cos((t + 0.008) / 1.008 * core::f64::consts::PI / 2.0);
                c * c
            };
            for (i, o) in out.iter_mut().enumerate() {
                let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                *o = (1.0 - abar(t2) / abar(t1)).min(0.999) as f32;
            }
        }
        BetaSchedule::Sigmoid => {
            linspace(out, -6.0, 6.0);
            let (range, start) = (s.beta_end - s.beta_start, s.beta_start);
            out.iter_mut().for_each(|b| *b = 1.0 / (1.0 + libm::expf(-*b)) * range + start);
        }
        BetaSchedule::TrainedBetas => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = trained.map_or(0.0, |t| t.get_f32(i));
            }
        }
        BetaSchedule::Linear => linspace(out, s.beta_start, s.beta_end),
    }
}

/// ᾱ_t = ∏_{s ≤ t} (1 − β_s) for `t in 0..T` into `out` (length T). Like `torch.cumprod` on the CPU, the
/// product runs in f64 and each prefix is rounded to f32. `trained` holds the betas when `beta_schedule` is 4
/// ([`crate::Model::trained_betas`]).
pub fn alphas_cumprod(s: &Schedule, trained: Option<TensorView<'_>>, out: &mut [f32]) {
    betas(s, trained, out);
    if s.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(out);
    }
    cumprod_of_one_minus(out);
}

/// `out[t] = ∏_{s ≤ t} (1 − out[s])`, accumulated in f64 and rounded per prefix.
fn cumprod_of_one_minus(out: &mut [f32]) {
    let mut acc = 1.0f64;
    for v in out.iter_mut() {
        acc *= f64::from(1.0 - *v);
        *v = acc as f32;
    }
}

/// Rescales betas in place so that the final ᾱ is zero (Lin et al. 2024, "Common diffusion noise schedules
/// and sample steps are flawed", Algorithm 1), in diffusers' f32 operation order: √ᾱ is shifted so its last
/// value is 0 and scaled so its first is unchanged; then β_t = 1 − ᾱ_t/ᾱ_{t−1} (β_0 = 1 − ᾱ_0).
fn rescale_zero_terminal_snr(betas: &mut [f32]) {
    let n = betas.len();
    if n == 0 {
        return;
    }
    cumprod_of_one_minus(betas);
    betas.iter_mut().for_each(|v| *v = libm::sqrtf(*v));
    let (first, last) = (betas[0], betas[n - 1]);
    let scale = first / (first - last);
    betas.iter_mut().for_each(|v| *v = (*v - last) * scale);
    betas.iter_mut().for_each(|v| *v = *v * *v);
    for i in (1..n).rev() {
        betas[i] = 1.0 - betas[i] / betas[i - 1];
    }
    betas[0] = 1.0 - betas[0];
}

/// The inference timesteps of `set_timesteps(k)`, in denoising order (descending).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timesteps {
    train: u32,
    k: u32,
    spacing: TimestepSpacing,
    offset: u32,
    len: u32,
    /// `DPMSolverMultistepScheduler.set_timesteps`, whose linspace and leading spacings differ (below).
    dpm: bool,
}

impl Timesteps {
    /// `set_timesteps(k)` of `DDPMScheduler` / `DDIMScheduler` for a schedule. `None` if `k` is 0 or exceeds
    /// the training steps, or if a timestep would fall outside `0..T` (diffusers would index out of range).
    pub fn new(s: &Schedule, k: u32) -> Option<Self> {
        Self::make(s, k, false)
    }

    /// `set_timesteps(k)` of `DPMSolverMultistepScheduler` (with its default `lambda_min_clipped = -inf`, so
    /// the last timestep is T): linspace takes `k + 1` points and drops the last (t = 0), leading steps by
    /// `T // (k + 1)`, trailing is as [`Timesteps::new`]. `None` where [`Timesteps::new`] would be, and also
    /// when two timesteps coincide (linspace with k = T, leading with k ≥ T): diffusers' solver would divide
    /// by a zero step there.
    pub fn new_dpm(s: &Schedule, k: u32) -> Option<Self> {
        let ts = Self::make(s, k, true)?;
        (1..ts.len).all(|i| ts.raw(i) < ts.raw(i - 1)).then_some(ts)
    }

    fn make(s: &Schedule, k: u32, dpm: bool) -> Option<Self> {
        let train = s.num_train_timesteps;
        if k == 0 || k > train {
            return None;
        }
        // trailing: np.arange(T, 0, -T/k) has ceil(T / (T/k)) entries, computed in f64.
        let len = if s.timestep_spacing == TimestepSpacing::Trailing {
            let ratio = f64::from(train) / f64::from(k);
            libm::ceil(f64::from(train) / ratio) as u32
        } else {
            k
        };
        let ts = Timesteps { train, k, spacing: s.timestep_spacing, offset: s.steps_offset, len, dpm };
        if (0..len).all(|i| ts.raw(i) >= 0 && ts.raw(i) < i64::from(train)) {
            Some(ts)
        } else {
            None
        }
    }

    fn raw(&self, i: u32) -> i64 {
        let (t, k, i) = (i64::from(self.train), i64::from(self.k), i64::from(i));
        if self.dpm {
            return self.raw_dpm(t, k, i);
        }
        match self.spacing {
            // np.linspace(0, T-1, k).round()[::-1] (round half to even, like numpy)
            TimestepSpacing::Linspace => {
                let j = (k - 1 - i) as f64;
                let v = if k == 1 {
                    0.0
                } else if j as i64 == k - 1 {
                    (t - 1) as f64
                } else {
                    j * ((t - 1) as f64 / (k - 1) as f64)
                };
                round_half_even(v) as i64
            }
            // np.round(np.arange(T, 0, -T/k)) - 1
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / k as f64;
                round_half_even(t as f64 + i as f64 * -ratio) as i64 - 1
            }
            // leading: arange(k)[::-1] * (T // k) + steps_offset
            TimestepSpacing::Leading => (k - 1 - i) * (t / k) + i64::from(self.offset),
        }
    }

    /// `DPMSolverMultistepScheduler.set_timesteps`: step `i` of `k` (T = `num_train_timesteps`).
    fn raw_dpm(&self, t: i64, k: i64, i: i64) -> i64 {
        // index into the k + 1 points before `[::-1][:-1]` drops the last (smallest) one
        let j = k - i;
        match self.spacing {
            // np.linspace(0, T - 1, k + 1).round()[::-1][:-1] (numpy: j · ((T − 1)/k), the endpoint exact)
            TimestepSpacing::Linspace => {
                let v = if j == k { (t - 1) as f64 } else { j as f64 * ((t - 1) as f64 / k as f64) };
                round_half_even(v) as i64
            }
            // (np.arange(0, k + 1) * (T // (k + 1))).round()[::-1][:-1] + steps_offset
            TimestepSpacing::Leading => j * (t / (k + 1)) + i64::from(self.offset),
            // np.arange(T, 0, -T/k).round() - 1, as DDPMScheduler
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / k as f64;
                round_half_even(t as f64 + i as f64 * -ratio) as i64 - 1
            }
        }
    }

    /// Number of denoising steps (k, except where numpy's float `arange` gives trailing spacing one more).
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Whether there are no steps (never, for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The timestep of denoising step `i` (0-based), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        (i < self.len as usize).then(|| self.raw(i as u32) as u32)
    }
    /// The `k` the steps were made for.
    pub fn requested(&self) -> u32 {
        self.k
    }
}

fn round_half_even(v: f64) -> f64 {
    let r = libm::round(v);
    if libm::fabs(v - libm::trunc(v)) == 0.5 && libm::fmod(r, 2.0) != 0.0 {
        r - libm::copysign(1.0, v)
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(spacing: u32, offset: u32) -> Schedule {
        let timestep_spacing = TimestepSpacing::from_code(spacing).unwrap();
        Schedule { timestep_spacing, steps_offset: offset, ..Schedule::DDPM_DEFAULT }
    }

    fn collect(ts: &Timesteps) -> [u32; 8] {
        let mut out = [u32::MAX; 8];
        for (i, o) in out.iter_mut().enumerate().take(ts.len()) {
            *o = ts.get(i).unwrap();
        }
        out
    }

    /// Values from diffusers 0.42 `DDPMScheduler(timestep_spacing=...).set_timesteps(k)`.
    #[test]
    fn spacings_match_diffusers() {
        let m = u32::MAX;
        assert_eq!(collect(&Timesteps::new(&sched(0, 0), 5).unwrap()), [800, 600, 400, 200, 0, m, m, m]);
        assert_eq!(collect(&Timesteps::new(&sched(0, 1), 5).unwrap()), [801, 601, 401, 201, 1, m, m, m]);
        assert_eq!(collect(&Timesteps::new(&sched(1, 0), 5).unwrap()), [999, 749, 500, 250, 0, m, m, m]);
        assert_eq!(collect(&Timesteps::new(&sched(2, 0), 5).unwrap()), [999, 799, 599, 399, 199, m, m, m]);
        assert_eq!(collect(&Timesteps::new(&sched(2, 0), 3).unwrap()), [999, 666, 332, m, m, m, m, m]);
        assert!(Timesteps::new(&sched(0, 0), 0).is_none());
        assert!(Timesteps::new(&sched(0, 0), 1001).is_none());
        assert!(Timesteps::new(&sched(0, 1), 1000).is_none(), "999 + offset 1 is outside 0..1000");
    }

    /// Values from diffusers 0.42 `DPMSolverMultistepScheduler(timestep_spacing=...).set_timesteps(k)`.
    #[test]
    fn dpm_spacings_match_diffusers() {
        let m = u32::MAX;
        let dpm = |spacing, offset, k| collect(&Timesteps::new_dpm(&sched(spacing, offset), k).unwrap());
        assert_eq!(dpm(0, 0, 5), [830, 664, 498, 332, 166, m, m, m]);
        assert_eq!(dpm(0, 1, 5), [831, 665, 499, 333, 167, m, m, m]);
        assert_eq!(dpm(1, 0, 5), [999, 799, 599, 400, 200, m, m, m]);
        assert_eq!(dpm(2, 0, 5), [999, 799, 599, 399, 199, m, m, m]);
        assert_eq!(dpm(2, 0, 3), [999, 666, 332, m, m, m, m, m]);
        let ts = Timesteps::new_dpm(&sched(1, 0), 999).unwrap();
        assert_eq!((ts.len(), ts.get(0), ts.get(998)), (999, Some(999), Some(1)));
        // linspace with k = T repeats a timestep, leading with k = T has step 0: refused.
        assert!(Timesteps::new_dpm(&sched(1, 0), 1000).is_none());
        assert!(Timesteps::new_dpm(&sched(0, 0), 1000).is_none());
        assert!(Timesteps::new_dpm(&sched(0, 0), 0).is_none());
    }

    #[test]
    fn half_even_rounding() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        assert_eq!(round_half_even(2.4), 2.0);
    }
}
