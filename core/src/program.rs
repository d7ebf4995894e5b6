//! The network description: a flat list of ops over activation values.
//!
//! Each op is a 64-byte record of sixteen little-endian `u32` words: the opcode, then up to fifteen operands.
//! Operands name activation values (`v*`, indices into the value table), tensors (`t*`, indices into the tensor
//! table) or hold parameters (floats as their IEEE bit pattern). Unused words are zero.
//!
//! | code | op | operands | semantics |
//! |-----:|----|----------|-----------|
//! | 1 | `TimestepEmbed` | v out, flip, f32 shift, f32 max_period | sinusoidal embedding of the timestep (diffusers `get_timestep_embedding`) |
//! | 2 | `Linear` | v out, v x, t w, t b | `out = w·x + b`, x `(i,1,1)`, w `[o, i]` |
//! | 3 | `Silu` | v out, v x | `out = x·σ(x)` |
//! | 4 | `ClassEmbed` | v out, t table | `out += table[class]` |
//! | 5 | `Conv2d` | v out, v x, t w, t b, stride, pad top, left, bottom, right, v scratch | zero-padded 2-D convolution; `scratch` holds the padded input ([`Conv2dShape::scratch_shape`]) |
//! | 6 | `GroupNorm` | v out, v x, t gamma, t beta, groups, f32 eps, silu | group normalisation, then SiLU if `silu` = 1 |
//! | 7 | `AddChannel` | v x, v v | `x[c] += v[c]` (time embedding, `default` shift) |
//! | 8 | `ScaleShift` | v x, v v | `x[c] = x[c]·(1 + v[c]) + v[C + c]` (time embedding, `scale_shift`) |
//! | 9 | `Add` | v out, v a, v b, f32 scale | `out = (a + b)·scale` |
//! | 10 | `Attention` | v out, v x, v xn, v scratch, t wq, bq, wk, bk, wv, bv, wo, bo, heads, f32 scale | `out = (x + wo·MHA(wq·xn, wk·xn, wv·xn) + bo)·scale` |
//! | 11 | `Upsample2x` | v out, v x | nearest-neighbour ×2 |
//! | 12 | `Concat` | v out, v a, v b | channel concatenation `[a; b]` |
//! | 13 | `Affine` | v out, v x, f32 mul, f32 add | `out = x·mul + add` |
//!
//! Values of the ops above are f32, except `Upsample2x`, which copies any type (input and output of the same
//! type and scale). The ops below make up int8 programs ([`Precision::Int8`](crate::Precision)): their values
//! are i8 or i16 (`q` stands for `(q − zero) × scale`, the value's scale and zero point; a non-zero zero point
//! is allowed only where this table says so), kernels i8 with one scale per output channel,
//! biases i32. Scales are folded at convert time into integer multipliers: `rq(acc, m, s)` is
//! `(acc·m + 2^(s−1)) >> s` in 64-bit arithmetic (`m` ≥ 0, `s` ≤ 62, shifts arithmetic, so ties round up),
//! and `sat` clamps to the output type's symmetric range (±127 or ±32767).
//!
//! | code | op | operands | semantics |
//! |-----:|----|----------|-----------|
//! | 20 | `Quantize` | v out, v x | `out = sat(round(x / scale_out))`, x f32 (float arithmetic) |
//! | 21 | `Dequantize` | v out, v x | `out = x · scale_x`, out f32 (float arithmetic) |
//! | 22 | `QConv2d` | v out, v x, t w, t brq, stride, pad top, left, bottom, right | `acc = b[o] + Σ w·x` over all taps in i32, padding with `x`'s zero point (so it stands for 0.0; the converter folds `−zero·Σw` into `b`); `out = sat(rq(acc, m[o], s[o]))`; w i8 `[o, i, kh, kw]`, brq i32 `[o, 3]` = (b, m, s). Linear layers are 1×1 convolutions of `(i, 1, 1)` values |
//! | 23 | `QLut` | v out, v x, t table | `out = table[x + 128]`, i8 → i8 (SiLU; either side may have a zero point, the table encodes both), table i8 `[256]` |
//! | 24 | `QGroupNorm` | v out, v x, t gamma, t beta, groups, f32 eps, t lut, f32 mid_scale | group statistics exact in integers; per channel `y = x·A + B` in 24-bit fixed point, `A`, `B` from the statistics in f32; the result has scale `mid_scale`, then `out = lut[y + 128]` (SiLU; the output may have a zero point, the table encodes it) or, when `lut` = `u32::MAX`, `out = y` (then `mid_scale` must equal the output's scale) |
//! | 25 | `QAdd` | v out, v a, v b, i32 ma, i32 mb, shift | `out = sat((a·ma + b·mb + 2^(shift−1)) >> shift)`; `b` has `a`'s shape or is a `(c, 1, 1)` vector added to every pixel of its channel |
//! | 26 | `QSdpa` | v out, v q, v k, v v, v scratch, heads, t exp, i32 m_score, s_score, i32 m_out, s_out | multi-head attention core over `(c, h, w)` = channels × tokens, i8: scores `S = Σ q·k` (i32) per head; `z = min(rq(max S − S, m_score, s_score), len(exp) − 1)`; `e = exp[z]` (i16 table, `exp[0]` > 0, entries ≥ 0); `p = (e·2^15 + Σe/2) / Σe`; `out = sat(rq(Σ p·v, m_out, s_out))`; scratch i32 ≥ tokens |
//! | 27 | `QConcat` | v out, v a, v b, i32 ma, sa, i32 mb, sb | `out = [sat(rq(a, ma, sa)); sat(rq(b, mb, sb))]` |
//! | 28 | `QScaleShift` | v out, v x, v v | `out[c] = x[c]·(1 + v[c]) + v[C + c]`: per channel `A`, `B` in f32 from the scales, per element `x·A + B` in 24-bit fixed point |
//! | 29 | `QClassEmbed` | v out, v x, t table | `out = x + table[class]` on the embedding vector, table f32 (float arithmetic: one vector per forward pass) |
//!
//! Aliasing: an op's output may be the same value as an input only where the table's op works in place
//! (`Silu`, `GroupNorm`, `Add`, `Affine`, and `Attention`'s `out`/`x`/`xn`); otherwise, and always for partial
//! overlaps, the arena ranges must be disjoint. Validation enforces this, so the executor never needs to copy
//! defensively. Biases, norm parameters and other 1-D tensors are f32 in every precision.

