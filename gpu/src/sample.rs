//! The sampler on the device: the per-step scalar table (computed on the host exactly as `ddpm-core` computes
//! them, uploaded once per run) and the layout of the run-state buffer that the shaders share.
//!
//! A step row holds, in floats:
//!
//! | index | DDPM (`DDPMScheduler.step`) | DDIM (`DDIMScheduler.step`) |
//! |------:|------------------------------|-----------------------------|
//! | 0 | t | t |
//! | 1 | adds noise (t > 0) | adds noise (η > 0) |
//! | 2, 3 | √ᾱ_t, √(1 − ᾱ_t) | √ᾱ_t, √(1 − ᾱ_t) |
//! | 4 | x̂₀ coefficient √ᾱ_{t−1} β_t / (1 − ᾱ_t) | direction coefficient √(1 − ᾱ_{t−1} − σ_t²) |
//! | 5 | x_t coefficient √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) | √ᾱ_{t−1} |
//! | 6 | σ_t for the fixed variance types | σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) |
//! | 7, 8 | log β̃_t, log β_t (`learned_range`) | — |

use ddpm_core::format::{Schedule, VarianceType};
use ddpm_core::sampler::{Method, SampleError, Steps};

use crate::error::Error;

/// Floats per step row.
pub(crate) const ROW_FLOATS: usize = 16;
/// One row of the step table.
pub(crate) type StepRow = [f32; ROW_FLOATS];

/// Words of the run-state buffer (`shaders/common.glsl`).
pub(crate) const ST_STEP: usize = 0;
pub(crate) const ST_CLASS: usize = 1;
pub(crate) const ST_ROW: usize = 2;
pub(crate) const ST_DRAW: usize = 3;
pub(crate) const ST_SEED_LO: usize = 4;
pub(crate) const ST_SEED_HI: usize = 5;
pub(crate) const ST_METHOD: usize = 6;
pub(crate) const ST_FIRST_IMAGE: usize = 7;
pub(crate) const ST_TIMESTEP: usize = 8;

/// The rows of every step of a run, after the checks of `ddpm_core::sampler::Sampler::new`.
pub(crate) fn step_table(
    s: &Schedule,
    alphas_cumprod: &[f32],
    method: Method,
    k: u32,
    in_channels: usize,
    out_channels: usize,
) -> Result<Vec<StepRow>, Error> {
    match method {
        Method::Ddim { eta } if !(eta.is_finite() && eta >= 0.0) => return Err(SampleError::BadEta.into()),
        Method::DpmSolver { .. } => {
            return Err(Error::Unsupported(
                "DPM-Solver++ (a multistep solver, not in the shaders yet); sample it with --backend cpu",
            ))
        }
        _ => {}
    }
    if s.thresholding {
        return Err(Error::Unsupported(
            "dynamic thresholding (a quantile over each whole sample); sample on the CPU, or convert without it",
        ));
    }
    let steps = Steps::new(*s, method, k).ok_or(SampleError::BadSteps)?;
    let learned_type = s.variance_type.is_learned();
    let learned = out_channels == 2 * in_channels && (learned_type || matches!(method, Method::Ddim { .. }));
    let fixed_ok = out_channels == in_channels && !learned_type;
    if !fixed_ok && !learned {
        return Err(SampleError::OutputChannels.into());
    }
    let mut rows = Vec::with_capacity(steps.timesteps.len());
    for i in 0..steps.timesteps.len() {
        let sc = steps.scalars(alphas_cumprod, i).ok_or(SampleError::BadSteps)?;
        let (alpha_prod_t, alpha_prod_t_prev) = (sc.alpha_prod_t, sc.alpha_prod_t_prev);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let mut r = [0f32; ROW_FLOATS];
        r[0] = sc.t as f32;
        r[1] = if steps.adds_noise(i) { 1.0 } else { 0.0 };
        r[2] = alpha_prod_t.sqrt();
        r[3] = beta_prod_t.sqrt();
        // The same f32 operations in the same order as ddpm_core's `ddpm_step` / `ddim_step`; f32::sqrt is
        // correctly rounded like libm::sqrtf, and ln/exp go through libm as there.
        match method {
            Method::Ddpm => {
                let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
                let current_beta_t = 1.0 - current_alpha_t;
                r[4] = (alpha_prod_t_prev.sqrt() * current_beta_t) / beta_prod_t;
                r[5] = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
                let variance = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
                r[6] = match s.variance_type {
                    VarianceType::FixedSmallLog => libm::expf(0.5 * libm::logf(variance)),
                    VarianceType::FixedLarge => current_beta_t.sqrt(),
                    VarianceType::FixedLargeLog => libm::expf(0.5 * libm::logf(current_beta_t)),
                    _ => variance.sqrt(),
                };
                r[7] = libm::logf(variance);
                r[8] = libm::logf(current_beta_t);
            }
            Method::Ddim { eta } => {
                let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
                let std_dev_t = eta * variance.sqrt();
                r[4] = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
                r[5] = alpha_prod_t_prev.sqrt();
                r[6] = std_dev_t;
            }
            // refused above
            Method::DpmSolver { .. } => {}
        }
        rows.push(r);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &Schedule, method: Method, k: u32) -> Result<Vec<StepRow>, Error> {
        let mut ac = vec![0f32; s.num_train_timesteps as usize];
        ddpm_core::sampler::schedule::alphas_cumprod(s, None, &mut ac);
        step_table(s, &ac, method, k, 3, 3)
    }

    #[test]
    fn ddpm_rows_follow_the_timesteps() {
        let s = Schedule::DDPM_DEFAULT;
        let rows = table(&s, Method::Ddpm, 5).unwrap();
        let ts: Vec<f32> = rows.iter().map(|r| r[0]).collect();
        assert_eq!(ts, [800.0, 600.0, 400.0, 200.0, 0.0]);
        // Every step but the last (t = 0) adds noise; the last steps to ᾱ_prev = 1, so x̂₀'s coefficient is 1.
        assert!(rows[..4].iter().all(|r| r[1] == 1.0));
        assert_eq!(rows[4][1], 0.0);
        assert_eq!(rows[4][4], 1.0);
    }

    #[test]
    fn unsupported_options_are_errors() {
        let s = Schedule { thresholding: true, ..Schedule::DDPM_DEFAULT };
        assert!(matches!(table(&s, Method::Ddpm, 5), Err(Error::Unsupported(_))));
        let s = Schedule::DDPM_DEFAULT;
        assert_eq!(table(&s, Method::Ddim { eta: -1.0 }, 5).unwrap_err(), Error::Sample(SampleError::BadEta));
        assert_eq!(table(&s, Method::Ddpm, 0).unwrap_err(), Error::Sample(SampleError::BadSteps));
        assert!(matches!(table(&s, Method::DPM_SOLVER, 5), Err(Error::Unsupported(_))));
        let mut ac = vec![0f32; 1000];
        ddpm_core::sampler::schedule::alphas_cumprod(&s, None, &mut ac);
        let learned_without_type = step_table(&s, &ac, Method::Ddpm, 5, 3, 6).unwrap_err();
        assert_eq!(learned_without_type, Error::Sample(SampleError::OutputChannels));
    }
}
