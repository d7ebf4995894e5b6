//! The integer convolution for Arm cores with the DSP extension (Cortex-M4/M7): two multiply-accumulates per
//! `smlad`, in the shape of CMSIS-NN's kernels (Lai et al. 2018). [`super::qconv2d`] calls it on those cores
//! (`cfg(ddpm_dsp)`); the host tests run it with the portable emulation of the instructions ([`super::dsp`]).
//!
//! - The kernel keeps its blob layout `[o, i, kh, kw]`: one 32-bit load takes four consecutive taps of one output
//!   channel, and `sxtb16` / `sxtb16 ror #8` widen them into the pairs (tap 0, tap 2) and (tap 1, tap 3).
//! - The input is copied, `P` output pixels at a time, into a small buffer on the stack (im2col): each pixel's
//!   taps in the kernel's order, taps in the padding reading `pad`, widened to i16 and paired in that same order
//!   ([`QElem::pairs`]). Every output channel then reads the same buffer.
//! - One output channel × `P` pixels per inner loop: per four taps one weight load, two `sxtb16` and `2·P`
//!   `smlad`, the `P` accumulators in registers (the M4 has 13 free).
//! - Taps beyond the buffer ([`TAPS`]) come in chunks of whole input channels, the partial sums of up to
//!   [`CHANNELS`] output channels kept on the stack between chunks.
//!
//! The sums are the same integers as the portable kernel's (i32, no overflow: validation bounds every partial
//! sum), so the outputs are the same bits.

use core::ops::Range;

use super::dsp::{dot_groups, transpose, Group, P};
use super::{rq, QElem};
use crate::ops::Conv2dShape;

/// Taps (input channels × kernel positions) held in the buffer at once; a multiple of 4.
const TAPS: usize = 256;
/// Output channels whose partial sums are kept between chunks of taps.
const CHANNELS: usize = 64;

/// Scratch of one call: the buffered taps and what fills them.
struct Scratch<X> {
    /// Groups of 4 taps × [`P`] pixels as i16 pairs, what the kernel reads.
    buf: [Group; TAPS / 4],
    /// Per tap, the input bytes of the 4 pixels in one word (byte p for pixel p), before the transposition.
    lanes: [u32; TAPS],
    /// One pixel's taps in the kernel's order (the per-pixel path).
    stage: [X; TAPS],
}

/// `out = sat(rq(b + Σ w·x))` as [`super::qconv2d`] defines it, with `smlad`. Returns `false`, leaving `out`
/// alone, for a kernel with more positions than [`TAPS`] (the portable kernel handles it). The caller has checked
/// the slice lengths against `g`.
pub fn qconv2d_packed<X: QElem, Y: QElem>(
    out: &mut [Y],
    x: &[X],
    w: &[i8],
    brq: &[i32],
    g: &Conv2dShape,
    pad: X,
) -> bool {
    let (plane, k) = (g.ho * g.wo, g.kh * g.kw);
    let taps = g.ci * k;
    // Input channels per chunk: a multiple of `m` so that each chunk but the last holds whole groups of 4 taps.
    let m = match k % 4 {
        0 => 1,
        2 => 2,
        _ => 4,
    };
    let most = TAPS / k.max(1) / m * m;
    if most == 0 {
        return false;
    }
    if plane == 0 || taps == 0 {
        return true;
    }
    // A 1×1 convolution with stride 1 and no padding reads pixel q at input position q: one long row, so that
    // no group of pixels spans two rows.
    let flat = Conv2dShape { h: 1, w: g.h * g.w, ho: 1, wo: plane, ..*g };
    let g = if k == 1 && g.stride == 1 && g.pad == [0; 4] && g.h * g.w == plane { &flat } else { g };
    let chunks = g.ci.div_ceil(most);
    let per = g.ci.div_ceil(chunks).div_ceil(m) * m;
    let mut sc = Scratch { buf: [[[0; 2]; P]; TAPS / 4], lanes: [0; TAPS], stage: [X::ZERO; TAPS] };
    let mut part = [[0i32; P]; CHANNELS];
    for q0 in (0..plane).step_by(P) {
        let n = P.min(plane - q0);
        if per >= g.ci {
            let groups = fill(&mut sc, x, g, 0..g.ci, q0, n, pad);
            channels(out, w, brq, taps, plane, q0, n, &sc.buf[..groups]);
            continue;
        }
        for cb in (0..g.co).step_by(CHANNELS) {
            let ce = (cb + CHANNELS).min(g.co);
            let part = &mut part[..ce - cb];
            for (c, pc) in (cb..ce).zip(part.iter_mut()) {
                *pc = [brq[3 * c]; P];
            }
            for c0 in (0..g.ci).step_by(per) {
                let cr = c0..(c0 + per).min(g.ci);
                let (t0, t1) = (cr.start * k, cr.end * k);
                let groups = fill(&mut sc, x, g, cr, q0, n, pad);
                accumulate(part, &w[cb * taps..ce * taps], taps, t0..t1, &sc.buf[..groups]);
            }
            for (c, pc) in (cb..ce).zip(part.iter()) {
                if let Some(o) = out.get_mut(c * plane + q0..c * plane + q0 + n) {
                    store(o, brq[3 * c + 1], brq[3 * c + 2] as u32, pc);
                }
            }
        }
    }
    true
}

