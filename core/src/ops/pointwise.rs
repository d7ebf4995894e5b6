//! Pointwise maps of imported graphs: unary functions and broadcasting binary arithmetic.
//!
//! Broadcasting works on a shape `[d0, d1, d2]` that the converter collapses an ONNX broadcast to: each operand
//! either spans a dimension or is broadcast along it (stride 0), as numpy and ONNX broadcast.

/// A unary function: its code is the `kind` operand of `Unary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryFn {
    /// `relu(x)`.
    Relu = 0,
    /// `x` if positive, else `a·x`.
    LeakyRelu = 1,
    /// `sigmoid(x)`.
    Sigmoid = 2,
    /// `tanh(x)`.
    Tanh = 3,
    /// `x·Φ(x)` with the exact (erf) normal CDF.
    Gelu = 4,
    /// The tanh approximation of GELU.
    GeluTanh = 5,
    /// `exp(x)`.
    Exp = 6,
    /// `log(x)`.
    Log = 7,
    /// `sqrt(x)`.
    Sqrt = 8,
    /// `abs(x)`.
    Abs = 9,
    /// `neg(x)`.
    Neg = 10,
    /// `sin(x)`.
    Sin = 11,
    /// `cos(x)`.
    Cos = 12,
    /// `erf(x)`.
    Erf = 13,
    /// `max(0, min(1, a·x + b))`.
    HardSigmoid = 14,
    /// `min(max(x, a), b)`.
    Clip = 15,
    /// `reciprocal(x)`.
    Reciprocal = 16,
    /// `ln(1 + eˣ)`.
    Softplus = 17,
}

impl UnaryFn {
    /// Every function, in code order.
    pub const ALL: [UnaryFn; 18] = [
        UnaryFn::Relu,
        UnaryFn::LeakyRelu,
        UnaryFn::Sigmoid,
        UnaryFn::Tanh,
        UnaryFn::Gelu,
        UnaryFn::GeluTanh,
        UnaryFn::Exp,
        UnaryFn::Log,
        UnaryFn::Sqrt,
        UnaryFn::Abs,
        UnaryFn::Neg,
        UnaryFn::Sin,
        UnaryFn::Cos,
        UnaryFn::Erf,
        UnaryFn::HardSigmoid,
        UnaryFn::Clip,
        UnaryFn::Reciprocal,
        UnaryFn::Softplus,
    ];

    /// The function of a code, if any.
    pub fn from_code(c: u32) -> Option<Self> {
        Self::ALL.get(c as usize).copied()
    }

    /// The function at one point, with parameters `a`, `b`.
    #[inline]
    pub fn apply(self, x: f32, a: f32, b: f32) -> f32 {
        match self {
            UnaryFn::Relu => x.max(0.0),
            UnaryFn::LeakyRelu => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            UnaryFn::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
            UnaryFn::Tanh => libm::tanhf(x),
            UnaryFn::Gelu => 0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2)),
            UnaryFn::GeluTanh => {
                let k = 0.797_884_6; // sqrt(2/pi)
                0.5 * x * (1.0 + libm::tanhf(k * (x + 0.044_715 * x * x * x)))
            }
            UnaryFn::Exp => libm::expf(x),
            UnaryFn::Log => libm::logf(x),
            UnaryFn::Sqrt => libm::sqrtf(x),
            UnaryFn::Abs => libm::fabsf(x),
            UnaryFn::Neg => -x,
            UnaryFn::Sin => libm::sinf(x),
            UnaryFn::Cos => libm::cosf(x),
            UnaryFn::Erf => libm::erff(x),
            UnaryFn::HardSigmoid => (a * x + b).clamp(0.0, 1.0),
            UnaryFn::Clip => x.max(a).min(b),
            UnaryFn::Reciprocal => 1.0 / x,
            UnaryFn::Softplus => {
                if x > 20.0 {
                    x
                } else {
                    libm::log1pf(libm::expf(x))
                }
            }
        }
    }
}

/// Applies `f` in place.
// x (n) -> x (n)
pub fn unary(x: &mut [f32], f: UnaryFn, a: f32, b: f32) {
    crate::par::for_each_chunk(x, 4096, |_, xs| xs.iter_mut().for_each(|v| *v = f.apply(*v, a, b)));
}

/// A binary arithmetic function: its code is the `kind` operand of `Binary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryFn {
    /// `add(a, b)`.
    Add = 0,
    /// `sub(a, b)`.
    Sub = 1,
    /// `mul(a, b)`.
    Mul = 2,
    /// `div(a, b)`.
    Div = 3,
    /// `pow(a, b)`.
    Pow = 4,
    /// `min(a, b)`.
    Min = 5,
    /// `max(a, b)`.
    Max = 6,
}

impl BinaryFn {
    /// Every function, in code order.
    pub const ALL: [BinaryFn; 7] =
        [BinaryFn::Add, BinaryFn::Sub, BinaryFn::Mul, BinaryFn::Div, BinaryFn::Pow, BinaryFn::Min, BinaryFn::Max];

