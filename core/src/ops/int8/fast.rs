//! Integer kernels for x86-64 hosts (feature `std`), chosen at run time by the CPU's instruction sets. Integer
//! arithmetic is exact, so every kernel gives the bits of the portable one: on every machine, for any thread
//! count, in both kernel modes.
//!
//! - Convolution ([`super::qconv2d`]): AVX-512 VNNI (`vpdpbusd`: four u8 × i8 products summed into each i32
//!   lane, and `vpdpwssd`, two i16 × i16 products, for i16 activations), else AVX2 (`vpmaddwd`, two i16 products
//!   per lane, then an add), else none (the portable kernel runs). A tile's rows are requantized with AVX-512F
//!   or AVX2 (64-bit products, see [`requant_row`]), the input packed with a loop compiled for AVX2. Linear
//!   layers on a 1×1 map are dot products ([`matvec`]): AVX-512 VNNI, else AVX2.
//! - Group norm ([`super::qgroup_norm`]): the per-element affine map and its lookup table with AVX-512BW (and
//!   VBMI for the table), else AVX2 ([`affine_i8`]); the group statistics compiled for AVX-512 or AVX2.
//! - Attention ([`super::qsdpa`]), adds ([`super::qadd`]) and requantizing copies ([`super::qcopy`]): the
//!   portable loops compiled for AVX-512 (F, BW, DQ, VL), else AVX2 (`compiled_for_simd!`), so that they
//!   vectorise; the softmax divides in f64 where that is exact ([`divide_exact`]).
//!
//! The microkernel is the float one's (`ops/fast.rs`): a tile of output channels × positions along the padded
//! rows (`p = y·rs + x`, the same [`Grid`]) held in registers for the whole reduction, so that for stride 1 each
//! tap of a tile is one contiguous run of the input. Here the input is first copied into that padded grid with
//! its channels interleaved, one `u32` per position holding a group of channels: four as the unsigned bytes
//! `x + 128` (the first operand of `vpdpbusd` is unsigned; `Σ w·(x + 128) = Σ w·x + 128·Σ w`, and the second
//! sum is taken off the bias first) or two as i16. A tap of a group is then one vector load, multiplied by one
//! broadcast `u32` of weights per output channel. The padding holds the input's zero point (the integer that
//! stands for 0.0), so border pixels need no correction.
//!
//! Scratch beyond the arena, per thread and reused (never per call): the packed input, 4 bytes per group and
//! padded position (about the input's size in bytes for i8 activations, twice it for i16), and one block's
//! packed weights, `mr × ci·kh·kw` bytes for i8 (at most 8 × 4,608 × 4 / 4 words for 512 input channels, 3×3).
#![allow(unsafe_code)]

use core::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::{rq, PackedWeights, QElem};
use crate::ops::fast::{Grid, MAX_NP};
use crate::ops::Conv2dShape;
use crate::par;

/// How the reduction is packed into `u32`s, for the input and the weights alike.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    /// Four channels: the input as the unsigned bytes `x + 128`, the weights as signed bytes (`vpdpbusd`).
    Quad,
    /// Two channels as i16 (`vpdpwssd`, or `vpmaddwd` and an add).
    Pair,
}

impl Form {
    const fn lanes(self) -> usize {
        match self {
            Form::Quad => 4,
            Form::Pair => 2,
        }
    }
}

/// `run(x, w, taps, bias, acc)`: `acc[r·np + j] = bias[r] + Σ_k dot(x[taps.at(k) + j], w[k·mr + r])` for
/// `k = (group, ky, kx)`, `dot` the sum of the lane products of two packed `u32`s.
///
/// # Safety
/// The CPU has the kernel's instruction set; `x[taps.max_offset() + np − 1]`, `w[taps.len()·mr − 1]`,
/// `bias[mr − 1]` and `acc[mr·np − 1]` are in bounds.
type QTileFn = unsafe fn(*const u32, *const u32, &QTaps, *const i32, *mut i32);

/// An integer convolution microkernel: its tile, its packing and its entry points (any kernel width, `kw = 1`,
/// `kw = 3`).
#[derive(Clone, Copy)]
struct QKernel {
    mr: usize,
    np: usize,
    form: Form,
    run: [QTileFn; 3],
}

impl QKernel {
    fn entry(&self, kw: usize) -> QTileFn {
        match kw {
            1 => self.run[1],
            3 => self.run[2],
            _ => self.run[0],
        }
    }
}

/// The reduction of one tile: group `c` of tap `(ky, kx)` is read at `c·plane + ky·rs + kx`.
struct QTaps {
    groups: usize,
    kh: usize,
    kw: usize,
    plane: usize,
    rs: usize,
}

impl QTaps {
    fn len(&self) -> usize {
        self.groups * self.kh * self.kw
    }

    fn max_offset(&self) -> usize {
        (self.groups.max(1) - 1) * self.plane + (self.kh.max(1) - 1) * self.rs + self.kw.max(1) - 1
    }
}

/// The vector operations a tile needs, for one instruction set and packing.
trait Lanes {
    type V: Copy;
    /// i32 lanes per vector.
    const N: usize;
    unsafe fn splat(v: i32) -> Self::V;
    unsafe fn load(p: *const u32) -> Self::V;
    /// `acc + Σ` of the lane products of `x` and `w`.
    unsafe fn dot(acc: Self::V, x: Self::V, w: Self::V) -> Self::V;
    unsafe fn store(p: *mut i32, v: Self::V);
}

/// AVX-512 VNNI: four channels per lane (`vpdpbusd`) when `QUAD`, else two i16 channels (`vpdpwssd`).
struct Vnni512<const QUAD: bool>;
/// AVX2, two i16 channels per lane (`vpmaddwd`, `vpaddd`).
struct Avx2Pair;

// SAFETY (both impls): each method is only called from a tile function compiled for its instruction set
// (see `tile_*` below), with pointers the tile's caller guarantees readable or writable for a whole vector.
impl<const QUAD: bool> Lanes for Vnni512<QUAD> {
    type V = __m512i;
    const N: usize = 16;
    #[inline(always)]
    unsafe fn splat(v: i32) -> __m512i {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const u32) -> __m512i {
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, x: __m512i, w: __m512i) -> __m512i {
        if QUAD {
            _mm512_dpbusd_epi32(acc, x, w)
        } else {
            _mm512_dpwssd_epi32(acc, x, w)
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut i32, v: __m512i) {
        unsafe { _mm512_storeu_si512(p.cast(), v) }
    }
}

impl Lanes for Avx2Pair {
    type V = __m256i;
    const N: usize = 8;
    #[inline(always)]
    unsafe fn splat(v: i32) -> __m256i {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const u32) -> __m256i {
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(x, w))
    }
    #[inline(always)]
    unsafe fn store(p: *mut i32, v: __m256i) {
        unsafe { _mm256_storeu_si256(p.cast(), v) }
    }
}

/// The tile body: `MR` output channels × `NV` vectors of positions, taps `KW` wide (`0`: `t.kw`).
///
/// # Safety
/// As [`QTileFn`] with `mr = MR`, `np = L::N·NV`, inlined into a function compiled for `L`'s instruction set.
#[inline(always)]
unsafe fn tile<L: Lanes, const MR: usize, const NV: usize, const KW: usize>(
    x: *const u32,
    w: *const u32,
    t: &QTaps,
    bias: *const i32,
    acc_out: *mut i32,
) {
    // SAFETY (whole body): every offset stays inside the bounds the caller guarantees: x up to
    // `max_offset + L::N·NV − 1`, w up to `len·MR − 1`, bias up to `MR − 1`, acc_out up to `MR·L::N·NV − 1`.
    unsafe {
        let mut acc = [[L::splat(0); NV]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [L::splat(*bias.add(r)); NV];
        }
        let kw = if KW == 0 { t.kw } else { KW };
        let mut wk = w;
        for c in 0..t.groups {
            let xc = x.add(c * t.plane);
            for ky in 0..t.kh {
                let xr = xc.add(ky * t.rs);
                for kx in 0..kw {
                    let xk = xr.add(kx);
                    let mut xv = [L::splat(0); NV];
                    for (j, v) in xv.iter_mut().enumerate() {
                        *v = L::load(xk.add(L::N * j));
                    }
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = L::splat(*wk.add(r) as i32);
                        for (aj, xj) in a.iter_mut().zip(&xv) {
                            *aj = L::dot(*aj, *xj, wv);
                        }
                    }
                    wk = wk.add(MR);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, v) in a.iter().enumerate() {
                L::store(acc_out.add(r * L::N * NV + L::N * j), *v);
            }
        }
    }
}

