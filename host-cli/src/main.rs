//! `host-cli`: convert PyTorch / diffusers DDPM checkpoints into ddpm-core blobs, inspect and run them.
//!
//! Every failure prints one line, `error: ...`, and exits with status 1 (2 for command-line usage errors).
#![forbid(unsafe_code)]

use ddpm_convert::load;
use host_cli::{blobfile, sample};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ddpm_core::sampler::{FinalSigmas, Method};
use ddpm_core::{Model, Precision};

use host_cli::blobfile::AlignedBlob;

#[derive(Parser)]
#[command(name = "host-cli", version, about = "Run PyTorch-trained DDPMs without PyTorch")]
struct Cli {
    /// Worker threads for the forward pass (default: all cores). Results do not depend on it.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    /// f32 weights and activations: the reference.
    F32,
    /// f16 weights, f32 activations and accumulation.
    F16,
    /// Fixed point: i8 weights, i8/i16 activations, i32 accumulation, calibrated along sampling trajectories.
    Int8,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// ddpm-core on the CPU (all cores with rayon).
    Cpu,
    /// The Vulkan backend (needs host-cli built with `--features gpu`).
    Gpu,
}

/// Which images and which noise: shared by `sample` and `noise`, so that `noise` writes exactly what the same
/// `sample` arguments draw.
#[derive(clap::Args)]
struct RunOpts {
    /// Number of images.
    #[arg(short = 'n', long = "num", default_value_t = 16)]
    num: u32,
    /// Seed of the noise stream: the same seed gives the same images on every machine and thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inference steps (default: the training steps for DDPM, 50 for DDIM, 20 for DPM-Solver++).
    #[arg(long)]
    steps: Option<u32>,
}

/// Where the network runs: shared by `sample`, `forward` and `bench`.
#[derive(clap::Args)]
struct BackendOpts {
    /// Where the network runs.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendArg,
    /// GPU device: an index or a name substring (default: the first discrete GPU, else any).
    #[arg(long)]
    device: Option<String>,
    /// CPU: run the portable kernels, which give the same bits on every machine (the firmware's). Default: the
    /// fastest kernels of this CPU (AVX2+FMA or AVX-512 where it has them; within rounding of the portable ones).
    #[arg(long)]
    exact: bool,
}

impl BackendOpts {
    /// `Some(device selector)` for the GPU, `None` for the CPU.
    fn gpu(&self) -> Option<Option<&str>> {
        (self.backend == BackendArg::Gpu).then_some(self.device.as_deref())
    }

