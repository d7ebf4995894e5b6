//! Reductions along one axis (ONNX `ReduceSum/Mean/Max/Min/L2/SumSquare` of a computed tensor).

use crate::par;

/// A reduction: its code is the `kind` operand of `Reduce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceFn {
    /// `Σ x`.
    Sum = 0,
    /// `Σ x / n`.
    Mean = 1,
    /// `max x`.
    Max = 2,
    /// `min x`.
    Min = 3,
    /// `sqrt(Σ x²)`.
    L2 = 4,
    /// `Σ x²`.
    SumSquare = 5,
}

impl ReduceFn {
    /// Every reduction, in code order.
    pub const ALL: [ReduceFn; 6] =
        [ReduceFn::Sum, ReduceFn::Mean, ReduceFn::Max, ReduceFn::Min, ReduceFn::L2, ReduceFn::SumSquare];

    /// The reduction of a code, if any.
    pub fn from_code(c: u32) -> Option<Self> {
        Self::ALL.get(c as usize).copied()
    }
}

/// `out[o, i] = f(x[o, 0, i], …, x[o, n − 1, i])` for `x` viewed as `[outer, n, inner]`, in index order.
// x (outer, n, inner) -> out (outer, inner)
pub fn reduce(out: &mut [f32], x: &[f32], outer: usize, n: usize, inner: usize, f: ReduceFn) {
    let len = outer.saturating_mul(inner);
    if len == 0 || n == 0 || out.len() < len || x.len() < len.saturating_mul(n) {
        return;
    }
    par::for_each_chunk(&mut out[..len], inner, |o, ob| {
        let xs = &x[o * n * inner..][..n * inner];
        for (i, v) in ob.iter_mut().enumerate() {
            let col = (0..n).map(|j| xs[j * inner + i]);
            *v = match f {
                ReduceFn::Sum => col.fold(0.0, |s, x| s + x),
                ReduceFn::Mean => col.fold(0.0, |s, x| s + x) / n as f32,
                ReduceFn::Max => col.fold(f32::NEG_INFINITY, f32::max),
                ReduceFn::Min => col.fold(f32::INFINITY, f32::min),
                ReduceFn::L2 => libm::sqrtf(col.fold(0.0, |s, x| s + x * x)),
                ReduceFn::SumSquare => col.fold(0.0, |s, x| s + x * x),
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_the_middle_axis() {
        // [2, 2, 2]
        let x = [3.0f32, 1.0, 4.0, -1.0, 0.0, 2.0, 0.0, 5.0];
        let mut out = [0.0f32; 4];
        reduce(&mut out, &x, 2, 2, 2, ReduceFn::L2);
        assert_eq!(out, [5.0, libm::sqrtf(2.0), 0.0, libm::sqrtf(29.0)]);
        reduce(&mut out, &x, 2, 2, 2, ReduceFn::Mean);
        assert_eq!(out, [3.5, 0.0, 0.0, 3.5]);
        reduce(&mut out, &x, 2, 2, 2, ReduceFn::Max);
        assert_eq!(out, [4.0, 1.0, 0.0, 5.0]);
        for (i, f) in ReduceFn::ALL.iter().enumerate() {
            assert_eq!(ReduceFn::from_code(i as u32), Some(*f));
        }
        assert_eq!(ReduceFn::from_code(6), None);
    }
}
