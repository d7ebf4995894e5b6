//! Dense layers and dot products.

use super::Weight;
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

/// A dense layer applied to each row.
// w (o,i) · x (n,i) + b (o) -> out (n,o)
pub fn linear_rows<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], i: usize, o: usize) {
    if i == 0 || o == 0 {
        return;
    }
    par::for_each_chunk(out, o, |row, orow| {
        let xr = &x[row * i..][..i];
        for ((oc, wr), bias) in orow.iter_mut().zip(w.chunks_exact(i)).zip(b) {
            *oc = bias + dot(wr, xr);
        }
    });
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

    #[test]
    fn dot_handles_tails_and_f16() {
        let x: [f32; 11] = core::array::from_fn(|k| k as f32);
        let w: [half::f16; 11] = core::array::from_fn(|_| half::f16::from_f32(0.5));
        assert_eq!(dot(&w, &x), 27.5);
    }
}
