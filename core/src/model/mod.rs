//! A validated model blob: [`Model::new_checked`] parses the format ([`crate::format`]) and checks every field,
//! table and op once; after that no accessor can read out of bounds or panic.

mod check;

use half::f16;

use crate::error::BlobError;
use crate::format::{
    self, schedule, tensor, value, value_type, BetaSchedule, DType, Header, Precision, Schedule, TensorRecord,
    ValueRecord, ValueTypeRecord, ALIGN, HEADER_BYTES, OP_RECORD_BYTES, OP_WORDS, VERSION_FLOAT,
};
use crate::ops::Kernels;
use crate::program::Op;

pub use check::conv_shape;

/// A validated tensor stored in the blob, viewed in place.
#[derive(Debug, Clone, Copy)]
pub enum TensorView<'a> {
    /// f32 data.
    F32(&'a [f32]),
    /// f16 data.
    F16(&'a [f16]),
    /// i8 data.
    I8(&'a [i8]),
    /// i16 data.
    I16(&'a [i16]),
    /// i32 data.
    I32(&'a [i32]),
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorView::F32(d) => d.len(),
            TensorView::F16(d) => d.len(),
            TensorView::I8(d) => d.len(),
            TensorView::I16(d) => d.len(),
            TensorView::I32(d) => d.len(),
        }
    }
    /// Whether the tensor has no elements (never true for a validated blob).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element at `i` as f32 (integers as they are stored; 0.0 when out of range).
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            TensorView::F32(d) => d.get(i).copied().unwrap_or(0.0),
            TensorView::F16(d) => d.get(i).map(|v| v.to_f32()).unwrap_or(0.0),
            TensorView::I8(d) => d.get(i).map(|&v| f32::from(v)).unwrap_or(0.0),
            TensorView::I16(d) => d.get(i).map(|&v| f32::from(v)).unwrap_or(0.0),
            TensorView::I32(d) => d.get(i).map(|&v| v as f32).unwrap_or(0.0),
        }
    }
}

/// Shape and placement of one tensor record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The tensor's name (the PyTorch state-dict key it came from).
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Number of meaningful dimensions (1..=4).
    pub ndim: usize,
    /// Dimensions; entries past `ndim` are 1.
    pub dims: [usize; 4],
    /// Offset of the data in the blob.
    pub data_off: usize,
}

impl TensorInfo<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// The meaningful dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.dims[..self.ndim.min(4)]
    }
}

/// Shape, type and arena placement of one activation value (a tensor `(c, h, w)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueInfo {
    /// Byte offset in the forward arena.
    pub offset: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Element type (f32, i8, i16 or i32).
    pub dtype: DType,
    /// For i8/i16: the real value of one integer step; 0 otherwise.
    pub scale: f32,
    /// For i8: the integer that stands for 0.0 (non-zero only for the inputs of convolutions); 0 otherwise.
    pub zero: i32,
}

impl ValueInfo {
    /// Number of elements.
    pub const fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
    /// The range of f32 elements it occupies in the arena (meaningful for f32 values).
    pub const fn range(&self) -> core::ops::Range<usize> {
        self.offset / 4..self.offset / 4 + self.numel()
    }
    /// The range of bytes it occupies in the arena.
    pub const fn byte_range(&self) -> core::ops::Range<usize> {
        self.offset..self.offset + self.numel() * self.dtype.size()
    }
}

/// A validated model blob.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    blob: &'a [u8],
    precision: Precision,
    family: u32,
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    num_classes: u32,
    arena_bytes: usize,
    tensors: &'a [u8],
    values: &'a [u8],
    value_types: &'a [u8],
    ops: &'a [u8],
    strings: &'a [u8],
    schedule: Schedule,
    input: u32,
    output: u32,
    config: &'a str,
    kernels: Kernels,
    /// Weights repacked once for the host kernels ([`Model::with_prepacked`]).
    #[cfg(feature = "std")]
    prepacked: Option<&'a Prepacked<'a>>,
}

/// The weights of a model repacked, on first use and once, into the layout of the host's vector kernels (std
/// only; today the int8 convolutions on x86-64), so that a forward pass does not repack them: about a fifth of
/// an int8 forward on the cifar10 architecture. Costs memory: up to the int8 weights' size again.
///
/// Made for one blob ([`Prepacked::new`]) and borrowing it, so it cannot be used with another.
#[cfg(feature = "std")]
pub struct Prepacked<'a> {
    blob: &'a [u8],
    pub(crate) tensors: std::vec::Vec<std::sync::OnceLock<Option<crate::ops::PackedWeights>>>,
}

#[cfg(feature = "std")]
impl<'a> Prepacked<'a> {
    /// An empty store for `model`'s tensors; each is packed the first time a kernel needs it.
    pub fn new(model: &Model<'a>) -> Self {
        Prepacked { blob: model.blob, tensors: (0..model.num_tensors()).map(|_| std::sync::OnceLock::new()).collect() }
    }
}

