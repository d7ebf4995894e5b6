//! Integer kernels of int8 programs (the second op table in [`crate::program`]), one file per op beside the
//! float kernels of the same name: [`qconv2d`] (`conv2d.rs`), [`qgroup_norm`] (`group_norm.rs`), [`qsdpa`]
//! (`attention.rs`), the element-wise ops (`elementwise.rs`) and the conversions at the network's edges
//! (`quantize.rs`). This file holds what they share: the element types, the tensor views and the
//! requantization primitives.
//!
//! Everything per element is integer arithmetic: i8 × i8 (or i16 × i8) products summed in i32, rescaled by a
//! 31-bit multiplier and a shift in i64. Floats appear only where the work is per channel or per tensor, not per
//! element: the group-norm coefficients (one square root per group) and the conversions at the network's edges
//! (the f32 input and the f32 output the sampler works in).

mod attention;
mod conv2d;
mod elementwise;
mod group_norm;
mod quantize;

pub use attention::{qsdpa, QAttention};
pub use conv2d::qconv2d;
pub use elementwise::{qadd, qclass_embed, qcopy, qlut, qscale_shift};
pub use group_norm::{qgroup_norm, QNorm};
pub use quantize::{dequantize, quantize};

/// `(acc·m + 2^(s−1)) >> s`: rescales an accumulator by the fixed-point factor `m / 2^s`, rounding ties up.
/// Validation bounds `acc` and `m` so that the product fits; wrapping keeps a broken bound from panicking.
#[inline(always)]
pub fn rq(acc: i64, m: i32, s: u32) -> i64 {
    acc.wrapping_mul(i64::from(m)).wrapping_add((1i64 << s) >> 1) >> s
}

/// A quantized activation element (i8 or i16), symmetric range `±MAX`.
pub trait QElem: Copy + Send + Sync + 'static {
    /// Largest magnitude.
    const MAX: i32;
    /// Zero.
    const ZERO: Self;
    /// The element as i32.
    fn get(self) -> i32;
    /// `v` clamped to `±MAX`.
    fn sat(v: i64) -> Self;
}

impl QElem for i8 {
    const MAX: i32 = 127;
    const ZERO: Self = 0;
    #[inline(always)]
    fn get(self) -> i32 {
        i32::from(self)
    }
    #[inline(always)]
    fn sat(v: i64) -> Self {
        v.clamp(-127, 127) as i8
    }
}

impl QElem for i16 {
    const MAX: i32 = 32767;
    const ZERO: Self = 0;
    #[inline(always)]
    fn get(self) -> i32 {
        i32::from(self)
    }
    #[inline(always)]
    fn sat(v: i64) -> Self {
        v.clamp(-32767, 32767) as i16
    }
}

/// A read-only quantized tensor of either element type (for the cheap, element-wise ops).
#[derive(Clone, Copy)]
pub enum QRef<'a> {
    /// i8 elements.
    I8(&'a [i8]),
    /// i16 elements.
    I16(&'a [i16]),
}

impl QRef<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            QRef::I8(d) => d.len(),
            QRef::I16(d) => d.len(),
        }
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` (0 past the end).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i32 {
        match self {
            QRef::I8(d) => d.get(i).map_or(0, |&v| i32::from(v)),
            QRef::I16(d) => d.get(i).map_or(0, |&v| i32::from(v)),
        }
    }
}

/// A writable quantized tensor of either element type.
pub enum QMut<'a> {
    /// i8 elements.
    I8(&'a mut [i8]),
    /// i16 elements.
    I16(&'a mut [i16]),
}

impl QMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A read-only view.
    #[inline(always)]
    pub fn as_ref(&self) -> QRef<'_> {
        match self {
            QMut::I8(d) => QRef::I8(d),
            QMut::I16(d) => QRef::I16(d),
        }
    }
    /// Element `i` (0 past the end).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i32 {
        self.as_ref().get(i)
    }
    /// Stores `v`, saturated to the element type's symmetric range (ignored past the end).
    #[inline(always)]
    pub fn set(&mut self, i: usize, v: i64) {
        match self {
            QMut::I8(d) => {
                if let Some(e) = d.get_mut(i) {
                    *e = i8::sat(v);
                }
            }
            QMut::I16(d) => {
                if let Some(e) = d.get_mut(i) {
                    *e = i16::sat(v);
                }
            }
        }
    }
    /// The largest magnitude it can hold.
    pub fn max(&self) -> i32 {
        match self {
            QMut::I8(_) => i8::MAX.into(),
            QMut::I16(_) => i16::MAX.into(),
        }
    }
}

/// An operand of an element-wise op: another tensor, or the output itself (the op works in place).
#[derive(Clone, Copy)]
pub enum Src<'a> {
    /// A tensor disjoint from the output.
    Other(QRef<'a>),
    /// The output's own previous contents.
    Out,
}

impl Src<'_> {
    #[inline(always)]
    fn get(&self, out: &QMut<'_>, i: usize) -> i32 {
        match self {
            Src::Other(r) => r.get(i),
            Src::Out => out.get(i),
        }
    }
}

/// Fractional bits of the per-channel coefficients.
const NORM_FRAC: u32 = 24;
/// Coefficient magnitude limit: keeps `x·A + B` far inside i64 for any i16 `x`.
const NORM_LIMIT: i64 = 1 << 40;

/// `out[i] = lut(clamp((x[i]·A + B) >> 24))` over `range`, with `a`, `b` rounded to 24 fractional bits: the
/// per-element work of group norm and of the scale-shift time embedding, integer only.
fn channel_affine(
    out: &mut QMut<'_>,
    x: Src<'_>,
    range: core::ops::Range<usize>,
    a: f32,
    b: f32,
    ymax: i64,
    lut: Option<&[i8; 256]>,
) {
    let fix = |v: f32| (libm::roundf(v * (1u32 << NORM_FRAC) as f32) as i64).clamp(-NORM_LIMIT, NORM_LIMIT);
    let (a, b) = (fix(a), fix(b) + (1 << (NORM_FRAC - 1)));
    for i in range {
        let y = ((i64::from(x.get(out, i)) * a + b) >> NORM_FRAC).clamp(-ymax, ymax);
        let y = match lut {
            Some(t) => i64::from(t[(y + 128) as u8 as usize]),
            None => y,
        };
        out.set(i, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random integers in `-r..=r` (the fixtures of every int8 kernel's tests).
    pub(super) fn ints(n: usize, r: i32, seed: u32) -> impl Iterator<Item = i32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n).map(move |_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((s >> 8) % (2 * r as u32 + 1)) as i32 - r
        })
    }

    #[test]
    fn rq_rounds_ties_up() {
        assert_eq!(rq(5, 1 << 30, 31), 3); // 2.5 → 3
        assert_eq!(rq(-5, 1 << 30, 31), -2); // −2.5 → −2
        assert_eq!(rq(7, 1 << 30, 30), 7); // identity
        assert_eq!(rq(-7, 3 << 29, 30), -10); // −7 × 1.5 = −10.5 → −10
    }
}
