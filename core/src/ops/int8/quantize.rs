//! Conversions at the network's edges: the f32 input to integers, the integer output back to f32.

use super::{QMut, QRef};

/// `out = sat(round(x / scale))`.
pub fn quantize(out: &mut QMut<'_>, x: &[f32], scale: f32) {
    for (i, &v) in x.iter().enumerate() {
        out.set(i, libm::roundf(v / scale) as i64);
    }
}

/// `out = x · scale`.
pub fn dequantize(out: &mut [f32], x: QRef<'_>, scale: f32) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = x.get(i) as f32 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_half_away_and_saturates() {
        // x / 0.5 = 0.5, 1.5, −1.5, 2.5, 200, −200, −0.4
        let x = [0.25f32, 0.75, -0.75, 1.25, 100.0, -100.0, -0.2];
        let mut q8 = [0i8; 7];
        quantize(&mut QMut::I8(&mut q8), &x, 0.5);
        assert_eq!(q8, [1, 2, -2, 3, 127, -127, 0]);
        let mut q16 = [0i16; 7];
        quantize(&mut QMut::I16(&mut q16), &x, 0.5 / 256.0);
        assert_eq!(q16, [128, 384, -384, 640, 32767, -32767, -102]);
    }

    #[test]
    fn dequantize_scales_each_code() {
        let mut out = [0f32; 3];
        dequantize(&mut out, QRef::I16(&[-32767, 0, 3]), 0.25);
        assert_eq!(out, [-8191.75, 0.0, 0.75]);
    }
}
