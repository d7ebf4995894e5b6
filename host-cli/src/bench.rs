//! `host-cli bench`: forward latency and throughput, and optionally images per second for a whole DDPM run,
//! on the CPU or the GPU. A harness that prints figures (bench/cpu.py and bench/gpu.py run it beside PyTorch).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use ddpm_core::sampler::{Method, SampleSpec, Sampler};
use ddpm_core::Model;
use rayon::prelude::*;

use crate::blobfile;

/// A deterministic input batch in [-1, 1).
pub fn input(m: &Model<'_>, batch: u32) -> Vec<f32> {
    let n = m.in_channels() * m.height() * m.width() * batch as usize;
    (0..n).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect()
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// Runs the benchmark and prints one line of figures (and the per-op table with `per_op` on the CPU).
pub fn run(
    m: &Model<'_>,
    gpu: Option<Option<&str>>,
    batch: u32,
    iters: usize,
    warmup: usize,
    per_op: bool,
    sample_steps: Option<u32>,
) -> Result<()> {
    let x = input(m, batch);
    let class = (m.num_classes() > 0).then_some(0);
    let spec = |steps| SampleSpec { method: Method::Ddpm, steps, batch, seed: 0, class, first_image: 0 };
    let (times, sample_s, threads) = match gpu {
        Some(device) => {
            let (t, s) = crate::backend::gpu_bench(m, device, &x, batch, iters, warmup, sample_steps.map(spec))?;
            (t, s, 0)
        }
        None => {
            let (t, s) = cpu_bench(m, &x, batch, iters, warmup, per_op, sample_steps.map(spec))?;
            (t, s, rayon::current_num_threads())
        }
    };
    let (med, min) = median(times);
    let backend = if gpu.is_some() { "gpu".to_string() } else { format!("cpu threads {threads}") };
    print!(
        "forward_ms median {med:.3} min {min:.3} batch {batch} {backend} gflops {:.2} images_per_s {:.1}",
        m.flops() as f64 * f64::from(batch) / med / 1e6,
        f64::from(batch) / med * 1e3
    );
    if let (Some(s), Some(k)) = (sample_s, sample_steps) {
        print!(" sample_steps {k} sample_s {s:.3} sample_images_per_s {:.3}", f64::from(batch) / s);
    }
    println!();
    Ok(())
}

type Timings = (Vec<f64>, Option<f64>);

fn cpu_bench(
    m: &Model<'_>,
    x: &[f32],
    batch: u32,
    iters: usize,
    warmup: usize,
    per_op: bool,
    sample: Option<SampleSpec>,
) -> Result<Timings> {
    let per_in = m.in_channels() * m.height() * m.width();
    let out_len = m.out_channels() * m.height() * m.width();
    let class = (m.num_classes() > 0).then_some(0);
    // A batch is split into one run of consecutive images per worker thread, each with its own arena, as
    // `host-cli sample` splits it; `--per-op` times one image after another on one arena.
    let per = if per_op { batch.max(1) as usize } else { crate::sample::images_per_part(batch as usize) };
    let mut parts: Vec<_> =
        x.chunks(per * per_in).map(|xs| (blobfile::arena(m.arena_bytes()), vec![0f32; out_len], xs)).collect();
    let mut times = Vec::new();
    // Per op kind: milliseconds and floating-point operations, summed over the timed forwards.
    let mut per_kind: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for i in 0..warmup + iters.max(1) {
        let timed = i >= warmup;
        let t0 = Instant::now();
        if let [(arena, y, xs)] = &mut parts[..] {
            for xi in xs.chunks_exact(per_in) {
                let mut last = Instant::now();
                let mut after = |_: usize, op: &ddpm_core::program::Op| {
                    if per_op && timed {
                        let now = Instant::now();
                        let e = per_kind.entry(op.name()).or_default();
                        e.0 += (now - last).as_secs_f64() * 1e3;
                        e.1 += m.op_flops(op) as f64;
                        last = now;
                    }
                };
                m.forward_observed(bytemuck::cast_slice_mut(arena), xi, 500.0, class, y, &mut after)?;
            }
        } else {
            parts.par_iter_mut().try_for_each(|(arena, y, xs)| {
                xs.chunks_exact(per_in)
                    .try_for_each(|xi| m.forward(bytemuck::cast_slice_mut(arena), xi, 500.0, class, y))
            })?;
        }
        if timed {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut kinds: Vec<_> = per_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let total_ms: f64 = kinds.iter().map(|k| k.1 .0).sum();
    let forwards = iters.max(1) as f64 * f64::from(batch);
    for (name, (ms, flops)) in kinds {
        let share = 100.0 * ms / total_ms.max(f64::MIN_POSITIVE);
        let gflops = if flops > 0.0 && ms > 0.0 { format!("{:8.2} GFLOP/s", flops / ms / 1e6) } else { String::new() };
        println!("  {name:<14} {:9.3} ms per forward {share:5.1} % {gflops}", ms / forwards);
    }
    let sample_s = match sample {
        Some(spec) => {
            let s = Sampler::new(m, spec).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut a = blobfile::arena(s.arena_bytes());
            let a: &mut [u8] = bytemuck::cast_slice_mut(&mut a);
            let t0 = Instant::now();
            let mut st = s.start(a, None).map_err(|e| anyhow::anyhow!("{e}"))?;
            while st.done < s.num_steps() {
                s.step(a, &mut st, None).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Some(t0.elapsed().as_secs_f64())
        }
        None => None,
    };
    Ok((times, sample_s))
}