/// [`tile`] for AVX-512 VNNI: four channels per lane when `QUAD`, else two i16.
///
/// # Safety
/// As [`QTileFn`], with `mr = MR`, `np = 16·NV`, on a CPU with AVX-512F and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile_vnni<const QUAD: bool, const MR: usize, const NV: usize, const KW: usize>(
    x: *const u32,
    w: *const u32,
    t: &QTaps,
    bias: *const i32,
    acc: *mut i32,
) {
    // SAFETY: this function's features are `Vnni512`'s; the caller keeps the bounds.
    unsafe { tile::<Vnni512<QUAD>, MR, NV, KW>(x, w, t, bias, acc) }
}

/// [`tile`] for AVX2, two i16 channels per lane.
///
/// # Safety
/// As [`QTileFn`], with `mr = MR`, `np = 8·NV`, on a CPU with AVX2.
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2_pair<const MR: usize, const NV: usize, const KW: usize>(
    x: *const u32,
    w: *const u32,
    t: &QTaps,
    bias: *const i32,
    acc: *mut i32,
) {
    // SAFETY: this function's features are `Avx2Pair`'s; the caller keeps the bounds.
    unsafe { tile::<Avx2Pair, MR, NV, KW>(x, w, t, bias, acc) }
}

/// An AVX-512 VNNI kernel of 8 output channels × `NV` vectors of 16 positions, four channels per lane when
/// `QUAD`, else two i16.
const fn vnni<const QUAD: bool, const NV: usize>() -> QKernel {
    QKernel {
        mr: 8,
        np: 16 * NV,
        form: if QUAD { Form::Quad } else { Form::Pair },
        run: [tile_vnni::<QUAD, 8, NV, 0>, tile_vnni::<QUAD, 8, NV, 1>, tile_vnni::<QUAD, 8, NV, 3>],
    }
}

/// 8 output channels × 48 positions: 24 accumulators, 3 input vectors and a broadcast weight of 32 registers.
const VNNI_QUAD: QKernel = vnni::<true, 3>();
/// One vector of positions, for maps too small for [`VNNI_QUAD`]'s tile.
const VNNI_QUAD_NARROW: QKernel = vnni::<true, 1>();
const VNNI_PAIR: QKernel = vnni::<false, 3>();
const VNNI_PAIR_NARROW: QKernel = vnni::<false, 1>();
/// 4 output channels × 16 positions: 8 accumulators of 16 registers, with room for the products.
const AVX2_PAIR: QKernel = QKernel {
    mr: 4,
    np: 16,
    form: Form::Pair,
    run: [tile_avx2_pair::<4, 2, 0>, tile_avx2_pair::<4, 2, 1>, tile_avx2_pair::<4, 2, 3>],
};

/// Tile buffers hold any kernel's tile.
const MAX_MR: usize = 8;
const _: () = assert!(VNNI_QUAD.mr <= MAX_MR && VNNI_PAIR.mr <= MAX_MR && AVX2_PAIR.mr <= MAX_MR);
const _: () = assert!(VNNI_QUAD.np <= MAX_NP && VNNI_PAIR.np <= MAX_NP && AVX2_PAIR.np <= MAX_NP);

/// Whether the CPU has AVX-512F and AVX-512 VNNI (the tile kernels' instruction sets).
fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// The kernels this CPU runs for i8 (`wide` false) or i16 activations, widest tile first; empty without AVX2.
fn kernels(wide: bool) -> &'static [QKernel] {
    if has_vnni() {
        if wide {
            &[VNNI_PAIR, VNNI_PAIR_NARROW]
        } else {
            &[VNNI_QUAD, VNNI_QUAD_NARROW]
        }
    } else if std::arch::is_x86_feature_detected!("avx2") {
        &[AVX2_PAIR]
    } else {
        &[]
    }
}

thread_local! {
    /// The packed input of the convolution this thread runs (taken out while in use, so that a nested call on
    /// the same thread, from a task it runs while waiting, gets a buffer of its own).
    static INPUT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The packed weights of the block of output channels this thread computes.
    static WEIGHTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// [`super::qconv2d`] with a microkernel of this CPU; `false`, having written nothing, where none applies (no
/// AVX2, a feature map smaller than one tile, sizes that do not match).
// out (co,ho,wo), x (ci,h,w), w (co,ci,kh,kw), brq (co,3) = bias, multiplier, shift
pub(crate) fn qconv2d<X: QElem, Y: QElem>(
    out: &mut [Y],
    x: &[X],
    w: &[i8],
    brq: &[i32],
    g: &Conv2dShape,
    pad: X,
    packed: Option<&OnceLock<Option<PackedWeights>>>,
) -> bool {
    if let Some(x8) = X::as_i8(x).filter(|_| g.h * g.w == 1 && g.kh * g.kw == 1 && g.ho * g.wo == 1) {
        if matvec(out, x8, w, brq, g) {
            return true;
        }
    }
    let wide = X::as_i8(x).is_none();
    let cost = |k: &QKernel| Grid::new(g, k.np).tiles * k.np * if k.np >= 32 { 10 } else { 13 };
    let best = kernels(wide).iter().filter(|k| Grid::fits(g, k.np)).min_by_key(|k| cost(k));
    match best {
        Some(k) => qconv2d_with(*k, out, x, w, brq, g, pad, packed),
        None => false,
    }
}

/// A 1×1 convolution of a 1×1 map (a linear layer on the time embedding): per output channel one dot product
/// of its weight row, read in place. With AVX-512 VNNI and BW (the masked tail) the input is taken as bytes
/// `x + 128`, 64 products per `vpdpbusd`, and `128·Σw`, summed the same way, taken off; else with AVX2 both
/// are widened to i16, 16 products per `vpmaddwd`. `false` without those instruction sets or where the sizes do
/// not match.
fn matvec<Y: QElem>(out: &mut [Y], x: &[i8], w: &[i8], brq: &[i32], g: &Conv2dShape) -> bool {
    let vnni = has_vnni() && std::arch::is_x86_feature_detected!("avx512bw");
    (vnni || std::arch::is_x86_feature_detected!("avx2")) && matvec_with(vnni, out, x, w, brq, g)
}

/// [`matvec`] with AVX-512 VNNI (`vnni`) or AVX2, which the CPU has.
fn matvec_with<Y: QElem>(vnni: bool, out: &mut [Y], x: &[i8], w: &[i8], brq: &[i32], g: &Conv2dShape) -> bool {
    let ci = g.ci;
    if ci == 0 || x.len() < ci || w.len() < g.co * ci || brq.len() < 3 * g.co || out.len() < g.co {
        return false;
    }
    let mut xq = INPUT.take();
    if vnni {
        xq.clear();
        xq.resize(ci.div_ceil(4), 0);
        for (word, quad) in xq.iter_mut().zip(x[..ci].chunks(4)) {
            *word = quad.iter().enumerate().fold(0, |a, (b, &v)| a | lane_bits(i32::from(v), b, Form::Quad));
        }
    }
    for (co, o) in out[..g.co].iter_mut().enumerate() {
        let row = &w[co * ci..][..ci];
        let acc = if vnni {
            // SAFETY: the caller checked AVX-512F/BW/VNNI; the input words hold `ci` bytes (and up to 3 more,
            // which the masked tail does not read), the row `ci` bytes.
            let (dot, sum) = unsafe { dot_quad(xq.as_ptr().cast(), row.as_ptr(), ci) };
            brq[3 * co].wrapping_add(dot).wrapping_sub(sum.wrapping_mul(128))
        } else {
            // SAFETY: the caller checked AVX2; the input and the row hold `ci` bytes.
            brq[3 * co].wrapping_add(unsafe { dot_pair(x.as_ptr(), row.as_ptr(), ci) })
        };
        *o = Y::sat(rq(i64::from(acc), brq[3 * co + 1], brq[3 * co + 2] as u32));
    }
    INPUT.set(xq);
    true
}

/// `Σ x[i]·w[i]` over `n` signed bytes with a wrapping i32 sum: 16 at a time widened to i16 (`vpmaddwd`), the
/// rest one at a time.
///
/// # Safety
/// AVX2; `x[..n]` and `w[..n]` readable.
#[target_feature(enable = "avx2")]
unsafe fn dot_pair(x: *const i8, w: *const i8, n: usize) -> i32 {
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY (whole body): whole blocks of 16 below `n`, then single bytes below `n`.
    unsafe {
        while i + 16 <= n {
            let xv = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(i).cast()));
            let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(i).cast()));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
            i += 16;
        }
        let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        (i..n).fold(_mm_cvtsi128_si32(s), |a, j| a.wrapping_add(i32::from(*x.add(j)) * i32::from(*w.add(j))))
    }
}

