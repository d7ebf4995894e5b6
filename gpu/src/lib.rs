//! Vulkan compute backend for `ddpm-core` models: the same blob, the same ops and the same noise stream,
//! on a GPU (or on Mesa's lavapipe, a Vulkan driver that runs on the CPU).
//!
//! The layers, bottom up:
//!
//! - `shaders/*.comp` (GLSL, compiled to SPIR-V by `build.rs` with `glslangValidator`): one compute kernel
//!   per float op of [`ddpm_core::program::Op`], the ops of imported ONNX graphs included (attention in three
//!   phases plus the shared dense-layer kernel, which also runs `LinearRows`), the Philox4x32-10 noise stream of
//!   [`ddpm_core::rng`], and the DDPM/DDIM update.
//! - `kernels`: the pipelines of the kernels a model uses, over one shared layout (one descriptor set of seven
//!   storage buffers, 96 bytes of push constants for each kernel's offsets and sizes).
//! - `plan`: the blob's program lowered to a list of dispatches, once per model and batch size.
//! - [`Device`]: picks a Vulkan device (by index or name) and owns its queue and allocators.
//! - [`GpuModel`]: uploads the weights once (the blob itself: f16 tensors stay f16 in device memory and are
//!   unpacked in the shaders, so no 16-bit storage feature is needed), allocates one forward arena per batch
//!   element from the blob's memory plan, and records the forward pass, a sampling step and the noise draw
//!   as command buffers once. [`GpuModel::forward`] runs the network; [`GpuModel::start`] /
//!   [`GpuModel::step`] / [`GpuModel::samples`] (or [`GpuModel::sample`]) run the sampler with no data
//!   crossing to the host between steps: the step index, the timestep and the per-step scalars live in
//!   device buffers.
//!
//! What is computed on the host and uploaded: the timestep embeddings (with `ddpm-core`'s own function, so
//! they are bit-identical, for every training timestep at start-up) and the per-step scalars (ᾱ_t, posterior
//! coefficients, σ_t), with the CPU sampler's exact f32 operations. Imported graphs' timestep and class tables
//! are read on the device at the integer timestep (the forward pass and every run refuse one the tables do not
//! hold, as the CPU does) and the class. What runs on the device with its own `exp`/`log`/`sqrt`/`sin`/`cos`:
//! SiLU, softmax, group and layer norm, the pointwise maps of imported graphs (`erf` is libm's algorithm, `tanh`,
//! `log1p` and `pow` written to follow libm's) and the Box–Muller transform of the noise, so results differ from
//! the CPU in the last bits; the tests bound the difference. Data movement (permutations, slices, padding,
//! nearest resizing with the CPU's coordinate rounding, pooling maxima, tables) is exact.
//!
//! Not supported (clear errors, before any work): DPM-Solver++ and dynamic thresholding in the sampler, and int8
//! blobs ([`Error::Unsupported`]; the int8 ops have no shaders, [`Error::UnsupportedOp`]).
//!
//! # Use
//!
//! ```no_run
//! use ddpm_core::sampler::{Method, SampleSpec};
//! use ddpm_gpu::{Device, GpuModel};
//!
//! fn run(model: &ddpm_core::Model<'_>) -> Result<Vec<f32>, ddpm_gpu::Error> {
//!     let device = Device::new(None)?; // or Some("1"), Some("nvidia"): see Device::list()
//!     let mut gpu = GpuModel::new(&device, model, 4)?; // batch of 4
//!     let spec = SampleSpec { method: Method::Ddim { eta: 0.0 }, steps: 50, batch: 4, seed: 42, class: None, first_image: 0 };
//!     gpu.sample(spec, None, &mut |done, total| eprint!("\rstep {done}/{total}"))
//! }
//! ```
//!
//! Every failure is an [`Error`], never a panic: no Vulkan loader or device ([`Error::NoDevice`]), a model
//! that does not fit ([`Error::OutOfMemory`], checked against the heap sizes before allocating), a device
//! limit ([`Error::TooLarge`]).
#![deny(missing_docs)]

mod device;
mod error;
mod kernels;
mod model;
mod plan;
mod sample;

pub use device::Device;
pub use error::Error;
pub use model::GpuModel;
