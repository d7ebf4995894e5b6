//! Network ops: free functions over slices, output first, one file each.
//!
//! Float ops: weights come as `&[W]` with `W:` [`Weight`] (`f32` or `f16`), activations are `f32`, and every
//! sum accumulates in `f32`. The integer kernels of int8 programs are their siblings in `int8/`, with the same
//! file names (`int8/conv2d.rs` beside `conv2d.rs`, and so on) and the shared integer types in `int8/mod.rs`.
//! The data-movement kernels (permutation, slices, axis concatenation, padding, max pooling, nearest-neighbour
//! resizing) are generic over the element, [`Elem`]: `f32`, or the `i8`/`i16` codes of a quantized value, which
//! they copy as they are (so a quantized value keeps its scale and zero point through them).
//! Shapes are stated in a comment above each function; callers pass slices of exactly those lengths (the
//! executor derives them from a validated blob).

mod attention;
mod axis;
mod conv2d;
mod conv_transpose;
mod elementwise;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod fast;
mod group_norm;
mod int8;
mod layer_norm;
mod linear;
mod matmul;
mod permute;
mod pointwise;
mod pool;
mod reduce;
mod resample;
mod softmax;
mod timestep;

pub use attention::{attention_core, attention_fast, attention_output, attention_project};
pub use axis::{concat_axis, slice_axis};
pub use conv2d::{conv2d, conv2d_pad, conv2d_using, conv_out_len, Conv2dShape};
pub use conv_transpose::{conv_transpose2d, ConvTransposeShape};
pub use elementwise::{add_assign_scaled, add_channel, affine, scale_assign, scale_shift, silu};
pub use group_norm::{group_norm, group_norm_using};
#[cfg(feature = "std")]
pub use int8::PackedWeights;
pub use int8::{
    dequantize, qadd, qclass_embed, qconv2d, qconv2d_using, qcopy, qgroup_norm, qlut, qpool2d_average, qscale_shift,
    qsdpa, quantize, rq, PackSlot, QAttention, QElem, QMut, QNorm, QRef, Src,
};
pub use layer_norm::layer_norm;
pub use linear::{dot, linear_rows, linear_rows_using};
pub use matmul::{matmul, MatMulShape};
pub use permute::{permute, PERMUTE_DIMS};
pub use pointwise::{binary, unary, BinaryFn, Broadcast, Operand, UnaryFn};
pub use pool::{pad2d, pad_code, pool2d, pool2d_max, PadMode, PoolFn, PoolShape};
pub use reduce::{reduce, ReduceFn};
pub use resample::{resize, resize_mode, resize_nearest, upsample2x_nearest, ResizeCoord, ResizeSample};
pub use softmax::softmax;
pub use timestep::timestep_embedding;

/// Which kernels the CPU forward pass runs ([`crate::Model::with_kernels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// With the `std` feature on an x86-64 CPU with AVX2+FMA or AVX-512F, the kernels of that instruction set
    /// where one applies (chosen at run time). Float kernels use fused multiply-adds, so they are within
    /// rounding of the portable kernels (1e-5 × max|ref| per layer, tested); the integer convolution (AVX-512
    /// VNNI or AVX2) sums exactly, so int8 programs give the portable kernels' bits. Everywhere else the
    /// portable kernels. The same bits for any thread count on one machine.
    #[default]
    Fast,
    /// The portable kernels only: the same bits on every machine and target, the firmware's included.
    Exact,
}

/// An activation element the data-movement kernels copy unchanged: `f32`, or an `i8`/`i16` code.
pub trait Elem: Copy + PartialEq + Send + Sync + core::fmt::Debug + 'static {
    /// The lowest element, where a running maximum starts.
    const LOWEST: Self;
    /// The larger of two elements (for `f32`, `f32::max`: a NaN loses to a number).
    fn larger(self, other: Self) -> Self;
}

impl Elem for f32 {
    const LOWEST: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn larger(self, other: Self) -> Self {
        f32::max(self, other)
    }
}

impl Elem for i8 {
    const LOWEST: Self = i8::MIN;
    #[inline(always)]
    fn larger(self, other: Self) -> Self {
        Ord::max(self, other)
    }
}

impl Elem for i16 {
    const LOWEST: Self = i16::MIN;
    #[inline(always)]
    fn larger(self, other: Self) -> Self {
        Ord::max(self, other)
    }
}

/// A stored weight element, widened to `f32` for arithmetic.
pub trait Weight: Copy + Send + Sync + 'static {
    /// Whether [`Weight::to_f32`] does work (kernels then convert once into a buffer instead of per use).
    const CONVERTS: bool;
    /// The value as `f32`.
    fn to_f32(self) -> f32;
    /// `dst[i] = src[i].to_f32()` for the common length (the same values, vectorised where it can be).
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
    }
    /// The weights as `f32` in place, where they are stored as `f32`.
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        let _ = src;
        None
    }
    /// The weights as `f16`, where they are stored as `f16`.
    fn as_f16(src: &[Self]) -> Option<&[half::f16]> {
        let _ = src;
        None
    }
}

impl Weight for f32 {
    const CONVERTS: bool = false;

    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Weight for half::f16 {
    const CONVERTS: bool = true;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }

    fn widen(src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(&src[..n], &mut dst[..n]);
    }

    fn as_f16(src: &[Self]) -> Option<&[half::f16]> {
        Some(src)
    }
}
