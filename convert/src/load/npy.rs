//! NumPy `.npy` arrays (format versions 1.0, 2.0 and 3.0).
//!
//! Layout: magic `\x93NUMPY`, major and minor version bytes, a little-endian header
//! length (u16 for 1.x, u32 for 2.x/3.x), an ASCII (UTF-8 for 3.x) Python dict literal
//! such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with
//! spaces and a newline, then the raw array data.

use super::FloatKind;
use crate::error::{Context as _, Result};
use crate::{bail, err};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads an `.npy` file; see [`super::read_npy`].
pub(crate) fn read_npy_file(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// Parses `.npy` bytes held in memory.
pub(crate) fn parse_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        bail!(Checkpoint, "not a .npy file (bad magic)");
    }
    let major = bytes[6];
    let (header_len, header_start): (usize, usize) = match major {
        1 => {
            let b = bytes.get(8..10).ok_or_else(|| err!(Checkpoint, "truncated .npy header"))?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), 10)
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(|| err!(Checkpoint, "truncated .npy header"))?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (usize::try_from(n).map_err(|_| err!(Checkpoint, "header too large"))?, 12)
        }
        v => bail!(Checkpoint, "unsupported .npy format version {v}.{}", bytes[7]),
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| err!(Checkpoint, "truncated .npy header"))?;
    let header =
        std::str::from_utf8(&bytes[header_start..header_end]).map_err(|_| err!(Checkpoint, "non-text .npy header"))?;
    let h = parse_header(header)?;
    if h.fortran_order {
        bail!(Checkpoint, "Fortran-order .npy arrays are not supported (save a C-contiguous array)");
    }
    let kind = match h.descr.as_str() {
        "<f4" => FloatKind::F32,
        "<f8" => FloatKind::F64,
        "<f2" => FloatKind::F16,
        d if d.starts_with('>') => bail!(Checkpoint, "big-endian .npy data ({d}) is not supported"),
        d => bail!(Checkpoint, "unsupported .npy dtype {d:?} (expected little-endian float32, float64 or float16)"),
    };
    let numel = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err!(Checkpoint, "shape {:?} overflows", h.shape))?;
    let data = &bytes[header_end..];
    if numel.checked_mul(kind.size()) != Some(data.len()) {
        bail!(
            Checkpoint,
            "shape {:?} of {} needs {numel} elements but the file holds {} data bytes",
            h.shape,
            h.descr,
            data.len()
        );
    }
    Ok((h.shape, kind.decode_all(data)))
}

/// The fields of an `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A parsed header value.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Minimal parser for the Python dict literal in an `.npy` header.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            bail!(Checkpoint, "malformed .npy header: expected '{}' at byte {}", c as char, self.i)
        }
    }

    fn string(&mut self) -> Result<String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => bail!(Checkpoint, "malformed .npy header: expected a string at byte {}", self.i),
        };
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            bail!(Checkpoint, "malformed .npy header: unterminated string");
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(out)
    }

    fn word(&mut self) -> &'a [u8] {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn value(&mut self) -> Result<Lit> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Lit::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        break;
                    }
                    let w = self.word();
                    let digits = w.strip_suffix(b"L").unwrap_or(w);
                    let d = std::str::from_utf8(digits)
                        .ok()
                        .filter(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
                        .and_then(|d| d.parse::<usize>().ok())
                        .ok_or_else(|| err!(Checkpoint, "malformed .npy header: bad dimension at byte {}", self.i))?;
                    dims.push(d);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Lit::Tuple(dims))
            }
            _ => match self.word() {
                b"True" => Ok(Lit::Bool(true)),
                b"False" => Ok(Lit::Bool(false)),
                _ => bail!(Checkpoint, "malformed .npy header: unexpected value at byte {}", self.i),
            },
        }
    }
}

/// Parses `{'descr': ..., 'fortran_order': ..., 'shape': (...), }`.
fn parse_header(s: &str) -> Result<Header> {
    let mut c = Cursor { s: s.as_bytes(), i: 0 };
    c.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if c.eat(b'}') {
            break;
        }
        let key = c.string()?;
        c.expect(b':')?;
        let v = c.value()?;
        match (key.as_str(), v) {
            ("descr", Lit::Str(d)) => descr = Some(d),
            ("fortran_order", Lit::Bool(b)) => fortran = Some(b),
            ("shape", Lit::Tuple(t)) => shape = Some(t),
            (k, v) => bail!(Checkpoint, "malformed .npy header: unexpected {k:?}: {v:?}"),
        }
        if !c.eat(b',') {
            c.expect(b'}')?;
            break;
        }
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header { descr, fortran_order, shape }),
        _ => bail!(Checkpoint, "malformed .npy header: missing descr, fortran_order or shape"),
    }
}

