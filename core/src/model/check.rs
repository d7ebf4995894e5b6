//! Op validation: every op's operands exist, have the types and shapes it needs, alias only where it works in
//! place, and carry sane parameters. After this the executor can slice without failing.

use crate::format::DType;
use crate::model::{Model, TensorInfo, TensorView, ValueInfo};
use crate::ops::{conv_out_len, Conv2dShape, PadMode, ResizeSample};
use crate::program::{Op, NO_LUT};

const NO_TENSOR: &str = "a tensor operand is not in the tensor table";
const NOT_F32_VALUE: &str = "a value operand is missing or not f32";
const NOT_FLOAT_TENSOR: &str = "a tensor operand is missing or not f32/f16";
const NOT_QUANTIZED: &str = "a value operand is missing, not i8/i16, or has a zero point the op does not allow";
const WRONG_VALUE_TYPE: &str = "a value operand is missing or of the wrong type";
const NOT_MOVABLE: &str = "a value operand of a data-movement op is missing or not f32, i8 or i16";
const CODED_UNLIKE: &str =
    "a data-movement op's values differ in type, scale or zero point (a quantized value moves through it unchanged)";
const WRONG_TENSOR_TYPE: &str = "a tensor operand has the wrong type or shape";

/// The convolution geometry of a `Conv2d` op from its (validated) operands.
pub fn conv_shape(x: &ValueInfo, out: &ValueInfo, w: &TensorInfo<'_>, stride: u32, pad: [u32; 4]) -> Conv2dShape {
    Conv2dShape {
        ci: x.c,
        h: x.h,
        w: x.w,
        co: out.c,
        kh: w.dims[2],
        kw: w.dims[3],
        stride: stride as usize,
        pad: pad.map(|p| p as usize),
        ho: out.h,
        wo: out.w,
    }
}

/// A convolution's kernel `[co, ci, kh, kw]`, stride and padding turn `x` into `out`, the padding is narrower
/// than the kernel, and input and output do not overlap.
fn conv_geometry_ok(x: &ValueInfo, out: &ValueInfo, dims: [usize; 4], stride: u32, pad: [u32; 4]) -> bool {
    let [co, ci, kh, kw] = dims;
    let [pt, pl, pb, pr] = pad.map(|p| p as usize);
    let s = stride as usize;
    co == out.c
        && ci == x.c
        && conv_out_len(x.h, kh, s, pt, pb) == Some(out.h)
        && conv_out_len(x.w, kw, s, pl, pr) == Some(out.w)
        && pt < kh
        && pb < kh
        && pl < kw
        && pr < kw
        && disjoint(out, x)
}

/// How two arena ranges relate.
fn same_or_disjoint(a: &ValueInfo, b: &ValueInfo) -> bool {
    a.byte_range() == b.byte_range() || disjoint(a, b)
}

fn disjoint(a: &ValueInfo, b: &ValueInfo) -> bool {
    let (ra, rb) = (a.byte_range(), b.byte_range());
    ra.end <= rb.start || rb.end <= ra.start
}

/// Two values of one type, scale and zero point: a data-movement op's codes mean the same on both sides.
fn coded_like(a: &ValueInfo, b: &ValueInfo) -> Result<(), &'static str> {
    ok((a.dtype, a.scale.to_bits(), a.zero) == (b.dtype, b.scale.to_bits(), b.zero), CODED_UNLIKE)
}

fn same_shape(a: &ValueInfo, b: &ValueInfo) -> bool {
    (a.c, a.h, a.w) == (b.c, b.h, b.w)
}

fn is_vector(v: &ValueInfo) -> bool {
    v.h == 1 && v.w == 1
}

