//! Float ops: f32 activations, f32 or f16 weights, f32 accumulation.

use super::{carve, cast, cast_mut, split_pair, Exec};
use crate::error::RunError;
use crate::model::TensorView;
use crate::ops;
use crate::program::Op;

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

/// `out` and up to two disjoint read ranges of the arena (an empty range stands for "not needed"; `same`: the
/// two read ranges are one, carved once).
fn carve3(
    bytes: &mut [u8],
    out: core::ops::Range<usize>,
    l: core::ops::Range<usize>,
    r: core::ops::Range<usize>,
    same: bool,
) -> Option<[&mut [u8]; 3]> {
    let r = if same { r.start..r.start } else { r };
    let l = if l.is_empty() { out.start..out.start } else { l };
    let r = if r.is_empty() { out.start..out.start } else { r };
    carve(bytes, [out, l, r])
}

/// An op's output and two inputs as f32 slices.
type OutAndTwo<'x> = (&'x mut [f32], &'x [f32], &'x [f32]);

impl Exec<'_, '_> {
    /// The output of an op and its two inputs (which may be one value; both are apart from the output, as
    /// validated), as f32 slices of the arena.
    fn out_and_two<'x>(&self, a: &'x mut [f32], out: u32, lhs: u32, rhs: u32) -> Result<OutAndTwo<'x>, RunError> {
        let (o, l, r) = (self.value(out)?, self.value(lhs)?, self.value(rhs)?);
        let same = l.byte_range() == r.byte_range();
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(a);
        let [od, ld, rd] =
            carve3(bytes, o.byte_range(), l.byte_range(), r.byte_range(), same).ok_or(RunError::Inconsistent)?;
        let ld: &[f32] = cast(ld)?;
        let rd: &[f32] = if same { ld } else { cast(rd)? };
        Ok((cast_mut(od)?, ld, rd))
    }

    /// Runs one float op on the f32 view of the arena.
    pub(super) fn run(&self, a: &mut [f32], op: &Op) -> Result<(), RunError> {
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
                with_weights!(wv, w => ops::linear_rows_using(self.m.kernels(), od, xd, w, bv, xi.c, o.c));
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
                with_weights!(wv, w => ops::conv2d_using(self.m.kernels(), od, sd, w, bv, &g));
            }
            Op::GroupNorm { out, x, gamma, beta, groups, eps, silu } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                let (g, bt) = (self.vector(gamma)?, self.vector(beta)?);
                let od = a.get_mut(o.range()).ok_or(bad)?;
                ops::group_norm_using(self.m.kernels(), od, o.c, o.h * o.w, groups as usize, g, bt, eps, silu);
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
                let fast = {
                    let (sd, nd) = split_pair(a, si.range(), ni.range()).ok_or(bad)?;
                    let sd = sd.get_mut(..4 * n).ok_or(bad)?;
                    let kernels = self.m.kernels();
                    let bs = [self.vector(w[1])?, self.vector(w[3])?, self.vector(w[5])?, self.vector(w[7])?];
                    let heads = heads as usize;
                    let fast = match [w[0], w[2], w[4], w[6]].map(|i| self.weights(i)) {
                        [Ok(TensorView::F32(q)), Ok(TensorView::F32(k)), Ok(TensorView::F32(v)), Ok(TensorView::F32(wo))] => {
                            ops::attention_fast(kernels, sd, nd, c, hw, heads, [q, k, v, wo], bs)
                        }
                        [Ok(TensorView::F16(q)), Ok(TensorView::F16(k)), Ok(TensorView::F16(v)), Ok(TensorView::F16(wo))] => {
                            ops::attention_fast(kernels, sd, nd, c, hw, heads, [q, k, v, wo], bs)
                        }
                        _ => false,
                    };
                    if !fast {
                        ops::attention_project(&mut sd[..n], nd, c, hw);
                        for (part, pair) in w[..6].chunks_exact(2).enumerate() {
                            let (wv, bv) = (self.weights(pair[0])?, self.vector(pair[1])?);
                            let (t, rest) = sd.split_at_mut(n);
                            let dst = &mut rest[part * n..][..n];
                            with_weights!(wv, w => ops::linear_rows(dst, t, w, bv, c, c));
                        }
                        ops::attention_core(sd, c, hw, heads);
                    }
                    fast
                };
                Self::copy(a, &o, &xi)?;
                let (od, sd) = split_pair(a, o.range(), si.range()).ok_or(bad)?;
                if fast {
                    ops::add_assign_scaled(od, sd.get(2 * n..3 * n).ok_or(bad)?, scale);
                } else {
                    let (wv, bv) = (self.weights(w[6])?, self.vector(w[7])?);
                    with_weights!(wv, w => ops::attention_output(od, sd, c, hw, w, bv, scale));
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
                if xi.dtype != crate::format::DType::F32 {
                    return self.run_move(bytemuck::cast_slice_mut(a), op);
                }
                Self::copy(a, &o, &xi)?;
                ops::affine(a.get_mut(o.range()).ok_or(bad)?, mul, add);
            }
            Op::LayerNorm { out, x, gamma, beta, eps } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                let (g, bt) = (self.vector(gamma)?, self.vector(beta)?);
                ops::layer_norm(a.get_mut(o.range()).ok_or(bad)?, g, bt, eps);
            }
            Op::ConvTranspose2d { out, x, w, b, stride, pad } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let info = self.m.tensor_info(w).ok_or(bad)?;
                let g = ops::ConvTransposeShape {
                    ci: xi.c,
                    h: xi.h,
                    w: xi.w,
                    co: o.c,
                    kh: info.dims[2],
                    kw: info.dims[3],
                    stride: stride as usize,
                    pad_top: pad[0] as usize,
                    pad_left: pad[1] as usize,
                    ho: o.h,
                    wo: o.w,
                };
                let (wv, bv) = (self.weights(w)?, self.vector(b)?);
                let (od, xd) = split_pair(a, o.range(), xi.range()).ok_or(bad)?;
                with_weights!(wv, w => ops::conv_transpose2d(od, xd, w, bv, &g));
            }
            Op::TimestepTable { out, table } => {
                let o = self.value(out)?;
                let info = self.m.tensor_info(table).ok_or(bad)?;
                let rows = info.dims[0];
                let t = self.t;
                if t < 0.0 || t != libm::floorf(t) || t as usize >= rows {
                    return Err(RunError::TimestepNotInTable { rows: rows as u32 });
                }
                let tv = self.weights(table)?;
                let od = a.get_mut(o.range()).ok_or(bad)?;
                let base = t as usize * od.len();
                for (k, v) in od.iter_mut().enumerate() {
                    *v = tv.get_f32(base + k);
                }
            }
            Op::ClassTable { out, table } => {
                let o = self.value(out)?;
                let class = self.class.ok_or(RunError::ClassRequired)? as usize;
                let tv = self.weights(table)?;
                let od = a.get_mut(o.range()).ok_or(bad)?;
                let base = class * od.len();
                for (k, v) in od.iter_mut().enumerate() {
                    *v = tv.get_f32(base + k);
                }
            }
            Op::Unary { out, x, kind, a: pa, b: pb } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                let f = ops::UnaryFn::from_code(kind).ok_or(bad)?;
                ops::unary(a.get_mut(o.range()).ok_or(bad)?, f, pa, pb);
            }
            Op::Binary { out, a: lhs, b: rhs, dims, bcast, kind } => {
                let (o, l, r) = (self.value(out)?, self.value(lhs)?, self.value(rhs)?);
                let f = ops::BinaryFn::from_code(kind).ok_or(bad)?;
                let (bl, br) = (ops::Broadcast(bcast & 7), ops::Broadcast(bcast >> 3));
                let d = dims.map(|d| d as usize);
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(a);
                let (lr, rr) = (l.byte_range(), r.byte_range());
                let (or, same_l, same_r) = (o.byte_range(), lr == o.byte_range(), rr == o.byte_range());
                // Operands that are `out` itself are read from it; the others are disjoint from it (validated).
                let far = |same: bool, x: &core::ops::Range<usize>| if same { 0..0 } else { x.clone() };
                let [od, ld, rd] = carve3(bytes, or, far(same_l, &lr), far(same_r, &rr), lr == rr).ok_or(bad)?;
                let ld: Option<&[f32]> = if same_l { None } else { Some(cast(ld)?) };
                let rd: Option<&[f32]> = if same_r {
                    None
                } else if lr == rr {
                    ld
                } else {
                    Some(cast(rd)?)
                };
                let od = cast_mut(od)?;
                ops::binary(od, ops::Operand { data: ld, bc: bl }, ops::Operand { data: rd, bc: br }, d, f);
            }
            Op::BinaryConst { out, a: lhs, t, dims, bcast, kind, swap } => {
                let (o, l) = (self.value(out)?, self.value(lhs)?);
                let f = ops::BinaryFn::from_code(kind).ok_or(bad)?;
                let (bl, bt) = (ops::Broadcast(bcast & 7), ops::Broadcast(bcast >> 3));
                let d = dims.map(|d| d as usize);
                let tv = self.vector(t)?;
                let tsrc = ops::Operand { data: Some(tv), bc: bt };
                if o.range() == l.range() {
                    let od = a.get_mut(o.range()).ok_or(bad)?;
                    let lsrc = ops::Operand { data: None, bc: bl };
                    let (x, y) = if swap { (tsrc, lsrc) } else { (lsrc, tsrc) };
                    ops::binary(od, x, y, d, f);
                } else {
                    let (od, ld) = split_pair(a, o.range(), l.range()).ok_or(bad)?;
                    let lsrc = ops::Operand { data: Some(ld), bc: bl };
                    let (x, y) = if swap { (tsrc, lsrc) } else { (lsrc, tsrc) };
                    ops::binary(od, x, y, d, f);
                }
            }
            Op::MatMul { out, a: lhs, b: rhs, batch, m, k, n, shared, trans_b } => {
                let g = ops::MatMulShape::of_op(batch, m, k, n, shared, trans_b);
                let (od, ld, rd) = self.out_and_two(a, out, lhs, rhs)?;
                ops::matmul(od, ld, rd, &g);
            }
            Op::Softmax { out, x, outer, n, inner } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                Self::copy(a, &o, &xi)?;
                ops::softmax(a.get_mut(o.range()).ok_or(bad)?, outer as usize, n as usize, inner as usize);
            }
            Op::Reduce { out, x, outer, n, inner, kind } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let f = ops::ReduceFn::from_code(kind).ok_or(bad)?;
                let (od, xd) = split_pair(a, o.range(), xi.range()).ok_or(bad)?;
                ops::reduce(od, xd, outer as usize, n as usize, inner as usize, f);
            }
            Op::Constant { out, t } => {
                let o = self.value(out)?;
                let tv = self.vector(t)?;
                a.get_mut(o.range()).ok_or(bad)?.copy_from_slice(tv.get(..o.numel()).ok_or(bad)?);
            }
            Op::LinearRows { out, x, w, b } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let info = self.m.tensor_info(w).ok_or(bad)?;
                let (wv, bv) = (self.weights(w)?, self.vector(b)?);
                let (od, xd) = split_pair(a, o.range(), xi.range()).ok_or(bad)?;
                with_weights!(wv, w => ops::linear_rows(od, xd, w, bv, info.dims[1], info.dims[0]));
            }
            Op::Upsample2x { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::ConcatAxis { .. }
            | Op::Pool2d { .. }
            | Op::Resize { .. }
            | Op::Pad { .. } => self.run_move(bytemuck::cast_slice_mut(a), op)?,
            _ => self.run_quantized(bytemuck::cast_slice_mut(a), op)?,
        }
        Ok(())
    }
}
