//! The model blob: layout, parsing and validation.
//!
//! This is the one place the format is written down. A blob is produced by `host-cli convert` and read in
//! place (from flash, an mmap or a buffer) by [`Model::new_checked`], which validates every field, table and
//! op once. After that no accessor can read out of bounds or panic.
//!
//! # Layout, format version 2
//!
//! Version 2 adds the value type table (header offset 116) for quantized programs. A blob without one is written
//! as version 1, which older readers understand; this reader accepts both.
//!
//! Everything is little-endian. Offsets are in bytes from the start of the blob; the blob must sit at a
//! 16-byte aligned address so that tensors can be viewed in place. Sizes are `u32`, so a blob is < 4 GiB.
//!
//! ## Header (128 bytes)
//! | off | type | field |
//! |----:|------|-------|
//! | 0   | `[u8; 8]` | magic `DDPMBLOB` |
//! | 8   | u32 | format version (1) |
//! | 12  | u32 | header size (128) |
//! | 16  | u64 | total blob size in bytes |
//! | 24  | u64 | FNV-1a 64 checksum of bytes `32..total` |
//! | 32  | u32 | precision of the weights: 0 = f32, 1 = f16, 2 = int8 |
//! | 36  | u32 | model family: 1 = diffusers `UNet2DModel` |
//! | 40  | u32 | in_channels |
//! | 44  | u32 | out_channels |
//! | 48  | u32 | sample height |
//! | 52  | u32 | sample width |
//! | 56  | u32 | number of classes (0 = unconditional) |
//! | 60  | u32 | forward arena bytes at batch 1 (the memory plan; see below) |
//! | 64  | u32, u32 | tensor table: offset, count (40-byte records) |
//! | 72  | u32, u32 | activation value table: offset, count (16-byte records) |
//! | 80  | u32, u32 | op table: offset, count (64-byte records, see [`crate::program`]) |
//! | 88  | u32, u32 | string section: offset, length (UTF-8; tensor names and the config JSON) |
//! | 96  | u32 | schedule record offset (64 bytes, see below) |
//! | 100 | u32 | input value index (`in_channels × height × width`) |
//! | 104 | u32 | output value index (`out_channels × height × width`) |
//! | 108 | u32, u32 | source config JSON: offset, length within the string section |
//! | 116 | u32, u32 | value type table: offset, count (8-byte records; version 2; count 0 or the value count) |
//! | 124 | 4 bytes | reserved, zero |
//!
//! ## Tensor record (40 bytes)
//! `name_off u32, name_len u32` (within the string section), `dtype u32` (0 = f32, 1 = f16, 2 = i8, 3 = i16,
//! 4 = i32),
//! `ndim u32` (1..=4), `dims [u32; 4]` (unused trailing dims are 1), `data_off u32`, `data_len u32`.
//! Data is 16-byte aligned and `data_len = product(dims) × size_of(dtype)`. In an f16 blob, matrices and
//! convolution kernels are f16; biases and norm parameters (1-D tensors) stay f32. In an int8 blob, kernels are
//! i8 with one scale per output channel, folded with the activation scales into i32 requantization tables
//! (see [`crate::program`]); biases are i32; norm parameters stay f32.
//!
//! ## Activation value record (16 bytes)
//! `arena_off u32, c u32, h u32, w u32`: a tensor `(c, h, w)` at byte `arena_off` (16-byte aligned) of the
//! forward arena. The converter plans these offsets by liveness; values whose lifetimes do not overlap share
//! memory. Every value must fit within the arena size stated in the header.
//!
//! ## Value type record (8 bytes, version 2)
//! `dtype u16, zero i16, scale f32`, one per value in value order. dtype: 0 = f32, 2 = i8, 3 = i16, 4 = i32
//! (scratch). An i8/i16 value `q` stands for the real number `(q − zero) × scale` (`scale` finite and > 0;
//! `zero` in ±127, and non-zero only for i8 values that only convolutions read: post-SiLU activations, whose
//! range is nearly one-sided); for f32 and i32 values `scale` and `zero` are 0. Without the table every value
//! is f32.
//!
//! ## Schedule record (64 bytes)
//! | off | type | field (diffusers scheduler option) |
//! |----:|------|-------|
//! | 0  | u32 | `num_train_timesteps` |
//! | 4  | u32 | `beta_schedule`: 0 linear, 1 scaled_linear, 2 squaredcos_cap_v2, 3 sigmoid, 4 trained betas |
//! | 8  | f32 | `beta_start` |
//! | 12 | f32 | `beta_end` |
//! | 16 | u32 | `prediction_type`: 0 epsilon, 1 sample, 2 v_prediction |
//! | 20 | u32 | `variance_type`: 0 fixed_small, 1 fixed_small_log, 2 fixed_large, 3 fixed_large_log, 4 learned, 5 learned_range |
//! | 24 | u32 | `clip_sample` (0/1) |
//! | 28 | f32 | `clip_sample_range` |
//! | 32 | u32 | `thresholding` (0/1) |
//! | 36 | f32 | `dynamic_thresholding_ratio` |
//! | 40 | f32 | `sample_max_value` |
//! | 44 | u32 | `timestep_spacing`: 0 leading, 1 linspace, 2 trailing |
//! | 48 | u32 | `steps_offset` |
//! | 52 | u32 | index of the trained-betas tensor (read only when `beta_schedule` = 4) |
//! | 56 | u32 | `set_alpha_to_one` (DDIM; 0/1) |
//! | 60 | u32 | `rescale_betas_zero_snr` (0/1; Lin et al. 2024, Algorithm 1) |
//!
//! ## Memory plan
//! The forward arena holds every activation value of one sample; the executor runs the samples of a batch one
//! after another in the same arena, so the forward arena does not grow with the batch size. The caller's arena
//! must hold `arena_bytes` from its first 16-byte aligned address ([`Model::arena_bytes_unaligned`] adds the
//! worst-case slack).

