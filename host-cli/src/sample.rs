//! `host-cli sample`: runs the core sampler over a batch, split into one sub-batch per worker thread.
//!
//! Each sub-batch is a [`Sampler`] with its own arena, starting at its offset in the noise stream
//! (`first_image`), and all of them advance one step at a time together. Every image is computed by the
//! same code in the same order as in a single batch, so the output is bit-identical for any thread count.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use ddpm_core::sampler::{Method, SampleError, SampleSpec, Sampler, State};
use ddpm_core::Model;
use rayon::prelude::*;

use crate::{blobfile, image};
use ddpm_convert::load;

/// What the GIF shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GifOf {
    /// The noisy samples x_t.
    Xt,
    /// The predicted clean images x̂₀.
    X0,
}

/// A sampling request from the command line.
pub struct SampleArgs {
    pub method: Method,
    pub num: u32,
    pub seed: u64,
    pub steps: Option<u32>,
    pub class: Option<u32>,
    pub noise: Option<PathBuf>,
    pub output: PathBuf,
    pub each: Option<PathBuf>,
    pub npy: Option<PathBuf>,
    pub gif: Option<PathBuf>,
    pub gif_of: GifOf,
    /// Run on the GPU (Vulkan), on this device (index or name substring; None = the best one).
    pub gpu: Option<Option<String>>,
}

fn explain(m: &Model<'_>, steps: u32, e: SampleError) -> anyhow::Error {
    match e {
        SampleError::OutputChannels => anyhow!(
            "the model predicts {} channels for {}-channel images (learned variance) but the blob's variance_type \
             is {}: convert again with --scheduler-set variance_type=learned_range (or learned), or sample with \
             --sampler ddim",
            m.out_channels(),
            m.in_channels(),
            m.schedule().variance_type.name()
        ),
        SampleError::BadSteps => anyhow!(
            "--steps {steps}: must be between 1 and the {} training steps, with every timestep inside them \
             (steps_offset {})",
            m.schedule().num_train_timesteps,
            m.schedule().steps_offset
        ),
        e => anyhow!("{e}"),
    }
}

/// Images in each part of a batch of `batch` split into one part per worker thread (the last part may be
/// shorter).
pub fn images_per_part(batch: usize) -> usize {
    let batch = batch.max(1);
    batch.div_ceil(rayon::current_num_threads().clamp(1, batch))
}

/// One sub-batch: its sampler, arena and progress.
struct Part<'m, 'a> {
    sampler: Sampler<'m, 'a>,
    arena: Vec<u128>,
    state: State,
    /// First image of the part within the whole batch.
    first: usize,
    /// Images in the part.
    n: usize,
}

impl Part<'_, '_> {
    fn bytes(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.arena)
    }
}