/// `(Σ u[i]·w[i], Σ w[i])` over `n` bytes, `u` unsigned and `w` signed, with wrapping i32 sums.
///
/// # Safety
/// AVX-512F, BW and VNNI; `u[..n]` and `w[..n]` readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_quad(u: *const u8, w: *const i8, n: usize) -> (i32, i32) {
    let (mut acc, mut sum, ones) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_set1_epi8(1));
    let mut i = 0;
    // SAFETY (whole body): whole blocks of 64 below `n`, then a masked load of the rest.
    unsafe {
        while i + 64 <= n {
            let (uv, wv) = (_mm512_loadu_si512(u.add(i).cast()), _mm512_loadu_si512(w.add(i).cast()));
            acc = _mm512_dpbusd_epi32(acc, uv, wv);
            sum = _mm512_dpbusd_epi32(sum, ones, wv);
            i += 64;
        }
        if i < n {
            let mask: __mmask64 = (1u64 << (n - i)) - 1;
            let (uv, wv) = (_mm512_maskz_loadu_epi8(mask, u.add(i).cast()), _mm512_maskz_loadu_epi8(mask, w.add(i)));
            acc = _mm512_dpbusd_epi32(acc, uv, wv);
            sum = _mm512_dpbusd_epi32(sum, ones, wv);
        }
        (_mm512_reduce_add_epi32(acc), _mm512_reduce_add_epi32(sum))
    }
}

/// Every block's [`pack_weights`] in one buffer, block `b` at `b·len·mr` (biases at `b·MAX_MR`).
fn pack_all(k: &QKernel, w: &[i8], brq: &[i32], g: &Conv2dShape, len: usize) -> PackedWeights {
    let blocks = g.co.div_ceil(k.mr);
    let (mut words, mut biases) = (Vec::with_capacity(blocks * len * k.mr), Vec::with_capacity(blocks * MAX_MR));
    let (mut wq, mut bias) = (Vec::new(), [0i32; MAX_MR]);
    for b in 0..blocks {
        let nco = (g.co - b * k.mr).min(k.mr);
        pack_weights(&mut wq, &mut bias, w, brq, g, b * k.mr, nco, k.mr, k.form, len);
        words.extend_from_slice(&wq);
        biases.extend_from_slice(&bias);
    }
    PackedWeights { mr: k.mr, lanes: k.form.lanes(), words, biases }
}

/// [`qconv2d`] with a given kernel (tests run each kernel the CPU has).
#[allow(clippy::too_many_arguments)]
fn qconv2d_with<X: QElem, Y: QElem>(
    k: QKernel,
    out: &mut [Y],
    x: &[X],
    w: &[i8],
    brq: &[i32],
    g: &Conv2dShape,
    pad: X,
    packed: Option<&OnceLock<Option<PackedWeights>>>,
) -> bool {
    let (_, hp, rs) = g.scratch_shape();
    let (plane, ksize) = (g.ho * g.wo, g.ci * g.kh * g.kw);
    let lanes = k.form.lanes();
    let taps = QTaps { groups: g.ci.div_ceil(lanes), kh: g.kh, kw: g.kw, plane: hp * rs, rs };
    if !Grid::fits(g, k.np)
        || (k.form == Form::Quad && X::as_i8(x).is_none())
        || ksize == 0
        || x.len() < g.ci * g.h * g.w
        || out.len() < g.co * plane
        || w.len() < g.co * ksize
        || brq.len() < 3 * g.co
        || (g.ho - 1) * g.stride + g.kh > hp
        || (g.wo - 1) * g.stride + g.kw > rs
    {
        return false;
    }
    let len = taps.len();
    // The model's packed weights, made on first use, where they are for this kernel's tile and packing (the
    // kernel is chosen by the shape and the CPU, so always the same one for a tensor).
    let blocks = g.co.div_ceil(k.mr);
    let packed = packed.and_then(|slot| slot.get_or_init(|| Some(pack_all(&k, w, brq, g, len))).as_ref()).filter(|p| {
        p.mr == k.mr && p.lanes == lanes && p.words.len() == blocks * len * k.mr && p.biases.len() == blocks * MAX_MR
    });
    let grid = Grid::new(g, k.np);
    let mut xq = INPUT.take();
    let simd = simd();
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { pack_input_avx2(&mut xq, x, g, pad, k.form, taps.groups) };
    } else {
        pack_input(&mut xq, x, g, pad, k.form, taps.groups);
    }
    // Every read of every tile lies below `pixels − 1 + max_offset`; refuse a geometry where it would not.
    if grid.pixels + taps.max_offset() > xq.len() {
        INPUT.set(xq);
        return false;
    }
    let run = k.entry(g.kw);
    let xs = &xq[..];
    par::for_each_chunk(&mut out[..g.co * plane], k.mr * plane, |blk, o| {
        let nco = o.len() / plane;
        let co0 = blk * k.mr;
        let mut block = |wq: &[u32], bias: &[i32]| {
            if wq.len() < len * k.mr || bias.len() < k.mr {
                return;
            }
            let mut acc = [0i32; MAX_MR * MAX_NP];
            let acc = &mut acc[..k.mr * k.np];
            let mut runs = [(0usize, 0usize, 0usize); MAX_NP];
            for t in 0..grid.tiles {
                let p0 = grid.start(t);
                // SAFETY: `kernels` returned `k` only on a CPU with its instruction set. Reads of the packed input
                // reach `p0 + np − 1 + max_offset ≤ pixels − 1 + max_offset < xs.len()` (checked above); wq
                // holds `len·mr` words and bias `mr` (checked above), acc `mr·np`.
                unsafe { run(xs[p0..].as_ptr(), wq.as_ptr(), &taps, bias.as_ptr(), acc.as_mut_ptr()) };
                let nruns = grid.runs(p0, &mut runs);
                let (rq_rows, runs) = (&brq[3 * co0..3 * (co0 + nco)], &runs[..nruns]);
                if simd == Some(Simd::Avx2) {
                    // SAFETY: `simd` found AVX2.
                    unsafe { store_tile_avx2(acc, k.np, rq_rows, runs, o, plane) };
                } else {
                    store_tile(acc, k.np, rq_rows, runs, o, plane, simd);
                }
            }
        };
        match packed {
            Some(p) => block(&p.words[blk * len * k.mr..], &p.biases[blk * MAX_MR..]),
            None => WEIGHTS.with_borrow_mut(|wq| {
                let mut bias = [0i32; MAX_MR];
                pack_weights(wq, &mut bias, w, brq, g, co0, nco, k.mr, k.form, len);
                block(wq, &bias)
            }),
        }
    });
    INPUT.set(xq);
    true
}

/// Requantizes the rows of a tile's accumulators `acc` (rows of `np`, one per output channel of `rq`, its
/// `(bias, multiplier, shift)` triples) and copies its `runs` into the output block `o` (planes of `plane`).
#[inline(always)]
fn store_tile<Y: QElem>(
    acc: &[i32],
    np: usize,
    rq: &[i32],
    runs: &[(usize, usize, usize)],
    o: &mut [Y],
    plane: usize,
    simd: Option<Simd>,
) {
    let mut ys = [Y::ZERO; MAX_NP];
    for ((r, row), q) in acc.chunks_exact(np).enumerate().zip(rq.chunks_exact(3)) {
        requant_row(row, &mut ys, q[1], q[2] as u32, simd);
        let Some(dst) = o.get_mut(r * plane..(r + 1) * plane) else { return };
        for &(j, d, n) in runs {
            if let (Some(to), Some(from)) = (dst.get_mut(d..d + n), ys.get(j..j + n)) {
                copy_short(to, from);
            }
        }
    }
}

/// [`store_tile`] compiled for AVX2, its requantization inlined.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn store_tile_avx2<Y: QElem>(
    acc: &[i32],
    np: usize,
    rq: &[i32],
    runs: &[(usize, usize, usize)],
    o: &mut [Y],
    plane: usize,
) {
    store_tile(acc, np, rq, runs, o, plane, Some(Simd::Avx2));
}

/// `to.copy_from_slice(from)` for the short runs of a tile: blocks of 8, 4, 2 and 1 elements, each a fixed-size
/// copy the compiler inlines (a call of `memcpy` per run costs more than the copy).
#[inline(always)]
fn copy_short<Y: Copy>(to: &mut [Y], from: &[Y]) {
    let mut to_chunks = to.chunks_exact_mut(8);
    let mut from_chunks = from.chunks_exact(8);
    for (t, f) in (&mut to_chunks).zip(&mut from_chunks) {
        t.copy_from_slice(f);
    }
    let (mut t, mut f) = (to_chunks.into_remainder(), from_chunks.remainder());
    for size in [4, 2, 1] {
        if t.len() >= size && f.len() >= size {
            let ((th, tr), (fh, fr)) = (t.split_at_mut(size), f.split_at(size));
            th.copy_from_slice(fh);
            (t, f) = (tr, fr);
        }
    }
}