/// Every output channel at pixels `q0..q0 + n`, all taps buffered: bias plus products, requantized. Its own
/// function, as the ones below: inlined, their loop state spilled around the `asm!` loops.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn channels<Y: QElem>(
    out: &mut [Y],
    w: &[i8],
    brq: &[i32],
    taps: usize,
    plane: usize,
    q0: usize,
    n: usize,
    buf: &[Group],
) {
    for ((wc, r), o) in w.chunks_exact(taps).zip(brq.chunks_exact(3)).zip(out.chunks_exact_mut(plane)) {
        let acc = dot([r[0]; P], wc, buf);
        if let Some(o) = o.get_mut(q0..q0 + n) {
            store(o, r[1], r[2] as u32, &acc);
        }
    }
}

/// Adds the products of taps `t` (of rows `taps` long in `w`, one per entry of `part`) to `part`.
#[inline(never)]
fn accumulate(part: &mut [[i32; P]], w: &[i8], taps: usize, t: Range<usize>, buf: &[Group]) {
    for (pc, wc) in part.iter_mut().zip(w.chunks_exact(taps)) {
        if let Some(wt) = wc.get(t.clone()) {
            *pc = dot(*pc, wt, buf);
        }
    }
}

/// `acc[p] += Σ w[t]·x[p][t]` over one output channel's taps `w` and the buffered taps of the [`P`] pixels
/// (consecutive in the output plane, rows wrapping).
#[inline(always)]
fn dot(acc: [i32; P], w: &[i8], xs: &[Group]) -> [i32; P] {
    let acc = dot_groups(acc, w, xs);
    if w.len().is_multiple_of(4) {
        return acc;
    }
    let full = w.len() / 4;
    match (w.get(4 * full..), xs.get(full)) {
        (Some(tail), Some(xg)) => {
            // A last, partial group (taps not a multiple of 4): missing weights are 0.
            let q = tail.iter().rev().fold(0u32, |q, &b| q << 8 | u32::from(b as u8));
            dot_groups(acc, &q.to_le_bytes().map(|b| b as i8), core::slice::from_ref(xg))
        }
        _ => acc,
    }
}

/// `o[p] = sat(rq(acc[p], m, s))`.
#[inline(always)]
fn store<Y: QElem>(o: &mut [Y], m: i32, s: u32, acc: &[i32; P]) {
    if (32..64).contains(&s) {
        // `rq` with the product's low word dropped first: the same floor division by 2^s, in 32-bit halves.
        let round = (1i64 << s) >> 1;
        for (d, &a) in o.iter_mut().zip(acc) {
            let p = i64::from(a).wrapping_mul(i64::from(m)).wrapping_add(round);
            *d = Y::sat(i64::from(((p >> 32) as i32) >> (s - 32)));
        }
    } else {
        for (d, &a) in o.iter_mut().zip(acc) {
            *d = Y::sat(rq(i64::from(a), m, s));
        }
    }
}

