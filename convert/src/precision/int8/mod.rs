//! `convert --precision int8`: timestep-aware calibration of the f32 program, then its int8 form.
//!
//! Calibration runs the f32 model along real DDPM sampling trajectories (respaced to `steps` steps, so every
//! part of `0..T` is visited: diffusion activations change with t — Q-Diffusion, Li et al. 2023; PTQ4DM, Shang
//! et al. 2023) and histograms every activation, including the ones the int8 program materialises and the f32
//! program does not (the group norm before its SiLU; attention's q, k, v, core output and projection). Each
//! activation gets the symmetric clipping range that minimises the expected squared quantization error over its
//! histogram (clipping error above the range, uniform rounding noise `Δ²/12` inside it).
//!
//! The int8 program mirrors the f32 one op by op: convolutions and linear layers become `QConv2d` (kernels i8
//! with one scale per output channel, biases i32, multipliers folded), group norms `QGroupNorm` (fused with a
//! SiLU lookup table where the f32 op had SiLU), SiLU `QLut`, additions `QAdd`, concatenations `QConcat` (each
//! half rescaled: the two halves of a skip concatenation have very different ranges), attention three 1×1
//! `QConv2d`, `QSdpa` and a fourth `QConv2d`. Activations are i8, except the network input (the sampler's x_t,
//! which needs fine steps near t = 0 and a wide range near t = T) and the network output, which are i16.
//! Post-SiLU activations (the inputs of most convolutions) are asymmetric: SiLU never goes below −0.2785, so a
//! zero point spends the 255 codes on [−0.2785, clip] instead of [−clip, clip], twice the resolution; the
//! convolution pads with the zero point and the converter folds `−zero·Σw` into its bias. Each convolution's bias
//! is corrected for the mean shift its rounded kernel causes on inputs whose mean is not zero (see
//! [`fold::fold_conv`]; calibration records the per-channel means of every convolution input).
//!
//! The stages, one file each: `calibrate.rs` runs the f32 model along the trajectories, histograms every site
//! and chooses each clipping range; `fold.rs` turns ranges and f32 weights into the integers the kernels take
//! (i8 kernels, biases, multiplier/shift pairs `r ≈ m / 2^s`, lookup tables); `lower.rs` rewrites the f32
//! program op by op into the int8 one. This file holds the settings and the entry point, [`to_int8`].

mod calibrate;
mod fold;
mod lower;

use std::collections::HashMap;

use crate::error::Result;
use crate::{bail, err};
use ddpm_core::format::BetaSchedule;
use ddpm_core::program::Op;
use ddpm_core::sampler::schedule::alphas_cumprod;
use ddpm_core::Precision;

use crate::aligned::AlignedBlob;
use crate::graph::{Data, Graph, ModelHeader};
use calibrate::{calibrate, Site};
use lower::Builder;

/// Calibration settings (`convert --calibration-*`).
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// Sampling trajectories run through the f32 model.
    pub trajectories: u32,
    /// DDPM steps per trajectory (respaced over `0..T`).
    pub steps: u32,
    /// Seed of the trajectories' noise (kept away from the seeds users sample with by default).
    pub seed: u64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { trajectories: 8, steps: 50, seed: 0x5EED_CA11 }
    }
}

/// The f32 data of tensor `t` of `g` (an error for a tensor of another type).
fn floats(g: &Graph, t: u32) -> Result<&[f32]> {
    match &g.tensors[t as usize].data {
        Data::F32(d) => Ok(d),
        _ => bail!(Quantize, "internal: tensor {} is not f32", g.tensors[t as usize].name),
    }
}

