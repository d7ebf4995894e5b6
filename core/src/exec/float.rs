//! Float ops: f32 activations, f32 or f16 weights, f32 accumulation.

use super::{carve, cast, cast_mut, split_pair, Exec};
use crate::error::RunError;
use crate::format::DType;
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

impl Exec<'_, '_> {
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
}
