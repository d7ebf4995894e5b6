//! Pooling (ONNX `MaxPool`, `AveragePool`) and padding (`Pad`) of 2-D feature maps. Padding and max pooling
//! copy elements, so they serve f32 values and the i8/i16 codes of quantized ones alike.

use super::Elem;
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

/// The part inside `0..n` of the window of `k` from `start` (empty where they do not meet).
fn window(start: isize, k: usize, n: usize) -> core::ops::Range<usize> {
    let lo = start.clamp(0, n as isize);
    lo as usize..(start + k as isize).clamp(lo, n as isize) as usize
}

/// Calls `f(plane, rows, cols)` for each output element: the channel's input plane and the window's rows and
/// columns inside it (never empty for a validated op), row by row.
pub(crate) fn each_window<T: Send, X: Sync>(
    out: &mut [T],
    x: &[X],
    g: &PoolShape,
    f: impl Fn(&[X], core::ops::Range<usize>, core::ops::Range<usize>) -> T + Sync,
) {
    let n = g.c * g.ho * g.wo;
    if n == 0 || out.len() < n || x.len() < g.c * g.h * g.w {
        return;
    }
    par::for_each_chunk(&mut out[..n], g.wo, |r, row| {
        let (ch, oy) = (r / g.ho, r % g.ho);
        let plane = &x[ch * g.h * g.w..][..g.h * g.w];
        let y0 = (oy * g.stride[0]) as isize - g.pad[0] as isize;
        let ys = window(y0, g.k[0], g.h);
        for (ox, v) in row.iter_mut().enumerate() {
            let x0 = (ox * g.stride[1]) as isize - g.pad[1] as isize;
            let xs = window(x0, g.k[1], g.w);
            *v = f(plane, ys.clone(), xs);
        }
    });
}

/// Pools each window of each channel, elements taken row by row.
// x (c,h,w) -> out (c,ho,wo)
pub fn pool2d(out: &mut [f32], x: &[f32], g: &PoolShape, f: PoolFn) {
    if f == PoolFn::Max {
        return pool2d_max(out, x, g);
    }
    let size = (g.k[0] * g.k[1]) as f32;
    each_window(out, x, g, |plane, ys, xs| {
        let (mut acc, mut count) = (0.0, 0usize);
        for y in ys {
            for e in &plane[y * g.w..][xs.clone()] {
                acc += e;
                count += 1;
            }
        }
        if f == PoolFn::Average {
            acc / count.max(1) as f32
        } else {
            acc / size
        }
    });
}

