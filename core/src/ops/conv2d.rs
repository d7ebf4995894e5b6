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

/// Output channels computed together: each loaded input vector feeds this many accumulators.
const CO_TILE: usize = 4;
/// Output columns computed together: one vector of accumulators per output channel.
const X_TILE: usize = 8;

impl Conv2dShape {
    /// Length of a row of the zero-padded input copy: the padded width, widened so that the last (partial)
    /// tile of [`X_TILE`] output columns reads inside the row.
    pub const fn padded_row(&self) -> usize {
        let tiles_end = (self.wo.div_ceil(X_TILE) * X_TILE - 1) * self.stride + self.kw;
        let padded = self.w + self.pad[1] + self.pad[3];
        if tiles_end > padded {
            tiles_end
        } else {
            padded
        }
    }

    /// Shape `(ci, h + pad top + pad bottom, padded_row)` of the scratch the convolution needs.
    pub const fn scratch_shape(&self) -> (usize, usize, usize) {
        (self.ci, self.h + self.pad[0] + self.pad[2], self.padded_row())
    }
}

/// Copies `x` into `xp` with the zero padding made explicit.
// x (ci,h,w) -> xp (ci, h+pt+pb, padded_row)
pub fn conv2d_pad(xp: &mut [f32], x: &[f32], g: &Conv2dShape) {
    let (ci, hp, rs) = g.scratch_shape();
    let [pt, pl, _, _] = g.pad;
    let xp = &mut xp[..ci * hp * rs];
    xp.fill(0.0);
    if g.w == 0 {
        return;
    }
    for (k, src) in x.chunks_exact(g.w).take(ci * g.h).enumerate() {
        let (c, y) = (k / g.h, k % g.h);
        xp[(c * hp + y + pt) * rs + pl..][..g.w].copy_from_slice(src);
    }
}

/// Cross-correlation over an input padded by [`conv2d_pad`] (PyTorch's zero-padded `Conv2d`).
///
/// Every output element is `b[co]` plus the products over `c`, `ky`, `kx` in ascending order, whatever the
/// tiling or the thread count, so results are bit-identical across runs, thread counts and backends that keep
/// this order. (Padding contributes `w·0` terms, which change no value.)
///
/// The kernel keeps a [`CO_TILE`] × [`X_TILE`] tile of accumulators in registers for the whole reduction,
/// so each input load feeds [`CO_TILE`] multiply-adds and no partial sum goes through memory.
// w (co,ci,kh,kw) * xp (ci,hp,rs) + b (co) -> out (co,ho,wo)
pub fn conv2d<W: Weight>(out: &mut [f32], xp: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) {
    let Conv2dShape { ci, kh, kw, stride: s, ho, wo, .. } = *g;
    let (_, hp, rs) = g.scratch_shape();
    let plane = ho * wo;
    let ksize = ci * kh * kw;
    par::for_each_chunk(out, CO_TILE * plane, |blk, o| {
        let nco = o.len() / plane;
        let co0 = blk * CO_TILE;
        // Rows of the weights of this block's channels (the last one repeated to fill a partial block).
        let wrow: [&[W]; CO_TILE] = core::array::from_fn(|k| &w[(co0 + k.min(nco - 1)) * ksize..][..ksize]);
        let bias: [f32; CO_TILE] = core::array::from_fn(|k| b[co0 + k.min(nco - 1)]);
        for oy in 0..ho {
            for ox0 in (0..wo).step_by(X_TILE) {
                let mut acc: [[f32; X_TILE]; CO_TILE] = core::array::from_fn(|k| [bias[k]; X_TILE]);
                for c in 0..ci {
                    for ky in 0..kh {
                        let row = &xp[(c * hp + oy * s + ky) * rs..][..rs];
                        for kx in 0..kw {
                            let xs: [f32; X_TILE] = if s == 1 {
                                let mut v = [0f32; X_TILE];
                                v.copy_from_slice(&row[ox0 + kx..][..X_TILE]);
                                v
                            } else {
                                core::array::from_fn(|j| row[(ox0 + j) * s + kx])
                            };
                            let wi = (c * kh + ky) * kw + kx;
                            for k in 0..CO_TILE {
                                let wk = wrow[k][wi].to_f32();
                                for j in 0..X_TILE {
                                    acc[k][j] += wk * xs[j];
                                }
                            }
                        }
                    }
                }
                let n = X_TILE.min(wo - ox0);
                for (k, a) in acc.iter().enumerate().take(nco) {
                    o[k * plane + oy * wo + ox0..][..n].copy_from_slice(&a[..n]);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: every output element from its definition.
    fn reference(x: &[f32], w: &[f32], b: &[f32], g: &Conv2dShape) -> [f32; 1024] {
        let mut out = [0.0f32; 1024];
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
        let (ci, co, k) = (2, 5, 3); // 5 output channels: one full tile of 4 and a tail of 1
        let ho = (h + pad[0] + pad[2] - k) / stride + 1;
        let wo = (w + pad[1] + pad[3] - k) / stride + 1;
        let g = Conv2dShape { ci, h, w, co, kh: k, kw: k, stride, pad, ho, wo };
        let x: [f32; 256] = core::array::from_fn(|i| ((i * 7 % 11) as f32) - 5.0);
        let wt: [f32; 90] = core::array::from_fn(|i| ((i * 5 % 9) as f32) * 0.25 - 1.0);
        let b = [0.5f32, -0.25, 1.0, 0.0, -2.0];
        let (sc, sh, sw) = g.scratch_shape();
        let mut xp = [f32::NAN; 2048];
        conv2d_pad(&mut xp[..sc * sh * sw], &x[..ci * h * w], &g);
        let mut out = [0.0f32; 1024];
        conv2d(&mut out[..co * ho * wo], &xp[..sc * sh * sw], &wt, &b, &g);
        assert_eq!(out, reference(&x, &wt, &b, &g));
    }

    #[test]
    fn matches_naive_definition() {
        check(1, [1, 1, 1, 1], 5, 4);
        check(1, [0, 0, 0, 0], 5, 4);
        check(2, [1, 1, 1, 1], 5, 4);
        check(2, [0, 0, 1, 1], 4, 4); // diffusers Downsample2D with padding=0
                                      // Wider rows: full interior tiles of 8 columns plus partial and edge tiles.
        check(1, [1, 1, 1, 1], 5, 11);
        check(1, [0, 0, 0, 0], 3, 20);
        check(2, [1, 1, 1, 1], 6, 13);
        check(2, [0, 0, 1, 1], 6, 18);
    }
}
