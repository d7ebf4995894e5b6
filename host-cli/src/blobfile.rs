//! Reading blobs into aligned memory and writing them atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ddpm_core::Model;

/// A blob in 16-byte aligned memory (a `Vec<u8>` is only 1-byte aligned in principle).
pub struct AlignedBlob {
    words: Vec<u128>,
    len: usize,
}

impl AlignedBlob {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        AlignedBlob { words, len: bytes.len() }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self::from_bytes(&bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.words)[..self.len]
    }

    pub fn model(&self) -> Result<Model<'_>> {
        Model::new_checked(self.bytes()).map_err(|e| anyhow!("{e}"))
    }
}

/// The model `sample` and `inspect` use when none is named: the MNIST DDPM shipped in `weights/mnist/`
/// (f32), compiled into the binary so that it works from any directory.
pub const DEFAULT_MODEL: &[u8] = include_bytes!("../../weights/mnist/mnist-f32.blob");

/// Reads `path`, or the built-in default model when `path` is `None`.
pub fn read_or_default(path: Option<&Path>) -> Result<AlignedBlob> {
    match path {
        Some(p) => AlignedBlob::read(p),
        None => Ok(AlignedBlob::from_bytes(DEFAULT_MODEL)),
    }
}

/// Validates blob bytes exactly as a target would.
pub fn check(blob: &[u8]) -> Result<()> {
    AlignedBlob::from_bytes(blob).model().map(|_| ())
}

/// A 16-byte aligned arena of at least `bytes` bytes.
pub fn arena(bytes: usize) -> Vec<u128> {
    vec![0u128; bytes.div_ceil(16)]
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