use half::f16;

use crate::checksum::fnv1a64;
use crate::error::BlobError;
use crate::program::{self, Op};

/// The 8 bytes every blob starts with.
pub const MAGIC: [u8; 8] = *b"DDPMBLOB";
/// The format version this build writes for quantized programs (it reads 1 and 2).
pub const VERSION: u32 = 2;
/// The format version of a blob without a value type table (every value f32).
pub const VERSION_FLOAT: u32 = 1;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 128;
/// Size of one tensor record.
pub const TENSOR_RECORD_BYTES: usize = 40;
/// Size of one activation value record.
pub const VALUE_RECORD_BYTES: usize = 16;
/// Size of one value type record.
pub const VALUE_TYPE_RECORD_BYTES: usize = 8;
/// Size of one op record.
pub const OP_RECORD_BYTES: usize = 64;
/// Size of the schedule record.
pub const SCHEDULE_RECORD_BYTES: usize = 64;
/// Alignment of tensor data in the blob and of values in the arena.
pub const ALIGN: usize = 16;
/// Model family code of diffusers' `UNet2DModel`.
pub const FAMILY_UNET2D: u32 = 1;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
}

impl DType {
    /// The code stored in a tensor record.
    pub const fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::I8 => 2,
            DType::I16 => 3,
            DType::I32 => 4,
        }
    }
    /// Decodes a tensor record's dtype code.
    pub const fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::I8),
            3 => Some(DType::I16),
            4 => Some(DType::I32),
            _ => None,
        }
    }
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::I16 => 2,
            DType::I8 => 1,
        }
    }
    /// Whether values of this type stand for `q × scale` (i8, i16).
    pub const fn is_quantized(self) -> bool {
        matches!(self, DType::I8 | DType::I16)
    }
    /// The largest magnitude a quantized value may hold (symmetric range).
    pub const fn qmax(self) -> i32 {
        match self {
            DType::I8 => 127,
            DType::I16 => 32767,
            _ => 0,
        }
    }
}

/// Weight precision of a whole blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights: the reference.
    F32,
    /// f16 matrices and kernels, f32 vectors, f32 accumulation.
    F16,
    /// Fixed point: i8 kernels, i8/i16 activations, i32 accumulation.
    Int8,
}

impl Precision {
    /// The code stored in the header.
    pub const fn code(self) -> u32 {
        match self {
            Precision::F32 => 0,
            Precision::F16 => 1,
            Precision::Int8 => 2,
        }
    }
    /// Decodes the header's precision code.
    pub const fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(Precision::F32),
            1 => Some(Precision::F16),
            2 => Some(Precision::Int8),
            _ => None,
        }
    }
    /// Lower-case name, as on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }
}

