//! `ddpm-core`: a `no_std`, heap-free engine for DDPM image generation.
//!
//! The layers, bottom up:
//!
//! - [`ops`]: free functions over slices (convolution, group norm, attention, ...), one file each: the float
//!   kernels generic over the weight element type (`f32` or `f16`) and accumulating in `f32`; the int8 kernels
//!   (`ops/quant.rs`) over i8/i16 activations with i32 accumulation and integer requantization.
//! - [`blob`]: the weight blob, the one contract between the host converter and the target. It is parsed and
//!   validated once by [`Model::new_checked`]; after that nothing reads out of bounds or panics.
//! - [`program`]: the network description inside the blob: a flat list of [`program::Op`]s over activation
//!   values whose places in the caller's arena were planned at convert time. A new model family is converter
//!   work (emit a program), not a new executor.
//! - [`Model::forward`]: runs the program for one sample in one caller-provided arena of
//!   [`Model::arena_bytes`] bytes.
//!
//! With the `std` feature, ops split their work across cores with rayon. Each output element is always computed
//! by one thread in one fixed order, so results are bit-identical whatever the thread count.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod blob;
mod checksum;
mod error;
mod forward;
pub mod ops;
mod par;
pub mod program;
pub mod rng;
pub mod sampler;
pub mod schedule;

pub use blob::{DType, Model, Precision, Schedule, TensorView};
pub use checksum::fnv1a64;
pub use error::{BlobError, RunError};
