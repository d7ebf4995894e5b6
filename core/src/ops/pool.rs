//! Pooling (ONNX `MaxPool`, `AveragePool`) and padding (`Pad`) of 2-D feature maps.

use crate::par;

/// A pooling window's geometry over `(c, h, w)` → `(c, ho, wo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window height and width.
    pub k: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Padding: top, left (bottom and right are implied by the output size).
    pub pad: [usize; 2],
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

/// What a pool computes over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFn {
    /// The largest element inside the input (padding ignored).
    Max = 0,
    /// The mean of the elements inside the input (`count_include_pad=0`).
    Average = 1,
    /// The sum inside the input divided by the whole window size (`count_include_pad=1`).
    AverageWithPad = 2,
}

impl PoolFn {
    /// Every pool, in code order.
    pub const ALL: [PoolFn; 3] = [PoolFn::Max, PoolFn::Average, PoolFn::AverageWithPad];
}

/// Pools each window of each channel, elements taken row by row.
// x (c,h,w) -> out (c,ho,wo)
pub fn pool2d(out: &mut [f32], x: &[f32], g: &PoolShape, f: PoolFn) {
    let n = g.c * g.ho * g.wo;
    if n == 0 || out.len() < n || x.len() < g.c * g.h * g.w {
        return;
    }
    par::for_each_chunk(&mut out[..n], g.wo, |r, row| {
        let (ch, oy) = (r / g.ho, r % g.ho);
        let plane = &x[ch * g.h * g.w..][..g.h * g.w];
        let y0 = (oy * g.stride[0]) as isize - g.pad[0] as isize;
        for (ox, v) in row.iter_mut().enumerate() {
            let x0 = (ox * g.stride[1]) as isize - g.pad[1] as isize;
            let (mut acc, mut count) = (if f == PoolFn::Max { f32::NEG_INFINITY } else { 0.0 }, 0usize);
            for y in y0.max(0)..(y0 + g.k[0] as isize).min(g.h as isize) {
                for xx in x0.max(0)..(x0 + g.k[1] as isize).min(g.w as isize) {
                    let e = plane[y as usize * g.w + xx as usize];
                    acc = if f == PoolFn::Max { acc.max(e) } else { acc + e };
                    count += 1;
                }
            }
            *v = match f {
                PoolFn::Max => acc,
                PoolFn::Average => acc / count.max(1) as f32,
                PoolFn::AverageWithPad => acc / (g.k[0] * g.k[1]) as f32,
            };
        }
    });
}

/// How `Pad` fills the border.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// A constant value.
    Constant = 0,
    /// The mirror image without repeating the edge (`reflect`).
    Reflect = 1,
    /// The edge pixel repeated (`edge`, PyTorch's `replicate`).
    Edge = 2,
}

impl PadMode {
    /// Every mode, in code order.
    pub const ALL: [PadMode; 3] = [PadMode::Constant, PadMode::Reflect, PadMode::Edge];
}

/// Pads each channel by `[top, left, bottom, right]`. Reflection needs each pad below the side's length.
// x (c,h,w) -> out (c, h + top + bottom, w + left + right)
pub fn pad2d(out: &mut [f32], x: &[f32], (c, h, w): (usize, usize, usize), pad: [usize; 4], mode: PadMode, value: f32) {
    let (ho, wo) = (h + pad[0] + pad[2], w + pad[1] + pad[3]);
    if c * ho * wo == 0 || out.len() < c * ho * wo || x.len() < c * h * w || h == 0 || w == 0 {
        return;
    }
    // Input index of padded index i along an axis of length n with `lo` before it, or None for the constant.
    let src = |i: usize, lo: usize, n: usize| -> Option<usize> {
        let j = i as isize - lo as isize;
        let n = n as isize;
        match mode {
            _ if (0..n).contains(&j) => Some(j as usize),
            PadMode::Constant => None,
            PadMode::Edge => Some(j.clamp(0, n - 1) as usize),
            PadMode::Reflect => {
                let r = if j < 0 { -j } else { 2 * (n - 1) - j };
                Some(r.clamp(0, n - 1) as usize)
            }
        }
    };
    par::for_each_chunk(&mut out[..c * ho * wo], wo, |r, row| {
        let (ch, oy) = (r / ho, r % ho);
        let plane = &x[ch * h * w..][..h * w];
        let sy = src(oy, pad[0], h);
        for (ox, v) in row.iter_mut().enumerate() {
            *v = match (sy, src(ox, pad[1], w)) {
                (Some(y), Some(xx)) => plane[y * w + xx],
                _ => value,
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_pads() {
        // 1×4×4, 2×2 windows, stride 2.
        let x: [f32; 16] = core::array::from_fn(|i| i as f32);
        let g = PoolShape { c: 1, h: 4, w: 4, k: [2, 2], stride: [2, 2], pad: [0, 0], ho: 2, wo: 2 };
        let mut out = [0.0f32; 4];
        pool2d(&mut out, &x, &g, PoolFn::Max);
        assert_eq!(out, [5.0, 7.0, 13.0, 15.0]);
        pool2d(&mut out, &x, &g, PoolFn::Average);
        assert_eq!(out, [2.5, 4.5, 10.5, 12.5]);
        // A 3×3 window with padding 1 at the corner: 4 elements inside, 9 in the window.
        let g = PoolShape { c: 1, h: 4, w: 4, k: [3, 3], stride: [2, 2], pad: [1, 1], ho: 2, wo: 2 };
        pool2d(&mut out, &x, &g, PoolFn::AverageWithPad);
        assert_eq!(out[0], (0.0 + 1.0 + 4.0 + 5.0) / 9.0);
        let x = [1.0f32, 2.0, 3.0];
        let mut p = [0.0f32; 7];
        pad2d(&mut p, &x, (1, 1, 3), [0, 2, 0, 2], PadMode::Reflect, 0.0);
        assert_eq!(p, [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
        pad2d(&mut p, &x, (1, 1, 3), [0, 2, 0, 2], PadMode::Edge, 0.0);
        assert_eq!(p, [1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
        pad2d(&mut p, &x, (1, 1, 3), [0, 1, 0, 3], PadMode::Constant, -1.0);
        assert_eq!(p, [-1.0, 1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    }
}
