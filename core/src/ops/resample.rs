//! Nearest-neighbour upsampling (diffusers' `Upsample2D` before its convolution).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_pixels() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0.0f32; 16];
        upsample2x_nearest(&mut out, &x, 1, 2, 2);
        assert_eq!(out, [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }
}
