//! 2-D convolution, direct (no im2col buffer: the arena stays the size of the activations).

use super::{Kernels, Weight};
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
#[cfg(not(target_arch = "arm"))]
const CO_TILE: usize = 4;
/// Output columns computed together: one vector of accumulators per output channel.
#[cfg(not(target_arch = "arm"))]
const X_TILE: usize = 8;
/// On 32-bit Arm (Cortex-M4F: 32 single-precision registers) a 4 × 8 tile spills; 4 × 4 fits.
#[cfg(target_arch = "arm")]
const CO_TILE: usize = 4;
/// See the Arm [`CO_TILE`].
#[cfg(target_arch = "arm")]
const X_TILE: usize = 4;
/// Padded rows are long enough for tiles of this many columns, on every target, so that a blob's memory plan
/// does not depend on where it runs ([`X_TILE`] divides it).
const ROW_TILE: usize = 8;
const _: () = assert!(ROW_TILE.is_multiple_of(X_TILE));

impl Conv2dShape {
    /// Length of a row of the zero-padded input copy: the padded width, widened so that the last (partial)
    /// tile of output columns reads inside the row (for any tile width dividing [`ROW_TILE`]).
    pub const fn padded_row(&self) -> usize {
        let tiles_end = (self.wo.div_ceil(ROW_TILE) * ROW_TILE - 1) * self.stride + self.kw;
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

/// Copies `x` into `xp` with the zero padding made explicit. Each element is written once (the interior copied,
/// the border zeroed), in parallel by groups of channels of at least [`PAD_CHUNK`] floats.
// x (ci,h,w) -> xp (ci, h+pt+pb, padded_row)
pub fn conv2d_pad(xp: &mut [f32], x: &[f32], g: &Conv2dShape) {
    let (ci, hp, rs) = g.scratch_shape();
    let [pt, pl, _, _] = g.pad;
    let plane = hp * rs;
    let xp = &mut xp[..ci * plane];
    if plane == 0 {
        return;
    }
    let chans = PAD_CHUNK.div_ceil(plane);
    par::for_each_chunk(xp, chans * plane, |blk, part| {
        for (k, xc) in part.chunks_exact_mut(plane).enumerate() {
            let c = blk * chans + k;
            for (y, row) in xc.chunks_exact_mut(rs).enumerate() {
                let src = y.checked_sub(pt).filter(|&r| r < g.h).and_then(|r| x.get((c * g.h + r) * g.w..)?.get(..g.w));
                match (src, row.get_mut(pl..pl + g.w)) {
                    (Some(src), Some(_)) => {
                        row[..pl].fill(0.0);
                        row[pl..pl + g.w].copy_from_slice(src);
                        row[pl + g.w..].fill(0.0);
                    }
                    _ => row.fill(0.0),
                }
            }
        }
    });
}

/// Fewest floats of padded input a task of [`conv2d_pad`] copies (64 KiB): smaller maps are copied by one
/// thread, where a task would cost more than the copy.
const PAD_CHUNK: usize = 16 * 1024;

/// Converted weights kept on the stack per block of output channels: [`CO_TILE`] × (a chunk of input
/// channels × kernel size). 1 KiB, small enough for a microcontroller's stack.
const W_CHUNK: usize = 256;

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
    let per_c = kh * kw;
    let ksize = ci * per_c;
    // Input channels whose converted weights fit the stack buffer at once (kernels above 8×8 take one at a
    // time and convert in place, see below). f32 weights need no conversion: one pass over all channels.
    let chunk = if W::CONVERTS { (W_CHUNK / (CO_TILE * per_c)).clamp(1, ci.max(1)) } else { ci.max(1) };
    par::for_each_chunk(out, CO_TILE * plane, |blk, o| {
        let nco = o.len() / plane;
        let co0 = blk * CO_TILE;
        // The block's channels (the last one repeated to fill a partial block).
        let wrow: [&[W]; CO_TILE] = core::array::from_fn(|k| &w[(co0 + k.min(nco - 1)) * ksize..][..ksize]);
        let bias: [f32; CO_TILE] = core::array::from_fn(|k| b[co0 + k.min(nco - 1)]);
        let mut wbuf = [0f32; W_CHUNK];
        for c0 in (0..ci).step_by(chunk) {
            let c1 = (c0 + chunk).min(ci);
            let fits = W::CONVERTS && CO_TILE * (c1 - c0) * per_c <= W_CHUNK;
            if fits {
                // wbuf[(c − c0)·per_c·CO_TILE + i·CO_TILE + k] = w[co0 + k][c][i], converted once.
                for c in c0..c1 {
                    for i in 0..per_c {
                        for k in 0..CO_TILE {
                            wbuf[((c - c0) * per_c + i) * CO_TILE + k] = wrow[k][c * per_c + i].to_f32();
                        }
                    }
                }
            }
            for oy in 0..ho {
                for ox0 in (0..wo).step_by(X_TILE) {
                    let n = X_TILE.min(wo - ox0);
                    // Partial sums so far: the bias before the first chunk, then what the last chunk stored.
                    let mut acc: [[f32; X_TILE]; CO_TILE] = core::array::from_fn(|k| [bias[k]; X_TILE]);
                    if c0 > 0 {
                        for (k, a) in acc.iter_mut().enumerate().take(nco) {
                            a[..n].copy_from_slice(&o[k * plane + oy * wo + ox0..][..n]);
                        }
                    }
                    for c in c0..c1 {
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
                                let i = ky * kw + kx;
                                let wk: [f32; CO_TILE] = if fits {
                                    let at = ((c - c0) * per_c + i) * CO_TILE;
                                    core::array::from_fn(|k| wbuf[at + k])
                                } else {
                                    core::array::from_fn(|k| wrow[k][c * per_c + i].to_f32())
                                };
                                for k in 0..CO_TILE {
                                    for j in 0..X_TILE {
                                        acc[k][j] += wk[k] * xs[j];
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
        }
    });
}

/// [`conv2d`], or with [`Kernels::Fast`] the fast kernel of this CPU where one applies (the same sum with fused
/// multiply-adds; see `fast.rs`).
// w (co,ci,kh,kw) * xp (ci,hp,rs) + b (co) -> out (co,ho,wo)
pub fn conv2d_using<W: Weight>(kernels: Kernels, out: &mut [f32], xp: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast && super::fast::conv2d(out, xp, w, b, g) {
        return;
    }
    let _ = kernels;
    conv2d(out, xp, w, b, g);
}

/// Output size of a convolution along one axis, if the kernel fits.
pub fn conv_out_len(input: usize, kernel: usize, stride: usize, pad_lo: usize, pad_hi: usize) -> Option<usize> {
    let padded = input.checked_add(pad_lo)?.checked_add(pad_hi)?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
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
        let want = reference(&x, &wt, &b, &g);
        let mut out = [0.0f32; 1024];
        conv2d(&mut out[..co * ho * wo], &xp[..sc * sh * sw], &wt, &b, &g);
        assert_eq!(out, want, "f32 weights");
        // The same weights stored as f16 (they are exact in f16): the same bits.
        let wh: [half::f16; 90] = core::array::from_fn(|i| half::f16::from_f32(wt[i]));
        let mut out = [0.0f32; 1024];
        conv2d(&mut out[..co * ho * wo], &xp[..sc * sh * sw], &wh, &b, &g);
        assert_eq!(out, want, "f16 weights");
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

    /// Enough input channels that the weights take several stack chunks, and a 1×1 kernel.
    #[test]
    fn chunked_weights_keep_the_summation_order() {
        for (ci, k, pad) in [(20usize, 3usize, 1usize), (70, 1, 0)] {
            let (co, h, w) = (6usize, 4usize, 9usize);
            let g = Conv2dShape { ci, h, w, co, kh: k, kw: k, stride: 1, pad: [pad; 4], ho: h, wo: w };
            let x: [f32; 2520] = core::array::from_fn(|i| ((i * 13 % 17) as f32) * 0.125 - 1.0);
            let wt: [f32; 1080] = core::array::from_fn(|i| ((i * 7 % 11) as f32) * 0.25 - 1.25);
            let b = [0.5f32, -0.25, 1.0, 0.0, -2.0, 0.75];
            let (sc, sh, sw) = g.scratch_shape();
            let mut xp = [f32::NAN; 8192];
            conv2d_pad(&mut xp[..sc * sh * sw], &x[..ci * h * w], &g);
            let mut out = [0f32; 216];
            conv2d(&mut out, &xp[..sc * sh * sw], &wt[..co * ci * k * k], &b, &g);
            // Naive reference with the same order: bias, then c, ky, kx ascending.
            for co_ in 0..co {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut acc = b[co_];
                        for c in 0..ci {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) =
                                        ((oy + ky) as isize - pad as isize, (ox + kx) as isize - pad as isize);
                                    let xv = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        x[(c * h + iy as usize) * w + ix as usize]
                                    } else {
                                        0.0
                                    };
                                    acc += wt[((co_ * ci + c) * k + ky) * k + kx] * xv;
                                }
                            }
                        }
                        assert_eq!(out[(co_ * h + oy) * w + ox], acc, "ci {ci} k {k} at {co_},{oy},{ox}");
                    }
                }
            }
        }
    }
}
