//! int8 ops: i8/i16 activations, i8 kernels, i32 accumulation, integer requantization.

use core::ops::Range;

use super::{carve, cast, cast_mut, Exec};
use crate::error::RunError;
use crate::format::DType;
use crate::model::{TensorView, ValueInfo};
use crate::ops::{self, QMut, QRef, Src};
use crate::program::{Op, NO_LUT};

fn qmut(b: &mut [u8], dtype: DType) -> Result<QMut<'_>, RunError> {
    match dtype {
        DType::I8 => Ok(QMut::I8(cast_mut(b)?)),
        DType::I16 => Ok(QMut::I16(cast_mut(b)?)),
        _ => Err(RunError::Inconsistent),
    }
}

/// The output of an op that may work in place, its input (`Src::Out` when output and input are the same value),
/// and one more read-only range of the arena (`extra`; `0..0` when unused).
fn out_and_input<'b>(
    a: &'b mut [u8],
    o: &ValueInfo,
    x: &ValueInfo,
    extra: Range<usize>,
) -> Result<(QMut<'b>, Src<'b>, &'b [u8]), RunError> {
    let bad = RunError::Inconsistent;
    if o.byte_range() == x.byte_range() {
        let [od, ed] = carve(a, [o.byte_range(), extra]).ok_or(bad)?;
        Ok((qmut(od, o.dtype)?, Src::Out, ed))
    } else {
        let [od, xd, ed] = carve(a, [o.byte_range(), x.byte_range(), extra]).ok_or(bad)?;
        Ok((qmut(od, o.dtype)?, Src::Other(qref(xd, x.dtype)?), ed))
    }
}

fn qref(b: &[u8], dtype: DType) -> Result<QRef<'_>, RunError> {
    match dtype {
        DType::I8 => Ok(QRef::I8(cast(b)?)),
        DType::I16 => Ok(QRef::I16(cast(b)?)),
        _ => Err(RunError::Inconsistent),
    }
}

