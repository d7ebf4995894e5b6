//! The 8-byte value type record (format version 2).

use super::{read_u32, write_u32, DType};

/// Size of one value type record.
pub const RECORD_BYTES: usize = field::SCALE.end;

/// Where each field of a value type record lives.
pub mod field {
    use crate::format::Field;

    /// [`crate::format::DType`] code, u16.
    pub const DTYPE: Field = 0..2;
    /// Zero point, i16.
    pub const ZERO: Field = 2..4;
    /// Scale, f32.
    pub const SCALE: Field = 4..8;
}

/// A value type record's contents: `q` stands for `(q − zero) × scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueTypeRecord {
    /// Element type.
    pub dtype: DType,
    /// Zero point.
    pub zero: i16,
    /// Scale (0 for f32 and i32 values).
    pub scale: f32,
}

impl ValueTypeRecord {
    /// Parses one record (`r` at least [`RECORD_BYTES`] long); `None` for an unknown dtype.
    pub fn parse(r: &[u8]) -> Option<ValueTypeRecord> {
        let b = |i: usize| r.get(i).copied().unwrap_or(0);
        let dtype = u16::from_le_bytes([b(field::DTYPE.start), b(field::DTYPE.start + 1)]);
        let zero = i16::from_le_bytes([b(field::ZERO.start), b(field::ZERO.start + 1)]);
        Some(ValueTypeRecord {
            dtype: DType::from_code(u32::from(dtype))?,
            zero,
            scale: f32::from_bits(read_u32(r, field::SCALE)),
        })
    }

    /// Writes the record into `r`.
    pub fn emit(&self, r: &mut [u8]) {
        r[field::DTYPE].copy_from_slice(&(self.dtype.code() as u16).to_le_bytes());
        r[field::ZERO].copy_from_slice(&self.zero.to_le_bytes());
        write_u32(r, field::SCALE, self.scale.to_bits());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_parse_round_trips_and_refuses_a_bad_dtype() {
        let v = ValueTypeRecord { dtype: DType::I8, zero: -37, scale: 0.0125 };
        let mut r = [0u8; RECORD_BYTES];
        v.emit(&mut r);
        assert_eq!(ValueTypeRecord::parse(&r), Some(v));
        r[field::DTYPE.start] = 9;
        assert_eq!(ValueTypeRecord::parse(&r), None);
    }
}
