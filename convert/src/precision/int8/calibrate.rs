//! Calibration: the f32 model run along DDPM sampling trajectories, a histogram of |x| at every site, and the
//! clipping range each site's histogram asks for.

use std::collections::HashMap;

use super::{floats, Calibration};
use crate::err;
use crate::error::Result;
use crate::graph::Graph;
use ddpm_core::format::DType;
use ddpm_core::program::Op;
use ddpm_core::rng::fill_normal;
use ddpm_core::sampler::schedule::alphas_cumprod;
use ddpm_core::sampler::{Method, Steps};
use ddpm_core::Model;

/// Where an activation is observed: after op `op` (`Out`), or one of the intermediates an op hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Site {
    Input,
    Out(usize),
    /// Group norm output before its SiLU.
    PreAct(usize),
    Q(usize),
    K(usize),
    V(usize),
    /// Attention core output, before the output projection.
    Attn(usize),
    /// Output projection, before the residual addition.
    Proj(usize),
}

/// Histogram of |x|, doubling its range when a larger value arrives.
#[derive(Clone)]
pub(super) struct Hist {
    range: f64,
    bins: Vec<f64>,
    sum_sq: f64,
}

const BINS: usize = 2048;

impl Hist {
    fn new() -> Self {
        Hist { range: 0.0, bins: vec![0.0; BINS], sum_sq: 0.0 }
    }

    fn add(&mut self, xs: &[f32]) {
        let top = xs.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
        if self.range == 0.0 {
            self.range = top.max(1e-12);
        }
        while top > self.range {
            for i in 0..BINS / 2 {
                self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
            }
            self.bins[BINS / 2..].fill(0.0);
            self.range *= 2.0;
        }
        for &v in xs {
            let a = f64::from(v).abs();
            self.sum_sq += a * a;
            let i = ((a / self.range) * BINS as f64) as usize;
            self.bins[i.min(BINS - 1)] += 1.0;
        }
    }

    fn max(&self) -> f64 {
        let last = self.bins.iter().rposition(|&c| c > 0.0).unwrap_or(0);
        (last + 1) as f64 / BINS as f64 * self.range
    }

    /// The clipping value minimising the expected squared error of symmetric quantization to `±qmax` steps,
    /// and the signal-to-quantization-noise ratio it achieves (dB).
    pub(super) fn clip(&self, qmax: f64) -> (f64, f64) {
        let top = self.max();
        if top <= 0.0 {
            return (1.0, f64::INFINITY);
        }
        let width = self.range / BINS as f64;
        let mut best = (f64::INFINITY, top);
        for k in 1..=64 {
            let c = top * f64::from(k) / 64.0;
            let step = c / qmax;
            let mut err = 0.0;
            for (i, &n) in self.bins.iter().enumerate() {
                if n == 0.0 {
                    continue;
                }
                let x = (i as f64 + 0.5) * width;
                err += n * if x > c { (x - c) * (x - c) } else { step * step / 12.0 };
            }
            if err < best.0 {
                best = (err, c);
            }
        }
        (best.1, 10.0 * (self.sum_sq / best.0.max(1e-300)).log10())
    }
}

/// The scale of a symmetric site of type `dtype`: the clipping value [`Hist::clip`] chooses over `±qmax` steps,
/// or the whole range for i16.
pub(super) fn symmetric_scale(h: &Hist, dtype: DType) -> f32 {
    let qmax = f64::from(dtype.qmax());
    // i16 steps are fine enough that clipping never pays: keep the whole range.
    let clip = if dtype == DType::I16 { h.max().max(1e-12) } else { h.clip(qmax).0 };
    (clip / qmax) as f32
}

/// The minimum of SiLU, x·σ(x), at x ≈ −1.2785.
const SILU_MIN: f64 = -0.278_464_542_761_074;

/// Scale and zero point of an asymmetric i8 post-SiLU site (see the module docs): the 254 steps span
/// `[SILU_MIN, clip]`, the clip chosen over 254 steps.
pub(super) fn silu_range(h: &Hist) -> (f32, i32) {
    let hi = h.clip(254.0).0.max(1e-6);
    let scale = (hi - SILU_MIN) / 254.0;
    let zero = ((-SILU_MIN / scale).round() - 127.0) as i32;
    (scale as f32, zero)
}

/// Group normalisation in f64 (calibration of the pre-activation range): `x (c, hw)`.
fn group_norm(x: &[f32], c: usize, groups: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let hw = x.len() / c;
    let cg = c / groups;
    let mut out = vec![0.0; x.len()];
    for g in 0..groups {
        let xs = &x[g * cg * hw..(g + 1) * cg * hw];
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = xs.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for ch in g * cg..(g + 1) * cg {
            for i in ch * hw..(ch + 1) * hw {
                out[i] = ((f64::from(x[i]) - mean) * inv * f64::from(gamma[ch]) + f64::from(beta[ch])) as f32;
            }
        }
    }
    out
}

