//! Integer kernels of int8 programs (the second op table in [`crate::program`]), one file per op beside the
//! float kernels of the same name: [`qconv2d`] (`conv2d.rs`), [`qgroup_norm`] (`group_norm.rs`), [`qsdpa`]
//! (`attention.rs`), average pooling [`qpool2d_average`] (`pool.rs`), the element-wise ops (`elementwise.rs`) and
//! the conversions at the network's edges (`quantize.rs`). This file holds what they share: the element types,
//! the tensor views and the requantization primitives.
//!
//! Everything per element is integer arithmetic: i8 × i8 (or i16 × i8) products summed in i32, rescaled by a
//! 31-bit multiplier and a shift in i64. Floats appear only where the work is per channel or per tensor, not per
//! element: the group-norm coefficients (one square root per group) and the conversions at the network's edges
//! (the f32 input and the f32 output the sampler works in).

mod attention;
mod conv2d;
#[cfg(any(test, all(target_arch = "arm", ddpm_dsp)))]
mod conv2d_dsp;
#[cfg(any(test, all(target_arch = "arm", ddpm_dsp)))]
#[allow(unsafe_code)]
mod dsp;
mod elementwise;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod fast;
mod group_norm;
mod pool;
mod quantize;

pub use attention::{qsdpa, QAttention};
pub use conv2d::{qconv2d, qconv2d_using};
pub use elementwise::{qadd, qclass_embed, qcopy, qlut, qscale_shift};
pub use group_norm::{qgroup_norm, QNorm};
pub use pool::qpool2d_average;
pub use quantize::{dequantize, quantize};

/// Weights packed for a host kernel once per model ([`crate::Prepacked`]): the tile's rows and packing they were
/// made for, and every block's words and biases.
#[cfg(feature = "std")]
pub struct PackedWeights {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) mr: usize,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) lanes: usize,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) words: std::vec::Vec<u32>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) biases: std::vec::Vec<i32>,
}

/// Where a host kernel keeps a tensor's packed weights ([`crate::Prepacked`]); nothing without `std`.
#[cfg(feature = "std")]
pub type PackSlot<'a> = Option<&'a std::sync::OnceLock<Option<PackedWeights>>>;
/// Where a host kernel keeps a tensor's packed weights; nothing without `std`.
#[cfg(not(feature = "std"))]
pub type PackSlot<'a> = Option<&'a core::convert::Infallible>;

/// `(acc·m + 2^(s−1)) >> s`: rescales an accumulator by the fixed-point factor `m / 2^s`, rounding ties up.
/// Validation bounds `acc` and `m` so that the product fits; wrapping keeps a broken bound from panicking.
#[inline(always)]
pub fn rq(acc: i64, m: i32, s: u32) -> i64 {
    acc.wrapping_mul(i64::from(m)).wrapping_add((1i64 << s) >> 1) >> s
}

/// [`rq`], computed in 32-bit halves when `acc` fits in i32 and `32 ≤ s < 64` (then dropping the product's low
/// word before shifting by `s − 32` is the same floor division): 64-bit shifts by a variable amount take about
/// ten instructions on 32-bit cores, this one.
#[inline(always)]
pub fn rq_fast(acc: i64, m: i32, s: u32) -> i64 {
    match i32::try_from(acc) {
        Ok(a) if (32..64).contains(&s) => {
            let p = i64::from(a).wrapping_mul(i64::from(m)).wrapping_add((1i64 << s) >> 1);
            i64::from(((p >> 32) as i32) >> (s - 32))
        }
        _ => rq(acc, m, s),
    }
}

/// `p >> s` for a shift below 32 when the result is known to fit in i32 (`|p| < 2^(31 + s)`): the low word of a
/// logical shift, which is the same bits and three instructions on 32-bit cores instead of a 64-bit shift.
#[inline(always)]
pub(crate) fn shr_small(p: i64, s: u32) -> i64 {
    i64::from(((p as u64) >> (s & 31)) as u32 as i32)
}

