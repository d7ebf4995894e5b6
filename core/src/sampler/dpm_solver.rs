//! DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
//! Models", arXiv:2211.01095): the multistep solver of orders 1 and 2 ("2M"), following diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"` and `solver_type="midpoint"` operation by
//! operation in f32.
//!
//! The solver integrates the diffusion ODE in λ = log(α/σ) with the data-prediction model x_θ (the
//! model's x̂₀). Step `i` goes from the inference timestep s₀ = t_i to t = t_{i+1} (or to the final σ after the
//! last step) and reads the previous step's x̂₀, taken at s₁ = t_{i−1}; that x̂₀ stays in the arena's x̂₀
//! buffer between steps, so a run is stopped and resumed with x_t and x̂₀ (`Sampler::resume`).
//!
//! Schedule in σ (diffusers' `sigmas`, from ᾱ of the DDPM schedule):
//! - σ_i = √((1 − ᾱ_{t_i}) / ᾱ_{t_i}) for each inference timestep, then σ_final = 0 (`final_sigmas_type` "zero")
//!   or σ_min = √((1 − ᾱ_0) / ᾱ_0) ("sigma_min"). With `rescale_betas_zero_snr` diffusers replaces ᾱ_{T−1} = 0
//!   by 2⁻²⁴ so that σ stays finite; so do we.
//! - α = 1 / √(σ² + 1) and σ_t = σ α (`_sigma_to_alpha_sigma_t`): the α_t, σ_t of x_t = α_t x₀ + σ_t ε (§2).
//! - λ = log α − log σ_t, h = λ_t − λ_{s₀}, h₀ = λ_{s₀} − λ_{s₁}, r₀ = h₀ / h (Algorithm 2's h_i, r_i).

use super::{threshold_scale, FinalSigmas, Method, SampleError, Steps};
use crate::format::{PredictionType, Schedule};

/// The scalars of one DPM-Solver++ step, computed once per step in diffusers' f32 operation order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpmScalars {
    /// 1 (first-order update) or 2 (second-order multistep update).
    pub order: u8,
    /// α_{s₀} = 1 / √(σ_{s₀}² + 1): x̂₀ = (x − σ_{s₀} ε) / α_{s₀}.
    pub alpha_s0: f32,
    /// σ_{s₀} α_{s₀}, the σ_t of x_t = α_t x₀ + σ_t ε at s₀.
    pub sigma_s0: f32,
    /// σ_t / σ_{s₀}: the coefficient of x_{s₀}.
    pub sample_coeff: f32,
    /// α_t (e^{−h} − 1): the coefficient of D₀ = x̂₀ (subtracted).
    pub d0_coeff: f32,
    /// ½ α_t (e^{−h} − 1): the coefficient of D₁ (subtracted; midpoint rule).
    pub d1_coeff: f32,
    /// 1 / r₀: D₁ = (1/r₀)(x̂₀ − x̂₀_prev). 0 for a first-order step.
    pub inv_r0: f32,
}

/// ᾱ at `t` as `DPMSolverMultistepScheduler` holds it: the schedule's value, except 2⁻²⁴ for the last
/// training timestep when `rescale_betas_zero_snr` made it 0.
fn alpha_bar(alphas_cumprod: &[f32], s: &Schedule, t: usize) -> Option<f32> {
    let a = *alphas_cumprod.get(t)?;
    Some(if s.rescale_betas_zero_snr && t + 1 == alphas_cumprod.len() { 1.0 / 16_777_216.0 } else { a })
}

/// σ = √((1 − ᾱ) / ᾱ), diffusers' `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in f32.
fn sigma_of(alpha_bar: f32) -> f32 {
    libm::sqrtf((1.0 - alpha_bar) / alpha_bar)
}

/// σ_i of diffusers' `sigmas` for `i in 0..=n` (n inference steps): the inference timesteps' σ, then the final σ.
pub fn sigma(steps: &Steps, alphas_cumprod: &[f32], i: usize) -> Option<f32> {
    let Method::DpmSolver { final_sigmas, .. } = steps.method else { return None };
    match steps.timesteps.get(i) {
        Some(t) => Some(sigma_of(alpha_bar(alphas_cumprod, &steps.schedule, t as usize)?)),
        None if i == steps.timesteps.len() => match final_sigmas {
            FinalSigmas::Zero => Some(0.0),
            FinalSigmas::SigmaMin => Some(sigma_of(alpha_bar(alphas_cumprod, &steps.schedule, 0)?)),
        },
        None => None,
    }
}

/// (α, σ_t, λ) of a σ (`_sigma_to_alpha_sigma_t`, then λ = log α − log σ_t): α = 1/√(σ² + 1), σ_t = σ α.
/// σ = 0 gives λ = +∞, which the first-order update that diffusers forces at a zero final σ handles exactly.
fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / libm::sqrtf(sigma * sigma + 1.0);
    let sigma_t = sigma * alpha;
    (alpha, sigma_t, libm::logf(alpha) - libm::logf(sigma_t))
}

