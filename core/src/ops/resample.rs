//! Resampling: nearest-neighbour ×2 upsampling (diffusers' `Upsample2D` before its convolution) and the general
//! ONNX `Resize` (nearest or bilinear, any size, each coordinate transformation PyTorch exports).

use super::Elem;
use crate::par;

/// Doubles height and width by repeating each pixel in a 2×2 block.
// x (c,h,w) -> out (c,2h,2w)
pub fn upsample2x_nearest<T: Copy>(out: &mut [T], x: &[T], c: usize, h: usize, w: usize) {
    if w == 0 {
        return;
    }
    for (k, xrow) in x.chunks_exact(w).take(c * h).enumerate() {
        let (ch, y) = (k / h, k % h);
        for dy in 0..2 {
            let orow = &mut out[(ch * 2 * h + 2 * y + dy) * 2 * w..][..2 * w];
            for (pair, v) in orow.chunks_exact_mut(2).zip(xrow) {
                pair[0] = *v;
                pair[1] = *v;
            }
        }
    }
}

/// How an output coordinate maps to an input coordinate (ONNX `coordinate_transformation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeCoord {
    /// `(x + 0.5) / scale − 0.5`.
    HalfPixel = 0,
    /// As `HalfPixel`, but 0 where the output length is 1 (PyTorch's `align_corners=False`).
    PytorchHalfPixel = 1,
    /// `x · (in − 1) / (out − 1)` (0 where the output length is 1).
    AlignCorners = 2,
    /// `x / scale`.
    Asymmetric = 3,
}

/// How a resize reads the input around the mapped coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeSample {
    /// Bilinear interpolation between the two neighbours in each direction (coordinates clamped to the input).
    Linear = 0,
    /// The nearest pixel, rounding down (PyTorch's `mode="nearest"`).
    Floor = 1,
    /// The nearest pixel, halves rounding down (ONNX's default `round_prefer_floor`).
    RoundPreferFloor = 2,
    /// The nearest pixel, halves rounding up.
    RoundPreferCeil = 3,
    /// The nearest pixel, rounding up.
    Ceil = 4,
}

impl ResizeCoord {
    /// Every mode, in code order.
    pub const ALL: [ResizeCoord; 4] =
        [ResizeCoord::HalfPixel, ResizeCoord::PytorchHalfPixel, ResizeCoord::AlignCorners, ResizeCoord::Asymmetric];

    fn map(self, x: usize, n_in: usize, n_out: usize) -> f32 {
        let (x, fi, fo) = (x as f32, n_in as f32, n_out as f32);
        match self {
            ResizeCoord::HalfPixel => (x + 0.5) * fi / fo - 0.5,
            ResizeCoord::PytorchHalfPixel if n_out > 1 => (x + 0.5) * fi / fo - 0.5,
            ResizeCoord::AlignCorners if n_out > 1 => x * (fi - 1.0) / (fo - 1.0),
            ResizeCoord::PytorchHalfPixel | ResizeCoord::AlignCorners => 0.0,
            ResizeCoord::Asymmetric => x * fi / fo,
        }
    }
}

impl ResizeSample {
    /// Every sampling, in code order.
    pub const ALL: [ResizeSample; 5] = [
        ResizeSample::Linear,
        ResizeSample::Floor,
        ResizeSample::RoundPreferFloor,
        ResizeSample::RoundPreferCeil,
        ResizeSample::Ceil,
    ];
}

/// The `Resize` mode word: `coord | sample << 4`, decoded.
pub fn resize_mode(word: u32) -> Option<(ResizeCoord, ResizeSample)> {
    if word >> 8 != 0 {
        return None;
    }
    Some((*ResizeCoord::ALL.get((word & 15) as usize)?, *ResizeSample::ALL.get((word >> 4) as usize)?))
}

/// For each output index along one axis: the two input indices and the weight of the second.
fn taps(o: usize, n_in: usize, n_out: usize, coord: ResizeCoord, sample: ResizeSample) -> (usize, usize, f32) {
    let last = n_in.saturating_sub(1);
    let x = coord.map(o, n_in, n_out);
    let pick = |v: f32| (v.max(0.0) as usize).min(last);
    match sample {
        ResizeSample::Linear => {
            let x = x.clamp(0.0, last as f32);
            let i0 = libm::floorf(x);
            let i = pick(i0);
            (i, (i + 1).min(last), x - i0)
        }
        ResizeSample::Floor => (pick(libm::floorf(x)), 0, 0.0),
        ResizeSample::Ceil => (pick(libm::ceilf(x)), 0, 0.0),
        ResizeSample::RoundPreferFloor => {
            let f = libm::floorf(x);
            (pick(if x - f > 0.5 { f + 1.0 } else { f }), 0, 0.0)
        }
        ResizeSample::RoundPreferCeil => {
            let f = libm::floorf(x);
            (pick(if x - f >= 0.5 { f + 1.0 } else { f }), 0, 0.0)
        }
    }
}

