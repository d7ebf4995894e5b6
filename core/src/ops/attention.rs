//! Multi-head self-attention over the pixels of a feature map (diffusers' `Attention` as used by
//! `AttnDownBlock2D`, `AttnUpBlock2D` and `UNetMidBlock2D`), in three phases over a scratch area of
//! `4 · c · hw` floats laid out token-major: `[t | q | k | v]`, each `(hw, c)`.
//!
//! 1. [`attention_project`]: `t = xnᵀ`; then the caller computes `q, k, v = t·wᵀ + b`.
//! 2. [`attention_core`]: for each head and query, softmax over keys of `q·k / √d`, computed in one pass with a
//!    running maximum (the "online softmax" of Milakov & Gimelshein 2018), so no `hw × hw` score matrix is ever
//!    stored; the result overwrites `t`.
//! 3. [`attention_output`]: `out = (out + wo·t + bo)·scale`, where `out` already holds the residual.

use super::linear::dot;
#[cfg(doc)]
use super::linear::linear_rows;
use super::{Kernels, Weight};
use crate::par;

/// Phase 1: transposes the normalised input to token-major `t`; the caller then applies the q, k, v
/// projections with [`linear_rows`] (`q = t·wqᵀ + bq`, ...) into the other three parts of the scratch.
// xn (c,hw) -> t (hw,c)
pub fn attention_project(t: &mut [f32], xn: &[f32], c: usize, hw: usize) {
    if hw == 0 {
        return;
    }
    for (ch, row) in xn.chunks_exact(hw).take(c).enumerate() {
        for (i, v) in row.iter().enumerate() {
            t[i * c + ch] = *v;
        }
    }
}

/// Phase 2: scaled dot-product attention for every head; writes the head outputs into `t`.
// scratch [t | q | k | v] -> t (hw,c)
pub fn attention_core(scratch: &mut [f32], c: usize, hw: usize, heads: usize) {
    if heads == 0 || !c.is_multiple_of(heads) {
        return;
    }
    let n = c * hw;
    let d = c / heads;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let (t, qkv) = scratch.split_at_mut(n);
    let (q, kv) = qkv.split_at(n);
    let (k, v) = kv.split_at(n);
    par::for_each_chunk(&mut t[..n], c, |i, out_row| {
        let q_row = &q[i * c..][..c];
        for h in 0..heads {
            let qh = &q_row[h * d..][..d];
            let acc = &mut out_row[h * d..][..d];
            acc.fill(0.0);
            let mut max = f32::NEG_INFINITY;
            let mut sum = 0.0f32;
            for j in 0..hw {
                let s = dot(qh, &k[j * c + h * d..][..d]) * scale;
                if s > max {
                    // Rescale what was accumulated under the old maximum.
                    let r = libm::expf(max - s);
                    sum *= r;
                    acc.iter_mut().for_each(|a| *a *= r);
                    max = s;
                }
                let p = libm::expf(s - max);
                sum += p;
                for (a, vv) in acc.iter_mut().zip(&v[j * c + h * d..][..d]) {
                    *a += p * vv;
                }
            }
            let inv = 1.0 / sum;
            acc.iter_mut().for_each(|a| *a *= inv);
        }
    });
}

/// Phase 3: output projection, residual and rescale, channel-major.
// t (hw,c) from scratch; wo (c,c); bo (c); out (c,hw) holding the residual -> out (c,hw)
pub fn attention_output<W: Weight>(
    out: &mut [f32],
    scratch: &[f32],
    c: usize,
    hw: usize,
    wo: &[W],
    bo: &[f32],
    scale: f32,
) {
    let t = &scratch[..c * hw];
    par::for_each_chunk(out, hw, |ch, row| {
        let w = &wo[ch * c..][..c];
        for (i, o) in row.iter_mut().enumerate() {
            *o = (*o + bo[ch] + dot(w, &t[i * c..][..c])) * scale;
        }
    });
}

/// With [`Kernels::Fast`] on a CPU with a fast kernel that fits: phases 1 and 2 and the output projection as
/// matrix products through it (see `fast.rs`), leaving `proj = wo·t + bo` channel-major `(c, hw)` in
/// `scratch[2n..3n]` (`n = c·hw`) for the caller to finish as `out = (out + proj)·scale`. Returns `false` where it
/// did not (the portable phases then run; they recompute everything they read from `xn`).
// xn (c,hw); scratch [t | q | k | v]; w = [wq, wk, wv, wo] (c,c); b = [bq, bk, bv, bo] (c)
#[allow(clippy::too_many_arguments)] // the attention's operands, plus the kernel choice
pub fn attention_fast<W: Weight>(
    kernels: Kernels,
    scratch: &mut [f32],
    xn: &[f32],
    c: usize,
    hw: usize,
    heads: usize,
    w: [&[W]; 4],
    b: [&[f32]; 4],
) -> bool {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast {
        return super::fast::attention(scratch, xn, c, hw, heads, w, b);
    }
    let _ = (kernels, scratch, xn, c, hw, heads, w, b);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tokens, one channel, one head, identity projections: each output is the softmax-weighted mean of v.
    #[test]
    fn softmax_weights_values() {
        let (c, hw) = (1, 2);
        let x = [1.0f32, 3.0];
        let one = [1.0f32];
        let zero = [0.0f32];
        let mut scratch = [0.0f32; 8];
        attention_project(&mut scratch[..2], &x, c, hw);
        for part in 1..4 {
            let (t, rest) = scratch.split_at_mut(2 * part);
            crate::ops::linear_rows(&mut rest[..2], &t[..2], &one, &zero, 1, 1);
        }
        attention_core(&mut scratch, c, hw, 1);
        // Query 1: scores 1, 3 -> weights e^1, e^3; query 3: scores 3, 9.
        let w = |a: f32, b: f32| (a.exp() * 1.0 + b.exp() * 3.0) / (a.exp() + b.exp());
        assert!((scratch[0] - w(1.0, 3.0)).abs() < 1e-5);
        assert!((scratch[1] - w(3.0, 9.0)).abs() < 1e-5);
        let mut out = x;
        attention_output(&mut out, &scratch, c, hw, &one, &[0.5], 0.5);
        assert!((out[0] - (1.0 + 0.5 + w(1.0, 3.0)) * 0.5).abs() < 1e-5);
    }
}
