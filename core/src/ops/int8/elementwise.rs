//! Integer element-wise ops: sums, requantizing copies, lookup tables, the scale-shift time embedding and the
//! class embedding.

use super::{channel_affine, rq, shr_small, small_shift_fits, QElem, QMut, QRef, Src};
use crate::ops::Kernels;

/// Scale-shift time embedding: `out[c] = x[c]·(1 + v[c]) + v[C + c]` (`x` `(c, hw)`, `v` `(2c)`), with
/// the per-channel factors in f32 and the per-element work in fixed point.
#[allow(clippy::too_many_arguments)] // the operands and their three scales
pub fn qscale_shift(out: &mut QMut<'_>, x: Src<'_>, v: QRef<'_>, c: usize, hw: usize, sx: f32, sv: f32, so: f32) {
    let ymax = i64::from(out.max());
    for ch in 0..c {
        let a = sx * (1.0 + v.get(ch) as f32 * sv) / so;
        let b = v.get(c + ch) as f32 * sv / so;
        channel_affine(out, x, ch * hw..(ch + 1) * hw, a, b, ymax, None, false);
    }
}

/// Class embedding: `out = x + row`, `row` the f32 embedding of the class (a vector, once per forward pass,
/// so float arithmetic).
pub fn qclass_embed(out: &mut QMut<'_>, x: Src<'_>, row: &[f32], sx: f32, so: f32) {
    for (i, &r) in row.iter().enumerate() {
        let y = (x.get(out, i) as f32 * sx + r) / so;
        out.set(i, libm::roundf(y) as i64);
    }
}

/// `out = sat((a·ma + b·mb + 2^(shift−1)) >> shift)`; `b` is broadcast over each channel's `hw` pixels when
/// `b_per_channel`. With [`Kernels::Fast`] on an x86-64 host with AVX-512 or AVX2 the same loops compiled for it (the
/// same integers).
#[allow(clippy::too_many_arguments)] // two operands, their multipliers, the shift, the broadcast flag, the kernels
pub fn qadd(
    out: &mut QMut<'_>,
    a: Src<'_>,
    b: Src<'_>,
    ma: i32,
    mb: i32,
    shift: u32,
    hw: usize,
    b_per_channel: bool,
    kernels: Kernels,
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast && super::fast::qadd(out, a, b, ma, mb, shift, hw, b_per_channel).is_some() {
        return;
    }
    let _ = kernels;
    qadd_body(out, a, b, ma, mb, shift, hw, b_per_channel);
}

/// [`qadd`]'s work (inlined where it is compiled for a wider instruction set).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn qadd_body(
    out: &mut QMut<'_>,
    a: Src<'_>,
    b: Src<'_>,
    ma: i32,
    mb: i32,
    shift: u32,
    hw: usize,
    b_per_channel: bool,
) {
    let half = (1i64 << shift) >> 1;
    let f = move |av: i32, bv: i32| (i64::from(av) * i64::from(ma) + i64::from(bv) * i64::from(mb) + half) >> shift;
    let hw = if b_per_channel { hw.max(1) } else { out.len().max(1) };
    // The element types resolved once, not per element; with a shift of 32 or more the sum's low word is
    // dropped first (the same floor division, cheaper on 32-bit cores).
    let done = match (&mut *out, shift) {
        (QMut::I8(o), 32..=63) => typed_add(o, a, b, b_per_channel, hw, move |av, bv| {
            let p = i64::from(av) * i64::from(ma) + i64::from(bv) * i64::from(mb) + half;
            i64::from(((p >> 32) as i32) >> (shift - 32))
        }),
        (QMut::I16(o), 32..=63) => typed_add(o, a, b, b_per_channel, hw, move |av, bv| {
            let p = i64::from(av) * i64::from(ma) + i64::from(bv) * i64::from(mb) + half;
            i64::from(((p >> 32) as i32) >> (shift - 32))
        }),
        (QMut::I8(o), _) if small_shift_fits(&[ma, mb], shift) => {
            typed_add(o, a, b, b_per_channel, hw, move |av, bv| {
                shr_small(i64::from(av) * i64::from(ma) + i64::from(bv) * i64::from(mb) + half, shift)
            })
        }
        (QMut::I16(o), _) if small_shift_fits(&[ma, mb], shift) => {
            typed_add(o, a, b, b_per_channel, hw, move |av, bv| {
                shr_small(i64::from(av) * i64::from(ma) + i64::from(bv) * i64::from(mb) + half, shift)
            })
        }
        (QMut::I8(o), _) => typed_add(o, a, b, b_per_channel, hw, f),
        (QMut::I16(o), _) => typed_add(o, a, b, b_per_channel, hw, f),
    };
    if done {
        return;
    }
    for i in 0..out.len() {
        let bi = if b_per_channel { i / hw } else { i };
        let av = a.get(out, i);
        let bv = b.get(out, bi);
        out.set(i, f(av, bv));
    }
}