/// Resizes each channel of `x` from `h × w` to `ho × wo`. Bilinear is `(1 − a)·row(y0) + a·row(y1)` of the
/// horizontal lerps `(1 − b)·x0 + b·x1`, in f32; the nearest-neighbour samplings are [`resize_nearest`].
// x (c,h,w) -> out (c,ho,wo)
#[allow(clippy::too_many_arguments)]
pub fn resize(
    out: &mut [f32],
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    mode: (ResizeCoord, ResizeSample),
) {
    let (coord, sample) = mode;
    if sample != ResizeSample::Linear {
        return resize_nearest(out, x, c, h, w, ho, wo, mode);
    }
    if c == 0 || h == 0 || w == 0 || ho == 0 || wo == 0 || out.len() < c * ho * wo || x.len() < c * h * w {
        return;
    }
    par::for_each_chunk(&mut out[..c * ho * wo], wo, |r, row| {
        let (ch, oy) = (r / ho, r % ho);
        let plane = &x[ch * h * w..][..h * w];
        let (y0, y1, a) = taps(oy, h, ho, coord, sample);
        for (ox, v) in row.iter_mut().enumerate() {
            let (x0, x1, b) = taps(ox, w, wo, coord, sample);
            let top = (1.0 - b) * plane[y0 * w + x0] + b * plane[y0 * w + x1];
            let bot = (1.0 - b) * plane[y1 * w + x0] + b * plane[y1 * w + x1];
            *v = (1.0 - a) * top + a * bot;
        }
    });
}

/// [`resize`] with a nearest-neighbour sampling (a [`ResizeSample`] other than `Linear`, which this reads as
/// `Floor`): each output element is a copy of one input element, of f32 or of the codes of a quantized value.
// x (c,h,w) -> out (c,ho,wo)
#[allow(clippy::too_many_arguments)]
pub fn resize_nearest<T: Elem>(
    out: &mut [T],
    x: &[T],
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    mode: (ResizeCoord, ResizeSample),
) {
    let (coord, sample) = mode;
    let sample = if sample == ResizeSample::Linear { ResizeSample::Floor } else { sample };
    if c == 0 || h == 0 || w == 0 || ho == 0 || wo == 0 || out.len() < c * ho * wo || x.len() < c * h * w {
        return;
    }
    par::for_each_chunk(&mut out[..c * ho * wo], wo, |r, row| {
        let (ch, oy) = (r / ho, r % ho);
        let plane = &x[ch * h * w..][..h * w];
        let (y0, _, _) = taps(oy, h, ho, coord, sample);
        for (ox, v) in row.iter_mut().enumerate() {
            let (x0, _, _) = taps(ox, w, wo, coord, sample);
            *v = plane[y0 * w + x0];
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_align_corners_and_half_pixel() {
        // 1×2 → 1×3 with align_corners: the middle is the mean; with half-pixel, 2 → 4 gives the quarter points.
        let x = [0.0f32, 4.0];
        let mut out = [0.0f32; 3];
        resize(&mut out, &x, 1, 1, 2, 1, 3, (ResizeCoord::AlignCorners, ResizeSample::Linear));
        assert_eq!(out, [0.0, 2.0, 4.0]);
        let mut out = [0.0f32; 4];
        resize(&mut out, &x, 1, 1, 2, 1, 4, (ResizeCoord::HalfPixel, ResizeSample::Linear));
        assert_eq!(out, [0.0, 1.0, 3.0, 4.0]);
        resize(&mut out, &x, 1, 1, 2, 1, 4, (ResizeCoord::Asymmetric, ResizeSample::Floor));
        assert_eq!(out, [0.0, 0.0, 4.0, 4.0]);
        assert_eq!(resize_mode(2 | 1 << 4), Some((ResizeCoord::AlignCorners, ResizeSample::Floor)));
        assert_eq!(resize_mode(5 << 4), None);
    }

    #[test]
    fn repeats_pixels() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0.0f32; 16];
        upsample2x_nearest(&mut out, &x, 1, 2, 2);
        assert_eq!(out, [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }

    #[test]
    fn nearest_resizing_of_codes_is_the_f32_kernel_on_their_values() {
        let q8: [i8; 30] = core::array::from_fn(|i| (i as i32 * 67 % 255 - 127) as i8);
        let q16 = q8.map(|v| i16::from(v) * 255);
        let (f8, f16) = (q8.map(f32::from), q16.map(f32::from));
        // 2×3×5 → 2×7×4 (up in one direction, down in the other), every coordinate map and nearest rounding.
        for coord in ResizeCoord::ALL {
            for sample in &ResizeSample::ALL[1..] {
                let mode = (coord, *sample);
                let (mut o8, mut o16, mut g8, mut g16) = ([0i8; 56], [0i16; 56], [0f32; 56], [0f32; 56]);
                resize_nearest(&mut o8, &q8, 2, 3, 5, 7, 4, mode);
                resize_nearest(&mut o16, &q16, 2, 3, 5, 7, 4, mode);
                resize(&mut g8, &f8, 2, 3, 5, 7, 4, mode);
                resize(&mut g16, &f16, 2, 3, 5, 7, 4, mode);
                assert_eq!(o8.map(f32::from), g8, "{mode:?}");
                assert_eq!(o16.map(f32::from), g16, "{mode:?}");
                assert!(o8.iter().all(|v| q8[..15].contains(v) || q8[15..].contains(v)));
            }
        }
    }
}
