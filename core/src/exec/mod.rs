//! The executor: runs a validated program for one sample in the caller's arena.

use core::ops::Range;

use crate::error::RunError;
use crate::format::{DType, ALIGN};
use crate::model::{Model, TensorView, ValueInfo};
use crate::ops::{self, QMut, QRef, Src};
use crate::program::{Op, NO_LUT};

/// Calls `$body` with `$w` bound to the weight slice of `$view`, whatever its element type.
macro_rules! with_weights {
    ($view:expr, $w:ident => $body:expr) => {
        match $view {
            TensorView::F32($w) => $body,
            TensorView::F16($w) => $body,
            _ => return Err(RunError::Inconsistent),
        }
    };
}

/// Disjoint mutable pieces of `a` at `ranges` (in the given order); `None` if two overlap or one lies outside.
fn carve<const N: usize>(mut a: &mut [u8], ranges: [Range<usize>; N]) -> Option<[&mut [u8]; N]> {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    // Empty ranges sort before a range starting at the same place.
    order.sort_unstable_by_key(|&i| (ranges[i].start, ranges[i].end));
    let mut pieces: [Option<&mut [u8]>; N] = core::array::from_fn(|_| None);
    let mut base = 0;
    for i in order {
        let r = &ranges[i];
        let skip = r.start.checked_sub(base)?;
        let len = r.end.checked_sub(r.start)?;
        if skip.checked_add(len)? > a.len() {
            return None;
        }
        let (_, rest) = core::mem::take(&mut a).split_at_mut(skip);
        let (piece, rest) = rest.split_at_mut(len);
        pieces[i] = Some(piece);
        a = rest;
        base = r.end;
    }
    Some(pieces.map(Option::unwrap_or_default))
}

fn cast_mut<T: bytemuck::Pod>(b: &mut [u8]) -> Result<&mut [T], RunError> {
    bytemuck::try_cast_slice_mut(b).map_err(|_| RunError::Inconsistent)
}

fn cast<T: bytemuck::Pod>(b: &[u8]) -> Result<&[T], RunError> {
    bytemuck::try_cast_slice(b).map_err(|_| RunError::Inconsistent)
}

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

/// A mutable range and a disjoint shared range of the same arena.
fn split_pair(a: &mut [f32], w: Range<usize>, r: Range<usize>) -> Option<(&mut [f32], &[f32])> {
    if w.end <= r.start && r.start <= a.len() {
        let (lo, hi) = a.split_at_mut(r.start);
        Some((lo.get_mut(w)?, hi.get(..r.len())?))
    } else if r.end <= w.start && w.start <= a.len() {
        let (lo, hi) = a.split_at_mut(w.start);
        Some((hi.get_mut(..w.len())?, lo.get(r)?))
    } else {
        None
    }
}

/// The f32-aligned, exactly sized working part of the caller's arena.
fn arena_f32(arena: &mut [u8], need: usize) -> Result<&mut [f32], RunError> {
    let skip = arena.as_ptr().align_offset(ALIGN).min(arena.len());
    let have = arena.len() - skip;
    let too_small = RunError::ArenaTooSmall { need, have };
    let bytes = arena.get_mut(skip..skip.checked_add(need).ok_or(too_small)?).ok_or(too_small)?;
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| too_small)
}

struct Exec<'m, 'a> {
    m: &'m Model<'a>,
    t: f32,
    class: Option<u32>,
}