/// Buffers the taps of input channels `cr` for pixels `q0..q0 + n` (the other pixels of the group hold values
/// whose sums are not stored). Returns the number of groups.
fn fill<X: QElem>(
    sc: &mut Scratch<X>,
    x: &[X],
    g: &Conv2dShape,
    cr: Range<usize>,
    q0: usize,
    n: usize,
    pad: X,
) -> usize {
    let len = cr.len() * g.kh * g.kw;
    let groups = len.div_ceil(4);
    let lanes = &mut sc.lanes[..4 * groups];
    if let Some(x8) = X::as_i8(x) {
        if lane_words(&mut lanes[..len], x8, g, cr.clone(), q0, n, pad.get() as i8) {
            for l in lanes[len..].iter_mut() {
                *l = 0;
            }
            transpose(&mut sc.buf[..groups], lanes);
            return groups;
        }
    }
    let stage = &mut sc.stage[..4 * groups];
    stage[len..].fill(X::ZERO);
    for p in 0..n {
        let q = q0 + p;
        gather(&mut stage[..len], x, g, cr.clone(), q / g.wo, q % g.wo, pad);
        for (gr, s) in sc.buf.iter_mut().zip(stage.chunks_exact(4)) {
            gr[p] = X::pairs([s[0], s[1], s[2], s[3]]);
        }
    }
    groups
}

/// Four input bytes from `i` (0 for any outside `x`).
#[inline(always)]
fn load4(x: &[i8], i: isize) -> u32 {
    let at = |j: isize| usize::try_from(j).ok().and_then(|j| x.get(j)).map_or(0, |&v| u32::from(v as u8));
    match usize::try_from(i).ok().and_then(|i| x.get(i..i + 4)) {
        Some(b) => u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]),
        None => at(i) | at(i + 1) << 8 | at(i + 2) << 16 | at(i + 3) << 24,
    }
}

/// The pixels of a group in one output row, for a kernel 3 wide.
struct Seg3 {
    /// Input index of channel 0, kernel row 0, kernel column 0 for lane 0 (lane p reads index + p).
    at: isize,
    /// Kernel rows whose input row is inside the input.
    rows: Range<usize>,
    /// Per kernel column, the lanes read from the input (inside the row and belonging to this segment).
    keep: [u32; 3],
    /// Per kernel column, the pad byte in this segment's other lanes.
    fill: [u32; 3],
    /// The pad byte in all of this segment's lanes (kernel rows outside the input).
    pad: u32,
}

/// Lane words of a kernel 3 wide whose every tap is inside the input: channel c's kernel row ky at
/// `x[at + c·hw + ky·w ..][..6]`, one unaligned word per kernel column. `false` (with `lw` partly written) when
/// a channel's rows reach past `x` (the masked path handles it).
#[inline(never)]
fn lanes_k3_inside(lw: &mut [u32], x: &[i8], at: usize, kh: usize, w: usize, hw: usize) -> bool {
    let word = |b: &[i8]| u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
    let span = (kh - 1) * w + 6;
    for (c, ch) in lw.chunks_exact_mut(3 * kh).enumerate() {
        let Some(p) = x.get(at + c * hw..at + c * hw + span) else { return false };
        for (r, d) in p.chunks(w).zip(ch.chunks_exact_mut(3)) {
            let r = &r[..6];
            d.copy_from_slice(&[word(&r[0..4]), word(&r[1..5]), word(&r[2..6])]);
        }
    }
    true
}