#[cfg(feature = "std")]
impl core::fmt::Debug for Prepacked<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let packed = self.tensors.iter().filter(|t| t.get().is_some_and(Option::is_some)).count();
        write!(f, "Prepacked {{ tensors: {}, packed: {packed} }}", self.tensors.len())
    }
}

/// The sub-slice `off..off + len` of `b`, if it lies inside.
fn section<'a>(b: &'a [u8], off: usize, len: usize, name: &'static str) -> Result<&'a [u8], BlobError> {
    off.checked_add(len).and_then(|end| b.get(off..end)).ok_or(BlobError::BadSection(name))
}

/// A table of `count` records of `record` bytes at `off` (after the header, 4-byte aligned).
fn table<'a>(b: &'a [u8], (off, count): (u32, u32), record: usize, name: &'static str) -> Result<&'a [u8], BlobError> {
    let off = off as usize;
    if off < HEADER_BYTES || !off.is_multiple_of(4) {
        return Err(BlobError::BadSection(name));
    }
    let len = (count as usize).checked_mul(record).ok_or(BlobError::BadSection(name))?;
    section(b, off, len, name)
}

impl<'a> Model<'a> {
    /// Parses and validates a blob. Any byte string yields a model or an error; nothing panics.
    ///
    /// `blob` must start at a 16-byte aligned address ([`BlobError::Misaligned`] otherwise): tensors are used
    /// in place, never copied.
    pub fn new_checked(blob: &'a [u8]) -> Result<Self, BlobError> {
        let h = Header::parse(blob)?;
        let tensors = table(blob, h.tensors, tensor::RECORD_BYTES, "tensors")?;
        let values = table(blob, h.values, value::RECORD_BYTES, "values")?;
        let ops = table(blob, h.ops, OP_RECORD_BYTES, "ops")?;
        let value_types = match h.value_types.1 {
            0 => &[][..],
            _ => table(blob, h.value_types, value_type::RECORD_BYTES, "value types")?,
        };
        if !value_types.is_empty() && value_types.len() / value_type::RECORD_BYTES != values.len() / value::RECORD_BYTES
        {
            return Err(BlobError::BadSection("value types"));
        }
        let strings = table(blob, h.strings, 1, "strings")?;
        let sched_off = h.schedule as usize;
        if sched_off < HEADER_BYTES || !sched_off.is_multiple_of(4) {
            return Err(BlobError::BadSection("schedule"));
        }
        let schedule = Schedule::parse(section(blob, sched_off, schedule::RECORD_BYTES, "schedule")?)?;
        let config_bytes = section(strings, h.config.0 as usize, h.config.1 as usize, "config")?;
        let config = core::str::from_utf8(config_bytes).map_err(|_| BlobError::BadField("config"))?;
        debug_assert!(h.version == VERSION_FLOAT || h.version == format::VERSION);

        let (height, width) = (h.height as usize, h.width as usize);
        let model = Model {
            blob,
            precision: h.precision,
            family: h.family,
            in_channels: h.in_channels as usize,
            out_channels: h.out_channels as usize,
            height,
            width,
            num_classes: h.num_classes,
            arena_bytes: h.arena_bytes as usize,
            tensors,
            values,
            value_types,
            ops,
            strings,
            schedule,
            input: h.input,
            output: h.output,
            config,
            kernels: Kernels::default(),
            #[cfg(feature = "std")]
            prepacked: None,
        };
        model.validate_tensors()?;
        model.validate_values()?;
        if schedule.beta_schedule == BetaSchedule::TrainedBetas {
            let t = model.tensor_info(schedule.trained_betas_tensor).ok_or(BlobError::BadField("trained_betas"))?;
            if t.dtype != DType::F32 || t.ndim != 1 || t.dims[0] != schedule.num_train_timesteps as usize {
                return Err(BlobError::BadField("trained_betas"));
            }
        }
        let sample = |v: u32, c: usize, name| match model.value(v) {
            Some(vi) if vi.c == c && vi.h == height && vi.w == width && vi.dtype == DType::F32 => Ok(()),
            _ => Err(BlobError::BadField(name)),
        };
        sample(model.input, model.in_channels, "input value")?;
        sample(model.output, model.out_channels, "output value")?;
        for i in 0..model.num_ops() {
            let index = i as u32;
            let op = Op::decode(&model.op_words(i)).ok_or(BlobError::BadOp {
                index,
                why: "unknown opcode, a flag other than 0 or 1, or unused words not zero",
            })?;
            check::op(&model, &op).map_err(|why| BlobError::BadOp { index, why })?;
        }
        Ok(model)
    }

