//! Blob bytes in 16-byte aligned memory, as [`ddpm_core::Model::new_checked`] requires.

use ddpm_core::{BlobError, Model};

/// A blob in 16-byte aligned memory (a `Vec<u8>` is only 1-byte aligned in principle).
pub struct AlignedBlob {
    words: Vec<u128>,
    len: usize,
}

impl AlignedBlob {
    /// Copies `bytes` into aligned memory.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        AlignedBlob { words, len: bytes.len() }
    }

    /// Reads a blob file.
    pub fn read(path: &std::path::Path) -> crate::Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| crate::ConvertError::io(path, e))?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The blob's bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.words)[..self.len]
    }

    /// Parses and validates the blob, exactly as a target would.
    pub fn model(&self) -> Result<Model<'_>, BlobError> {
        Model::new_checked(self.bytes())
    }
}

/// A 16-byte aligned arena of at least `bytes` bytes.
pub fn arena(bytes: usize) -> Vec<u128> {
    vec![0u128; bytes.div_ceil(16)]
}