/// Checks one op against the model's tables: operands exist, shapes agree, aliasing is allowed, parameters
/// are sane. After this the executor can slice without failing.
pub(crate) fn op(m: &Model<'_>, op: &Op) -> Result<(), &'static str> {
    // Float ops take f32 values only; quantized ops say what they take.
    let v = |i: u32| m.value(i).filter(|v| v.dtype == DType::F32).ok_or(NOT_F32_VALUE);
    // Data-movement ops take values of any activation type (f32, i8, i16); `coded_like` checks the rest.
    let mv = |i: u32| m.value(i).filter(|v| matches!(v.dtype, DType::F32 | DType::I8 | DType::I16)).ok_or(NOT_MOVABLE);
    // Float ops take f32 or f16 tensors.
    let t = |i: u32| m.tensor_info(i).filter(|ti| matches!(ti.dtype, DType::F32 | DType::F16)).ok_or(NOT_FLOAT_TENSOR);
    // A 1-D f32 tensor of length n.
    let vec_f32 = |i: u32, n: usize| -> Result<(), &'static str> {
        let ti = t(i)?;
        ok(
            ti.dtype == DType::F32 && ti.shape() == [n],
            "a bias or norm parameter is not a 1-D f32 tensor of the channel count",
        )
    };
    match *op {
        Op::TimestepEmbed { out, freq_shift, max_period, .. } => {
            let o = v(out)?;
            let half = (o.c / 2) as f32;
            ok(is_vector(&o)
                && o.c >= 2
                && freq_shift.is_finite()
                && half - freq_shift != 0.0
                && max_period.is_finite()
                && max_period > 0.0, "TimestepEmbed needs a vector output of at least 2 channels and finite freq_shift (not half the channels) and max_period > 0")
        }
        Op::Linear { out, x, w, b } => {
            let (o, xi, wi) = (v(out)?, v(x)?, t(w)?);
            vec_f32(b, o.c)?;
            ok(
                is_vector(&o) && is_vector(&xi) && wi.shape() == [o.c, xi.c] && disjoint(&o, &xi),
                "Linear needs vector x and out, w of shape [out, in], and out apart from x",
            )
        }
        Op::Silu { out, x } => {
            let (o, xi) = (v(out)?, v(x)?);
            ok(
                same_shape(&o, &xi) && same_or_disjoint(&o, &xi),
                "Silu needs out of x's shape, equal to or apart from x",
            )
        }
        Op::Affine { out, x, mul, add } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            ok(
                !xi.dtype.is_quantized() || (mul == 1.0 && add == 0.0),
                "Affine of a quantized value is a reshape only (mul 1, add 0)",
            )?;
            ok(
                mul.is_finite() && add.is_finite() && o.numel() == xi.numel() && same_or_disjoint(&o, &xi),
                "Affine needs finite parameters and out of x's size, equal to or apart from x",
            )
        }
        Op::LayerNorm { out, x, gamma, beta, eps } => {
            let (o, xi, gi) = (v(out)?, v(x)?, t(gamma)?);
            let n = gi.numel();
            vec_f32(gamma, n)?;
            vec_f32(beta, n)?;
            ok(
                n > 0
                    && o.numel() % n == 0
                    && eps.is_finite()
                    && eps >= 0.0
                    && same_shape(&o, &xi)
                    && same_or_disjoint(&o, &xi),
                "LayerNorm needs gamma and beta of a length dividing x's size, a finite eps >= 0, and out of x's shape, equal to or apart from it",
            )
        }
        Op::ConvTranspose2d { out, x, w, b, stride, pad } => {
            let (o, xi, wi) = (v(out)?, v(x)?, t(w)?);
            vec_f32(b, o.c)?;
            let [ci, co, kh, kw] = wi.dims;
            let s = stride as usize;
            let [pt, pl] = pad.map(|p| p as usize);
            // The output may reach past the last tap by less than one stride (ONNX `output_padding`).
            let fits = |n: usize, k: usize, p: usize, on: usize| {
                n > 0 && (n - 1).checked_mul(s).and_then(|l| l.checked_add(k + s - 1)).is_some_and(|l| on + p <= l)
            };
            ok(
                wi.ndim == 4
                    && ci == xi.c
                    && co == o.c
                    && s > 0
                    && s <= 64
                    && pt < kh
                    && pl < kw
                    && o.h > 0
                    && o.w > 0
                    && fits(xi.h, kh, pt, o.h)
                    && fits(xi.w, kw, pl, o.w)
                    && disjoint(&o, &xi),
                "ConvTranspose2d's kernel [ci, co, kh, kw], stride and padding do not map x to out, or out overlaps x",
            )
        }
        Op::TimestepTable { out, table } => {
            let (o, ti) = (v(out)?, t(table)?);
            ok(
                ti.ndim == 2 && ti.dims[0] > 0 && ti.dims[1] == o.numel(),
                "TimestepTable needs a [timesteps, n] table for an output of n elements",
            )
        }
        Op::Unary { out, x, kind, a, b } => {
            let (o, xi) = (v(out)?, v(x)?);
            ok(
                crate::ops::UnaryFn::from_code(kind).is_some()
                    && a.is_finite()
                    && b.is_finite()
                    && same_shape(&o, &xi)
                    && same_or_disjoint(&o, &xi),
                "Unary needs a known function, finite parameters, and out of x's shape, equal to or apart from x",
            )
        }
        Op::Binary { out, a, b, dims, bcast, kind } => {
            let (o, ai, bi) = (v(out)?, v(a)?, v(b)?);
            binary_ok(&o, &ai, Some(&bi), dims, bcast, kind)
        }
        Op::BinaryConst { out, a, t: c, dims, bcast, kind, .. } => {
            let (o, ai, ci) = (v(out)?, v(a)?, t(c)?);
            binary_ok(&o, &ai, None, dims, bcast, kind)?;
            let n = crate::ops::Broadcast(bcast >> 3).numel(dims.map(|d| d as usize));
            ok(
                ci.dtype == DType::F32 && ci.numel() == n,
                "BinaryConst needs an f32 tensor of the broadcast operand's size",
            )
        }
        Op::ClassEmbed { out, table } => {
            let (o, ti) = (v(out)?, t(table)?);
            ok(
                is_vector(&o) && m.num_classes() > 0 && ti.shape() == [m.num_classes() as usize, o.c],
                "ClassEmbed needs a vector output, a class-conditioned model and a [classes, channels] table",
            )
        }
        Op::Conv2d { out, x, w, b, stride, pad, scratch } => {
            let (o, xi, wi, si) = (v(out)?, v(x)?, t(w)?, v(scratch)?);
            vec_f32(b, wi.dims[0])?;
            ok(wi.ndim == 4
                && conv_geometry_ok(&xi, &o, wi.dims, stride, pad)
                && disjoint(&si, &xi)
                && disjoint(&si, &o)
                && {
                    let g = conv_shape(&xi, &o, &wi, stride, pad);
                    let (c, h, w) = g.scratch_shape();
                    c.checked_mul(h).and_then(|n| n.checked_mul(w)).is_some_and(|n| si.numel() >= n)
                }, "Conv2d's kernel, stride and padding do not map x to out, or the padding scratch is too small or overlaps")
        }
        Op::GroupNorm { out, x, gamma, beta, groups, eps, .. } => {
            let (o, xi) = (v(out)?, v(x)?);
            vec_f32(gamma, o.c)?;
            vec_f32(beta, o.c)?;
            let g = groups as usize;
            ok(g > 0
                && o.c % g == 0
                && eps.is_finite()
                && eps >= 0.0
                && same_shape(&o, &xi)
                && same_or_disjoint(&o, &xi), "GroupNorm needs groups dividing the channels, a finite eps >= 0, and out of x's shape, equal to or apart from it")
        }
        Op::AddChannel { x, v: vv } => {
            let (xi, vi) = (v(x)?, v(vv)?);
            ok(
                is_vector(&vi) && vi.c == xi.c && disjoint(&xi, &vi),
                "AddChannel needs a vector of x's channels, apart from x",
            )
        }
        Op::ScaleShift { x, v: vv } => {
            let (xi, vi) = (v(x)?, v(vv)?);
            ok(
                is_vector(&vi) && vi.c == 2 * xi.c && disjoint(&xi, &vi),
                "ScaleShift needs a vector of twice x's channels, apart from x",
            )
        }
        Op::Add { out, a, b, scale } => {
            let (o, ai, bi) = (v(out)?, v(a)?, v(b)?);
            ok(
                scale.is_finite()
                    && same_shape(&o, &ai)
                    && same_shape(&o, &bi)
                    && same_or_disjoint(&o, &ai)
                    && same_or_disjoint(&o, &bi)
                    && same_or_disjoint(&ai, &bi),
                "Add needs a finite scale and three values of one shape, pairwise equal or apart",
            )
        }
        Op::Attention { out, x, xn, scratch, w, heads, scale } => {
            let (o, xi, ni, si) = (v(out)?, v(x)?, v(xn)?, v(scratch)?);
            let c = o.c;
            for pair in w.chunks_exact(2) {
                let wi = t(pair[0])?;
                ok(wi.shape() == [c, c], "Attention needs [c, c] projections, heads dividing c, a finite scale, one shape for out, x and xn, and a scratch of 4 values apart from them")?;
                vec_f32(pair[1], c)?;
            }
            let h = heads as usize;
            ok(h > 0
                && c % h == 0
                && scale.is_finite()
                && same_shape(&o, &xi)
                && same_shape(&o, &ni)
                && si.numel() >= 4 * o.numel()
                && same_or_disjoint(&o, &xi)
                && same_or_disjoint(&o, &ni)
                && same_or_disjoint(&xi, &ni)
                && disjoint(&si, &o)
                && disjoint(&si, &xi)
                && disjoint(&si, &ni), "Attention needs [c, c] projections, heads dividing c, a finite scale, one shape for out, x and xn, and a scratch of 4 values apart from them")
        }
        Op::Upsample2x { out, x } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            ok(
                o.c == xi.c
                    && Some(o.h) == xi.h.checked_mul(2)
                    && Some(o.w) == xi.w.checked_mul(2)
                    && disjoint(&o, &xi),
                "Upsample2x needs out twice x's size with x's type and scale, apart from x",
            )
        }
        Op::Concat { out, a, b } => {
            let (o, ai, bi) = (v(out)?, v(a)?, v(b)?);
            ok(
                o.c == ai.c + bi.c
                    && (o.h, o.w) == (ai.h, ai.w)
                    && (o.h, o.w) == (bi.h, bi.w)
                    && disjoint(&o, &ai)
                    && disjoint(&o, &bi),
                "Concat needs out's channels to be the sum of a's and b's at one size, apart from both",
            )
        }
        Op::Permute { out, x, dims, perm } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            let p: [u32; 6] = core::array::from_fn(|i| (perm >> (4 * i)) & 15);
            let n = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize));
            ok(
                perm >> 24 == 0
                    && (0..6).all(|i| p.contains(&i))
                    && n == Some(xi.numel())
                    && o.numel() == xi.numel()
                    && disjoint(&o, &xi),
                "Permute needs a permutation of 0..6, dimensions of x's size, out of as many elements, apart from x",
            )
        }
        Op::MatMul { out, a, b, batch, m: rows, k, n, shared, trans_b } => {
            let (o, ai, bi) = (v(out)?, v(a)?, v(b)?);
            let g = crate::ops::MatMulShape::of_op(batch, rows, k, n, shared, trans_b);
            ok(
                shared < 4
                    && g.out_len() == Some(o.numel())
                    && g.a_len() == Some(ai.numel())
                    && g.b_len() == Some(bi.numel())
                    && disjoint(&o, &ai)
                    && disjoint(&o, &bi)
                    && same_or_disjoint(&ai, &bi),
                "MatMul needs operands and out of the sizes batch, m, k, n give, out apart from both, a and b equal or apart",
            )
        }
        Op::Softmax { out, x, outer, n, inner } => {
            let (o, xi) = (v(out)?, v(x)?);
            ok(
                product3(outer, n, inner) == Some(o.numel()) && same_shape(&o, &xi) && same_or_disjoint(&o, &xi),
                "Softmax needs outer·n·inner elements in out and x, equal to or apart from each other",
            )
        }
        Op::Reduce { out, x, outer, n, inner, kind } => {
            let (o, xi) = (v(out)?, v(x)?);
            ok(
                crate::ops::ReduceFn::from_code(kind).is_some()
                    && n > 0
                    && product3(outer, n, inner) == Some(xi.numel())
                    && product3(outer, 1, inner) == Some(o.numel())
                    && disjoint(&o, &xi),
                "Reduce needs a known reduction, x of outer·n·inner elements (n > 0), out of outer·inner, apart from x",
            )
        }
        Op::Slice { out, x, outer, n, inner, start, step, count } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            let last = (count as u64).checked_sub(1).map(|c| start as u64 + c * step as u64);
            ok(
                step > 0
                    && last.is_some_and(|l| l < n as u64)
                    && product3(outer, n, inner) == Some(xi.numel())
                    && product3(outer, count, inner) == Some(o.numel())
                    && disjoint(&o, &xi),
                "Slice needs a step > 0, count > 0 rows inside x's n, x of outer·n·inner elements, out of outer·count·inner, apart from x",
            )
        }
        Op::ConcatAxis { out, a, b, outer, na, nb, inner } => {
            let (o, ai, bi) = (mv(out)?, mv(a)?, mv(b)?);
            coded_like(&o, &ai)?;
            coded_like(&o, &bi)?;
            ok(
                product3(outer, na, inner) == Some(ai.numel())
                    && product3(outer, nb, inner) == Some(bi.numel())
                    && product3(outer, na.saturating_add(nb), inner) == Some(o.numel())
                    && na.checked_add(nb).is_some()
                    && disjoint(&o, &ai)
                    && disjoint(&o, &bi)
                    && same_or_disjoint(&ai, &bi),
                "ConcatAxis needs a of outer·na·inner, b of outer·nb·inner and out of outer·(na + nb)·inner elements, out apart from both, a and b equal or apart",
            )
        }
        Op::Constant { out, t: c } => {
            let o = v(out)?;
            vec_f32(c, o.numel())
        }
        Op::LinearRows { out, x, w, b } => {
            let (o, xi, wi) = (v(out)?, v(x)?, t(w)?);
            let (wo, wn) = (wi.dims[0], wi.dims[1]);
            vec_f32(b, wo)?;
            ok(
                wi.ndim == 2
                    && wo > 0
                    && wn > 0
                    && xi.numel() % wn == 0
                    && xi.numel() / wn * wo == o.numel()
                    && disjoint(&o, &xi),
                "LinearRows needs w [o, in], x of a whole number of rows of in, out of as many rows of o, apart from x",
            )
        }
        Op::ClassTable { out, table } => {
            let (o, ti) = (v(out)?, t(table)?);
            ok(
                m.num_classes() > 0
                    && ti.ndim == 2
                    && ti.dims[0] == m.num_classes() as usize
                    && ti.dims[1] == o.numel(),
                "ClassTable needs a class-conditioned model and a [classes, n] table for an output of n elements",
            )
        }
        Op::Pool2d { out, x, k, stride, pad, kind } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            let [kh, kw, sy, sx, pt, pl] = [k[0], k[1], stride[0], stride[1], pad[0], pad[1]].map(|d| d as usize);
            // Every window starts inside the padded input and overlaps the input itself.
            let fits = |n: usize, k: usize, s: usize, p: usize, out: usize| {
                out > 0 && p < k && (out - 1).checked_mul(s).is_some_and(|last| last < n + p && last + k > p)
            };
            ok(
                (kind as usize) < crate::ops::PoolFn::ALL.len()
                    && sy > 0
                    && sx > 0
                    && o.c == xi.c
                    && fits(xi.h, kh, sy, pt, o.h)
                    && fits(xi.w, kw, sx, pl, o.w)
                    && disjoint(&o, &xi),
                "Pool2d needs a known pool, strides > 0, padding narrower than the window, every window overlapping x, out of x's channels, apart from x",
            )
        }
        Op::Resize { out, x, mode } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            ok(
                !xi.dtype.is_quantized() || crate::ops::resize_mode(mode).is_some_and(|m| m.1 != ResizeSample::Linear),
                "Resize of a quantized value needs a nearest-neighbour sampling (bilinear runs on f32 values)",
            )?;
            ok(
                crate::ops::resize_mode(mode).is_some() && o.c == xi.c && xi.h > 0 && xi.w > 0 && disjoint(&o, &xi),
                "Resize needs a known mode, out of x's channels, a non-empty x, apart from x",
            )
        }
        Op::Pad { out, x, pad, value, mode } => {
            let (o, xi) = (mv(out)?, mv(x)?);
            coded_like(&o, &xi)?;
            let p = pad.map(|d| d as usize);
            let reflect_ok = mode != 1 || (p[0].max(p[2]) < xi.h && p[1].max(p[3]) < xi.w);
            let constant = mode == PadMode::Constant as u32;
            ok(
                !xi.dtype.is_quantized()
                    || !constant
                    || crate::ops::pad_code(value, xi.scale, xi.zero, xi.dtype.qmax()).is_some(),
                "Pad of a quantized value pads with a constant that a code of its scale and zero point stands for exactly",
            )?;
            ok(
                (mode as usize) < crate::ops::PadMode::ALL.len()
                    && reflect_ok
                    && value.is_finite()
                    && o.c == xi.c
                    && xi.h.checked_add(p[0]).and_then(|h| h.checked_add(p[2])) == Some(o.h)
                    && xi.w.checked_add(p[1]).and_then(|w| w.checked_add(p[3])) == Some(o.w)
                    && xi.h > 0
                    && xi.w > 0
                    && disjoint(&o, &xi),
                "Pad needs a known mode, a finite value, out of x's size plus the pads (reflection: pads below the side), apart from x",
            )
        }
        _ => quantized(m, op),
    }
}