use crate::blob::{DType, Model, TensorInfo, TensorView, ValueInfo};
use crate::ops::Conv2dShape;

/// One operation of the network program. Field names follow the table in the module docs.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    TimestepEmbed {
        out: u32,
        flip_sin_to_cos: bool,
        freq_shift: f32,
        max_period: f32,
    },
    Linear {
        out: u32,
        x: u32,
        w: u32,
        b: u32,
    },
    Silu {
        out: u32,
        x: u32,
    },
    ClassEmbed {
        out: u32,
        table: u32,
    },
    Conv2d {
        out: u32,
        x: u32,
        w: u32,
        b: u32,
        stride: u32,
        pad: [u32; 4],
        scratch: u32,
    },
    GroupNorm {
        out: u32,
        x: u32,
        gamma: u32,
        beta: u32,
        groups: u32,
        eps: f32,
        silu: bool,
    },
    AddChannel {
        x: u32,
        v: u32,
    },
    ScaleShift {
        x: u32,
        v: u32,
    },
    Add {
        out: u32,
        a: u32,
        b: u32,
        scale: f32,
    },
    Attention {
        out: u32,
        x: u32,
        xn: u32,
        scratch: u32,
        w: [u32; 8],
        heads: u32,
        scale: f32,
    },
    Upsample2x {
        out: u32,
        x: u32,
    },
    Concat {
        out: u32,
        a: u32,
        b: u32,
    },
    Affine {
        out: u32,
        x: u32,
        mul: f32,
        add: f32,
    },
    Quantize {
        out: u32,
        x: u32,
    },
    Dequantize {
        out: u32,
        x: u32,
    },
    QConv2d {
        out: u32,
        x: u32,
        w: u32,
        brq: u32,
        stride: u32,
        pad: [u32; 4],
    },
    QLut {
        out: u32,
        x: u32,
        table: u32,
    },
    QGroupNorm {
        out: u32,
        x: u32,
        gamma: u32,
        beta: u32,
        groups: u32,
        eps: f32,
        lut: u32,
        mid_scale: f32,
    },
    QAdd {
        out: u32,
        a: u32,
        b: u32,
        ma: i32,
        mb: i32,
        shift: u32,
    },
    QSdpa {
        out: u32,
        q: u32,
        k: u32,
        v: u32,
        scratch: u32,
        heads: u32,
        exp: u32,
        m_score: i32,
        s_score: u32,
        m_out: i32,
        s_out: u32,
    },
    QConcat {
        out: u32,
        a: u32,
        b: u32,
        ma: i32,
        sa: u32,
        mb: i32,
        sb: u32,
    },
    QScaleShift {
        out: u32,
        x: u32,
        v: u32,
    },
    QClassEmbed {
        out: u32,
        x: u32,
        table: u32,
    },
}

