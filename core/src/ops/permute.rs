//! Axis permutation (ONNX `Transpose`, PyTorch's `permute`) of a row-major tensor of up to six dimensions.

use super::Elem;
use crate::par;

/// Dimensions a permutation covers (lower ranks pad with leading dimensions of 1).
pub const PERMUTE_DIMS: usize = 6;

/// Output rows (runs of the last output dimension) per work item.
const ROWS: usize = 64;

/// `out` is `x` (row-major with dimensions `dims`) with its axes reordered: output axis `i` is input axis
/// `perm[i]`. A pure copy: every element lands bit for bit (f32, or the i8/i16 codes of a quantized value).
// x (dims[0]·…·dims[5]) -> out (the same count, dims[perm[0]], …, dims[perm[5]])
pub fn permute<T: Elem>(out: &mut [T], x: &[T], dims: [usize; PERMUTE_DIMS], perm: [usize; PERMUTE_DIMS]) {
    let mut stride = [0usize; PERMUTE_DIMS];
    let mut s = 1;
    for i in (0..PERMUTE_DIMS).rev() {
        stride[i] = s;
        s *= dims[i];
    }
    if s == 0 || out.len() < s || x.len() < s || perm.iter().any(|&p| p >= PERMUTE_DIMS) {
        return;
    }
    // Output dimensions and, for each, the input stride it walks.
    let od = perm.map(|p| dims[p]);
    let os = perm.map(|p| stride[p]);
    let inner = od[PERMUTE_DIMS - 1];
    par::for_each_chunk(&mut out[..s], ROWS * inner, |blk, ob| {
        for (r, row) in ob.chunks_exact_mut(inner).enumerate() {
            // The output row's index in dimensions 0..5, last fastest, mapped to the input offset.
            let mut rest = blk * ROWS + r;
            let mut base = 0;
            for d in (0..PERMUTE_DIMS - 1).rev() {
                base += (rest % od[d]) * os[d];
                rest /= od[d];
            }
            let step = os[PERMUTE_DIMS - 1];
            for (j, v) in row.iter_mut().enumerate() {
                *v = x[base + j * step];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn matches_index_arithmetic() {
        // [2, 3, 4] → perm (2, 0, 1): out[k][i][j] = x[i][j][k].
        let dims = [1, 1, 1, 2, 3, 4];
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let mut out = [0.0f32; 24];
        permute(&mut out, &x, dims, [0, 1, 2, 5, 3, 4]);
        for k in 0..4 {
            for i in 0..2 {
                for j in 0..3 {
                    assert_eq!(out[(k * 2 + i) * 3 + j], x[(i * 3 + j) * 4 + k]);
                }
            }
        }
        // Pixel unshuffle's six-dimensional permutation (c, h, p1, w, p2) → (c, p1, p2, h, w).
        let dims = [1, 2, 2, 2, 3, 2];
        let x: Vec<f32> = (0..48).map(|v| v as f32).collect();
        let mut out = [0.0f32; 48];
        permute(&mut out, &x, dims, [0, 1, 3, 5, 2, 4]);
        let at = |c: usize, h: usize, p1: usize, w: usize, p2: usize| x[(((c * 2 + h) * 2 + p1) * 3 + w) * 2 + p2];
        let mut i = 0;
        for c in 0..2 {
            for p1 in 0..2 {
                for p2 in 0..2 {
                    for h in 0..2 {
                        for w in 0..3 {
                            assert_eq!(out[i], at(c, h, p1, w, p2));
                            i += 1;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn codes_move_as_their_f32_values_do() {
        // The same integers as i8, i16 and f32 land in the same places.
        let dims = [1, 2, 1, 3, 2, 4];
        let perm = [0, 4, 2, 1, 5, 3];
        let q8: Vec<i8> = (0..48).map(|v| (v * 37 % 255 - 127) as i8).collect();
        let q16: Vec<i16> = q8.iter().map(|&v| i16::from(v) * 251).collect();
        let (f8, f16): (Vec<f32>, Vec<f32>) =
            (q8.iter().map(|&v| v.into()).collect(), q16.iter().map(|&v| v.into()).collect());
        let (mut o8, mut o16, mut g8, mut g16) = ([0i8; 48], [0i16; 48], [0f32; 48], [0f32; 48]);
        permute(&mut o8, &q8, dims, perm);
        permute(&mut o16, &q16, dims, perm);
        permute(&mut g8, &f8, dims, perm);
        permute(&mut g16, &f16, dims, perm);
        assert_eq!(o8.map(f32::from), g8);
        assert_eq!(o16.map(f32::from), g16);
        assert_ne!(o8[..], q8[..], "the permutation moved nothing");
    }
}