/// `ys[j] = Y::sat(rq(acc[j], m, s))` for a row of a tile, the same integers as [`rq`] (the product of two i32
/// is exact, the rest are the same wrapping add and arithmetic shift): with [`Simd::Avx512`] eight lanes at a
/// time in 64-bit arithmetic, with [`Simd::Avx2`] eight at a time as two vectors of four 64-bit products, else
/// (and for a shift past 62, and the last `n % 8` elements) one at a time.
#[inline(always)]
fn requant_row<Y: QElem>(acc: &[i32], ys: &mut [Y; MAX_NP], m: i32, s: u32, simd: Option<Simd>) {
    use core::any::TypeId;
    let n = acc.len().min(MAX_NP);
    // The vector kernels store i8 or i16 (`wide`): only for those element types.
    let wide = match TypeId::of::<Y>() {
        t if t == TypeId::of::<i8>() => Some(false),
        t if t == TypeId::of::<i16>() => Some(true),
        _ => None,
    };
    let done = match (simd, wide) {
        _ if s > 62 => 0,
        // SAFETY (both): the CPU has the instruction set (`simd`); the loop reads `acc[..n − n % 8]` and writes
        // as many elements of `ys`, whose type is i16 when `wide`, else i8; n ≤ both lengths; `s ≤ 62`.
        (Some(Simd::Avx512), Some(wide)) => unsafe {
            requant_row_avx512(acc.as_ptr(), ys.as_mut_ptr().cast(), n / 8, m, s, wide)
        },
        (Some(Simd::Avx2), Some(wide)) => unsafe {
            requant_row_avx2(acc.as_ptr(), ys.as_mut_ptr().cast(), n / 8, m, s, wide)
        },
        _ => 0,
    };
    for (y, &a) in ys[done..n].iter_mut().zip(&acc[done..n]) {
        *y = Y::sat(rq(i64::from(a), m, s));
    }
}

/// See [`requant_row`]: `blocks` blocks of 8 to `ys`, i16 when `wide` (clamped to ±32767), else i8 (±127);
/// returns how many elements it did.
///
/// # Safety
/// AVX-512F, BW and VL; `acc[..8·blocks]` readable, `ys[..8·blocks]` writable (elements of its type), `s ≤ 62`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn requant_row_avx512(acc: *const i32, ys: *mut u8, blocks: usize, m: i32, s: u32, wide: bool) -> usize {
    let max = if wide { i64::from(i16::MAX) } else { i64::from(i8::MAX) };
    let (mv, round) = (_mm512_set1_epi64(i64::from(m)), _mm512_set1_epi64((1i64 << s) >> 1));
    let (hi, lo, count) = (_mm512_set1_epi64(max), _mm512_set1_epi64(-max), _mm_cvtsi32_si128(s as i32));
    for i in (0..8 * blocks).step_by(8) {
        // SAFETY: i + 8 ≤ 8·blocks, inside both buffers.
        unsafe {
            let a = _mm512_cvtepi32_epi64(_mm256_loadu_si256(acc.add(i).cast()));
            let p = _mm512_add_epi64(_mm512_mul_epi32(a, mv), round);
            let y = _mm512_max_epi64(_mm512_min_epi64(_mm512_sra_epi64(p, count), hi), lo);
            if wide {
                _mm_storeu_si128(ys.add(2 * i).cast(), _mm512_cvtepi64_epi16(y));
            } else {
                _mm_storel_epi64(ys.add(i).cast(), _mm512_cvtepi64_epi8(y));
            }
        }
    }
    8 * blocks
}

/// See [`requant_row`]: `blocks` blocks of 8 to `ys`, i16 when `wide` (clamped to ±32767), else i8 (±127), the
/// even and the odd lanes' exact 64-bit products (`vpmuldq`) apart; returns how many elements it did. With
/// `32 ≤ s`, `p = acc·m + 2^(s−1)` lies inside ±2^63 without wrapping, so `p >> s` is the high word of `p`
/// shifted by `s − 32`, in 32-bit lanes. Below that the 64-bit arithmetic shift AVX2 lacks is a logical one of
/// `p + 2^63` less `2^(63 − s)`, and the clamp two 64-bit compares and blends.
///
/// # Safety
/// AVX2; `acc[..8·blocks]` readable, `ys[..8·blocks]` writable (elements of its type), `s ≤ 62`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn requant_row_avx2(acc: *const i32, ys: *mut u8, blocks: usize, m: i32, s: u32, wide: bool) -> usize {
    let max = if wide { i32::from(i16::MAX) } else { i32::from(i8::MAX) };
    let mv = _mm256_set1_epi64x(i64::from(m));
    let (hi32, lo32) = (_mm256_set1_epi32(max), _mm256_set1_epi32(-max));
    let (hi, lo) = (_mm256_set1_epi64x(i64::from(max)), _mm256_set1_epi64x(-i64::from(max)));
    // `p + 2^63` (the rounding constant's wrapping sum with it) shifted logically, less `2^(63 − s)`.
    let bias = _mm256_set1_epi64x(((1i64 << s) >> 1).wrapping_add(i64::MIN));
    let (unbias, count) = (_mm256_set1_epi64x(1i64 << (63 - s)), _mm_cvtsi32_si128(s as i32));
    let (round, count32) = (_mm256_set1_epi64x((1i64 << s) >> 1), _mm_cvtsi32_si128(s as i32 - 32));
    let lane = |a: __m256i| {
        let p = _mm256_add_epi64(_mm256_mul_epi32(a, mv), bias);
        let y = _mm256_sub_epi64(_mm256_srl_epi64(p, count), unbias);
        let y = _mm256_blendv_epi8(y, hi, _mm256_cmpgt_epi64(y, hi));
        _mm256_blendv_epi8(y, lo, _mm256_cmpgt_epi64(lo, y))
    };
    for i in (0..8 * blocks).step_by(8) {
        // SAFETY: i + 8 ≤ 8·blocks, inside both buffers.
        unsafe {
            let a = _mm256_loadu_si256(acc.add(i).cast());
            let y = if s >= 32 {
                let even = _mm256_add_epi64(_mm256_mul_epi32(a, mv), round);
                let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64::<32>(a), mv), round);
                // The high words: the even lanes' moved down, the odd lanes' in place.
                let high = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
                _mm256_max_epi32(_mm256_min_epi32(_mm256_sra_epi32(high, count32), hi32), lo32)
            } else {
                let (even, odd) = (lane(a), lane(_mm256_srli_epi64::<32>(a)));
                _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd))
            };
            // In range: packing with saturation is truncation.
            let y16 = _mm_packs_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256::<1>(y));
            if wide {
                _mm_storeu_si128(ys.add(2 * i).cast(), y16);
            } else {
                _mm_storel_epi64(ys.add(i).cast(), _mm_packs_epi16(y16, y16));
            }
        }
    }
    8 * blocks
}

/// One element of a packed group: a byte `x + 128` of a quad, or an i16 of a pair, at lane `b`.
#[inline(always)]
fn lane_bits(v: i32, b: usize, form: Form) -> u32 {
    match form {
        Form::Quad => u32::from((v as i8 as u8) ^ 0x80) << (8 * b),
        Form::Pair => u32::from(v as i16 as u16) << (16 * b),
    }
}

/// One weight of a packed group: a signed byte of a quad, or an i16 of a pair, at lane `b`.
#[inline(always)]
fn weight_bits(v: i8, b: usize, form: Form) -> u32 {
    match form {
        Form::Quad => u32::from(v as u8) << (8 * b),
        Form::Pair => u32::from(i16::from(v) as u16) << (16 * b),
    }
}

/// One whole group of `L` channels × `KHW` taps (`group`) as words `dst[t·mr + r]`, unrolled for a kernel size;
/// `false`, writing nothing, for a partial group.
#[inline(always)]
fn pack_group<const KHW: usize, const L: usize>(group: &[i8], dst: &mut [u32], r: usize, mr: usize) -> bool {
    if group.len() != L * KHW || dst.len() < (KHW - 1) * mr + r + 1 {
        return false;
    }
    let form = if L == 4 { Form::Quad } else { Form::Pair };
    for t in 0..KHW {
        dst[t * mr + r] = (0..L).fold(0, |a, b| a | weight_bits(group[b * KHW + t], b, form));
    }
    true
}

/// [`pack_input`] compiled for AVX2, so that its loops vectorise 32 bytes wide.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn pack_input_avx2<X: QElem>(xq: &mut Vec<u32>, x: &[X], g: &Conv2dShape, pad: X, form: Form, groups: usize) {
    pack_input(xq, x, g, pad, form, groups);
}