/// [`qadd`] with the output typed and `b` broadcast per chunk of `hw` elements when `per_channel`; `false`
/// (nothing written) when an operand is shorter than the output needs or a per-channel `b` is the output.
#[inline(always)]
fn typed_add<O: QElem>(
    o: &mut [O],
    a: Src<'_>,
    b: Src<'_>,
    per_channel: bool,
    hw: usize,
    f: impl Fn(i32, i32) -> i64 + Copy,
) -> bool {
    #[inline(always)]
    fn apart<O: QElem, A: QElem, B: QElem>(
        o: &mut [O],
        a: &[A],
        b: &[B],
        pc: bool,
        hw: usize,
        f: impl Fn(i32, i32) -> i64 + Copy,
    ) -> bool {
        if a.len() < o.len() || b.len() < if pc { o.len().div_ceil(hw) } else { o.len() } {
            return false;
        }
        if pc {
            for ((oc, ac), &bv) in o.chunks_mut(hw).zip(a.chunks(hw)).zip(b) {
                for (d, &av) in oc.iter_mut().zip(ac) {
                    *d = O::sat(f(av.get(), bv.get()));
                }
            }
        } else {
            for ((d, &av), &bv) in o.iter_mut().zip(a).zip(b) {
                *d = O::sat(f(av.get(), bv.get()));
            }
        }
        true
    }
    #[inline(always)]
    fn a_in_place<O: QElem, B: QElem>(o: &mut [O], b: &[B], pc: bool, hw: usize, f: impl Fn(i32, i32) -> i64) -> bool {
        if b.len() < if pc { o.len().div_ceil(hw) } else { o.len() } {
            return false;
        }
        if pc {
            for (oc, &bv) in o.chunks_mut(hw).zip(b) {
                for d in oc.iter_mut() {
                    *d = O::sat(f(d.get(), bv.get()));
                }
            }
        } else {
            for (d, &bv) in o.iter_mut().zip(b) {
                *d = O::sat(f(d.get(), bv.get()));
            }
        }
        true
    }
    #[inline(always)]
    fn b_in_place<O: QElem, A: QElem>(o: &mut [O], a: &[A], f: impl Fn(i32, i32) -> i64) -> bool {
        if a.len() < o.len() {
            return false;
        }
        for (d, &av) in o.iter_mut().zip(a) {
            *d = O::sat(f(av.get(), d.get()));
        }
        true
    }
    match (a, b, per_channel) {
        (Src::Other(QRef::I8(a)), Src::Other(QRef::I8(b)), pc) => apart(o, a, b, pc, hw, f),
        (Src::Other(QRef::I8(a)), Src::Other(QRef::I16(b)), pc) => apart(o, a, b, pc, hw, f),
        (Src::Other(QRef::I16(a)), Src::Other(QRef::I8(b)), pc) => apart(o, a, b, pc, hw, f),
        (Src::Other(QRef::I16(a)), Src::Other(QRef::I16(b)), pc) => apart(o, a, b, pc, hw, f),
        (Src::Out, Src::Other(QRef::I8(b)), pc) => a_in_place(o, b, pc, hw, f),
        (Src::Out, Src::Other(QRef::I16(b)), pc) => a_in_place(o, b, pc, hw, f),
        (Src::Other(QRef::I8(a)), Src::Out, false) => b_in_place(o, a, f),
        (Src::Other(QRef::I16(a)), Src::Out, false) => b_in_place(o, a, f),
        (Src::Out, Src::Out, false) => {
            for d in o.iter_mut() {
                *d = O::sat(f(d.get(), d.get()));
            }
            true
        }
        _ => false,
    }
}

/// `out[at + i] = sat(rq(x[i], m, s))`: a requantizing copy (one half of a concatenation). With
/// [`Kernels::Fast`] on an x86-64 host with AVX-512 or AVX2 the same loop compiled for it.
pub fn qcopy(out: &mut QMut<'_>, at: usize, x: QRef<'_>, m: i32, s: u32, kernels: Kernels) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast && super::fast::qcopy(out, at, x, m, s).is_some() {
        return;
    }
    let _ = kernels;
    qcopy_body(out, at, x, m, s);
}