/// The noise schedule and sampler defaults stored in the blob (diffusers' scheduler options).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// `num_train_timesteps`.
    pub num_train_timesteps: u32,
    /// `beta_schedule` code (see the module docs).
    pub beta_schedule: u32,
    /// `beta_start`.
    pub beta_start: f32,
    /// `beta_end`.
    pub beta_end: f32,
    /// `prediction_type` code.
    pub prediction_type: u32,
    /// `variance_type` code.
    pub variance_type: u32,
    /// `clip_sample`.
    pub clip_sample: bool,
    /// `clip_sample_range`.
    pub clip_sample_range: f32,
    /// `thresholding`.
    pub thresholding: bool,
    /// `dynamic_thresholding_ratio`.
    pub dynamic_thresholding_ratio: f32,
    /// `sample_max_value`.
    pub sample_max_value: f32,
    /// `timestep_spacing` code.
    pub timestep_spacing: u32,
    /// `steps_offset`.
    pub steps_offset: u32,
    /// Tensor holding the trained betas (used when `beta_schedule` is 4).
    pub trained_betas_tensor: u32,
    /// `set_alpha_to_one` (DDIM).
    pub set_alpha_to_one: bool,
    /// `rescale_betas_zero_snr`: rescale the betas so that the last timestep has zero SNR.
    pub rescale_betas_zero_snr: bool,
}

impl Schedule {
    /// diffusers' `DDPMScheduler()` defaults (Ho et al. 2020: 1000 linear betas from 1e-4 to 0.02).
    pub const DDPM_DEFAULT: Schedule = Schedule {
        num_train_timesteps: 1000,
        beta_schedule: 0,
        beta_start: 1e-4,
        beta_end: 0.02,
        prediction_type: 0,
        variance_type: 0,
        clip_sample: true,
        clip_sample_range: 1.0,
        thresholding: false,
        dynamic_thresholding_ratio: 0.995,
        sample_max_value: 1.0,
        timestep_spacing: 0,
        steps_offset: 0,
        trained_betas_tensor: 0,
        set_alpha_to_one: true,
        rescale_betas_zero_snr: false,
    };

