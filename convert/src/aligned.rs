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

    /// Reads a blob file straight into aligned memory (one copy of the blob in memory, not two).
    pub fn read(path: &std::path::Path) -> crate::Result<Self> {
        Self::read_file(path).map_err(|e| crate::ConvertError::io(path, e))
    }

    fn read_file(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large for memory"))?;
        let mut words = vec![0u128; len.div_ceil(16)];
        file.read_exact(&mut bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..len])?;
        // A file that grew while being read is read again by the caller, not truncated silently.
        if file.read(&mut [0u8; 1])? != 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file changed while being read"));
        }
        Ok(AlignedBlob { words, len })
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
