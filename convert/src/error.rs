//! The converter's error type: what kind of thing went wrong, and where.

use std::fmt;
use std::path::{Path, PathBuf};

use ddpm_core::BlobError;

/// Why a conversion failed. The kind says whose problem it is (a file, a config, the checkpoint's fit to the
/// model family); [`ConvertError::Context`] layers say where, outermost first, as `Display` prints them.
#[derive(Debug)]
pub enum ConvertError {
    /// A file or folder could not be read or written.
    Io {
        /// The path, when one is known.
        path: Option<PathBuf>,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A checkpoint or array file is malformed, or uses something the restricted readers refuse.
    Checkpoint(String),
    /// A model or scheduler config (a JSON file or a `--set` option) is malformed or asks for an option the
    /// engine does not support.
    Config(String),
    /// The checkpoint's tensors do not fit the model family and config: missing, unused or unsupported.
    Model(String),
    /// A tensor of the checkpoint has another shape than the config implies.
    Shape {
        /// The tensor's state-dict name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// int8 calibration or quantization failed.
    Quantize(String),
    /// The converter produced a blob its own validator refuses (a converter bug), or a blob field overflowed.
    Blob(String),
    /// An error with the place it happened (a file, a tensor, an option).
    Context {
        /// Where.
        context: String,
        /// What.
        source: Box<ConvertError>,
    },
}

/// The converter's result type.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

impl ConvertError {
    /// The innermost error, under every [`ConvertError::Context`] layer.
    pub fn root(&self) -> &ConvertError {
        match self {
            ConvertError::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ConvertError::Io { path: Some(path.to_path_buf()), source }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Io { path: Some(p), source } => write!(f, "{}: {source}", p.display()),
            ConvertError::Io { path: None, source } => write!(f, "{source}"),
            ConvertError::Checkpoint(m)
            | ConvertError::Config(m)
            | ConvertError::Model(m)
            | ConvertError::Quantize(m)
            | ConvertError::Blob(m) => f.write_str(m),
            ConvertError::Shape { tensor, expected, found } => {
                write!(f, "tensor {tensor}: expected {expected:?}, found {found:?}")
            }
            ConvertError::Context { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

// `Display` already prints every layer, so `source` stays `None`: a reporter that walks the chain (anyhow's
// `{:#}`) then prints each layer once.
impl std::error::Error for ConvertError {}

impl From<std::io::Error> for ConvertError {
    fn from(source: std::io::Error) -> Self {
        ConvertError::Io { path: None, source }
    }
}

impl From<BlobError> for ConvertError {
    fn from(e: BlobError) -> Self {
        ConvertError::Blob(format!("invalid blob: {e}"))
    }
}

impl From<serde_json::Error> for ConvertError {
    fn from(e: serde_json::Error) -> Self {
        ConvertError::Config(e.to_string())
    }
}

/// Adds the place an error happened, as `anyhow::Context` does, keeping its kind.
pub trait Context<T> {
    /// Wraps the error with `context`.
    fn context<C: fmt::Display>(self, context: C) -> Result<T>;
    /// Wraps the error with the context `f` makes (only called on error).
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<ConvertError>> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| ConvertError::Context { context: context.to_string(), source: Box::new(e.into()) })
    }
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| ConvertError::Context { context: f().to_string(), source: Box::new(e.into()) })
    }
}

/// `err!(Kind, "format", args...)`: a [`ConvertError::Kind`] with a formatted message.
#[macro_export]
#[doc(hidden)]
macro_rules! err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::ConvertError::$kind(format!($($arg)*))
    };
}

/// `bail!(Kind, "format", args...)`: returns a [`ConvertError::Kind`] with a formatted message.
#[macro_export]
#[doc(hidden)]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::err!($kind, $($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_layers_print_outermost_first_and_keep_the_kind() {
        let inner: Result<()> =
            Err(ConvertError::Shape { tensor: "conv.weight".into(), expected: vec![4], found: vec![3] });
        let e = inner.context("loading m.pt").unwrap_err();
        assert_eq!(e.to_string(), "loading m.pt: tensor conv.weight: expected [4], found [3]");
        assert!(matches!(e.root(), ConvertError::Shape { .. }));
        let io: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("disk"));
        assert!(matches!(io.context("x").unwrap_err().root(), ConvertError::Io { .. }));
    }
}
