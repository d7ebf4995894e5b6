//! Integer multi-head attention core (the q, k, v and output projections are 1×1 [`super::qconv2d`]s).

use super::{rq_fast, QElem};
use crate::ops::Kernels;

/// Parameters of [`qsdpa`].
pub struct QAttention<'a> {
    /// Channels (all heads).
    pub c: usize,
    /// Tokens.
    pub n: usize,
    /// Heads (divides `c`).
    pub heads: usize,
    /// `exp[z] ∝ e^(−z/Z)` for the converter's step `Z`.
    pub exp: &'a [i16],
    /// Score difference → table index.
    pub m_score: i32,
    /// Shift of `m_score`.
    pub s_score: u32,
    /// `Σ p·v` → output.
    pub m_out: i32,
    /// Shift of `m_out`.
    pub s_out: u32,
    /// Which kernels run it (the same integers either way).
    pub kernels: Kernels,
}

/// Multi-head attention core in integers: scores, a table-driven softmax with 15-bit probabilities, and the
/// probability-weighted sum of `v`. `q`, `k`, `v`, `out` are `(c, n)`; `scores` holds `n` i32. With
/// [`Kernels::Fast`] on an x86-64 host with AVX-512 or AVX2 the same loops compiled for it, the softmax's division
/// in f64 where that is exact (the same integers).
pub fn qsdpa(out: &mut [i8], q: &[i8], k: &[i8], v: &[i8], scores: &mut [i32], p: &QAttention<'_>) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if p.kernels == Kernels::Fast && super::fast::qsdpa(out, q, k, v, scores, p).is_some() {
        return;
    }
    qsdpa_body(out, q, k, v, scores, p, softmax);
}