/// Encodes a float32 array as `.npy` version 1.0 bytes.
pub(crate) fn encode_npy(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if numel != Some(data.len()) {
        bail!(Checkpoint, "shape {shape:?} does not match {} data elements", data.len());
    }
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // magic(6) + version(2) + length(2) + header + '\n' must be a multiple of 64.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len =
        u16::try_from(header.len()).map_err(|_| err!(Checkpoint, "too many dimensions for an .npy v1.0 header"))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

/// Writes an `.npy` file; see [`super::write_npy`].
pub(crate) fn write_npy_file(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes = encode_npy(shape, data)?;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&bytes).and_then(|_| f.flush()).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/load")
    }

    #[test]
    fn round_trip_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<usize>, Vec<f32>)> = vec![
            (vec![2, 3], vec![0.0, 1.5, -2.0, f32::MAX, f32::MIN_POSITIVE, -0.0]),
            (vec![4], vec![1.0, 2.0, 3.0, 4.0]),
            (vec![], vec![42.0]),
            (vec![0, 7], vec![]),
            (vec![1, 1, 1, 1, 1, 1, 1, 2], vec![f32::INFINITY, f32::NEG_INFINITY]),
        ];
        for (i, (shape, data)) in cases.into_iter().enumerate() {
            let p = tmp.path().join(format!("a{i}.npy"));
            super::super::write_npy(&p, &shape, &data).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let header_total = 10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
            assert_eq!(header_total % 64, 0);
            assert_eq!(bytes[header_total - 1], b'\n');
            let (s, d) = super::super::read_npy(&p).unwrap();
            assert_eq!((s, d), (shape, data));
        }
        // NaN survives bit-exactly.
        let p = tmp.path().join("nan.npy");
        super::super::write_npy(&p, &[1], &[f32::NAN]).unwrap();
        assert!(super::super::read_npy(&p).unwrap().1[0].is_nan());
    }

    #[test]
    fn write_rejects_shape_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(super::super::write_npy(&tmp.path().join("x.npy"), &[2, 2], &[1.0]).is_err());
        assert!(super::super::write_npy(&tmp.path().join("y.npy"), &[usize::MAX, 2], &[]).is_err());
    }

    #[test]
    fn header_formats() {
        let b = encode_npy(&[2, 3], &[0.0; 6]).unwrap();
        assert!(b[10..].starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        let h = parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }   \n").unwrap();
        assert_eq!(h, Header { descr: "<f4".into(), fortran_order: false, shape: vec![2, 3] });
        let h = parse_header("{\"shape\": (5L,), \"fortran_order\": True, \"descr\": \"<f8\"}").unwrap();
        assert_eq!(h, Header { descr: "<f8".into(), fortran_order: true, shape: vec![5] });
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': ()}").unwrap().shape,
            Vec::<usize>::new()
        );
        for bad in ["", "{", "{'descr': '<f4'", "{'shape': (1,2", "{'shape': (-1,)}", "{'descr': 3}", "{'x': True}"] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_unsupported_and_truncated() {
        let good = encode_npy(&[3], &[1.0, 2.0, 3.0]).unwrap();
        for n in 0..good.len() {
            assert!(parse_npy(&good[..n]).is_err(), "prefix {n}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(parse_npy(&extra).is_err());
        // In-place header edits keep the header length unchanged.
        let mut b = good.clone();
        let pos = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[pos] = b'>';
        assert!(format!("{:#}", parse_npy(&b).unwrap_err()).contains("big-endian"));
        b[pos..pos + 3].copy_from_slice(b"<i4");
        assert!(parse_npy(&b).is_err());
        let mut b = good.clone();
        let pos = b.windows(5).position(|w| w == b"False").unwrap();
        b[pos..pos + 5].copy_from_slice(b"True ");
        assert!(format!("{:#}", parse_npy(&b).unwrap_err()).contains("Fortran"));
        let mut b = good.clone();
        b[6] = 9;
        assert!(parse_npy(&b).is_err());
        // Huge shape in the header does not allocate.
        let mut b = good.clone();
        let pos = b.windows(4).position(|w| w == b"(3,)").unwrap();
        b[pos..pos + 4].copy_from_slice(b"(9,)");
        assert!(parse_npy(&b).is_err());
    }

    #[test]
    fn fixtures_from_make_py() {
        let (s, d) = read_npy_file(&dir().join("f32_2x3.npy")).unwrap();
        assert_eq!((s, d), (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.5]));
        let (s, d) = read_npy_file(&dir().join("f64_v2.npy")).unwrap();
        assert_eq!((s, d), (vec![3], vec![0.5, -1.0, 1e-3f64 as f32]));
        let (s, d) = read_npy_file(&dir().join("f16_scalar.npy")).unwrap();
        assert_eq!((s, d), (vec![], vec![-2.5]));
        // The writer's output is byte-identical to numpy's (recorded by make.py from a
        // struct-built reference that follows numpy's header layout).
        let want = std::fs::read(dir().join("f32_2x3.npy")).unwrap();
        assert_eq!(encode_npy(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]).unwrap(), want);
    }
}
