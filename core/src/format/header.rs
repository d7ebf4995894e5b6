//! The 128-byte blob header.

use super::{
    checksum, read_pair, read_u32, read_u64, write_pair, write_u32, write_u64, Precision, ALIGN, FAMILY_UNET2D,
    HEADER_BYTES, MAGIC, VERSION, VERSION_FLOAT,
};
use crate::error::BlobError;

/// Where each header field lives.
pub mod field {
    use crate::format::Field;

    /// `DDPMBLOB`.
    pub const MAGIC: Field = 0..8;
    /// Format version.
    pub const VERSION: Field = 8..12;
    /// Header size (128).
    pub const HEADER_SIZE: Field = 12..16;
    /// Total blob size, u64.
    pub const TOTAL: Field = 16..24;
    /// FNV-1a 64 of bytes `CHECKSUMMED..total`, u64.
    pub const CHECKSUM: Field = 24..32;
    /// Where the checksummed bytes start.
    pub const CHECKSUMMED: usize = 32;
    /// Weight precision code.
    pub const PRECISION: Field = 32..36;
    /// Model family code.
    pub const FAMILY: Field = 36..40;
    /// Input channels.
    pub const IN_CHANNELS: Field = 40..44;
    /// Output channels.
    pub const OUT_CHANNELS: Field = 44..48;
    /// Sample height.
    pub const HEIGHT: Field = 48..52;
    /// Sample width.
    pub const WIDTH: Field = 52..56;
    /// Number of classes.
    pub const NUM_CLASSES: Field = 56..60;
    /// Forward arena bytes.
    pub const ARENA_BYTES: Field = 60..64;
    /// Tensor table offset and count.
    pub const TENSORS: Field = 64..72;
    /// Activation value table offset and count.
    pub const VALUES: Field = 72..80;
    /// Op table offset and count.
    pub const OPS: Field = 80..88;
    /// String section offset and length.
    pub const STRINGS: Field = 88..96;
    /// Schedule record offset.
    pub const SCHEDULE: Field = 96..100;
    /// Input value index.
    pub const INPUT: Field = 100..104;
    /// Output value index.
    pub const OUTPUT: Field = 104..108;
    /// Config JSON offset and length within the string section.
    pub const CONFIG: Field = 108..116;
    /// Value type table offset and count (version 2).
    pub const VALUE_TYPES: Field = 116..124;
    /// Reserved, zero.
    pub const RESERVED: Field = 124..128;
}

/// The header's contents. Tables are `(offset, count)` pairs; the string section and the config are
/// `(offset, length)` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version: [`VERSION_FLOAT`] without a value type table, [`VERSION`] with one.
    pub version: u32,
    /// Total blob size in bytes.
    pub total: u64,
    /// Weight precision.
    pub precision: Precision,
    /// Model family code ([`FAMILY_UNET2D`]).
    pub family: u32,
    /// Input channels (> 0).
    pub in_channels: u32,
    /// Output channels (> 0).
    pub out_channels: u32,
    /// Sample height (> 0).
    pub height: u32,
    /// Sample width (> 0).
    pub width: u32,
    /// Number of class labels (0 = unconditional).
    pub num_classes: u32,
    /// Forward arena bytes at batch 1.
    pub arena_bytes: u32,
    /// Tensor table.
    pub tensors: (u32, u32),
    /// Activation value table.
    pub values: (u32, u32),
    /// Op table.
    pub ops: (u32, u32),
    /// String section.
    pub strings: (u32, u32),
    /// Schedule record offset.
    pub schedule: u32,
    /// Input value index.
    pub input: u32,
    /// Output value index.
    pub output: u32,
    /// Config JSON within the string section.
    pub config: (u32, u32),
    /// Value type table (`(0, 0)` in version 1).
    pub value_types: (u32, u32),
}