/// Copies `x` (ci, h, w) into `xq` (groups, hp, rs) with its channels interleaved in groups of `form.lanes()`
/// and every position outside the input holding `pad`. Channels past `ci` in the last group read as `pad`
/// too (their weights are zero).
#[inline(always)]
fn pack_input<X: QElem>(xq: &mut Vec<u32>, x: &[X], g: &Conv2dShape, pad: X, form: Form, groups: usize) {
    let (_, hp, rs) = g.scratch_shape();
    let [pt, pl, _, _] = g.pad;
    let (lanes, plane) = (form.lanes(), g.h * g.w);
    let p = pad.get();
    let word = |v: [i32; 4]| (0..lanes).fold(0u32, |a, b| a | lane_bits(v[b], b, form));
    xq.clear();
    xq.resize(groups * hp * rs, word([p; 4]));
    if g.w == 0 || x.len() < g.ci * plane {
        return;
    }
    for (group, out) in xq.chunks_exact_mut(hp * rs).enumerate() {
        let c0 = group * lanes;
        let chans = (g.ci - c0).min(lanes);
        let src = &x[c0 * plane..(c0 + chans) * plane];
        for y in 0..g.h {
            let dst = &mut out[(y + pt) * rs + pl..][..g.w];
            let at = |b: usize, i: usize| if b < chans { src[b * plane + y * g.w + i].get() } else { p };
            match (form, chans) {
                // The common case, branch-free per element.
                (Form::Quad, 4) => {
                    let r: [&[X]; 4] = core::array::from_fn(|b| &src[b * plane + y * g.w..][..g.w]);
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = u32::from_le_bytes(core::array::from_fn(|b| (r[b][i].get() as u8) ^ 0x80));
                    }
                }
                (Form::Pair, 2) => {
                    let (r0, r1) = (&src[y * g.w..][..g.w], &src[plane + y * g.w..][..g.w]);
                    for ((d, a), b) in dst.iter_mut().zip(r0).zip(r1) {
                        *d = u32::from(a.get() as i16 as u16) | u32::from(b.get() as i16 as u16) << 16;
                    }
                }
                _ => {
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = word(core::array::from_fn(|b| at(b, i)));
                    }
                }
            }
        }
    }
}

/// Packs the weights of output channels `co0 .. co0 + nco` as the tile reads them, `wq[k·mr + r]` for tap
/// `k = (group, ky, kx)` (rows past `nco` and channels past `ci` zero), and their biases: `b − 128·Σ w` for
/// quads (see the module comment), `b` for pairs.
#[allow(clippy::too_many_arguments)]
fn pack_weights(
    wq: &mut Vec<u32>,
    bias: &mut [i32; MAX_MR],
    w: &[i8],
    brq: &[i32],
    g: &Conv2dShape,
    co0: usize,
    nco: usize,
    mr: usize,
    form: Form,
    len: usize,
) {
    let (lanes, khw) = (form.lanes(), g.kh * g.kw);
    let ksize = g.ci * khw;
    wq.clear();
    wq.resize(len * mr, 0);
    *bias = [0; MAX_MR];
    for r in 0..nco.min(mr) {
        let row = &w[(co0 + r) * ksize..][..ksize];
        // One group of channels at a time: its `lanes` rows of `khw` taps become `khw` words.
        for (group, dst) in row.chunks(lanes * khw).zip(wq.chunks_exact_mut(khw * mr)) {
            let done = match (form, khw) {
                (Form::Quad, 9) => pack_group::<9, 4>(group, dst, r, mr),
                (Form::Quad, 1) => pack_group::<1, 4>(group, dst, r, mr),
                (Form::Pair, 9) => pack_group::<9, 2>(group, dst, r, mr),
                (Form::Pair, 1) => pack_group::<1, 2>(group, dst, r, mr),
                _ => false,
            };
            if !done {
                for (b, taps) in group.chunks_exact(khw).enumerate() {
                    for (d, &v) in dst.iter_mut().skip(r).step_by(mr).zip(taps) {
                        *d |= weight_bits(v, b, form);
                    }
                }
            }
        }
        let b = brq[3 * (co0 + r)];
        let sum = row.iter().fold(0i32, |a, &v| a + i32::from(v));
        bias[r] = if form == Form::Quad { b.wrapping_sub(sum.wrapping_mul(128)) } else { b };
    }
}

/// The fixed-point coefficients of the per-element affine map of group norm on i8 inputs:
/// `y = clamp(v·ah + bh + ((v·al + bl) >> 24), ±ymax)` (the 32-bit form of `channel_affine` in the parent).
pub(crate) struct Affine8 {
    pub(crate) ah: i32,
    pub(crate) al: i32,
    pub(crate) bh: i32,
    pub(crate) bl: i32,
    pub(crate) ymax: i32,
}

/// `out[i] = lut(y(x[i]))` (see [`Affine8`]; `x` `None`: `out` itself, i8): with AVX-512BW (and VBMI for the
/// table) over the elements `0 .. n − n % 16`, 16 at a time, else with AVX2 over all of them, 32 at a time.
/// Returns how many it did (0 without those instruction sets), the caller does the rest. The same integer
/// operations as the portable loop.
pub(crate) fn affine_i8(out: &mut super::QMut<'_>, x: Option<&[i8]>, c: &Affine8, lut: Option<&[i8; 256]>) -> usize {
    use super::QMut;
    use std::arch::is_x86_feature_detected as has;
    let run: AffineFn = if has!("avx512f") && has!("avx512bw") && (lut.is_none() || has!("avx512vbmi")) {
        affine16
    } else if has!("avx2") {
        affine32
    } else {
        return 0;
    };
    let table = lut.map_or(core::ptr::null(), |t| t.as_ptr());
    match (out, x) {
        (QMut::I8(o), src) => {
            let n = src.map_or(o.len(), |x| x.len().min(o.len()));
            let from = src.map_or(o.as_ptr(), |x| x.as_ptr());
            // SAFETY: the CPU has the kernel's instruction sets (checked above); `from` and `o` hold at least n
            // elements; the table, when there is one, 256 bytes.
            unsafe { run(from, o.as_mut_ptr().cast(), n, c, table, false) }
        }
        (QMut::I16(o), Some(x)) => {
            let n = x.len().min(o.len());
            // SAFETY: as above, `o` holding n i16.
            unsafe { run(x.as_ptr(), o.as_mut_ptr().cast(), n, c, table, true) }
        }
        (QMut::I16(_), None) => 0,
    }
}

/// `run(x, out, n, c, lut, wide)`: [`affine_i8`] over (a prefix of) the `n` elements of `x`, to `out` (i8, or
/// i16 when `wide`), through `lut` unless null; returns how many it did.
///
/// # Safety
/// The CPU has the kernel's instruction sets; `x[..n]` readable, `out[..n]` writable (elements of its type),
/// `lut[..256]` readable when not null. `x` and `out` are the same or apart.
type AffineFn = unsafe fn(*const i8, *mut u8, usize, &Affine8, *const i8, bool) -> usize;

/// An [`AffineFn`] for AVX-512F/BW, and VBMI when `lut` is not null: `n / 16` blocks of 16.
///
/// # Safety
/// As [`AffineFn`].
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn affine16(x: *const i8, out: *mut u8, n: usize, c: &Affine8, lut: *const i8, wide: bool) -> usize {
    let (ah, al, bh, bl) =
        (_mm512_set1_epi32(c.ah), _mm512_set1_epi32(c.al), _mm512_set1_epi32(c.bh), _mm512_set1_epi32(c.bl));
    let (hi, lo, off) = (_mm512_set1_epi32(c.ymax), _mm512_set1_epi32(-c.ymax), _mm512_set1_epi32(128));
    let omax = _mm512_set1_epi32(if wide { i32::from(i16::MAX) } else { i32::from(i8::MAX) });
    // SAFETY (whole body): every access is inside the bounds the caller guarantees.
    unsafe {
        let t = if lut.is_null() {
            [_mm512_setzero_si512(); 4]
        } else {
            core::array::from_fn(|k| _mm512_loadu_si512(lut.add(64 * k).cast()))
        };
        for i in 0..n / 16 {
            let v = _mm512_cvtepi8_epi32(_mm_loadu_si128(x.add(16 * i).cast()));
            let frac = _mm512_srai_epi32::<24>(_mm512_add_epi32(_mm512_mullo_epi32(v, al), bl));
            let y = _mm512_add_epi32(_mm512_add_epi32(_mm512_mullo_epi32(v, ah), bh), frac);
            let y = _mm512_max_epi32(_mm512_min_epi32(y, hi), lo);
            let r = if lut.is_null() {
                y
            } else {
                // The table's index `y + 128` as bytes: its low seven bits pick one of 128 entries in each half,
                // its top bit the half.
                let idx = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(_mm512_add_epi32(y, off)));
                let low = _mm512_permutex2var_epi8(t[0], idx, t[1]);
                let high = _mm512_permutex2var_epi8(t[2], idx, t[3]);
                let b = _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), low, high);
                _mm512_cvtepi8_epi32(_mm512_castsi512_si128(b))
            };
            // The output type's symmetric range (a table entry or `ymax` may lie outside it).
            let r = _mm512_max_epi32(_mm512_min_epi32(r, omax), _mm512_sub_epi32(_mm512_setzero_si512(), omax));
            if wide {
                _mm256_storeu_si256(out.add(32 * i).cast(), _mm512_cvtepi32_epi16(r));
            } else {
                _mm_storeu_si128(out.add(16 * i).cast(), _mm512_cvtepi32_epi8(r));
            }
        }
    }
    16 * (n / 16)
}

