//! Fixed-point folding: everything the integer kernels need, computed once at convert time from the chosen
//! ranges and the f32 weights (multiplier/shift pairs, i8 kernels with their biases, lookup tables).

use crate::graph::Shape;

/// `r ≈ m / 2^s` with `m` in `[2^30, 2^31)` where the shift range allows.
pub(super) fn fixed(r: f64) -> (i32, u32) {
    if !(r.is_finite() && r > 0.0) {
        return (0, 0);
    }
    let shift = (30 - r.log2().floor() as i64).clamp(0, 62) as u32;
    let m = (r * 2f64.powi(shift as i32)).round();
    if m >= 2f64.powi(31) {
        if shift > 0 {
            return (((r * 2f64.powi(shift as i32 - 1)).round() as i64).min(i32::MAX as i64) as i32, shift - 1);
        }
        return (i32::MAX, 0);
    }
    (m as i32, shift)
}

/// Two multipliers sharing one shift: `(a·ra + b·rb)` ≈ `(a·ma + b·mb) >> shift`.
pub(super) fn fixed_pair(ra: f64, rb: f64) -> (i32, i32, u32) {
    let top = ra.abs().max(rb.abs());
    let shift = if top > 0.0 && top.is_finite() { (30 - top.log2().ceil() as i64).clamp(0, 62) as u32 } else { 0 };
    let m = |r: f64| (r * 2f64.powi(shift as i32)).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32;
    (m(ra), m(rb), shift)
}

/// Steps of the softmax table per unit of the exponent (a step changes a probability by 1.6 %, so rounding to
/// the nearest step errs by at most 0.8 %).
pub(super) const EXP_STEPS: f64 = 64.0;
/// Table length: covers exponents down to −16 (e^−16 · 2^15 rounds to 0).
pub(super) const EXP_LEN: usize = 1024;

/// The softmax table `exp[z] = round(32767·e^(−z/EXP_STEPS))`, `z` in `0..EXP_LEN`.
pub(super) fn exp_table() -> Vec<i16> {
    (0..EXP_LEN).map(|z| (32767.0 * (-(z as f64) / EXP_STEPS).exp()).round() as i16).collect()
}

/// The SiLU table from symmetric codes of scale `mid` to codes of scale `out` with zero point `out_zero`: entry
/// `q + 128` holds the code of `silu(q·mid)`.
pub(super) fn silu_table(mid: f32, out: f32, out_zero: i32) -> Vec<i8> {
    (-128i32..128)
        .map(|q| {
            let x = f64::from(q) * f64::from(mid);
            let y = x / (1.0 + (-x).exp());
            ((y / f64::from(out)).round() + f64::from(out_zero)).clamp(-127.0, 127.0) as i8
        })
        .collect()
}

/// An f32 convolution's kernel `w` (`dims` = `[co, ci, kh, kw]`), bias `b` and geometry.
pub(super) struct Kernel<'a> {
    pub w: &'a [f32],
    pub b: &'a [f32],
    pub dims: [usize; 4],
    pub stride: u32,
    pub pad: [u32; 4],
}