/// Whether `|Σ 32768·|m_i|| + 2^(s−1)`, a bound on `|Σ x_i·m_i + 2^(s−1)|` for i8/i16 `x_i`, lets [`shr_small`]
/// compute `>> s` (a shift below 32 and a result inside i32).
#[inline(always)]
pub(crate) fn small_shift_fits(ms: &[i32], s: u32) -> bool {
    let bound: u64 = ms.iter().map(|m| 32768 * u64::from(m.unsigned_abs())).sum::<u64>() + ((1u64 << s) >> 1);
    s < 32 && bound < 1u64 << (31 + s)
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
    /// Four consecutive taps widened to two words of i16 pairs, (tap 0, tap 2) and (tap 1, tap 3): the order in
    /// which `sxtb16` widens a word of four i8 weights (the packed convolution kernel's operands).
    fn pairs(t: [Self; 4]) -> [u32; 2];
    /// The slice as i8, if that is the element type.
    fn as_i8(s: &[Self]) -> Option<&[i8]>;
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
    #[inline(always)]
    fn pairs(t: [Self; 4]) -> [u32; 2] {
        let v = u32::from_le_bytes(t.map(|b| b as u8));
        [dsp_pair(v, false), dsp_pair(v, true)]
    }
    fn as_i8(s: &[Self]) -> Option<&[i8]> {
        Some(s)
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
    #[inline(always)]
    fn pairs(t: [Self; 4]) -> [u32; 2] {
        let h = |v: i16| u32::from(v as u16);
        [h(t[0]) | h(t[2]) << 16, h(t[1]) | h(t[3]) << 16]
    }
    fn as_i8(_: &[Self]) -> Option<&[i8]> {
        None
    }
}

/// `sxtb16` of `v` (bytes 0 and 2), or of `v` rotated by 8 (bytes 1 and 3): the instruction where the packed
/// kernel runs, portable arithmetic elsewhere.
#[inline(always)]
fn dsp_pair(v: u32, odd: bool) -> u32 {
    #[cfg(any(test, all(target_arch = "arm", ddpm_dsp)))]
    {
        if odd {
            dsp::sxtb16_ror8(v)
        } else {
            dsp::sxtb16(v)
        }
    }
    #[cfg(not(any(test, all(target_arch = "arm", ddpm_dsp))))]
    {
        let v = if odd { v >> 8 } else { v };
        u32::from(i16::from(v as u8 as i8) as u16) | u32::from(i16::from((v >> 16) as u8 as i8) as u16) << 16
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
#[allow(clippy::too_many_arguments)] // the range, the map's coefficients and bound, its table, the kernels
fn channel_affine(
    out: &mut QMut<'_>,
    x: Src<'_>,
    range: core::ops::Range<usize>,
    a: f32,
    b: f32,
    ymax: i64,
    lut: Option<&[i8; 256]>,
    fast_kernels: bool,
) {
    let fix = |v: f32| (libm::roundf(v * (1u32 << NORM_FRAC) as f32) as i64).clamp(-NORM_LIMIT, NORM_LIMIT);
    let (a, b) = (fix(a), fix(b) + (1 << (NORM_FRAC - 1)));
    let look = move |y: i64| match lut {
        Some(t) => i64::from(t[(y + 128) as u8 as usize]),
        None => y,
    };
    let f = move |v: i32| look(((i64::from(v) * a + b) >> NORM_FRAC).clamp(-ymax, ymax));
    // For i8 inputs the same floor in 32 bits: with a = ah·2^24 + al and b = bh·2^24 + bl (al, bl in
    // [0, 2^24)), ⌊(v·a + b)/2^24⌋ = v·ah + bh + ⌊(v·al + bl)/2^24⌋, and |v·al + bl| < 2^31 for |v| ≤ 128;
    // |v·ah + bh| < 2^24 since |a|, |b| ≤ 2^40 + 2^23 (NORM_LIMIT).
    let (ah, al, bh, bl) =
        ((a >> NORM_FRAC) as i32, (a & 0xff_ffff) as i32, (b >> NORM_FRAC) as i32, (b & 0xff_ffff) as i32);
    let ymax32 = ymax.clamp(0, i64::from(i32::MAX)) as i32;
    let f8 = move |v: i32| {
        let y = v * ah + bh + ((v * al + bl) >> NORM_FRAC);
        look(i64::from(y.clamp(-ymax32, ymax32)))
    };
    // The vector kernel takes what it can of an i8 input (a whole number of its blocks); the loops below do the
    // rest, so both give the same integers.
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    let range = {
        let c = fast::Affine8 { ah, al, bh, bl, ymax: ymax32 };
        let r = range.clone();
        let done = match (&mut *out, x) {
            _ if !fast_kernels => 0,
            (QMut::I8(o), Src::Out) => o.get_mut(r).map_or(0, |o| fast::affine_i8(&mut QMut::I8(o), None, &c, lut)),
            (QMut::I8(o), Src::Other(QRef::I8(xs))) => match (o.get_mut(r.clone()), xs.get(r)) {
                (Some(o), Some(xs)) => fast::affine_i8(&mut QMut::I8(o), Some(xs), &c, lut),
                _ => 0,
            },
            (QMut::I16(o), Src::Other(QRef::I8(xs))) => match (o.get_mut(r.clone()), xs.get(r)) {
                (Some(o), Some(xs)) => fast::affine_i8(&mut QMut::I16(o), Some(xs), &c, lut),
                _ => 0,
            },
            _ => 0,
        };
        range.start + done..range.end
    };
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    let _ = fast_kernels;
    // The element types resolved once, not per element (the loops then compile to a few instructions each).
    let done = match (&mut *out, x) {
        (QMut::I8(o), x) => typed_map(o, x, range.clone(), f, f8),
        (QMut::I16(o), x) => typed_map(o, x, range.clone(), f, f8),
    };
    if !done {
        for i in range {
            out.set(i, f(x.get(out, i)));
        }
    }
}

/// `o[i] = sat(f(x[i]))` over `range` with `x` an operand of `o`'s length or `o` itself (`f8`, equal to `f` on
/// `-128..=127`, for i8 elements); `false` (nothing written) when `range` is not inside both.
#[inline(always)]
fn typed_map<O: QElem>(
    o: &mut [O],
    x: Src<'_>,
    range: core::ops::Range<usize>,
    f: impl Fn(i32) -> i64 + Copy,
    f8: impl Fn(i32) -> i64 + Copy,
) -> bool {
    fn apart<O: QElem, X: QElem>(o: &mut [O], x: &[X], f: impl Fn(i32) -> i64) {
        for (d, &v) in o.iter_mut().zip(x) {
            *d = O::sat(f(v.get()));
        }
    }
    let Some(o) = o.get_mut(range.clone()) else { return false };
    match x {
        Src::Out if O::MAX == i8::MAX.into() => o.iter_mut().for_each(|d| *d = O::sat(f8(d.get()))),
        Src::Out => o.iter_mut().for_each(|d| *d = O::sat(f(d.get()))),
        Src::Other(QRef::I8(x)) => match x.get(range) {
            Some(x) => apart(o, x, f8),
            None => return false,
        },
        Src::Other(QRef::I16(x)) => match x.get(range) {
            Some(x) => apart(o, x, f),
            None => return false,
        },
    }
    true
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
    fn rq_fast_is_rq() {
        for (i, acc) in ints(4000, 1 << 30, 9).enumerate() {
            let acc = i64::from(acc) << ((i % 3) * 7); // some past i32
            for (m, s) in [(1 << 30, 31), (1 << 30, 32), (12345, 33), (i32::MAX, 40), (1 << 20, 62), (7, 63), (3, 0)] {
                assert_eq!(rq_fast(acc, m, s), rq(acc, m, s), "{acc} {m} {s}");
            }
        }
        assert_eq!(rq_fast(i64::from(i32::MIN), i32::MIN, 63), rq(i64::from(i32::MIN), i32::MIN, 63));
    }

    #[test]
    fn channel_affine_on_i8_is_the_64_bit_formula() {
        let x: [i8; 256] = core::array::from_fn(|i| (i as i32 - 128) as i8);
        // One entry outside the symmetric i8 range, which the result clamps.
        let lut: [i8; 256] =
            core::array::from_fn(|i| if i % 50 == 3 { -128 } else { ((i as i32 * 7) % 255 - 127) as i8 });
        // Both kernel modes (the vector kernel where this CPU has one), and a range that leaves a partial block;
        // bounds past 127 with a table (its index wraps).
        for (a, b) in [(0.37f32, -3.2f32), (-1.9e3, 4.4e4), (6.0e4, -6.0e4), (1e-7, 0.49), (-0.0, -0.5), (7.7e4, 1e9)] {
            let modes = [(127, None), (127, Some(&lut)), (32767, None), (32767, Some(&lut)), (300, Some(&lut))];
            let modes = modes.into_iter().flat_map(|m| [(m, false), (m, true)]);
            for ((ymax, t), fast) in modes {
                let mut o8 = [0i8; 256];
                let mut o16 = [0i16; 256];
                channel_affine(&mut QMut::I8(&mut o8), Src::Other(QRef::I8(&x)), 0..256, a, b, ymax, t, fast);
                channel_affine(&mut QMut::I16(&mut o16), Src::Other(QRef::I8(&x)), 0..256, a, b, ymax, t, fast);
                let fix = |v: f32| (libm::roundf(v * (1u32 << NORM_FRAC) as f32) as i64).clamp(-NORM_LIMIT, NORM_LIMIT);
                let (fa, fb) = (fix(a), fix(b) + (1 << (NORM_FRAC - 1)));
                for (i, &v) in x.iter().enumerate() {
                    let y = ((i64::from(v) * fa + fb) >> NORM_FRAC).clamp(-ymax, ymax);
                    let y = t.map_or(y, |t| i64::from(t[(y + 128) as u8 as usize]));
                    assert_eq!(i64::from(o8[i]), y.clamp(-127, 127), "{a} {b} {v}");
                    assert_eq!(i64::from(o16[i]), y.clamp(-32767, 32767), "{a} {b} {v}");
                }
                let mut inplace = x;
                channel_affine(&mut QMut::I8(&mut inplace), Src::Out, 0..256, a, b, ymax, t, fast);
                assert_eq!(inplace, o8);
                let (mut p8, mut f8) = ([0i8; 256], [0i8; 256]);
                channel_affine(&mut QMut::I8(&mut p8), Src::Other(QRef::I8(&x)), 5..250, a, b, ymax, t, false);
                channel_affine(&mut QMut::I8(&mut f8), Src::Other(QRef::I8(&x)), 5..250, a, b, ymax, t, true);
                assert_eq!(p8, f8, "{a} {b} {ymax} {} {fast}", t.is_some());
            }
        }
    }

    #[test]
    fn shr_small_is_the_shift_within_its_bound() {
        for (i, v) in ints(3000, 32767, 11).enumerate() {
            for (m, s) in [(1 << 30, 31), (123_456_789, 20), (-(1 << 20), 5), (i32::MAX, 31)] {
                let p = i64::from(v) * i64::from(m) + ((1i64 << s) >> 1) - (i as i64 % 5);
                if small_shift_fits(&[m], s) {
                    assert_eq!(shr_small(p, s), p >> s, "{p} {s}");
                }
            }
        }
        assert!(small_shift_fits(&[1 << 30, 1 << 30], 30) && !small_shift_fits(&[1 << 30], 14));
        assert!(!small_shift_fits(&[1], 32));
    }

    #[test]
    fn rq_rounds_ties_up() {
        assert_eq!(rq(5, 1 << 30, 31), 3); // 2.5 → 3
        assert_eq!(rq(-5, 1 << 30, 31), -2); // −2.5 → −2
        assert_eq!(rq(7, 1 << 30, 30), 7); // identity
        assert_eq!(rq(-7, 3 << 29, 30), -10); // −7 × 1.5 = −10.5 → −10
    }
}
