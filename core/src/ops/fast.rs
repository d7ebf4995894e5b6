//! Fast float kernels for x86-64 hosts (feature `std`), chosen at run time by the CPU's instruction sets:
//! AVX-512F, else AVX2 with FMA, else none (the portable kernels run). The crate's only `unsafe` code lives here:
//! vector loads and stores through raw pointers, each kernel call behind a safe wrapper that checks every
//! address the call touches before it starts.
//!
//! Convolution is a register-blocked packed GEMM over the zero-padded input that [`super::conv2d_pad`] wrote
//! (no im2col buffer): a tile of [`Kernel::mr`] output channels × [`Kernel::np`] output pixels is held in vector
//! registers for the whole reduction. Pixels are taken along the padded rows (`p = oy·rs + ox`), so for stride 1
//! tap `(c, ky, kx)` of a tile is one contiguous run of the input (`xp[c][p + ky·rs + kx]`); columns past the
//! output width are computed and dropped. A stride-s convolution runs the same tiles over the rows and columns of
//! the stride-1 grid it keeps (every s-th), dropping the others: s× the work of those layers, at the kernel's
//! speed (the diffusers downsamplers are about 1 % of a UNet's FLOPs).
//!
//! [`group_norm`] (with the fused SiLU) sums in 16 interleaved parts and uses [`exp`], a polynomial that
//! vectorises, instead of libm's scalar `expf`.
//!
//! Every output element is `b[co]` followed by one fused multiply-add per tap, taps in ascending `(c, ky, kx)`
//! order, whatever the tile, the vector width or the thread count: AVX-512 and AVX2 give the same bits, and so do
//! 1 and N threads. It differs from the portable kernel (separate multiply and add) by rounding only. Large 3×3
//! stride-1 convolutions run Winograd's F(2×2, 3×3) instead ([`winograd`]), with the same guarantees and a
//! bound of 1e-5 × max|ref| against the direct sum.
//!
//! The weights are read where they lie, one row per output channel (no packing: at batch 1 each weight is used
//! for only a few hundred pixels, and repacking them cost a tenth of a forward). Scratch beyond the arena: per
//! worker thread, for f16 weights and for the last, short block of channels, the block's rows widened to f32,
//! `mr × ci·kh·kw` floats (at most 8 × 4,608, 144 KiB, for 512 input channels and a 3×3 kernel), kept in a
//! thread-local buffer and reused.
#![allow(unsafe_code)]

use core::arch::x86_64::*;
use std::cell::RefCell;

use super::conv2d::Conv2dShape;
use super::Weight;
use crate::par;

mod winograd;

/// A convolution microkernel: its tile and its entry point.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    /// Output channels per tile (rows of the packed weight block).
    mr: usize,
    /// Output pixels per tile (a whole number of vectors).
    np: usize,
    /// Entry points for any kernel width, for `kw = 1` and for `kw = 3` (the taps of a row unrolled); see
    /// [`Kernel::entry`].
    run: [TileFn; 3],
}

/// `run(x, a, taps, bias, acc)`: `acc[r·np + j] = bias[r] + Σ_k a[k·ks + r·rsb]·x[taps.at(k) + j]`, one fused
/// multiply-add per `k`, ascending (`ks`, `rsb`: `taps`' layout of the broadcast operand).
///
/// # Safety
/// The CPU has the kernel's instruction set; the entry point is [`Kernel::entry`]`(taps.kw)`;
/// `x[taps.max_offset() + np − 1]`, `a[taps.max_a(mr)]`, `bias[mr − 1]` and `acc[mr·np − 1]` are in bounds.
type TileFn = unsafe fn(*const f32, *const f32, &Taps, *const f32, *mut f32);

impl Kernel {
    /// The entry point for taps `kw` wide. The unrolled ones keep the loads of a row at fixed offsets from one
    /// pointer: the loop over a 3×3 kernel's columns costs about as much as its multiply-adds otherwise.
    fn entry(&self, kw: usize) -> TileFn {
        match kw {
            1 => self.run[1],
            3 => self.run[2],
            _ => self.run[0],
        }
    }
}

/// The reduction of one tile: taps `k = (c, ky, kx)` reading the vector operand at offsets `c·plane + ky·rs + kx`
/// and the broadcast operand of row `r` at `k·ks + r·rsb`. A matrix product is the case `kh = kw = 1`.
pub(crate) struct Taps {
    ci: usize,
    kh: usize,
    kw: usize,
    plane: usize,
    rs: usize,
    ks: usize,
    rsb: usize,
}

impl Taps {
    fn len(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    /// Offset of the last tap (0 for an empty reduction).
    fn max_offset(&self) -> usize {
        if self.len() == 0 {
            0
        } else {
            (self.ci - 1) * self.plane + (self.kh - 1) * self.rs + (self.kw - 1)
        }
    }
    /// Index of the last broadcast element a tile of `mr` rows reads.
    fn max_a(&self, mr: usize) -> usize {
        self.len().saturating_sub(1) * self.ks + mr.saturating_sub(1) * self.rsb
    }
}

/// AVX-512F: 8 channels × 48 pixels, 24 accumulators of the 32 vector registers.
const AVX512: Kernel = Kernel { mr: 8, np: 48, run: avx512_entries::<8, 3>() };
/// AVX2 + FMA: 6 channels × 16 pixels, 12 accumulators of the 16 vector registers.
const AVX2: Kernel =
    Kernel { mr: 6, np: 16, run: [conv_tile_avx2::<6, 2, 0>, conv_tile_avx2::<6, 2, 1>, conv_tile_avx2::<6, 2, 3>] };
/// AVX-512F with one vector of pixels, for feature maps too small for [`AVX512`]'s tile.
const AVX512_NARROW: Kernel = Kernel { mr: 8, np: 16, run: avx512_entries::<8, 1>() };

const fn avx512_entries<const MR: usize, const NV: usize>() -> [TileFn; 3] {
    [conv_tile_avx512::<MR, NV, 0>, conv_tile_avx512::<MR, NV, 1>, conv_tile_avx512::<MR, NV, 3>]
}

/// The tile buffers of `conv2d_with` hold any kernel's tile.
const MAX_MR: usize = 8;
pub(crate) const MAX_NP: usize = 48;
const _: () = assert!(AVX512.mr <= MAX_MR && AVX2.mr <= MAX_MR && AVX512_NARROW.mr <= MAX_MR);
const _: () = assert!(AVX512.np <= MAX_NP && AVX2.np <= MAX_NP && AVX512_NARROW.np <= MAX_NP);

/// The best convolution kernels this CPU runs, widest tile first; empty without AVX2+FMA.
pub(crate) fn conv_kernels() -> &'static [Kernel] {
    if std::arch::is_x86_feature_detected!("avx512f") {
        &[AVX512, AVX512_NARROW]
    } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        &[AVX2]
    } else {
        &[]
    }
}

