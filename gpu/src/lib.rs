//! Vulkan compute backend for `ddpm-core` models.
//!
//! This crate is a skeleton: the device backend lands with its own issue. The API already exists so that
//! callers can be written against it; every entry point returns [`Error::NotImplemented`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use core::fmt;

/// Errors of the GPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The GPU backend is not implemented yet.
    NotImplemented,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotImplemented => f.write_str("the Vulkan backend is not implemented yet"),
        }
    }
}

impl std::error::Error for Error {}

/// Checks that a model can run on the GPU backend.
pub fn check_model(_model: &ddpm_core::Model<'_>) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
