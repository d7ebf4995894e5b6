//! Integer kernels of int8 programs (the second op table in [`crate::program`]).
//!
//! Everything per element is integer arithmetic: i8 × i8 (or i16 × i8) products summed in i32, rescaled by a
//! 31-bit multiplier and a shift in i64. Floats appear only where the work is per channel or per tensor, not per
//! element: the group-norm coefficients (one square root per group) and the conversions at the network's edges
//! (the f32 input and the f32 output the sampler works in).

use super::Conv2dShape;
use crate::par;

/// `(acc·m + 2^(s−1)) >> s`: rescales an accumulator by the fixed-point factor `m / 2^s`, rounding ties up.
/// Validation bounds `acc` and `m` so that the product fits; wrapping keeps a broken bound from panicking.
#[inline(always)]
pub fn rq(acc: i64, m: i32, s: u32) -> i64 {
    acc.wrapping_mul(i64::from(m)).wrapping_add((1i64 << s) >> 1) >> s
}

/// A quantized activation element (i8 or i16), symmetric range `±MAX`.
pub trait QElem: Copy + Send + Sync + 'static {
    /// Largest magnitude.
    const MAX: i32;
    /// Zero.
    const ZERO: Self;
    /// The element as i32.
    fn get(self) -> i32;
    /// `v` clamped to `±MAX`.
    fn sat(v: i64) -> Self;
}

impl QElem for i8 {
    const MAX: i32 = 127;
    const ZERO: Self = 0;
    #[inline(always)]
    fn get(self) -> i32 {
        i32::from(self)
    }
    #[inline(always)]
    fn sat(v: i64) -> Self {
        v.clamp(-127, 127) as i8
    }
}

impl QElem for i16 {
    const MAX: i32 = 32767;
    const ZERO: Self = 0;
    #[inline(always)]
    fn get(self) -> i32 {
        i32::from(self)
    }
    #[inline(always)]
    fn sat(v: i64) -> Self {
        v.clamp(-32767, 32767) as i16
    }
}

