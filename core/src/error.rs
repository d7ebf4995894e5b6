//! Error types: small `Copy` enums with `Display`; the host adds context.

use core::fmt;

/// Why a byte string is not a valid model blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobError {
    /// Shorter than the fixed header, or shorter than its declared size.
    Truncated,
    /// The first 8 bytes are not `DDPMBLOB`.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u32),
    /// The declared total size differs from the buffer length.
    SizeMismatch,
    /// The stored checksum does not match the contents.
    ChecksumMismatch,
    /// The blob does not start at a 16-byte aligned address (needed to view tensors in place).
    Misaligned,
    /// A section (tensor table, ops, ...) lies outside the blob or is misaligned.
    BadSection(&'static str),
    /// A field holds a value outside its allowed set.
    BadField(&'static str),
    /// Tensor number `.0` is malformed (data out of bounds, bad dtype, size mismatch).
    BadTensor(u32),
    /// Activation value number `.0` is malformed (zero size, outside the arena, misaligned).
    BadValue(u32),
    /// An op is malformed: unknown opcode, bad operand, or inconsistent shapes.
    BadOp {
        /// Its index in the program.
        index: u32,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlobError::Truncated => f.write_str("blob is truncated"),
            BlobError::BadMagic => f.write_str("not a model blob (bad magic)"),
            BlobError::UnsupportedVersion(v) => write!(f, "unsupported blob format version {v}"),
            BlobError::SizeMismatch => f.write_str("blob size does not match its header"),
            BlobError::ChecksumMismatch => f.write_str("blob checksum mismatch (corrupted file)"),
            BlobError::Misaligned => f.write_str("blob is not 16-byte aligned in memory"),
            BlobError::BadSection(s) => {
                write!(f, "blob section '{s}' is out of bounds or misaligned")
            }
            BlobError::BadField(s) => write!(f, "blob field '{s}' has an invalid value"),
            BlobError::BadTensor(i) => write!(f, "blob tensor #{i} is malformed"),
            BlobError::BadValue(i) => write!(f, "blob activation #{i} is malformed"),
            BlobError::BadOp { index, why } => write!(f, "blob op #{index} is malformed: {why}"),
        }
    }
}

/// Why a forward pass could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunError {
    /// The arena is smaller than [`crate::Model::arena_bytes`] (plus alignment slack).
    ArenaTooSmall {
        /// Bytes needed, counted from the first 16-byte aligned address of the arena.
        need: usize,
        /// Usable bytes given.
        have: usize,
    },
    /// The input or output slice does not have the model's sample size.
    BadShape {
        /// Elements expected (`channels * height * width`).
        expected: usize,
        /// Elements given.
        found: usize,
    },
    /// The model is class-conditional and no class label was given.
    ClassRequired,
    /// The model is unconditional and a class label was given.
    ClassNotSupported,
    /// The class label is not below the model's number of classes.
    ClassOutOfRange {
        /// The label given.
        class: u32,
        /// The number of classes.
        num_classes: u32,
    },
    /// The timestep is not finite.
    BadTimestep,
    /// The model looks its timestep up in a table, and the timestep is not an integer row of it.
    TimestepNotInTable {
        /// Rows of the table: the timesteps it was built for.
        rows: u32,
    },
    /// An op's operands do not fit the arena. Validation rules this out; seeing it means a bug in this crate.
    Inconsistent,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RunError::ArenaTooSmall { need, have } => {
                write!(f, "arena too small: need {need} bytes (16-byte aligned), have {have}")
            }
            RunError::BadShape { expected, found } => {
                write!(f, "sample has {found} elements, model expects {expected}")
            }
            RunError::ClassRequired => f.write_str("model is class-conditional: a class label is required"),
            RunError::ClassNotSupported => f.write_str("model is unconditional: it takes no class label"),
            RunError::ClassOutOfRange { class, num_classes } => {
                write!(f, "class label {class} out of range (model has {num_classes} classes)")
            }
            RunError::BadTimestep => f.write_str("timestep is not a finite number"),
            RunError::TimestepNotInTable { rows } => {
                write!(f, "the model takes integer timesteps 0..{rows}, as its table was built for")
            }
            RunError::Inconsistent => f.write_str("internal error: op operands do not fit the arena"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BlobError {}
#[cfg(feature = "std")]
impl std::error::Error for RunError {}
