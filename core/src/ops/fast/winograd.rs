//! 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016): each 2×2 block of outputs is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for the
//! 4×4 input patch `d` over it, 16 multiplications per input channel instead of 36, so the products that
//! dominate a UNet's convolutions shrink 2.25×.
//!
//! 1. The input is transformed once per call into `v (blocks, 16, ci, np)`: for each block of [`Kernel::np`]
//!    tiles, position `ξ` of `Bᵀ d B` for every channel and tile of the block (adds and subtracts only), so that
//!    each product below reads one contiguous panel.
//! 2. Per block of [`Kernel::mr`] output channels (one task each), the block's filters are transformed into
//!    `u (mr, 16, ci)` in a buffer of the thread, then for every block of tiles and each `ξ` the float
//!    microkernel computes the `mr × np` products `Σ_c u[r][ξ][c]·v[ξ][c][t]` (one fused multiply-add per
//!    channel, ascending), held in a buffer of the thread for the 16 such tiles;
//! 3. the output transform `Aᵀ m A` of each tile, plus the bias, is written to the output.
//!
//! Every value is defined by the same IEEE operations in the same order whatever the vector width, the tile or
//! the thread count, so AVX-512 and AVX2 give the same bits, and so do 1 and N threads. Against the direct sum it
//! differs by rounding: tested within 1e-5 × max|ref| on layer shapes. Scratch beyond the arena: `v`, 16 floats
//! per input channel and tile (four times the input), reused by the calling thread, and each worker's `u`,
//! `mr × 16 × ci` floats (256 KiB for 8 × 512 channels), its 16 product tiles and its filter transform's
//! `30 × ci` floats.

use std::cell::RefCell;

use super::{conv_kernels, par, tile_cost, Conv2dShape, Isa, Kernel, Taps, Weight, MAX_MR};

/// Fewest tiles (2×2 output blocks) for which the transforms pay: a 16×16 map. Below it the filter transform,
/// which is per forward and per weight, costs more than the products it saves.
const MIN_TILES: usize = 64;
/// Most tiles a row (a 256-wide map): the row buffers of [`input_transform`] hold that many.
const MAX_TW: usize = 128;
/// The columns of `Bᵀ d` along a tile row, even and odd, for each of its four rows.
type Halves = ([[f32; MAX_TW + 1]; 4], [[f32; MAX_TW + 1]; 4]);
/// Fewest input channels: the products are `ci` long, and the transforms cost the same per channel whatever
/// its use.
const MIN_CI: usize = 64;
/// Fewest output channels: the input transform is per input channel and tile, whatever the number of outputs.
const MIN_CO: usize = 64;

