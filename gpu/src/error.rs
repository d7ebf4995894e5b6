//! The backend's error type: every failure is a value with enough context to act on, never a panic.

use std::fmt;

use ddpm_core::sampler::SampleError;
use ddpm_core::RunError;

/// Errors of the GPU backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// No usable Vulkan device: no loader (`libvulkan.so.1`), no driver, or no device with a compute queue.
    /// The text says which, and how to get one.
    NoDevice(String),
    /// A device selector matched none of the devices; `available` lists them as [`crate::Device::list`] does.
    DeviceNotFound {
        /// The selector given.
        selector: String,
        /// The devices there are.
        available: Vec<String>,
    },
    /// The device lacks something the backend needs (a Vulkan version, a limit).
    MissingFeature(String),
    /// The model and its buffers do not fit: `need` bytes against `available` in the named memory heap.
    OutOfMemory {
        /// Which memory: "device-local" or "host-visible".
        heap: &'static str,
        /// Bytes the model needs there.
        need: u64,
        /// Bytes the largest such heap has.
        available: u64,
    },
    /// One buffer or dispatch is over a device limit.
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        need: u64,
        /// The device's limit.
        limit: u64,
    },
    /// A model or sampler option the GPU backend does not implement (the CPU path does).
    Unsupported(&'static str),
    /// The program has an op the GPU backend has no kernel for yet (the CPU runs it).
    UnsupportedOp(&'static str),
    /// An argument has the wrong size or value.
    BadInput(String),
    /// The request is invalid for this model (checked by `ddpm-core`).
    Run(RunError),
    /// The sampling request is invalid for this model (checked by `ddpm-core`).
    Sample(SampleError),
    /// `step` was called with no run started, or after its last step.
    NoRun,
    /// A Vulkan call failed; the text names the call and the driver's error.
    Vulkan(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDevice(why) => write!(f, "no Vulkan device: {why}"),
            Error::DeviceNotFound { selector, available } => {
                write!(f, "no Vulkan device matches '{selector}'; available: ")?;
                if available.is_empty() {
                    f.write_str("none")
                } else {
                    f.write_str(&available.join(", "))
                }
            }
            Error::MissingFeature(what) => write!(f, "the Vulkan device lacks {what}"),
            Error::OutOfMemory { heap, need, available } => write!(
                f,
                "the model needs {:.1} MiB of {heap} memory, the device has {:.1} MiB",
                *need as f64 / 1048576.0,
                *available as f64 / 1048576.0
            ),
            Error::TooLarge { what, need, limit } => write!(f, "{what} is {need}, over the device limit {limit}"),
            Error::Unsupported(what) => write!(f, "not supported by the GPU backend: {what}"),
            Error::UnsupportedOp(op) => {
                write!(f, "not supported by the GPU backend: the {op} op (this model runs on the CPU backend)")
            }
            Error::BadInput(what) => f.write_str(what),
            Error::Run(e) => write!(f, "{e}"),
            Error::Sample(e) => write!(f, "{e}"),
            Error::NoRun => f.write_str("no sampling run in progress (call start first, or the run is finished)"),
            Error::Vulkan(what) => write!(f, "Vulkan: {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        Error::Run(e)
    }
}

impl From<SampleError> for Error {
    fn from(e: SampleError) -> Self {
        match e {
            SampleError::Run(r) => Error::Run(r),
            other => Error::Sample(other),
        }
    }
}

/// An error and its sources, as one line (vulkano's `Validated` says only "a non-validation error occurred"
/// and keeps the driver's error as its source).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Maps a vulkano error to [`Error::Vulkan`] with the name of the failing call.
pub(crate) fn vk<E: std::error::Error>(call: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Vulkan(format!("{call}: {}", chain(&e)))
}