/// The i8 kernel (one scale per output channel, its largest magnitude at ±127) and the `(co, 3)` table of i32
/// bias, multiplier and shift of a convolution reading `xi` and writing `oi`.
///
/// Bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
/// Correction", §4.2): rounding the kernel to i8 changes the output by `Σ (ŵ − w)·x`, whose mean over the
/// calibration data, `Σ (ŵ − w)·E[x]`, is not zero when the input's mean is not (post-SiLU activations:
/// mean ≈ 0.2–0.4). Left alone it shifts the network output (ε by ≈ +0.005 on the MNIST model, which DDIM
/// turns into 7 % less ink); it is subtracted from the bias. `x_mean` holds the per-channel means of the
/// f32 input; border taps count for the share of output positions where they fall inside the input.
pub(super) fn fold_conv(kernel: &Kernel<'_>, xi: Shape, oi: Shape, x_mean: Option<&[f64]>) -> (Vec<i8>, Vec<i32>) {
    let (w, b, stride, pad) = (kernel.w, kernel.b, kernel.stride, kernel.pad);
    let [co, ci, kh, kw] = kernel.dims;
    let taps = ci * kh * kw;
    // Share of output positions at which each tap reads inside the input, by kernel row and column.
    let inside = |k: usize, before: u32, n_in: usize, n_out: usize| -> f64 {
        let hits = (0..n_out)
            .filter(|&o| (o * stride as usize + k).checked_sub(before as usize).is_some_and(|p| p < n_in))
            .count();
        hits as f64 / n_out.max(1) as f64
    };
    let rows: Vec<f64> = (0..kh).map(|k| inside(k, pad[0], xi.h, oi.h)).collect();
    let cols: Vec<f64> = (0..kw).map(|k| inside(k, pad[1], xi.w, oi.w)).collect();
    let mut wq = Vec::with_capacity(w.len());
    let mut brq = Vec::with_capacity(3 * co);
    let bias_limit = ((1i64 << 31) - 1 - taps as i64 * 128 * (i64::from(xi.dtype.qmax()) + 1)).max(0);
    for o in 0..co {
        let row = &w[o * taps..(o + 1) * taps];
        let top = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let sw = if top > 0.0 { f64::from(top) / 127.0 } else { 1.0 };
        let first = wq.len();
        wq.extend(row.iter().map(|&v| (f64::from(v) / sw).round().clamp(-127.0, 127.0) as i8));
        let rounding_error: f64 = match x_mean {
            Some(mean) if mean.len() == ci => (0..taps)
                .map(|j| {
                    let (c, ky, kx) = (j / (kh * kw), j / kw % kh, j % kw);
                    (f64::from(wq[first + j]) * sw - f64::from(row[j])) * mean[c] * rows[ky] * cols[kx]
                })
                .sum(),
            _ => 0.0,
        };
        let acc_scale = f64::from(xi.scale) * sw;
        // Every tap reads q = real / scale + zero (the padding reads zero): take zero·Σw back out.
        let offset = i64::from(xi.zero) * wq[first..].iter().map(|&v| i64::from(v)).sum::<i64>();
        let bias = (((f64::from(b[o]) - rounding_error) / acc_scale).round() - offset as f64)
            .clamp(-bias_limit as f64, bias_limit as f64) as i32;
        let (m, s) = fixed(acc_scale / f64::from(oi.scale));
        brq.extend([bias, m, s as i32]);
    }
    (wq, brq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_core::format::DType;
    use ddpm_core::ops::{qconv2d, rq, Conv2dShape};

    /// `m / 2^s` as f64.
    fn value(m: i32, s: u32) -> f64 {
        f64::from(m) / 2f64.powi(s as i32)
    }

    #[test]
    fn fixed_reproduces_r_within_half_a_step() {
        // 2^−32 ≤ r < 2^31: m in [2^30, 2^31), so |m/2^s − r| ≤ 2^−(s+1) ≤ 2^−31·r.
        let mut r = 2f64.powi(-32);
        while r < 2f64.powi(31) {
            for r in [r, r * 1.000_000_1, r * 1.37, r * 1.999_999_999_9].into_iter().filter(|&r| r < 2f64.powi(31)) {
                let (m, s) = fixed(r);
                assert!((1 << 30..=i32::MAX).contains(&m), "r {r}: m {m}");
                assert!((value(m, s) - r).abs() <= 0.5 / 2f64.powi(s as i32), "r {r}: {m} / 2^{s}");
                // Applied by the kernels' rounding shift to an accumulator, within one step.
                let acc = 1_000_003i64;
                let want = acc as f64 * r;
                if want < 1e15 {
                    assert!((rq(acc, m, s) as f64 - want).abs() <= 1.0 + want * 2f64.powi(-30), "r {r}");
                }
            }
            r *= 3.1;
        }
    }

    #[test]
    fn fixed_edge_cases() {
        // Exact powers of two are exact, with m = 2^30.
        for k in -32..=0 {
            assert_eq!(fixed(2f64.powi(k)), (1 << 30, (30 - k) as u32), "2^{k}");
        }
        assert_eq!(fixed(2f64.powi(30)), (1 << 30, 0));
        // Just below a power of two m would round up to 2^31: one bit less shift instead.
        assert_eq!(fixed(0.5 * (1.0 - 1e-12)), (1 << 30, 31));
        // Tiny: the shift stops at 62 and precision goes (absolute error still half a step).
        let (m, s) = fixed(2f64.powi(-40) * 1.5);
        assert_eq!((m, s), (3 << 21, 62));
        assert_eq!(fixed(1e-30), (0, 62));
        // Large: the shift stops at 0, the multiplier at i32::MAX.
        assert_eq!(fixed(1.5 * 2f64.powi(30)), (3 << 29, 0));
        assert_eq!(fixed(3e9), (i32::MAX, 0));
        assert_eq!(fixed(2f64.powi(40)), (i32::MAX, 0));
        // Nothing to represent.
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(fixed(r), (0, 0), "{r}");
        }
    }

    #[test]
    fn fixed_pair_shares_one_shift() {
        for (ra, rb) in [(0.75, 0.002), (-0.3, 1.7), (1e-5, -3e-6), (40.0, 40.0), (0.0, 0.01)] {
            let (ma, mb, s) = fixed_pair(ra, rb);
            let top = ra.abs().max(rb.abs());
            // The larger factor gets 30 bits: |m| in (2^29, 2^30].
            let mt = i64::from(ma).abs().max(i64::from(mb).abs());
            assert!(mt > 1 << 29 && mt <= 1 << 30, "{ra} {rb}: {ma} {mb} >> {s}");
            let step = 0.5 / 2f64.powi(s as i32);
            assert!((value(ma, s) - ra).abs() <= step && (value(mb, s) - rb).abs() <= step, "{ra} {rb}");
            assert!(step <= top * 2f64.powi(-29));
        }
        assert_eq!(fixed_pair(0.5, 0.25), (1 << 30, 1 << 29, 31));
        assert_eq!(fixed_pair(0.0, 0.0), (0, 0, 0));
    }

    #[test]
    fn silu_table_entries_are_silu_codes() {
        let (mid, out, zero) = (0.05f32, 0.02f32, -113);
        let t = silu_table(mid, out, zero);
        assert_eq!(t.len(), 256);
        assert_eq!(t[128], zero as i8); // silu(0) = 0 is the zero point
        for q in -128i32..128 {
            let x = f64::from(q) * f64::from(mid);
            let y = x / (1.0 + (-x).exp());
            let code = f64::from(t[(q + 128) as usize]);
            let want = y / f64::from(out) + f64::from(zero);
            if want < 127.0 {
                assert!((code - want).abs() <= 0.5 + 1e-9, "q {q}: code {code} vs {want}");
            } else {
                assert_eq!(code, 127.0, "q {q} saturates");
            }
        }
        // One entry by hand: q = 40, x = 2, silu(2) = 1.761594 → 88.08 steps above the zero point.
        assert_eq!(t[168], (88 - 113) as i8);
    }

    #[test]
    fn exp_table_is_the_softmax_exponential() {
        let t = exp_table();
        assert_eq!(t.len(), EXP_LEN);
        assert_eq!(t[0], 32767);
        assert_eq!(t[EXP_STEPS as usize], (32767.0 / std::f64::consts::E).round() as i16);
        assert!(t.windows(2).all(|p| p[1] <= p[0]));
        assert_eq!(t[EXP_LEN - 1], 0); // e^−16 · 2^15 < 0.5
    }

    fn shape(c: usize, h: usize, w: usize, dtype: DType, scale: f32, zero: i32) -> Shape {
        Shape { c, h, w, dtype, scale, zero }
    }

    #[test]
    fn kernel_rows_scale_to_127_and_saturate_the_bias() {
        let w = [0.5f32, -0.25, 0.125, 0.0, 0.0, 0.0, -2.0, 1.0, 0.01];
        let k = Kernel { w: &w, b: &[0.1, 0.0, 1e9], dims: [3, 3, 1, 1], stride: 1, pad: [0; 4] };
        let xi = shape(3, 2, 2, DType::I8, 0.01, 0);
        let (wq, brq) = fold_conv(&k, xi, shape(3, 2, 2, DType::I8, 0.02, 0), None);
        assert_eq!(wq, [127, -64, 32, 0, 0, 0, -127, 64, 1]);
        // bias in accumulator steps: 0.1 / (0.01 · 0.5/127)
        assert_eq!(brq[0], (0.1f64 / (0.01 * 0.5 / 127.0)).round() as i32);
        // An all-zero row has kernel scale 1.
        assert_eq!(brq[3], 0);
        assert_eq!(fixed(0.01 / 0.02), (brq[4], brq[5] as u32));
        // A bias too large for the accumulator is clamped so that any input still fits in i32.
        assert_eq!(i64::from(brq[6]), (1i64 << 31) - 1 - 3 * 128 * 128);
    }

    #[test]
    fn folded_convolution_matches_float_with_zero_point_and_padding() {
        // 2 → 3 channels, 3×3, stride 1, padding 1, on an asymmetric input (zero point −100).
        let (ci, co, h, wd) = (2, 3, 5, 6);
        let w: Vec<f32> = (0..co * ci * 9).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013).collect();
        let b = [0.3f32, -0.2, 0.05];
        let (sx, zero, so) = (0.01f32, -100, 0.05f32);
        let xq: Vec<i8> = (0..ci * h * wd).map(|i| ((i * 53 % 227) as i32 - 100).clamp(-127, 127) as i8).collect();
        let k = Kernel { w: &w, b: &b, dims: [co, ci, 3, 3], stride: 1, pad: [1; 4] };
        let (wq, brq) = fold_conv(&k, shape(ci, h, wd, DType::I8, sx, zero), shape(co, h, wd, DType::I8, so, 0), None);
        let g = Conv2dShape { ci, h, w: wd, co, kh: 3, kw: 3, stride: 1, pad: [1; 4], ho: h, wo: wd };
        let mut out = vec![0i8; co * h * wd];
        qconv2d::<i8, i8>(&mut out, &xq, &wq, &brq, &g, zero as i8);
        for o in 0..co {
            let row = &w[o * ci * 9..(o + 1) * ci * 9];
            let sw = f64::from(row.iter().fold(0f32, |m, &v| m.max(v.abs()))) / 127.0;
            for y in 0..h {
                for x in 0..wd {
                    // The rounded kernel on the real input (padding reads 0.0, i.e. the zero point).
                    let mut acc = f64::from(b[o]);
                    for c in 0..ci {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((y + ky) as isize - 1, (x + kx) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let q = xq[(c * h + iy as usize) * wd + ix as usize];
                                let real = f64::from(i32::from(q) - zero) * f64::from(sx);
                                acc += f64::from(wq[(o * ci + c) * 9 + ky * 3 + kx]) * sw * real;
                            }
                        }
                    }
                    let want = (acc / f64::from(so)).clamp(-127.0, 127.0);
                    // Bias rounding (half an accumulator step) and output rounding (half an output step).
                    let tol = 0.5 + 0.5 * f64::from(sx) * sw / f64::from(so) + 1e-6;
                    let got = f64::from(out[(o * h + y) * wd + x]);
                    assert!((got - want).abs() <= tol, "ch {o} ({y}, {x}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn bias_correction_cancels_the_kernel_rounding_on_the_mean_input() {
        // A 1×1 convolution whose weights do not round exactly, on an input of per-channel means `mean`.
        let w = [0.1234f32, -0.0457, 0.2999, 0.0101, -0.3333, 0.0777];
        let b = [0.01f32, -0.02];
        let mean = [0.35f64, 0.2, 0.5];
        let k = Kernel { w: &w, b: &b, dims: [2, 3, 1, 1], stride: 1, pad: [0; 4] };
        let (xi, oi) = (shape(3, 4, 4, DType::I8, 0.004, 0), shape(2, 4, 4, DType::I8, 0.01, 0));
        let (wq, plain) = fold_conv(&k, xi, oi, None);
        let (_, corrected) = fold_conv(&k, xi, oi, Some(&mean));
        for o in 0..2 {
            let row = &w[o * 3..(o + 1) * 3];
            let sw = f64::from(row.iter().fold(0f32, |m, &v| m.max(v.abs()))) / 127.0;
            let acc_scale = f64::from(xi.scale) * sw;
            let exact: f64 = (0..3).map(|c| f64::from(row[c]) * mean[c]).sum::<f64>() + f64::from(b[o]);
            let rounded = |bias: i32| {
                (0..3).map(|c| f64::from(wq[o * 3 + c]) * sw * mean[c]).sum::<f64>() + f64::from(bias) * acc_scale
            };
            let error: f64 = (0..3).map(|c| (f64::from(wq[o * 3 + c]) * sw - f64::from(row[c])) * mean[c]).sum();
            assert!(error.abs() > acc_scale, "the fixture must round by more than one step");
            // Uncorrected, the mean output is off by the rounding error; corrected, by under half a step.
            assert!((rounded(plain[3 * o]) - exact - error).abs() <= 0.5 * acc_scale + 1e-12);
            assert!((rounded(corrected[3 * o]) - exact).abs() <= 0.5 * acc_scale + 1e-12, "ch {o}");
        }
    }
}