/// `QGroupNorm`'s `lut` operand when no lookup table follows the normalisation.
pub const NO_LUT: u32 = u32::MAX;

impl Op {
    /// The op's name, as in the table above.
    pub fn name(&self) -> &'static str {
        match self {
            Op::TimestepEmbed { .. } => "TimestepEmbed",
            Op::Linear { .. } => "Linear",
            Op::Silu { .. } => "Silu",
            Op::ClassEmbed { .. } => "ClassEmbed",
            Op::Conv2d { .. } => "Conv2d",
            Op::GroupNorm { .. } => "GroupNorm",
            Op::AddChannel { .. } => "AddChannel",
            Op::ScaleShift { .. } => "ScaleShift",
            Op::Add { .. } => "Add",
            Op::Attention { .. } => "Attention",
            Op::Upsample2x { .. } => "Upsample2x",
            Op::Concat { .. } => "Concat",
            Op::Affine { .. } => "Affine",
            Op::Quantize { .. } => "Quantize",
            Op::Dequantize { .. } => "Dequantize",
            Op::QConv2d { .. } => "QConv2d",
            Op::QLut { .. } => "QLut",
            Op::QGroupNorm { .. } => "QGroupNorm",
            Op::QAdd { .. } => "QAdd",
            Op::QSdpa { .. } => "QSdpa",
            Op::QConcat { .. } => "QConcat",
            Op::QScaleShift { .. } => "QScaleShift",
            Op::QClassEmbed { .. } => "QClassEmbed",
        }
    }

    /// Encodes the op as its sixteen record words.
    pub fn encode(&self) -> [u32; 16] {
        let mut r = [0u32; 16];
        let mut put = |code: u32, args: &[u32]| {
            r[0] = code;
            r[1..=args.len()].copy_from_slice(args);
        };
        match *self {
            Op::TimestepEmbed { out, flip_sin_to_cos, freq_shift, max_period } => {
                put(1, &[out, flip_sin_to_cos.into(), freq_shift.to_bits(), max_period.to_bits()])
            }
            Op::Linear { out, x, w, b } => put(2, &[out, x, w, b]),
            Op::Silu { out, x } => put(3, &[out, x]),
            Op::ClassEmbed { out, table } => put(4, &[out, table]),
            Op::Conv2d { out, x, w, b, stride, pad, scratch } => {
                put(5, &[out, x, w, b, stride, pad[0], pad[1], pad[2], pad[3], scratch])
            }
            Op::GroupNorm { out, x, gamma, beta, groups, eps, silu } => {
                put(6, &[out, x, gamma, beta, groups, eps.to_bits(), silu.into()])
            }
            Op::AddChannel { x, v } => put(7, &[x, v]),
            Op::ScaleShift { x, v } => put(8, &[x, v]),
            Op::Add { out, a, b, scale } => put(9, &[out, a, b, scale.to_bits()]),
            Op::Attention { out, x, xn, scratch, w, heads, scale } => {
                let mut a = [0u32; 14];
                a[..4].copy_from_slice(&[out, x, xn, scratch]);
                a[4..12].copy_from_slice(&w);
                a[12] = heads;
                a[13] = scale.to_bits();
                put(10, &a)
            }
            Op::Upsample2x { out, x } => put(11, &[out, x]),
            Op::Concat { out, a, b } => put(12, &[out, a, b]),
            Op::Affine { out, x, mul, add } => put(13, &[out, x, mul.to_bits(), add.to_bits()]),
            Op::Quantize { out, x } => put(20, &[out, x]),
            Op::Dequantize { out, x } => put(21, &[out, x]),
            Op::QConv2d { out, x, w, brq, stride, pad } => {
                put(22, &[out, x, w, brq, stride, pad[0], pad[1], pad[2], pad[3]])
            }
            Op::QLut { out, x, table } => put(23, &[out, x, table]),
            Op::QGroupNorm { out, x, gamma, beta, groups, eps, lut, mid_scale } => {
                put(24, &[out, x, gamma, beta, groups, eps.to_bits(), lut, mid_scale.to_bits()])
            }
            Op::QAdd { out, a, b, ma, mb, shift } => put(25, &[out, a, b, ma as u32, mb as u32, shift]),
            Op::QSdpa { out, q, k, v, scratch, heads, exp, m_score, s_score, m_out, s_out } => {
                put(26, &[out, q, k, v, scratch, heads, exp, m_score as u32, s_score, m_out as u32, s_out])
            }
            Op::QConcat { out, a, b, ma, sa, mb, sb } => put(27, &[out, a, b, ma as u32, sa, mb as u32, sb]),
            Op::QScaleShift { out, x, v } => put(28, &[out, x, v]),
            Op::QClassEmbed { out, x, table } => put(29, &[out, x, table]),
        }
        r
    }

    /// Decodes a record; `None` for an unknown opcode, a bad flag or non-zero unused words.
    pub fn decode(r: &[u32; 16]) -> Option<Op> {
        let f = |i: usize| f32::from_bits(r[i]);
        let flag = |i: usize| match r[i] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        let (op, used) = match r[0] {
            1 => (Op::TimestepEmbed { out: r[1], flip_sin_to_cos: flag(2)?, freq_shift: f(3), max_period: f(4) }, 4),
            2 => (Op::Linear { out: r[1], x: r[2], w: r[3], b: r[4] }, 4),
            3 => (Op::Silu { out: r[1], x: r[2] }, 2),
            4 => (Op::ClassEmbed { out: r[1], table: r[2] }, 2),
            5 => (
                Op::Conv2d {
                    out: r[1],
                    x: r[2],
                    w: r[3],
                    b: r[4],
                    stride: r[5],
                    pad: [r[6], r[7], r[8], r[9]],
                    scratch: r[10],
                },
                10,
            ),
            6 => (
                Op::GroupNorm { out: r[1], x: r[2], gamma: r[3], beta: r[4], groups: r[5], eps: f(6), silu: flag(7)? },
                7,
            ),
            7 => (Op::AddChannel { x: r[1], v: r[2] }, 2),
            8 => (Op::ScaleShift { x: r[1], v: r[2] }, 2),
            9 => (Op::Add { out: r[1], a: r[2], b: r[3], scale: f(4) }, 4),
            10 => (
                Op::Attention {
                    out: r[1],
                    x: r[2],
                    xn: r[3],
                    scratch: r[4],
                    w: [r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12]],
                    heads: r[13],
                    scale: f(14),
                },
                14,
            ),
            11 => (Op::Upsample2x { out: r[1], x: r[2] }, 2),
            12 => (Op::Concat { out: r[1], a: r[2], b: r[3] }, 3),
            13 => (Op::Affine { out: r[1], x: r[2], mul: f(3), add: f(4) }, 4),
            20 => (Op::Quantize { out: r[1], x: r[2] }, 2),
            21 => (Op::Dequantize { out: r[1], x: r[2] }, 2),
            22 => {
                (Op::QConv2d { out: r[1], x: r[2], w: r[3], brq: r[4], stride: r[5], pad: [r[6], r[7], r[8], r[9]] }, 9)
            }
            23 => (Op::QLut { out: r[1], x: r[2], table: r[3] }, 3),
            24 => (
                Op::QGroupNorm {
                    out: r[1],
                    x: r[2],
                    gamma: r[3],
                    beta: r[4],
                    groups: r[5],
                    eps: f(6),
                    lut: r[7],
                    mid_scale: f(8),
                },
                8,
            ),
            25 => (Op::QAdd { out: r[1], a: r[2], b: r[3], ma: r[4] as i32, mb: r[5] as i32, shift: r[6] }, 6),
            26 => (
                Op::QSdpa {
                    out: r[1],
                    q: r[2],
                    k: r[3],
                    v: r[4],
                    scratch: r[5],
                    heads: r[6],
                    exp: r[7],
                    m_score: r[8] as i32,
                    s_score: r[9],
                    m_out: r[10] as i32,
                    s_out: r[11],
                },
                11,
            ),
            27 => {
                (Op::QConcat { out: r[1], a: r[2], b: r[3], ma: r[4] as i32, sa: r[5], mb: r[6] as i32, sb: r[7] }, 7)
            }
            28 => (Op::QScaleShift { out: r[1], x: r[2], v: r[3] }, 3),
            29 => (Op::QClassEmbed { out: r[1], x: r[2], table: r[3] }, 3),
            _ => return None,
        };
        if r[used + 1..].iter().any(|&w| w != 0) {
            return None;
        }
        Some(op)
    }
}