/// Lane words of a kernel 3 wide for one or two segments, taps outside the input reading the pad byte.
#[inline(never)]
fn lanes_k3_masked(lw: &mut [u32], x: &[i8], segs: &[Seg3], kh: usize, w: usize, hw: usize) {
    for (c, ch) in lw.chunks_exact_mut(3 * kh).enumerate() {
        for (ky, d) in ch.chunks_exact_mut(3).enumerate() {
            let mut v = [0u32; 3];
            for s in segs {
                if s.rows.contains(&ky) {
                    let i = s.at + (c * hw + ky * w) as isize;
                    let (w0, w1) = (load4(x, i), load4(x, i + 4));
                    let l = [w0, w0 >> 8 | w1 << 24, w0 >> 16 | w1 << 16];
                    for k in 0..3 {
                        v[k] |= (l[k] & s.keep[k]) | s.fill[k];
                    }
                } else {
                    for vk in v.iter_mut() {
                        *vk |= s.pad;
                    }
                }
            }
            d.copy_from_slice(&v);
        }
    }
}

/// Lane words of a 1×1 kernel over a flat plane (stride 1, no padding): tap t = the 4 bytes of channel t at `at`.
#[inline(never)]
fn lanes_flat(lw: &mut [u32], x: &[i8], at: usize, hw: usize) {
    for (t, d) in lw.iter_mut().enumerate() {
        *d = load4(x, (at + t * hw) as isize);
    }
}

/// One row segment of a group of pixels: the pixels of one output row, as lanes of the group's words.
#[derive(Clone, Copy)]
struct Segment {
    /// Input row of kernel row 0.
    iy: isize,
    /// Input column of lane 0 at kernel column 0 (lane p reads column `ix + p + kx`).
    ix: isize,
    /// Bytes of the lanes this segment fills.
    lanes: u32,
}

/// Per tap of input channels `cr` (in the kernel's order), the i8 inputs of pixels `q0..q0 + n` as the bytes of
/// one word, taps in the padding reading `pad`. Needs stride 1, kernels at most 8 wide and rows of at least 3
/// pixels (so that the 4 pixels span at most two rows); returns `false` otherwise.
fn lane_words(lw: &mut [u32], x: &[i8], g: &Conv2dShape, cr: Range<usize>, q0: usize, n: usize, pad: i8) -> bool {
    let (h, w, kh, kw) = (g.h as isize, g.w as isize, g.kh, g.kw);
    if g.stride != 1 || kw > 8 || g.wo < 3 {
        return false;
    }
    let hw = g.h * g.w;
    if g.h == 1 && kw == 1 && kh == 1 && g.pad == [0; 4] {
        lanes_flat(lw, x, cr.start * hw + q0, hw);
        return true;
    }
    let (oy, ox) = (q0 / g.wo, q0 % g.wo);
    let (pt, pl) = (g.pad[0] as isize, g.pad[1] as isize);
    // Lanes 0..k in output row oy from column ox, lanes k..n in row oy + 1 from column 0.
    let k = n.min(g.wo - ox);
    let bytes = |a: usize, b: usize| ((1u64 << (8 * b)) - (1u64 << (8 * a))) as u32;
    let a = Segment { iy: oy as isize - pt, ix: ox as isize - pl, lanes: bytes(0, k) };
    let b = Segment { iy: a.iy + 1, ix: -(k as isize) - pl, lanes: bytes(k, n) };
    let segs = [a, b];
    let segs = &segs[..1 + usize::from(n > k)];
    let pad_word = u32::from_le_bytes([pad as u8; 4]);
    // Per segment and kernel column: the lanes whose input column is inside the row.
    let mut cols = [[0u32; 8]; 2];
    for (cs, s) in cols.iter_mut().zip(segs) {
        for (kx, m) in cs.iter_mut().enumerate().take(kw) {
            let first = -(s.ix + kx as isize); // lanes below this read columns < 0
            let last = w - (s.ix + kx as isize); // lanes from this on read columns ≥ w
            let (lo, hi) = (first.clamp(0, 4) as usize, last.clamp(0, 4) as usize);
            *m = s.lanes & if lo < hi { bytes(lo, hi) } else { 0 };
        }
    }
    let valid = |s: &Segment| (-s.iy).clamp(0, kh as isize) as usize..(h - s.iy).clamp(0, kh as isize) as usize;
    if kw == 3 {
        let seg3 = |s: &Segment, cs: &[u32; 8]| Seg3 {
            at: (cr.start * hw) as isize + s.iy * w + s.ix,
            rows: valid(s),
            keep: [cs[0], cs[1], cs[2]],
            fill: [0, 1, 2].map(|kx| pad_word & s.lanes & !cs[kx]),
            pad: pad_word & s.lanes,
        };
        let (sa, sb) = (seg3(&a, &cols[0]), seg3(&b, &cols[1]));
        if segs.len() == 2 {
            lanes_k3_masked(lw, x, &[sa, sb], kh, g.w, hw);
        } else if !(g.w >= 6
            && sa.rows == (0..kh)
            && sa.keep == [a.lanes; 3]
            && lanes_k3_inside(lw, x, sa.at as usize, kh, g.w, hw))
        {
            lanes_k3_masked(lw, x, &[sa], kh, g.w, hw);
        }
        return true;
    }
    let mut t = lw.iter_mut();
    for c in cr {
        for ky in 0..kh as isize {
            for kx in 0..kw {
                let mut v = 0;
                for (s, cs) in segs.iter().zip(&cols) {
                    let y = s.iy + ky;
                    let inside = if (0..h).contains(&y) { cs[kx] } else { 0 };
                    if inside != 0 {
                        v |= load4(x, (c * hw) as isize + y * w + s.ix + kx as isize) & inside;
                    }
                    v |= pad_word & s.lanes & !inside;
                }
                if let Some(d) = t.next() {
                    *d = v;
                }
            }
        }
    }
    true
}

