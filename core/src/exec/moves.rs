//! Data-movement ops (nearest ×2 upsampling, permutation, slices, axis concatenation, padding, pooling,
//! resizing, and `Affine` as a reshape of a quantized value): one op code for every activation type. f32 values run the float kernels; the i8/i16 codes of a
//! quantized value run the same generic kernels (copies, maxima) and keep the value's scale and zero point, as
//! validated; only average pooling of codes and bilinear resizing are arithmetic of their own.

use super::{carve, cast, cast_mut, Exec};
use crate::error::RunError;
use crate::format::DType;
use crate::model::ValueInfo;
use crate::ops::{self, Elem};
use crate::program::Op;

/// Runs `$body` with `$t` naming the element type of `$dtype` (f32, i8 or i16).
macro_rules! each_elem {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::I8 => {
                type $t = i8;
                $body
            }
            DType::I16 => {
                type $t = i16;
                $body
            }
            _ => return Err(RunError::Inconsistent),
        }
    };
}

/// The output and the input of a one-input op, apart in the arena (as validated), typed as `T`.
fn out_and_in<'b, T: Elem + bytemuck::Pod>(
    a: &'b mut [u8],
    o: &ValueInfo,
    x: &ValueInfo,
) -> Result<(&'b mut [T], &'b [T]), RunError> {
    let [od, xd] = carve(a, [o.byte_range(), x.byte_range()]).ok_or(RunError::Inconsistent)?;
    Ok((cast_mut(od)?, cast(xd)?))
}