    fn tensor_record(&self, i: usize) -> Option<TensorRecord> {
        TensorRecord::parse(self.tensors.get(i * tensor::RECORD_BYTES..(i + 1) * tensor::RECORD_BYTES)?)
    }

    fn validate_tensors(&self) -> Result<(), BlobError> {
        for i in 0..self.num_tensors() {
            let bad = BlobError::BadTensor(i as u32);
            let r = self.tensor_record(i).ok_or(bad)?;
            let name = section(self.strings, r.name.0 as usize, r.name.1 as usize, "tensor name").map_err(|_| bad)?;
            core::str::from_utf8(name).map_err(|_| bad)?;
            let ndim = r.ndim as usize;
            if !(1..=4).contains(&ndim) {
                return Err(bad);
            }
            let mut numel: usize = 1;
            for (d, &v) in r.dims.iter().enumerate() {
                if v == 0 || (d >= ndim && v != 1) {
                    return Err(bad);
                }
                numel = numel.checked_mul(v as usize).ok_or(bad)?;
            }
            let (off, len) = (r.data.0 as usize, r.data.1 as usize);
            if !off.is_multiple_of(ALIGN) || off < HEADER_BYTES || numel.checked_mul(r.dtype.size()) != Some(len) {
                return Err(bad);
            }
            section(self.blob, off, len, "tensor data").map_err(|_| bad)?;
        }
        Ok(())
    }

    fn validate_values(&self) -> Result<(), BlobError> {
        if !self.arena_bytes.is_multiple_of(ALIGN) {
            return Err(BlobError::BadField("arena bytes"));
        }
        for i in 0..self.num_values() {
            let bad = BlobError::BadValue(i as u32);
            let v = self.value(i as u32).ok_or(bad)?;
            if !v.offset.is_multiple_of(ALIGN) || v.c == 0 || v.h == 0 || v.w == 0 {
                return Err(bad);
            }
            let scale_ok = if v.dtype.is_quantized() { v.scale.is_finite() && v.scale > 0.0 } else { v.scale == 0.0 };
            let zero_ok = v.zero == 0 || (v.dtype == DType::I8 && v.zero.abs() <= 127);
            // Integer activations belong to int8 programs only (the GPU backend, which refuses int8 blobs, runs
            // every other program's values as f32).
            let type_ok = v.dtype == DType::F32
                || (self.precision == Precision::Int8 && matches!(v.dtype, DType::I8 | DType::I16 | DType::I32));
            if !type_ok || !scale_ok || !zero_ok {
                return Err(bad);
            }
            let end =
                v.c.checked_mul(v.h)
                    .and_then(|n| n.checked_mul(v.w))
                    .and_then(|n| n.checked_mul(v.dtype.size()))
                    .and_then(|n| n.checked_add(v.offset))
                    .ok_or(bad)?;
            if end > self.arena_bytes {
                return Err(bad);
            }
        }
        Ok(())
    }