/// `a·b·c` of three operands, if it fits.
fn product3(a: u32, b: u32, c: u32) -> Option<usize> {
    (a as usize).checked_mul(b as usize)?.checked_mul(c as usize)
}

/// A requantization pair `(m, s)` the executor can apply to any 32-bit accumulator without overflow.
fn rq_ok(mult: i32, shift: u32) -> bool {
    mult >= 0 && shift <= 62
}

/// Validation of the int8 ops (see the second table of the module docs).
fn quantized(m: &Model<'_>, op: &Op) -> Result<(), &'static str> {
    // A quantized value without a zero point; `coded` also allows one (see the op table).
    let quant = |i: u32| m.value(i).filter(|v| v.dtype.is_quantized() && v.zero == 0).ok_or(NOT_QUANTIZED);
    let coded = |i: u32| m.value(i).filter(|v| v.dtype.is_quantized()).ok_or(NOT_QUANTIZED);
    let of = |i: u32, dt: DType| m.value(i).filter(|v| v.dtype == dt && v.zero == 0).ok_or(WRONG_VALUE_TYPE);
    let t = |i: u32| m.tensor_info(i).ok_or(NO_TENSOR);
    let i32s = |i: u32| match m.tensor(i) {
        Some(TensorView::I32(d)) => Ok(d),
        _ => Err(WRONG_TENSOR_TYPE),
    };
    let vec_f32 = |i: u32, n: usize| -> Result<(), &'static str> {
        let ti = t(i)?;
        ok(
            ti.dtype == DType::F32 && ti.shape() == [n],
            "a bias or norm parameter is not a 1-D f32 tensor of the channel count",
        )
    };
    let lut = |i: u32| -> Result<(), &'static str> {
        let ti = t(i)?;
        ok(ti.dtype == DType::I8 && ti.shape() == [256], "the lookup table is not an i8 tensor of 256 entries")
    };
    match *op {
        Op::Quantize { out, x } => {
            let (o, xi) = (quant(out)?, of(x, DType::F32)?);
            ok(same_shape(&o, &xi) && disjoint(&o, &xi), "the op needs out of x's shape, apart from x")
        }
        Op::Dequantize { out, x } => {
            let (o, xi) = (of(out, DType::F32)?, quant(x)?);
            ok(same_shape(&o, &xi) && disjoint(&o, &xi), "the op needs out of x's shape, apart from x")
        }
        Op::QConv2d { out, x, w, brq, stride, pad } => {
            let (o, xi, wi) = (quant(out)?, coded(x)?, t(w)?);
            let [co, ci, kh, kw] = wi.dims;
            let table = i32s(brq)?;
            ok(wi.dtype == DType::I8 && wi.ndim == 4 && t(brq)?.shape() == [co, 3], "QConv2d needs an i8 [o, i, kh, kw] kernel, an i32 [o, 3] requantization table, an accumulator that cannot overflow and a geometry mapping x to out")?;
            ok(table.chunks_exact(3).all(|p| rq_ok(p[1], p[2] as u32)), "QConv2d needs an i8 [o, i, kh, kw] kernel, an i32 [o, 3] requantization table, an accumulator that cannot overflow and a geometry mapping x to out")?;
            // The i32 accumulator cannot overflow: every tap at its extreme plus the largest bias.
            let taps = (ci * kh * kw) as u64;
            let worst = taps * 128 * (xi.dtype.qmax() as u64 + 1)
                + table.chunks_exact(3).map(|p| p[0].unsigned_abs() as u64).max().unwrap_or(0);
            ok(worst < 1 << 31 && conv_geometry_ok(&xi, &o, wi.dims, stride, pad), "QConv2d needs an i8 [o, i, kh, kw] kernel, an i32 [o, 3] requantization table, an accumulator that cannot overflow and a geometry mapping x to out")
        }
        Op::QLut { out, x, table } => {
            let (o, xi) = (coded(out)?, coded(x)?);
            ok(
                o.dtype == DType::I8 && xi.dtype == DType::I8,
                "QLut maps i8 to i8 of one shape, out equal to or apart from x",
            )?;
            lut(table)?;
            ok(
                same_shape(&o, &xi) && same_or_disjoint(&o, &xi),
                "QLut maps i8 to i8 of one shape, out equal to or apart from x",
            )
        }
        Op::QGroupNorm { out, x, gamma, beta, groups, eps, lut: table, mid_scale } => {
            let (o, xi) = (coded(out)?, quant(x)?);
            ok(
                o.zero == 0 || table != NO_LUT,
                "QGroupNorm's groups, eps, mid_scale, lookup table or shapes do not fit",
            )?;
            vec_f32(gamma, o.c)?;
            vec_f32(beta, o.c)?;
            if table == NO_LUT {
                ok(
                    mid_scale.to_bits() == o.scale.to_bits(),
                    "QGroupNorm's groups, eps, mid_scale, lookup table or shapes do not fit",
                )?;
            } else {
                lut(table)?;
                ok(o.dtype == DType::I8, "QGroupNorm's groups, eps, mid_scale, lookup table or shapes do not fit")?;
            }
            let g = groups as usize;
            ok(
                g > 0
                    && o.c % g == 0
                    && eps.is_finite()
                    && eps >= 0.0
                    && mid_scale.is_finite()
                    && mid_scale > 0.0
                    && same_shape(&o, &xi)
                    && same_or_disjoint(&o, &xi),
                "QGroupNorm's groups, eps, mid_scale, lookup table or shapes do not fit",
            )
        }
        Op::QAdd { out, a, b, shift, .. } => {
            let (o, ai, bi) = (quant(out)?, quant(a)?, quant(b)?);
            let broadcast = is_vector(&bi) && bi.c == ai.c;
            ok(shift <= 62
                && same_shape(&o, &ai)
                && (same_shape(&ai, &bi) || broadcast)
                && same_or_disjoint(&o, &ai)
                && same_or_disjoint(&o, &bi)
                && same_or_disjoint(&ai, &bi), "QAdd needs shift <= 62, b of a's shape or a per-channel vector, and the values pairwise equal or apart")
        }
        Op::QSdpa { out, q, k, v, scratch, heads, exp, m_score, s_score, m_out, s_out } => {
            let (o, qi, ki, vi) = (of(out, DType::I8)?, of(q, DType::I8)?, of(k, DType::I8)?, of(v, DType::I8)?);
            let si = of(scratch, DType::I32)?;
            let Some(TensorView::I16(table)) = m.tensor(exp) else { return Err(WRONG_TENSOR_TYPE) };
            let tokens = o.h * o.w;
            let h = heads as usize;
            ok(
                t(exp)?.ndim == 1
                    && table.first().is_some_and(|&e| e > 0)
                    && table.iter().all(|&e| e >= 0)
                    && rq_ok(m_score, s_score)
                    && rq_ok(m_out, s_out)
                    && h > 0
                    && o.c % h == 0
                    && o.c < 1 << 16
                    && tokens <= 1 << 20
                    && si.numel() >= tokens
                    && same_shape(&o, &qi)
                    && same_shape(&o, &ki)
                    && same_shape(&o, &vi)
                    && [qi, ki, vi, si].iter().all(|x| disjoint(&o, x))
                    && [ki, vi, si].iter().all(|x| disjoint(&qi, x))
                    && [vi, si].iter().all(|x| disjoint(&ki, x))
                    && disjoint(&vi, &si),
                "QSdpa's exp table, requantization pairs, heads, token count, shapes or scratch do not fit",
            )
        }
        Op::QConcat { out, a, b, ma, sa, mb, sb } => {
            let (o, ai, bi) = (quant(out)?, quant(a)?, quant(b)?);
            ok(rq_ok(ma, sa)
                && rq_ok(mb, sb)
                && o.c == ai.c + bi.c
                && (o.h, o.w) == (ai.h, ai.w)
                && (o.h, o.w) == (bi.h, bi.w)
                && disjoint(&o, &ai)
                && disjoint(&o, &bi), "QConcat needs valid requantization pairs and out's channels to be the sum of a's and b's at one size, apart from both")
        }
        Op::QScaleShift { out, x, v } => {
            let (o, xi, vi) = (quant(out)?, quant(x)?, quant(v)?);
            ok(
                same_shape(&o, &xi)
                    && is_vector(&vi)
                    && Some(vi.c) == xi.c.checked_mul(2)
                    && same_or_disjoint(&o, &xi)
                    && disjoint(&vi, &o)
                    && disjoint(&vi, &xi),
                "QScaleShift needs out of x's shape and a vector of twice x's channels, apart from both",
            )
        }
        Op::QClassEmbed { out, x, table } => {
            let (o, xi, ti) = (quant(out)?, quant(x)?, t(table)?);
            ok(is_vector(&o)
                && same_shape(&o, &xi)
                && same_or_disjoint(&o, &xi)
                && m.num_classes() > 0
                && ti.dtype == DType::F32
                && ti.shape() == [m.num_classes() as usize, o.c], "QClassEmbed needs a vector of x's shape, a class-conditioned model and an f32 [classes, channels] table")
        }
        _ => Err("not a quantized op"),
    }
}

