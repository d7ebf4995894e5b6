//! The host side of ddpm-rs behind the `host-cli` binary: sampling to images, comparisons, benchmarks and
//! backend selection, over `ddpm-convert` (checkpoints to blobs) and `ddpm-core` (the engine). The integration
//! tests use these modules directly.

pub mod backend;
pub mod bench;
pub mod blobfile;
pub mod compare;
pub mod image;
pub mod sample;