/// An [`AffineFn`] for AVX2: all `n` elements, 32 at a time (the last `n % 32` through a buffer of one block).
/// The map is [`affine16`]'s in 32-bit lanes, four vectors a block, then packed to bytes. The table is read as
/// 16 rows of 16 bytes, each a `vpshufb` of the index's low four bits: for each pair of rows `k` and `k + 8`
/// one `vpshufb` of the index and one of it with its top bit flipped (a set top bit reads 0) give row
/// `k + 8·top bit`, and blends by the index's bits 4, 5 and 6 pick `k`.
///
/// # Safety
/// As [`AffineFn`], on a CPU with AVX2.
#[target_feature(enable = "avx2")]
unsafe fn affine32(x: *const i8, out: *mut u8, n: usize, c: &Affine8, lut: *const i8, wide: bool) -> usize {
    let (ah, al, bh, bl) =
        (_mm256_set1_epi32(c.ah), _mm256_set1_epi32(c.al), _mm256_set1_epi32(c.bh), _mm256_set1_epi32(c.bl));
    let omax = if wide { i32::from(i16::MAX) } else { i32::from(i8::MAX) };
    // Without a table the clamp to `±ymax` and the output type's range are one; a table entry of -128 is
    // clamped for i8 after the lookup.
    let bound = if lut.is_null() { c.ymax.min(omax) } else { c.ymax };
    let (hi, lo) = (_mm256_set1_epi32(bound), _mm256_set1_epi32(-bound));
    // Packing four vectors of i32 to bytes interleaves their 128-bit halves; this puts them back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // SAFETY (whole body): every access is inside the bounds the caller guarantees, or a local buffer's.
    unsafe {
        let t: [__m256i; 16] = if lut.is_null() {
            [_mm256_setzero_si256(); 16]
        } else {
            core::array::from_fn(|k| _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.add(16 * k).cast())))
        };
        // The table at the bytes `b`.
        let lookup = |b: __m256i| {
            let flipped = _mm256_xor_si256(b, _mm256_set1_epi8(i8::MIN));
            let rows: [__m256i; 8] = core::array::from_fn(|k| {
                _mm256_or_si256(_mm256_shuffle_epi8(t[k], b), _mm256_shuffle_epi8(t[k + 8], flipped))
            });
            // `vpblendvb` picks by each byte's top bit: bits 4, 5, 6 of `b` moved there.
            let (b4, b5, b6) = (_mm256_slli_epi16::<3>(b), _mm256_slli_epi16::<2>(b), _mm256_slli_epi16::<1>(b));
            let r4: [__m256i; 4] = core::array::from_fn(|j| _mm256_blendv_epi8(rows[2 * j], rows[2 * j + 1], b4));
            let r5: [__m256i; 2] = core::array::from_fn(|j| _mm256_blendv_epi8(r4[2 * j], r4[2 * j + 1], b5));
            _mm256_blendv_epi8(r5[0], r5[1], b6)
        };
        // One block of 32 inputs: the output as 32 bytes, or as two vectors of 16 i16 when `wide`.
        let block = |xv: __m256i| {
            let (x0, x1) = (_mm256_castsi256_si128(xv), _mm256_extracti128_si256::<1>(xv));
            let v = [x0, _mm_srli_si128::<8>(x0), x1, _mm_srli_si128::<8>(x1)].map(|h| _mm256_cvtepi8_epi32(h));
            let y = v.map(|v| {
                let frac = _mm256_srai_epi32::<24>(_mm256_add_epi32(_mm256_mullo_epi32(v, al), bl));
                let y = _mm256_add_epi32(_mm256_add_epi32(_mm256_mullo_epi32(v, ah), bh), frac);
                _mm256_max_epi32(_mm256_min_epi32(y, hi), lo)
            });
            if lut.is_null() {
                let (w0, w1) = (_mm256_packs_epi32(y[0], y[1]), _mm256_packs_epi32(y[2], y[3]));
                if wide {
                    (_mm256_permute4x64_epi64::<0b11_01_10_00>(w0), _mm256_permute4x64_epi64::<0b11_01_10_00>(w1))
                } else {
                    (_mm256_permutevar8x32_epi32(_mm256_packs_epi16(w0, w1), order), w1)
                }
            } else {
                // The index `y + 128` wraps to a byte, as the portable loop's.
                let (off, byte) = (_mm256_set1_epi32(128), _mm256_set1_epi32(0xff));
                let idx = y.map(|y| _mm256_and_si256(_mm256_add_epi32(y, off), byte));
                let (w0, w1) = (_mm256_packus_epi32(idx[0], idx[1]), _mm256_packus_epi32(idx[2], idx[3]));
                let r = lookup(_mm256_permutevar8x32_epi32(_mm256_packus_epi16(w0, w1), order));
                if wide {
                    (
                        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(r)),
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(r)),
                    )
                } else {
                    (_mm256_max_epi8(r, _mm256_set1_epi8(-i8::MAX)), r)
                }
            }
        };
        let size = if wide { 2 } else { 1 };
        let store = |o: *mut u8, (r0, r1): (__m256i, __m256i)| {
            _mm256_storeu_si256(o.cast(), r0);
            if wide {
                _mm256_storeu_si256(o.add(32).cast(), r1);
            }
        };
        let mut i = 0;
        while i + 32 <= n {
            store(out.add(size * i), block(_mm256_loadu_si256(x.add(i).cast())));
            i += 32;
        }
        if i < n {
            let (mut xb, mut ob) = ([0i8; 32], [0u8; 64]);
            core::ptr::copy_nonoverlapping(x.add(i), xb.as_mut_ptr(), n - i);
            store(ob.as_mut_ptr(), block(_mm256_loadu_si256(xb.as_ptr().cast())));
            core::ptr::copy_nonoverlapping(ob.as_ptr(), out.add(size * i), size * (n - i));
        }
    }
    n
}

/// The widest vector instruction set of this CPU that the portable loops below are compiled for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Simd {
    /// AVX-512 F, BW, DQ and VL: 16 i32 lanes.
    Avx512,
    /// AVX2 and FMA: 8 i32 lanes.
    Avx2,
}

/// [`Simd`] for this CPU, `None` without AVX2.
fn simd() -> Option<Simd> {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
        Some(Simd::Avx512)
    } else if has!("avx2") && has!("fma") {
        Some(Simd::Avx2)
    } else {
        None
    }
}

/// Each `fn name(args) -> T => body;` becomes `pub(crate) fn name(args) -> Option<T>` (`T` is `()` when left
/// out) that runs `body` compiled for the CPU's [`Simd`] (an `#[inline(always)]` portable loop of the op's own
/// module, inlined into a function with that instruction set, so that LLVM vectorises it 16 or 8 lanes wide
/// with the same integer operations) and returns its value, or returns `None` without running it where the
/// CPU has neither.
macro_rules! compiled_for_simd {
    (@ret) => { () };
    (@ret $ret:ty) => { $ret };
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:expr;)*) => {$(
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name($($arg: $ty),*) -> Option<compiled_for_simd!(@ret $($ret)?)> {
            /// The body compiled for [`Simd::Avx512`].
            ///
            /// # Safety
            /// The CPU has AVX-512 F, BW, DQ and VL.
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                $body
            }
            /// The body compiled for [`Simd::Avx2`].
            ///
            /// # Safety
            /// The CPU has AVX2 and FMA.
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                $body
            }
            match simd()? {
                // SAFETY: `simd` found the instruction sets of the function called.
                Simd::Avx512 => Some(unsafe { avx512($($arg),*) }),
                // SAFETY: as above.
                Simd::Avx2 => Some(unsafe { avx2($($arg),*) }),
            }
        }
    )*};
}

