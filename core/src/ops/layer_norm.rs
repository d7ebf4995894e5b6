//! Layer normalisation (ONNX `LayerNormalization`, PyTorch's `LayerNorm`, biased variance).

use crate::par;

/// Normalises each run of `gamma.len()` consecutive elements of `x` to zero mean and unit variance, then applies
/// the elementwise affine `gamma`, `beta` (`beta` empty: no shift). Two passes in f32 (mean, then centred
/// variance), as [`super::group_norm`].
// x (rows, inner) in place; gamma, beta (inner)
pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let inner = gamma.len();
    if inner == 0 || !x.len().is_multiple_of(inner) {
        return;
    }
    par::for_each_chunk(x, inner, |_, xs| {
        let n = xs.len() as f32;
        let mean = xs.iter().sum::<f32>() / n;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / libm::sqrtf(var + eps);
        if beta.is_empty() {
            xs.iter_mut().zip(gamma).for_each(|(v, g)| *v = (*v - mean) * inv * g);
        } else {
            xs.iter_mut().zip(gamma).zip(beta).for_each(|((v, g), b)| *v = (*v - mean) * inv * g + b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_normalise_independently() {
        let mut x = [1.0f32, 3.0, 10.0, 30.0];
        layer_norm(&mut x, &[1.0, 2.0], &[0.0, 0.5], 0.0);
        assert_eq!(x, [-1.0, 2.5, -1.0, 2.5]);
        let mut y = [1.0f32, 3.0];
        layer_norm(&mut y, &[1.0, 1.0], &[], 0.0);
        assert_eq!(y, [-1.0, 1.0]);
    }
}
