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
//! | 13 | `Affine` | v out, v x, f32 mul, f32 add | `out = x·mul + add`; `out` may have another shape of as many elements (a reshape) |
//! | 14 | `LayerNorm` | v out, v x, t gamma, t beta, f32 eps | each run of `n = len(gamma)` consecutive elements normalised (biased variance), then `·gamma + beta`; gamma, beta f32 `[n]` |
//! | 15 | `ConvTranspose2d` | v out, v x, t w, t b, stride, pad top, left | transposed convolution: input pixel `(y, x)`, tap `(ky, kx)` lands on `(y·stride + ky − top, x·stride + kx − left)` of `out`, if inside; w `[ci, co, kh, kw]` |
//! | 16 | `TimestepTable` | v out, t table | `out = table[t]`, table `[T, len(out)]`; the timestep must be an integer below `T` |
//! | 17 | `Unary` | v out, v x, kind, f32 a, f32 b | `out = f(x)`, `f` = [`UnaryFn`](crate::ops::UnaryFn) of code `kind` with parameters `a`, `b` |
//! | 18 | `Binary` | v out, v a, v b, d0, d1, d2, bcast, kind | `out = a ∘ b` over `[d0, d1, d2]`, `∘` = [`BinaryFn`](crate::ops::BinaryFn) of code `kind`; bit `i` of `bcast` broadcasts `a` along dimension `i`, bit `3 + i` broadcasts `b` |
//! | 19 | `BinaryConst` | v out, v a, t t, d0, d1, d2, bcast, kind, swap | `Binary` with a stored f32 tensor as `b` (as `a` when `swap` = 1: `out = t ∘ a`) |
//! | 30 | `Permute` | v out, v x, d0 … d5, perm | `x` as row-major `[d0, …, d5]` with its axes reordered: output axis `i` is input axis `(perm >> 4i) & 15` |
//! | 31 | `MatMul` | v out, v a, v b, batch, m, k, n, shared, trans_b | `out[i] = a[i]·b[i]` for `i < batch`, a `[m, k]`, b `[k, n]` (`[n, k]` when `trans_b` = 1); bit 0 of `shared`: one `a` for every `i`, bit 1: one `b` |
//! | 32 | `Softmax` | v out, v x, outer, n, inner | softmax over the middle dimension of `[outer, n, inner]` |
//! | 33 | `Reduce` | v out, v x, outer, n, inner, kind | `out[o, i]` = [`ReduceFn`](crate::ops::ReduceFn) of code `kind` over `x[o, :, i]`, x `[outer, n, inner]` |
//! | 34 | `Slice` | v out, v x, outer, n, inner, start, step, count | `out[o, j, i] = x[o, start + j·step, i]`, x `[outer, n, inner]`, `j < count` |
//! | 35 | `ConcatAxis` | v out, v a, v b, outer, na, nb, inner | `out[o] = [a[o]; b[o]]`, a `[outer, na, inner]`, b `[outer, nb, inner]` |
//! | 36 | `Constant` | v out, t t | `out = t`, an f32 tensor of out's size |
//! | 37 | `LinearRows` | v out, v x, t w, t b | `Linear` on each of the `len(x)/in` rows of x: `out[r] = w·x[r] + b`, w `[o, in]` |
//! | 38 | `Pool2d` | v out, v x, kh, kw, stride y, x, pad top, left, kind | [`PoolFn`](crate::ops::PoolFn) of code `kind` over each `kh × kw` window of each channel; windows start at `(oy·sy − top, ox·sx − left)`, parts outside the input are left out |
//! | 39 | `Resize` | v out, v x, mode | each channel of x `(c, h, w)` resized to out `(c, ho, wo)`; `mode` = [`ResizeCoord`](crate::ops::ResizeCoord) code `| `[`ResizeSample`](crate::ops::ResizeSample) code `<< 4` |
//! | 40 | `Pad` | v out, v x, pad top, left, bottom, right, f32 value, mode | each channel padded, [`PadMode`](crate::ops::PadMode) of code `mode` (`value` for constant padding; reflection needs pads below the side) |
//! | 41 | `ClassTable` | v out, t table | `out = table[class]`, table `[classes, len(out)]` (the blob's class count) |
//!
//! Values of the ops above are f32, except those of the data-movement ops, which also take the i8/i16 values of
//! int8 programs: `Upsample2x`, `Permute`, `Slice`, `ConcatAxis`, `Pad`, `Pool2d`, `Resize` and `Affine` copy
//! (or, for pooling, compare or average) codes, with every input and the output of one type, scale and zero
//! point, so a quantized value moves through them unchanged. For a quantized value, `Affine` is a reshape only
//! (`mul` = 1, `add` = 0), `Resize` samples the nearest pixel (bilinear needs f32), `Pad` pads with the code
//! `q` for which `(q − zero) × scale` is `value` exactly (constant padding of another value needs f32), and
//! average pooling averages the codes in integers, rounding half up (`floor((2·Σq + n) / 2n)`, padding counted
//! as the zero point). The ops below make up int8 programs ([`Precision::Int8`](crate::Precision)): their values
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
//! (`Silu`, `GroupNorm`, `Add`, `Affine`, `LayerNorm`, `Unary`, `Softmax`, `Binary` and `BinaryConst` where that operand is not broadcast, and `Attention`'s `out`/`x`/`xn`); otherwise, and always for partial
//! overlaps, the arena ranges must be disjoint. Validation enforces this, so the executor never needs to copy
//! defensively. Biases, norm parameters and other 1-D tensors are f32 in every precision.