impl Header {
    /// Parses and checks the header of `blob` (the whole blob: the header states its size and checksum): magic,
    /// version, header size, total size, checksum, the blob's alignment in memory, reserved bytes, precision,
    /// family and the sample dimensions. Tables are checked by [`crate::Model::new_checked`].
    pub fn parse(blob: &[u8]) -> Result<Header, BlobError> {
        if blob.len() < HEADER_BYTES {
            let magic_ok = blob.len() < MAGIC.len() || blob[field::MAGIC] == MAGIC;
            return Err(if magic_ok { BlobError::Truncated } else { BlobError::BadMagic });
        }
        if blob[field::MAGIC] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        let version = read_u32(blob, field::VERSION);
        if version != VERSION && version != VERSION_FLOAT {
            return Err(BlobError::UnsupportedVersion(version));
        }
        if read_u32(blob, field::HEADER_SIZE) as usize != HEADER_BYTES {
            return Err(BlobError::BadField("header size"));
        }
        let total = read_u64(blob, field::TOTAL);
        if total > blob.len() as u64 {
            return Err(BlobError::Truncated);
        }
        if total != blob.len() as u64 {
            return Err(BlobError::SizeMismatch);
        }
        if checksum::fnv1a64(&blob[field::CHECKSUMMED..]) != read_u64(blob, field::CHECKSUM) {
            return Err(BlobError::ChecksumMismatch);
        }
        if !(blob.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(BlobError::Misaligned);
        }
        // Version 1 has no value type table: its bytes are reserved too.
        let reserved = if version == VERSION_FLOAT { field::VALUE_TYPES.start } else { field::RESERVED.start };
        if blob[reserved..HEADER_BYTES].iter().any(|&b| b != 0) {
            return Err(BlobError::BadField("header reserved"));
        }
        let precision =
            Precision::from_code(read_u32(blob, field::PRECISION)).ok_or(BlobError::BadField("precision"))?;
        let family = read_u32(blob, field::FAMILY);
        if family != FAMILY_UNET2D {
            return Err(BlobError::BadField("family"));
        }
        let dim = |f, name| match read_u32(blob, f) {
            0 => Err(BlobError::BadField(name)),
            v => Ok(v),
        };
        Ok(Header {
            version,
            total,
            precision,
            family,
            in_channels: dim(field::IN_CHANNELS, "in_channels")?,
            out_channels: dim(field::OUT_CHANNELS, "out_channels")?,
            height: dim(field::HEIGHT, "height")?,
            width: dim(field::WIDTH, "width")?,
            num_classes: read_u32(blob, field::NUM_CLASSES),
            arena_bytes: read_u32(blob, field::ARENA_BYTES),
            tensors: read_pair(blob, field::TENSORS),
            values: read_pair(blob, field::VALUES),
            ops: read_pair(blob, field::OPS),
            strings: read_pair(blob, field::STRINGS),
            schedule: read_u32(blob, field::SCHEDULE),
            input: read_u32(blob, field::INPUT),
            output: read_u32(blob, field::OUTPUT),
            config: read_pair(blob, field::CONFIG),
            value_types: read_pair(blob, field::VALUE_TYPES),
        })
    }

    /// Writes the header into the first [`HEADER_BYTES`] of `blob` (at least that long), checksum zero; call
    /// [`seal`] once the rest of the blob is written.
    pub fn emit(&self, blob: &mut [u8]) {
        blob[field::MAGIC].copy_from_slice(&MAGIC);
        write_u32(blob, field::VERSION, self.version);
        write_u32(blob, field::HEADER_SIZE, HEADER_BYTES as u32);
        write_u64(blob, field::TOTAL, self.total);
        write_u64(blob, field::CHECKSUM, 0);
        write_u32(blob, field::PRECISION, self.precision.code());
        write_u32(blob, field::FAMILY, self.family);
        write_u32(blob, field::IN_CHANNELS, self.in_channels);
        write_u32(blob, field::OUT_CHANNELS, self.out_channels);
        write_u32(blob, field::HEIGHT, self.height);
        write_u32(blob, field::WIDTH, self.width);
        write_u32(blob, field::NUM_CLASSES, self.num_classes);
        write_u32(blob, field::ARENA_BYTES, self.arena_bytes);
        write_pair(blob, field::TENSORS, self.tensors);
        write_pair(blob, field::VALUES, self.values);
        write_pair(blob, field::OPS, self.ops);
        write_pair(blob, field::STRINGS, self.strings);
        write_u32(blob, field::SCHEDULE, self.schedule);
        write_u32(blob, field::INPUT, self.input);
        write_u32(blob, field::OUTPUT, self.output);
        write_pair(blob, field::CONFIG, self.config);
        write_pair(blob, field::VALUE_TYPES, self.value_types);
        blob[field::RESERVED].fill(0);
    }
}