/// `w·x + b` per token: w `[c_out, c_in]`, x `(c_in, n)` → `(c_out, n)`.
fn project(w: &[f32], b: &[f32], x: &[f32], n: usize) -> Vec<f32> {
    let (co, ci) = (b.len(), x.len() / n);
    let mut out = vec![0.0; co * n];
    for o in 0..co {
        for t in 0..n {
            let s: f64 = (0..ci).map(|i| f64::from(w[o * ci + i]) * f64::from(x[i * n + t])).sum();
            out[o * n + t] = (s + f64::from(b[o])) as f32;
        }
    }
    out
}

/// Multi-head scaled dot-product attention over `(c, n)` tensors.
fn sdpa(q: &[f32], k: &[f32], v: &[f32], c: usize, n: usize, heads: usize) -> Vec<f32> {
    let dh = c / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = vec![0.0; c * n];
    let mut p = vec![0.0f64; n];
    for h in 0..heads {
        for i in 0..n {
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = (h * dh..(h + 1) * dh).map(|d| f64::from(q[d * n + i]) * f64::from(k[d * n + j])).sum::<f64>()
                    * scale;
            }
            let mx = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            p.iter_mut().for_each(|e| *e = (*e - mx).exp());
            let sum: f64 = p.iter().sum();
            for d in h * dh..(h + 1) * dh {
                out[d * n + i] =
                    (p.iter().zip(&v[d * n..(d + 1) * n]).map(|(a, &b)| a * f64::from(b)).sum::<f64>() / sum) as f32;
            }
        }
    }
    out
}