use crate::format::OP_WORDS;

/// What an operand of an op is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An activation value the op writes.
    Out,
    /// An activation value the op reads.
    In,
    /// An activation value the op reads and updates in place.
    InOut,
    /// An activation value the op uses as scratch (written, then dead).
    Scratch,
    /// A weight tensor (or table) of the blob.
    Tensor,
    /// A parameter held in the record itself.
    Param,
}

impl Role {
    /// Whether the operand names an activation value.
    pub const fn is_value(self) -> bool {
        matches!(self, Role::Out | Role::In | Role::InOut | Role::Scratch)
    }
}

/// A Rust type an operand is stored as: one or more record words.
trait Operand: Sized + Copy {
    fn put(self, r: &mut [u32; OP_WORDS], at: &mut usize);
    fn get(r: &[u32; OP_WORDS], at: &mut usize) -> Option<Self>;
    fn each(self, f: &mut dyn FnMut(u32));
    /// Lets `f` rewrite each stored word.
    fn each_mut(&mut self, f: &mut dyn FnMut(&mut u32)) {
        let mut r = [0u32; OP_WORDS];
        let mut at = 0;
        self.put(&mut r, &mut at);
        r[..at].iter_mut().for_each(&mut *f);
        let mut back = 0;
        if let Some(v) = Self::get(&r, &mut back) {
            *self = v;
        }
    }
}

fn next(r: &[u32; OP_WORDS], at: &mut usize) -> Option<u32> {
    let w = *r.get(*at)?;
    *at += 1;
    Some(w)
}

impl Operand for u32 {
    fn put(self, r: &mut [u32; OP_WORDS], at: &mut usize) {
        r[*at] = self;
        *at += 1;
    }
    fn get(r: &[u32; OP_WORDS], at: &mut usize) -> Option<Self> {
        next(r, at)
    }
    fn each(self, f: &mut dyn FnMut(u32)) {
        f(self)
    }
}

impl Operand for i32 {
    fn put(self, r: &mut [u32; OP_WORDS], at: &mut usize) {
        (self as u32).put(r, at)
    }
    fn get(r: &[u32; OP_WORDS], at: &mut usize) -> Option<Self> {
        next(r, at).map(|w| w as i32)
    }
    fn each(self, f: &mut dyn FnMut(u32)) {
        f(self as u32)
    }
}

impl Operand for f32 {
    fn put(self, r: &mut [u32; OP_WORDS], at: &mut usize) {
        self.to_bits().put(r, at)
    }
    fn get(r: &[u32; OP_WORDS], at: &mut usize) -> Option<Self> {
        next(r, at).map(f32::from_bits)
    }
    fn each(self, f: &mut dyn FnMut(u32)) {
        f(self.to_bits())
    }
}

