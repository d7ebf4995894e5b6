//! The 16-byte activation value record.

use super::{read_u32, write_u32};

/// Size of one value record.
pub const RECORD_BYTES: usize = field::W.end;

/// Where each field of a value record lives.
pub mod field {
    use crate::format::Field;

    /// Byte offset in the forward arena (16-byte aligned).
    pub const ARENA_OFF: Field = 0..4;
    /// Channels.
    pub const C: Field = 4..8;
    /// Height.
    pub const H: Field = 8..12;
    /// Width.
    pub const W: Field = 12..16;
}

/// A value record's contents: a tensor `(c, h, w)` at `arena_off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueRecord {
    /// Byte offset in the forward arena.
    pub arena_off: u32,
    /// Channels.
    pub c: u32,
    /// Height.
    pub h: u32,
    /// Width.
    pub w: u32,
}

impl ValueRecord {
    /// Parses one record (`r` at least [`RECORD_BYTES`] long).
    pub fn parse(r: &[u8]) -> ValueRecord {
        ValueRecord {
            arena_off: read_u32(r, field::ARENA_OFF),
            c: read_u32(r, field::C),
            h: read_u32(r, field::H),
            w: read_u32(r, field::W),
        }
    }

    /// Writes the record into `r`.
    pub fn emit(&self, r: &mut [u8]) {
        write_u32(r, field::ARENA_OFF, self.arena_off);
        write_u32(r, field::C, self.c);
        write_u32(r, field::H, self.h);
        write_u32(r, field::W, self.w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_then_parse_round_trips() {
        let v = ValueRecord { arena_off: 1024, c: 64, h: 7, w: 9 };
        let mut r = [0u8; RECORD_BYTES];
        v.emit(&mut r);
        assert_eq!(ValueRecord::parse(&r), v);
    }
}
