//! Softmax along one axis (ONNX `Softmax`, opset 13 semantics).

use crate::par;

/// Softmax over the middle dimension of `x` viewed as `[outer, n, inner]`, in place: `exp(x − max) / Σ exp(x − max)`
/// with the max and the sum taken in index order.
// x (outer, n, inner) in place
pub fn softmax(x: &mut [f32], outer: usize, n: usize, inner: usize) {
    let len = outer.saturating_mul(n).saturating_mul(inner);
    if len == 0 || x.len() < len {
        return;
    }
    par::for_each_chunk(&mut x[..len], n * inner, |_, xs| {
        for i in 0..inner {
            let max = (0..n).map(|j| xs[j * inner + i]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for j in 0..n {
                let e = libm::expf(xs[j * inner + i] - max);
                xs[j * inner + i] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            for j in 0..n {
                xs[j * inner + i] *= inv;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_sum_to_one() {
        // [1, 3, 2]: softmax down each of the two columns.
        let mut x = [0.0f32, 10.0, 1.0, 10.0, 2.0, 10.0];
        softmax(&mut x, 1, 3, 2);
        let (e1, e2) = (libm::expf(-1.0), libm::expf(-2.0));
        let s = 1.0 + e1 + e2;
        assert!((x[4] - 1.0 / s).abs() < 1e-7 && (x[0] - e2 / s).abs() < 1e-7);
        assert!((x[1] - 1.0 / 3.0).abs() < 1e-7);
    }
}