/// A flag: 0 or 1; any other word is refused.
impl Operand for bool {
    fn put(self, r: &mut [u32; OP_WORDS], at: &mut usize) {
        u32::from(self).put(r, at)
    }
    fn get(r: &[u32; OP_WORDS], at: &mut usize) -> Option<Self> {
        match next(r, at)? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn each(self, f: &mut dyn FnMut(u32)) {
        f(u32::from(self))
    }
}

impl<const N: usize> Operand for [u32; N] {
    fn put(self, r: &mut [u32; OP_WORDS], at: &mut usize) {
        for w in self {
            w.put(r, at);
        }
    }
    fn get(r: &[u32; OP_WORDS], at: &mut usize) -> Option<Self> {
        let mut out = [0u32; N];
        for w in &mut out {
            *w = next(r, at)?;
        }
        Some(out)
    }
    fn each(self, f: &mut dyn FnMut(u32)) {
        self.into_iter().for_each(f)
    }
}

/// The op table, declared once: code, name, and each operand with its stored type and role. `Op`, its name,
/// encode, decode and operand lists are derived from it.
macro_rules! op_table {
    ($($(#[$doc:meta])* $code:literal $name:ident { $($field:ident: $ty:ty = $role:ident),* $(,)? })*) => {
        /// One operation of the network program. Field names follow the tables in the module docs.
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub enum Op {
            $($(#[$doc])* #[allow(missing_docs)] $name { $($field: $ty),* },)*
        }

        impl Op {
            /// The opcode stored in word 0 of the record.
            pub const fn code(&self) -> u32 {
                match self {
                    $(Op::$name { .. } => $code,)*
                }
            }

            /// The op's name, as in the tables above.
            pub const fn name(&self) -> &'static str {
                match self {
                    $(Op::$name { .. } => stringify!($name),)*
                }
            }

            /// Encodes the op as its record words: the opcode, then the operands in table order, then zeros.
            pub fn encode(&self) -> [u32; OP_WORDS] {
                let mut r = [0u32; OP_WORDS];
                let mut at = 1;
                match *self {
                    $(Op::$name { $($field),* } => {
                        r[0] = $code;
                        $(Operand::put($field, &mut r, &mut at);)*
                    })*
                }
                r
            }

            /// Decodes a record; `None` for an unknown opcode, a flag other than 0 or 1, or non-zero unused words.
            pub fn decode(r: &[u32; OP_WORDS]) -> Option<Op> {
                let mut at = 1;
                let op = match r[0] {
                    $($code => Op::$name { $($field: <$ty as Operand>::get(r, &mut at)?),* },)*
                    _ => return None,
                };
                if r[at..].iter().any(|&w| w != 0) {
                    return None;
                }
                Some(op)
            }

            /// Lets `f` rewrite every operand word, with its role, in table order (array operands word by word).
            /// A rewrite that makes a flag other than 0 or 1 is dropped.
            pub fn map_operands(&mut self, f: &mut dyn FnMut(&mut u32, Role)) {
                match self {
                    $(Op::$name { $($field),* } => {
                        $(Operand::each_mut($field, &mut |w| f(w, Role::$role));)*
                    })*
                }
            }

            /// Calls `f` with every operand word and its role, in table order (array operands word by word).
            pub fn for_each_operand(&self, f: &mut dyn FnMut(u32, Role)) {
                match *self {
                    $(Op::$name { $($field),* } => {
                        $(Operand::each($field, &mut |w| f(w, Role::$role));)*
                    })*
                }
            }
        }
    };
}

op_table! {
    1 TimestepEmbed { out: u32 = Out, flip_sin_to_cos: bool = Param, freq_shift: f32 = Param, max_period: f32 = Param }
    2 Linear { out: u32 = Out, x: u32 = In, w: u32 = Tensor, b: u32 = Tensor }
    3 Silu { out: u32 = Out, x: u32 = In }
    4 ClassEmbed { out: u32 = Out, table: u32 = Tensor }
    5 Conv2d {
        out: u32 = Out, x: u32 = In, w: u32 = Tensor, b: u32 = Tensor, stride: u32 = Param, pad: [u32; 4] = Param,
        scratch: u32 = Scratch,
    }
    6 GroupNorm {
        out: u32 = Out, x: u32 = In, gamma: u32 = Tensor, beta: u32 = Tensor, groups: u32 = Param, eps: f32 = Param,
        silu: bool = Param,
    }
    7 AddChannel { x: u32 = InOut, v: u32 = In }
    8 ScaleShift { x: u32 = InOut, v: u32 = In }
    9 Add { out: u32 = Out, a: u32 = In, b: u32 = In, scale: f32 = Param }
    10 Attention {
        out: u32 = Out, x: u32 = In, xn: u32 = In, scratch: u32 = Scratch, w: [u32; 8] = Tensor, heads: u32 = Param,
        scale: f32 = Param,
    }
    11 Upsample2x { out: u32 = Out, x: u32 = In }
    12 Concat { out: u32 = Out, a: u32 = In, b: u32 = In }
    13 Affine { out: u32 = Out, x: u32 = In, mul: f32 = Param, add: f32 = Param }
    14 LayerNorm { out: u32 = Out, x: u32 = In, gamma: u32 = Tensor, beta: u32 = Tensor, eps: f32 = Param }
    15 ConvTranspose2d { out: u32 = Out, x: u32 = In, w: u32 = Tensor, b: u32 = Tensor, stride: u32 = Param, pad: [u32; 2] = Param }
    16 TimestepTable { out: u32 = Out, table: u32 = Tensor }
    17 Unary { out: u32 = Out, x: u32 = In, kind: u32 = Param, a: f32 = Param, b: f32 = Param }
    18 Binary { out: u32 = Out, a: u32 = In, b: u32 = In, dims: [u32; 3] = Param, bcast: u32 = Param, kind: u32 = Param }
    19 BinaryConst {
        out: u32 = Out, a: u32 = In, t: u32 = Tensor, dims: [u32; 3] = Param, bcast: u32 = Param, kind: u32 = Param,
        swap: bool = Param,
    }
    20 Quantize { out: u32 = Out, x: u32 = In }
    21 Dequantize { out: u32 = Out, x: u32 = In }
    22 QConv2d {
        out: u32 = Out, x: u32 = In, w: u32 = Tensor, brq: u32 = Tensor, stride: u32 = Param, pad: [u32; 4] = Param,
    }
    23 QLut { out: u32 = Out, x: u32 = In, table: u32 = Tensor }
    24 QGroupNorm {
        out: u32 = Out, x: u32 = In, gamma: u32 = Tensor, beta: u32 = Tensor, groups: u32 = Param, eps: f32 = Param,
        lut: u32 = Param, mid_scale: f32 = Param,
    }
    25 QAdd { out: u32 = Out, a: u32 = In, b: u32 = In, ma: i32 = Param, mb: i32 = Param, shift: u32 = Param }
    26 QSdpa {
        out: u32 = Out, q: u32 = In, k: u32 = In, v: u32 = In, scratch: u32 = Scratch, heads: u32 = Param,
        exp: u32 = Tensor, m_score: i32 = Param, s_score: u32 = Param, m_out: i32 = Param, s_out: u32 = Param,
    }
    27 QConcat {
        out: u32 = Out, a: u32 = In, b: u32 = In, ma: i32 = Param, sa: u32 = Param, mb: i32 = Param, sb: u32 = Param,
    }
    28 QScaleShift { out: u32 = Out, x: u32 = In, v: u32 = In }
    29 QClassEmbed { out: u32 = Out, x: u32 = In, table: u32 = Tensor }
    30 Permute { out: u32 = Out, x: u32 = In, dims: [u32; 6] = Param, perm: u32 = Param }
    31 MatMul {
        out: u32 = Out, a: u32 = In, b: u32 = In, batch: u32 = Param, m: u32 = Param, k: u32 = Param, n: u32 = Param,
        shared: u32 = Param, trans_b: bool = Param,
    }
    32 Softmax { out: u32 = Out, x: u32 = In, outer: u32 = Param, n: u32 = Param, inner: u32 = Param }
    33 Reduce { out: u32 = Out, x: u32 = In, outer: u32 = Param, n: u32 = Param, inner: u32 = Param, kind: u32 = Param }
    34 Slice {
        out: u32 = Out, x: u32 = In, outer: u32 = Param, n: u32 = Param, inner: u32 = Param, start: u32 = Param,
        step: u32 = Param, count: u32 = Param,
    }
    35 ConcatAxis {
        out: u32 = Out, a: u32 = In, b: u32 = In, outer: u32 = Param, na: u32 = Param, nb: u32 = Param,
        inner: u32 = Param,
    }
    36 Constant { out: u32 = Out, t: u32 = Tensor }
    37 LinearRows { out: u32 = Out, x: u32 = In, w: u32 = Tensor, b: u32 = Tensor }
    38 Pool2d {
        out: u32 = Out, x: u32 = In, k: [u32; 2] = Param, stride: [u32; 2] = Param, pad: [u32; 2] = Param,
        kind: u32 = Param,
    }
    39 Resize { out: u32 = Out, x: u32 = In, mode: u32 = Param }
    40 Pad { out: u32 = Out, x: u32 = In, pad: [u32; 4] = Param, value: f32 = Param, mode: u32 = Param }
    41 ClassTable { out: u32 = Out, table: u32 = Tensor }
}

/// `QGroupNorm`'s `lut` operand when no lookup table follows the normalisation.
pub const NO_LUT: u32 = u32::MAX;

impl Op {
    /// Whether the op is one of those imported graphs add (layer norm, transposed convolution, timestep table,
    /// pointwise maps, products of activations, softmax, reductions, constants, per-row linear layers, bilinear
    /// resizing, class tables) that has float kernels (on the CPU and as GPU shaders) and no int8 counterpart:
    /// int8 programs run them in f32 between dequantize and quantize steps. The data-movement ops (permutation,
    /// slices, axis concatenation, padding, pooling, nearest resizing) run on quantized values too (see the
    /// module docs); the converter still runs one in f32 where its operands do not allow that (an f32 input,
    /// inputs of another type or zero point, a padding constant no code stands for).
    pub const fn has_no_int8_kernel(&self) -> bool {
        match self {
            Op::LayerNorm { .. }
            | Op::ConvTranspose2d { .. }
            | Op::TimestepTable { .. }
            | Op::Unary { .. }
            | Op::Binary { .. }
            | Op::BinaryConst { .. }
            | Op::MatMul { .. }
            | Op::Softmax { .. }
            | Op::Reduce { .. }
            | Op::Constant { .. }
            | Op::LinearRows { .. }
            | Op::ClassTable { .. } => true,
            // Sampling code 0 is bilinear ([`ResizeSample::Linear`](crate::ops::ResizeSample)).
            Op::Resize { mode, .. } => (*mode >> 4) & 15 == 0,
            _ => false,
        }
    }

    /// Calls `f` with every activation value the op reads or writes, and its role, in table order.
    pub fn for_each_value(&self, mut f: impl FnMut(u32, Role)) {
        self.for_each_operand(&mut |w, role| {
            if role.is_value() {
                f(w, role)
            }
        })
    }

    /// The value that holds the op's result: its output, or the value it updates in place.
    pub fn result(&self) -> u32 {
        let mut out = None;
        self.for_each_value(|v, role| {
            if out.is_none() && matches!(role, Role::Out | Role::InOut) {
                out = Some(v);
            }
        });
        // Every op of the table has an `Out` or `InOut` operand (checked by a unit test).
        out.unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One op of every kind, each operand a distinct word, so that a swapped or dropped operand shows.
    fn every_op() -> [Op; 41] {
        let f = |i: u32| i as f32 + 0.5;
        [
            Op::TimestepEmbed { out: 1, flip_sin_to_cos: true, freq_shift: f(3), max_period: f(4) },
            Op::Linear { out: 1, x: 2, w: 3, b: 4 },
            Op::Silu { out: 1, x: 2 },
            Op::ClassEmbed { out: 1, table: 2 },
            Op::Conv2d { out: 1, x: 2, w: 3, b: 4, stride: 5, pad: [6, 7, 8, 9], scratch: 10 },
            Op::GroupNorm { out: 1, x: 2, gamma: 3, beta: 4, groups: 5, eps: f(6), silu: true },
            Op::AddChannel { x: 1, v: 2 },
            Op::ScaleShift { x: 1, v: 2 },
            Op::Add { out: 1, a: 2, b: 3, scale: f(4) },
            Op::Attention { out: 1, x: 2, xn: 3, scratch: 4, w: [5, 6, 7, 8, 9, 10, 11, 12], heads: 13, scale: f(14) },
            Op::Upsample2x { out: 1, x: 2 },
            Op::Concat { out: 1, a: 2, b: 3 },
            Op::Affine { out: 1, x: 2, mul: f(3), add: f(4) },
            Op::LayerNorm { out: 1, x: 2, gamma: 3, beta: 4, eps: f(5) },
            Op::ConvTranspose2d { out: 1, x: 2, w: 3, b: 4, stride: 5, pad: [6, 7] },
            Op::TimestepTable { out: 1, table: 2 },
            Op::Unary { out: 1, x: 2, kind: 3, a: f(4), b: f(5) },
            Op::Binary { out: 1, a: 2, b: 3, dims: [4, 5, 6], bcast: 7, kind: 8 },
            Op::BinaryConst { out: 1, a: 2, t: 3, dims: [4, 5, 6], bcast: 7, kind: 8, swap: true },
            Op::Quantize { out: 1, x: 2 },
            Op::Dequantize { out: 1, x: 2 },
            Op::QConv2d { out: 1, x: 2, w: 3, brq: 4, stride: 5, pad: [6, 7, 8, 9] },
            Op::QLut { out: 1, x: 2, table: 3 },
            Op::QGroupNorm { out: 1, x: 2, gamma: 3, beta: 4, groups: 5, eps: f(6), lut: 7, mid_scale: f(8) },
            Op::QAdd { out: 1, a: 2, b: 3, ma: -4, mb: 5, shift: 6 },
            Op::QSdpa {
                out: 1,
                q: 2,
                k: 3,
                v: 4,
                scratch: 5,
                heads: 6,
                exp: 7,
                m_score: -8,
                s_score: 9,
                m_out: 10,
                s_out: 11,
            },
            Op::QConcat { out: 1, a: 2, b: 3, ma: 4, sa: 5, mb: -6, sb: 7 },
            Op::QScaleShift { out: 1, x: 2, v: 3 },
            Op::QClassEmbed { out: 1, x: 2, table: 3 },
            Op::Permute { out: 1, x: 2, dims: [3, 4, 5, 6, 7, 8], perm: 9 },
            Op::MatMul { out: 1, a: 2, b: 3, batch: 4, m: 5, k: 6, n: 7, shared: 8, trans_b: true },
            Op::Softmax { out: 1, x: 2, outer: 3, n: 4, inner: 5 },
            Op::Reduce { out: 1, x: 2, outer: 3, n: 4, inner: 5, kind: 6 },
            Op::Slice { out: 1, x: 2, outer: 3, n: 4, inner: 5, start: 6, step: 7, count: 8 },
            Op::ConcatAxis { out: 1, a: 2, b: 3, outer: 4, na: 5, nb: 6, inner: 7 },
            Op::Constant { out: 1, t: 2 },
            Op::LinearRows { out: 1, x: 2, w: 3, b: 4 },
            Op::Pool2d { out: 1, x: 2, k: [3, 4], stride: [5, 6], pad: [7, 8], kind: 9 },
            Op::Resize { out: 1, x: 2, mode: 3 },
            Op::Pad { out: 1, x: 2, pad: [3, 4, 5, 6], value: f(7), mode: 8 },
            Op::ClassTable { out: 1, table: 2 },
        ]
    }

    #[test]
    fn every_op_encodes_and_decodes_to_itself() {
        let mut codes = [false; 64];
        for op in every_op() {
            let r = op.encode();
            assert_eq!(r[0], op.code(), "{}", op.name());
            assert!(!core::mem::replace(&mut codes[op.code() as usize], true), "{}: opcode used twice", op.name());
            assert_eq!(Op::decode(&r), Some(op), "{}", op.name());
            // Operands sit in words 1.. in table order: word k holds k (or f(k)'s bits, or a negated k).
            let used = 1 + r[1..].iter().rposition(|&w| w != 0).map_or(0, |p| p + 1);
            for (k, &w) in r.iter().enumerate().take(used).skip(1) {
                let k = k as u32;
                assert!(
                    w == k || w == (k as f32 + 0.5).to_bits() || w == (-(k as i32)) as u32 || w == 1,
                    "{}",
                    op.name()
                );
            }
            // A non-zero word past the operands is refused.
            if used < OP_WORDS {
                let mut bad = r;
                bad[used] = 1;
                assert_eq!(Op::decode(&bad), None, "{}: trailing word accepted", op.name());
            }
            // Every op has a result value.
            assert_ne!(op.result(), u32::MAX, "{}", op.name());
        }
        let mut r = [0u32; OP_WORDS];
        r[0] = 42;
        assert_eq!(Op::decode(&r), None, "unknown opcode");
        let mut flag = Op::GroupNorm { out: 1, x: 2, gamma: 3, beta: 4, groups: 5, eps: 0.0, silu: true }.encode();
        flag[7] = 2;
        assert_eq!(Op::decode(&flag), None, "a flag other than 0 or 1");
    }

    #[test]
    fn operand_roles_name_the_values() {
        let op = Op::Conv2d { out: 1, x: 2, w: 3, b: 4, stride: 5, pad: [6, 7, 8, 9], scratch: 10 };
        let mut seen = [(0u32, Role::Param); 3];
        let mut n = 0;
        op.for_each_value(|v, role| {
            seen[n] = (v, role);
            n += 1;
        });
        assert_eq!(seen[..n], [(1, Role::Out), (2, Role::In), (10, Role::Scratch)]);
        assert_eq!(Op::AddChannel { x: 7, v: 8 }.result(), 7);
        let mut op = op;
        op.map_operands(&mut |w, role| {
            if role == Role::Scratch {
                *w = 99
            }
        });
        assert_eq!(op, Op::Conv2d { out: 1, x: 2, w: 3, b: 4, stride: 5, pad: [6, 7, 8, 9], scratch: 99 });
    }
}
