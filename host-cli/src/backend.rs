//! Where the network runs: the CPU path of `ddpm-core`, or the Vulkan backend (`ddpm-gpu`, feature `gpu`).
//! Without the feature the GPU entry points still exist and say how to get them.

use anyhow::Result;
use ddpm_core::sampler::SampleSpec;
use ddpm_core::Model;

/// The GPU forward pass for a batch `x` of `n` samples.
#[cfg(feature = "gpu")]
pub fn gpu_forward(
    m: &Model<'_>,
    device: Option<&str>,
    x: &[f32],
    n: u32,
    t: f32,
    class: Option<u32>,
) -> Result<Vec<f32>> {
    let dev = ddpm_gpu::Device::new(device)?;
    eprintln!("note: running on {}", dev.name());
    let mut g = ddpm_gpu::GpuModel::new(&dev, m, n)?;
    Ok(g.forward(x, t, class)?)
}

/// Samples on the GPU; `x_t` replaces the seeded starting noise; `progress(done, total)` after each step.
#[cfg(feature = "gpu")]
pub fn gpu_sample(
    m: &Model<'_>,
    device: Option<&str>,
    spec: SampleSpec,
    x_t: Option<&[f32]>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f32>> {
    let dev = ddpm_gpu::Device::new(device)?;
    eprintln!("note: running on {}", dev.name());
    let mut g = ddpm_gpu::GpuModel::new(&dev, m, spec.batch)?;
    Ok(g.sample(spec, x_t, progress)?)
}

/// GPU timings: forward milliseconds per batch, and the seconds of a whole sampling run if asked.
#[cfg(feature = "gpu")]
pub fn gpu_bench(
    m: &Model<'_>,
    device: Option<&str>,
    x: &[f32],
    batch: u32,
    iters: usize,
    warmup: usize,
    sample: Option<SampleSpec>,
) -> Result<(Vec<f64>, Option<f64>)> {
    let dev = ddpm_gpu::Device::new(device)?;
    eprintln!("note: running on {}", dev.name());
    let mut g = ddpm_gpu::GpuModel::new(&dev, m, batch)?;
    let class = (m.num_classes() > 0).then_some(0);
    let mut times = Vec::new();
    for i in 0..warmup + iters.max(1) {
        let t0 = std::time::Instant::now();
        g.forward(x, 500.0, class)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let sample_s = match sample {
        Some(spec) => {
            let t0 = std::time::Instant::now();
            g.sample(spec, None, &mut |_, _| {})?;
            Some(t0.elapsed().as_secs_f64())
        }
        None => None,
    };
    Ok((times, sample_s))
}

/// GPU timings (not built in: an error saying how to build it).
#[cfg(not(feature = "gpu"))]
pub fn gpu_bench(
    _: &Model<'_>,
    _: Option<&str>,
    _: &[f32],
    _: u32,
    _: usize,
    _: usize,
    _: Option<SampleSpec>,
) -> Result<(Vec<f64>, Option<f64>)> {
    Err(not_built())
}

#[cfg(not(feature = "gpu"))]
fn not_built() -> anyhow::Error {
    anyhow::anyhow!(
        "this host-cli was built without the GPU backend: rebuild with `cargo build --release -p host-cli --features gpu` \
         (needs glslangValidator and a Vulkan driver: scripts/install-vulkan.sh)"
    )
}

/// The GPU forward pass (not built in: an error saying how to build it).
#[cfg(not(feature = "gpu"))]
pub fn gpu_forward(_: &Model<'_>, _: Option<&str>, _: &[f32], _: u32, _: f32, _: Option<u32>) -> Result<Vec<f32>> {
    Err(not_built())
}

/// GPU sampling (not built in: an error saying how to build it).
#[cfg(not(feature = "gpu"))]
pub fn gpu_sample(
    _: &Model<'_>,
    _: Option<&str>,
    _: SampleSpec,
    _: Option<&[f32]>,
    _: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f32>> {
    Err(not_built())
}