/// [`qcopy`]'s work.
#[inline(always)]
pub(super) fn qcopy_body(out: &mut QMut<'_>, at: usize, x: QRef<'_>, m: i32, s: u32) {
    #[inline(always)]
    fn copy<O: QElem, X: QElem>(o: &mut [O], at: usize, x: &[X], m: i32, s: u32) -> bool {
        let Some(o) = o.get_mut(at..at + x.len()) else { return false };
        if (32..64).contains(&s) {
            // `rq` with the product's low word dropped first: the same floor division, in 32-bit halves.
            let round = (1i64 << s) >> 1;
            for (d, &v) in o.iter_mut().zip(x) {
                let p = i64::from(v.get()) * i64::from(m) + round;
                *d = O::sat(i64::from(((p >> 32) as i32) >> (s - 32)));
            }
        } else if small_shift_fits(&[m], s) {
            let round = (1i64 << s) >> 1;
            for (d, &v) in o.iter_mut().zip(x) {
                *d = O::sat(shr_small(i64::from(v.get()) * i64::from(m) + round, s));
            }
        } else {
            for (d, &v) in o.iter_mut().zip(x) {
                *d = O::sat(rq(i64::from(v.get()), m, s));
            }
        }
        true
    }
    // The element types resolved once, not per element.
    let done = match (&mut *out, x) {
        (QMut::I8(o), QRef::I8(x)) => copy(o, at, x, m, s),
        (QMut::I8(o), QRef::I16(x)) => copy(o, at, x, m, s),
        (QMut::I16(o), QRef::I8(x)) => copy(o, at, x, m, s),
        (QMut::I16(o), QRef::I16(x)) => copy(o, at, x, m, s),
    };
    if !done {
        for i in 0..x.len() {
            out.set(at + i, rq(i64::from(x.get(i)), m, s));
        }
    }
}

/// `out = table[x + 128]`, in place when `x` is `Src::Out` (i8 → i8).
pub fn qlut(out: &mut [i8], x: Option<&[i8]>, table: &[i8; 256]) {
    match x {
        Some(x) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = table[(i32::from(v) + 128) as u8 as usize];
            }
        }
        None => {
            for o in out.iter_mut() {
                *o = table[(i32::from(*o) + 128) as u8 as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    #[test]
    fn qadd_broadcasts_and_saturates() {
        for k in [Kernels::Exact, Kernels::Fast] {
            let a = [10i8, -20, 30, 127];
            let b = [100i16, -100];
            let mut out = [0i8; 4];
            // out = (a·2 + b·1) / 2 with b per channel (2 channels × 2 pixels).
            qadd(&mut QMut::I8(&mut out), Src::Other(QRef::I8(&a)), Src::Other(QRef::I16(&b)), 2, 1, 1, 2, true, k);
            assert_eq!(out, [60, 30, -20, 77]);
            let mut inplace = a;
            qadd(&mut QMut::I8(&mut inplace), Src::Out, Src::Out, 3, 0, 0, 1, false, k);
            assert_eq!(inplace, [30, -60, 90, 127]);
        }
    }

    /// The fast kernels give the portable integers: every shift branch, both element types, broadcast and not,
    /// in place and apart, lengths that leave partial vectors.
    #[test]
    fn kernel_modes_agree_on_adds_and_copies() {
        use crate::ops::int8::tests::ints;
        let n = 1000 + 37;
        let a8: Vec<i8> = ints(n, 127, 1).map(|v| v as i8).collect();
        let b16: Vec<i16> = ints(n, 30000, 2).map(|v| v as i16).collect();
        let b8: Vec<i8> = ints(n, 127, 3).map(|v| v as i8).collect();
        for (ma, mb, shift) in [(1 << 29, -(1 << 28), 36), (12_345, 23_456, 14), (i32::MAX, i32::MAX, 20)] {
            for pc in [false, true] {
                let run = |k| {
                    let (mut o8, mut o16, mut ip) = (vec![0i8; n], vec![0i16; n], a8.clone());
                    let b = if pc { QRef::I16(&b16[..n.div_ceil(7)]) } else { QRef::I16(&b16) };
                    qadd(&mut QMut::I8(&mut o8), Src::Other(QRef::I8(&a8)), Src::Other(b), ma, mb, shift, 7, pc, k);
                    qadd(
                        &mut QMut::I16(&mut o16),
                        Src::Other(QRef::I8(&a8)),
                        Src::Other(QRef::I8(&b8)),
                        ma,
                        mb,
                        shift,
                        7,
                        false,
                        k,
                    );
                    qadd(&mut QMut::I8(&mut ip), Src::Out, Src::Other(b), ma, mb, shift, 7, pc, k);
                    let mut c16 = vec![0i16; 2 * n];
                    qcopy(&mut QMut::I16(&mut c16), 3, QRef::I8(&a8), ma, shift, k);
                    qcopy(&mut QMut::I16(&mut c16), n + 3, QRef::I16(&b16[..n - 3]), mb, shift, k);
                    (o8, o16, ip, c16)
                };
                let exact = run(Kernels::Exact);
                assert!(exact.0.iter().any(|&v| v != 0) && exact.3.iter().any(|&v| v != 0));
                assert!(exact == run(Kernels::Fast), "ma {ma} mb {mb} shift {shift} per channel {pc}");
            }
        }
    }
}
