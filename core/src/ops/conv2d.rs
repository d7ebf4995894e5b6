//! 2-D convolution, direct (no im2col buffer: the arena stays the size of the activations).

use super::Weight;
use crate::par;

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Input channels.
    pub ci: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub co: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub pad: [usize; 4],
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

/// Range of output indices `o` in `0..n_out` whose input index `o·s + k − p` lies in `0..n_in`.
fn valid_range(n_out: usize, n_in: usize, k: usize, s: usize, p: usize) -> (usize, usize) {
    // o·s + k ≥ p  ⇔  o ≥ ceil((p − k) / s)
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    // o·s + k − p ≤ n_in − 1  ⇔  o ≤ (n_in − 1 + p − k) / s
    let hi = if n_in + p > k { ((n_in - 1 + p - k) / s + 1).min(n_out) } else { 0 };
    (lo, hi.max(lo))
}

/// Output channels computed together (they share every input load).
const CO_BLOCK: usize = 4;
/// Output columns computed together (their accumulators stay in registers).
const X_BLOCK: usize = 32;
/// Widest zero-padded input row the blocked kernel takes (a stack buffer; wider rows use the row kernel).
const MAX_ROW: usize = 520;

/// Zero-padded cross-correlation (PyTorch's `Conv2d`).
///
/// Every output element is `b[co]` plus the products over `c`, `ky`, `kx` in ascending order, whatever the
/// kernel or thread count, so results are bit-identical across backends that keep this order.
// w (co,ci,kh,kw) * x (ci,h,w) + b (co) -> out (co,ho,wo)
pub fn conv2d<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) {
    if g.w + g.pad[1] + g.pad[3] > MAX_ROW {
        conv2d_rows(out, x, w, b, g);
    } else {
        conv2d_blocked(out, x, w, b, g);
    }
}

/// Blocked kernel: for each block of [`CO_BLOCK`] output channels and each tile of [`X_BLOCK`] output
/// columns, accumulate in a register tile, reading each zero-padded input row once per kernel row.
fn conv2d_blocked<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) {
    let Conv2dShape { ci, h, w: wi, kh, kw, stride: s, pad: [pt, pl, _, _], ho, wo, .. } = *g;
    let plane = ho * wo;
    let ksize = ci * kh * kw;
    par::for_each_chunk(out, CO_BLOCK * plane, |blk, o| {
        let nco = o.len() / plane;
        let co0 = blk * CO_BLOCK;
        // Padding columns stay zero; the middle is overwritten row by row.
        let mut row = [0f32; MAX_ROW];
        for oy in 0..ho {
            for ox0 in (0..wo).step_by(X_BLOCK) {
                let n = X_BLOCK.min(wo - ox0);
                let mut acc = [[0f32; X_BLOCK]; CO_BLOCK];
                for (k, a) in acc.iter_mut().enumerate().take(nco) {
                    a[..n].fill(b[co0 + k]);
                }
                for c in 0..ci {
                    for ky in 0..kh {
                        let Some(iy) = (oy * s + ky).checked_sub(pt).filter(|&iy| iy < h) else { continue };
                        row[pl..pl + wi].copy_from_slice(&x[(c * h + iy) * wi..][..wi]);
                        for kx in 0..kw {
                            let wk: [f32; CO_BLOCK] = core::array::from_fn(|k| {
                                if k < nco {
                                    w[(co0 + k) * ksize + (c * kh + ky) * kw + kx].to_f32()
                                } else {
                                    0.0
                                }
                            });
                            let xs = &row[ox0 * s + kx..];
                            for j in 0..n {
                                let xv = xs[j * s];
                                for k in 0..CO_BLOCK {
                                    acc[k][j] += wk[k] * xv;
                                }
                            }
                        }
                    }
                }
                for (k, a) in acc.iter().enumerate().take(nco) {
                    o[k * plane + oy * wo + ox0..][..n].copy_from_slice(&a[..n]);
                }
            }
        }
    });
}

/// Row kernel for rows too wide for [`conv2d_blocked`]'s stack buffer: one output channel at a time, one
/// axpy over an output row per kernel element. Same summation order.
fn conv2d_rows<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) {
    let Conv2dShape { ci, h, w: wi, kh, kw, stride: s, pad: [pt, pl, _, _], ho, wo, .. } = *g;
    let plane = ho * wo;
    let ksize = ci * kh * kw;
    par::for_each_chunk(out, plane, |co, o| {
        o.fill(b[co]);
        let wk = &w[co * ksize..][..ksize];
        for c in 0..ci {
            let xc = &x[c * h * wi..][..h * wi];
            for ky in 0..kh {
                let (oy0, oy1) = valid_range(ho, h, ky, s, pt);
                for kx in 0..kw {
                    let (ox0, ox1) = valid_range(wo, wi, kx, s, pl);
                    if ox0 >= ox1 {
                        continue;
                    }
                    let wv = wk[(c * kh + ky) * kw + kx].to_f32();
                    for oy in oy0..oy1 {
                        let iy = oy * s + ky - pt;
                        let orow = &mut o[oy * wo + ox0..oy * wo + ox1];
                        let xrow = &xc[iy * wi..][..wi];
                        for (j, ov) in orow.iter_mut().enumerate() {
                            *ov += wv * xrow[(ox0 + j) * s + kx - pl];
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: every output element from its definition.
    fn reference(x: &[f32], w: &[f32], b: &[f32], g: &Conv2dShape) -> [f32; 64] {
        let mut out = [0.0f32; 64];
        for co in 0..g.co {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut acc = b[co];
                    for c in 0..g.ci {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                    acc += w[((co * g.ci + c) * g.kh + ky) * g.kw + kx]
                                        * x[(c * g.h + iy as usize) * g.w + ix as usize];
                                }
                            }
                        }
                    }
                    out[(co * g.ho + oy) * g.wo + ox] = acc;
                }
            }
        }
        out
    }

    fn check(stride: usize, pad: [usize; 4], h: usize, w: usize) {
        let (ci, co, k) = (2, 2, 3);
        let ho = (h + pad[0] + pad[2] - k) / stride + 1;
        let wo = (w + pad[1] + pad[3] - k) / stride + 1;
        let g = Conv2dShape { ci, h, w, co, kh: k, kw: k, stride, pad, ho, wo };
        let x: [f32; 50] = core::array::from_fn(|i| ((i * 7 % 11) as f32) - 5.0);
        let wt: [f32; 36] = core::array::from_fn(|i| ((i * 5 % 9) as f32) * 0.25 - 1.0);
        let b = [0.5f32, -0.25];
        let want = reference(&x, &wt, &b, &g);
        let mut out = [0.0f32; 64];
        conv2d_blocked(&mut out[..co * ho * wo], &x[..ci * h * w], &wt, &b, &g);
        assert_eq!(out, want, "blocked kernel");
        let mut out = [0.0f32; 64];
        conv2d_rows(&mut out[..co * ho * wo], &x[..ci * h * w], &wt, &b, &g);
        assert_eq!(out, want, "row kernel");
    }

    #[test]
    fn matches_naive_definition() {
        check(1, [1, 1, 1, 1], 5, 4);
        check(1, [0, 0, 0, 0], 5, 4);
        check(2, [1, 1, 1, 1], 5, 4);
        check(2, [0, 0, 1, 1], 4, 4); // diffusers Downsample2D with padding=0
    }
}
