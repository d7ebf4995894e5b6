//! Integer group normalisation, optionally fused with an i8 → i8 lookup table (SiLU).

use super::{channel_affine, QElem, QMut, QRef, Src};
use crate::ops::Kernels;

/// Parameters of [`qgroup_norm`].
pub struct QNorm<'a> {
    /// Channels.
    pub c: usize,
    /// Pixels per channel.
    pub hw: usize,
    /// Groups (divides `c`).
    pub groups: usize,
    /// Per-channel scale.
    pub gamma: &'a [f32],
    /// Per-channel shift.
    pub beta: &'a [f32],
    /// Variance epsilon.
    pub eps: f32,
    /// The input's scale.
    pub x_scale: f32,
    /// The scale of the normalised result (before the lookup table).
    pub mid_scale: f32,
    /// SiLU (or any i8 → i8 map) applied to the normalised result.
    pub lut: Option<&'a [i8; 256]>,
    /// Which kernels run the per-element map (the same integers either way).
    pub kernels: Kernels,
}

/// Group normalisation: statistics exact in integers, then per channel `y = (x·A + B) >> 24` with the
/// fixed-point coefficients `A`, `B` computed once per channel in f32. Works in place when `x` is `Src::Out`.
pub fn qgroup_norm(out: &mut QMut<'_>, x: Src<'_>, p: &QNorm<'_>) {
    let (c, hw) = (p.c, p.hw);
    if p.groups == 0 || !c.is_multiple_of(p.groups) || hw == 0 || p.gamma.len() < c || p.beta.len() < c {
        return;
    }
    let cg = c / p.groups;
    let n = (cg * hw) as i64;
    let ymax = i64::from(if p.lut.is_some() { 127 } else { out.max() });
    for g in 0..p.groups {
        let base = g * cg * hw;
        let range = base..base + cg * hw;
        let (s1, s2) = fast_sums(out, x, range.clone(), p.kernels).unwrap_or_else(|| sums(out, x, range));
        // n·Σq² − (Σq)² ≥ 0 exactly; mean and variance in units of the input's integer step.
        let var_n2 = i128::from(n) * i128::from(s2) - i128::from(s1) * i128::from(s1);
        let mean = (s1 as f64 / n as f64) as f32;
        let var = (var_n2 as f64 / (n as f64 * n as f64)) as f32;
        let inv = 1.0 / libm::sqrtf(var * p.x_scale * p.x_scale + p.eps);
        for ch in g * cg..(g + 1) * cg {
            let gi = p.gamma[ch] * inv;
            let a = p.x_scale * gi / p.mid_scale;
            let b = (p.beta[ch] - mean * p.x_scale * gi) / p.mid_scale;
            channel_affine(out, x, ch * hw..(ch + 1) * hw, a, b, ymax, p.lut, p.kernels == Kernels::Fast);
        }
    }
}

/// [`sums`] by the vector kernels with [`Kernels::Fast`] where the host has them, else `None`.
#[inline(always)]
fn fast_sums(out: &QMut<'_>, x: Src<'_>, range: core::ops::Range<usize>, kernels: Kernels) -> Option<(i64, i64)> {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast {
        return super::fast::group_sums(out, x, range);
    }
    let _ = (out, x, range, kernels);
    None
}

