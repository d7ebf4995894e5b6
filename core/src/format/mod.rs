//! The model blob format: every field declared once, read by the parser ([`crate::Model::new_checked`]) and
//! written by the emitters here (`ddpm-convert` writes blobs only through them).
//!
//! Each record type has a `field` module of byte ranges (as smoltcp's `wire` modules do), a plain `Repr`
//! struct, `parse` (from bytes; structural checks only) and `emit` (into bytes). Cross-record checks (a tensor's
//! data inside the blob, an op's operands) belong to [`crate::Model::new_checked`].
//!
//! # Layout, format versions 1 and 2
//!
//! Everything is little-endian. Offsets are in bytes from the start of the blob; the blob must sit at a
//! 16-byte aligned address so that tensors can be viewed in place. Sizes are `u32`, so a blob is < 4 GiB.
//! Version 2 adds the value type table (header bytes 116..124) for quantized programs; a blob without one is
//! written as version 1, which older readers understand. This reader accepts both.
//!
//! ## Header (128 bytes, [`header::field`])
//! | bytes | type | field |
//! |------:|------|-------|
//! | 0..8     | `[u8; 8]` | magic `DDPMBLOB` |
//! | 8..12    | u32 | format version (1 or 2) |
//! | 12..16   | u32 | header size (128) |
//! | 16..24   | u64 | total blob size in bytes |
//! | 24..32   | u64 | FNV-1a 64 checksum of bytes `32..total` ([`checksum`]) |
//! | 32..36   | u32 | precision of the weights ([`Precision`]: 0 = f32, 1 = f16, 2 = int8) |
//! | 36..40   | u32 | model family: 1 = a UNet program ([`FAMILY_UNET2D`]) |
//! | 40..44   | u32 | in_channels |
//! | 44..48   | u32 | out_channels |
//! | 48..52   | u32 | sample height |
//! | 52..56   | u32 | sample width |
//! | 56..60   | u32 | number of classes (0 = unconditional) |
//! | 60..64   | u32 | forward arena bytes at batch 1 (the memory plan; see below) |
//! | 64..72   | u32, u32 | tensor table: offset, count ([`tensor`] records, 40 bytes) |
//! | 72..80   | u32, u32 | activation value table: offset, count ([`value`] records, 16 bytes) |
//! | 80..88   | u32, u32 | op table: offset, count (64-byte records, [`crate::program`]) |
//! | 88..96   | u32, u32 | string section: offset, length (UTF-8; tensor names and the config JSON) |
//! | 96..100  | u32 | schedule record offset ([`schedule`], 64 bytes) |
//! | 100..104 | u32 | input value index (`in_channels × height × width`) |
//! | 104..108 | u32 | output value index (`out_channels × height × width`) |
//! | 108..116 | u32, u32 | source config JSON: offset, length within the string section |
//! | 116..124 | u32, u32 | value type table: offset, count ([`value_type`] records, 8 bytes; version 2; count 0 or the value count); zero in version 1 |
//! | 124..128 | 4 bytes | reserved, zero |
//!
//! ## Tensor record (40 bytes, [`tensor::field`])
//! `name` (u32 offset, u32 length within the string section), `dtype` u32 ([`DType`] code: 0 = f32, 1 = f16,
//! 2 = i8, 3 = i16, 4 = i32), `ndim` u32 (1..=4), `dims` `[u32; 4]` (unused trailing dims are 1), `data`
//! (u32 offset, u32 length). Data is 16-byte aligned and `length = product(dims) × size_of(dtype)`. In an f16
//! blob, matrices and convolution kernels are f16; biases and norm parameters (1-D tensors) stay f32. In an
//! int8 blob, kernels are i8 with one scale per output channel, folded with the activation scales into i32
//! requantization tables (see [`crate::program`]); biases are i32; norm parameters stay f32.
//!
//! ## Activation value record (16 bytes, [`value::field`])
//! `arena_off u32, c u32, h u32, w u32`: a tensor `(c, h, w)` at byte `arena_off` (16-byte aligned) of the
//! forward arena. The converter plans these offsets by liveness; values whose lifetimes do not overlap share
//! memory. Every value must fit within the arena size stated in the header.
//!
//! ## Value type record (8 bytes, version 2, [`value_type::field`])
//! `dtype u16, zero i16, scale f32`, one per value in value order. dtype: 0 = f32, 2 = i8, 3 = i16, 4 = i32
//! (scratch). An i8/i16 value `q` stands for the real number `(q − zero) × scale` (`scale` finite and > 0;
//! `zero` in ±127, non-zero only for i8 values and only where the ops reading them allow it: the converter
//! gives one to post-SiLU activations that only convolutions read, whose range is nearly one-sided); for f32
//! and i32 values `scale` and `zero` are 0. Integer values belong to int8 blobs only. Without the table every
//! value is f32.
//!
//! ## Schedule record (64 bytes, [`schedule::field`])
//! diffusers' scheduler options, one little-endian word each: `num_train_timesteps`, `beta_schedule`
//! ([`BetaSchedule`]), `beta_start`, `beta_end`, `prediction_type` ([`PredictionType`]), `variance_type`
//! ([`VarianceType`]), `clip_sample`, `clip_sample_range`, `thresholding`, `dynamic_thresholding_ratio`,
//! `sample_max_value`, `timestep_spacing` ([`TimestepSpacing`]), `steps_offset`, the index of the trained-betas
//! tensor (read only when `beta_schedule` is `trained_betas`), `set_alpha_to_one` (DDIM), and
//! `rescale_betas_zero_snr` (Lin et al. 2024, Algorithm 1). Flags are 0 or 1; floats are f32 bit patterns.
//!
//! ## Memory plan
//! The forward arena holds every activation value of one sample; the executor runs the samples of a batch one
//! after another in the same arena, so the forward arena does not grow with the batch size. The caller's arena
//! must hold `arena_bytes` from its first 16-byte aligned address ([`crate::Model::arena_bytes_unaligned`]
//! adds the worst-case slack). The sampler's own state follows it ([`crate::sampler::sampler_arena_bytes`]).