impl Exec<'_, '_> {
    /// Runs one int8 op on the bytes of the arena.
    pub(super) fn run_quantized(&self, a: &mut [u8], op: &Op) -> Result<(), RunError> {
        let bad = RunError::Inconsistent;
        match *op {
            Op::Quantize { out, x } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let [od, xd] = carve(a, [o.byte_range(), xi.byte_range()]).ok_or(bad)?;
                ops::quantize(&mut qmut(od, o.dtype)?, cast(xd)?, o.scale);
            }
            Op::Dequantize { out, x } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let [od, xd] = carve(a, [o.byte_range(), xi.byte_range()]).ok_or(bad)?;
                ops::dequantize(cast_mut(od)?, qref(xd, xi.dtype)?, xi.scale);
            }
            Op::QConv2d { out, x, w, brq, stride, pad } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let info = self.m.tensor_info(w).ok_or(bad)?;
                let g = crate::model::conv_shape(&xi, &o, &info, stride, pad);
                let TensorView::I8(wd) = self.weights(w)? else { return Err(bad) };
                let bd = self.ints(brq)?;
                let [od, xd] = carve(a, [o.byte_range(), xi.byte_range()]).ok_or(bad)?;
                let k = self.m.kernels();
                #[cfg(feature = "std")]
                let slot = self.m.packed_slot(w);
                #[cfg(not(feature = "std"))]
                let slot = None;
                match (xi.dtype, o.dtype) {
                    (DType::I8, DType::I8) => {
                        ops::qconv2d_using::<i8, i8>(k, cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i8, slot)
                    }
                    (DType::I8, DType::I16) => {
                        ops::qconv2d_using::<i8, i16>(k, cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i8, slot)
                    }
                    (DType::I16, DType::I8) => {
                        ops::qconv2d_using::<i16, i8>(k, cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i16, slot)
                    }
                    (DType::I16, DType::I16) => {
                        ops::qconv2d_using::<i16, i16>(k, cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i16, slot)
                    }
                    _ => return Err(bad),
                }
            }
            Op::QLut { out, x, table } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let table = self.lut(table)?;
                if o.byte_range() == xi.byte_range() {
                    ops::qlut(cast_mut(a.get_mut(o.byte_range()).ok_or(bad)?)?, None, table);
                } else {
                    let [od, xd] = carve(a, [o.byte_range(), xi.byte_range()]).ok_or(bad)?;
                    ops::qlut(cast_mut(od)?, Some(cast(xd)?), table);
                }
            }
            Op::QGroupNorm { out, x, gamma, beta, groups, eps, lut, mid_scale } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let p = ops::QNorm {
                    c: o.c,
                    hw: o.h * o.w,
                    groups: groups as usize,
                    gamma: self.vector(gamma)?,
                    beta: self.vector(beta)?,
                    eps,
                    x_scale: xi.scale,
                    mid_scale,
                    lut: if lut == NO_LUT { None } else { Some(self.lut(lut)?) },
                    kernels: self.m.kernels(),
                };
                let (mut om, xs, _) = out_and_input(a, &o, &xi, 0..0)?;
                ops::qgroup_norm(&mut om, xs, &p);
            }
            Op::QAdd { out, a: lhs, b: rhs, ma, mb, shift } => {
                let (o, l, r) = (self.value(out)?, self.value(lhs)?, self.value(rhs)?);
                let (hw, per_channel) = (o.h * o.w, (l.h, l.w) != (r.h, r.w));
                let (ol, or, lr) = (
                    o.byte_range() == l.byte_range(),
                    o.byte_range() == r.byte_range(),
                    l.byte_range() == r.byte_range(),
                );
                let add = |od: &mut [u8], ls: Src<'_>, rs: Src<'_>| -> Result<(), RunError> {
                    ops::qadd(&mut qmut(od, o.dtype)?, ls, rs, ma, mb, shift, hw, per_channel, self.m.kernels());
                    Ok(())
                };
                match (ol, or) {
                    (true, true) => add(a.get_mut(o.byte_range()).ok_or(bad)?, Src::Out, Src::Out)?,
                    (true, false) => {
                        let [od, rd] = carve(a, [o.byte_range(), r.byte_range()]).ok_or(bad)?;
                        add(od, Src::Out, Src::Other(qref(rd, r.dtype)?))?
                    }
                    (false, true) => {
                        let [od, ld] = carve(a, [o.byte_range(), l.byte_range()]).ok_or(bad)?;
                        add(od, Src::Other(qref(ld, l.dtype)?), Src::Out)?
                    }
                    (false, false) if lr => {
                        let [od, ld] = carve(a, [o.byte_range(), l.byte_range()]).ok_or(bad)?;
                        let s = Src::Other(qref(ld, l.dtype)?);
                        add(od, s, s)?
                    }
                    (false, false) => {
                        let [od, ld, rd] = carve(a, [o.byte_range(), l.byte_range(), r.byte_range()]).ok_or(bad)?;
                        add(od, Src::Other(qref(ld, l.dtype)?), Src::Other(qref(rd, r.dtype)?))?
                    }
                }
            }
            Op::QSdpa { out, q, k, v, scratch, heads, exp, m_score, s_score, m_out, s_out } => {
                let vals = [out, q, k, v, scratch].map(|i| self.value(i));
                let [o, qi, ki, vi, si] = vals;
                let (o, qi, ki, vi, si) = (o?, qi?, ki?, vi?, si?);
                let [od, qd, kd, vd, sd] =
                    carve(a, [o.byte_range(), qi.byte_range(), ki.byte_range(), vi.byte_range(), si.byte_range()])
                        .ok_or(bad)?;
                let p = ops::QAttention {
                    c: o.c,
                    n: o.h * o.w,
                    heads: heads as usize,
                    exp: match self.weights(exp)? {
                        TensorView::I16(d) => d,
                        _ => return Err(bad),
                    },
                    m_score,
                    s_score,
                    m_out,
                    s_out,
                    kernels: self.m.kernels(),
                };
                ops::qsdpa(cast_mut(od)?, cast(qd)?, cast(kd)?, cast(vd)?, cast_mut(sd)?, &p);
            }
            Op::QConcat { out, a: first, b: second, ma, sa, mb, sb } => {
                let (o, f, s) = (self.value(out)?, self.value(first)?, self.value(second)?);
                let at = f.numel();
                if f.byte_range() == s.byte_range() {
                    let [od, fd] = carve(a, [o.byte_range(), f.byte_range()]).ok_or(bad)?;
                    let mut om = qmut(od, o.dtype)?;
                    ops::qcopy(&mut om, 0, qref(fd, f.dtype)?, ma, sa, self.m.kernels());
                    ops::qcopy(&mut om, at, qref(fd, f.dtype)?, mb, sb, self.m.kernels());
                } else {
                    let [od, fd, sd] = carve(a, [o.byte_range(), f.byte_range(), s.byte_range()]).ok_or(bad)?;
                    let mut om = qmut(od, o.dtype)?;
                    ops::qcopy(&mut om, 0, qref(fd, f.dtype)?, ma, sa, self.m.kernels());
                    ops::qcopy(&mut om, at, qref(sd, s.dtype)?, mb, sb, self.m.kernels());
                }
            }
            Op::QScaleShift { out, x, v } => {
                let (o, xi, vi) = (self.value(out)?, self.value(x)?, self.value(v)?);
                let (c, hw) = (o.c, o.h * o.w);
                let (mut om, xs, vd) = out_and_input(a, &o, &xi, vi.byte_range())?;
                ops::qscale_shift(&mut om, xs, qref(vd, vi.dtype)?, c, hw, xi.scale, vi.scale, o.scale);
            }
            Op::QClassEmbed { out, x, table } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let class = self.class.ok_or(RunError::ClassRequired)? as usize;
                let row = self.vector(table)?.get(class * o.c..(class + 1) * o.c).ok_or(bad)?;
                let (mut om, xs, _) = out_and_input(a, &o, &xi, 0..0)?;
                ops::qclass_embed(&mut om, xs, row, xi.scale, o.scale);
            }
            _ => return Err(bad),
        }
        Ok(())
    }
}