    /// Names of the `beta_schedule` codes.
    pub const BETA_SCHEDULES: [&'static str; 5] =
        ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "trained_betas"];
    /// Names of the `prediction_type` codes.
    pub const PREDICTION_TYPES: [&'static str; 3] = ["epsilon", "sample", "v_prediction"];
    /// Names of the `variance_type` codes.
    pub const VARIANCE_TYPES: [&'static str; 6] =
        ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"];
    /// Names of the `timestep_spacing` codes.
    pub const TIMESTEP_SPACINGS: [&'static str; 3] = ["leading", "linspace", "trailing"];

    /// Encodes the 64-byte schedule record.
    pub fn encode(&self) -> [u8; SCHEDULE_RECORD_BYTES] {
        let words: [u32; 16] = [
            self.num_train_timesteps,
            self.beta_schedule,
            self.beta_start.to_bits(),
            self.beta_end.to_bits(),
            self.prediction_type,
            self.variance_type,
            u32::from(self.clip_sample),
            self.clip_sample_range.to_bits(),
            u32::from(self.thresholding),
            self.dynamic_thresholding_ratio.to_bits(),
            self.sample_max_value.to_bits(),
            self.timestep_spacing,
            self.steps_offset,
            self.trained_betas_tensor,
            u32::from(self.set_alpha_to_one),
            u32::from(self.rescale_betas_zero_snr),
        ];
        let mut out = [0u8; SCHEDULE_RECORD_BYTES];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Self {
        let w = |i: usize| u32_at(b, 4 * i);
        let f = |i: usize| f32::from_bits(w(i));
        Schedule {
            num_train_timesteps: w(0),
            beta_schedule: w(1),
            beta_start: f(2),
            beta_end: f(3),
            prediction_type: w(4),
            variance_type: w(5),
            clip_sample: w(6) != 0,
            clip_sample_range: f(7),
            thresholding: w(8) != 0,
            dynamic_thresholding_ratio: f(9),
            sample_max_value: f(10),
            timestep_spacing: w(11),
            steps_offset: w(12),
            trained_betas_tensor: w(13),
            set_alpha_to_one: w(14) != 0,
            rescale_betas_zero_snr: w(15) != 0,
        }
    }

    fn validate(b: &[u8]) -> Result<(), BlobError> {
        let bad = BlobError::BadField;
        let w = |i: usize| u32_at(b, 4 * i);
        let finite = |i: usize| f32::from_bits(w(i)).is_finite();
        if w(0) == 0 {
            return Err(bad("num_train_timesteps"));
        }
        if w(1) as usize >= Self::BETA_SCHEDULES.len() {
            return Err(bad("beta_schedule"));
        }
        if !(finite(2) && finite(3) && finite(7) && finite(9) && finite(10)) {
            return Err(bad("schedule float"));
        }
        if w(4) as usize >= Self::PREDICTION_TYPES.len() {
            return Err(bad("prediction_type"));
        }
        if w(5) as usize >= Self::VARIANCE_TYPES.len() {
            return Err(bad("variance_type"));
        }
        if w(6) > 1 || w(8) > 1 || w(14) > 1 || w(15) > 1 {
            return Err(bad("schedule flag"));
        }
        if w(11) as usize >= Self::TIMESTEP_SPACINGS.len() {
            return Err(bad("timestep_spacing"));
        }
        Ok(())
    }
}

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
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    off.checked_add(8)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// The sub-slice `off..off + len` of `b`, if it lies inside.
fn section<'a>(b: &'a [u8], off: usize, len: usize, name: &'static str) -> Result<&'a [u8], BlobError> {
    off.checked_add(len).and_then(|end| b.get(off..end)).ok_or(BlobError::BadSection(name))
}

fn table<'a>(b: &'a [u8], at: usize, record: usize, name: &'static str) -> Result<&'a [u8], BlobError> {
    let off = u32_at(b, at) as usize;
    let count = u32_at(b, at + 4) as usize;
    if off < HEADER_BYTES || !off.is_multiple_of(4) {
        return Err(BlobError::BadSection(name));
    }
    let len = count.checked_mul(record).ok_or(BlobError::BadSection(name))?;
    section(b, off, len, name)
}

impl<'a> Model<'a> {
    /// Parses and validates a blob. Any byte string yields a model or an error; nothing panics.
    ///
    /// `blob` must start at a 16-byte aligned address ([`BlobError::Misaligned`] otherwise): tensors are used
    /// in place, never copied.
    pub fn new_checked(blob: &'a [u8]) -> Result<Self, BlobError> {
        if blob.len() < HEADER_BYTES {
            return Err(if blob.len() >= 8 && blob[..8] != MAGIC { BlobError::BadMagic } else { BlobError::Truncated });
        }
        if blob[..8] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        let version = u32_at(blob, 8);
        if version != VERSION && version != VERSION_FLOAT {
            return Err(BlobError::UnsupportedVersion(version));
        }
        if u32_at(blob, 12) as usize != HEADER_BYTES {
            return Err(BlobError::BadField("header size"));
        }
        let total = u64_at(blob, 16);
        if total > blob.len() as u64 {
            return Err(BlobError::Truncated);
        }
        if total != blob.len() as u64 {
            return Err(BlobError::SizeMismatch);
        }
        if fnv1a64(&blob[32..]) != u64_at(blob, 24) {
            return Err(BlobError::ChecksumMismatch);
        }
        if !(blob.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(BlobError::Misaligned);
        }
        let reserved = if version == VERSION_FLOAT { 116 } else { 124 };
        if blob[reserved..128].iter().any(|&b| b != 0) {
            return Err(BlobError::BadField("header reserved"));
        }
        let precision = Precision::from_code(u32_at(blob, 32)).ok_or(BlobError::BadField("precision"))?;
        let family = u32_at(blob, 36);
        if family != FAMILY_UNET2D {
            return Err(BlobError::BadField("family"));
        }
        let dim = |off: usize, name: &'static str| match u32_at(blob, off) {
            0 => Err(BlobError::BadField(name)),
            v => Ok(v as usize),
        };
        let in_channels = dim(40, "in_channels")?;
        let out_channels = dim(44, "out_channels")?;
        let height = dim(48, "height")?;
        let width = dim(52, "width")?;
        let num_classes = u32_at(blob, 56);
        let arena_bytes = u32_at(blob, 60) as usize;

        let tensors = table(blob, 64, TENSOR_RECORD_BYTES, "tensors")?;
        let values = table(blob, 72, VALUE_RECORD_BYTES, "values")?;
        let ops = table(blob, 80, OP_RECORD_BYTES, "ops")?;
        let value_types = match u32_at(blob, 120) {
            0 => &[][..],
            _ => table(blob, 116, VALUE_TYPE_RECORD_BYTES, "value types")?,
        };
        if !value_types.is_empty() && value_types.len() / VALUE_TYPE_RECORD_BYTES != values.len() / VALUE_RECORD_BYTES {
            return Err(BlobError::BadSection("value types"));
        }
        let strings = table(blob, 88, 1, "strings")?;
        let sched_off = u32_at(blob, 96) as usize;
        if sched_off < HEADER_BYTES || !sched_off.is_multiple_of(4) {
            return Err(BlobError::BadSection("schedule"));
        }
        let sched = section(blob, sched_off, SCHEDULE_RECORD_BYTES, "schedule")?;
        Schedule::validate(sched)?;
        let schedule = Schedule::decode(sched);
        let config_bytes = section(strings, u32_at(blob, 108) as usize, u32_at(blob, 112) as usize, "config")?;
        let config = core::str::from_utf8(config_bytes).map_err(|_| BlobError::BadField("config"))?;

        let model = Model {
            blob,
            precision,
            family,
            in_channels,
            out_channels,
            height,
            width,
            num_classes,
            arena_bytes,
            tensors,
            values,
            value_types,
            ops,
            strings,
            schedule,
            input: u32_at(blob, 100),
            output: u32_at(blob, 104),
            config,
        };
        model.validate_tensors()?;
        model.validate_values()?;
        if schedule.beta_schedule == 4 {
            let t = model.tensor_info(schedule.trained_betas_tensor).ok_or(BlobError::BadField("trained_betas"))?;
            if t.dtype != DType::F32 || t.ndim != 1 || t.dims[0] != schedule.num_train_timesteps as usize {
                return Err(BlobError::BadField("trained_betas"));
            }
        }
        let sample = |v: u32, c: usize, name| match model.value(v) {
            Some(vi) if vi.c == c && vi.h == height && vi.w == width && vi.dtype == DType::F32 => Ok(()),
            _ => Err(BlobError::BadField(name)),
        };
        sample(model.input, in_channels, "input value")?;
        sample(model.output, out_channels, "output value")?;
        for i in 0..model.num_ops() {
            let op = Op::decode(&model.op_words(i)).ok_or(BlobError::BadOp(i as u32))?;
            program::validate(&model, &op).map_err(|()| BlobError::BadOp(i as u32))?;
        }
        Ok(model)
    }

    fn validate_tensors(&self) -> Result<(), BlobError> {
        for i in 0..self.num_tensors() {
            let bad = BlobError::BadTensor(i as u32);
            let r = &self.tensors[i * TENSOR_RECORD_BYTES..];
            let name =
                section(self.strings, u32_at(r, 0) as usize, u32_at(r, 4) as usize, "tensor name").map_err(|_| bad)?;
            core::str::from_utf8(name).map_err(|_| bad)?;
            let dtype = DType::from_code(u32_at(r, 8)).ok_or(bad)?;
            let ndim = u32_at(r, 12) as usize;
            if !(1..=4).contains(&ndim) {
                return Err(bad);
            }
            let mut numel: usize = 1;
            for d in 0..4 {
                let v = u32_at(r, 16 + 4 * d) as usize;
                if v == 0 || (d >= ndim && v != 1) {
                    return Err(bad);
                }
                numel = numel.checked_mul(v).ok_or(bad)?;
            }
            let off = u32_at(r, 32) as usize;
            let len = u32_at(r, 36) as usize;
            if !off.is_multiple_of(ALIGN) || off < HEADER_BYTES || numel.checked_mul(dtype.size()) != Some(len) {
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
            let r = &self.values[i * VALUE_RECORD_BYTES..];
            let off = u32_at(r, 0) as usize;
            let (c, h, w) = (u32_at(r, 4) as usize, u32_at(r, 8) as usize, u32_at(r, 12) as usize);
            if !off.is_multiple_of(ALIGN) || c == 0 || h == 0 || w == 0 {
                return Err(bad);
            }
            let (dtype, scale, zero) = self.value_type(i).ok_or(bad)?;
            let scale_ok = if dtype.is_quantized() { scale.is_finite() && scale > 0.0 } else { scale == 0.0 };
            let zero_ok = zero == 0 || (dtype == DType::I8 && zero.abs() <= 127);
            if dtype == DType::F16 || !scale_ok || !zero_ok {
                return Err(bad);
            }
            let end = c
                .checked_mul(h)
                .and_then(|n| n.checked_mul(w))
                .and_then(|n| n.checked_mul(dtype.size()))
                .and_then(|n| n.checked_add(off))
                .ok_or(bad)?;
            if end > self.arena_bytes {
                return Err(bad);
            }
        }
        Ok(())
    }

    /// Number of tensors.
    pub fn num_tensors(&self) -> usize {
        self.tensors.len() / TENSOR_RECORD_BYTES
    }
    /// Number of activation values.
    pub fn num_values(&self) -> usize {
        self.values.len() / VALUE_RECORD_BYTES
    }
    /// Number of ops.
    pub fn num_ops(&self) -> usize {
        self.ops.len() / OP_RECORD_BYTES
    }

    /// Shape and placement of tensor `i`.
    pub fn tensor_info(&self, i: u32) -> Option<TensorInfo<'a>> {
        let i = i as usize;
        if i >= self.num_tensors() {
            return None;
        }
        let r = &self.tensors[i * TENSOR_RECORD_BYTES..];
        let name = section(self.strings, u32_at(r, 0) as usize, u32_at(r, 4) as usize, "").ok()?;
        let dims = [0, 1, 2, 3].map(|d| u32_at(r, 16 + 4 * d) as usize);
        Some(TensorInfo {
            name: core::str::from_utf8(name).ok()?,
            dtype: DType::from_code(u32_at(r, 8))?,
            ndim: u32_at(r, 12) as usize,
            dims,
            data_off: u32_at(r, 32) as usize,
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

    /// The stored type and scale of value `i` (f32 when the blob has no value type table).
    fn value_type(&self, i: usize) -> Option<(DType, f32, i32)> {
        if self.value_types.is_empty() {
            return Some((DType::F32, 0.0, 0));
        }
        let r = self.value_types.get(i * VALUE_TYPE_RECORD_BYTES..)?;
        let word = u32_at(r, 0);
        let zero = i32::from((word >> 16) as u16 as i16);
        Some((DType::from_code(word & 0xffff)?, f32::from_bits(u32_at(r, 4)), zero))
    }

    /// Shape, type and arena placement of activation value `i`.
    pub fn value(&self, i: u32) -> Option<ValueInfo> {
        let i = i as usize;
        if i >= self.num_values() {
            return None;
        }
        let r = &self.values[i * VALUE_RECORD_BYTES..];
        let (dtype, scale, zero) = self.value_type(i)?;
        Some(ValueInfo {
            offset: u32_at(r, 0) as usize,
            c: u32_at(r, 4) as usize,
            h: u32_at(r, 8) as usize,
            w: u32_at(r, 12) as usize,
            dtype,
            scale,
            zero,
        })
    }

    fn op_words(&self, i: usize) -> [u32; 16] {
        let r = self.ops.get(i * OP_RECORD_BYTES..).unwrap_or(&[]);
        core::array::from_fn(|k| u32_at(r, 4 * k))
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
        (self.schedule.beta_schedule == 4).then(|| self.tensor(self.schedule.trained_betas_tensor)).flatten()
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
            .filter(|&i| !(self.schedule.beta_schedule == 4 && i == self.schedule.trained_betas_tensor))
            .filter_map(|i| self.tensor_info(i))
            .map(|t| t.numel() as u64)
            .sum()
    }

    /// Floating-point operations of one forward pass at batch 1 (a multiply-add counts 2).
    pub fn flops(&self) -> u64 {
        self.ops().map(|op| program::flops(self, &op)).sum()
    }
}