thread_local! {
    /// The weight rows of the block of output channels this thread computes, widened to f32, where they are not
    /// f32 in the blob or the block is the last, short one (see the module comment for its size).
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`super::conv2d`] with a microkernel; returns `false`, having written nothing, where none applies (stride
/// other than 1, a feature map smaller than one tile, no AVX2+FMA).
// w (co,ci,kh,kw) * xp (ci,hp,rs) + b (co) -> out (co,ho,wo)
pub(crate) fn conv2d<W: Weight>(out: &mut [f32], xp: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) -> bool {
    if winograd::conv2d(out, xp, w, b, g) {
        return true;
    }
    let best = conv_kernels().iter().copied().filter(|k| fits(k, g)).min_by_key(|k| cost(k, g));
    let Some(k) = best else { return false };
    conv2d_with(k, out, xp, w, b, g)
}

/// Relative work of kernel `k` on `g`: the positions its tiles compute, weighted by its speed per position.
/// A one-vector tile loads a vector per 8 multiply-adds instead of per 24, measured about 1.3× slower per
/// position (3×3, 128 channels, 32×32); it wins where the wide tile would mostly compute padding (7×7, 8×8).
fn cost(k: &Kernel, g: &Conv2dShape) -> usize {
    tile_cost(k, Grid::new(g, k.np).tiles * k.np)
}

/// [`cost`] for `positions` computed (a whole number of tiles).
fn tile_cost(k: &Kernel, positions: usize) -> usize {
    positions * if k.np >= 32 { 10 } else { 13 }
}

/// Whether kernel `k` can compute convolution `g`.
fn fits(k: &Kernel, g: &Conv2dShape) -> bool {
    Grid::fits(g, k.np)
}

/// The tiles of `np` positions along the padded rows (`p = y·rs + x`, `rs` the padded row) that a convolution's
/// microkernel computes: for stride 1, consecutive runs of `np` positions; for stride s, per output row `oy` the
/// runs that cover positions `s·oy·rs + s·ox` of the stride-1 grid (s − 1 of every s columns computed and
/// dropped). Shared by the float and the integer kernels.
pub(crate) struct Grid {
    /// Positions up to the last one a tile computes (see [`Grid::pixels`]).
    pub(crate) pixels: usize,
    /// Tiles per output row (strided convolutions).
    per_row: usize,
    /// Tiles in all.
    pub(crate) tiles: usize,
    np: usize,
    rs: usize,
    stride: usize,
    ho: usize,
    wo: usize,
}

impl Grid {
    pub(crate) fn new(g: &Conv2dShape, np: usize) -> Self {
        let (pixels, rs, s) = (Self::pixels(g), g.padded_row(), g.stride.max(1));
        // Runs of `np` over the `s·(wo − 1) + 1` positions of the stride-1 grid that cover an output row.
        let per_row = (s * g.wo.saturating_sub(1) + 1).div_ceil(np.max(1));
        let tiles = if s == 1 { pixels.div_ceil(np.max(1)) } else { g.ho * per_row };
        Grid { pixels, per_row, tiles, np, rs, stride: s, ho: g.ho, wo: g.wo }
    }

    /// Whether tiles of `np` positions can compute `g`: at least one whole tile.
    pub(crate) fn fits(g: &Conv2dShape, np: usize) -> bool {
        g.stride > 0 && g.ho > 0 && g.wo > 0 && Self::pixels(g) >= np
    }

    /// Positions along the padded rows up to the last one a tile computes: for stride 1 the last output pixel,
    /// `(ho − 1)·rs + wo`; for a larger stride the last position of the stride-1 grid over the padded input,
    /// `(hp − kh)·rs + rs − kw + 1`, of which the tiles keep every `stride`-th row and column.
    fn pixels(g: &Conv2dShape) -> usize {
        let (_, hp, rs) = g.scratch_shape();
        if g.stride == 1 {
            g.ho.saturating_sub(1) * rs + g.wo
        } else {
            (hp.saturating_sub(g.kh) * rs + rs + 1).saturating_sub(g.kw)
        }
    }

    /// The first position of tile `t`. A tile running past the last position is moved back to end there: it
    /// recomputes, bit for bit, outputs another tile wrote, instead of reading past the input.
    pub(crate) fn start(&self, t: usize) -> usize {
        let s = self.stride;
        let start = if s == 1 { t * self.np } else { s * (t / self.per_row) * self.rs + (t % self.per_row) * self.np };
        start.min(self.pixels - self.np)
    }

    /// The runs of the tile at `p0` that land in the output plane, `(offset in the tile, offset in the plane,
    /// length)`, worked out by stepping along the padded rows: for stride 1 the part of each padded row inside
    /// the output row, for stride s every s-th position of every s-th row. Returns how many it wrote.
    pub(crate) fn runs(&self, p0: usize, runs: &mut [(usize, usize, usize); MAX_NP]) -> usize {
        let (s, rs) = (self.stride, self.rs);
        let mut nruns = 0;
        let (mut j, mut y, mut x) = (0, p0 / rs, p0 % rs);
        while j < self.np {
            let len = (rs - x).min(self.np - j);
            if s == 1 {
                let keep = len.min(self.wo.saturating_sub(x));
                if keep > 0 && y < self.ho && nruns < runs.len() {
                    runs[nruns] = (j, y * self.wo + x, keep);
                    nruns += 1;
                }
            } else if y % s == 0 && y / s < self.ho {
                let mut dx = x.next_multiple_of(s);
                while dx < x + len && dx / s < self.wo && nruns < runs.len() {
                    runs[nruns] = (j + dx - x, (y / s) * self.wo + dx / s, 1);
                    nruns += 1;
                    dx += s;
                }
            }
            (j, y, x) = (j + len, y + 1, 0);
        }
        nruns
    }
}

/// [`conv2d`] with a given kernel (tests run each kernel the CPU has).
pub(crate) fn conv2d_with<W: Weight>(
    k: Kernel,
    out: &mut [f32],
    xp: &[f32],
    w: &[W],
    b: &[f32],
    g: &Conv2dShape,
) -> bool {
    let (ci, hp, rs) = g.scratch_shape();
    let ksize = ci * g.kh * g.kw;
    // The weights are read as they are stored, one row of `ksize` per output channel.
    let taps = Taps { ci, kh: g.kh, kw: g.kw, plane: hp * rs, rs, ks: 1, rsb: ksize };
    let (s, plane) = (g.stride, g.ho * g.wo);
    let grid = Grid::new(g, k.np);
    let pixels = grid.pixels;
    // Every read of every tile lies below `pixels − 1 + max_offset`; refuse a geometry where it would not.
    let in_bounds = pixels.checked_add(taps.max_offset()).is_some_and(|end| end <= xp.len());
    if !fits(&k, g)
        || !in_bounds
        || out.len() < g.co * plane
        || w.len() < g.co * ksize
        || b.len() < g.co
        || (g.ho - 1) * s + g.kh > hp
        || (g.wo - 1) * s + g.kw > rs
    {
        return false;
    }
    let out = &mut out[..g.co * plane];
    let run = k.entry(taps.kw);
    par::for_each_chunk(out, k.mr * plane, |blk, o| {
        let nco = o.len() / plane;
        let co0 = blk * k.mr;
        ROWS.with_borrow_mut(|buf| {
            // Rows co0 .. co0 + mr: in place where they are f32 and all there; else widened into this thread's
            // buffer, the rows past the last channel zero (their results are dropped).
            let rows = &w[co0 * ksize..(co0 + nco) * ksize];
            let wp: &[f32] = match W::as_f32(rows) {
                Some(rows) if nco == k.mr => rows,
                _ => {
                    buf.resize(ksize * k.mr, 0.0);
                    widen(rows, &mut buf[..nco * ksize]);
                    buf[nco * ksize..].fill(0.0);
                    buf
                }
            };
            if W::CONVERTS {
                // The next block's rows, fetched towards L2 while this block computes, so that widening them
                // does not wait on memory.
                let next = w.get((co0 + k.mr) * ksize..).unwrap_or(&[]);
                prefetch_l2(&next[..next.len().min(k.mr * ksize)]);
            }
            let mut bias = [0f32; MAX_MR];
            bias[..nco].copy_from_slice(&b[co0..co0 + nco]);
            let mut acc = [0f32; MAX_MR * MAX_NP];
            let acc = &mut acc[..k.mr * k.np];
            for t in 0..grid.tiles {
                let p0 = grid.start(t);
                // SAFETY: `conv_kernels` returned `k` only on a CPU with its instruction set. Reads of x reach
                // `p0 + np − 1 + max_offset ≤ pixels − 1 + max_offset < xp.len()` (checked above); wp holds
                // `mr` rows of `ksize` floats (`max_a(mr) = ksize − 1 + (mr − 1)·ksize`), bias MAX_MR ≥ mr,
                // acc `mr·np`.
                unsafe { run(xp[p0..].as_ptr(), wp.as_ptr(), &taps, bias.as_ptr(), acc.as_mut_ptr()) };
                let mut runs = [(0usize, 0usize, 0usize); MAX_NP];
                let nruns = grid.runs(p0, &mut runs);
                for (r, row) in acc.chunks_exact(k.np).take(nco).enumerate() {
                    let dst = &mut o[r * plane..][..plane];
                    for &(j, d, n) in &runs[..nruns] {
                        if let (Some(to), Some(from)) = (dst.get_mut(d..d + n), row.get(j..j + n)) {
                            // A short run (at most one tile): element by element, not a call to memcpy.
                            to.iter_mut().zip(from).for_each(|(t, f)| *t = *f);
                        }
                    }
                }
            }
        });
    });
    true
}

/// See [`TileFn`]; `NV` vectors of 16 pixels; taps `KW` wide (`0`: `t.kw`).
///
/// # Safety
/// As [`TileFn`], with `mr = MR`, `np = 16·NV`, on a CPU with AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn conv_tile_avx512<const MR: usize, const NV: usize, const KW: usize>(
    x: *const f32,
    wp: *const f32,
    t: &Taps,
    bias: *const f32,
    acc_out: *mut f32,
) {
    // SAFETY (whole body): every pointer offset stays inside the bounds the caller guarantees: x up to
    // `max_offset + 16·NV − 1`, wp up to `max_a(MR)`, bias up to `MR − 1`, acc_out up to `MR·16·NV − 1`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [_mm512_set1_ps(*bias.add(r)); NV];
        }
        // `entry` picked this body for `t.kw` (KW = 0 serves any width).
        let kw = if KW == 0 { t.kw } else { KW };
        let mut wk = wp;
        for c in 0..t.ci {
            let xc = x.add(c * t.plane);
            for ky in 0..t.kh {
                let xr = xc.add(ky * t.rs);
                for kx in 0..kw {
                    let xk = xr.add(kx);
                    let mut xv = [_mm512_setzero_ps(); NV];
                    for (j, v) in xv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(xk.add(16 * j));
                    }
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wk.add(r * t.rsb));
                        for (aj, xj) in a.iter_mut().zip(&xv) {
                            *aj = _mm512_fmadd_ps(wv, *xj, *aj);
                        }
                    }
                    wk = wk.add(t.ks);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, v) in a.iter().enumerate() {
                _mm512_storeu_ps(acc_out.add(r * 16 * NV + 16 * j), *v);
            }
        }
    }
}

