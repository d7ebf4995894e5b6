//! `.safetensors` files: a JSON header followed by raw little-endian tensor data.
//!
//! Parsing and validation of the header (offsets, sizes, overlaps) is done by the
//! `safetensors` crate; this module converts float tensors to `f32` and skips the rest.

use super::{FloatKind, StateDict, Tensor};
use crate::error::{Context as _, Result};
use crate::{bail, err};
use ::safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Loads a `.safetensors` file; see [`super::load_safetensors`].
pub(crate) fn load_safetensors_file(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    load_safetensors_bytes(&bytes).with_context(|| format!("loading {}", path.display()))
}

/// Loads safetensors data held in memory.
pub(crate) fn load_safetensors_bytes(bytes: &[u8]) -> Result<StateDict> {
    if bytes.is_empty() {
        bail!(Checkpoint, "empty file: not a safetensors file");
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| err!(Checkpoint, "not a valid safetensors file: {e:?}"))?;
    let mut out = StateDict::default();
    for (name, view) in st.iter() {
        let kind = match view.dtype() {
            Dtype::F32 => FloatKind::F32,
            Dtype::F16 => FloatKind::F16,
            Dtype::BF16 => FloatKind::BF16,
            Dtype::F64 => FloatKind::F64,
            _ => continue,
        };
        let shape = view.shape().to_vec();
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err!(Checkpoint, "tensor '{name}': shape {shape:?} overflows"))?;
        let data = view.data();
        if numel.checked_mul(kind.size()) != Some(data.len()) {
            bail!(Checkpoint, "tensor '{name}': {} data bytes for shape {shape:?}", data.len());
        }
        out.tensors.insert(name.to_owned(), Tensor { shape, data: kind.decode_all(data) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a safetensors file by hand: `(name, dtype, shape, bytes)`.
    fn build(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut h = serde_json::to_vec(&header).unwrap();
        while h.len() & 7 != 0 {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn converts_floats_and_skips_ints() {
        let f16: Vec<u8> =
            [1.0f32, -0.5].iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect();
        let bf16: Vec<u8> = [2.0f32].iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect();
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b = build(&[
            ("a", "F32", &[2, 2], f32s),
            ("h", "F16", &[2], f16),
            ("b", "BF16", &[], bf16),
            ("d", "F64", &[1], 0.25f64.to_le_bytes().to_vec()),
            ("i", "I64", &[1], 5i64.to_le_bytes().to_vec()),
            ("z", "F32", &[0, 3], vec![]),
        ]);
        let sd = load_safetensors_bytes(&b).unwrap();
        assert_eq!(sd.get("a").unwrap(), &Tensor { shape: vec![2, 2], data: vec![1., 2., 3., 4.] });
        assert_eq!(sd.get("h").unwrap().data, vec![1.0, -0.5]);
        assert_eq!(sd.get("b").unwrap(), &Tensor { shape: vec![], data: vec![2.0] });
        assert_eq!(sd.get("d").unwrap().data, vec![0.25]);
        assert_eq!(sd.get("z").unwrap().shape, vec![0, 3]);
        assert!(sd.get("i").is_none());
    }

    #[test]
    fn garbage_and_truncations_error() {
        assert!(load_safetensors_bytes(b"").is_err());
        assert!(load_safetensors_bytes(b"hello").is_err());
        let f32s: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let good = build(&[("a", "F32", &[2], f32s)]);
        assert!(load_safetensors_bytes(&good).is_ok());
        for n in 0..good.len() {
            assert!(load_safetensors_bytes(&good[..n]).is_err(), "prefix {n}");
        }
        // Huge declared header length.
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(load_safetensors_bytes(&b).is_err());
    }

    #[test]
    fn fixture_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/load/mixed.safetensors");
        let sd = super::super::load_safetensors(&path).unwrap();
        assert_eq!(sd.get("f32").unwrap(), &Tensor { shape: vec![2, 3], data: vec![0., 1., 2., 3., 4., 5.] });
        assert_eq!(sd.get("f16").unwrap(), &Tensor { shape: vec![3], data: vec![0.5, -1.0, 65504.0] });
        assert_eq!(sd.get("bf16").unwrap(), &Tensor { shape: vec![2], data: vec![1.0, -3.0] });
        assert_eq!(sd.get("f64").unwrap(), &Tensor { shape: vec![], data: vec![0.125] });
        assert!(sd.get("i64").is_none());
        assert_eq!(sd.len(), 4);
    }
}
