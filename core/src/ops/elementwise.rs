//! Elementwise ops: SiLU, sums, affine maps and per-channel time-embedding injection.

/// SiLU of one value: `x · σ(x) = x / (1 + e^(−x))`.
#[inline]
pub(crate) fn silu1(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// SiLU in place.
// x (n) -> x (n)
pub fn silu(x: &mut [f32]) {
    crate::par::for_each_chunk(x, 4096, |_, xs| xs.iter_mut().for_each(|v| *v = silu1(*v)));
}

/// `x = x·mul + add`, in place.
// x (n) -> x (n)
pub fn affine(x: &mut [f32], mul: f32, add: f32) {
    x.iter_mut().for_each(|v| *v = *v * mul + add);
}

/// `out = (out + b)·scale`, in place.
// out (n), b (n) -> out (n)
pub fn add_assign_scaled(out: &mut [f32], b: &[f32], scale: f32) {
    if scale == 1.0 {
        out.iter_mut().zip(b).for_each(|(o, v)| *o += v);
    } else {
        out.iter_mut().zip(b).for_each(|(o, v)| *o = (*o + v) * scale);
    }
}

/// `out = (out + out)·scale`, in place (both operands of an `Add` are the same value).
// out (n) -> out (n)
pub fn scale_assign(out: &mut [f32], scale: f32) {
    out.iter_mut().for_each(|o| *o = (*o + *o) * scale);
}

/// Adds one value per channel.
// x (c,hw), v (c) -> x (c,hw)
pub fn add_channel(x: &mut [f32], v: &[f32], hw: usize) {
    if hw == 0 {
        return;
    }
    for (row, b) in x.chunks_mut(hw).zip(v) {
        row.iter_mut().for_each(|o| *o += b);
    }
}

/// diffusers' `scale_shift` time conditioning: `x·(1 + scale) + shift`, with `v = [scale; shift]`.
// x (c,hw), v (2c) -> x (c,hw)
pub fn scale_shift(x: &mut [f32], v: &[f32], c: usize, hw: usize) {
    if hw == 0 {
        return;
    }
    let (scale, shift) = v.split_at(c.min(v.len()));
    for ((row, s), t) in x.chunks_mut(hw).zip(scale).zip(shift) {
        row.iter_mut().for_each(|o| *o = *o * (1.0 + s) + t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_values() {
        let mut x = [0.0f32, 1.0, -1.0];
        silu(&mut x);
        assert_eq!(x[0], 0.0);
        assert!((x[1] - 0.731_058_6).abs() < 1e-6);
        assert!((x[2] + 0.268_941_4).abs() < 1e-6);
    }

    #[test]
    fn channel_ops() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        add_channel(&mut x, &[10.0, 20.0], 2);
        assert_eq!(x, [11.0, 12.0, 23.0, 24.0]);
        let mut y = [1.0f32, 2.0, 3.0, 4.0];
        scale_shift(&mut y, &[1.0, -0.5, 0.5, 1.0], 2, 2);
        assert_eq!(y, [2.5, 4.5, 2.5, 3.0]);
        let mut z = [1.0f32, 2.0];
        add_assign_scaled(&mut z, &[3.0, 4.0], 0.5);
        assert_eq!(z, [2.0, 3.0]);
    }
}