/// Output size of a convolution along one axis, if the kernel fits.
pub fn conv_out_len(input: usize, kernel: usize, stride: usize, pad_lo: usize, pad_hi: usize) -> Option<usize> {
    let padded = input.checked_add(pad_lo)?.checked_add(pad_hi)?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

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

fn same_shape(a: &ValueInfo, b: &ValueInfo) -> bool {
    (a.c, a.h, a.w) == (b.c, b.h, b.w)
}

fn is_vector(v: &ValueInfo) -> bool {
    v.h == 1 && v.w == 1
}

/// Checks one op against the model's tables: operands exist, shapes agree, aliasing is allowed, parameters
/// are sane. After this the executor can slice without failing.
pub(crate) fn validate(m: &Model<'_>, op: &Op) -> Result<(), ()> {
    // Float ops take f32 values only; quantized ops say what they take.
    let v = |i: u32| m.value(i).filter(|v| v.dtype == DType::F32).ok_or(());
    // Float ops take f32 or f16 tensors.
    let t = |i: u32| m.tensor_info(i).filter(|ti| matches!(ti.dtype, DType::F32 | DType::F16)).ok_or(());
    // A 1-D f32 tensor of length n.
    let vec_f32 = |i: u32, n: usize| -> Result<(), ()> {
        let ti = t(i)?;
        ok(ti.dtype == DType::F32 && ti.shape() == [n])
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
                && max_period > 0.0)
        }
        Op::Linear { out, x, w, b } => {
            let (o, xi, wi) = (v(out)?, v(x)?, t(w)?);
            vec_f32(b, o.c)?;
            ok(is_vector(&o) && is_vector(&xi) && wi.shape() == [o.c, xi.c] && disjoint(&o, &xi))
        }
        Op::Silu { out, x } | Op::Affine { out, x, .. } => {
            let (o, xi) = (v(out)?, v(x)?);
            if let Op::Affine { mul, add, .. } = *op {
                ok(mul.is_finite() && add.is_finite())?;
            }
            ok(same_shape(&o, &xi) && same_or_disjoint(&o, &xi))
        }
        Op::ClassEmbed { out, table } => {
            let (o, ti) = (v(out)?, t(table)?);
            ok(is_vector(&o) && m.num_classes() > 0 && ti.shape() == [m.num_classes() as usize, o.c])
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
                })
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
                && same_or_disjoint(&o, &xi))
        }
        Op::AddChannel { x, v: vv } => {
            let (xi, vi) = (v(x)?, v(vv)?);
            ok(is_vector(&vi) && vi.c == xi.c && disjoint(&xi, &vi))
        }
        Op::ScaleShift { x, v: vv } => {
            let (xi, vi) = (v(x)?, v(vv)?);
            ok(is_vector(&vi) && vi.c == 2 * xi.c && disjoint(&xi, &vi))
        }
        Op::Add { out, a, b, scale } => {
            let (o, ai, bi) = (v(out)?, v(a)?, v(b)?);
            ok(scale.is_finite()
                && same_shape(&o, &ai)
                && same_shape(&o, &bi)
                && same_or_disjoint(&o, &ai)
                && same_or_disjoint(&o, &bi)
                && same_or_disjoint(&ai, &bi))
        }
        Op::Attention { out, x, xn, scratch, w, heads, scale } => {
            let (o, xi, ni, si) = (v(out)?, v(x)?, v(xn)?, v(scratch)?);
            let c = o.c;
            for pair in w.chunks_exact(2) {
                let wi = t(pair[0])?;
                ok(wi.shape() == [c, c])?;
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
                && disjoint(&si, &ni))
        }
        Op::Upsample2x { out, x } => {
            let (o, xi) = (m.value(out).ok_or(())?, m.value(x).ok_or(())?);
            ok(o.c == xi.c
                && Some(o.h) == xi.h.checked_mul(2)
                && Some(o.w) == xi.w.checked_mul(2)
                && (o.dtype, o.scale.to_bits(), o.zero) == (xi.dtype, xi.scale.to_bits(), xi.zero)
                && o.dtype != DType::I32
                && disjoint(&o, &xi))
        }
        Op::Concat { out, a, b } => {
            let (o, ai, bi) = (v(out)?, v(a)?, v(b)?);
            ok(o.c == ai.c + bi.c
                && (o.h, o.w) == (ai.h, ai.w)
                && (o.h, o.w) == (bi.h, bi.w)
                && disjoint(&o, &ai)
                && disjoint(&o, &bi))
        }
        _ => validate_quantized(m, op),
    }
}