/// [`super::attention::softmax_divide`]'s integers with the division in f64, which vectorises (an integer
/// division does not): where `sum < 2^31` and every `e` lies in `[0, min(2^16, sum + 1))` (so always for the
/// exponentials of a softmax, `sum` being theirs), the numerator `a = e·2^15 + ⌊sum/2⌋ < 2^32` and the divisor
/// are exact doubles and `⌊a/sum⌋` is the correctly rounded quotient truncated: a quotient `q + r/sum` with
/// `0 < r < sum` lies at least `1/sum` below `q + 1`, a relative `1/(a + sum) > 2^−33`, far more than the
/// rounding's `2^−53`, so the rounded quotient stays below `q + 1` (and at or above `q`, which is exact). The
/// quotients lie in `[0, 2^15 + 1]` (`e ≤ sum`). Other inputs go to the integer division.
#[inline(always)]
fn divide_exact(s: &mut [i32], sum: i64) -> u64 {
    // The largest `e` as u32 (a negative one is at least 2^31).
    let top = s.iter().fold(0u32, |a, &e| a.max(e as u32));
    match u32::try_from(sum.max(1)) {
        Ok(d) if d < 1 << 31 && top < 1 << 16 && top <= d => {
            let (df, half) = (f64::from(d), f64::from(d / 2));
            for e in s.iter_mut() {
                let q = (f64::from(*e) * 32768.0 + half) / df;
                // SAFETY: `0 ≤ q < 2^15 + 2` (above), a finite value inside i32.
                *e = unsafe { q.to_int_unchecked::<i32>() };
            }
            // The quotients are not negative: `Σ|p|` is their sum.
            s.iter().map(|&e| u64::from(e as u32)).sum()
        }
        _ => super::attention::softmax_divide(s, sum),
    }
}

