//! The 40-byte tensor record.

use super::{read_pair, read_u32, write_pair, write_u32, DType};

/// Size of one tensor record.
pub const RECORD_BYTES: usize = field::DATA.end;

/// Where each field of a tensor record lives.
pub mod field {
    use crate::format::Field;

    /// Name: offset and length within the string section.
    pub const NAME: Field = 0..8;
    /// [`crate::format::DType`] code.
    pub const DTYPE: Field = 8..12;
    /// Number of meaningful dimensions (1..=4).
    pub const NDIM: Field = 12..16;
    /// Four u32 dimensions; unused trailing ones are 1.
    pub const DIMS: Field = 16..32;
    /// Data: offset in the blob and length in bytes.
    pub const DATA: Field = 32..40;
}

/// A tensor record's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorRecord {
    /// Name within the string section: `(offset, length)`.
    pub name: (u32, u32),
    /// Element type.
    pub dtype: DType,
    /// Number of meaningful dimensions.
    pub ndim: u32,
    /// Dimensions.
    pub dims: [u32; 4],
    /// Data in the blob: `(offset, length in bytes)`.
    pub data: (u32, u32),
}

impl TensorRecord {
    /// Parses one record (`r` at least [`RECORD_BYTES`] long); `None` for an unknown dtype. Dimensions, data
    /// placement and the name are checked against the blob by [`crate::Model::new_checked`].
    pub fn parse(r: &[u8]) -> Option<TensorRecord> {
        let dim = |d: usize| read_u32(r, field::DIMS.start + 4 * d..field::DIMS.start + 4 * d + 4);
        Some(TensorRecord {
            name: read_pair(r, field::NAME),
            dtype: DType::from_code(read_u32(r, field::DTYPE))?,
            ndim: read_u32(r, field::NDIM),
            dims: [dim(0), dim(1), dim(2), dim(3)],
            data: read_pair(r, field::DATA),
        })
    }

    /// Writes the record into `r` (at least [`RECORD_BYTES`] long).
    pub fn emit(&self, r: &mut [u8]) {
        write_pair(r, field::NAME, self.name);
        write_u32(r, field::DTYPE, self.dtype.code());
        write_u32(r, field::NDIM, self.ndim);
        for (d, &v) in self.dims.iter().enumerate() {
            write_u32(r, field::DIMS.start + 4 * d..field::DIMS.start + 4 * d + 4, v);
        }
        write_pair(r, field::DATA, self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_parse_round_trips_and_refuses_a_bad_dtype() {
        let t = TensorRecord { name: (7, 9), dtype: DType::I16, ndim: 2, dims: [3, 5, 1, 1], data: (4096, 30) };
        let mut r = [0u8; RECORD_BYTES];
        t.emit(&mut r);
        assert_eq!(TensorRecord::parse(&r), Some(t));
        r[field::DTYPE.start] = 5;
        assert_eq!(TensorRecord::parse(&r), None);
    }
}
