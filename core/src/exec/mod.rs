//! The executor: runs a validated program for one sample in the caller's arena. Float ops run in `float.rs`,
//! the int8 ops in `int8.rs`, the data-movement ops (any value type) in `moves.rs`; this file holds what both share (the arena carving, operand lookups) and the
//! entry points on [`Model`].

mod float;
mod int8;
mod moves;

use core::ops::Range;

use crate::error::RunError;
use crate::format::ALIGN;
use crate::model::{Model, TensorView, ValueInfo};
use crate::program::Op;

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
