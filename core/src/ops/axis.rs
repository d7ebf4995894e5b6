//! Copies along one axis: slices (ONNX `Slice`, `Split`, `Gather` with a constant index) and concatenation
//! (`Concat` on any axis). Pure copies, of f32 or of the i8/i16 codes of a quantized value.

use super::Elem;
use crate::par;

/// `out[o, j, i] = x[o, start + j·step, i]` for `j < count`, `x` viewed as `[outer, n, inner]`.
// x (outer, n, inner) -> out (outer, count, inner)
#[allow(clippy::too_many_arguments)]
pub fn slice_axis<T: Elem>(
    out: &mut [T],
    x: &[T],
    outer: usize,
    n: usize,
    inner: usize,
    start: usize,
    step: usize,
    count: usize,
) {
    let len = outer.saturating_mul(count).saturating_mul(inner);
    let last = start.saturating_add(count.saturating_sub(1).saturating_mul(step));
    if len == 0 || last >= n || out.len() < len || x.len() < outer.saturating_mul(n).saturating_mul(inner) {
        return;
    }
    par::for_each_chunk(&mut out[..len], count * inner, |o, ob| {
        let xs = &x[o * n * inner..][..n * inner];
        for (j, row) in ob.chunks_exact_mut(inner).enumerate() {
            row.copy_from_slice(&xs[(start + j * step) * inner..][..inner]);
        }
    });
}

/// `out[o] = [a[o]; b[o]]` for `a` viewed as `[outer, na, inner]` and `b` as `[outer, nb, inner]`.
// a (outer, na, inner), b (outer, nb, inner) -> out (outer, na + nb, inner)
pub fn concat_axis<T: Elem>(out: &mut [T], a: &[T], b: &[T], outer: usize, na: usize, nb: usize, inner: usize) {
    let (ra, rb) = (na.saturating_mul(inner), nb.saturating_mul(inner));
    let len = outer.saturating_mul(ra.saturating_add(rb));
    if len == 0 || out.len() < len || a.len() < outer.saturating_mul(ra) || b.len() < outer.saturating_mul(rb) {
        return;
    }
    par::for_each_chunk(&mut out[..len], ra + rb, |o, ob| {
        ob[..ra].copy_from_slice(&a[o * ra..][..ra]);
        ob[ra..].copy_from_slice(&b[o * rb..][..rb]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_joins() {
        // [2, 3, 2]: every other row of each outer block, from row 0.
        let x: [f32; 12] = core::array::from_fn(|i| i as f32);
        let mut out = [0.0f32; 8];
        slice_axis(&mut out, &x, 2, 3, 2, 0, 2, 2);
        assert_eq!(out, [0.0, 1.0, 4.0, 5.0, 6.0, 7.0, 10.0, 11.0]);
        let mut j = [0.0f32; 6];
        concat_axis(&mut j, &[1.0, 2.0], &[3.0, 4.0, 5.0, 6.0], 2, 1, 2, 1);
        assert_eq!(j, [1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }

    #[test]
    fn codes_move_as_their_f32_values_do() {
        let q8: [i8; 24] = core::array::from_fn(|i| (i as i32 * 53 % 255 - 127) as i8);
        let q16: [i16; 24] = q8.map(|v| i16::from(v) * -258);
        let (f8, f16) = (q8.map(f32::from), q16.map(f32::from));
        // x [2, 4, 3]: rows 1 and 3 of each block.
        let (mut o8, mut o16, mut g8, mut g16) = ([0i8; 12], [0i16; 12], [0f32; 12], [0f32; 12]);
        slice_axis(&mut o8, &q8, 2, 4, 3, 1, 2, 2);
        slice_axis(&mut o16, &q16, 2, 4, 3, 1, 2, 2);
        slice_axis(&mut g8, &f8, 2, 4, 3, 1, 2, 2);
        slice_axis(&mut g16, &f16, 2, 4, 3, 1, 2, 2);
        assert_eq!((o8.map(f32::from), o16.map(f32::from)), (g8, g16));
        assert_eq!(o8[..3], q8[3..6]);
        // a [4, 2, 3] (all of x) and b [4, 1, 3] (its first half) joined on the middle axis.
        let (mut j8, mut j16, mut h8, mut h16) = ([0i8; 36], [0i16; 36], [0f32; 36], [0f32; 36]);
        concat_axis(&mut j8, &q8, &q8[..12], 4, 2, 1, 3);
        concat_axis(&mut j16, &q16, &q16[..12], 4, 2, 1, 3);
        concat_axis(&mut h8, &f8, &f8[..12], 4, 2, 1, 3);
        concat_axis(&mut h16, &f16, &f16[..12], 4, 2, 1, 3);
        assert_eq!((j8.map(f32::from), j16.map(f32::from)), (h8, h16));
        assert_eq!(j8[6..9], q8[..3]);
    }
}