/// `(Σ x, Σ x²)` over `range` (elements outside `x` read 0), the element type resolved once (inlined where it is
/// compiled for a wider instruction set).
#[inline(always)]
pub(super) fn sums(out: &QMut<'_>, x: Src<'_>, range: core::ops::Range<usize>) -> (i64, i64) {
    fn typed<X: QElem>(x: &[X], range: core::ops::Range<usize>) -> Option<(i64, i64)> {
        let (mut s1, mut s2) = (0i64, 0i64);
        for &v in x.get(range)? {
            let q = i64::from(v.get());
            s1 += q;
            s2 += q * q;
        }
        Some((s1, s2))
    }
    let r = match x {
        Src::Other(QRef::I8(d)) => typed(d, range.clone()),
        Src::Other(QRef::I16(d)) => typed(d, range.clone()),
        Src::Out => match out {
            QMut::I8(d) => typed(d, range.clone()),
            QMut::I16(d) => typed(d, range.clone()),
        },
    };
    r.unwrap_or_else(|| {
        range.fold((0, 0), |(s1, s2), i| {
            let q = i64::from(x.get(out, i));
            (s1 + q, s2 + q * q)
        })
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::ops::int8::tests::ints;
    use crate::ops::int8::QRef;
    use std::{vec, vec::Vec};

    #[test]
    fn qgroup_norm_matches_float_within_one_step() {
        let (c, hw, groups) = (6, 20, 3);
        let x: Vec<i16> = ints(c * hw, 3000, 4).map(|v| (v + 500) as i16).collect();
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + 0.2 * i as f32).collect();
        let beta: Vec<f32> = (0..c).map(|i| 0.1 * i as f32 - 0.2).collect();
        let (xs, mid) = (0.001f32, 0.03f32);
        let p = QNorm {
            c,
            hw,
            groups,
            gamma: &gamma,
            beta: &beta,
            eps: 1e-5,
            x_scale: xs,
            mid_scale: mid,
            lut: None,
            kernels: Kernels::Exact,
        };
        let mut out = [0i8; 120];
        qgroup_norm(&mut QMut::I8(&mut out), Src::Other(QRef::I16(&x)), &p);
        let cg = c / groups;
        for g in 0..groups {
            let part = &x[g * cg * hw..(g + 1) * cg * hw];
            let n = part.len() as f64;
            let mean = part.iter().map(|&v| f64::from(v) * f64::from(xs)).sum::<f64>() / n;
            let var = part.iter().map(|&v| (f64::from(v) * f64::from(xs) - mean).powi(2)).sum::<f64>() / n;
            for i in g * cg * hw..(g + 1) * cg * hw {
                let ch = i / hw;
                let y = (f64::from(x[i]) * f64::from(xs) - mean) / (var + 1e-5).sqrt() * f64::from(gamma[ch])
                    + f64::from(beta[ch]);
                let want = (y / f64::from(mid)).round().clamp(-127.0, 127.0);
                assert!((f64::from(out[i]) - want).abs() <= 1.0, "{i}: {} vs {want}", out[i]);
            }
        }
        // In place gives the same bits.
        let mut inplace: Vec<i16> = x.clone();
        let p16 = QNorm { mid_scale: mid, ..p };
        qgroup_norm(&mut QMut::I16(&mut inplace), Src::Out, &p16);
        let mut apart = vec![0i16; x.len()];
        qgroup_norm(&mut QMut::I16(&mut apart), Src::Other(QRef::I16(&x)), &p16);
        assert_eq!(inplace, apart);
    }
    /// The fast kernels (the statistics and the per-element map, where this host has them) give the portable
    /// kernels' integers: i8 and i16 inputs, apart and in place, with and without a table, channel sizes that
    /// leave partial vector blocks.
    #[test]
    fn kernel_modes_agree() {
        let (c, hw, groups) = (12, 49, 4);
        let gamma: Vec<f32> = (0..c).map(|i| 0.7 + 0.1 * i as f32).collect();
        let beta: Vec<f32> = (0..c).map(|i| 0.05 * i as f32 - 0.3).collect();
        let lut: [i8; 256] = core::array::from_fn(|i| ((i as i32 * 5) % 255 - 127) as i8);
        let x8: Vec<i8> = ints(c * hw, 127, 8).map(|v| (v / 2 + 20) as i8).collect();
        let x16: Vec<i16> = ints(c * hw, 20000, 9).map(|v| v as i16).collect();
        for lut in [None, Some(&lut)] {
            let run = |kernels, wide_in: bool, in_place: bool| {
                let p = QNorm {
                    c,
                    hw,
                    groups,
                    gamma: &gamma,
                    beta: &beta,
                    eps: 1e-5,
                    x_scale: if wide_in { 0.0002 } else { 0.03 },
                    mid_scale: 0.02,
                    lut,
                    kernels,
                };
                let mut out = vec![0i8; c * hw];
                match (wide_in, in_place) {
                    (false, true) => {
                        out.copy_from_slice(&x8);
                        qgroup_norm(&mut QMut::I8(&mut out), Src::Out, &p);
                    }
                    (false, false) => qgroup_norm(&mut QMut::I8(&mut out), Src::Other(QRef::I8(&x8)), &p),
                    (true, _) => qgroup_norm(&mut QMut::I8(&mut out), Src::Other(QRef::I16(&x16)), &p),
                }
                out
            };
            for (wide_in, in_place) in [(false, false), (false, true), (true, false)] {
                let exact = run(Kernels::Exact, wide_in, in_place);
                assert!(exact.iter().any(|&v| v != exact[0]), "constant output: the check would be weak");
                assert_eq!(exact, run(Kernels::Fast, wide_in, in_place), "{wide_in} {in_place} {}", lut.is_some());
            }
        }
    }
}
