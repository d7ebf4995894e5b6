//! The host side of ddpm-rs: checkpoint readers, the converter, image output. The `host-cli` binary is a thin
//! front end over these modules; the integration tests use them directly.

pub mod backend;
pub mod bench;
pub mod blobfile;
pub mod compare;
pub mod convert;
pub mod image;
pub mod load;
pub mod sample;
