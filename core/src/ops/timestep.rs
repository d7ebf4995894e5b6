//! Sinusoidal timestep embedding (Vaswani et al. 2017 §3.5, as in diffusers' `get_timestep_embedding`).

/// Writes `[sin(t·f_k), cos(t·f_k)]` for `k < dim/2` (cos first if `flip_sin_to_cos`), with
/// `f_k = exp(−ln(max_period)·k / (dim/2 − freq_shift))`, and a trailing zero when `dim` is odd.
/// Arithmetic follows diffusers step by step in f32, with `ln(max_period)` rounded from f64 as Python does.
// t -> out (dim)
pub fn timestep_embedding(out: &mut [f32], t: f32, flip_sin_to_cos: bool, freq_shift: f32, max_period: f32) {
    let dim = out.len();
    let half = dim / 2;
    let neg_log = -(libm::log(max_period as f64) as f32);
    out.fill(0.0);
    for k in 0..half {
        let exponent = neg_log * k as f32 / (half as f32 - freq_shift);
        let arg = t * libm::expf(exponent);
        let (s, c) = (libm::sinf(arg), libm::cosf(arg));
        let (first, second) = if flip_sin_to_cos { (c, s) } else { (s, c) };
        out[k] = first;
        out[half + k] = second;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frequency_is_one() {
        let mut e = [0.0f32; 5];
        timestep_embedding(&mut e, 2.0, false, 0.0, 10000.0);
        assert!((e[0] - 2.0f32.sin()).abs() < 1e-7);
        assert!((e[2] - 2.0f32.cos()).abs() < 1e-7);
        assert_eq!(e[4], 0.0);
        // k = 1 of 2: exp(-ln(10000) * 1 / 2) = 0.01
        assert!((e[1] - (0.02f32).sin()).abs() < 1e-6);
        let mut f = [0.0f32; 4];
        timestep_embedding(&mut f, 2.0, true, 0.0, 10000.0);
        assert_eq!(f[0], e[2]);
        assert_eq!(f[2], e[0]);
    }
}