/// Runs `sample` and writes its outputs.
pub fn run(m: &Model<'_>, a: &SampleArgs) -> Result<()> {
    let default_steps = match a.method {
        Method::Ddpm => m.schedule().num_train_timesteps,
        Method::Ddim { .. } => 50,
        Method::DpmSolver { .. } => 20,
    };
    let steps = a.steps.unwrap_or(default_steps);
    let replay = a.noise.as_deref().map(load::read_npy).transpose()?;
    let batch = match &replay {
        Some((shape, _)) if shape.len() == 5 => u32::try_from(shape[1])?,
        _ => a.num,
    };
    let (c, h, w) = (m.in_channels(), m.height(), m.width());
    let len = c * h * w;
    let spec = SampleSpec { method: a.method, steps, batch, seed: a.seed, class: a.class, first_image: 0 };
    let whole = Sampler::new(m, spec).map_err(|e| explain(m, steps, e))?;
    let k = whole.num_steps();
    if let Some((shape, _)) = &replay {
        if shape.len() != 5 || shape[2..] != [c, h, w] || !(shape[0] == k || shape[0] == k + 1) {
            bail!("noise file: shape {shape:?}, expected [K, N, {c}, {h}, {w}] with K = {k} or {} ({k} steps)", k + 1);
        }
        if whole.step_adds_noise(k - 1) && shape[0] == k {
            bail!("noise file: the last step adds noise, so K must be {} (x_T and one entry per step)", k + 1);
        }
    }
    // Noise entry `i` (0 = x_T) for images `first..first + n`.
    let noise_for = |i: usize, first: usize, n: usize| -> Option<&[f32]> {
        let (_, d) = replay.as_ref()?;
        let at = (i * batch as usize + first) * len;
        d.get(at..at + n * len)
    };

    let bar = indicatif::ProgressBar::new(k as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  t={msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let out = match &a.gpu {
        Some(device) => {
            if a.gif.is_some() {
                bail!("--gif is not supported with --backend gpu yet");
            }
            if replay.is_some() && (0..k).any(|i| whole.step_adds_noise(i)) {
                bail!("--backend gpu replays x_T only; this run adds noise at its steps, so replay it on the CPU");
            }
            let mut progress = |done: usize, _: usize| bar.set_position(done as u64);
            crate::backend::gpu_sample(m, device.as_deref(), spec, noise_for(0, 0, batch as usize), &mut progress)?
        }
        None => sample_cpu(m, a, spec, &whole, &bar, &noise_for)?,
    };
    bar.finish();
    write_outputs(a, &out, batch as usize, (c, h, w), k)
}

/// The CPU path: one sub-batch per worker, advancing in lock-step.
fn sample_cpu<'r>(
    m: &Model<'_>,
    a: &SampleArgs,
    spec: SampleSpec,
    whole: &Sampler<'_, '_>,
    bar: &indicatif::ProgressBar,
    noise_for: &(dyn Fn(usize, usize, usize) -> Option<&'r [f32]> + Sync),
) -> Result<Vec<f32>> {
    let (batch, steps, k) = (spec.batch, spec.steps, whole.num_steps());
    let (c, h, w) = (m.in_channels(), m.height(), m.width());
    let len = c * h * w;
    let per = images_per_part(batch as usize);
    let mut parts = Vec::new();
    for first in (0..batch as usize).step_by(per) {
        let n = per.min(batch as usize - first);
        let spec = SampleSpec { batch: n as u32, first_image: first as u32, ..spec };
        let sampler = Sampler::new(m, spec).map_err(|e| explain(m, steps, e))?;
        let mut part =
            Part { arena: blobfile::arena(sampler.arena_bytes()), sampler, state: State { done: 0 }, first, n };
        let x_t = noise_for(0, first, n);
        let s = part.sampler;
        part.state = s.start(part.bytes(), x_t).map_err(|e| anyhow!("{e}"))?;
        parts.push(part);
    }
    let gather = |parts: &mut [Part<'_, '_>], x0: bool| -> Vec<f32> {
        let mut all = Vec::with_capacity(batch as usize * len);
        for p in parts.iter_mut() {
            let s = p.sampler;
            all.extend_from_slice(if x0 { s.pred_original(p.bytes()) } else { s.samples(p.bytes()) });
        }
        all
    };

    let mut anim = None;
    if let Some(path) = &a.gif {
        let first = gather(&mut parts, false);
        let grid = image::Batch { data: &first, n: batch as usize, c, h, w }.grid()?;
        let mut g = image::Gif::create(path, grid.width, grid.height)?;
        g.frame(&grid, 8)?;
        anim = Some(g);
    }
    let every = k.div_ceil(60).max(1);
    for i in 0..k {
        bar.set_message(whole.timestep(i).unwrap_or(0).to_string());
        parts.par_iter_mut().try_for_each(|p| {
            let noise = noise_for(i + 1, p.first, p.n);
            let s = p.sampler;
            let mut state = p.state;
            s.step(p.bytes(), &mut state, noise).map_err(|e| anyhow!("{e}"))?;
            p.state = state;
            Ok::<(), anyhow::Error>(())
        })?;
        bar.inc(1);
        if let Some(g) = anim.as_mut() {
            if (i + 1) % every == 0 || i + 1 == k {
                let data = gather(&mut parts, a.gif_of == GifOf::X0);
                let grid = image::Batch { data: &data, n: batch as usize, c, h, w }.grid()?;
                g.frame(&grid, if i + 1 == k { 200 } else { 8 })?;
            }
        }
    }
    Ok(gather(&mut parts, false))
}

/// Writes the PNG grid, per-image PNGs, the .npy and the checksum line.
fn write_outputs(a: &SampleArgs, out: &[f32], batch: usize, (c, h, w): (usize, usize, usize), k: usize) -> Result<()> {
    let b = image::Batch { data: out, n: batch, c, h, w };
    if let Some(p) = &a.npy {
        load::write_npy(p, &[batch, c, h, w], out)?;
    }
    // The checksum firmware prints for the same run: FNV-1a 64 over the samples' f32 bits (LE).
    eprintln!("checksum {:016x}", ddpm_core::fnv1a64(bytemuck::cast_slice(out)));
    if c == 1 || c == 3 {
        image::write_png(&a.output, &b.grid()?)?;
        if let Some(dir) = &a.each {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for i in 0..batch {
                image::write_png(&dir.join(format!("{i:04}.png")), &b.image(i)?)?;
            }
        }
        eprintln!("wrote {} ({batch} images, {k} steps, seed {})", a.output.display(), a.seed);
    } else if a.npy.is_none() {
        bail!("the model makes {c}-channel images, which PNG cannot show: use --npy");
    }
    Ok(())
}