    /// The CPU kernels asked for.
    fn kernels(&self) -> ddpm_core::Kernels {
        if self.exact {
            ddpm_core::Kernels::Exact
        } else {
            ddpm_core::Kernels::Fast
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum SamplerArg {
    /// DDPM ancestral sampling (DDPMScheduler), respaced to --steps.
    Ddpm,
    /// DDIM (DDIMScheduler) with --eta.
    Ddim,
    /// DPM-Solver++ multistep (DPMSolverMultistepScheduler, algorithm_type dpmsolver++): deterministic; on the
    /// shipped MNIST model 10 steps match deterministic DDIM 50.
    DpmSolver,
}

#[derive(Clone, Copy, ValueEnum)]
enum FinalSigmasArg {
    /// The last step lands on sigma = 0 (the clean sample).
    Zero,
    /// The last step lands on the sigma of training timestep 0.
    SigmaMin,
}

/// DPM-Solver++'s options (DPMSolverMultistepScheduler's, which the blob does not store); diffusers' defaults.
#[derive(clap::Args)]
struct DpmOpts {
    /// DPM-Solver++: solver_order (1 = DDIM-like first order, 2 = DPM-Solver++ 2M).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    solver_order: u8,
    /// DPM-Solver++: lower_order_final (first order at the last step of runs under 15 steps).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    lower_order_final: bool,
    /// DPM-Solver++: final_sigmas_type.
    #[arg(long, value_enum, default_value = "zero")]
    final_sigmas: FinalSigmasArg,
}

/// The sampling method of a `--sampler` choice.
fn method(sampler: SamplerArg, eta: f32, dpm: &DpmOpts) -> Method {
    match sampler {
        SamplerArg::Ddpm => Method::Ddpm,
        SamplerArg::Ddim => Method::Ddim { eta },
        SamplerArg::DpmSolver => Method::DpmSolver {
            order: dpm.solver_order,
            lower_order_final: dpm.lower_order_final,
            final_sigmas: match dpm.final_sigmas {
                FinalSigmasArg::Zero => FinalSigmas::Zero,
                FinalSigmasArg::SigmaMin => FinalSigmas::SigmaMin,
            },
        },
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum GifOfArg {
    /// The noisy samples x_t.
    Xt,
    /// The predicted clean images x̂₀.
    X0,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate images: DDPM ancestral sampling, DDIM or DPM-Solver++, with a progress bar on stderr.
    Sample {
        /// The model blob (default: the built-in MNIST model, see weights/mnist/README.md).
        model: Option<PathBuf>,
        #[command(flatten)]
        run: RunOpts,
        /// Sampling algorithm.
        #[arg(long, value_enum, default_value = "ddpm")]
        sampler: SamplerArg,
        /// DDIM's eta (0 = deterministic).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        eta: f32,
        #[command(flatten)]
        dpm: DpmOpts,
        /// Class label for class-conditional models.
        #[arg(long)]
        class: Option<u32>,
        /// Replay noise: float32 .npy [K, N, C, H, W]; [0] is x_T, [i] the noise the i-th step adds (a step that
        /// adds none ignores its entry; K may omit the last step's entry when that step adds none).
        #[arg(long)]
        noise: Option<PathBuf>,
        /// PNG grid of the images.
        #[arg(short, long, default_value = "samples.png")]
        output: PathBuf,
        /// Also write each image as DIR/NNNN.png.
        #[arg(long, value_name = "DIR")]
        each: Option<PathBuf>,
        /// Final samples as float32 .npy [N, C, H, W] in model space (before conversion to pixels).
        #[arg(long)]
        npy: Option<PathBuf>,
        /// Animated GIF of the denoising trajectory.
        #[arg(long)]
        gif: Option<PathBuf>,
        /// What the GIF shows.
        #[arg(long, value_enum, default_value = "x0")]
        gif_of: GifOfArg,
        #[command(flatten)]
        on: BackendOpts,
    },
    /// Convert a checkpoint (torch.save file, .safetensors, or diffusers folder) into a model blob.
    Convert {
        /// A .pt/.pth/.bin/.ckpt torch.save file, a .safetensors file, or a diffusers model/pipeline folder.
        input: PathBuf,
        /// Where to write the blob.
        #[arg(short, long)]
        output: PathBuf,
        /// Weight precision of the blob.
        #[arg(long, value_enum, default_value = "f32")]
        precision: PrecisionArg,
        /// Key of the state dict inside a torch.save checkpoint dict (e.g. ema, model, state_dict; dotted
        /// paths descend). Default: the top level if it is a state dict, else ema, ema_model, state_dict,
        /// model, ... in that order.
        #[arg(long)]
        key: Option<String>,
        /// The UNet2DModel config.json (default: the one in a diffusers folder, else inferred from the tensors).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The scheduler config (default: scheduler/scheduler_config.json beside a diffusers folder).
        #[arg(long)]
        scheduler: Option<PathBuf>,
        /// Override or supply a config option, KEY=VALUE with a JSON value (e.g. sample_size=28). Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Override or supply a scheduler option (diffusers DDPMScheduler/DDIMScheduler names), KEY=VALUE with
        /// a JSON value (e.g. variance_type=learned_range). Repeatable.
        #[arg(long = "scheduler-set", value_name = "KEY=VALUE")]
        scheduler_sets: Vec<String>,
        /// int8: sampling trajectories the f32 model runs to calibrate activation ranges.
        #[arg(long, default_value_t = ddpm_convert::Calibration::default().trajectories)]
        calibration_trajectories: u32,
        /// int8: DDPM steps of each calibration trajectory (respaced over all training timesteps).
        #[arg(long, default_value_t = ddpm_convert::Calibration::default().steps)]
        calibration_steps: u32,
    },
    /// Write the noise `sample --seed S` draws, as float32 .npy [K+1, N, C, H, W] ([0] = x_T, [i] = the noise of
    /// step i), to replay our run in PyTorch (or back through `sample --noise`). Give the same -n, --seed and
    /// --steps as the sample run (without --steps: the training steps).
    Noise {
        /// The model blob (for the sample shape and the schedule).
        model: PathBuf,
        #[command(flatten)]
        run: RunOpts,
        /// Where to write the array.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print a blob's family, config, precision, sizes, memory plan, FLOPs and schedule.
    Inspect {
        /// The model blob (default: the built-in MNIST model).
        model: Option<PathBuf>,
    },
    /// Run the network once on a batch: OUT = model(X, T, class), raw output as float32 .npy.
    Forward {
        /// The model blob.
        model: PathBuf,
        /// Input samples, float32 .npy of shape [N, C, H, W].
        #[arg(long)]
        input: PathBuf,
        /// The timestep, the same for every sample.
        #[arg(long)]
        timestep: f32,
        /// Class label for class-conditional models, the same for every sample.
        #[arg(long)]
        class: Option<u32>,
        /// Where to write the output, float32 .npy of shape [N, out_channels, H, W].
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        on: BackendOpts,
    },
    /// Benchmark the forward pass at batch 1 on random input and print milliseconds per forward.
    Bench {
        /// The model blob.
        model: PathBuf,
        /// Timed forward passes.
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Untimed warm-up passes.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Also print the time spent in each kind of op (CPU).
        #[arg(long)]
        per_op: bool,
        #[command(flatten)]
        on: BackendOpts,
        /// Images per forward pass (GPU: one dispatch per op for the whole batch; CPU: one run of consecutive images
        /// per worker thread, as `sample` splits a batch; with `--per-op`, one after another).
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// Also time a whole DDPM run of this many steps on the batch and print images per second.
        #[arg(long)]
        sample_steps: Option<u32>,
    },
    /// Measure how far a lower-precision blob (f16, int8) is from a reference blob (f32) of the same model: the
    /// forward error (relative RMS, max, cosine, bias) at each step of reference DDPM trajectories, and the PSNR
    /// of OTHER's samples against REF's.
    Compare {
        /// The reference blob (f32).
        #[arg(value_name = "REF")]
        reference: PathBuf,
        /// The blob measured against it.
        #[arg(value_name = "OTHER")]
        other: PathBuf,
        #[command(flatten)]
        run: RunOpts,
        /// Sampling algorithm of the sample comparison.
        #[arg(long, value_enum, default_value = "ddim")]
        sampler: SamplerArg,
        /// DDIM's eta (0 = deterministic).
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        eta: f32,
        #[command(flatten)]
        dpm: DpmOpts,
        /// Class label for class-conditional models.
        #[arg(long)]
        class: Option<u32>,
        /// Reference DDPM trajectories along which the forward error is measured.
        #[arg(long, default_value_t = 4)]
        trajectories: u32,
        /// Steps of those trajectories (respaced DDPM).
        #[arg(long, default_value_t = 20)]
        trajectory_steps: u32,
        /// Also write the figures as JSON (a non-finite number as the string "inf").
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Output piped into a program that stops reading (`| head`) ends this one quietly, as for other command-line
    // tools, instead of a panic on the failed write.
    sigpipe::reset();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        pool = pool.num_threads(n);
    }
    // The command runs on one of the pool's threads, so each op's parallel loop starts there instead of being
    // handed to the pool from outside and waited for.
    pool.build().context("cannot start the thread pool")?.install(|| run_command(cli))
}

fn run_command(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert {
            input,
            output,
            precision,
            key,
            config,
            scheduler,
            sets,
            scheduler_sets,
            calibration_trajectories,
            calibration_steps,
        } => {
            let precision = match precision {
                PrecisionArg::F32 => Precision::F32,
                PrecisionArg::F16 => Precision::F16,
                PrecisionArg::Int8 => Precision::Int8,
            };
            let calibration = ddpm_convert::Calibration {
                trajectories: calibration_trajectories,
                steps: calibration_steps,
                ..Default::default()
            };
            let args = ddpm_convert::ConvertArgs {
                input,
                precision,
                key,
                config,
                scheduler,
                sets,
                scheduler_sets,
                calibration,
            };
            let converted = ddpm_convert::convert_path(&args)?;
            for note in &converted.notes {
                eprintln!("note: {note}");
            }
            blobfile::write_atomic(&output, &converted.blob)?;
            let blob = AlignedBlob::from_bytes(&converted.blob);
            let m = blob.model()?;
            eprintln!(
                "wrote {} ({} bytes, {} parameters, {}, arena {} bytes)",
                output.display(),
                m.bytes().len(),
                m.parameter_count(),
                m.precision().name(),
                m.arena_bytes()
            );
            Ok(())
        }
        Cmd::Sample {
            model,
            run: RunOpts { num, seed, steps },
            sampler,
            eta,
            dpm,
            class,
            noise,
            output,
            each,
            npy,
            gif,
            gif_of,
            on,
        } => {
            let blob = blobfile::read_or_default(model.as_deref())?;
            let method = method(sampler, eta, &dpm);
            let gif_of = match gif_of {
                GifOfArg::Xt => sample::GifOf::Xt,
                GifOfArg::X0 => sample::GifOf::X0,
            };
            let gpu = on.gpu().map(|d| d.map(str::to_string));
            let kernels = on.kernels();
            let args =
                sample::SampleArgs { method, num, seed, steps, class, noise, output, each, npy, gif, gif_of, gpu };
            let m = blob.model()?.with_kernels(kernels);
            // Weights repacked once for the host kernels instead of per forward.
            let packs = ddpm_core::Prepacked::new(&m);
            sample::run(&m.with_prepacked(&packs), &args)
        }
        Cmd::Noise { model, run: RunOpts { num, seed, steps }, output } => {
            let blob = blobfile::read(&model)?;
            let m = blob.model()?;
            let k = steps.unwrap_or(m.schedule().num_train_timesteps);
            let steps = ddpm_core::sampler::schedule::Timesteps::new(&m.schedule(), k)
                .with_context(|| format!("--steps {k}: invalid for this schedule"))?
                .len();
            let len = m.in_channels() * m.height() * m.width();
            let mut data = vec![0f32; (steps + 1) * num as usize * len];
            for (i, chunk) in data.chunks_mut(len).enumerate() {
                let (draw, image) = (i / num.max(1) as usize, i % num.max(1) as usize);
                ddpm_core::rng::fill_normal(chunk, seed, image as u32, draw as u32);
            }
            Ok(load::write_npy(&output, &[steps + 1, num as usize, m.in_channels(), m.height(), m.width()], &data)?)
        }
        Cmd::Inspect { model } => inspect(&blobfile::read_or_default(model.as_deref())?.model()?),
        Cmd::Forward { model, input, timestep, class, output, on } => {
            let blob = blobfile::read(&model)?;
            let m = blob.model()?.with_kernels(on.kernels());
            let packs = ddpm_core::Prepacked::new(&m);
            let m = m.with_prepacked(&packs);
            let (shape, data) = load::read_npy(&input)?;
            let expect = [m.in_channels(), m.height(), m.width()];
            if shape.len() != 4 || shape[1..] != expect {
                bail!(
                    "input {}: shape {shape:?}, model expects [N, {}, {}, {}]",
                    input.display(),
                    expect[0],
                    expect[1],
                    expect[2]
                );
            }
            let n = shape[0];
            let (per_in, per_out) =
                (m.in_channels() * m.height() * m.width(), m.out_channels() * m.height() * m.width());
            let out = if let Some(device) = on.gpu() {
                let n = u32::try_from(n).context("batch too large")?;
                host_cli::backend::gpu_forward(&m, device, &data, n, timestep, class)?
            } else {
                let mut arena = blobfile::arena(m.arena_bytes());
                let mut out = vec![0f32; n * per_out];
                for (x, y) in data.chunks_exact(per_in).zip(out.chunks_exact_mut(per_out)) {
                    m.forward(bytemuck::cast_slice_mut(&mut arena), x, timestep, class, y)?;
                }
                out
            };
            Ok(load::write_npy(&output, &[n, m.out_channels(), m.height(), m.width()], &out)?)
        }
        Cmd::Bench { model, iters, warmup, per_op, on, batch, sample_steps } => {
            let blob = blobfile::read(&model)?;
            let m = blob.model()?.with_kernels(on.kernels());
            let packs = ddpm_core::Prepacked::new(&m);
            let m = m.with_prepacked(&packs);
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            host_cli::bench::run(&m, on.gpu(), batch, iters, warmup, per_op, sample_steps)
        }
        Cmd::Compare {
            reference,
            other,
            run: RunOpts { num, seed, steps },
            sampler,
            eta,
            dpm,
            class,
            trajectories,
            trajectory_steps,
            json,
        } => {
            let method = method(sampler, eta, &dpm);
            let args = host_cli::compare::CompareArgs {
                reference,
                other,
                trajectories,
                trajectory_steps,
                method,
                num,
                seed,
                steps,
                class,
                json,
            };
            host_cli::compare::run(&args)
        }
    }
}

fn inspect(m: &Model<'_>) -> Result<()> {
    let s = m.schedule();
    let class = serde_json::from_str::<serde_json::Value>(m.config_json())
        .ok()
        .and_then(|c| c.get("_class_name").and_then(|v| v.as_str()).map(str::to_string));
    let family = match class.as_deref() {
        Some("OnnxGraph") => "ONNX graph",
        Some("lucidrains.Unet") => "lucidrains denoising-diffusion-pytorch Unet",
        _ => "diffusers UNet2DModel",
    };
    println!("family        {family}");
    println!("precision     {}", m.precision().name());
    println!("sample        {} x {} x {} -> {} channels", m.in_channels(), m.height(), m.width(), m.out_channels());
    println!(
        "classes       {}",
        if m.num_classes() == 0 { "unconditional".to_string() } else { m.num_classes().to_string() }
    );
    println!("parameters    {}", m.parameter_count());
    println!("blob bytes    {} (flash)", m.bytes().len());
    println!("arena bytes   {} (RAM for one forward pass, any batch size, 16-byte aligned)", m.arena_bytes());
    println!(
        "sample arena  {} at batch 1, + {} per extra image (forward arena, schedule, x_t, x0, model output)",
        ddpm_core::sampler::sampler_arena_bytes(m.bytes(), 1),
        ddpm_core::sampler::sampler_arena_bytes(m.bytes(), 2) - ddpm_core::sampler::sampler_arena_bytes(m.bytes(), 1)
    );
    println!("flops         {:.3} G per forward (batch 1)", m.flops() as f64 / 1e9);
    println!("program       {} ops, {} activation values, {} tensors", m.num_ops(), m.num_values(), m.num_tensors());
    if m.precision() == Precision::Int8 {
        // How the activations are stored: most i8, a few i16 (network input and output), f32 at the edges.
        let values: Vec<_> = (0..m.num_values() as u32).filter_map(|i| m.value(i)).collect();
        let count = |dt: ddpm_core::DType| values.iter().filter(|v| v.dtype == dt).count();
        let zero_points = values.iter().filter(|v| v.zero != 0).count();
        println!(
            "activations   {} i8 ({} with a zero point: post-SiLU), {} i16, {} f32, {} i32 scratch",
            count(ddpm_core::DType::I8),
            zero_points,
            count(ddpm_core::DType::I16),
            count(ddpm_core::DType::F32),
            count(ddpm_core::DType::I32)
        );
        // The f32 parts of the program: the ops with no integer form run between these conversions.
        let ops: Vec<_> = (0..m.num_ops()).filter_map(|i| m.op(i)).collect();
        let quantize = ops.iter().filter(|op| matches!(op, ddpm_core::program::Op::Quantize { .. })).count();
        let dequantize = ops.iter().filter(|op| matches!(op, ddpm_core::program::Op::Dequantize { .. })).count();
        println!("conversions   {quantize} Quantize, {dequantize} Dequantize (f32 ops run between them)");
    }
    // The range of the betas: beta_start..beta_end, or that of the stored table.
    let (lo, hi) = match m.trained_betas() {
        Some(t) if s.beta_schedule == ddpm_core::format::BetaSchedule::TrainedBetas => (0..t.len())
            .map(|i| t.get_f32(i))
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), b| (lo.min(b), hi.max(b))),
        _ => (s.beta_start, s.beta_end),
    };
    println!(
        "schedule      {} train steps, {} betas {}..{}, prediction {}, variance {}, clip_sample {} (range {}), \
         thresholding {}, spacing {} (offset {})",
        s.num_train_timesteps,
        s.beta_schedule.name(),
        lo,
        hi,
        s.prediction_type.name(),
        s.variance_type.name(),
        s.clip_sample,
        s.clip_sample_range,
        s.thresholding,
        s.timestep_spacing.name(),
        s.steps_offset
    );
    println!("config        {}", m.config_json());
    Ok(())
}