/// See [`TileFn`]; `NV` vectors of 8 pixels; taps `KW` wide (`0`: `t.kw`).
///
/// # Safety
/// As [`TileFn`], with `mr = MR`, `np = 8·NV`, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn conv_tile_avx2<const MR: usize, const NV: usize, const KW: usize>(
    x: *const f32,
    wp: *const f32,
    t: &Taps,
    bias: *const f32,
    acc_out: *mut f32,
) {
    // SAFETY (whole body): as in `conv_tile_avx512`, with 8-float vectors.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [_mm256_set1_ps(*bias.add(r)); NV];
        }
        // `entry` picked this body for `t.kw` (KW = 0 serves any width).
        let kw = if KW == 0 { t.kw } else { KW };
        let mut wk = wp;
        for c in 0..t.ci {
            let xc = x.add(c * t.plane);
            for ky in 0..t.kh {
                let xr = xc.add(ky * t.rs);
                for kx in 0..kw {
                    let xk = xr.add(kx);
                    let mut xv = [_mm256_setzero_ps(); NV];
                    for (j, v) in xv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(xk.add(8 * j));
                    }
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(*wk.add(r * t.rsb));
                        for (aj, xj) in a.iter_mut().zip(&xv) {
                            *aj = _mm256_fmadd_ps(wv, *xj, *aj);
                        }
                    }
                    wk = wk.add(t.ks);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, v) in a.iter().enumerate() {
                _mm256_storeu_ps(acc_out.add(r * 8 * NV + 8 * j), *v);
            }
        }
    }
}