impl<'a> Exec<'_, 'a> {
    fn value(&self, i: u32) -> Result<ValueInfo, RunError> {
        self.m.value(i).ok_or(RunError::Inconsistent)
    }
    fn weights(&self, i: u32) -> Result<TensorView<'a>, RunError> {
        self.m.tensor(i).ok_or(RunError::Inconsistent)
    }
    fn vector(&self, i: u32) -> Result<&'a [f32], RunError> {
        match self.weights(i)? {
            TensorView::F32(d) => Ok(d),
            _ => Err(RunError::Inconsistent),
        }
    }
    fn ints(&self, i: u32) -> Result<&'a [i32], RunError> {
        match self.weights(i)? {
            TensorView::I32(d) => Ok(d),
            _ => Err(RunError::Inconsistent),
        }
    }
    fn lut(&self, i: u32) -> Result<&'a [i8; 256], RunError> {
        match self.weights(i)? {
            TensorView::I8(d) => d.try_into().map_err(|_| RunError::Inconsistent),
            _ => Err(RunError::Inconsistent),
        }
    }

    /// `dst = src` for two values of the same size (a no-op when they are the same value).
    fn copy(a: &mut [f32], dst: &ValueInfo, src: &ValueInfo) -> Result<(), RunError> {
        if dst.range() == src.range() {
            return Ok(());
        }
        let (d, s) = split_pair(a, dst.range(), src.range()).ok_or(RunError::Inconsistent)?;
        d.copy_from_slice(s);
        Ok(())
    }

    fn run(&self, a: &mut [f32], op: &Op) -> Result<(), RunError> {
        let bad = RunError::Inconsistent;
        match *op {
            Op::TimestepEmbed { out, flip_sin_to_cos, freq_shift, max_period } => {
                let o = a.get_mut(self.value(out)?.range()).ok_or(bad)?;
                ops::timestep_embedding(o, self.t, flip_sin_to_cos, freq_shift, max_period);
            }
            Op::Linear { out, x, w, b } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let (wv, bv) = (self.weights(w)?, self.vector(b)?);
                let (od, xd) = split_pair(a, o.range(), xi.range()).ok_or(bad)?;
                with_weights!(wv, w => ops::linear_rows(od, xd, w, bv, xi.c, o.c));
            }
            Op::Silu { out, x } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                ops::silu(a.get_mut(o.range()).ok_or(bad)?);
            }
            Op::ClassEmbed { out, table } => {
                let o = self.value(out)?;
                let class = self.class.ok_or(RunError::ClassRequired)? as usize;
                let tv = self.weights(table)?;
                let od = a.get_mut(o.range()).ok_or(bad)?;
                for (k, v) in od.iter_mut().enumerate() {
                    *v += tv.get_f32(class * o.c + k);
                }
            }
            Op::Conv2d { out, x, w, b, stride, pad, scratch } => {
                let (o, xi, si) = (self.value(out)?, self.value(x)?, self.value(scratch)?);
                let info = self.m.tensor_info(w).ok_or(bad)?;
                let g = crate::model::conv_shape(&xi, &o, &info, stride, pad);
                let (wv, bv) = (self.weights(w)?, self.vector(b)?);
                let (sd, xd) = split_pair(a, si.range(), xi.range()).ok_or(bad)?;
                ops::conv2d_pad(sd, xd, &g);
                let (od, sd) = split_pair(a, o.range(), si.range()).ok_or(bad)?;
                with_weights!(wv, w => ops::conv2d(od, sd, w, bv, &g));
            }
            Op::GroupNorm { out, x, gamma, beta, groups, eps, silu } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                let (g, bt) = (self.vector(gamma)?, self.vector(beta)?);
                let od = a.get_mut(o.range()).ok_or(bad)?;
                ops::group_norm(od, o.c, o.h * o.w, groups as usize, g, bt, eps, silu);
            }
            Op::AddChannel { x, v } | Op::ScaleShift { x, v } => {
                let (xi, vi) = (self.value(x)?, self.value(v)?);
                let (xd, vd) = split_pair(a, xi.range(), vi.range()).ok_or(bad)?;
                if matches!(op, Op::AddChannel { .. }) {
                    ops::add_channel(xd, vd, xi.h * xi.w);
                } else {
                    ops::scale_shift(xd, vd, xi.c, xi.h * xi.w);
                }
            }
            Op::Add { out, a: lhs, b: rhs, scale } => {
                let (o, l, r) = (self.value(out)?, self.value(lhs)?, self.value(rhs)?);
                if l.range() == r.range() {
                    Self::copy(a, &o, &l)?;
                    ops::scale_assign(a.get_mut(o.range()).ok_or(bad)?, scale);
                } else {
                    // Addition commutes bit for bit, so whichever operand `out` is becomes the accumulator.
                    let (acc, other) = if o.range() == r.range() { (r, l) } else { (l, r) };
                    Self::copy(a, &o, &acc)?;
                    let (od, bd) = split_pair(a, o.range(), other.range()).ok_or(bad)?;
                    ops::add_assign_scaled(od, bd, scale);
                }
            }
            Op::Attention { out, x, xn, scratch, w, heads, scale } => {
                let (o, xi, ni, si) = (self.value(out)?, self.value(x)?, self.value(xn)?, self.value(scratch)?);
                let (c, hw) = (o.c, o.h * o.w);
                let n = c * hw;
                {
                    let (sd, nd) = split_pair(a, si.range(), ni.range()).ok_or(bad)?;
                    let sd = sd.get_mut(..4 * n).ok_or(bad)?;
                    ops::attention_project(&mut sd[..n], nd, c, hw);
                    for (part, pair) in w[..6].chunks_exact(2).enumerate() {
                        let (wv, bv) = (self.weights(pair[0])?, self.vector(pair[1])?);
                        let (t, rest) = sd.split_at_mut(n);
                        let dst = &mut rest[part * n..][..n];
                        with_weights!(wv, w => ops::linear_rows(dst, t, w, bv, c, c));
                    }
                    ops::attention_core(sd, c, hw, heads as usize);
                }
                Self::copy(a, &o, &xi)?;
                let (wv, bv) = (self.weights(w[6])?, self.vector(w[7])?);
                let (od, sd) = split_pair(a, o.range(), si.range()).ok_or(bad)?;
                with_weights!(wv, w => ops::attention_output(od, sd, c, hw, w, bv, scale));
            }
            Op::Upsample2x { out, x } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(a);
                let [od, xd] = carve(bytes, [o.byte_range(), xi.byte_range()]).ok_or(bad)?;
                let (c, h, w) = (xi.c, xi.h, xi.w);
                match xi.dtype {
                    DType::F32 => ops::upsample2x_nearest::<f32>(cast_mut(od)?, cast(xd)?, c, h, w),
                    DType::I8 => ops::upsample2x_nearest::<i8>(cast_mut(od)?, cast(xd)?, c, h, w),
                    DType::I16 => ops::upsample2x_nearest::<i16>(cast_mut(od)?, cast(xd)?, c, h, w),
                    _ => return Err(bad),
                }
            }
            Op::Concat { out, a: first, b: second } => {
                let (o, f, s) = (self.value(out)?, self.value(first)?, self.value(second)?);
                let split = o.range().start + f.numel();
                let (od, fd) = split_pair(a, o.range().start..split, f.range()).ok_or(bad)?;
                od.copy_from_slice(fd);
                let (od, sd) = split_pair(a, split..o.range().end, s.range()).ok_or(bad)?;
                od.copy_from_slice(sd);
            }
            Op::Affine { out, x, mul, add } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                ops::affine(a.get_mut(o.range()).ok_or(bad)?, mul, add);
            }
            _ => self.run_quantized(bytemuck::cast_slice_mut(a), op)?,
        }
        Ok(())
    }

    /// The int8 ops, over the arena's bytes.
    fn run_quantized(&self, a: &mut [u8], op: &Op) -> Result<(), RunError> {
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
                match (xi.dtype, o.dtype) {
                    (DType::I8, DType::I8) => {
                        ops::qconv2d::<i8, i8>(cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i8)
                    }
                    (DType::I8, DType::I16) => {
                        ops::qconv2d::<i8, i16>(cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i8)
                    }
                    (DType::I16, DType::I8) => {
                        ops::qconv2d::<i16, i8>(cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i16)
                    }
                    (DType::I16, DType::I16) => {
                        ops::qconv2d::<i16, i16>(cast_mut(od)?, cast(xd)?, wd, bd, &g, xi.zero as i16)
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
                    ops::qadd(&mut qmut(od, o.dtype)?, ls, rs, ma, mb, shift, hw, per_channel);
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
                };
                ops::qsdpa(cast_mut(od)?, cast(qd)?, cast(kd)?, cast(vd)?, cast_mut(sd)?, &p);
            }
            Op::QConcat { out, a: first, b: second, ma, sa, mb, sb } => {
                let (o, f, s) = (self.value(out)?, self.value(first)?, self.value(second)?);
                let at = f.numel();
                if f.byte_range() == s.byte_range() {
                    let [od, fd] = carve(a, [o.byte_range(), f.byte_range()]).ok_or(bad)?;
                    let mut om = qmut(od, o.dtype)?;
                    ops::qcopy(&mut om, 0, qref(fd, f.dtype)?, ma, sa);
                    ops::qcopy(&mut om, at, qref(fd, f.dtype)?, mb, sb);
                } else {
                    let [od, fd, sd] = carve(a, [o.byte_range(), f.byte_range(), s.byte_range()]).ok_or(bad)?;
                    let mut om = qmut(od, o.dtype)?;
                    ops::qcopy(&mut om, 0, qref(fd, f.dtype)?, ma, sa);
                    ops::qcopy(&mut om, at, qref(sd, s.dtype)?, mb, sb);
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

/// The callback of [`Model::forward_inspect`]: op index, op, whether it has run, the arena's bytes.
pub type Inspector<'f> = dyn FnMut(usize, &Op, bool, &[u8]) + 'f;

impl Model<'_> {
    /// Checks a class label against the model: required (and below the number of classes) for a
    /// class-conditional model, absent for an unconditional one.
    pub fn check_class(&self, class: Option<u32>) -> Result<(), RunError> {
        match (class, self.num_classes()) {
            (Some(_), 0) => Err(RunError::ClassNotSupported),
            (None, n) if n > 0 => Err(RunError::ClassRequired),
            (Some(c), n) if c >= n => Err(RunError::ClassOutOfRange { class: c, num_classes: n }),
            _ => Ok(()),
        }
    }

    /// Runs the network on one sample: `out = model(x, t, class)`.
    ///
    /// `x` is `(in_channels, height, width)` and `out` is `(out_channels, height, width)`, both f32 row-major.
    /// `arena` must hold [`Model::arena_bytes`] bytes from its first 16-byte aligned address; nothing else is
    /// allocated. The result does not depend on the arena's previous contents or on the thread count.
    pub fn forward(
        &self,
        arena: &mut [u8],
        x: &[f32],
        t: f32,
        class: Option<u32>,
        out: &mut [f32],
    ) -> Result<(), RunError> {
        self.forward_observed(arena, x, t, class, out, &mut |_, _| {})
    }

    /// [`Model::forward`], calling `after(i, op)` after op `i` has run (for profiling and progress).
    pub fn forward_observed(
        &self,
        arena: &mut [u8],
        x: &[f32],
        t: f32,
        class: Option<u32>,
        out: &mut [f32],
        after: &mut dyn FnMut(usize, &Op),
    ) -> Result<(), RunError> {
        self.forward_inspect(arena, x, t, class, out, &mut |i, op, done, _| {
            if done {
                after(i, op)
            }
        })
    }

    /// [`Model::forward`], calling `look(i, op, done, arena)` before (`done` false) and after (`done` true) op
    /// `i` runs, with the working arena's bytes (values at their [`ValueInfo::byte_range`]). For calibration and
    /// debugging.
    pub fn forward_inspect(
        &self,
        arena: &mut [u8],
        x: &[f32],
        t: f32,
        class: Option<u32>,
        out: &mut [f32],
        look: &mut Inspector<'_>,
    ) -> Result<(), RunError> {
        let sample_in = self.in_channels() * self.height() * self.width();
        let sample_out = self.out_channels() * self.height() * self.width();
        if x.len() != sample_in {
            return Err(RunError::BadShape { expected: sample_in, found: x.len() });
        }
        if out.len() != sample_out {
            return Err(RunError::BadShape { expected: sample_out, found: out.len() });
        }
        if !t.is_finite() {
            return Err(RunError::BadTimestep);
        }
        self.check_class(class)?;
        let a = arena_f32(arena, self.arena_bytes())?;
        let exec = Exec { m: self, t, class };
        let input = exec.value(self.input_value())?;
        a.get_mut(input.range()).ok_or(RunError::Inconsistent)?.copy_from_slice(x);
        for i in 0..self.num_ops() {
            let op = self.op(i).ok_or(RunError::Inconsistent)?;
            look(i, &op, false, bytemuck::cast_slice(a));
            exec.run(a, &op)?;
            look(i, &op, true, bytemuck::cast_slice(a));
        }
        let output = exec.value(self.output_value())?;
        out.copy_from_slice(a.get(output.range()).ok_or(RunError::Inconsistent)?);
        Ok(())
    }
}
