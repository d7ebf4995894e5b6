//! Group normalisation (PyTorch's `GroupNorm`, biased variance), optionally fused with SiLU.

use super::elementwise::silu1;
use super::Kernels;
use crate::par;

/// Normalises each group of `c / groups` channels to zero mean and unit variance, then applies the per-channel
/// affine `gamma`, `beta` and, if `silu`, the SiLU activation. Two passes in f32 (mean, then centred variance).
// x (c,hw) in place; gamma, beta (c)
#[allow(clippy::too_many_arguments)] // PyTorch's GroupNorm parameters, plus the fused SiLU
pub fn group_norm(
    x: &mut [f32],
    c: usize,
    hw: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) {
    if groups == 0 || !c.is_multiple_of(groups) || hw == 0 {
        return;
    }
    let cg = c / groups;
    par::for_each_chunk(x, cg * hw, |g, xs| {
        let n = xs.len() as f32;
        let mean = xs.iter().sum::<f32>() / n;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / libm::sqrtf(var + eps);
        for (k, row) in xs.chunks_mut(hw).enumerate() {
            let ch = g * cg + k;
            let a = gamma[ch] * inv;
            let bias = beta[ch] - mean * a;
            for v in row.iter_mut() {
                let y = *v * a + bias;
                *v = if silu { silu1(y) } else { y };
            }
        }
    });
}

/// [`group_norm`], or with [`Kernels::Fast`] the vectorised kernel of this CPU where there is one (sums in 16
/// interleaved parts, a polynomial `exp`; see `fast.rs`).
// x (c,hw) in place; gamma, beta (c)
#[allow(clippy::too_many_arguments)] // group_norm's, plus the kernel choice
pub fn group_norm_using(
    kernels: Kernels,
    x: &mut [f32],
    c: usize,
    hw: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast && super::fast::group_norm(x, c, hw, groups, gamma, beta, eps, silu) {
        return;
    }
    let _ = kernels;
    group_norm(x, c, hw, groups, gamma, beta, eps, silu);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_group() {
        // 4 channels of 2 pixels, 2 groups: group 0 = [1,2,3,4], group 1 = [10,10,10,10]
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        group_norm(&mut x, 4, 2, 2, &[1.0, 1.0, 2.0, 2.0], &[0.0, 0.0, 1.0, 1.0], 0.0, false);
        let s = 1.0 / 1.25f32.sqrt(); // mean 2.5, var 1.25
        let expect = [-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s];
        for (a, b) in x[..4].iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // constant group, eps 0: 0/0 would be NaN; PyTorch gives NaN too, so only check group 0 above.
        let mut y = [10.0f32; 4];
        group_norm(&mut y, 2, 2, 1, &[1.0, 1.0], &[3.0, 3.0], 1e-5, false);
        assert_eq!(y, [3.0; 4]);
    }
}
