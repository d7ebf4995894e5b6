//! f16 blobs: matrices and convolution kernels (tensors of two or more dimensions) are stored as IEEE half,
//! rounded to nearest even once at convert time; biases, norm parameters and every other 1-D tensor stay f32,
//! and the executor accumulates in f32. Activations stay f32.

use ddpm_core::format::{DType, Precision};

use crate::graph::{Data, Tensor};

/// Whether a float tensor of these dimensions is stored as f16 in an f16 blob.
pub fn is_f16_tensor(dims: &[usize]) -> bool {
    dims.len() >= 2
}

/// The element type tensor `t` is stored with in a blob of `precision`.
pub fn stored_dtype(precision: Precision, t: &Tensor) -> DType {
    match t.data {
        Data::F32(_) if precision == Precision::F16 && is_f16_tensor(&t.dims) => DType::F16,
        Data::F32(_) => DType::F32,
        Data::I8(_) => DType::I8,
        Data::I16(_) => DType::I16,
        Data::I32(_) => DType::I32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_float_matrices_of_an_f16_blob_become_f16() {
        let t = |dims: Vec<usize>, data: Data| Tensor { name: "t".into(), dims, data };
        let kernel = t(vec![2, 1, 1, 1], Data::F32(vec![0.0; 2]));
        let bias = t(vec![2], Data::F32(vec![0.0; 2]));
        let q = t(vec![2, 1], Data::I8(vec![0; 2]));
        assert_eq!(stored_dtype(Precision::F16, &kernel), DType::F16);
        assert_eq!(stored_dtype(Precision::F16, &bias), DType::F32);
        assert_eq!(stored_dtype(Precision::F32, &kernel), DType::F32);
        assert_eq!(stored_dtype(Precision::Int8, &q), DType::I8);
    }
}
