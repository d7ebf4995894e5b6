//! Transposed 2-D convolution (ONNX `ConvTranspose`, PyTorch's `ConvTranspose2d`), one group, no dilation.

use super::Weight;
use crate::par;

/// Geometry of a transposed convolution: input `(ci, h, w)`, kernel `[ci, co, kh, kw]`, output `(co, ho, wo)`.
/// Input pixel `(y, x)` and tap `(ky, kx)` land on output pixel `(y·stride + ky − pad_top, x·stride + kx −
/// pad_left)`; contributions outside the output are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTransposeShape {
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
    /// Rows cropped at the top (ONNX `pads` begin).
    pub pad_top: usize,
    /// Columns cropped at the left.
    pub pad_left: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

/// The output rows `oy` one input row `iy` reaches for tap `k`, as an offset into the output (or `None`).
#[inline]
fn land(i: usize, k: usize, s: usize, pad: usize, n: usize) -> Option<usize> {
    (i * s + k).checked_sub(pad).filter(|&o| o < n)
}

/// `out[o] = b[o] + Σ_i Σ_taps w[i][o]·x[i]` scattered at stride `stride`. Each output element sums its
/// contributions in the order input channel, kernel row, kernel column, input row, input column, whatever the
/// thread count.
// x (ci,h,w), w [ci,co,kh,kw], b (co) -> out (co,ho,wo)
pub fn conv_transpose2d<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], g: &ConvTransposeShape) {
    let plane = g.ho * g.wo;
    if plane == 0 {
        return;
    }
    let (taps, inp) = (g.kh * g.kw, g.h * g.w);
    par::for_each_chunk(out, plane, |o, dst| {
        dst.fill(b[o]);
        for i in 0..g.ci {
            let xs = &x[i * inp..][..inp];
            let ws = &w[(i * g.co + o) * taps..][..taps];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let wv = ws[ky * g.kw + kx].to_f32();
                    for iy in 0..g.h {
                        let Some(oy) = land(iy, ky, g.stride, g.pad_top, g.ho) else { continue };
                        let row = &mut dst[oy * g.wo..][..g.wo];
                        let xr = &xs[iy * g.w..][..g.w];
                        for (ix, &xv) in xr.iter().enumerate() {
                            if let Some(ox) = land(ix, kx, g.stride, g.pad_left, g.wo) {
                                row[ox] += wv * xv;
                            }
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

    #[test]
    fn stride_two_scatters_each_pixel_into_a_block() {
        // One channel, 2x2 input, 2x2 kernel of ones, stride 2: each input pixel fills its own 2x2 block.
        let g = ConvTransposeShape {
            ci: 1,
            h: 2,
            w: 2,
            co: 1,
            kh: 2,
            kw: 2,
            stride: 2,
            pad_top: 0,
            pad_left: 0,
            ho: 4,
            wo: 4,
        };
        let mut out = [0.0f32; 16];
        conv_transpose2d(&mut out, &[1.0, 2.0, 3.0, 4.0], &[1.0f32; 4], &[0.5], &g);
        let want = [1.5, 1.5, 2.5, 2.5, 1.5, 1.5, 2.5, 2.5, 3.5, 3.5, 4.5, 4.5, 3.5, 3.5, 4.5, 4.5];
        assert_eq!(out, want);
        // Padding crops the first row and column: out[y][x] = full[y + 1][x + 1].
        let g = ConvTransposeShape { pad_top: 1, pad_left: 1, ho: 3, wo: 3, ..g };
        let mut out = [0.0f32; 9];
        conv_transpose2d(&mut out, &[1.0, 2.0, 3.0, 4.0], &[1.0f32; 4], &[0.5], &g);
        assert_eq!(out, [1.5, 2.5, 2.5, 3.5, 4.5, 4.5, 3.5, 4.5, 4.5]);
    }
}
