//! Reading blobs into aligned memory and writing them atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

pub use ddpm_convert::aligned::{arena, AlignedBlob};

/// Reads a blob file straight into aligned memory.
pub fn read(path: &Path) -> Result<AlignedBlob> {
    // The error names the path: "cannot read PATH: reason".
    AlignedBlob::read(path).map_err(|e| anyhow!("cannot read {e}"))
}

/// The model `sample` and `inspect` use when none is named: the MNIST DDPM shipped in `weights/mnist/`
/// (f32), compiled into the binary so that it works from any directory.
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../weights/mnist/mnist-f32.blob");

/// Reads `path`, or the built-in default model when `path` is `None`.
pub fn read_or_default(path: Option<&Path>) -> Result<AlignedBlob> {
    match path {
        Some(p) => read(p),
        None => Ok(AlignedBlob::from_bytes(DEFAULT_MODEL)),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so that a failed run leaves no
/// partial file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write into {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    // Temporary files are created private (0600); the result is an ordinary file (0644).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}
