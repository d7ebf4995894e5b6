//! Checkpoint and array readers.
//!
//! * [`load_torch`]: `torch.save` zip archives (`.pt`, `.pth`, `.bin`, `.ckpt`), read with a
//!   restricted unpickler that never executes anything (module `pickle`);
//! * [`load_safetensors`]: `.safetensors` files;
//! * [`read_npy`] / [`write_npy`]: NumPy `.npy` arrays.
//!
//! Each reader also takes bytes held in memory ([`load_torch_bytes`], [`load_safetensors_bytes`], [`parse_npy`],
//! and [`unpickle_bytes`] for a bare pickle stream); the path readers are these plus the file read.
//!
//! Every reader converts float tensors (f32, f16, bf16, f64) to row-major `f32`.
//! Non-float tensors (integer step counters, `num_batches_tracked`, masks) are skipped.

mod npy;
mod pickle;
mod safetensors;
mod torch_zip;

use std::collections::BTreeMap;
use std::path::Path;

/// A float tensor, row-major contiguous, converted to f32 from f32/f16/bf16/f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions; empty for a zero-dimensional (scalar) tensor.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements in row-major order.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors in file order-independent sorted map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    /// Tensors by parameter name (e.g. `"down.0.conv.weight"`).
    pub tensors: BTreeMap<String, Tensor>,
}

impl StateDict {
    /// Looks up a tensor by name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Load a torch.save zip file (.pt/.pth/.bin/.ckpt).
///
/// `key`: if `Some(k)`, the state dict is the dict found under top-level key `k`; dotted paths
/// like `"ema.model"` descend nested dicts, and keys may contain dots themselves (`"ema.0.999"`
/// finds `ckpt["ema"]["0.999"]`: at each level the longest matching run of parts wins).
/// If `None`: a top-level dict whose values are all tensors is used as is; otherwise the first
/// of `"ema"`, `"ema_model"`, `"state_dict"`, `"model"`, `"model_state_dict"`, `"module"`,
/// `"net"` holding a dict of tensors (plain scalars alongside are tolerated) is used, then the
/// same names one level further down (e.g. `model.state_dict`), then a top-level dict mixing
/// tensors and scalars. Returns the state dict and a sentence saying what was used, e.g.
/// `"state dict under top-level key 'ema' (other keys: 'model', 'step')"` or
/// `"top-level state dict"`. Errors name the available keys when nothing fits.
///
/// The pickle is interpreted by a restricted reader that only understands tensors and plain
/// containers: any other global (e.g. `os.system`, a user class) is an error, and nothing in
/// the file is ever executed.
pub fn load_torch(path: &Path, key: Option<&str>) -> crate::error::Result<(StateDict, String)> {
    torch_zip::load_torch_file(path, key)
}

/// Load a .safetensors file (f32/f16/bf16/f64 tensors; integer and bool tensors are skipped).
pub fn load_safetensors(path: &Path) -> crate::error::Result<StateDict> {
    safetensors::load_safetensors_file(path)
}

/// Read a little-endian float32 (or float64/float16, converted) C-order .npy file
/// (format versions 1.0, 2.0 and 3.0).
pub fn read_npy(path: &Path) -> crate::error::Result<(Vec<usize>, Vec<f32>)> {
    npy::read_npy_file(path)
}

/// Write a float32 little-endian C-order .npy (version 1.0), header padded per the NPY spec
/// (total header length multiple of 64).
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> crate::error::Result<()> {
    npy::write_npy_file(path, shape, data)
}

/// Loads a `torch.save` zip archive held in memory; `key` and the result are as for [`load_torch`].
pub fn load_torch_bytes(bytes: &[u8], key: Option<&str>) -> crate::error::Result<(StateDict, String)> {
    torch_zip::load_torch_reader(std::io::Cursor::new(bytes), key)
}

/// Parses a bare pickle stream (e.g. the `data.pkl` of a `torch.save` archive) with the restricted
/// unpickler that [`load_torch`] uses: nothing is executed, any global outside its allow-list is an error.
/// Returns the object graph (an arena of objects and the root value); storages are only referenced, not
/// read.
pub fn unpickle_bytes(bytes: &[u8]) -> crate::error::Result<pickle::Pickle> {
    pickle::unpickle(bytes)
}

/// Loads `.safetensors` data held in memory; see [`load_safetensors`].
pub fn load_safetensors_bytes(bytes: &[u8]) -> crate::error::Result<StateDict> {
    safetensors::load_safetensors_bytes(bytes)
}

/// Parses `.npy` bytes held in memory; see [`read_npy`]. Returns the shape and the row-major f32 data.
pub fn parse_npy(bytes: &[u8]) -> crate::error::Result<(Vec<usize>, Vec<f32>)> {
    npy::parse_npy(bytes)
}

/// Float element encodings shared by the readers (all little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FloatKind {
    F32,
    F16,
    BF16,
    F64,
}

impl FloatKind {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            FloatKind::F32 => 4,
            FloatKind::F16 | FloatKind::BF16 => 2,
            FloatKind::F64 => 8,
        }
    }

    /// Decoder for one element; the slice is exactly [`FloatKind::size`] bytes long.
    pub(crate) fn decoder(self) -> fn(&[u8]) -> f32 {
        fn f32le(b: &[u8]) -> f32 {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        fn f16le(b: &[u8]) -> f32 {
            half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
        }
        fn bf16le(b: &[u8]) -> f32 {
            half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
        }
        fn f64le(b: &[u8]) -> f32 {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        match self {
            FloatKind::F32 => f32le,
            FloatKind::F16 => f16le,
            FloatKind::BF16 => bf16le,
            FloatKind::F64 => f64le,
        }
    }

    /// Decodes a packed little-endian buffer (its length must be a multiple of the element size;
    /// a trailing partial element is ignored).
    pub(crate) fn decode_all(self, bytes: &[u8]) -> Vec<f32> {
        let f = self.decoder();
        bytes.chunks_exact(self.size()).map(f).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_kinds_decode() {
        assert_eq!(FloatKind::F32.decode_all(&1.5f32.to_le_bytes()), vec![1.5]);
        assert_eq!(FloatKind::F64.decode_all(&(-2.25f64).to_le_bytes()), vec![-2.25]);
        assert_eq!(FloatKind::F16.decode_all(&half::f16::from_f32(0.5).to_bits().to_le_bytes()), vec![0.5]);
        assert_eq!(FloatKind::BF16.decode_all(&half::bf16::from_f32(3.0).to_bits().to_le_bytes()), vec![3.0]);
        assert!(FloatKind::F32.decode_all(&[1, 2, 3]).is_empty());
    }
}