/// The order diffusers' `step` uses at step `i` of `n`, for `solver_order` `order` (1 or 2):
/// first order at the first step (no previous x̂₀ yet: `lower_order_nums < 1`) and at the last step when
/// `lower_order_final` holds with fewer than 15 steps, or always when the final σ is zero; else `order`.
pub fn order_at(method: Method, i: usize, n: usize) -> u8 {
    let Method::DpmSolver { order, lower_order_final, final_sigmas } = method else { return 1 };
    let last = i + 1 == n;
    let final_first_order = last && ((lower_order_final && n < 15) || final_sigmas == FinalSigmas::Zero);
    if order < 2 || i == 0 || final_first_order {
        1
    } else {
        2
    }
}

/// The scalars of step `i`, given ᾱ (length T); `None` past the end or for a method that is not DPM-Solver++.
pub fn scalars(steps: &Steps, alphas_cumprod: &[f32], i: usize) -> Option<DpmScalars> {
    let n = steps.timesteps.len();
    if i >= n {
        return None;
    }
    let order = order_at(steps.method, i, n);
    let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(sigma(steps, alphas_cumprod, i + 1)?);
    let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(sigma(steps, alphas_cumprod, i)?);
    let h = lambda_t - lambda_s0;
    let d0_coeff = alpha_t * (libm::expf(-h) - 1.0);
    let inv_r0 = if order == 2 {
        let (_, _, lambda_s1) = alpha_sigma_lambda(sigma(steps, alphas_cumprod, i - 1)?);
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        1.0 / r0
    } else {
        0.0
    };
    Some(DpmScalars {
        order,
        alpha_s0,
        sigma_s0,
        sample_coeff: sigma_t / sigma_s0,
        d0_coeff,
        d1_coeff: 0.5 * d0_coeff,
        inv_r0,
    })
}

/// x̂₀ = x_θ(x_{s₀}, s₀) from the model output (`convert_model_output` for "dpmsolver++"):
/// ε: (x − σ_{s₀} ε̂) / α_{s₀} (§2's data prediction); sample: the output; v: α_{s₀} x − σ_{s₀} v̂.
fn data_prediction(x: f32, m: f32, prediction_type: PredictionType, sc: &DpmScalars) -> f32 {
    match prediction_type {
        PredictionType::Sample => m,
        PredictionType::VPrediction => sc.alpha_s0 * x - sc.sigma_s0 * m,
        PredictionType::Epsilon => (x - sc.sigma_s0 * m) / sc.alpha_s0,
    }
}