/// The taps of output pixel `(oy, ox)` over input channels `cr`, in the kernel's order `(ci, ky, kx)`.
fn gather<X: QElem>(d: &mut [X], x: &[X], g: &Conv2dShape, cr: Range<usize>, oy: usize, ox: usize, pad: X) {
    let (h, w, kh, kw, s) = (g.h, g.w, g.kh, g.kw, g.stride.max(1));
    let hw = h * w;
    let planes = x[cr.start * hw..cr.end * hw].chunks_exact(hw);
    let (iy, ix) = ((oy * s) as isize - g.pad[0] as isize, (ox * s) as isize - g.pad[1] as isize);
    for (dc, pc) in d.chunks_exact_mut(kh * kw).zip(planes) {
        for (t, v) in dc.iter_mut().enumerate() {
            let (y, x) = (iy + (t / kw) as isize, ix + (t % kw) as isize);
            let at = (y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w).then(|| y as usize * w + x as usize);
            *v = at.map_or(pad, |i| pc[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::int8::conv2d::tests::{check_kernel, shape, SHAPES};

    fn packed<X: QElem, Y: QElem>(o: &mut [Y], x: &[X], w: &[i8], b: &[i32], g: &Conv2dShape, pad: X) {
        assert!(qconv2d_packed(o, x, w, b, g, pad), "{g:?}");
    }

    #[test]
    fn the_packed_kernel_matches_the_definition() {
        for g in SHAPES.iter().copied().chain([
            shape(40, 5, 6, 70, 3, 1, [1; 4]), // several chunks of taps, several blocks of output channels
            shape(33, 4, 5, 5, 3, 2, [1; 4]),  // chunks of taps, the last with a partial group
            shape(300, 2, 3, 6, 1, 1, [0; 4]), // 1×1, several chunks
            shape(7, 1, 1, 9, 1, 1, [0; 4]),   // a linear layer (one pixel)
            shape(2, 9, 9, 3, 5, 1, [2; 4]),   // 25 kernel positions
            shape(3, 6, 7, 2, 2, 1, [1, 1, 0, 0]), // 4 kernel positions, a generic kernel width
        ]) {
            check_kernel(g, packed, packed, packed, packed);
        }
        // A kernel with more positions than the buffer holds is left to the portable kernel.
        let g = shape(1, 20, 20, 1, 17, 1, [0; 4]);
        assert!(!qconv2d_packed::<i8, i8>(&mut [0i8; 16], &[0; 400], &[0; 289], &[0, 1, 1], &g, 0));
    }
}
