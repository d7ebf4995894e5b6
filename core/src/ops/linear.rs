//! Dense layers and dot products.

use super::{Kernels, Weight};
use crate::par;

/// Dot product with eight independent partial sums (lets the compiler vectorise; the summation order is
/// fixed, so the result is deterministic).
#[inline]
pub fn dot<W: Weight>(w: &[W], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let mut acc = [0.0f32; 8];
    let mut wc = w.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (wb, xb) in (&mut wc).zip(&mut xc) {
        for k in 0..8 {
            acc[k] += wb[k].to_f32() * xb[k];
        }
    }
    let mut tail = 0.0f32;
    for (a, b) in wc.remainder().iter().zip(xc.remainder()) {
        tail += a.to_f32() * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Rows of `x` handled together: each widened weight row serves this many dot products.
const ROW_BLOCK: usize = 8;
/// Longest weight row widened into the stack buffer (1 KiB); longer rows widen element by element.
const W_ROW: usize = 256;

/// A dense layer applied to each row. Each output is `b[o] + dot(w[o], x[row])`, the same bits whatever the
/// weight type's storage, thread count or blocking.
// w (o,i) · x (n,i) + b (o) -> out (n,o)
pub fn linear_rows<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], i: usize, o: usize) {
    if i == 0 || o == 0 {
        return;
    }
    par::for_each_chunk(out, ROW_BLOCK * o, |blk, oblk| {
        let rows = oblk.len() / o;
        let xs = &x[blk * ROW_BLOCK * i..][..rows * i];
        let mut wbuf = [0f32; W_ROW];
        for (oc, (wr, bias)) in w.chunks_exact(i).zip(b).enumerate() {
            if W::CONVERTS && i <= W_ROW {
                for (d, v) in wbuf.iter_mut().zip(wr) {
                    *d = v.to_f32();
                }
                for (r, xr) in xs.chunks_exact(i).enumerate() {
                    oblk[r * o + oc] = bias + dot(&wbuf[..i], xr);
                }
            } else {
                for (r, xr) in xs.chunks_exact(i).enumerate() {
                    oblk[r * o + oc] = bias + dot(wr, xr);
                }
            }
        }
    });
}

/// [`linear_rows`], or with [`Kernels::Fast`] for a single row the vectorised kernel of this CPU where there is
/// one (16 interleaved partial sums of fused multiply-adds; see `fast.rs`).
// w (o,i) · x (n,i) + b (o) -> out (n,o)
#[allow(clippy::too_many_arguments)] // linear_rows', plus the kernel choice
pub fn linear_rows_using<W: Weight>(
    kernels: Kernels,
    out: &mut [f32],
    x: &[f32],
    w: &[W],
    b: &[f32],
    i: usize,
    o: usize,
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast && super::fast::linear_rows(out, x, w, b, i, o) {
        return;
    }
    let _ = kernels;
    linear_rows(out, x, w, b, i, o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_hand_computation() {
        // w = [[1, 2, 3], [-1, 0, 4]], b = [0.5, -1], two rows of x
        let w = [1.0f32, 2.0, 3.0, -1.0, 0.0, 4.0];
        let b = [0.5f32, -1.0];
        let x = [1.0f32, 1.0, 1.0, 2.0, -1.0, 0.5];
        let mut out = [0.0f32; 4];
        linear_rows(&mut out, &x, &w, &b, 3, 2);
        assert_eq!(out, [6.5, 2.0, 2.0, -1.0]);
    }

    /// f16 weights give the same bits as the same values in f32, for short (buffered) and long rows, and for
    /// several row blocks.
    #[test]
    fn f16_rows_match_f32_bits() {
        for i in [5usize, 300] {
            let (n, o) = (19usize, 3usize);
            let x: [f32; 5700] = core::array::from_fn(|k| ((k * 31 % 23) as f32) * 0.37 - 4.0);
            let w32: [f32; 900] = core::array::from_fn(|k| ((k * 7 % 13) as f32) * 0.125 - 0.75);
            let w16: [half::f16; 900] = core::array::from_fn(|k| half::f16::from_f32(w32[k]));
            let b = [0.1f32, -0.2, 0.3];
            let (mut a, mut c) = ([0f32; 57], [0f32; 57]);
            linear_rows(&mut a, &x[..n * i], &w32[..o * i], &b, i, o);
            linear_rows(&mut c, &x[..n * i], &w16[..o * i], &b, i, o);
            assert_eq!(a, c, "i = {i}");
            for r in 0..n {
                for oc in 0..o {
                    assert_eq!(a[r * o + oc], b[oc] + dot(&w32[oc * i..(oc + 1) * i], &x[r * i..(r + 1) * i]));
                }
            }
        }
    }

    #[test]
    fn dot_handles_tails_and_f16() {
        let x: [f32; 11] = core::array::from_fn(|k| k as f32);
        let w: [half::f16; 11] = core::array::from_fn(|_| half::f16::from_f32(0.5));
        assert_eq!(dot(&w, &x), 27.5);
    }
}