/// One DPM-Solver++ step for one image. `x`: x_{s₀} in, x_t out; `x0`: the previous step's x̂₀ in (read by a
/// second-order step only), this step's x̂₀ out; `model_out`: ε, x₀ or v (x's length); `sort`: scratch of x's
/// length for dynamic thresholding. No extra buffer: x̂₀ is a pure function of (x, model output), so the
/// thresholding pass sorts |x̂₀| in `sort` and the update recomputes each x̂₀ value, bit for bit, in one pass.
///
/// 1. x̂₀ = x_θ(x_{s₀}, s₀), dynamically thresholded when the schedule asks (`clip_sample` does not apply:
///    `DPMSolverMultistepScheduler` has no such option);
/// 2. first order (DPM-Solver++(1), the first step of Algorithm 2; DDIM with η = 0):
///    x_t = (σ_t/σ_{s₀}) x_{s₀} − α_t (e^{−h} − 1) x̂₀;
/// 3. second order (Algorithm 2, DPM-Solver++(2M), in diffusers' midpoint form): D₀ = x̂₀,
///    D₁ = (1/r₀)(x̂₀ − x̂₀_prev), x_t = (σ_t/σ_{s₀}) x_{s₀} − α_t (e^{−h} − 1) D₀ − ½ α_t (e^{−h} − 1) D₁,
///    i.e. Algorithm 2's D_i = (1 + 1/(2r_i)) x̂₀ − (1/(2r_i)) x̂₀_prev.
pub fn step(
    x: &mut [f32],
    x0: &mut [f32],
    model_out: &[f32],
    sort: &mut [f32],
    s: &Schedule,
    sc: &DpmScalars,
) -> Result<(), SampleError> {
    let len = x.len();
    if x0.len() != len || model_out.len() < len || sort.len() < len {
        return Err(SampleError::BadNoise);
    }
    let pt = s.prediction_type;
    // 1. the thresholding scale, from |x̂₀| sorted in the scratch (1 when thresholding is off)
    let mut scale = None;
    if s.thresholding {
        for ((d, xv), m) in sort.iter_mut().zip(x.iter()).zip(model_out) {
            *d = data_prediction(*xv, *m, pt, sc);
        }
        scale = threshold_scale(&mut sort[..len], s);
    }
    let predict = |xv: f32, m: f32| {
        let v = data_prediction(xv, m, pt, sc);
        // clamp(x̂₀, −s, s) / s, as `_threshold_sample`
        scale.map_or(v, |t| v.max(-t).min(t) / t)
    };
    for ((xv, o), m) in x.iter_mut().zip(x0.iter_mut()).zip(model_out) {
        let d0 = predict(*xv, *m);
        *xv = if sc.order == 2 {
            // 3. D₁ from this step's and the previous step's x̂₀
            let d1 = sc.inv_r0 * (d0 - *o);
            sc.sample_coeff * *xv - sc.d0_coeff * d0 - sc.d1_coeff * d1
        } else {
            // 2.
            sc.sample_coeff * *xv - sc.d0_coeff * d0
        };
        *o = d0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::schedule::alphas_cumprod;

    const DPM: Method = Method::DPM_SOLVER;

    fn steps(k: u32, method: Method) -> (Steps, [f32; 1000]) {
        let s = Schedule { timestep_spacing: crate::format::TimestepSpacing::Linspace, ..Schedule::DDPM_DEFAULT };
        let mut ac = [0f32; 1000];
        alphas_cumprod(&s, None, &mut ac);
        (Steps::new(s, method, k).unwrap(), ac)
    }

    #[test]
    fn orders_follow_diffusers() {
        let two = |lof, fs| Method::DpmSolver { order: 2, lower_order_final: lof, final_sigmas: fs };
        // 10 steps, defaults: first order at the first and last step.
        let o: [u8; 10] = core::array::from_fn(|i| order_at(DPM, i, 10));
        assert_eq!(o, [1, 2, 2, 2, 2, 2, 2, 2, 2, 1]);
        // sigma_min without lower_order_final: second order up to the end.
        let o: [u8; 10] = core::array::from_fn(|i| order_at(two(false, FinalSigmas::SigmaMin), i, 10));
        assert_eq!(o, [1, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
        // sigma_min with lower_order_final: first order at the end only below 15 steps.
        assert_eq!(order_at(two(true, FinalSigmas::SigmaMin), 9, 10), 1);
        assert_eq!(order_at(two(true, FinalSigmas::SigmaMin), 19, 20), 2);
        let one = Method::DpmSolver { order: 1, lower_order_final: true, final_sigmas: FinalSigmas::Zero };
        assert!((0..10).all(|i| order_at(one, i, 10) == 1));
    }

    #[test]
    fn zero_final_sigma_lands_on_x0() {
        // The last step to σ = 0 returns x̂₀ exactly: σ_t/σ_s = 0, α_t (e^{−∞} − 1) = −1.
        let (st, ac) = steps(4, DPM);
        let sc = scalars(&st, &ac, 3).unwrap();
        assert_eq!((sc.order, sc.sample_coeff, sc.d0_coeff), (1, 0.0, -1.0));
        let mut x = [0.3f32, -1.2, 2.0, 0.0];
        let eps = [0.1f32, 0.2, -0.3, 0.4];
        let mut x0 = [0f32; 4];
        let mut sort = [0f32; 4];
        step(&mut x, &mut x0, &eps, &mut sort, &st.schedule, &sc).unwrap();
        assert_eq!(x, x0);
        assert!(x.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn second_order_reads_the_previous_x0() {
        let (st, ac) = steps(10, DPM);
        let sc = scalars(&st, &ac, 4).unwrap();
        assert_eq!(sc.order, 2);
        assert!(sc.inv_r0.is_finite() && sc.inv_r0 > 0.0);
        let run = |prev: f32| {
            let (mut x, mut x0, mut sort) = ([0.5f32; 3], [prev; 3], [0f32; 3]);
            step(&mut x, &mut x0, &[0.1; 3], &mut sort, &st.schedule, &sc).unwrap();
            x[0]
        };
        assert_ne!(run(0.0), run(1.0));
        // Past the end, or for another method: no scalars.
        assert!(scalars(&st, &ac, 10).is_none());
        assert!(sigma(&Steps::new(st.schedule, Method::Ddpm, 10).unwrap(), &ac, 0).is_none());
    }

    #[test]
    fn short_buffers_are_an_error() {
        let (st, ac) = steps(4, DPM);
        let sc = scalars(&st, &ac, 0).unwrap();
        let (mut x, mut x0, mut sort) = ([0f32; 4], [0f32; 3], [0f32; 4]);
        assert!(step(&mut x, &mut x0, &[0.0; 4], &mut sort, &st.schedule, &sc).is_err());
    }
}