    /// Number of tensors.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len() / tensor::RECORD_BYTES
    }
    /// Number of activation values.
    pub fn num_values(&self) -> usize {
        self.values.len() / value::RECORD_BYTES
    }
    /// Number of ops.
    pub fn num_ops(&self) -> usize {
        self.ops.len() / OP_RECORD_BYTES
    }

    /// Shape and placement of tensor `i`.
    pub fn tensor_info(&self, i: u32) -> Option<TensorInfo<'a>> {
        let r = self.tensor_record(i as usize)?;
        let name = section(self.strings, r.name.0 as usize, r.name.1 as usize, "").ok()?;
        Some(TensorInfo {
            name: core::str::from_utf8(name).ok()?,
            dtype: r.dtype,
            ndim: r.ndim as usize,
            dims: r.dims.map(|d| d as usize),
            data_off: r.data.0 as usize,
        })
    }

    /// The data of tensor `i`, viewed in place.
    pub fn tensor(&self, i: u32) -> Option<TensorView<'a>> {
        let info = self.tensor_info(i)?;
        let bytes = section(self.blob, info.data_off, info.numel() * info.dtype.size(), "").ok()?;
        Some(match info.dtype {
            DType::F32 => TensorView::F32(bytemuck::try_cast_slice(bytes).ok()?),
            DType::F16 => TensorView::F16(bytemuck::try_cast_slice(bytes).ok()?),
            DType::I8 => TensorView::I8(bytemuck::try_cast_slice(bytes).ok()?),
            DType::I16 => TensorView::I16(bytemuck::try_cast_slice(bytes).ok()?),
            DType::I32 => TensorView::I32(bytemuck::try_cast_slice(bytes).ok()?),
        })
    }

    /// The stored type of value `i` (f32 when the blob has no value type table).
    fn value_type(&self, i: usize) -> Option<ValueTypeRecord> {
        if self.value_types.is_empty() {
            return Some(ValueTypeRecord { dtype: DType::F32, zero: 0, scale: 0.0 });
        }
        ValueTypeRecord::parse(self.value_types.get(i * value_type::RECORD_BYTES..(i + 1) * value_type::RECORD_BYTES)?)
    }

    /// Shape, type and arena placement of activation value `i`.
    pub fn value(&self, i: u32) -> Option<ValueInfo> {
        let i = i as usize;
        let r = ValueRecord::parse(self.values.get(i * value::RECORD_BYTES..(i + 1) * value::RECORD_BYTES)?);
        let t = self.value_type(i)?;
        Some(ValueInfo {
            offset: r.arena_off as usize,
            c: r.c as usize,
            h: r.h as usize,
            w: r.w as usize,
            dtype: t.dtype,
            scale: t.scale,
            zero: i32::from(t.zero),
        })
    }

    fn op_words(&self, i: usize) -> [u32; OP_WORDS] {
        let r = self.ops.get(i * OP_RECORD_BYTES..).unwrap_or(&[]);
        core::array::from_fn(|k| format::read_u32(r, 4 * k..4 * k + 4))
    }

    /// Op `i` of the program.
    pub fn op(&self, i: usize) -> Option<Op> {
        if i >= self.num_ops() {
            return None;
        }
        Op::decode(&self.op_words(i))
    }

    /// The ops of the program, in execution order.
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        (0..self.num_ops()).filter_map(|i| self.op(i))
    }

    /// The same model, running its float ops with `kernels` ([`Kernels::Fast`] unless set).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }
    /// Which kernels [`Model::forward`] runs.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The model with the host kernels reading their weights from `packs` (see [`Prepacked`]); unchanged when
    /// `packs` was made for another blob.
    #[cfg(feature = "std")]
    pub fn with_prepacked<'b>(self, packs: &'b Prepacked<'b>) -> Model<'b>
    where
        'a: 'b,
    {
        let m: Model<'b> = self;
        if core::ptr::eq(packs.blob, m.blob) && packs.tensors.len() == m.num_tensors() {
            Model { prepacked: Some(packs), ..m }
        } else {
            m
        }
    }

    /// The slot of tensor `i` in the prepacked store, if there is one.
    #[cfg(feature = "std")]
    pub(crate) fn packed_slot(&self, i: u32) -> Option<&'a std::sync::OnceLock<Option<crate::ops::PackedWeights>>> {
        self.prepacked.and_then(|p| p.tensors.get(i as usize))
    }

    /// Weight precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Model family code (1 = diffusers `UNet2DModel`).
    pub fn family(&self) -> u32 {
        self.family
    }
    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// Output channels (twice the input channels for learned-variance models).
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
    /// Sample height.
    pub fn height(&self) -> usize {
        self.height
    }
    /// Sample width.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Number of class labels (0 for an unconditional model).
    pub fn num_classes(&self) -> u32 {
        self.num_classes
    }
    /// Noise schedule and sampler defaults.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }
    /// The trained betas, when the schedule has them (`beta_schedule` = 4).
    pub fn trained_betas(&self) -> Option<TensorView<'a>> {
        (self.schedule.beta_schedule == BetaSchedule::TrainedBetas)
            .then(|| self.tensor(self.schedule.trained_betas_tensor))
            .flatten()
    }
    /// The model config the converter read, as JSON text.
    pub fn config_json(&self) -> &'a str {
        self.config
    }
    /// The whole blob.
    pub fn bytes(&self) -> &'a [u8] {
        self.blob
    }
    /// Input value index.
    pub fn input_value(&self) -> u32 {
        self.input
    }
    /// Output value index.
    pub fn output_value(&self) -> u32 {
        self.output
    }

    /// Arena bytes one forward pass needs, counted from a 16-byte aligned start (any batch size).
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }
    /// Arena bytes needed when the arena's start address is not known to be 16-byte aligned.
    pub fn arena_bytes_unaligned(&self) -> usize {
        self.arena_bytes + ALIGN - 1
    }

    /// Number of weight parameters (elements of all tensors except the trained-betas table).
    pub fn parameter_count(&self) -> u64 {
        (0..self.num_tensors() as u32)
            .filter(|&i| {
                !(self.schedule.beta_schedule == BetaSchedule::TrainedBetas && i == self.schedule.trained_betas_tensor)
            })
            .filter_map(|i| self.tensor_info(i))
            .map(|t| t.numel() as u64)
            .sum()
    }

    /// Floating-point operations of one forward pass at batch 1 (a multiply-add counts 2).
    pub fn flops(&self) -> u64 {
        self.ops().map(|op| self.op_flops(&op)).sum()
    }

    /// Floating-point operations of one op of this model at batch 1 (a multiply-add counts 2).
    pub fn op_flops(&self, op: &Op) -> u64 {
        check::flops(self, op)
    }
}