/// A matrix product for the microkernels, `C (m × n) = A (m × kdim) · B (kdim × n)`, with A read as
/// `a[k·ks + r·rsb]` (any layout, no packing) and B's rows `ldb` apart.
struct Product<'a> {
    a: &'a [f32],
    ks: usize,
    rsb: usize,
    b: &'a [f32],
    ldb: usize,
    kdim: usize,
    m: usize,
    n: usize,
}

impl Product<'_> {
    /// Whether kernel `k` can run it with every read in bounds: at least one whole tile each way.
    fn fits(&self, k: &Kernel) -> bool {
        let taps = self.taps();
        self.m >= k.mr
            && self.n >= k.np
            && self.kdim > 0
            && (self.m - 1) * self.rsb + taps.max_a(1) < self.a.len()
            && taps.max_offset() + self.n <= self.b.len()
    }

    fn taps(&self) -> Taps {
        Taps { ci: self.kdim, kh: 1, kw: 1, plane: self.ldb, rs: 0, ks: self.ks, rsb: self.rsb }
    }

    /// Rows `r0 .. r0 + rows` of `C + bias` (`bias[r]` added first, then the products in ascending `k`), passed
    /// a tile row at a time to `put(r, j, values)`, the values of `C[r][j ..]` (every element once or more,
    /// always with the same value). Tiles that would run past
    /// the last row or column are moved back (they recompute, bit for bit, what another tile computed).
    /// `false`, having passed nothing, where the kernel does not fit or the rows or bias are out of range.
    fn rows(
        &self,
        k: &Kernel,
        r0: usize,
        rows: usize,
        bias: Option<&[f32]>,
        mut put: impl FnMut(usize, usize, &[f32]),
    ) -> bool {
        if !self.fits(k) || r0 + rows > self.m || bias.is_some_and(|b| b.len() < self.m) {
            return false;
        }
        let taps = self.taps();
        let mut acc = [0f32; MAX_MR * MAX_NP];
        let acc = &mut acc[..k.mr * k.np];
        let mut rb = r0;
        while rb < r0 + rows {
            let base = rb.min(self.m - k.mr);
            let mut bv = [0f32; MAX_MR];
            if let Some(b) = bias {
                bv[..k.mr].copy_from_slice(&b[base..base + k.mr]);
            }
            for t in 0..self.n.div_ceil(k.np) {
                let j0 = (t * k.np).min(self.n - k.np);
                // SAFETY: the kernel runs on this CPU (`conv_kernels`); B is read up to
                // `j0 + np − 1 + max_offset ≤ n − 1 + max_offset < b.len()`, A from row `base` up to
                // `(base + mr − 1)·rsb + max_a(1) ≤ (m − 1)·rsb + max_a(1) < a.len()` (`fits`); bias and acc as
                // sized here.
                unsafe {
                    k.entry(taps.kw)(
                        self.b[j0..].as_ptr(),
                        self.a[base * self.rsb..].as_ptr(),
                        &taps,
                        bv.as_ptr(),
                        acc.as_mut_ptr(),
                    )
                };
                for (r, row) in acc.chunks_exact(k.np).enumerate() {
                    let gr = base + r;
                    if gr >= rb && gr < r0 + rows {
                        put(gr, j0, row);
                    }
                }
            }
            rb = base + k.mr;
        }
        true
    }
}

