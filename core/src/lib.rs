//! `ddpm-core`: a `no_std`, heap-free engine for DDPM image generation.
//!
//! The layers, bottom up:
//!
//! - [`format`]: the model blob, the one contract between the host converter and the target. Every field is
//!   declared once there and read by the parser and written by the emitters from that declaration.
//! - [`program`]: the network description inside the blob: one op table from which [`program::Op`], its
//!   encoding and its operand lists are derived. Ops run over activation values whose places in the caller's
//!   arena were planned at convert time. A new model family is converter work (emit a program), not a new
//!   executor.
//! - [`Model`] ([`model`]): a blob parsed and validated once by [`Model::new_checked`]; after that nothing reads
//!   out of bounds or panics.
//! - [`ops`]: free functions over slices (convolution, group norm, attention, ...), one file each: the float
//!   kernels generic over the weight element type (`f32` or `f16`) and accumulating in `f32`; the int8 kernels
//!   over i8/i16 activations with i32 accumulation and integer requantization; the data-movement kernels
//!   (permutation, slices, padding, pooling, resizing) generic over the activation element, f32 or i8/i16.
//! - `exec`: [`Model::forward`] runs the program for one sample in one caller-provided arena of
//!   [`Model::arena_bytes`] bytes.
//! - [`sampler`]: the schedule ([`sampler::schedule`]) and the DDPM/DDIM samplers, step by step with their
//!   state in the arena; [`rng`]: the counter-based noise every backend draws.
//!
//! With the `std` feature, ops split their work across cores with rayon. Each output element is always computed
//! by one thread in one fixed order, so results are bit-identical whatever the thread count. `std` also brings
//! the fast kernels ([`Kernels::Fast`], the default; `ops/fast.rs` and `ops/int8/fast.rs`): on x86-64 with
//! AVX2+FMA or AVX-512F, chosen at run time, register-blocked fused-multiply-add kernels for convolution,
//! attention, group norm and one-row linear layers, within rounding of the portable kernels, and for int8
//! programs integer kernels (AVX-512 VNNI, AVX2) with exactly the portable kernels' results. [`Kernels::Exact`]
//! (and every build without `std`) runs the portable kernels, which give the same bits on every target.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
// Allowed in three modules only: `ops/fast.rs` and `ops/int8/fast.rs` (feature `std`, x86-64 SIMD kernels) and
// `ops/int8/dsp.rs` (the Cortex-M4's DSP instructions).
#![deny(unsafe_code)]

mod error;
mod exec;
pub mod format;
pub mod model;
pub mod ops;
mod par;
pub mod program;
pub mod rng;
pub mod sampler;

pub use error::{BlobError, RunError};
pub use format::{fnv1a64, DType, Precision, Schedule};
#[cfg(feature = "std")]
pub use model::Prepacked;
pub use model::{Model, TensorView};
pub use ops::Kernels;