thread_local! {
    /// The transformed input of the convolution this thread runs (taken out while in use, so that a nested call
    /// on the same thread, from a task it runs while waiting, gets a buffer of its own).
    static INPUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// For the block of output channels this thread computes: their transformed filters, the products of one
    /// block of tiles, and [`filter_block`]'s buffer.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Whether [`conv2d`] runs `g`: a 3×3 stride-1 convolution of even output size whose padded input is two rows
/// and columns larger than its output, with at least [`MIN_TILES`] tiles (at most [`MAX_TW`] a row),
/// [`MIN_CI`] input and [`MIN_CO`] output channels.
pub(crate) fn applies(g: &Conv2dShape) -> bool {
    let (_, hp, rs) = g.scratch_shape();
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.ho.is_multiple_of(2)
        && g.wo.is_multiple_of(2)
        && hp >= g.ho + 2
        && rs >= g.wo + 2
        && (g.ho / 2) * (g.wo / 2) >= MIN_TILES
        && g.wo / 2 <= MAX_TW
        && g.ci >= MIN_CI
        && g.co >= MIN_CO
}

/// The convolution by F(2×2, 3×3) with a microkernel of this CPU; `false`, having written nothing, where it does
/// not apply (see [`applies`]), no kernel fits or the sizes do not match.
// w (co,ci,3,3) * xp (ci,hp,rs) + b (co) -> out (co,ho,wo)
pub(crate) fn conv2d<W: Weight>(out: &mut [f32], xp: &[f32], w: &[W], b: &[f32], g: &Conv2dShape) -> bool {
    if !applies(g) {
        return false;
    }
    let tiles = (g.ho / 2) * (g.wo / 2);
    let cost = |k: &Kernel| tile_cost(k, tiles.div_ceil(k.np) * k.np);
    match conv_kernels().iter().copied().min_by_key(cost) {
        Some(k) => conv2d_with(k, out, xp, w, b, g),
        None => false,
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
    let (th, tw) = (g.ho / 2, g.wo / 2);
    let (tiles, plane) = (th * tw, g.ho * g.wo);
    if !applies(g) || xp.len() < ci * hp * rs || out.len() < g.co * plane || w.len() < g.co * ci * 9 || b.len() < g.co {
        return false;
    }
    let Some(isa) = super::isa() else { return false };
    let (mr, np) = (k.mr, k.np);
    let blocks = tiles.div_ceil(np);
    let panel = ci * np;
    // Block `tb` of tiles: its first tile and how many of its `np` there are (the last one may be short).
    let block = |tb: usize| Block { ci, hp, rs, tw, np, t0: tb * np, n: (tiles - tb * np).min(np) };
    let mut v = INPUT.take();
    // Every element is written below (tiles past the last one as zeros), so a reused buffer is not cleared.
    if v.len() < blocks * 16 * panel {
        v.resize(blocks * 16 * panel, 0.0);
    }
    // 1. Bᵀ d B for every channel and tile, per block of tiles.
    par::for_each_chunk(&mut v[..blocks * 16 * panel], 16 * panel, |tb, vb| {
        match isa {
            // SAFETY: `isa()` found the instruction sets each variant needs.
            Isa::Avx512 => unsafe { input_block_avx512(vb, xp, &block(tb)) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { input_block_avx2(vb, xp, &block(tb)) },
        }
    });
    // 2 and 3, per block of output channels.
    let taps = Taps { ci, kh: 1, kw: 1, plane: np, rs: 0, ks: 1, rsb: 16 * ci };
    let run = k.entry(1);
    let vs = &v[..];
    par::for_each_chunk(&mut out[..g.co * plane], mr * plane, |blk, o| {
        let nco = o.len() / plane;
        let co0 = blk * mr;
        let (ulen, mlen) = (mr * 16 * ci, 16 * mr * np);
        SCRATCH.with_borrow_mut(|(u, m, buf)| {
            if u.len() < ulen {
                u.resize(ulen, 0.0);
            }
            if m.len() < mlen {
                m.resize(mlen, 0.0);
            }
            // The rows past the last channel of a short block are zero (their results are dropped).
            u[nco * 16 * ci..ulen].fill(0.0);
            let rows = &w[co0 * ci * 9..(co0 + nco) * ci * 9];
            match isa {
                // SAFETY: `isa()` found the instruction sets each variant needs.
                Isa::Avx512 => unsafe { filter_block_avx512(u, rows, ci, buf) },
                // SAFETY: as above.
                Isa::Avx2 => unsafe { filter_block_avx2(u, rows, ci, buf) },
            }
            let zero = [0f32; MAX_MR];
            for tb in 0..blocks {
                for xi in 0..16 {
                    let p = &vs[(tb * 16 + xi) * panel..][..panel];
                    // SAFETY: `conv_kernels` returned `k` only on a CPU with its instruction set. The kernel reads
                    // the panel up to `(ci − 1)·np + np − 1 = ci·np − 1`, its last element; u from `ξ·ci` up to
                    // `max_a(mr) = ci − 1 + (mr − 1)·16·ci` further, at most `mr·16·ci − 1 < u.len()`; the zero
                    // bias `mr ≤ MAX_MR` values; m `mr·np` from `ξ·mr·np`, at most `16·mr·np ≤ m.len()`.
                    unsafe {
                        run(p.as_ptr(), u[xi * ci..].as_ptr(), &taps, zero.as_ptr(), m[xi * mr * np..].as_mut_ptr())
                    };
                }
                let bk = block(tb);
                for r in 0..nco {
                    let dst = &mut o[r * plane..][..plane];
                    output_transform(dst, &m[..mlen], mr * np, r * np, &bk, g.wo, b[co0 + r]);
                }
            }
        });
    });
    INPUT.set(v);
    true
}

/// Where one block of tiles lies: the padded input's geometry (`ci` channels of `hp` rows of `rs`), the tile
/// grid's width `tw`, the block's first tile `t0`, its tiles `n` of a panel width `np`.
#[derive(Clone, Copy)]
struct Block {
    ci: usize,
    hp: usize,
    rs: usize,
    tw: usize,
    np: usize,
    t0: usize,
    n: usize,
}

/// `vb[(ξ·ci + c)·np + j] = (Bᵀ d B)[ξ]` for the 4×4 patch `d` of channel `c` (`xc`, padded) under tile
/// `t0 + j` (`t = ty·tw + tx`, the patch at `(2·ty, 2·tx)`), `j < n`; with
/// `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`. Per tile row, `Bᵀ d` is formed for the whole padded row and
/// split into its even and odd columns, so that both steps run along contiguous memory (they vectorise); the
/// values are the same operations in the same order per element.
#[inline(always)]
fn input_transform(vb: &mut [f32], (even, odd): &mut Halves, c: usize, xc: &[f32], b: &Block) {
    let Block { ci, rs, tw, np, t0, n, .. } = *b;
    let width = 2 * tw + 2;
    if n == 0 {
        return;
    }
    let (ty0, ty1) = (t0 / tw, (t0 + n - 1) / tw);
    for ty in ty0..=ty1 {
        let rows: [&[f32]; 4] = core::array::from_fn(|i| &xc[(2 * ty + i) * rs..][..width]);
        // Bᵀ d: combinations of the patch's rows, column by column, deinterleaved.
        for p in 0..tw + 1 {
            for (half, q) in [(&mut *even, 2 * p), (&mut *odd, 2 * p + 1)] {
                let d = [rows[0][q], rows[1][q], rows[2][q], rows[3][q]];
                half[0][p] = d[0] - d[2];
                half[1][p] = d[1] + d[2];
                half[2][p] = d[2] - d[1];
                half[3][p] = d[1] - d[3];
            }
        }
        // (Bᵀ d) B for the row's tiles inside the block: columns 2·tx .. 2·tx + 3 are even[tx], odd[tx],
        // even[tx + 1], odd[tx + 1].
        let (first, last) = (t0.max(ty * tw) - ty * tw, (t0 + n).min((ty + 1) * tw) - ty * tw);
        let j0 = ty * tw + first - t0;
        let len = last - first;
        for i in 0..4 {
            let (e0, e1) = (&even[i][first..last], &even[i][first + 1..=last]);
            let (o0, o1) = (&odd[i][first..last], &odd[i][first + 1..=last]);
            let at = |k: usize| ((4 * i + k) * ci + c) * np + j0;
            combine(&mut vb[at(0)..][..len], e0, e1, |a, b| a - b);
            combine(&mut vb[at(1)..][..len], o0, e1, |a, b| a + b);
            combine(&mut vb[at(2)..][..len], e1, o0, |a, b| a - b);
            combine(&mut vb[at(3)..][..len], o0, o1, |a, b| a - b);
        }
    }
}

/// `dst[j] = f(a[j], b[j])`.
#[inline(always)]
fn combine(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(*x, *y);
    }
}

/// [`input_transform`] of every channel for one block of tiles into its panels `vb`; the tiles of a short last
/// block past the last tile are zero.
#[inline(always)]
fn input_block(vb: &mut [f32], xp: &[f32], b: &Block) {
    let plane = b.hp * b.rs;
    let mut halves = ([[0f32; MAX_TW + 1]; 4], [[0f32; MAX_TW + 1]; 4]);
    for c in 0..b.ci {
        input_transform(vb, &mut halves, c, &xp[c * plane..][..plane], b);
    }
    if b.n < b.np {
        vb.chunks_exact_mut(b.np).for_each(|l| l[b.n..].fill(0.0));
    }
}

/// [`input_block`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
unsafe fn input_block_avx512(vb: &mut [f32], xp: &[f32], b: &Block) {
    input_block(vb, xp, b)
}

/// [`input_block`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn input_block_avx2(vb: &mut [f32], xp: &[f32], b: &Block) {
    input_block(vb, xp, b)
}

/// `u[r·16·ci + ξ·ci + c] = (G g Gᵀ)[ξ]` for the 3×3 filter `g` of output row `r` and input channel `c` (`w`:
/// the rows, `(rows, ci, 3, 3)`), with `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`. Each row's taps are first laid out
/// tap-major (`buf`), so that both products run along the channels (they vectorise).
#[inline(always)]
fn filter_block<W: Weight>(u: &mut [f32], w: &[W], ci: usize, buf: &mut Vec<f32>) {
    buf.resize(30 * ci, 0.0);
    let (wide, rest) = buf.split_at_mut(9 * ci);
    let (taps, cols) = rest.split_at_mut(9 * ci);
    for (ur, row) in u.chunks_exact_mut(16 * ci).zip(w.chunks_exact(9 * ci)) {
        let f = match W::as_f32(row) {
            Some(f) => f,
            None => {
                super::widen(row, wide);
                &*wide
            }
        };
        for (c, g) in f.chunks_exact(9).enumerate() {
            for (k, v) in g.iter().enumerate() {
                taps[k * ci + c] = *v;
            }
        }
        let taps = &*taps;
        // G g, column j of the filter into lines 4·j ..: rows combined.
        for j in 0..3 {
            spread(&mut cols[4 * j * ci..][..4 * ci], line(taps, j, ci), line(taps, 3 + j, ci), line(taps, 6 + j, ci));
        }
        // (G g) Gᵀ, row i into lines 4·i ..: columns combined.
        let cols = &*cols;
        for i in 0..4 {
            spread(&mut ur[4 * i * ci..][..4 * ci], line(cols, i, ci), line(cols, 4 + i, ci), line(cols, 8 + i, ci));
        }
    }
}

/// `dst`, four lines of `n = a.len()`: `a`, `(a + b + c)·½`, `(a − b + c)·½`, `c` (a column of `G`'s products).
#[inline(always)]
fn spread(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    let n = a.len();
    let (d0, rest) = dst.split_at_mut(n);
    let (d1, rest) = rest.split_at_mut(n);
    let (d2, d3) = rest.split_at_mut(n);
    for i in 0..n.min(b.len()).min(c.len()).min(d3.len()) {
        d0[i] = a[i];
        d1[i] = (a[i] + b[i] + c[i]) * 0.5;
        d2[i] = (a[i] - b[i] + c[i]) * 0.5;
        d3[i] = c[i];
    }
}

/// Line `k` of `n` values of `b`.
#[inline(always)]
fn line(b: &[f32], k: usize, n: usize) -> &[f32] {
    &b[k * n..][..n]
}

/// [`filter_block`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
unsafe fn filter_block_avx512<W: Weight>(u: &mut [f32], w: &[W], ci: usize, buf: &mut Vec<f32>) {
    filter_block(u, w, ci, buf)
}

/// [`filter_block`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn filter_block_avx2<W: Weight>(u: &mut [f32], w: &[W], ci: usize, buf: &mut Vec<f32>) {
    filter_block(u, w, ci, buf)
}