compiled_for_simd! {
    /// [`super::qsdpa`]'s work on AVX-512 or AVX2 (see `compiled_for_simd!`).
    /// The softmax's division by the sum in f64 (see [`divide_exact`]), a closure so that it is inlined (and
    /// compiled for the wrapper's instruction set).
    fn qsdpa(out: &mut [i8], q: &[i8], k: &[i8], v: &[i8], s: &mut [i32], p: &super::QAttention<'_>) =>
        super::attention::qsdpa_body(out, q, k, v, s, p, |s, p, last| {
            let sum = super::attention::softmax_exp(s, p, last);
            divide_exact(s, sum)
        });
    /// [`super::qadd`]'s work on AVX-512 or AVX2 (see `compiled_for_simd!`).
    fn qadd(
        out: &mut super::QMut<'_>,
        a: super::Src<'_>,
        b: super::Src<'_>,
        ma: i32,
        mb: i32,
        shift: u32,
        hw: usize,
        per_channel: bool,
    ) => super::elementwise::qadd_body(out, a, b, ma, mb, shift, hw, per_channel);
    /// [`super::qcopy`]'s work on AVX-512 or AVX2 (see `compiled_for_simd!`).
    fn qcopy(out: &mut super::QMut<'_>, at: usize, x: super::QRef<'_>, m: i32, s: u32) =>
        super::elementwise::qcopy_body(out, at, x, m, s);
    /// [`super::qgroup_norm`]'s statistics of a group on AVX-512 or AVX2 (see `compiled_for_simd!`).
    fn group_sums(out: &super::QMut<'_>, x: super::Src<'_>, range: core::ops::Range<usize>) -> (i64, i64) =>
        super::group_norm::sums(out, x, range);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv_out_len;

    /// A deterministic pseudo-random integer sequence in `[lo, hi]`.
    fn ints(n: usize, seed: u64, lo: i32, hi: i32) -> Vec<i32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + ((s >> 33) % (hi - lo + 1) as u64) as i32
            })
            .collect()
    }

    fn shape(ci: usize, h: usize, co: usize, k: usize, stride: usize, pad: [usize; 4]) -> Conv2dShape {
        let ho = conv_out_len(h, k, stride, pad[0], pad[2]).unwrap();
        let wo = conv_out_len(h, k, stride, pad[1], pad[3]).unwrap();
        Conv2dShape { ci, h, w: h, co, kh: k, kw: k, stride, pad, ho, wo }
    }

    /// Every kernel this CPU can run for the activation width (on an AVX-512 VNNI CPU the AVX2 one too).
    fn runnable(wide: bool) -> Vec<QKernel> {
        let mut ks = Vec::new();
        if has_vnni() {
            ks.extend_from_slice(if wide { &[VNNI_PAIR, VNNI_PAIR_NARROW] } else { &[VNNI_QUAD, VNNI_QUAD_NARROW] });
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            ks.push(AVX2_PAIR);
        }
        ks
    }

    /// Runs the portable kernel and every fast one on `g` and checks they give the same integers.
    fn compare<X: QElem + TryFrom<i32>, Y: QElem + PartialEq + core::fmt::Debug>(
        g: &Conv2dShape,
        seed: u64,
        zero: i32,
    ) -> usize {
        let conv = |v: i32| X::try_from(v).ok().unwrap();
        let x: Vec<X> = ints(g.ci * g.h * g.w, seed, -X::MAX, X::MAX).into_iter().map(conv).collect();
        let w: Vec<i8> = ints(g.co * g.ci * g.kh * g.kw, seed + 1, -127, 127).into_iter().map(|v| v as i8).collect();
        // Bias, a multiplier near 2^30 and a shift that brings the sums into the output's range (every third
        // channel's saturates often).
        let shift = if X::MAX > 127 { 52 } else { 44 };
        let brq: Vec<i32> = (0..g.co)
            .flat_map(|c| {
                let s = if c % 3 == 2 { shift - 7 } else { shift };
                [ints(1, seed + 2 + c as u64, -5000, 5000)[0], (1 << 30) + 977 * c as i32, s]
            })
            .collect();
        let mut want = vec![Y::ZERO; g.co * g.ho * g.wo];
        super::super::qconv2d(&mut want, &x, &w, &brq, g, conv(zero));
        let mut ran = 0;
        // One slot shared by every kernel: the first fills it, the others find it packed for another tile and
        // pack their own weights per call.
        let shared = OnceLock::new();
        for k in runnable(X::as_i8(&x).is_none()) {
            if !Grid::fits(g, k.np) {
                continue;
            }
            // Weights packed per call, then packed into a slot and read back from it.
            let own = OnceLock::new();
            for slot in [None, Some(&own), Some(&own), Some(&shared)] {
                let mut got = vec![Y::sat(i64::MAX); want.len()];
                assert!(qconv2d_with(k, &mut got, &x, &w, &brq, g, conv(zero), slot), "{g:?}: refused");
                assert!(got == want, "{g:?} mr {} np {} {:?} slot {}: differs", k.mr, k.np, k.form, slot.is_some());
            }
            let mut got = vec![Y::sat(i64::MAX); want.len()];
            assert!(qconv2d_with(k, &mut got, &x, &w, &brq, g, conv(zero), None), "{g:?}: kernel {:?} refused", k.form);
            let bad = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                bad.is_none(),
                "{g:?} mr {} np {} {:?}: differs from the portable kernel at {bad:?}: {:?} vs {:?}",
                k.mr,
                k.np,
                k.form,
                bad.map(|i| got[i]),
                bad.map(|i| want[i])
            );
            ran += 1;
        }
        ran
    }

    /// Layer shapes of the MNIST and cifar10 models and odd ones (input channels that leave a partial group,
    /// output channels that leave a partial block, 1×1, 3×3 and 5×5 kernels, stride 2, a zero point in the
    /// padding, i8 and i16 activations in and out): every kernel gives the portable kernel's integers.
    #[test]
    fn kernels_match_the_portable_kernel() {
        let cases = [
            (shape(32, 28, 32, 3, 1, [1; 4]), 0),
            (shape(64, 14, 64, 3, 1, [1; 4]), -90),
            (shape(3, 32, 19, 3, 1, [1; 4]), 0),
            (shape(129, 8, 70, 1, 1, [0; 4]), 0),
            (shape(48, 7, 48, 3, 1, [1; 4]), 37),
            (shape(13, 9, 11, 5, 1, [2; 4]), -3),
            (shape(32, 28, 32, 3, 2, [1; 4]), -60),
            (shape(64, 16, 64, 3, 2, [0, 0, 1, 1]), 0),
        ];
        let mut ran = 0;
        for (n, (g, zero)) in cases.iter().enumerate() {
            let seed = 10 * n as u64;
            ran += compare::<i8, i8>(g, seed, *zero);
            ran += compare::<i8, i16>(g, seed + 3, *zero);
            ran += compare::<i16, i8>(g, seed + 5, 0);
            ran += compare::<i16, i16>(g, seed + 7, 0);
        }
        if ran == 0 {
            eprintln!("no AVX2 on this CPU: nothing to compare");
        }
    }

    /// Every [`Simd`] this CPU runs (on an AVX-512 CPU the AVX2 one too).
    fn runnable_simd() -> Vec<Simd> {
        let mut all = Vec::new();
        if simd() == Some(Simd::Avx512) {
            all.push(Simd::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            all.push(Simd::Avx2);
        }
        all
    }

    /// The vector requantization of a tile's row is [`rq`] saturated, to i8 and to i16, for every shift it
    /// takes (both of AVX2's paths), extreme accumulators and multipliers, saturating results and rows with a
    /// partial block.
    #[test]
    fn requant_row_is_rq() {
        fn check<Y: QElem + PartialEq + core::fmt::Debug>(acc: &[i32]) -> usize {
            let mut ran = 0;
            for (k, m) in [i32::MIN, i32::MAX, 1 << 30, -(1 << 30) + 12345, 977, -3, 1].into_iter().enumerate() {
                for s in 0..=63 {
                    let n = [MAX_NP, 16, 24, 13, 5][(k + s as usize) % 5];
                    let row = &acc[(k + s as usize) % 20..][..n];
                    let mut want = [Y::ZERO; MAX_NP];
                    requant_row(row, &mut want, m, s, None);
                    for (j, &a) in row.iter().enumerate() {
                        assert_eq!(want[j], Y::sat(rq(i64::from(a), m, s)));
                    }
                    for simd in runnable_simd() {
                        let mut got = [Y::sat(i64::MAX); MAX_NP];
                        requant_row(row, &mut got, m, s, Some(simd));
                        assert_eq!(got[..n], want[..n], "{simd:?} m {m} s {s} n {n}");
                        ran += 1;
                    }
                }
            }
            ran
        }
        let mut acc = ints(4 * MAX_NP, 17, 1 - (1 << 30), (1 << 30) - 1);
        for (i, a) in acc.iter_mut().enumerate() {
            *a = (*a << 1) >> (i % 23); // small and large magnitudes
        }
        acc[..6].copy_from_slice(&[i32::MIN, i32::MAX, 0, -1, 1, i32::MIN + 1]);
        let ran = check::<i8>(&acc) + check::<i16>(&acc);
        assert!(ran > 0 || !std::arch::is_x86_feature_detected!("avx2"), "the vector paths did not run");
    }

    /// The portable loops compiled for the CPU's [`Simd`] run wherever it has AVX2 (so that the ops' kernel
    /// mode tests compare them) and give the portable loop's integers.
    #[test]
    fn compiled_loops_run_with_avx2() {
        use super::super::{QMut, QRef};
        let x: Vec<i16> = ints(300, 5, -32767, 32767).into_iter().map(|v| v as i16).collect();
        let (mut want, mut got) = (vec![0i8; 310], vec![0i8; 310]);
        super::super::elementwise::qcopy_body(&mut QMut::I8(&mut want), 7, QRef::I16(&x), 1 << 30, 38);
        let ran = qcopy(&mut QMut::I8(&mut got), 7, QRef::I16(&x), 1 << 30, 38).is_some();
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        assert_eq!(ran, avx2);
        assert!(want.iter().any(|&v| v.abs() == 127) && want.iter().any(|&v| v.abs() < 100), "weak");
        if ran {
            assert_eq!(got, want);
        }
    }

    /// The group-norm map runs as a vector kernel wherever the CPU has AVX2 (so that `channel_affine`'s test
    /// compares it with the portable loop), over every element on AVX2.
    #[test]
    fn affine_runs_with_avx2() {
        use super::super::QMut;
        let x: Vec<i8> = ints(77, 3, -128, 127).into_iter().map(|v| v as i8).collect();
        let lut: [i8; 256] = core::array::from_fn(|i| (255 - i) as u8 as i8);
        let c = Affine8 { ah: 1, al: 1 << 23, bh: -2, bl: 0, ymax: 127 };
        let (mut o8, mut o16) = ([0i8; 77], [0i16; 77]);
        let done = [
            affine_i8(&mut QMut::I8(&mut o8), Some(&x), &c, Some(&lut)),
            affine_i8(&mut QMut::I16(&mut o16), Some(&x), &c, None),
        ];
        use std::arch::is_x86_feature_detected as has;
        // AVX-512BW (and VBMI for the table) takes whole blocks of 16, AVX2 every element.
        let bw = has!("avx512f") && has!("avx512bw");
        let want = [if bw && has!("avx512vbmi") { 64 } else { 77 }, if bw { 64 } else { 77 }];
        if has!("avx2") {
            assert_eq!(done, want);
        }
    }

    /// The softmax's division in f64 gives the integer division's quotients and `Σ|p|`: exponentials up to
    /// 2^16 − 1 with small and large sums (past 2^31, and sums below an element, for the integer fallback),
    /// negative values, and ties of the rounding.
    #[test]
    fn divide_exact_is_the_integer_division() {
        let mut cases: Vec<(Vec<i32>, i64)> = Vec::new();
        for (n, hi, seed) in [(49, 32767, 1u64), (196, 65535, 2), (7, 3, 3), (1, 65535, 4), (40_000, 65535, 5)] {
            let e = ints(n, seed, 0, hi);
            let sum = e.iter().map(|&v| i64::from(v)).sum();
            cases.push((e, sum));
        }
        cases.push((vec![0; 9], 0));
        cases.push((vec![1, 1, 2, 3, 5, 8, 13], 2)); // a sum below some elements
        cases.push((vec![3, -4, 100], 99)); // a negative exponential
        cases.push((vec![65535; 3], (1 << 31) - 1));
        cases.push((vec![65535, 1, 2, 3], (1 << 31) + 5));
        // Numerators `e·2^15 + ⌊sum/2⌋` that are exact multiples of the sum, or one short of one.
        let mut edges = 0;
        let big = [99_991, 1_000_003, 123_456_789, (1 << 31) - 1];
        for d in (0..300).map(|k| 3 + 997 * k).chain(big) {
            let near = |e: &i32| [0, 1].into_iter().any(|k| (i64::from(*e) * 32768 + d / 2 + k) % d == 0);
            let e: Vec<i32> = (0..=d.min(65535) as i32).filter(near).collect();
            edges += e.len();
            cases.push((e, d));
        }
        assert!(edges > 200, "{edges}");
        let mut fast = 0;
        for (e, sum) in cases {
            let (mut want, mut got) = (e.clone(), e.clone());
            let psum = super::super::attention::softmax_divide(&mut want, sum);
            assert_eq!(divide_exact(&mut got, sum), psum, "sum {sum}");
            assert_eq!(got, want, "sum {sum}");
            fast += usize::from(sum > 0 && sum < 1 << 31 && e.iter().all(|&v| (0..=sum as i32).contains(&v)));
        }
        assert!(fast >= 6, "{fast}: the f64 path ran too rarely");
    }

    /// Linear layers on a 1×1 map (the dot-product path, with each instruction set the CPU has): the portable
    /// kernel's integers, for input widths that leave a partial block of 64 (and of 16) and saturating outputs.
    #[test]
    fn matvec_matches_the_portable_kernel() {
        for (ci, co, seed) in [(512, 256, 1u64), (130, 7, 2), (3, 40, 3), (64, 64, 4)] {
            let g = shape(ci, 1, co, 1, 1, [0; 4]);
            let x: Vec<i8> = ints(ci, seed, -127, 127).into_iter().map(|v| v as i8).collect();
            let w: Vec<i8> = ints(co * ci, seed + 1, -127, 127).into_iter().map(|v| v as i8).collect();
            let brq: Vec<i32> = (0..co)
                .flat_map(|c| {
                    [ints(1, seed + c as u64, -9000, 9000)[0], (1 << 30) + 31 * c as i32, 40 - (c % 3) as i32]
                })
                .collect();
            let mut want = vec![0i8; co];
            super::super::qconv2d(&mut want, &x, &w, &brq, &g, 0);
            assert!(want.iter().any(|&v| v != 0) && (ci < 64 || want.iter().any(|&v| v.abs() == 127)), "ci {ci}: weak");
            let mut isas = Vec::new();
            if has_vnni() && std::arch::is_x86_feature_detected!("avx512bw") {
                isas.push(true);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                isas.push(false);
            }
            assert_eq!(isas.is_empty(), !matvec(&mut vec![0i8; co], &x, &w, &brq, &g));
            for vnni in isas {
                let mut got = vec![0i8; co];
                assert!(matvec_with(vnni, &mut got, &x, &w, &brq, &g));
                assert_eq!(got, want, "ci {ci} co {co} vnni {vnni}");
            }
        }
    }
}
