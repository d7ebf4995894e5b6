//! Integer convolution (and, as 1×1 convolutions, the linear layers and attention projections).

use super::{rq, QElem};
use crate::ops::{Conv2dShape, Kernels};
use crate::par;

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
    #[cfg(all(target_arch = "arm", ddpm_dsp))]
    if out.len() >= g.co * plane && super::conv2d_dsp::qconv2d_packed(out, x, w, brq, g, pad) {
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

/// [`qconv2d`], or with [`Kernels::Fast`] the integer microkernel of this CPU where one applies (AVX-512 VNNI or
/// AVX2 on x86-64 hosts; see `fast.rs`; its packed weights kept in `packed` when given): the same sums, so the
/// same bits.
#[allow(clippy::too_many_arguments)]
pub fn qconv2d_using<X: QElem, Y: QElem>(
    kernels: Kernels,
    out: &mut [Y],
    x: &[X],
    w: &[i8],
    brq: &[i32],
    g: &Conv2dShape,
    pad: X,
    packed: super::PackSlot<'_>,
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if kernels == Kernels::Fast && super::fast::qconv2d(out, x, w, brq, g, pad, packed) {
        return;
    }
    let _ = (kernels, packed);
    qconv2d(out, x, w, brq, g, pad);
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

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use super::*;
    use crate::ops::int8::tests::ints;
    use std::{vec, vec::Vec};

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

    /// A convolution kernel with [`qconv2d`]'s signature.
    pub(crate) type Kernel<X, Y> = fn(&mut [Y], &[X], &[i8], &[i32], &Conv2dShape, X);

    fn check_conv<X: QElem + core::fmt::Debug, Y: QElem + PartialEq + core::fmt::Debug + Default>(
        kernel: Kernel<X, Y>,
        from: fn(i32) -> X,
        g: Conv2dShape,
        pad: i32,
    ) {
        let x: Vec<X> = ints(g.ci * g.h * g.w, X::MAX, 1).map(from).collect();
        let w: Vec<i8> = ints(g.co * g.ci * g.kh * g.kw, 127, 2).map(|v| v as i8).collect();
        let b: Vec<i32> = ints(g.co, 5000, 3).collect();
        // Shifts that keep most outputs in range (|acc| ≈ √taps · X::MAX · 127 / 3), varied per channel so that
        // some saturate and both sides of 32 bits are used.
        let typical = ((g.ci * g.kh * g.kw) as f64).sqrt() * f64::from(X::MAX) * 42.0 / f64::from(Y::MAX);
        let fit = 30 + typical.log2().ceil() as i32;
        let brq: Vec<i32> =
            (0..g.co).flat_map(|o| [b[o], (1 << 30) + 12345 * o as i32, fit + [0, -4, 3, -9, 1][o % 5]]).collect();
        let want = reference::<X, Y>(&x, &w, &brq, &g, pad);
        let pad = from(pad);
        let mut got = vec![Y::default(); g.co * g.ho * g.wo];
        kernel(&mut got, &x, &w, &brq, &g, pad);
        assert_eq!(got, want, "{g:?}");
    }

    /// Checks a kernel against the definition for every pair of element types, without and with a zero point.
    pub(crate) fn check_kernel(
        g: Conv2dShape,
        k88: Kernel<i8, i8>,
        k816: Kernel<i8, i16>,
        k168: Kernel<i16, i8>,
        k1616: Kernel<i16, i16>,
    ) {
        for pad in [0, -97] {
            check_conv(k88, |v| v as i8, g, pad);
            check_conv(k816, |v| v as i8, g, pad);
            check_conv(k168, |v| v as i16, g, pad);
            check_conv(k1616, |v| v as i16, g, pad);
        }
    }

    pub(crate) const fn shape(
        ci: usize,
        h: usize,
        w: usize,
        co: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
    ) -> Conv2dShape {
        let ho = (h + pad[0] + pad[2] - k) / stride + 1;
        let wo = (w + pad[1] + pad[3] - k) / stride + 1;
        Conv2dShape { ci, h, w, co, kh: k, kw: k, stride, pad, ho, wo }
    }

    /// Shapes every kernel is checked on.
    pub(crate) const SHAPES: [Conv2dShape; 9] = [
        shape(3, 7, 9, 5, 3, 1, [1; 4]),
        shape(2, 8, 40, 6, 3, 1, [1; 4]), // wider than one column block, channels not a multiple of 4
        shape(4, 9, 9, 4, 3, 2, [1; 4]),  // stride 2
        shape(3, 8, 8, 3, 3, 2, [0, 0, 1, 1]), // diffusers' downsample_padding = 0
        shape(5, 6, 6, 7, 1, 1, [0; 4]),  // 1×1 (linear layers, attention projections)
        shape(1, 4, 4, 2, 3, 1, [2; 4]),  // padding wider than half the kernel
        shape(2, 9, 11, 9, 3, 2, [1; 4]), // stride 2, odd sizes, a partial channel block
        shape(3, 3, 2, 4, 3, 1, [1; 4]),  // narrower than the kernel
        shape(2, 8, 9, 3, 7, 1, [3; 4]),  // 49 kernel positions: the padding sum without the table
    ];

    #[test]
    fn qconv2d_matches_the_definition() {
        for g in SHAPES {
            check_kernel(g, qconv2d, qconv2d, qconv2d, qconv2d);
        }
    }
}