pub mod checksum;
pub mod header;
pub mod schedule;
pub mod tensor;
pub mod value;
pub mod value_type;

pub use checksum::fnv1a64;
pub use header::Header;
pub use schedule::{BetaSchedule, PredictionType, Schedule, TimestepSpacing, VarianceType};
pub use tensor::TensorRecord;
pub use value::ValueRecord;
pub use value_type::ValueTypeRecord;

/// A field: the byte range it occupies within its record.
pub type Field = core::ops::Range<usize>;

/// The 8 bytes every blob starts with.
pub const MAGIC: [u8; 8] = *b"DDPMBLOB";
/// The format version this build writes for quantized programs (it reads 1 and 2).
pub const VERSION: u32 = 2;
/// The format version of a blob without a value type table (every value f32).
pub const VERSION_FLOAT: u32 = 1;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = header::field::RESERVED.end;
/// Size of one op record: sixteen u32 words (see [`crate::program`]).
pub const OP_RECORD_BYTES: usize = 64;
/// Words in one op record.
pub const OP_WORDS: usize = OP_RECORD_BYTES / 4;
/// Alignment of tensor data in the blob and of values in the arena.
pub const ALIGN: usize = 16;
/// Model family code of a UNet program (diffusers `UNet2DModel` and every family lowered to the same ops).
pub const FAMILY_UNET2D: u32 = 1;

/// Reads the little-endian `u32` at `field` (0 when the field lies outside `b`, which parsers check first).
pub const fn read_u32(b: &[u8], field: Field) -> u32 {
    let o = field.start;
    if b.len() < o + 4 {
        return 0;
    }
    b[o] as u32 | (b[o + 1] as u32) << 8 | (b[o + 2] as u32) << 16 | (b[o + 3] as u32) << 24
}

/// Reads the little-endian `u64` at `field` (0 when it lies outside `b`).
pub fn read_u64(b: &[u8], field: Field) -> u64 {
    b.get(field.start..field.start + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Reads the `f32` whose bit pattern is at `field`.
pub fn read_f32(b: &[u8], field: Field) -> f32 {
    f32::from_bits(read_u32(b, field))
}

/// Writes `v` little-endian at `field`. `b` must hold the field (emitters size their buffers first).
pub fn write_u32(b: &mut [u8], field: Field, v: u32) {
    b[field.start..field.start + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` little-endian at `field`.
pub fn write_u64(b: &mut [u8], field: Field, v: u64) {
    b[field.start..field.start + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the bit pattern of `v` at `field`.
pub fn write_f32(b: &mut [u8], field: Field, v: f32) {
    write_u32(b, field, v.to_bits());
}

/// The `(offset, count)` pair of a table field, read as two u32 words.
pub fn read_pair(b: &[u8], field: Field) -> (u32, u32) {
    (read_u32(b, field.start..field.start + 4), read_u32(b, field.start + 4..field.end))
}

/// Writes an `(offset, count)` pair.
pub fn write_pair(b: &mut [u8], field: Field, (off, count): (u32, u32)) {
    write_u32(b, field.start..field.start + 4, off);
    write_u32(b, field.start + 4..field.end, count);
}

/// Element type of a stored tensor or activation value.
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
    /// The code stored in tensor and value type records.
    pub const fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::I8 => 2,
            DType::I16 => 3,
            DType::I32 => 4,
        }
    }
    /// Decodes a dtype code.
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