/// Stores the checksum of a fully written blob.
pub fn seal(blob: &mut [u8]) {
    let sum = checksum::fnv1a64(&blob[field::CHECKSUMMED..]);
    write_u64(blob, field::CHECKSUM, sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header-only blob in 16-byte aligned memory.
    struct Aligned([u128; HEADER_BYTES / 16]);

    fn sample() -> Header {
        Header {
            version: VERSION,
            total: HEADER_BYTES as u64,
            precision: Precision::Int8,
            family: FAMILY_UNET2D,
            in_channels: 1,
            out_channels: 2,
            height: 28,
            width: 30,
            num_classes: 10,
            arena_bytes: 4096,
            tensors: (128, 3),
            values: (248, 4),
            ops: (312, 5),
            strings: (632, 17),
            schedule: 700,
            input: 0,
            output: 3,
            config: (5, 12),
            value_types: (800, 4),
        }
    }

    fn emitted(h: &Header) -> Aligned {
        let mut a = Aligned([0; HEADER_BYTES / 16]);
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut a.0);
        h.emit(b);
        seal(b);
        a
    }

    #[test]
    fn emit_then_parse_round_trips() {
        for h in [sample(), Header { version: VERSION_FLOAT, value_types: (0, 0), ..sample() }] {
            let a = emitted(&h);
            assert_eq!(Header::parse(bytemuck::cast_slice(&a.0)), Ok(h));
        }
    }

    #[test]
    fn each_checked_field_refuses_corruption() {
        // (field start, value written, error). The checksum is recomputed so that the field itself is judged.
        let cases: [(usize, u32, BlobError); 9] = [
            (field::MAGIC.start, 0, BlobError::BadMagic),
            (field::VERSION.start, 3, BlobError::UnsupportedVersion(3)),
            (field::HEADER_SIZE.start, 64, BlobError::BadField("header size")),
            (field::TOTAL.start, 129, BlobError::Truncated),
            (field::TOTAL.start, 127, BlobError::SizeMismatch),
            (field::PRECISION.start, 3, BlobError::BadField("precision")),
            (field::FAMILY.start, 2, BlobError::BadField("family")),
            (field::HEIGHT.start, 0, BlobError::BadField("height")),
            (field::RESERVED.start, 1, BlobError::BadField("header reserved")),
        ];
        for (at, v, want) in cases {
            let mut a = emitted(&sample());
            let b: &mut [u8] = bytemuck::cast_slice_mut(&mut a.0);
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            seal(b);
            assert_eq!(Header::parse(b), Err(want), "field at {at}");
        }
        // Version 1 reserves the value type table's bytes.
        let mut a = emitted(&Header { version: VERSION_FLOAT, ..sample() });
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut a.0);
        seal(b);
        assert_eq!(Header::parse(b), Err(BlobError::BadField("header reserved")));
        // Any flipped checksummed byte.
        let mut a = emitted(&sample());
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut a.0);
        b[field::ARENA_BYTES.start] ^= 1;
        assert_eq!(Header::parse(b), Err(BlobError::ChecksumMismatch));
        // Too short.
        assert_eq!(
            Header::parse(&bytemuck::cast_slice::<u128, u8>(&emitted(&sample()).0)[..100]),
            Err(BlobError::Truncated)
        );
    }
}