/// The largest element of each window ([`PoolFn::Max`]), of f32 or of the codes of a quantized value: codes
/// order as the values they stand for, so the maximum of the codes is the code of the maximum, exactly.
// x (c,h,w) -> out (c,ho,wo)
pub fn pool2d_max<T: Elem>(out: &mut [T], x: &[T], g: &PoolShape) {
    each_window(out, x, g, |plane, ys, xs| {
        let mut acc = T::LOWEST;
        for y in ys {
            for &e in &plane[y * g.w..][xs.clone()] {
                acc = acc.larger(e);
            }
        }
        acc
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

/// The code that stands for `value` in a quantized value of `scale` and zero point `zero` whose codes lie in
/// `±max`: `q` with `(q − zero)·scale == value` exactly in f32, or `None` where no code does (then constant
/// padding of that value cannot run on the codes).
pub fn pad_code(value: f32, scale: f32, zero: i32, max: i32) -> Option<i32> {
    let k = libm::roundf(value / scale);
    if !k.is_finite() || k.abs() > 65536.0 || k * scale != value {
        return None;
    }
    let q = k as i32 + zero;
    (-max..=max).contains(&q).then_some(q)
}

/// Pads each channel by `[top, left, bottom, right]`. Reflection needs each pad below the side's length. A copy
/// of f32 or of codes (`value` is then the padding's code, [`pad_code`]).
// x (c,h,w) -> out (c, h + top + bottom, w + left + right)
pub fn pad2d<T: Elem>(
    out: &mut [T],
    x: &[T],
    (c, h, w): (usize, usize, usize),
    pad: [usize; 4],
    mode: PadMode,
    value: T,
) {
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

    /// A 2×5×6 map of codes, as i8, i16 and the f32 values of the same integers.
    fn codes() -> ([i8; 60], [i16; 60], [f32; 60], [f32; 60]) {
        let q8: [i8; 60] = core::array::from_fn(|i| (i as i32 * 71 % 255 - 127) as i8);
        let q16 = q8.map(|v| i16::from(v) * 257);
        (q8, q16, q8.map(f32::from), q16.map(f32::from))
    }

    #[test]
    fn max_pooling_of_codes_is_the_f32_kernel_on_their_values() {
        let (q8, q16, f8, f16) = codes();
        // Overlapping 3×2 windows, stride (2, 1), padding (1, 1): border windows are cut.
        let g = PoolShape { c: 2, h: 5, w: 6, k: [3, 2], stride: [2, 1], pad: [1, 1], ho: 3, wo: 6 };
        let (mut o8, mut o16, mut g8, mut g16) = ([0i8; 36], [0i16; 36], [0f32; 36], [0f32; 36]);
        pool2d_max(&mut o8, &q8, &g);
        pool2d_max(&mut o16, &q16, &g);
        pool2d(&mut g8, &f8, &g, PoolFn::Max);
        pool2d(&mut g16, &f16, &g, PoolFn::Max);
        assert_eq!((o8.map(f32::from), o16.map(f32::from)), (g8, g16));
        // Window (0, 0) covers rows 0..2 and column 0 of the input, (0, 1) rows 0..2 and columns 0..2.
        let most = |i: &[usize]| i.iter().map(|&i| q8[i]).fold(i8::MIN, Ord::max);
        assert_eq!(o8[..2], [most(&[0, 6]), most(&[0, 1, 6, 7])]);
    }

    #[test]
    fn padding_codes_is_the_f32_kernel_on_their_values() {
        let (q8, q16, f8, f16) = codes();
        let pads = [2, 1, 3, 4];
        for mode in PadMode::ALL {
            let (mut o8, mut o16, mut g8, mut g16) = ([0i8; 220], [0i16; 220], [0f32; 220], [0f32; 220]);
            pad2d(&mut o8, &q8, (2, 5, 6), pads, mode, -3);
            pad2d(&mut o16, &q16, (2, 5, 6), pads, mode, -3);
            pad2d(&mut g8, &f8, (2, 5, 6), pads, mode, -3.0);
            pad2d(&mut g16, &f16, (2, 5, 6), pads, mode, -3.0);
            assert_eq!(o8.map(f32::from), g8, "{mode:?}");
            assert_eq!(o16.map(f32::from), g16, "{mode:?}");
        }
    }

    #[test]
    fn a_padding_constant_has_a_code_only_where_one_stands_for_it_exactly() {
        assert_eq!(pad_code(0.0, 0.037, 0, 127), Some(0));
        assert_eq!(pad_code(0.0, 0.037, -90, 127), Some(-90));
        assert_eq!(pad_code(-1.5, 0.5, 0, 127), Some(-3));
        assert_eq!(pad_code(-1.5, 0.5, 10, 127), Some(7));
        assert_eq!(pad_code(1.0, 0.3, 0, 127), None, "1.0 lies between codes");
        assert_eq!(pad_code(100.0, 0.5, 0, 127), None, "code 200 is out of range");
        assert_eq!(pad_code(100.0, 0.5, 0, 32767), Some(200));
        assert_eq!(pad_code(-1.0, 0.5, -126, 127), None, "code −128 is out of range");
        assert_eq!(pad_code(f32::INFINITY, 0.5, 0, 127), None);
    }
}