thread_local! {
    /// Per worker thread: one query block's attention scores, `hw × np` f32 (128 KiB at 32×32 with 48-query
    /// blocks), and the query block's head output before it is written token-major, `c × np`.
    static SCORES: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Phases 1 and 2 of attention plus the output projection, as matrix products through the microkernels, where
/// they fit (`false`, having changed nothing the portable path reads, where not):
/// 1. `q, k, v = w·xn + b`, channel-major `(c, hw)`, into `scratch[n..4n]`;
/// 2. per block of queries and per head: scores `kᵀq` (all keys), softmax down each query's column with [`exp`],
///    head output `v·p`, written token-major into `scratch[..n]` (as the portable phase 2 leaves it);
/// 3. `proj = wo·tᵀ + bo` channel-major into `scratch[2n..3n]` (tᵀ in `scratch[n..2n]`), for the caller to
///    finish as `out = (out + proj)·scale`.
// xn (c,hw); scratch [t | q | k | v], each c·hw; w = [wq, wk, wv, wo] (c,c); b = [bq, bk, bv, bo] (c)
pub(crate) fn attention<W: Weight>(
    scratch: &mut [f32],
    xn: &[f32],
    c: usize,
    hw: usize,
    heads: usize,
    w: [&[W]; 4],
    b: [&[f32]; 4],
) -> bool {
    let n = c * hw;
    if heads == 0 || !c.is_multiple_of(heads) || scratch.len() < 4 * n || xn.len() < n {
        return false;
    }
    let d = c / heads;
    if w.iter().any(|wi| wi.len() < c * c) || b.iter().any(|bi| bi.len() < c) {
        return false;
    }
    let Some(isa) = isa() else { return false };
    let Some(k) = conv_kernels().iter().copied().find(|k| c >= k.mr && d >= k.mr && hw >= k.np) else {
        return false;
    };
    let (t, qkv) = scratch[..4 * n].split_at_mut(n);
    // 1. q, k, v (channel-major), each weight widened to f32 once (a c × c buffer of the calling thread).
    for part in 0..3 {
        let ok = with_f32(w[part], c * c, |wf| {
            let p = Product { a: wf, ks: 1, rsb: c, b: xn, ldb: hw, kdim: c, m: c, n: hw };
            product_into(&k, &p, Some(b[part]), &mut qkv[part * n..][..n], hw)
        });
        if !ok {
            return false;
        }
    }
    let (q, kv) = qkv.split_at(n);
    let (kk, v) = kv.split_at(n);
    // 2. Scores, softmax and head outputs per block of `np` queries, written token-major into t.
    let scale = 1.0 / (d as f32).sqrt();
    let np = k.np;
    let ok = core::sync::atomic::AtomicBool::new(true);
    par::for_each_chunk(t, np * c, |qb, tc| {
        let (i0, nq) = (qb * np, tc.len() / c);
        let ib = i0.min(hw - np);
        SCORES.with_borrow_mut(|(sc, ob)| {
            sc.clear();
            sc.resize(hw * np, 0.0);
            ob.clear();
            ob.resize(d * np, 0.0);
            for h in 0..heads {
                let hq = &q[h * d * hw + ib..];
                let scores = Product { a: &kk[h * d * hw..], ks: hw, rsb: 1, b: hq, ldb: hw, kdim: d, m: hw, n: np };
                let mut fine = scores.rows(&k, 0, hw, None, |j, i, s| put_row(sc, j * np + i, s));
                match isa {
                    // SAFETY: `isa()` found the instruction sets each variant needs.
                    Isa::Avx512 => unsafe { softmax_columns_avx512(sc, np, scale) },
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { softmax_columns_avx2(sc, np, scale) },
                }
                let pv = Product { a: &v[h * d * hw..], ks: 1, rsb: hw, b: sc, ldb: np, kdim: hw, m: d, n: np };
                fine &= pv.rows(&k, 0, d, None, |r, i, s| put_row(ob, r * np + i, s));
                for (qi, row) in tc.chunks_exact_mut(c).enumerate().take(nq) {
                    let col = i0 + qi - ib;
                    for (r, o) in row[h * d..][..d].iter_mut().enumerate() {
                        *o = ob[r * np + col];
                    }
                }
                if !fine {
                    ok.store(false, core::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    });
    if !ok.into_inner() {
        return false;
    }
    // 3. proj = wo·tᵀ + bo, channel-major, with tᵀ where q was.
    let (t, rest) = scratch[..4 * n].split_at_mut(n);
    let (tt, rest) = rest.split_at_mut(n);
    for (i, row) in t.chunks_exact(c).enumerate() {
        for (ch, x) in row.iter().enumerate() {
            tt[ch * hw + i] = *x;
        }
    }
    with_f32(w[3], c * c, |wf| {
        let p = Product { a: wf, ks: 1, rsb: c, b: tt, ldb: hw, kdim: c, m: c, n: hw };
        product_into(&k, &p, Some(b[3]), &mut rest[..n], hw)
    })
}

/// `dst[i] = src[i]` as f32 for the common length: f16 with AVX-512F's or F16C's conversion, 16 or 8 at a time
/// (exact, like every f16 → f32 conversion), anything else by [`Weight::widen`].
fn widen<W: Weight>(src: &[W], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let Some(h) = W::as_f16(src) else { return W::widen(src, dst) };
    let done = if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the function reads `h` and writes `dst` within their common length.
        unsafe { widen_f16_avx512(h, dst) }
    } else if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX; as above.
        unsafe { widen_f16_f16c(h, dst) }
    } else {
        0
    };
    W::widen(&src[done..], &mut dst[done..]);
}

/// Asks for the cache lines of `v` to be brought towards L2 (a hint: no effect on any result).
fn prefetch_l2<T>(v: &[T]) {
    let bytes = core::mem::size_of_val(v);
    let p = v.as_ptr().cast::<i8>();
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch reads nothing architecturally and never faults; the address is inside `v`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(off)) };
    }
}

/// Widens the leading multiple of 16 of `h` into `dst` (same length); returns how many it did.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(h: &[half::f16], dst: &mut [f32]) -> usize {
    let n = h.len().min(dst.len()) / 16 * 16;
    for (s, d) in h[..n].chunks_exact(16).zip(dst[..n].chunks_exact_mut(16)) {
        // SAFETY: `s` holds 16 f16 (32 bytes), `d` 16 f32 (64 bytes); unaligned load and store.
        unsafe { _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast()))) };
    }
    n
}

/// Widens the leading multiple of 8 of `h` into `dst` (same length); returns how many it did.
///
/// # Safety
/// The CPU has F16C and AVX.
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(h: &[half::f16], dst: &mut [f32]) -> usize {
    let n = h.len().min(dst.len()) / 8 * 8;
    for (s, d) in h[..n].chunks_exact(8).zip(dst[..n].chunks_exact_mut(8)) {
        // SAFETY: `s` holds 8 f16 (16 bytes), `d` 8 f32 (32 bytes); unaligned load and store.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()))) };
    }
    n
}

/// Runs `f` on the first `len` weights widened to f32, in a buffer of the calling thread.
fn with_f32<W: Weight>(w: &[W], len: usize, f: impl FnOnce(&[f32]) -> bool) -> bool {
    thread_local! {
        /// One weight matrix widened to f32 (c × c: 256 KiB for 256 channels).
        static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    WIDE.with_borrow_mut(|buf| {
        let len = len.min(w.len());
        buf.resize(len, 0.0);
        widen(&w[..len], buf);
        f(buf)
    })
}

/// `out (m × ldo) = p + bias`, split across threads by blocks of rows.
fn product_into(k: &Kernel, p: &Product<'_>, bias: Option<&[f32]>, out: &mut [f32], ldo: usize) -> bool {
    if !p.fits(k) || out.len() < p.m * ldo || ldo < p.n {
        return false;
    }
    let ok = core::sync::atomic::AtomicBool::new(true);
    par::for_each_chunk(&mut out[..p.m * ldo], k.mr * ldo, |blk, o| {
        let r0 = blk * k.mr;
        let fine = p.rows(k, r0, o.len() / ldo, bias, |r, j, v| put_row(o, (r - r0) * ldo + j, v));
        if !fine {
            ok.store(false, core::sync::atomic::Ordering::Relaxed);
        }
    });
    ok.into_inner()
}

/// `buf[at ..][.. values.len()] = values`, where it is in range (the callers' layouts keep it there).
fn put_row(buf: &mut [f32], at: usize, values: &[f32]) {
    if let Some(to) = buf.get_mut(at..).and_then(|b| b.get_mut(..values.len())) {
        to.iter_mut().zip(values).for_each(|(t, v)| *t = *v);
    }
}

/// Softmax down each column of `sc` (`rows × np`, row-major) of the scores times `scale`.
#[inline(always)]
fn softmax_columns(sc: &mut [f32], np: usize, scale: f32) {
    let mut max = [f32::NEG_INFINITY; MAX_NP];
    let mut sum = [0f32; MAX_NP];
    let (max, sum) = (&mut max[..np], &mut sum[..np]);
    for row in sc.chunks_exact_mut(np) {
        for (m, s) in max.iter_mut().zip(row.iter_mut()) {
            *s *= scale;
            *m = if *s > *m { *s } else { *m };
        }
    }
    for row in sc.chunks_exact_mut(np) {
        for ((s, m), z) in row.iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
            *s = exp(*s - *m);
            *z += *s;
        }
    }
    for z in sum.iter_mut() {
        *z = 1.0 / *z;
    }
    for row in sc.chunks_exact_mut(np) {
        for (s, z) in row.iter_mut().zip(sum.iter()) {
            *s *= *z;
        }
    }
}