/// Writes the 2×2 outputs `Aᵀ m A + bias` of the tiles `t0 .. t0 + n` of block `b` for one output channel into
/// its plane `dst` (`wo` wide), with `Aᵀ = [1 1 1 0; 0 1 −1 −1]`; `m[ξ·stride + at + j]` is position `ξ` of tile
/// `t0 + j`.
fn output_transform(dst: &mut [f32], m: &[f32], stride: usize, at: usize, b: &Block, wo: usize, bias: f32) {
    let Block { t0, n, tw, .. } = *b;
    let e = |xi: usize, j: usize| m[xi * stride + at + j];
    for j in 0..n {
        // Aᵀ m: two combinations of the rows, column by column; then of their columns.
        let am: [[f32; 4]; 2] = [
            core::array::from_fn(|c| e(c, j) + e(4 + c, j) + e(8 + c, j)),
            core::array::from_fn(|c| e(4 + c, j) - e(8 + c, j) - e(12 + c, j)),
        ];
        let t = t0 + j;
        let (y, x) = (2 * (t / tw), 2 * (t % tw));
        for (dy, r) in am.iter().enumerate() {
            let row = &mut dst[(y + dy) * wo + x..][..2];
            row[0] = r[0] + r[1] + r[2] + bias;
            row[1] = r[1] - r[2] - r[3] + bias;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{layer, runnable, shape};
    use super::*;

    /// The 3×3 stride-1 layers of google/ddpm-cifar10-32 that F(2×2, 3×3) runs, and others (32×32, 28×28, 18×18
    /// and 16×16 maps; channel counts that leave a partial block of output channels and of tiles), f32 and f16
    /// weights: every kernel this CPU has is within 1e-5 × max|ref| of the portable direct kernel, all kernels give
    /// the same bits, and so do 1 and 2 threads.
    #[test]
    fn matches_the_direct_convolution() {
        let kernels = runnable();
        if kernels.is_empty() {
            eprintln!("no AVX2+FMA on this CPU: nothing to compare");
            return;
        }
        let cases = [
            shape(128, 32, 128, 3, 1, [1; 4]),
            shape(256, 16, 256, 3, 1, [1; 4]),
            shape(384, 16, 67, 3, 1, [1; 4]),
            shape(64, 28, 64, 3, 1, [1; 4]),
            shape(96, 18, 72, 3, 1, [1; 4]),
        ];
        let (one, two) = (
            rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap(),
            rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap(),
        );
        for (n, g) in cases.iter().enumerate() {
            assert!(applies(g), "{g:?}");
            let (xp, w, b) = layer(g, n as u64);
            let w16: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
            let mut want = vec![0f32; g.co * g.ho * g.wo];
            let mut want16 = want.clone();
            crate::ops::conv2d(&mut want, &xp, &w, &b, g);
            crate::ops::conv2d(&mut want16, &xp, &w16, &b, g);
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut first: Option<Vec<f32>> = None;
            for k in &kernels {
                let mut got = vec![f32::NAN; want.len()];
                let mut got16 = got.clone();
                assert!(one.install(|| conv2d_with(*k, &mut got, &xp, &w, &b, g)), "{g:?}");
                assert!(conv2d_with(*k, &mut got16, &xp, &w16, &b, g));
                let mut again = vec![f32::NAN; want.len()];
                assert!(two.install(|| conv2d_with(*k, &mut again, &xp, &w, &b, g)));
                assert!(got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "threads {g:?}");
                for (got, want) in [(&got, &want), (&got16, &want16)] {
                    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(err <= 1e-5 * max_ref, "{g:?} mr {} np {}: {err:e} of {max_ref}", k.mr, k.np);
                }
                match &first {
                    Some(f) => assert!(f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{g:?}"),
                    None => first = Some(got),
                }
            }
        }
    }

    /// Shapes it does not apply to are left to the direct kernels, with the output untouched.
    #[test]
    fn declines_other_shapes() {
        for g in [
            shape(128, 32, 128, 3, 2, [0, 0, 1, 1]),
            shape(128, 32, 128, 1, 1, [0; 4]),
            shape(48, 7, 48, 3, 1, [1; 4]),
            shape(256, 8, 256, 3, 1, [1; 4]),
            shape(32, 32, 128, 3, 1, [1; 4]),
            shape(128, 32, 32, 3, 1, [1; 4]),
            shape(64, 15, 64, 3, 1, [1; 4]),
        ] {
            assert!(!applies(&g), "{g:?}");
            let (sc, sh, sw) = g.scratch_shape();
            let (xp, w, b) = (vec![0.5; sc * sh * sw], vec![0.25; g.co * g.ci * g.kh * g.kw], vec![0.0; g.co]);
            let mut out = vec![f32::NAN; g.co * g.ho * g.wo];
            assert!(!conv2d(&mut out, &xp, &w, &b, &g));
            assert!(out.iter().all(|v| v.is_nan()));
        }
    }
}