/// Runs the calibration trajectories through the f32 model and histograms every site.
///
/// The trajectories are DDPM ancestral sampling (`Steps::step_one`, the sampler's own step) driven by the
/// forward pass that is being observed. A model whose extra output channels the schedule does not use (say,
/// learned variance with a fixed variance type, which `sample` refuses) is stepped with its first channels.
pub(super) fn calibrate(g: &Graph, model: &Model<'_>, cal: &Calibration) -> Result<(HashMap<Site, Hist>, InputMeans)> {
    let mut hists: HashMap<Site, Hist> = HashMap::new();
    let mut sums: HashMap<(usize, u8), (Vec<f64>, f64)> = HashMap::new();
    let value_floats = |arena: &[u8], v: u32| -> Vec<f32> {
        let info = model.value(v).expect("validated value");
        arena[info.byte_range()].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let schedule = model.schedule();
    let steps = Steps::new(schedule, Method::Ddpm, cal.steps)
        .ok_or_else(|| err!(Quantize, "calibration: {} steps do not fit the schedule", cal.steps))?;
    let mut ac = vec![0f32; schedule.num_train_timesteps as usize];
    alphas_cumprod(&schedule, model.trained_betas(), &mut ac);
    let (n_in, hw) = (model.in_channels() * model.height() * model.width(), model.height() * model.width());
    let mut eps = vec![0.0f32; model.out_channels() * hw];
    let mut look_arena = vec![0u128; model.arena_bytes().div_ceil(16)];
    let (mut x0, mut scratch) = (vec![0f32; n_in], vec![0f32; n_in]);
    for k in 0..cal.trajectories {
        // A class-conditional model is calibrated on every class in turn.
        let class = (model.num_classes() > 0).then(|| k % model.num_classes());
        let mut x_t = vec![0f32; n_in];
        fill_normal(&mut x_t, cal.seed, k, 0);
        for i in 0..steps.timesteps.len() {
            let sc = steps.scalars(&ac, i).ok_or_else(|| err!(Quantize, "internal: no step {i}"))?;
            let t = sc.t as f32;
            hists.entry(Site::Input).or_insert_with(Hist::new).add(&x_t);
            let mut err = None;
            let look_bytes = bytemuck::cast_slice_mut::<u128, u8>(&mut look_arena);
            model
                .forward_inspect(look_bytes, &x_t, t, class, &mut eps, &mut |i, op, done, a| {
                    let mut add = |site: Site, xs: &[f32]| hists.entry(site).or_insert_with(Hist::new).add(xs);
                    let mut mean = |key: (usize, u8), xs: &[f32], c: usize| {
                        let (s, n) = sums.entry(key).or_insert_with(|| (vec![0.0; c], 0.0));
                        for (acc, ch) in s.iter_mut().zip(xs.chunks_exact(xs.len() / c.max(1))) {
                            *acc += ch.iter().map(|&v| f64::from(v)).sum::<f64>() / ch.len() as f64;
                        }
                        *n += 1.0;
                    };
                    match (*op, done) {
                        (Op::Conv2d { x, .. } | Op::Linear { x, .. }, false) => {
                            let c = model.value(x).map_or(1, |v| v.c);
                            mean((i, 0), &value_floats(a, x), c);
                        }
                        (Op::GroupNorm { x, gamma, beta, groups, eps, silu: true, .. }, false) => {
                            let c = model.value(x).map_or(1, |v| v.c);
                            match (floats(g, gamma), floats(g, beta)) {
                                (Ok(gm), Ok(bt)) => add(
                                    Site::PreAct(i),
                                    &group_norm(&value_floats(a, x), c, groups as usize, gm, bt, eps),
                                ),
                                (Err(e), _) | (_, Err(e)) => err = Some(e),
                            }
                        }
                        (Op::Attention { xn, w, heads, .. }, false) => {
                            let info = model.value(xn).expect("validated value");
                            let (c, n) = (info.c, info.h * info.w);
                            let xs = value_floats(a, xn);
                            let proj = |wi: usize, x: &[f32]| -> Result<Vec<f32>> {
                                Ok(project(floats(g, w[2 * wi])?, floats(g, w[2 * wi + 1])?, x, n))
                            };
                            match (|| -> Result<()> {
                                let (q, kk, v) = (proj(0, &xs)?, proj(1, &xs)?, proj(2, &xs)?);
                                let att = sdpa(&q, &kk, &v, c, n, heads as usize);
                                let o = proj(3, &att)?;
                                mean((i, 0), &xs, c);
                                mean((i, 1), &att, c);
                                add(Site::Q(i), &q);
                                add(Site::K(i), &kk);
                                add(Site::V(i), &v);
                                add(Site::Attn(i), &att);
                                add(Site::Proj(i), &o);
                                Ok(())
                            })() {
                                Ok(()) => {}
                                Err(e) => err = Some(e),
                            }
                        }
                        (_, true) => {
                            if let Some(out) = written(op) {
                                add(Site::Out(i), &value_floats(a, out));
                            }
                        }
                        _ => {}
                    }
                })
                .map_err(|e| err!(Quantize, "calibration forward: {e}"))?;
            if let Some(e) = err {
                return Err(e);
            }
            let out_c = eps.len().min(n_in * 2);
            steps
                .step_one(&sc, steps.adds_noise(i), &mut x_t, &mut x0, &eps[..out_c], &mut scratch, &mut |z| {
                    fill_normal(z, cal.seed, k, i as u32 + 1)
                })
                .map_err(|e| err!(Quantize, "calibration step: {e:?}"))?;
        }
    }
    let means = sums.into_iter().map(|(k, (s, n))| (k, s.into_iter().map(|v| v / n).collect())).collect();
    Ok((hists, means))
}

/// Per-channel means of the f32 inputs of the convolutions, keyed by the f32 op that reads them and which input:
/// 0 for a convolution's or linear layer's input and attention's normalised input (read by q, k, v), 1 for
/// attention's core output (read by the output projection).
pub(super) type InputMeans = HashMap<(usize, u8), Vec<f64>>;

/// The value an f32 op writes.
fn written(op: &Op) -> Option<u32> {
    Some(match *op {
        Op::TimestepEmbed { out, .. }
        | Op::Linear { out, .. }
        | Op::Silu { out, .. }
        | Op::ClassEmbed { out, .. }
        | Op::Conv2d { out, .. }
        | Op::GroupNorm { out, .. }
        | Op::Add { out, .. }
        | Op::Attention { out, .. }
        | Op::Upsample2x { out, .. }
        | Op::Concat { out, .. }
        | Op::Affine { out, .. }
        | Op::Permute { out, .. }
        | Op::Slice { out, .. }
        | Op::ConcatAxis { out, .. }
        | Op::Pad { out, .. }
        | Op::Pool2d { out, .. }
        | Op::Resize { out, .. } => out,
        Op::AddChannel { x, .. } | Op::ScaleShift { x, .. } => x,
        // Ops with no int8 kernel run in f32 inside the int8 program; their outputs are quantized where an
        // integer op reads them.
        _ if op.has_no_int8_kernel() => op.result(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values spread evenly over `[0, top)`, alternating in sign.
    fn spread(n: usize, top: f32) -> Vec<f32> {
        (0..n).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } * top * i as f32 / n as f32).collect()
    }

    fn count(h: &Hist) -> f64 {
        h.bins.iter().sum()
    }

    #[test]
    fn hist_doubles_its_range_and_keeps_every_count() {
        let mut h = Hist::new();
        h.add(&[0.5, -0.25]);
        assert_eq!(h.range, 0.5);
        h.add(&spread(1000, 3.0));
        assert_eq!(h.range, 4.0); // 0.5 doubled until it holds 3
        assert_eq!(count(&h), 1002.0);
        assert!(h.max() >= 2.997 && h.max() <= 3.0 + 4.0 / BINS as f64, "{}", h.max());
        let sum_sq = 0.3125 + spread(1000, 3.0).iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>();
        assert!((h.sum_sq - sum_sq).abs() < 1e-6 * sum_sq);
    }

    #[test]
    fn uniform_histogram_keeps_nearly_the_whole_range() {
        let mut h = Hist::new();
        h.add(&spread(100_000, 2.0));
        let (clip, sqnr) = h.clip(127.0);
        assert!(clip >= 0.98 * h.max() && clip <= h.max(), "clip {clip} of {}", h.max());
        // Uniform on [0, c] over ±127 steps: SQNR = 10·log10(127²·4) ≈ 48.1 dB.
        assert!((sqnr - 48.1).abs() < 0.5, "{sqnr}");
    }

    #[test]
    fn far_outlier_is_clipped() {
        let mut h = Hist::new();
        let mut xs = spread(1_000_000, 1.0);
        xs.push(100.0);
        h.add(&xs);
        assert!(h.max() >= 100.0);
        let (clip, _) = h.clip(127.0);
        // Rounding noise over ±100 would cost the million values more than clipping the one.
        assert!(clip < 0.25 * h.max(), "clip {clip}");
        assert!(clip >= 1.0, "clip {clip} cuts into the bulk");
    }

    #[test]
    fn empty_histogram_gets_a_unit_range() {
        let h = Hist::new();
        assert_eq!(h.clip(127.0), (1.0, f64::INFINITY));
    }

    #[test]
    fn symmetric_scales_clip_i8_and_keep_i16() {
        let mut h = Hist::new();
        let mut xs = spread(1_000_000, 1.0);
        xs.push(100.0);
        h.add(&xs);
        assert_eq!(symmetric_scale(&h, DType::I16), (h.max() / 32767.0) as f32);
        assert_eq!(symmetric_scale(&h, DType::I8), (h.clip(127.0).0 / 127.0) as f32);
    }

    #[test]
    fn silu_range_spans_the_silu_minimum_to_the_clip() {
        let mut h = Hist::new();
        h.add(&spread(10_000, 3.0));
        let (scale, zero) = silu_range(&h);
        let clip = h.clip(254.0).0;
        let real = |q: i32| f64::from(q - zero) * f64::from(scale);
        // −127 and 127 stand for SiLU's minimum and the clip, to within a step.
        assert!((real(-127) - SILU_MIN).abs() <= f64::from(scale), "{}", real(-127));
        assert!((real(127) - clip).abs() <= f64::from(scale), "{} vs {clip}", real(127));
        assert!((f64::from(scale) - (clip - SILU_MIN) / 254.0).abs() < 1e-7);
        // The SiLU minimum itself: x·σ(x) at x = −1.2785.
        let x = -1.278_464_542_761_074f64;
        assert!((x / (1.0 + (-x).exp()) - SILU_MIN).abs() < 1e-12);
    }

    #[test]
    fn group_norm_reference_normalises_each_group() {
        // 4 channels of 2 pixels, 2 groups.
        let x = [1.0f32, 2.0, 3.0, 4.0, 10.0, 12.0, 10.0, 12.0];
        let y = group_norm(&x, 4, 2, &[1.0, 1.0, 2.0, 2.0], &[0.0, 0.0, 1.0, 1.0], 0.0);
        let s = 1.0 / 1.25f32.sqrt(); // group 0: mean 2.5, var 1.25
        for (a, b) in y[..4].iter().zip([-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(y[4..], [-1.0, 3.0, -1.0, 3.0]); // group 1: mean 11, var 1, then ×2 + 1
    }

    #[test]
    fn project_reference_is_w_x_plus_b_per_token() {
        // w [2, 2], x (2, 3)
        let y = project(&[1.0, 2.0, -1.0, 0.5], &[0.5, 0.0], &[1.0, 2.0, 3.0, 10.0, 20.0, 30.0], 3);
        assert_eq!(y, [21.5, 42.5, 63.5, 4.0, 8.0, 12.0]);
    }

    #[test]
    fn sdpa_reference_weights_values_by_softmax() {
        // 1 head, 1 channel, 2 tokens: scores q_i·k_j = [[0, 0], [1, 2]].
        let (q, k, v) = ([0.0f32, 1.0], [1.0f32, 2.0], [4.0f32, 8.0]);
        let y = sdpa(&q, &k, &v, 1, 2, 1);
        let p = 1.0 / (1.0 + (-1f64).exp()); // weight of token 1 for query 1: e^2 / (e^1 + e^2)
        assert_eq!(y[0], 6.0); // equal scores: the mean of v
        assert!((f64::from(y[1]) - (4.0 * (1.0 - p) + 8.0 * p)).abs() < 1e-5, "{}", y[1]);
    }
}