/// A read-only quantized tensor of either element type (for the cheap, element-wise ops).
#[derive(Clone, Copy)]
pub enum QRef<'a> {
    /// i8 elements.
    I8(&'a [i8]),
    /// i16 elements.
    I16(&'a [i16]),
}

impl QRef<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            QRef::I8(d) => d.len(),
            QRef::I16(d) => d.len(),
        }
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` (0 past the end).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i32 {
        match self {
            QRef::I8(d) => d.get(i).map_or(0, |&v| i32::from(v)),
            QRef::I16(d) => d.get(i).map_or(0, |&v| i32::from(v)),
        }
    }
}

/// A writable quantized tensor of either element type.
pub enum QMut<'a> {
    /// i8 elements.
    I8(&'a mut [i8]),
    /// i16 elements.
    I16(&'a mut [i16]),
}

impl QMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A read-only view.
    #[inline(always)]
    pub fn as_ref(&self) -> QRef<'_> {
        match self {
            QMut::I8(d) => QRef::I8(d),
            QMut::I16(d) => QRef::I16(d),
        }
    }
    /// Element `i` (0 past the end).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i32 {
        self.as_ref().get(i)
    }
    /// Stores `v`, saturated to the element type's symmetric range (ignored past the end).
    #[inline(always)]
    pub fn set(&mut self, i: usize, v: i64) {
        match self {
            QMut::I8(d) => {
                if let Some(e) = d.get_mut(i) {
                    *e = i8::sat(v);
                }
            }
            QMut::I16(d) => {
                if let Some(e) = d.get_mut(i) {
                    *e = i16::sat(v);
                }
            }
        }
    }
    /// The largest magnitude it can hold.
    pub fn max(&self) -> i32 {
        match self {
            QMut::I8(_) => i8::MAX.into(),
            QMut::I16(_) => i16::MAX.into(),
        }
    }
}

/// An operand of an element-wise op: another tensor, or the output itself (the op works in place).
#[derive(Clone, Copy)]
pub enum Src<'a> {
    /// A tensor disjoint from the output.
    Other(QRef<'a>),
    /// The output's own previous contents.
    Out,
}

impl Src<'_> {
    #[inline(always)]
    fn get(&self, out: &QMut<'_>, i: usize) -> i32 {
        match self {
            Src::Other(r) => r.get(i),
            Src::Out => out.get(i),
        }
    }
}

/// Output channels computed together (each input element loaded once serves this many).
const QCO: usize = 4;
/// Kernel positions (kh·kw) up to which the padding correction uses precomputed sums.
const POS_MAX: usize = 25;

/// Integer convolution: `out[o] = sat(rq(b[o] + Σ w·x, m[o], s[o]))` over every tap, taps in the padding reading
/// `pad` (the input's zero point, the integer that stands for 0.0).
///
/// Columns whose taps all lie inside the input run a register-tiled loop (4 output channels × 2 columns, no
/// bounds tests); the few border columns take a per-tap checked path. No padded copy of the input is made, so
/// the arena holds only the activations.
// out (co,ho,wo), x (ci,h,w), w (co,ci,kh,kw), brq (co,3) = bias, multiplier, shift
pub fn qconv2d<X: QElem, Y: QElem>(out: &mut [Y], x: &[X], w: &[i8], brq: &[i32], g: &Conv2dShape, pad: X) {
    let plane = g.ho * g.wo;
    let taps = g.ci * g.kh * g.kw;
    let ([pt, pl, _, _], s, kw) = (g.pad, g.stride.max(1), g.kw);
    if plane == 0 || taps == 0 || x.len() < g.ci * g.h * g.w || w.len() < g.co * taps || brq.len() < 3 * g.co {
        return;
    }
    // Columns [xa, xb) read only inside the row.
    let xa = pl.div_ceil(s).min(g.wo);
    let xb = match (g.w + pl).checked_sub(kw) {
        Some(last) => (last / s + 1).min(g.wo),
        None => 0,
    }
    .max(xa);
    par::for_each_chunk(out, QCO * plane, |blk, ob| {
        let co0 = blk * QCO;
        let nco = ob.len() / plane;
        if nco == 0 {
            return;
        }
        // Missing channels of the last block repeat the last one; their results are not stored.
        let ch = |c: usize| co0 + c.min(nco - 1);
        let ws: [&[i8]; QCO] = core::array::from_fn(|c| &w[ch(c) * taps..][..taps]);
        let bias: [i32; QCO] = core::array::from_fn(|c| brq[3 * ch(c)]);
        // Kernel rows inside the input for output row oy (iy = oy·s + ky − pt ∈ [0, h)), columns for ox.
        let rows_in = |oy: usize| {
            let lo = pt.saturating_sub(oy * s).min(g.kh);
            lo..(g.h + pt).saturating_sub(oy * s).min(g.kh).max(lo)
        };
        let cols_in = |ox: usize| {
            let lo = pl.saturating_sub(ox * s).min(kw);
            lo..(g.w + pl).saturating_sub(ox * s).min(kw).max(lo)
        };
        let pad_v = pad.get();
        // The kernels sum the taps inside the input; taps in the padding read `pad`, added here from the
        // kernel's sums over input channels per kernel position (precomputed when the kernel is small).
        let positions = g.kh * kw;
        let mut pos_sum = [[0i32; POS_MAX]; QCO];
        if pad_v != 0 && positions <= POS_MAX {
            for (sums, wc) in pos_sum.iter_mut().zip(&ws) {
                for (t, &wv) in wc.iter().enumerate() {
                    sums[t % positions] += i32::from(wv);
                }
            }
        }
        let store = |ob: &mut [Y], oy: usize, ox: usize, acc: &[i32; QCO]| {
            let mut acc = *acc;
            let (ky, kx) = if pad_v != 0 { (rows_in(oy), cols_in(ox)) } else { (0..g.kh, 0..kw) };
            if ky.len() < g.kh || kx.len() < kw {
                for (c, (a, wc)) in acc.iter_mut().zip(&ws).enumerate() {
                    let sum_at = |p: usize| match pos_sum[c].get(p) {
                        Some(&v) if positions <= POS_MAX => v,
                        _ => wc.iter().skip(p).step_by(positions).map(|&v| i32::from(v)).sum::<i32>(),
                    };
                    let outside: i32 = (0..positions)
                        .filter(|p| !(ky.contains(&(p / kw)) && kx.contains(&(p % kw))))
                        .map(sum_at)
                        .sum();
                    *a += pad_v * outside;
                }
            }
            for (c, &a) in acc.iter().enumerate().take(nco) {
                let (m, sh) = (brq[3 * (co0 + c) + 1], brq[3 * (co0 + c) + 2] as u32);
                ob[c * plane + oy * g.wo + ox] = Y::sat(rq(i64::from(a), m, sh));
            }
        };
        for oy in 0..g.ho {
            let ky_range = rows_in(oy);
            let pixel = |ox: usize| -> [i32; QCO] {
                let mut acc = bias;
                for ci in 0..g.ci {
                    for ky in ky_range.clone() {
                        let row = &x[(ci * g.h + oy * s + ky - pt) * g.w..][..g.w];
                        let tap = (ci * g.kh + ky) * kw;
                        for kx in cols_in(ox) {
                            let xv = row[ox * s + kx - pl].get();
                            for (a, wc) in acc.iter_mut().zip(&ws) {
                                *a += i32::from(wc[tap + kx]) * xv;
                            }
                        }
                    }
                }
                acc
            };
            let fixed = match (kw, s) {
                (1, 1) => Some(tile::<X, 1, 1, 2> as Tile<X>),
                (3, 1) => Some(tile::<X, 3, 1, 4> as Tile<X>),
                (3, 2) => Some(tile::<X, 3, 2, 5> as Tile<X>),
                _ => None,
            };
            if let Some(tile) = fixed {
                // Every column, borders included (the tile reads zeros outside the row: `store` adds the
                // padding's share), two at a time.
                for ox in (0..g.wo).step_by(2) {
                    let rows = Rows { x, g, oy, ky: ky_range.clone(), base: (ox * s) as isize - pl as isize };
                    let (a0, a1) = tile(&rows, &ws, bias);
                    store(ob, oy, ox, &a0);
                    if ox + 1 < g.wo {
                        store(ob, oy, ox + 1, &a1);
                    }
                }
                continue;
            }
            for ox in (0..xa).chain(xb..g.wo) {
                store(ob, oy, ox, &pixel(ox));
            }
            let mut ox = xa;
            while ox + 2 <= xb {
                let rows = Rows { x, g, oy, ky: ky_range.clone(), base: (ox * s - pl) as isize };
                let (a0, a1) = tile_any(&rows, &ws, bias);
                store(ob, oy, ox, &a0);
                store(ob, oy, ox + 1, &a1);
                ox += 2;
            }
            if ox < xb {
                store(ob, oy, ox, &pixel(ox));
            }
        }
    });
}

/// The input rows one output row of a convolution reads, and the input column of its first tap (negative in
/// the left padding).
struct Rows<'x, X> {
    x: &'x [X],
    g: &'x Conv2dShape,
    oy: usize,
    ky: core::ops::Range<usize>,
    base: isize,
}

/// A two-column tile kernel.
type Tile<X> = fn(&Rows<'_, X>, &[&[i8]; QCO], [i32; QCO]) -> ([i32; QCO], [i32; QCO]);

/// Two output columns (taps from input column `base` and `base + S`) × four output channels, for a `K`-wide
/// kernel with stride `S` (`N` = `K + S` input columns): accumulators in registers, fixed-size arrays so that
/// the tap loops unroll without bounds tests. Input columns outside the row read as zero (the padding).
fn tile<X: QElem, const K: usize, const S: usize, const N: usize>(
    r: &Rows<'_, X>,
    ws: &[&[i8]; QCO],
    bias: [i32; QCO],
) -> ([i32; QCO], [i32; QCO]) {
    let g = r.g;
    let (mut a0, mut a1) = (bias, bias);
    for ci in 0..g.ci {
        for ky in r.ky.clone() {
            // Copied into locals without branches (the ranges are always inside), so that the tap loops unroll.
            let row = &r.x[(ci * g.h + r.oy * g.stride + ky - g.pad[0]) * g.w..][..g.w];
            let inside = usize::try_from(r.base).ok().and_then(|b| row.get(b..b + N)).and_then(|p| p.try_into().ok());
            let px: [X; N] = inside.unwrap_or_else(|| {
                core::array::from_fn(|j| {
                    usize::try_from(r.base + j as isize).ok().and_then(|i| row.get(i)).copied().unwrap_or(X::ZERO)
                })
            });
            let tap = (ci * g.kh + ky) * K;
            for (c, wc) in ws.iter().enumerate() {
                let wk: [i8; K] = wc.get(tap..tap + K).and_then(|w| w.try_into().ok()).unwrap_or([0; K]);
                for kx in 0..K {
                    let wv = i32::from(wk[kx]);
                    a0[c] += wv * px[kx].get();
                    a1[c] += wv * px[S + kx].get();
                }
            }
        }
    }
    (a0, a1)
}

/// [`tile`] for any kernel width and stride.
fn tile_any<X: QElem>(r: &Rows<'_, X>, ws: &[&[i8]; QCO], bias: [i32; QCO]) -> ([i32; QCO], [i32; QCO]) {
    let g = r.g;
    let (kw, s) = (g.kw, g.stride);
    let (mut a0, mut a1) = (bias, bias);
    for ci in 0..g.ci {
        for ky in r.ky.clone() {
            let row = &r.x[(ci * g.h + r.oy * s + ky - g.pad[0]) * g.w..];
            let b = r.base as usize;
            let px = &row[b..b + kw + s];
            let tap = (ci * g.kh + ky) * kw;
            for c in 0..QCO {
                let wk = &ws[c][tap..tap + kw];
                for kx in 0..kw {
                    let wv = i32::from(wk[kx]);
                    a0[c] += wv * px[kx].get();
                    a1[c] += wv * px[s + kx].get();
                }
            }
        }
    }
    (a0, a1)
}

/// Parameters of [`qgroup_norm`].
pub struct QNorm<'a> {
    /// Channels.
    pub c: usize,
    /// Pixels per channel.
    pub hw: usize,
    /// Groups (divides `c`).
    pub groups: usize,
    /// Per-channel scale.
    pub gamma: &'a [f32],
    /// Per-channel shift.
    pub beta: &'a [f32],
    /// Variance epsilon.
    pub eps: f32,
    /// The input's scale.
    pub x_scale: f32,
    /// The scale of the normalised result (before the lookup table).
    pub mid_scale: f32,
    /// SiLU (or any i8 → i8 map) applied to the normalised result.
    pub lut: Option<&'a [i8; 256]>,
}

/// Fractional bits of the per-channel coefficients.
const NORM_FRAC: u32 = 24;
/// Coefficient magnitude limit: keeps `x·A + B` far inside i64 for any i16 `x`.
const NORM_LIMIT: i64 = 1 << 40;

/// Group normalisation: statistics exact in integers, then per channel `y = (x·A + B) >> 24` with the
/// fixed-point coefficients `A`, `B` computed once per channel in f32. Works in place when `x` is `Src::Out`.
pub fn qgroup_norm(out: &mut QMut<'_>, x: Src<'_>, p: &QNorm<'_>) {
    let (c, hw) = (p.c, p.hw);
    if p.groups == 0 || !c.is_multiple_of(p.groups) || hw == 0 || p.gamma.len() < c || p.beta.len() < c {
        return;
    }
    let cg = c / p.groups;
    let n = (cg * hw) as i64;
    let ymax = i64::from(if p.lut.is_some() { 127 } else { out.max() });
    for g in 0..p.groups {
        let base = g * cg * hw;
        let (mut s1, mut s2) = (0i64, 0i64);
        for i in base..base + cg * hw {
            let q = i64::from(x.get(out, i));
            s1 += q;
            s2 += q * q;
        }
        // n·Σq² − (Σq)² ≥ 0 exactly; mean and variance in units of the input's integer step.
        let var_n2 = i128::from(n) * i128::from(s2) - i128::from(s1) * i128::from(s1);
        let mean = (s1 as f64 / n as f64) as f32;
        let var = (var_n2 as f64 / (n as f64 * n as f64)) as f32;
        let inv = 1.0 / libm::sqrtf(var * p.x_scale * p.x_scale + p.eps);
        for ch in g * cg..(g + 1) * cg {
            let gi = p.gamma[ch] * inv;
            let a = p.x_scale * gi / p.mid_scale;
            let b = (p.beta[ch] - mean * p.x_scale * gi) / p.mid_scale;
            channel_affine(out, x, ch * hw..(ch + 1) * hw, a, b, ymax, p.lut);
        }
    }
}

/// `out[i] = lut(clamp((x[i]·A + B) >> 24))` over `range`, with `a`, `b` rounded to 24 fractional bits: the
/// per-element work of group norm and of the scale-shift time embedding, integer only.
fn channel_affine(
    out: &mut QMut<'_>,
    x: Src<'_>,
    range: core::ops::Range<usize>,
    a: f32,
    b: f32,
    ymax: i64,
    lut: Option<&[i8; 256]>,
) {
    let fix = |v: f32| (libm::roundf(v * (1u32 << NORM_FRAC) as f32) as i64).clamp(-NORM_LIMIT, NORM_LIMIT);
    let (a, b) = (fix(a), fix(b) + (1 << (NORM_FRAC - 1)));
    for i in range {
        let y = ((i64::from(x.get(out, i)) * a + b) >> NORM_FRAC).clamp(-ymax, ymax);
        let y = match lut {
            Some(t) => i64::from(t[(y + 128) as u8 as usize]),
            None => y,
        };
        out.set(i, y);
    }
}

/// Scale-shift time embedding: `out[c] = x[c]·(1 + v[c]) + v[C + c]` (`x` `(c, hw)`, `v` `(2c)`), with
/// the per-channel factors in f32 and the per-element work in fixed point.
#[allow(clippy::too_many_arguments)] // the operands and their three scales
pub fn qscale_shift(out: &mut QMut<'_>, x: Src<'_>, v: QRef<'_>, c: usize, hw: usize, sx: f32, sv: f32, so: f32) {
    let ymax = i64::from(out.max());
    for ch in 0..c {
        let a = sx * (1.0 + v.get(ch) as f32 * sv) / so;
        let b = v.get(c + ch) as f32 * sv / so;
        channel_affine(out, x, ch * hw..(ch + 1) * hw, a, b, ymax, None);
    }
}

/// Class embedding: `out = x + row`, `row` the f32 embedding of the class (a vector, once per forward pass,
/// so float arithmetic).
pub fn qclass_embed(out: &mut QMut<'_>, x: Src<'_>, row: &[f32], sx: f32, so: f32) {
    for (i, &r) in row.iter().enumerate() {
        let y = (x.get(out, i) as f32 * sx + r) / so;
        out.set(i, libm::roundf(y) as i64);
    }
}

/// `out = sat((a·ma + b·mb + 2^(shift−1)) >> shift)`; `b` is broadcast over each channel's `hw` pixels when
/// `b_per_channel`.
#[allow(clippy::too_many_arguments)] // two operands, their multipliers, the shift and the broadcast flag
pub fn qadd(out: &mut QMut<'_>, a: Src<'_>, b: Src<'_>, ma: i32, mb: i32, shift: u32, hw: usize, b_per_channel: bool) {
    let half = (1i64 << shift) >> 1;
    for i in 0..out.len() {
        let bi = if b_per_channel { i / hw.max(1) } else { i };
        let av = i64::from(a.get(out, i));
        let bv = i64::from(b.get(out, bi));
        out.set(i, (av * i64::from(ma) + bv * i64::from(mb) + half) >> shift);
    }
}

/// `out[at + i] = sat(rq(x[i], m, s))`: a requantizing copy (one half of a concatenation).
pub fn qcopy(out: &mut QMut<'_>, at: usize, x: QRef<'_>, m: i32, s: u32) {
    for i in 0..x.len() {
        out.set(at + i, rq(i64::from(x.get(i)), m, s));
    }
}

/// `out = table[x + 128]`, in place when `x` is `Src::Out` (i8 → i8).
pub fn qlut(out: &mut [i8], x: Option<&[i8]>, table: &[i8; 256]) {
    match x {
        Some(x) => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = table[(i32::from(v) + 128) as u8 as usize];
            }
        }
        None => {
            for o in out.iter_mut() {
                *o = table[(i32::from(*o) + 128) as u8 as usize];
            }
        }
    }
}

/// `out = sat(round(x / scale))`.
pub fn quantize(out: &mut QMut<'_>, x: &[f32], scale: f32) {
    for (i, &v) in x.iter().enumerate() {
        out.set(i, libm::roundf(v / scale) as i64);
    }
}

/// `out = x · scale`.
pub fn dequantize(out: &mut [f32], x: QRef<'_>, scale: f32) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = x.get(i) as f32 * scale;
    }
}

/// Parameters of [`qsdpa`].
pub struct QAttention<'a> {
    /// Channels (all heads).
    pub c: usize,
    /// Tokens.
    pub n: usize,
    /// Heads (divides `c`).
    pub heads: usize,
    /// `exp[z] ∝ e^(−z/Z)` for the converter's step `Z`.
    pub exp: &'a [i16],
    /// Score difference → table index.
    pub m_score: i32,
    /// Shift of `m_score`.
    pub s_score: u32,
    /// `Σ p·v` → output.
    pub m_out: i32,
    /// Shift of `m_out`.
    pub s_out: u32,
}

/// Multi-head attention core in integers: scores, a table-driven softmax with 15-bit probabilities, and the
/// probability-weighted sum of `v`. `q`, `k`, `v`, `out` are `(c, n)`; `scores` holds `n` i32.
pub fn qsdpa(out: &mut [i8], q: &[i8], k: &[i8], v: &[i8], scores: &mut [i32], p: &QAttention<'_>) {
    let (c, n) = (p.c, p.n);
    if p.heads == 0 || !c.is_multiple_of(p.heads) || n == 0 || p.exp.is_empty() {
        return;
    }
    let (Some(s), Some(last)) = (scores.get_mut(..n), p.exp.len().checked_sub(1)) else { return };
    if [out.len(), q.len(), k.len(), v.len()].iter().any(|&l| l < c * n) {
        return;
    }
    let dh = c / p.heads;
    for head in 0..p.heads {
        let chans = head * dh..(head + 1) * dh;
        for i in 0..n {
            s.fill(0);
            for d in chans.clone() {
                let qv = i32::from(q[d * n + i]);
                for (e, &kv) in s.iter_mut().zip(&k[d * n..(d + 1) * n]) {
                    *e += qv * i32::from(kv);
                }
            }
            let mx = s.iter().copied().max().unwrap_or(0);
            let mut sum = 0i64;
            for e in s.iter_mut() {
                let z = rq(i64::from(mx) - i64::from(*e), p.m_score, p.s_score).clamp(0, last as i64) as usize;
                *e = i32::from(p.exp[z]);
                sum += i64::from(*e);
            }
            let sum = sum.max(1);
            for e in s.iter_mut() {
                *e = ((i64::from(*e) << 15) + sum / 2).wrapping_div(sum) as i32;
            }
            for d in chans.clone() {
                let acc: i64 =
                    s.iter().zip(&v[d * n..(d + 1) * n]).map(|(&pj, &vj)| i64::from(pj) * i64::from(vj)).sum();
                out[d * n + i] = i8::sat(rq(acc, p.m_out, p.s_out));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    /// Deterministic pseudo-random integers in `-r..=r`.
    fn ints(n: usize, r: i32, seed: u32) -> impl Iterator<Item = i32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n).map(move |_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            ((s >> 8) % (2 * r as u32 + 1)) as i32 - r
        })
    }

    #[test]
    fn rq_rounds_ties_up() {
        assert_eq!(rq(5, 1 << 30, 31), 3); // 2.5 → 3
        assert_eq!(rq(-5, 1 << 30, 31), -2); // −2.5 → −2
        assert_eq!(rq(7, 1 << 30, 30), 7); // identity
        assert_eq!(rq(-7, 3 << 29, 30), -10); // −7 × 1.5 = −10.5 → −10
    }

    /// Direct definition: every tap, zero padding, i64 sums.
    fn reference<X: QElem, Y: QElem>(x: &[X], w: &[i8], brq: &[i32], g: &Conv2dShape, pad: i32) -> Vec<Y> {
        let mut out = Vec::new();
        for o in 0..g.co {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut acc = i64::from(brq[3 * o]);
                    for ci in 0..g.ci {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad[1] as isize;
                                let outside = iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize;
                                let xv =
                                    if outside { pad } else { x[(ci * g.h + iy as usize) * g.w + ix as usize].get() };
                                let wv = w[((o * g.ci + ci) * g.kh + ky) * g.kw + kx];
                                acc += i64::from(xv) * i64::from(wv);
                            }
                        }
                    }
                    out.push(Y::sat(rq(acc, brq[3 * o + 1], brq[3 * o + 2] as u32)));
                }
            }
        }
        out
    }

    fn check_conv<X: QElem + core::fmt::Debug, Y: QElem + PartialEq + core::fmt::Debug + Default>(
        from: fn(i32) -> X,
        g: Conv2dShape,
        pad: i32,
    ) {
        let x: Vec<X> = ints(g.ci * g.h * g.w, X::MAX, 1).map(from).collect();
        let w: Vec<i8> = ints(g.co * g.ci * g.kh * g.kw, 127, 2).map(|v| v as i8).collect();
        let b: Vec<i32> = ints(g.co, 5000, 3).collect();
        // Multipliers that keep outputs mostly in range, some saturating.
        let shift = 14 + (X::MAX > 127) as i32 * 7;
        let brq: Vec<i32> = (0..g.co).flat_map(|o| [b[o], (1 << 30) + 12345 * o as i32, shift]).collect();
        let want = reference::<X, Y>(&x, &w, &brq, &g, pad);
        let pad = from(pad);
        let mut got = vec![Y::default(); g.co * g.ho * g.wo];
        qconv2d(&mut got, &x, &w, &brq, &g, pad);
        assert_eq!(got, want, "{g:?}");
    }

    fn shape(ci: usize, h: usize, w: usize, co: usize, k: usize, stride: usize, pad: [usize; 4]) -> Conv2dShape {
        let ho = (h + pad[0] + pad[2] - k) / stride + 1;
        let wo = (w + pad[1] + pad[3] - k) / stride + 1;
        Conv2dShape { ci, h, w, co, kh: k, kw: k, stride, pad, ho, wo }
    }

    #[test]
    fn qconv2d_matches_the_definition() {
        for g in [
            shape(3, 7, 9, 5, 3, 1, [1; 4]),
            shape(2, 8, 40, 6, 3, 1, [1; 4]), // wider than one column block, channels not a multiple of 4
            shape(4, 9, 9, 4, 3, 2, [1; 4]),  // stride 2
            shape(3, 8, 8, 3, 3, 2, [0, 0, 1, 1]), // diffusers' downsample_padding = 0
            shape(5, 6, 6, 7, 1, 1, [0; 4]),  // 1×1 (linear layers, attention projections)
            shape(1, 4, 4, 2, 3, 1, [2; 4]),  // padding wider than half the kernel
            shape(2, 9, 11, 9, 3, 2, [1; 4]), // stride 2, odd sizes, a partial channel block
            shape(3, 3, 2, 4, 3, 1, [1; 4]),  // narrower than the kernel
            shape(2, 8, 9, 3, 7, 1, [3; 4]),  // 49 kernel positions: the padding sum without the table
        ] {
            for pad in [0, -97] {
                check_conv::<i8, i8>(|v| v as i8, g, pad);
                check_conv::<i8, i16>(|v| v as i8, g, pad);
                check_conv::<i16, i8>(|v| v as i16, g, pad);
                check_conv::<i16, i16>(|v| v as i16, g, pad);
            }
        }
    }

    #[test]
    fn qgroup_norm_matches_float_within_one_step() {
        let (c, hw, groups) = (6, 20, 3);
        let x: Vec<i16> = ints(c * hw, 3000, 4).map(|v| (v + 500) as i16).collect();
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + 0.2 * i as f32).collect();
        let beta: Vec<f32> = (0..c).map(|i| 0.1 * i as f32 - 0.2).collect();
        let (xs, mid) = (0.001f32, 0.03f32);
        let p = QNorm { c, hw, groups, gamma: &gamma, beta: &beta, eps: 1e-5, x_scale: xs, mid_scale: mid, lut: None };
        let mut out = [0i8; 120];
        qgroup_norm(&mut QMut::I8(&mut out), Src::Other(QRef::I16(&x)), &p);
        let cg = c / groups;
        for g in 0..groups {
            let part = &x[g * cg * hw..(g + 1) * cg * hw];
            let n = part.len() as f64;
            let mean = part.iter().map(|&v| f64::from(v) * f64::from(xs)).sum::<f64>() / n;
            let var = part.iter().map(|&v| (f64::from(v) * f64::from(xs) - mean).powi(2)).sum::<f64>() / n;
            for i in g * cg * hw..(g + 1) * cg * hw {
                let ch = i / hw;
                let y = (f64::from(x[i]) * f64::from(xs) - mean) / (var + 1e-5).sqrt() * f64::from(gamma[ch])
                    + f64::from(beta[ch]);
                let want = (y / f64::from(mid)).round().clamp(-127.0, 127.0);
                assert!((f64::from(out[i]) - want).abs() <= 1.0, "{i}: {} vs {want}", out[i]);
            }
        }
        // In place gives the same bits.
        let mut inplace: Vec<i16> = x.clone();
        let p16 = QNorm { mid_scale: mid, ..p };
        qgroup_norm(&mut QMut::I16(&mut inplace), Src::Out, &p16);
        let mut apart = vec![0i16; x.len()];
        qgroup_norm(&mut QMut::I16(&mut apart), Src::Other(QRef::I16(&x)), &p16);
        assert_eq!(inplace, apart);
    }

    #[test]
    fn qadd_broadcasts_and_saturates() {
        let a = [10i8, -20, 30, 127];
        let b = [100i16, -100];
        let mut out = [0i8; 4];
        // out = (a·2 + b·1) / 2 with b per channel (2 channels × 2 pixels).
        qadd(&mut QMut::I8(&mut out), Src::Other(QRef::I8(&a)), Src::Other(QRef::I16(&b)), 2, 1, 1, 2, true);
        assert_eq!(out, [60, 30, -20, 77]);
        let mut inplace = a;
        qadd(&mut QMut::I8(&mut inplace), Src::Out, Src::Out, 3, 0, 0, 1, false);
        assert_eq!(inplace, [30, -60, 90, 127]);
    }

    #[test]
    fn qsdpa_matches_float_attention() {
        let (c, n, heads) = (8, 10, 2);
        let q: Vec<i8> = ints(c * n, 127, 5).map(|v| v as i8).collect();
        let k: Vec<i8> = ints(c * n, 127, 6).map(|v| v as i8).collect();
        let v: Vec<i8> = ints(c * n, 127, 7).map(|v| v as i8).collect();
        let (sq, sk, sv, so) = (0.02f64, 0.03f64, 0.05f64, 0.04f64);
        let dh = (c / heads) as f64;
        let steps = 64.0;
        let exp: Vec<i16> = (0..1024).map(|z| (32767.0 * (-(z as f64) / steps).exp()).round() as i16).collect();
        let fixed = |r: f64| {
            let s = (30 - r.log2().floor() as i32) as u32;
            ((r * 2f64.powi(s as i32)).round() as i32, s)
        };
        let (m_score, s_score) = fixed(sq * sk / dh.sqrt() * steps);
        let (m_out, s_out) = fixed(sv / (32768.0 * so));
        let p = QAttention { c, n, heads, exp: &exp, m_score, s_score, m_out, s_out };
        let mut out = vec![0i8; c * n];
        let mut scratch = vec![0i32; n];
        qsdpa(&mut out, &q, &k, &v, &mut scratch, &p);
        for h in 0..heads {
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (h * 4..h * 4 + 4)
                            .map(|d| f64::from(q[d * n + i]) * sq * f64::from(k[d * n + j]) * sk)
                            .sum::<f64>()
                            / dh.sqrt()
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in h * 4..h * 4 + 4 {
                    let y = (0..n).map(|j| e[j] / sum * f64::from(v[d * n + j]) * sv).sum::<f64>() / so;
                    let got = f64::from(out[d * n + i]);
                    assert!(
                        (got - y.round().clamp(-127.0, 127.0)).abs() <= 2.0,
                        "head {h} query {i} ch {d}: {got} vs {y}"
                    );
                }
            }
        }
    }
}