/// [`qsdpa`] with the softmax given (inlined or not).
#[inline(always)]
pub(super) fn qsdpa_body(
    out: &mut [i8],
    q: &[i8],
    k: &[i8],
    v: &[i8],
    scores: &mut [i32],
    p: &QAttention<'_>,
    softmax: impl Fn(&mut [i32], &QAttention<'_>, usize) -> u64,
) {
    let (c, n) = (p.c, p.n);
    if p.heads == 0 || !c.is_multiple_of(p.heads) || n == 0 || p.exp.is_empty() {
        return;
    }
    let (Some(s), Some(last)) = (scores.get_mut(..n), p.exp.len().checked_sub(1)) else { return };
    if [out.len(), q.len(), k.len(), v.len()].iter().any(|&l| l < c * n) {
        return;
    }
    let dh = c / p.heads;
    for head in 0..p.heads {
        let chans = head * dh..(head + 1) * dh;
        for i in 0..n {
            // Scores four dimensions at a time (the four query values in registers, one load and store of
            // each score per four products); the sums are the same integers in any order.
            s.fill(0);
            let mut d = chans.start;
            while d + 4 <= chans.end {
                let qv = |d: usize| i32::from(q[d * n + i]);
                let (q0, q1, q2, q3) = (qv(d), qv(d + 1), qv(d + 2), qv(d + 3));
                let kr = |d: usize| &k[d * n..(d + 1) * n];
                let rows = kr(d).iter().zip(kr(d + 1)).zip(kr(d + 2)).zip(kr(d + 3));
                for (e, (((&k0, &k1), &k2), &k3)) in s.iter_mut().zip(rows) {
                    *e += q0 * i32::from(k0) + q1 * i32::from(k1) + q2 * i32::from(k2) + q3 * i32::from(k3);
                }
                d += 4;
            }
            for d in d..chans.end {
                let qv = i32::from(q[d * n + i]);
                for (e, &kv) in s.iter_mut().zip(&k[d * n..(d + 1) * n]) {
                    *e += qv * i32::from(kv);
                }
            }
            let psum = softmax(s, p, last);
            // Σ p·v: four dimensions at a time in i32 when Σ|p|·128 bounds every partial sum below 2^31 (the same
            // integers as the i64 sums), else one at a time in i64.
            let mut d = chans.start;
            if psum < 1 << 23 {
                while d + 4 <= chans.end {
                    let vr = |d: usize| &v[d * n..(d + 1) * n];
                    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
                    let rows = vr(d).iter().zip(vr(d + 1)).zip(vr(d + 2)).zip(vr(d + 3));
                    for (&pj, (((&v0, &v1), &v2), &v3)) in s.iter().zip(rows) {
                        a0 += pj * i32::from(v0);
                        a1 += pj * i32::from(v1);
                        a2 += pj * i32::from(v2);
                        a3 += pj * i32::from(v3);
                    }
                    for (j, acc) in [a0, a1, a2, a3].into_iter().enumerate() {
                        out[(d + j) * n + i] = i8::sat(rq_fast(i64::from(acc), p.m_out, p.s_out));
                    }
                    d += 4;
                }
            }
            for d in d..chans.end {
                let acc: i64 =
                    s.iter().zip(&v[d * n..(d + 1) * n]).map(|(&pj, &vj)| i64::from(pj) * i64::from(vj)).sum();
                out[d * n + i] = i8::sat(rq_fast(acc, p.m_out, p.s_out));
            }
        }
    }
}

/// [`softmax_body`] as a function of its own: inlined on 32-bit cores, its loop state spilled.
#[inline(never)]
fn softmax(s: &mut [i32], p: &QAttention<'_>, last: usize) -> u64 {
    softmax_body(s, p, last)
}

/// The scores `s` of one query into 15-bit probabilities (table-driven exponentials, rounded division by their
/// sum); returns `Σ|p|`.
#[inline(always)]
pub(super) fn softmax_body(s: &mut [i32], p: &QAttention<'_>, last: usize) -> u64 {
    let sum = softmax_exp(s, p, last);
    softmax_divide(s, sum)
}

/// The first half of [`softmax_body`]: the scores `s` into their table-driven exponentials; returns their sum.
#[inline(always)]
pub(super) fn softmax_exp(s: &mut [i32], p: &QAttention<'_>, last: usize) -> i64 {
    let mx = s.iter().copied().max().unwrap_or(0);
    let mut sum = 0i64;
    let z_fast = (32..64).contains(&p.s_score);
    let round = if z_fast { (1i64 << p.s_score) >> 1 } else { 0 };
    for e in s.iter_mut() {
        // `rq(mx − e)`, in 32-bit halves when the difference fits in i32 (see `rq_fast`).
        let z = match mx.checked_sub(*e) {
            Some(dz) if z_fast => {
                let p64 = i64::from(dz).wrapping_mul(i64::from(p.m_score)).wrapping_add(round);
                i64::from(((p64 >> 32) as i32) >> (p.s_score - 32))
            }
            _ => rq_fast(i64::from(mx) - i64::from(*e), p.m_score, p.s_score),
        };
        *e = i32::from(p.exp[z.clamp(0, last as i64) as usize]);
        sum += i64::from(*e);
    }
    sum
}

/// The second half of [`softmax_body`]: the exponentials `s` into 15-bit probabilities, `(e·2^15 + ⌊sum/2⌋) /
/// sum` in integers (rounded toward zero; `sum` at least 1); returns `Σ|p|`.
#[inline(always)]
pub(super) fn softmax_divide(s: &mut [i32], sum: i64) -> u64 {
    let sum = sum.max(1);
    let half = sum / 2;
    // The same quotients in 32 bits when they fit (a 64-bit division is a library call on 32-bit cores):
    // always for a table of non-negative 15-bit values and fewer than 2^16 tokens.
    let (sum32, half32) = (u32::try_from(sum).ok().filter(|&s| s < 1 << 31), half as u32);
    let mut psum = 0u64;
    for e in s.iter_mut() {
        *e = match (sum32, u32::try_from(*e)) {
            (Some(s32), Ok(e32)) if e32 < 1 << 16 => ((e32 << 15) + half32) / s32,
            _ => ((i64::from(*e) << 15) + half).wrapping_div(sum) as u32,
        } as i32;
        psum += u64::from(e.unsigned_abs());
    }
    psum
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::ops::int8::tests::ints;
    use std::{vec, vec::Vec};

    #[test]
    fn qsdpa_matches_float_attention() {
        let (c, n, heads) = (8, 10, 2);
        let q: Vec<i8> = ints(c * n, 127, 5).map(|v| v as i8).collect();
        let k: Vec<i8> = ints(c * n, 127, 6).map(|v| v as i8).collect();
        let v: Vec<i8> = ints(c * n, 127, 7).map(|v| v as i8).collect();
        let (sq, sk, sv, so) = (0.02f64, 0.03f64, 0.05f64, 0.04f64);
        let dh = (c / heads) as f64;
        let steps = 64.0;
        let exp: Vec<i16> = (0..1024).map(|z| (32767.0 * (-(z as f64) / steps).exp()).round() as i16).collect();
        let fixed = |r: f64| {
            let s = (30 - r.log2().floor() as i32) as u32;
            ((r * 2f64.powi(s as i32)).round() as i32, s)
        };
        let (m_score, s_score) = fixed(sq * sk / dh.sqrt() * steps);
        let (m_out, s_out) = fixed(sv / (32768.0 * so));
        let p = QAttention { c, n, heads, exp: &exp, m_score, s_score, m_out, s_out, kernels: Kernels::Exact };
        let mut out = vec![0i8; c * n];
        let mut scratch = vec![0i32; n];
        qsdpa(&mut out, &q, &k, &v, &mut scratch, &p);
        for h in 0..heads {
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (h * 4..h * 4 + 4)
                            .map(|d| f64::from(q[d * n + i]) * sq * f64::from(k[d * n + j]) * sk)
                            .sum::<f64>()
                            / dh.sqrt()
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in h * 4..h * 4 + 4 {
                    let y = (0..n).map(|j| e[j] / sum * f64::from(v[d * n + j]) * sv).sum::<f64>() / so;
                    let got = f64::from(out[d * n + i]);
                    assert!(
                        (got - y.round().clamp(-127.0, 127.0)).abs() <= 2.0,
                        "head {h} query {i} ch {d}: {got} vs {y}"
                    );
                }
            }
        }
    }

    /// The fast kernels (on a host that has them) give the portable kernel's integers: sizes that leave partial
    /// vectors and a partial group of four dimensions.
    #[test]
    fn kernel_modes_agree() {
        for (c, n, heads, seed) in [(8, 10, 2, 1), (24, 49, 2, 2), (12, 196, 1, 3), (40, 37, 5, 4)] {
            let q: Vec<i8> = ints(c * n, 127, seed).map(|v| v as i8).collect();
            let k: Vec<i8> = ints(c * n, 127, seed + 10).map(|v| v as i8).collect();
            let v: Vec<i8> = ints(c * n, 127, seed + 20).map(|v| v as i8).collect();
            let exp: Vec<i16> = (0..1024).map(|z| (32767.0 * (-(z as f64) / 64.0).exp()).round() as i16).collect();
            let run = |kernels| {
                let p = QAttention {
                    c,
                    n,
                    heads,
                    exp: &exp,
                    m_score: 1 << 29,
                    s_score: 40,
                    m_out: 1 << 30,
                    s_out: 44,
                    kernels,
                };
                let mut out = vec![0i8; c * n];
                qsdpa(&mut out, &q, &k, &v, &mut vec![0i32; n], &p);
                out
            };
            let exact = run(Kernels::Exact);
            assert!(exact.iter().any(|&o| o != 0), "c {c} n {n}: all zero, the check would not see a difference");
            assert_eq!(exact, run(Kernels::Fast), "c {c} n {n} heads {heads}");
        }
    }
}
