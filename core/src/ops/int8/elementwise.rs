//! Integer element-wise ops: sums, requantizing copies, lookup tables, the scale-shift time embedding and the
//! class embedding.

use super::{channel_affine, rq, QMut, QRef, Src};

/// Scale-shift time embedding: `out[c] = x[c]·(1 + v[c]) + v[C + c]` (`x` `(c, hw)`, `v` `(2c)`), with
/// the per-channel factors in f32 and the per-element work in fixed point.
#[allow(clippy::too_many_arguments)] // the operands and their three scales
pub fn qscale_shift(out: &mut QMut<'_>, x: Src<'_>, v: QRef<'_>, c: usize, hw: usize, sx: f32, sv: f32, so: f32) {
    let ymax = i64::from(out.max());
    for ch in 0..c {
        let a = sx * (1.0 + v.get(ch) as f32 * sv) / so;
        let b = v.get(c + ch) as f32 * sv / so;
        channel_affine(out, x, ch * hw..(ch + 1) * hw, a, b, ymax, None);
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
/// `b_per_channel`.
#[allow(clippy::too_many_arguments)] // two operands, their multipliers, the shift and the broadcast flag
pub fn qadd(out: &mut QMut<'_>, a: Src<'_>, b: Src<'_>, ma: i32, mb: i32, shift: u32, hw: usize, b_per_channel: bool) {
    let half = (1i64 << shift) >> 1;
    for i in 0..out.len() {
        let bi = if b_per_channel { i / hw.max(1) } else { i };
        let av = i64::from(a.get(out, i));
        let bv = i64::from(b.get(out, bi));
        out.set(i, (av * i64::from(ma) + bv * i64::from(mb) + half) >> shift);
    }
}

/// `out[at + i] = sat(rq(x[i], m, s))`: a requantizing copy (one half of a concatenation).
pub fn qcopy(out: &mut QMut<'_>, at: usize, x: QRef<'_>, m: i32, s: u32) {
    for i in 0..x.len() {
        out.set(at + i, rq(i64::from(x.get(i)), m, s));
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
    use super::*;

    #[test]
    fn qadd_broadcasts_and_saturates() {
        let a = [10i8, -20, 30, 127];
        let b = [100i16, -100];
        let mut out = [0i8; 4];
        // out = (a·2 + b·1) / 2 with b per channel (2 channels × 2 pixels).
        qadd(&mut QMut::I8(&mut out), Src::Other(QRef::I8(&a)), Src::Other(QRef::I16(&b)), 2, 1, 1, 2, true);
        assert_eq!(out, [60, 30, -20, 77]);
        let mut inplace = a;
        qadd(&mut QMut::I8(&mut inplace), Src::Out, Src::Out, 3, 0, 0, 1, false);
        assert_eq!(inplace, [30, -60, 90, 127]);
    }
}