/// A requantization pair `(m, s)` the executor can apply to any 32-bit accumulator without overflow.
fn rq_ok(mult: i32, shift: u32) -> bool {
    mult >= 0 && shift <= 62
}

/// Validation of the int8 ops (see the second table of the module docs).
fn validate_quantized(m: &Model<'_>, op: &Op) -> Result<(), ()> {
    // A quantized value without a zero point; `coded` also allows one (see the op table).
    let quant = |i: u32| m.value(i).filter(|v| v.dtype.is_quantized() && v.zero == 0).ok_or(());
    let coded = |i: u32| m.value(i).filter(|v| v.dtype.is_quantized()).ok_or(());
    let of = |i: u32, dt: DType| m.value(i).filter(|v| v.dtype == dt && v.zero == 0).ok_or(());
    let t = |i: u32| m.tensor_info(i).ok_or(());
    let i32s = |i: u32| match m.tensor(i) {
        Some(TensorView::I32(d)) => Ok(d),
        _ => Err(()),
    };
    let vec_f32 = |i: u32, n: usize| -> Result<(), ()> {
        let ti = t(i)?;
        ok(ti.dtype == DType::F32 && ti.shape() == [n])
    };
    let lut = |i: u32| -> Result<(), ()> {
        let ti = t(i)?;
        ok(ti.dtype == DType::I8 && ti.shape() == [256])
    };
    match *op {
        Op::Quantize { out, x } => {
            let (o, xi) = (quant(out)?, of(x, DType::F32)?);
            ok(same_shape(&o, &xi) && disjoint(&o, &xi))
        }
        Op::Dequantize { out, x } => {
            let (o, xi) = (of(out, DType::F32)?, quant(x)?);
            ok(same_shape(&o, &xi) && disjoint(&o, &xi))
        }
        Op::QConv2d { out, x, w, brq, stride, pad } => {
            let (o, xi, wi) = (quant(out)?, coded(x)?, t(w)?);
            let [co, ci, kh, kw] = wi.dims;
            let table = i32s(brq)?;
            ok(wi.dtype == DType::I8 && wi.ndim == 4 && t(brq)?.shape() == [co, 3])?;
            ok(table.chunks_exact(3).all(|p| rq_ok(p[1], p[2] as u32)))?;
            // The i32 accumulator cannot overflow: every tap at its extreme plus the largest bias.
            let taps = (ci * kh * kw) as u64;
            let worst = taps * 128 * (xi.dtype.qmax() as u64 + 1)
                + table.chunks_exact(3).map(|p| p[0].unsigned_abs() as u64).max().unwrap_or(0);
            ok(worst < 1 << 31 && conv_geometry_ok(&xi, &o, wi.dims, stride, pad))
        }
        Op::QLut { out, x, table } => {
            let (o, xi) = (coded(out)?, coded(x)?);
            ok(o.dtype == DType::I8 && xi.dtype == DType::I8)?;
            lut(table)?;
            ok(same_shape(&o, &xi) && same_or_disjoint(&o, &xi))
        }
        Op::QGroupNorm { out, x, gamma, beta, groups, eps, lut: table, mid_scale } => {
            let (o, xi) = (coded(out)?, quant(x)?);
            ok(o.zero == 0 || table != NO_LUT)?;
            vec_f32(gamma, o.c)?;
            vec_f32(beta, o.c)?;
            if table == NO_LUT {
                ok(mid_scale.to_bits() == o.scale.to_bits())?;
            } else {
                lut(table)?;
                ok(o.dtype == DType::I8)?;
            }
            let g = groups as usize;
            ok(g > 0
                && o.c % g == 0
                && eps.is_finite()
                && eps >= 0.0
                && mid_scale.is_finite()
                && mid_scale > 0.0
                && same_shape(&o, &xi)
                && same_or_disjoint(&o, &xi))
        }
        Op::QAdd { out, a, b, shift, .. } => {
            let (o, ai, bi) = (quant(out)?, quant(a)?, quant(b)?);
            let broadcast = is_vector(&bi) && bi.c == ai.c;
            ok(shift <= 62
                && same_shape(&o, &ai)
                && (same_shape(&ai, &bi) || broadcast)
                && same_or_disjoint(&o, &ai)
                && same_or_disjoint(&o, &bi)
                && same_or_disjoint(&ai, &bi))
        }
        Op::QSdpa { out, q, k, v, scratch, heads, exp, m_score, s_score, m_out, s_out } => {
            let (o, qi, ki, vi) = (of(out, DType::I8)?, of(q, DType::I8)?, of(k, DType::I8)?, of(v, DType::I8)?);
            let si = of(scratch, DType::I32)?;
            let Some(TensorView::I16(table)) = m.tensor(exp) else { return Err(()) };
            let tokens = o.h * o.w;
            let h = heads as usize;
            ok(t(exp)?.ndim == 1
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
                && disjoint(&vi, &si))
        }
        Op::QConcat { out, a, b, ma, sa, mb, sb } => {
            let (o, ai, bi) = (quant(out)?, quant(a)?, quant(b)?);
            ok(rq_ok(ma, sa)
                && rq_ok(mb, sb)
                && o.c == ai.c + bi.c
                && (o.h, o.w) == (ai.h, ai.w)
                && (o.h, o.w) == (bi.h, bi.w)
                && disjoint(&o, &ai)
                && disjoint(&o, &bi))
        }
        Op::QScaleShift { out, x, v } => {
            let (o, xi, vi) = (quant(out)?, quant(x)?, quant(v)?);
            ok(same_shape(&o, &xi)
                && is_vector(&vi)
                && Some(vi.c) == xi.c.checked_mul(2)
                && same_or_disjoint(&o, &xi)
                && disjoint(&vi, &o)
                && disjoint(&vi, &xi))
        }
        Op::QClassEmbed { out, x, table } => {
            let (o, xi, ti) = (quant(out)?, quant(x)?, t(table)?);
            ok(is_vector(&o)
                && same_shape(&o, &xi)
                && same_or_disjoint(&o, &xi)
                && m.num_classes() > 0
                && ti.dtype == DType::F32
                && ti.shape() == [m.num_classes() as usize, o.c])
        }
        _ => Err(()),
    }
}

fn ok(cond: bool) -> Result<(), ()> {
    if cond {
        Ok(())
    } else {
        Err(())
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
    }
}