/// [`softmax_columns`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_columns_avx512(sc: &mut [f32], np: usize, scale: f32) {
    softmax_columns(sc, np, scale)
}

/// [`softmax_columns`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_columns_avx2(sc: &mut [f32], np: usize, scale: f32) {
    softmax_columns(sc, np, scale)
}

/// `out[oc] = b[oc] + Σ_k w[oc][k]·x[k]` for one row of `x`, in 16 interleaved partial sums (the time
/// embedding's layers). Each weight row is widened to f32 first, so f16 costs no more than f32.
#[inline(always)]
fn linear_row<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], i: usize, oc0: usize, row: &mut Vec<f32>) {
    row.resize(i, 0.0);
    for (k, o) in out.iter_mut().enumerate() {
        widen(&w[(oc0 + k) * i..][..i], row);
        let mut acc = [0f32; 16];
        let mut wc = row.chunks_exact(16);
        let mut xc = x.chunks_exact(16);
        for (wb, xb) in (&mut wc).zip(&mut xc) {
            for j in 0..16 {
                acc[j] = wb[j].mul_add(xb[j], acc[j]);
            }
        }
        let mut s = 8;
        while s > 0 {
            for j in 0..s {
                acc[j] += acc[j + s];
            }
            s /= 2;
        }
        let tail = wc.remainder().iter().zip(xc.remainder()).fold(acc[0], |t, (a, v)| a.mul_add(*v, t));
        *o = b[oc0 + k] + tail;
    }
}

/// [`linear_row`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
unsafe fn linear_row_avx512<W: Weight>(
    out: &mut [f32],
    x: &[f32],
    w: &[W],
    b: &[f32],
    i: usize,
    oc0: usize,
    row: &mut Vec<f32>,
) {
    linear_row(out, x, w, b, i, oc0, row)
}

/// [`linear_row`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn linear_row_avx2<W: Weight>(
    out: &mut [f32],
    x: &[f32],
    w: &[W],
    b: &[f32],
    i: usize,
    oc0: usize,
    row: &mut Vec<f32>,
) {
    linear_row(out, x, w, b, i, oc0, row)
}

/// [`super::linear_rows`] for a single row (`x` of `i` values); `false`, having written nothing, for more rows
/// or without AVX2+FMA.
// w (o,i) · x (i) + b (o) -> out (o)
pub(crate) fn linear_rows<W: Weight>(out: &mut [f32], x: &[f32], w: &[W], b: &[f32], i: usize, o: usize) -> bool {
    let Some(isa) = isa() else { return false };
    if i == 0 || o == 0 || x.len() != i || out.len() != o || w.len() < o * i || b.len() < o {
        return false;
    }
    thread_local! {
        /// One weight row widened to f32 (`i` floats).
        static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    par::for_each_chunk(out, 64, |blk, oc| {
        ROW.with_borrow_mut(|row| match isa {
            // SAFETY: `isa()` found the instruction sets each variant needs.
            Isa::Avx512 => unsafe { linear_row_avx512(oc, x, w, b, i, blk * 64, row) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { linear_row_avx2(oc, x, w, b, i, blk * 64, row) },
        })
    });
    true
}

/// The instruction set the elementwise kernels are compiled for.
#[derive(Clone, Copy)]
enum Isa {
    Avx512,
    Avx2,
}

fn isa() -> Option<Isa> {
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
        Some(Isa::Avx512)
    } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        Some(Isa::Avx2)
    } else {
        None
    }
}

/// `e^x` by Cody–Waite range reduction and a degree-6 polynomial (Cephes' `expf` coefficients) in fused
/// multiply-adds, written so that it vectorises: `x = n·ln 2 + r`, `e^x = 2^n·p(r)`. The result is defined by
/// these IEEE operations alone, so every vector width gives the same bits. Inputs are clamped to [-87.3, 88]:
/// within 1 ulp of `libm::expf` there (tested on a dense sweep), the bounds' values outside it (about 1.2e-38 and
/// 1.7e38), NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    let n = x.mul_add(LOG2E, 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    // 2^n for n in [-126, 127] (the clamp keeps it there), exactly: n + 127 + 1.5·2^23 holds n + 127 in its low
    // mantissa bits, which the shift moves into the exponent field (a float-to-int cast would not vectorise).
    e * f32::from_bits((n + 12_583_039.0).to_bits() << 23)
}

/// SiLU with [`exp`]: `x / (1 + e^(−x))`.
#[inline(always)]
fn silu1(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// A sum in a fixed order: 16 interleaved partial sums, combined pairwise, then the tail.
#[inline(always)]
fn sum16(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for ch in &mut chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += f(*v);
        }
    }
    let mut w = 8;
    while w > 0 {
        for k in 0..w {
            acc[k] += acc[k + w];
        }
        w /= 2;
    }
    chunks.remainder().iter().fold(acc[0], |s, v| s + f(*v))
}

/// One group of [`group_norm`]: `xs` holds its `cg` channel rows of `hw` values; `gamma`, `beta` its channels'.
#[inline(always)]
fn group_norm_group(xs: &mut [f32], hw: usize, gamma: &[f32], beta: &[f32], eps: f32, silu: bool) {
    let n = xs.len() as f32;
    let mean = sum16(xs, |v| v) / n;
    let var = sum16(xs, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((row, g), b) in xs.chunks_mut(hw).zip(gamma).zip(beta) {
        let a = g * inv;
        let bias = b - mean * a;
        if silu {
            row.iter_mut().for_each(|v| *v = silu1(v.mul_add(a, bias)));
        } else {
            row.iter_mut().for_each(|v| *v = v.mul_add(a, bias));
        }
    }
}

/// [`group_norm_group`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
unsafe fn group_norm_group_avx512(xs: &mut [f32], hw: usize, gamma: &[f32], beta: &[f32], eps: f32, silu: bool) {
    group_norm_group(xs, hw, gamma, beta, eps, silu)
}

/// [`group_norm_group`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn group_norm_group_avx2(xs: &mut [f32], hw: usize, gamma: &[f32], beta: &[f32], eps: f32, silu: bool) {
    group_norm_group(xs, hw, gamma, beta, eps, silu)
}

