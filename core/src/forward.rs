//! The executor: runs a validated program for one sample in the caller's arena.

use core::ops::Range;

use crate::blob::{Model, TensorView, ValueInfo, ALIGN};
use crate::error::RunError;
use crate::ops;
use crate::program::Op;

/// Calls `$body` with `$w` bound to the weight slice of `$view`, whatever its element type.
macro_rules! with_weights {
    ($view:expr, $w:ident => $body:expr) => {
        match $view {
            TensorView::F32($w) => $body,
            TensorView::F16($w) => $body,
        }
    };
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
            TensorView::F16(_) => Err(RunError::Inconsistent),
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
                let g = crate::program::conv_shape(&xi, &o, &info, stride, pad);
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
                let (od, xd) = split_pair(a, o.range(), xi.range()).ok_or(bad)?;
                ops::upsample2x_nearest(od, xd, xi.c, xi.h, xi.w);
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
        }
        Ok(())
    }
}

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
            exec.run(a, &op)?;
            after(i, &op);
        }
        let output = exec.value(self.output_value())?;
        out.copy_from_slice(a.get(output.range()).ok_or(RunError::Inconsistent)?);
        Ok(())
    }
}