/// Calibrates the f32 program `g` (with its header) and returns the int8 blob.
pub fn to_int8(
    g: &Graph,
    hdr: &ModelHeader,
    input: u32,
    output: u32,
    cal: &Calibration,
) -> Result<(Vec<u8>, Vec<String>)> {
    if cal.trajectories == 0 || cal.steps == 0 {
        bail!(Quantize, "calibration needs at least one trajectory of at least one step");
    }
    let f32_hdr = ModelHeader { precision: Precision::F32, config_json: hdr.config_json.clone(), ..*hdr };
    let f32_blob = AlignedBlob::from_bytes(&crate::emit::blob(g, &f32_hdr, input, output)?);
    // The portable kernels, so that an int8 blob comes out byte for byte the same on every machine.
    let model = f32_blob.model()?.with_kernels(ddpm_core::Kernels::Exact);
    let (hists, means) = calibrate(g, &model, cal)?;

    let mut b = Builder {
        f: g,
        q: Graph::default(),
        map: vec![None; g.values.len()],
        site_of: HashMap::new(),
        scales: HashMap::new(),
        hists,
        means,
        copied: HashMap::new(),
        silu_luts: HashMap::new(),
        asym: HashMap::new(),
        exp_table: None,
        wide: vec![Site::Input],
        notes: Vec::new(),
        float_ops: 0,
        dequantized: HashMap::new(),
    };
    let s = g.values[input as usize];
    let qin = b.q.value(s.c, s.h, s.w);
    b.site_of.insert(qin, Site::Input);
    b.map[input as usize] = Some(qin);
    for (i, op) in g.ops.iter().enumerate() {
        b.op(i, op, output)?;
    }
    let last = b.map[output as usize].ok_or_else(|| err!(Quantize, "internal: output never written"))?;
    let s = g.values[output as usize];
    let qout = if b.q.values[last as usize].dtype == ddpm_core::DType::F32 {
        last
    } else {
        let qout = b.q.value(s.c, s.h, s.w);
        b.q.push(Op::Dequantize { out: qout, x: last });
        qout
    };
    if b.float_ops > 0 {
        b.notes.push(format!(
            "int8: {} ops have no integer kernel for their operands and run in f32 between dequantize and quantize \
             steps",
            b.float_ops
        ));
    }
    let worst = b
        .hists
        .iter()
        .filter(|(site, _)| !b.wide.contains(site))
        .map(|(site, h)| (h.clip(if b.asym.contains_key(site) { 254.0 } else { 127.0 }).1, *site))
        .fold((f64::INFINITY, Site::Input), |m, x| if x.0 < m.0 { x } else { m });
    let (what, op) = match worst.1 {
        Site::Input => ("the network input", None),
        Site::Out(i) => ("the output", Some(i)),
        Site::PreAct(i) => ("the pre-SiLU output", Some(i)),
        Site::Q(i) => ("q", Some(i)),
        Site::K(i) => ("k", Some(i)),
        Site::V(i) => ("v", Some(i)),
        Site::Attn(i) => ("the attention core output", Some(i)),
        Site::Proj(i) => ("the output projection", Some(i)),
    };
    let at = match op {
        Some(i) => format!("{what} of op {i}, {}", g.ops[i].name()),
        None => what.to_string(),
    };
    b.notes.push(format!(
        "int8 calibration: {} trajectories x {} DDPM steps; lowest activation SQNR {:.1} dB ({at})",
        cal.trajectories, cal.steps, worst.0
    ));
    if hdr.schedule.clip_sample || hdr.schedule.thresholding {
        // See the README's accuracy figures (Measured bounds) for the measurements behind this.
        let mut ac = vec![0f32; hdr.schedule.num_train_timesteps as usize];
        alphas_cumprod(&model.schedule(), model.trained_betas(), &mut ac);
        let gain = ac.iter().map(|&a| f64::from((1.0 - a) / a).sqrt()).fold(0.0, f64::max);
        let gain = if gain.is_finite() { format!("{gain:.0}") } else { "unboundedly many".into() };
        b.notes.push(format!(
            "int8: the schedule clips x̂₀ (clip_sample or thresholding). At large t, x̂₀ = (x_t − √(1−ᾱ)·ε)/√ᾱ \
             magnifies the int8 error of ε up to √((1−ᾱ)/ᾱ) = {gain} times before the clip, which turns it into \
             structure: deterministic DDIM samples drift from f32 (MNIST: 9 % more ink, PSNR vs f32 25 dB instead \
             of 34). If the model does not need the clip, convert with --scheduler-set clip_sample=false"
        ));
    }
    // The trained-betas table is not read by any op: copy it over explicitly.
    let mut schedule = hdr.schedule;
    if schedule.beta_schedule == BetaSchedule::TrainedBetas {
        schedule.trained_betas_tensor = b.float_tensor(schedule.trained_betas_tensor)?;
    }
    let q_hdr = ModelHeader { precision: Precision::Int8, schedule, config_json: hdr.config_json.clone(), ..*hdr };
    let blob = crate::emit::blob(&b.q, &q_hdr, qin, qout)?;
    Ok((blob, b.notes))
}