impl Exec<'_, '_> {
    /// Runs one data-movement op on the bytes of the arena, whatever its values' type.
    pub(super) fn run_move(&self, a: &mut [u8], op: &Op) -> Result<(), RunError> {
        let bad = RunError::Inconsistent;
        match *op {
            Op::Upsample2x { out, x } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                each_elem!(xi.dtype, T => {
                    let (od, xd) = out_and_in::<T>(a, &o, &xi)?;
                    ops::upsample2x_nearest(od, xd, xi.c, xi.h, xi.w)
                })
            }
            Op::Permute { out, x, dims, perm } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let p = core::array::from_fn(|i| ((perm >> (4 * i)) & 15) as usize);
                each_elem!(xi.dtype, T => {
                    let (od, xd) = out_and_in::<T>(a, &o, &xi)?;
                    ops::permute(od, xd, dims.map(|d| d as usize), p)
                })
            }
            Op::Slice { out, x, outer, n, inner, start, step, count } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let [outer, n, inner, start, step, count] = [outer, n, inner, start, step, count].map(|d| d as usize);
                each_elem!(xi.dtype, T => {
                    let (od, xd) = out_and_in::<T>(a, &o, &xi)?;
                    ops::slice_axis(od, xd, outer, n, inner, start, step, count)
                })
            }
            Op::ConcatAxis { out, a: lhs, b: rhs, outer, na, nb, inner } => {
                let (o, l, r) = (self.value(out)?, self.value(lhs)?, self.value(rhs)?);
                let [outer, na, nb, inner] = [outer, na, nb, inner].map(|d| d as usize);
                let (or, lr, rr) = (o.byte_range(), l.byte_range(), r.byte_range());
                if lr == rr {
                    let [od, ld] = carve(a, [or, lr]).ok_or(bad)?;
                    each_elem!(o.dtype, T => {
                        let ld: &[T] = cast(ld)?;
                        ops::concat_axis(cast_mut(od)?, ld, ld, outer, na, nb, inner)
                    })
                } else {
                    let [od, ld, rd] = carve(a, [or, lr, rr]).ok_or(bad)?;
                    each_elem!(o.dtype, T => {
                        ops::concat_axis::<T>(cast_mut(od)?, cast(ld)?, cast(rd)?, outer, na, nb, inner)
                    })
                }
            }
            Op::Pool2d { out, x, k, stride, pad, kind } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let f = *ops::PoolFn::ALL.get(kind as usize).ok_or(bad)?;
                let g = ops::PoolShape {
                    c: xi.c,
                    h: xi.h,
                    w: xi.w,
                    k: k.map(|d| d as usize),
                    stride: stride.map(|d| d as usize),
                    pad: pad.map(|d| d as usize),
                    ho: o.h,
                    wo: o.w,
                };
                match (xi.dtype, f) {
                    (DType::F32, _) => {
                        let (od, xd) = out_and_in(a, &o, &xi)?;
                        ops::pool2d(od, xd, &g, f)
                    }
                    (DType::I8, ops::PoolFn::Max) => {
                        let (od, xd) = out_and_in::<i8>(a, &o, &xi)?;
                        ops::pool2d_max(od, xd, &g)
                    }
                    (DType::I16, ops::PoolFn::Max) => {
                        let (od, xd) = out_and_in::<i16>(a, &o, &xi)?;
                        ops::pool2d_max(od, xd, &g)
                    }
                    (DType::I8, _) => {
                        let (od, xd) = out_and_in::<i8>(a, &o, &xi)?;
                        ops::qpool2d_average(od, xd, &g, f, xi.zero)
                    }
                    (DType::I16, _) => {
                        let (od, xd) = out_and_in::<i16>(a, &o, &xi)?;
                        ops::qpool2d_average(od, xd, &g, f, xi.zero)
                    }
                    _ => return Err(bad),
                }
            }
            Op::Resize { out, x, mode } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let mode = ops::resize_mode(mode).ok_or(bad)?;
                if xi.dtype == DType::F32 {
                    let (od, xd) = out_and_in(a, &o, &xi)?;
                    ops::resize(od, xd, xi.c, xi.h, xi.w, o.h, o.w, mode);
                } else if mode.1 != ops::ResizeSample::Linear {
                    each_elem!(xi.dtype, T => {
                        let (od, xd) = out_and_in::<T>(a, &o, &xi)?;
                        ops::resize_nearest(od, xd, xi.c, xi.h, xi.w, o.h, o.w, mode)
                    })
                } else {
                    return Err(bad);
                }
            }
            Op::Pad { out, x, pad, value, mode } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                let mode = *ops::PadMode::ALL.get(mode as usize).ok_or(bad)?;
                let shape = (xi.c, xi.h, xi.w);
                let pad = pad.map(|d| d as usize);
                // A quantized value pads with the code of `value` (validated to stand for it exactly).
                let code = match xi.dtype {
                    DType::I8 | DType::I16 if mode == ops::PadMode::Constant => {
                        ops::pad_code(value, xi.scale, xi.zero, xi.dtype.qmax()).ok_or(bad)?
                    }
                    _ => 0,
                };
                match xi.dtype {
                    DType::F32 => {
                        let (od, xd) = out_and_in(a, &o, &xi)?;
                        ops::pad2d(od, xd, shape, pad, mode, value)
                    }
                    DType::I8 => {
                        let (od, xd) = out_and_in::<i8>(a, &o, &xi)?;
                        ops::pad2d(od, xd, shape, pad, mode, code as i8)
                    }
                    DType::I16 => {
                        let (od, xd) = out_and_in::<i16>(a, &o, &xi)?;
                        ops::pad2d(od, xd, shape, pad, mode, code as i16)
                    }
                    _ => return Err(bad),
                }
            }
            // A reshape of codes (mul 1, add 0, as validated): a copy, nothing where out is x.
            Op::Affine { out, x, .. } => {
                let (o, xi) = (self.value(out)?, self.value(x)?);
                if o.byte_range() != xi.byte_range() {
                    let [od, xd] = carve(a, [o.byte_range(), xi.byte_range()]).ok_or(bad)?;
                    od.copy_from_slice(xd);
                }
            }
            _ => return Err(bad),
        }
        Ok(())
    }
}
