//! Matrix products between activations (ONNX `MatMul`/`Einsum` of two computed tensors: attention scores and
//! their weighted sums).

use super::dot;
use crate::par;

/// The shapes of a batched product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulShape {
    /// Matrices in the batch.
    pub batch: usize,
    /// Rows of `a` and of the result.
    pub m: usize,
    /// The summed dimension.
    pub k: usize,
    /// Columns of `b` and of the result.
    pub n: usize,
    /// `a` is one `[m, k]` matrix for every batch entry.
    pub a_shared: bool,
    /// `b` is one matrix for every batch entry.
    pub b_shared: bool,
    /// `b` is stored transposed, `[n, k]`.
    pub trans_b: bool,
}

impl MatMulShape {
    /// The shape a `MatMul` op's operands state (`shared`: bit 0 for `a`, bit 1 for `b`).
    pub fn of_op(batch: u32, m: u32, k: u32, n: u32, shared: u32, trans_b: bool) -> Self {
        let [batch, m, k, n] = [batch, m, k, n].map(|d| d as usize);
        MatMulShape { batch, m, k, n, a_shared: shared & 1 != 0, b_shared: shared & 2 != 0, trans_b }
    }

    /// Elements of `a`.
    pub fn a_len(&self) -> Option<usize> {
        let one = self.m.checked_mul(self.k)?;
        if self.a_shared {
            Some(one)
        } else {
            one.checked_mul(self.batch)
        }
    }

    /// Elements of `b`.
    pub fn b_len(&self) -> Option<usize> {
        let one = self.k.checked_mul(self.n)?;
        if self.b_shared {
            Some(one)
        } else {
            one.checked_mul(self.batch)
        }
    }

    /// Elements of the result.
    pub fn out_len(&self) -> Option<usize> {
        self.batch.checked_mul(self.m)?.checked_mul(self.n)
    }
}

/// `out[b] = a[b] · b[b]` for every batch entry, each output row by one thread. With `trans_b`, each element is a
/// [`dot`] of two contiguous rows; otherwise a row of `out` accumulates `a[i, k] · b[k, :]` for k ascending. Either
/// way the summation order of every element is fixed.
// a (batch|1, m, k), b (batch|1, k, n) or (batch|1, n, k) -> out (batch, m, n)
pub fn matmul(out: &mut [f32], a: &[f32], b: &[f32], g: &MatMulShape) {
    let (Some(ol), Some(al), Some(bl)) = (g.out_len(), g.a_len(), g.b_len()) else { return };
    if ol == 0 || g.n == 0 || out.len() < ol || a.len() < al || b.len() < bl {
        return;
    }
    let (m, k, n) = (g.m, g.k, g.n);
    par::for_each_chunk(&mut out[..ol], n, |r, row| {
        let (bi, i) = (r / m, r % m);
        let ar = &a[(if g.a_shared { 0 } else { bi * m } + i) * k..][..k];
        let bm = &b[if g.b_shared { 0 } else { bi * k * n }..][..k * n];
        if g.trans_b {
            for (j, v) in row.iter_mut().enumerate() {
                *v = dot(&bm[j * k..][..k], ar);
            }
        } else {
            row.fill(0.0);
            for (kk, &av) in ar.iter().enumerate() {
                for (v, &bv) in row.iter_mut().zip(&bm[kk * n..][..n]) {
                    *v += av * bv;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    #[test]
    fn matches_the_definition() {
        let (batch, m, k, n) = (3, 4, 5, 6);
        let a: Vec<f32> = (0..batch * m * k).map(|v| (v % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..batch * k * n).map(|v| (v % 5) as f32 * 0.5 - 1.0).collect();
        // bt[b][j][kk] = b[b][kk][j]
        let mut bt = vec![0.0f32; b.len()];
        for bi in 0..batch {
            for kk in 0..k {
                for j in 0..n {
                    bt[(bi * n + j) * k + kk] = b[(bi * k + kk) * n + j];
                }
            }
        }
        for (trans_b, bb) in [(false, &b), (true, &bt)] {
            for a_shared in [false, true] {
                let g = MatMulShape { batch, m, k, n, a_shared, b_shared: false, trans_b };
                let mut out = vec![0.0f32; batch * m * n];
                matmul(&mut out, &a, bb, &g);
                for bi in 0..batch {
                    for i in 0..m {
                        for j in 0..n {
                            let ab = if a_shared { 0 } else { bi };
                            let want: f32 = (0..k).map(|kk| a[(ab * m + i) * k + kk] * b[(bi * k + kk) * n + j]).sum();
                            assert_eq!(out[(bi * m + i) * n + j], want, "trans_b {trans_b} a_shared {a_shared}");
                        }
                    }
                }
            }
        }
    }
}
