//! Average pooling of the codes of a quantized value (the integer sibling of [`crate::ops::pool2d`]'s
//! averages; max pooling of codes is the generic [`crate::ops::pool2d_max`]).

use crate::ops::{Elem, PoolFn, PoolShape};

/// Average pooling of the codes of a quantized value, the output at the input's scale and zero point: the
/// window's sum `S` of codes over its count `n` (the elements inside the input for
/// [`PoolFn::Average`], the whole window for [`PoolFn::AverageWithPad`], whose padding stands for 0.0, code
/// `zero`), rounded half up: `floor((2·S + n) / 2n)`. The mean of the codes is the code of the mean, so the
/// only error is that rounding (at most half a step).
// x (c,h,w) -> out (c,ho,wo)
pub fn qpool2d_average<T: Elem + Into<i32> + TryFrom<i32>>(
    out: &mut [T],
    x: &[T],
    g: &PoolShape,
    f: PoolFn,
    zero: i32,
) {
    let size = (g.k[0] * g.k[1]) as i64;
    crate::ops::pool::each_window(out, x, g, |plane, ys, xs| {
        let (mut sum, mut count) = (0i64, 0i64);
        for y in ys {
            for &e in &plane[y * g.w..][xs.clone()] {
                sum += i64::from(e.into());
                count += 1;
            }
        }
        let n = if f == PoolFn::AverageWithPad {
            sum += (size - count) * i64::from(zero);
            size
        } else {
            count
        };
        let mean = (2 * sum + n).div_euclid(2 * n.max(1));
        T::try_from(mean as i32).unwrap_or(T::LOWEST)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pool2d;

    #[test]
    fn average_pooling_of_codes_rounds_the_f32_mean_half_up() {
        let q8: [i8; 60] = core::array::from_fn(|i| (i as i32 * 71 % 255 - 127) as i8);
        let q16 = q8.map(|v| i16::from(v) * 257);
        let (f8, f16) = (q8.map(f32::from), q16.map(f32::from));
        let g = PoolShape { c: 2, h: 5, w: 6, k: [3, 3], stride: [2, 2], pad: [1, 1], ho: 3, wo: 3 };
        for f in [PoolFn::Average, PoolFn::AverageWithPad] {
            let zero = if f == PoolFn::Average { 0 } else { 5 };
            let (mut o8, mut o16, mut g8, mut g16) = ([0i8; 18], [0i16; 18], [0f32; 18], [0f32; 18]);
            qpool2d_average(&mut o8, &q8, &g, f, zero);
            qpool2d_average(&mut o16, &q16, &g, f, zero);
            // The f32 kernel on the values the codes stand for (code − zero), then back to codes.
            let (v8, v16) = (f8.map(|v| v - zero as f32), f16.map(|v| v - zero as f32));
            pool2d(&mut g8, &v8, &g, f);
            pool2d(&mut g16, &v16, &g, f);
            for (got, want) in o8.iter().zip(g8) {
                let want = want + zero as f32;
                assert!((f32::from(*got) - want).abs() <= 0.5 + 1e-4, "{f:?}: {got} for {want}");
                assert_eq!(f32::from(*got), libm::floorf(want + 0.5 + 1e-4), "{f:?}: {got} for {want}");
            }
            for (got, want) in o16.iter().zip(g16) {
                let want = want + zero as f32;
                assert!((f32::from(*got) - want).abs() <= 0.5 + 1e-2, "{f:?}: {got} for {want}");
            }
        }
        // A tie: (1 + 2) / 2 rounds up to 2, (−1 − 2) / 2 up to −1.
        let g = PoolShape { c: 1, h: 1, w: 2, k: [1, 2], stride: [1, 2], pad: [0, 0], ho: 1, wo: 1 };
        let mut o = [0i8; 1];
        qpool2d_average(&mut o, &[1i8, 2], &g, PoolFn::Average, 0);
        assert_eq!(o, [2]);
        qpool2d_average(&mut o, &[-1i8, -2], &g, PoolFn::Average, 0);
        assert_eq!(o, [-1]);
    }
}