    /// The function of a code, if any.
    pub fn from_code(c: u32) -> Option<Self> {
        Self::ALL.get(c as usize).copied()
    }

    #[inline]
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryFn::Add => a + b,
            BinaryFn::Sub => a - b,
            BinaryFn::Mul => a * b,
            BinaryFn::Div => a / b,
            BinaryFn::Pow => libm::powf(a, b),
            BinaryFn::Min => a.min(b),
            BinaryFn::Max => a.max(b),
        }
    }
}

/// Which of the three dimensions an operand spans (bit `i` set: broadcast along dimension `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broadcast(pub u32);

impl Broadcast {
    /// Elements the operand holds for the shape `dims`.
    pub fn numel(self, dims: [usize; 3]) -> usize {
        (0..3).map(|i| if self.0 & (1 << i) != 0 { 1 } else { dims[i] }).product()
    }

    /// Row-major strides of the operand over `dims` (0 where broadcast).
    fn strides(self, dims: [usize; 3]) -> [usize; 3] {
        let ext = |i: usize| if self.0 & (1 << i) != 0 { 1 } else { dims[i] };
        let s = |i: usize| if self.0 & (1 << i) != 0 { 0 } else { 1 };
        [s(0) * ext(1) * ext(2), s(1) * ext(2), s(2)]
    }
}

/// `out[i] = f(a[i], b[i])` over `dims`, each operand broadcast as its [`Broadcast`] says. `out` may be `a` or `b`
/// itself (in place) when that operand spans every dimension: `inplace` names which one, `out` then holds it.
// a (a.numel(dims)), b (b.numel(dims)) -> out (d0·d1·d2)
pub fn binary(out: &mut [f32], a: Operand<'_>, b: Operand<'_>, dims: [usize; 3], f: BinaryFn) {
    let [d0, d1, d2] = dims;
    let (sa, sb) = (a.bc.strides(dims), b.bc.strides(dims));
    for i0 in 0..d0 {
        for i1 in 0..d1 {
            let o = (i0 * d1 + i1) * d2;
            let (ra, rb) = (i0 * sa[0] + i1 * sa[1], i0 * sb[0] + i1 * sb[1]);
            let row = &mut out[o..o + d2];
            for (i2, v) in row.iter_mut().enumerate() {
                let x = a.data.map_or(*v, |d| d[ra + i2 * sa[2]]);
                let y = b.data.map_or(*v, |d| d[rb + i2 * sb[2]]);
                *v = f.apply(x, y);
            }
        }
    }
}

/// One operand of [`binary`]: its data (`None`: it is `out` itself, read before each element is written) and its
/// broadcast.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    /// The elements, or `None` for `out` itself.
    pub data: Option<&'a [f32]>,
    /// Which dimensions it spans.
    pub bc: Broadcast,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_and_scalar_broadcasts() {
        // a (2, 1, 3) plus b per dimension 0: b broadcast along dimensions 1 and 2.
        let dims = [2, 1, 3];
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0f32; 6];
        let full = Broadcast(0);
        binary(
            &mut out,
            Operand { data: Some(&a), bc: full },
            Operand { data: Some(&[10.0, 20.0]), bc: Broadcast(0b110) },
            dims,
            BinaryFn::Add,
        );
        assert_eq!(out, [11.0, 12.0, 13.0, 24.0, 25.0, 26.0]);
        // In place, b a scalar on the left-hand side order: out = out - 1.
        binary(
            &mut out,
            Operand { data: None, bc: full },
            Operand { data: Some(&[1.0]), bc: Broadcast(0b111) },
            dims,
            BinaryFn::Sub,
        );
        assert_eq!(out, [10.0, 11.0, 12.0, 23.0, 24.0, 25.0]);
        // b spans only the last dimension.
        let mut o2 = [0.0f32; 6];
        binary(
            &mut o2,
            Operand { data: Some(&a), bc: full },
            Operand { data: Some(&[1.0, 0.0, -1.0]), bc: Broadcast(0b011) },
            dims,
            BinaryFn::Mul,
        );
        assert_eq!(o2, [1.0, 0.0, -3.0, 4.0, 0.0, -6.0]);
        assert_eq!(Broadcast(0b011).numel(dims), 3);
    }

    #[test]
    fn unary_codes_round_trip() {
        for (i, f) in UnaryFn::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(UnaryFn::from_code(i as u32), Some(*f));
        }
        assert_eq!(UnaryFn::from_code(UnaryFn::ALL.len() as u32), None);
        for (i, f) in BinaryFn::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
        }
        assert!((UnaryFn::Gelu.apply(1.0, 0.0, 0.0) - 0.841_344_7).abs() < 1e-6);
        assert_eq!(UnaryFn::Clip.apply(5.0, -1.0, 1.0), 1.0);
    }
}