/// A `Binary`'s shape `dims` holds `out`, each operand has the size its broadcast bits give, and `out` is
/// either apart from an operand or that operand itself, unbroadcast.
fn binary_ok(
    o: &ValueInfo,
    a: &ValueInfo,
    b: Option<&ValueInfo>,
    dims: [u32; 3],
    bcast: u32,
    kind: u32,
) -> Result<(), &'static str> {
    let d = dims.map(|d| d as usize);
    let n = d[0].checked_mul(d[1]).and_then(|n| n.checked_mul(d[2]));
    let (ba, bb) = (crate::ops::Broadcast(bcast & 7), crate::ops::Broadcast(bcast >> 3));
    let operand_ok = |x: &ValueInfo, bc: crate::ops::Broadcast| {
        x.numel() == bc.numel(d) && (disjoint(o, x) || (o.byte_range() == x.byte_range() && bc.0 == 0))
    };
    ok(
        crate::ops::BinaryFn::from_code(kind).is_some()
            && bcast < 64
            && n == Some(o.numel())
            && operand_ok(a, ba)
            && b.is_none_or(|b| operand_ok(b, bb)),
        "Binary needs a known function, a shape of out's size, operands of their broadcast sizes, and out apart from an operand or that operand unbroadcast",
    )
}

/// `Ok` when `cond` holds, else `why`.
fn ok(cond: bool, why: &'static str) -> Result<(), &'static str> {
    if cond {
        Ok(())
    } else {
        Err(why)
    }
}

/// Floating-point operations of one op for one sample (a multiply-add counts 2).
pub fn flops(m: &Model<'_>, op: &Op) -> u64 {
    let numel = |i: u32| m.value(i).map(|v| v.numel() as u64).unwrap_or(0);
    let tel = |i: u32| m.tensor_info(i).map(|t| t.numel() as u64).unwrap_or(0);
    match *op {
        Op::TimestepEmbed { out, .. } => 4 * numel(out),
        Op::Linear { w, .. } => 2 * tel(w),
        Op::Conv2d { out, w, .. } => {
            // Each output element takes one multiply-add per kernel element over all input channels.
            let co = m.value(out).map(|v| v.c as u64).unwrap_or(1).max(1);
            2 * numel(out) * (tel(w) / co)
        }
        Op::GroupNorm { out, silu, .. } => numel(out) * if silu { 10 } else { 6 },
        Op::Attention { out, .. } => {
            let Some(o) = m.value(out) else { return 0 };
            let (c, n) = (o.c as u64, (o.h * o.w) as u64);
            // q, k, v and output projections, then q·kᵀ and p·v over all heads.
            4 * 2 * n * c * c + 2 * 2 * n * n * c
        }
        Op::Silu { out, .. } => 4 * numel(out),
        Op::ClassEmbed { out, .. } | Op::AddChannel { x: out, .. } | Op::Add { out, .. } | Op::Affine { out, .. } => {
            numel(out)
        }
        Op::ScaleShift { x, .. } => 2 * numel(x),
        Op::LayerNorm { out, .. } => 6 * numel(out),
        Op::ConvTranspose2d { x, w, .. } => {
            // Each input element meets every kernel element of every output channel once.
            let ci = m.value(x).map(|v| v.c as u64).unwrap_or(1).max(1);
            2 * numel(x) * (tel(w) / ci)
        }
        Op::TimestepTable { .. } | Op::ClassTable { .. } => 0,
        Op::Unary { out, .. } | Op::Binary { out, .. } | Op::BinaryConst { out, .. } => numel(out),
        Op::Upsample2x { .. } | Op::Concat { .. } | Op::QConcat { .. } => 0,
        Op::QConv2d { out, w, .. } => {
            let co = m.value(out).map(|v| v.c as u64).unwrap_or(1).max(1);
            2 * numel(out) * (tel(w) / co)
        }
        Op::QSdpa { out, .. } => {
            let Some(o) = m.value(out) else { return 0 };
            let (c, n) = (o.c as u64, (o.h * o.w) as u64);
            2 * 2 * n * n * c
        }
        Op::QGroupNorm { out, .. } => 4 * numel(out),
        Op::Quantize { out, .. }
        | Op::Dequantize { out, .. }
        | Op::QLut { out, .. }
        | Op::QAdd { out, .. }
        | Op::QClassEmbed { out, .. } => numel(out),
        Op::QScaleShift { out, .. } => 2 * numel(out),
        Op::MatMul { out, k, .. } => 2 * numel(out) * u64::from(k),
        Op::LinearRows { out, w, .. } => {
            let o = m.tensor_info(w).map(|t| t.dims[0] as u64).unwrap_or(1).max(1);
            2 * numel(out) * (tel(w) / o)
        }
        Op::Softmax { out, .. } => 4 * numel(out),
        Op::Reduce { x, .. } => numel(x),
        Op::Permute { .. } | Op::Slice { .. } | Op::ConcatAxis { .. } | Op::Constant { .. } | Op::Pad { .. } => 0,
        Op::Pool2d { out, k, .. } => numel(out) * u64::from(k[0]) * u64::from(k[1]),
        Op::Resize { out, .. } => 4 * numel(out),
    }
}