/// [`super::group_norm`] with vectorised sums (16 partial sums in a fixed order) and [`exp`]; returns `false`,
/// having written nothing, without AVX2+FMA or for a geometry the portable kernel leaves untouched.
// x (c,hw) in place; gamma, beta (c)
#[allow(clippy::too_many_arguments)] // PyTorch's GroupNorm parameters, plus the fused SiLU
pub(crate) fn group_norm(
    x: &mut [f32],
    c: usize,
    hw: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> bool {
    let Some(isa) = isa() else { return false };
    if groups == 0 || !c.is_multiple_of(groups) || hw == 0 || gamma.len() < c || beta.len() < c {
        return false;
    }
    let cg = c / groups;
    let len = (c * hw).min(x.len());
    par::for_each_chunk(&mut x[..len], cg * hw, |g, xs| {
        let (gm, bt) = (&gamma[g * cg..][..cg], &beta[g * cg..][..cg]);
        match isa {
            // SAFETY: `isa()` found the instruction sets each variant needs.
            Isa::Avx512 => unsafe { group_norm_group_avx512(xs, hw, gm, bt, eps, silu) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { group_norm_group_avx2(xs, hw, gm, bt, eps, silu) },
        }
    });
    true
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ops::{conv2d_pad, conv_out_len};

    /// A deterministic pseudo-random sequence in [-1, 1).
    pub(super) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32) / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A padded input, weights and biases for layer `g`, seeded by `n`.
    pub(super) fn layer(g: &Conv2dShape, n: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (sc, sh, sw) = g.scratch_shape();
        let x = noise(g.ci * g.h * g.w, n);
        let w = noise(g.co * g.ci * g.kh * g.kw, 100 + n);
        let b = noise(g.co, 200 + n);
        let mut xp = vec![f32::NAN; sc * sh * sw];
        conv2d_pad(&mut xp, &x, g);
        (xp, w, b)
    }

    pub(super) fn shape(ci: usize, h: usize, co: usize, k: usize, stride: usize, pad: [usize; 4]) -> Conv2dShape {
        let ho = conv_out_len(h, k, stride, pad[0], pad[2]).unwrap();
        let wo = conv_out_len(h, k, stride, pad[1], pad[3]).unwrap();
        Conv2dShape { ci, h, w: h, co, kh: k, kw: k, stride, pad, ho, wo }
    }

    /// Layer shapes of google/ddpm-cifar10-32 and the MNIST model (3×3 and 1×1, channel counts that leave a
    /// partial block of output channels, maps from 32×32 down to 4×4): every kernel this CPU has is within
    /// 1e-5 × max|ref| of the portable kernel, and all kernels give the same bits.
    #[test]
    fn kernels_match_the_portable_kernel_on_layer_shapes() {
        let kernels = runnable();
        if kernels.is_empty() {
            eprintln!("no AVX2+FMA on this CPU: nothing to compare");
            return;
        }
        let cases = [
            shape(3, 32, 128, 3, 1, [1; 4]),
            shape(128, 32, 128, 3, 1, [1; 4]),
            shape(384, 16, 256, 1, 1, [0; 4]),
            shape(256, 8, 256, 3, 1, [1; 4]),
            shape(256, 4, 256, 3, 1, [1; 4]),
            shape(48, 7, 48, 3, 1, [1; 4]),
            shape(16, 28, 1, 3, 1, [1; 4]),
            shape(32, 14, 19, 3, 1, [1; 4]),
            shape(128, 32, 128, 3, 2, [0, 0, 1, 1]),
            shape(256, 8, 256, 3, 2, [0, 0, 1, 1]),
            shape(32, 28, 32, 3, 2, [1; 4]),
            shape(16, 9, 5, 3, 2, [1; 4]),
        ];
        for (n, g) in cases.iter().enumerate() {
            let (xp, w, b) = layer(g, n as u64);
            let mut want = vec![0f32; g.co * g.ho * g.wo];
            crate::ops::conv2d(&mut want, &xp, &w, &b, g);
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut first: Option<Vec<f32>> = None;
            for k in &kernels {
                if !fits(k, g) {
                    continue;
                }
                let mut got = vec![f32::NAN; want.len()];
                assert!(conv2d_with(*k, &mut got, &xp, &w, &b, g), "case {n}: kernel refused");
                let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 1e-5 * max_ref,
                    "case {n} {g:?} mr {} np {}: err {err:e}, max|ref| {max_ref}",
                    k.mr,
                    k.np
                );
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(f == &got, "case {n}: kernels differ in bits"),
                }
            }
        }
    }

    /// Every kernel this CPU can run (on an AVX-512 CPU the AVX2 one too, which dispatch would not pick).
    pub(super) fn runnable() -> Vec<Kernel> {
        let mut ks = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            ks.extend([AVX512, AVX512_NARROW]);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            ks.push(AVX2);
        }
        ks
    }

    /// [`exp`] against libm's `expf` over [-87.3, 88] in steps of about 2e-4 (and every power of two near 0):
    /// within 1 ulp.
    #[test]
    fn exp_is_within_1_ulp_of_libm() {
        let ulp = |v: f32| (f32::from_bits(v.to_bits() + 1) - v).abs();
        let mut worst = 0f32;
        let mut check = |x: f32| {
            let (got, want) = (exp(x), libm::expf(x));
            let err = (got - want).abs() / ulp(want);
            assert!(err <= 1.0, "exp({x}) = {got}, libm {want}: {err} ulp");
            worst = worst.max(err);
        };
        for i in 0..=876_000 {
            check(-87.3 + i as f32 * 2e-4);
        }
        for e in -40..0 {
            check(2f32.powi(e));
            check(-(2f32.powi(e)));
        }
        eprintln!("exp: worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e4) > 0.0 && exp(1e4).is_finite());
    }

    /// The vectorised group norm (+ SiLU) against the portable one on the models' shapes: within 1e-5 ×
    /// max|ref|, and the same bits from both instruction sets.
    #[test]
    fn group_norm_matches_the_portable_kernel() {
        let Some(_) = isa() else { return };
        for (n, &(c, hw, groups, silu)) in
            [(128usize, 1024usize, 32usize, true), (256, 64, 32, false), (48, 49, 8, true), (16, 784, 8, true)]
                .iter()
                .enumerate()
        {
            let x: Vec<f32> = noise(c * hw, 7 + n as u64).iter().map(|v| 3.0 * v + 0.5).collect();
            let gamma: Vec<f32> = noise(c, 8).iter().map(|v| 1.0 + 0.2 * v).collect();
            let beta = noise(c, 9);
            let mut want = x.clone();
            crate::ops::group_norm(&mut want, c, hw, groups, &gamma, &beta, 1e-6, silu);
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut got = x.clone();
            assert!(group_norm(&mut got, c, hw, groups, &gamma, &beta, 1e-6, silu));
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5 * max_ref, "case {n}: err {err:e}, max|ref| {max_ref}");
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx2") {
                let mut other = x.clone();
                for (g, xs) in other.chunks_mut(c / groups * hw).enumerate() {
                    let cg = c / groups;
                    // SAFETY: both instruction sets were detected above.
                    unsafe { group_norm_group_avx2(xs, hw, &gamma[g * cg..][..cg], &beta[g * cg..][..cg], 1e-6, silu) };
                }
                assert!(other == got, "case {n}: AVX2 and AVX-512 differ");
            }
        }
    }

    /// The whole attention block (projections, softmax, output projection, residual) against the portable
    /// phases on the models' shapes (one head of 256 channels at 16×16 and 4×4, MNIST's 32 and 48 channels at
    /// 14×14 and 7×7, 4 heads of 16): within 1e-5 × max|ref|.
    #[test]
    fn attention_matches_the_portable_phases() {
        use crate::ops::{attention_core, attention_output, attention_project, linear_rows};
        if isa().is_none() {
            return;
        }
        for (n_case, &(c, hw, heads)) in
            [(256usize, 256usize, 1usize), (256, 16, 1), (32, 196, 1), (48, 49, 1), (64, 64, 4)].iter().enumerate()
        {
            let n = c * hw;
            let seed = 1000 * n_case as u64;
            let xn = noise(n, seed);
            let resid = noise(n, seed + 1);
            let ws: Vec<Vec<f32>> =
                (0..4).map(|i| noise(c * c, seed + 2 + i).iter().map(|v| v * 0.2).collect()).collect();
            let bs: Vec<Vec<f32>> = (0..4).map(|i| noise(c, seed + 6 + i)).collect();
            let scale = 0.7;
            // Portable.
            let mut sc = vec![0f32; 4 * n];
            attention_project(&mut sc[..n], &xn, c, hw);
            for part in 0..3 {
                let (t, rest) = sc.split_at_mut(n);
                linear_rows(&mut rest[part * n..][..n], t, &ws[part], &bs[part], c, c);
            }
            attention_core(&mut sc, c, hw, heads);
            let mut want = resid.clone();
            attention_output(&mut want, &sc, c, hw, &ws[3], &bs[3], scale);
            // Fast.
            let mut sf = vec![f32::NAN; 4 * n];
            let w4 = [&ws[0][..], &ws[1][..], &ws[2][..], &ws[3][..]];
            let b4 = [&bs[0][..], &bs[1][..], &bs[2][..], &bs[3][..]];
            assert!(attention(&mut sf, &xn, c, hw, heads, w4, b4), "case {n_case}: refused");
            let mut got = resid.clone();
            crate::ops::add_assign_scaled(&mut got, &sf[2 * n..3 * n], scale);
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("attention c {c} hw {hw} heads {heads}: err {err:.2e}, max|ref| {max_ref:.2}");
            assert!(err <= 1e-5 * max_ref, "case {n_case}: err {err:e}, max|ref| {max_ref}");
            // And the same bits from 1 and 2 threads.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let mut s1 = vec![f32::NAN; 4 * n];
            assert!(pool.install(|| attention(&mut s1, &xn, c, hw, heads, w4, b4)));
            assert!(s1[2 * n..3 * n] == sf[2 * n..3 * n], "case {n_case}: thread count changed the bits");
        }
    }

    /// One-row linear layers (the time embedding's): within 1e-5 × max|ref| of the portable kernel, f16 weights
    /// the same bits as their f32 values.
    #[test]
    fn linear_row_matches_the_portable_kernel() {
        if isa().is_none() {
            return;
        }
        for (i, o) in [(128usize, 512usize), (512, 256), (37, 5)] {
            let x = noise(i, 1);
            let w: Vec<f32> = noise(o * i, 2).iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
            let w16: Vec<half::f16> = w.iter().map(|v| half::f16::from_f32(*v)).collect();
            let b = noise(o, 3);
            let mut want = vec![0f32; o];
            crate::ops::linear_rows(&mut want, &x, &w, &b, i, o);
            let (mut got, mut got16) = (vec![0f32; o], vec![0f32; o]);
            assert!(linear_rows(&mut got, &x, &w, &b, i, o));
            assert!(linear_rows(&mut got16, &x, &w16, &b, i, o));
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5 * max_ref, "{i}x{o}: err {err:e}, max|ref| {max_ref}");
            assert!(got == got16, "{i}x{o}: f16 differs");
        }
    }

    /// f16 weights give the same bits as their f32 values; tiny maps are refused (the portable kernel runs them).
    #[test]
    fn f16_weights_and_refusals() {
        let Some(&k) = conv_kernels().first() else { return };
        let g = shape(20, 12, 10, 3, 1, [1; 4]);
        let (sc, sh, sw) = g.scratch_shape();
        let x = noise(g.ci * g.h * g.w, 1);
        let w32: Vec<f32> = noise(g.co * g.ci * 9, 2).iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
        let w16: Vec<half::f16> = w32.iter().map(|v| half::f16::from_f32(*v)).collect();
        let b = noise(g.co, 3);
        let mut xp = vec![0f32; sc * sh * sw];
        conv2d_pad(&mut xp, &x, &g);
        let (mut a, mut c) = (vec![0f32; g.co * g.ho * g.wo], vec![1f32; g.co * g.ho * g.wo]);
        assert!(conv2d_with(k, &mut a, &xp, &w32, &b, &g));
        assert!(conv2d_with(k, &mut c, &xp, &w16, &b, &g));
        assert!(a == c);
        let tiny = shape(20, 2, 10, 3, 1, [1; 4]);
        assert!(!conv2d(&mut a, &xp, &w32, &b, &tiny), "2×2 map");
        // A scratch slice too short for the geometry is refused, not read past.
        assert!(!conv2d_with(k, &mut a, &xp[..xp.len() / 2], &w32, &b, &g));
    }
}
