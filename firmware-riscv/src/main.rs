//! Bare-metal proof for `ddpm-core` on a core without an FPU: sample one image on RV32IMAC (QEMU `virt`),
//! bit-identical to the host.
//!
//! - The model blob is embedded at build time (`build.rs`, `DDPM_BLOB`) in `.rodata`, the part of memory that
//!   plays flash, and read in place: [`Model::new_checked`] validates it, nothing is copied to RAM.
//! - The sampler's arena is one static buffer in `.bss` whose size is computed at compile time from the blob's
//!   memory plan ([`sampler_arena_bytes`]); there is no heap.
//! - Every `f32`/`f64` operation is software floating point (compiler-builtins' `__addsf3`, `__mulsf3`, ...),
//!   correctly rounded like the host's SSE, so the samples are the host's to the bit. The same source builds
//!   for `riscv32imafc-unknown-none-elf` (hardware f32) to measure what soft float costs.
//! - The run (sampler, steps, seed, class) is fixed at build time; the firmware prints the image as ASCII art,
//!   the same `checksum` line as `host-cli sample ... -n 1` (FNV-1a 64 over the samples' f32 bits), and the
//!   instructions each denoising step retired, then ends QEMU through semihosting with status 0 (1 on any
//!   error, trap or panic).
//!
//! Cost: `minstret` counts retired instructions and `mcycle` cycles. QEMU derives both from its instruction
//! counter under `-icount shift=0` (one instruction, one cycle, exactly), so the counts printed are executed
//! instructions and deterministic; without `-icount` QEMU backs them with the host's clock and they mean nothing.
#![no_std]
#![no_main]
#![deny(missing_docs)]
// The one exception is the trap handler's `#[export_name]` (riscv-rt's link.x calls `ExceptionHandler`).
#![deny(unsafe_code)]

use ddpm_core::sampler::{sampler_arena_bytes, SampleSpec, Sampler};
use ddpm_core::Model;
use riscv::register::{mcause, mcycle, mepc, minstret, mtval};
use semihosting::{print, println};
use static_cell::ConstStaticCell;

/// The run chosen at build time (see `build.rs`).
mod config {
    use ddpm_core::sampler::Method;
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

/// Gives its contents the blob format's alignment (16), which `include_bytes!` alone does not.
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

/// The model blob, in read-only memory.
static BLOB: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("DDPM_BLOB_PATH")));

/// Arena bytes for one image, from the blob's memory plan, at compile time.
const ARENA_BYTES: usize = sampler_arena_bytes(&BLOB.0, 1);

/// The sampler's arena: zero-initialised, so it lives in `.bss` and costs no image bytes; taken once.
static ARENA: ConstStaticCell<Aligned<[u8; ARENA_BYTES]>> = ConstStaticCell::new(Aligned([0; ARENA_BYTES]));

/// The core this build is for: the FPU-less target, or the F-extension one it is compared with (README).
const CORE: &str = if cfg!(target_feature = "f") {
    "RV32IMAFC: f32 in hardware, f64 in software"
} else {
    "RV32IMAC, no FPU: all floating point in software"
};

/// Retired instructions and cycles so far (`minstret`, `mcycle`; 64-bit reads on RV32).
#[derive(Clone, Copy)]
struct Counters {
    instret: u64,
    cycles: u64,
}

impl Counters {
    fn now() -> Self {
        Counters { instret: minstret::read64(), cycles: mcycle::read64() }
    }

    fn since(self, start: Counters) -> Counters {
        Counters { instret: self.instret - start.instret, cycles: self.cycles - start.cycles }
    }
}

/// Grey ramp of the ASCII art, dark to light.
const RAMP: &[u8] = b" .:-=+*#%@";
/// Widest image printed at full resolution; wider ones are subsampled.
const MAX_COLS: usize = 64;

/// Prints image 0 of `x` (C·H·W in [-1, 1]) as ASCII art: channels averaged, (v/2 + 0.5) clamped to [0, 1]
/// picks a ramp character, two characters per pixel so it keeps its aspect.
fn print_ascii(x: &[f32], c: usize, h: usize, w: usize) {
    let stride = w.div_ceil(MAX_COLS).max(1);
    let mut line = [0u8; 2 * MAX_COLS];
    for y in (0..h).step_by(stride) {
        let mut n = 0;
        for xx in (0..w).step_by(stride) {
            let v = (0..c).map(|ch| x[(ch * h + y) * w + xx]).sum::<f32>() / c as f32;
            let g = (v / 2.0 + 0.5).clamp(0.0, 1.0);
            let ch = RAMP[((g * (RAMP.len() - 1) as f32) + 0.5) as usize];
            line[n] = ch;
            line[n + 1] = ch;
            n += 2;
        }
        println!("|{}|", core::str::from_utf8(&line[..n]).unwrap_or("?"));
    }
}

/// Ends QEMU with a failure status after printing `msg`.
fn fail(msg: core::fmt::Arguments) -> ! {
    println!("error: {}", msg);
    semihosting::process::exit(1)
}

/// Any trap (illegal instruction, access fault, ...) ends the run with its cause instead of hanging QEMU.
// riscv-rt's `_start_trap_rust` calls the symbol `ExceptionHandler` for every exception without its own
// handler; `export_name` is what gives this function that symbol. Sound: no other item exports the name, and
// the signature is the one riscv-rt declares for it.
#[allow(unsafe_code)]
#[export_name = "ExceptionHandler"]
fn exception_handler(_frame: &riscv_rt::TrapFrame) -> ! {
    fail(format_args!(
        "trap: mcause {:#010x}, mepc {:#010x}, mtval {:#010x}",
        mcause::read().bits(),
        mepc::read(),
        mtval::read()
    ))
}

#[riscv_rt::entry]
fn main() -> ! {
    let arena: &mut [u8] = &mut ARENA.take().0;

    println!("ddpm-firmware-riscv on QEMU virt ({}, {})", CORE, env!("DDPM_TARGET"));
    let model = match Model::new_checked(&BLOB.0) {
        Ok(m) => m,
        Err(e) => fail(format_args!("blob {}: {}", config::BLOB_NAME, e)),
    };
    let (c, h, w) = (model.in_channels(), model.height(), model.width());
    println!(
        "blob      {} ({}, {} parameters): {} bytes in read-only memory at {:#010x}",
        config::BLOB_NAME,
        model.precision().name(),
        model.parameter_count(),
        BLOB.0.len(),
        BLOB.0.as_ptr() as usize
    );
    println!("model     {}x{}x{}, {} training steps", c, h, w, model.schedule().num_train_timesteps);
    let spec = SampleSpec {
        method: config::METHOD,
        steps: config::STEPS,
        batch: 1,
        seed: config::SEED,
        class: config::CLASS,
        // Image 0 of the noise stream, as `host-cli sample -n 1`.
        first_image: 0,
    };
    let s = match Sampler::new(&model, spec) {
        Ok(s) => s,
        Err(e) => fail(format_args!("{}", e)),
    };
    println!(
        "arena     {} bytes in RAM at {:#010x} (sampler_arena_bytes; the sampler needs {})",
        ARENA_BYTES,
        arena.as_ptr() as usize,
        s.arena_bytes()
    );
    print!("sampler   {}", config::SAMPLER);
    if let ddpm_core::sampler::Method::Ddim { eta } = config::METHOD {
        print!(" (eta {})", eta);
    }
    println!(", {} steps, seed {}, class {:?}", s.num_steps(), config::SEED, config::CLASS);

    #[cfg(ddpm_profile)]
    profile(&model, arena, s.timestep(0).unwrap_or(0) as f32);

    let mut state = match s.start(arena, None) {
        Ok(st) => st,
        Err(e) => fail(format_args!("{}", e)),
    };
    let k = s.num_steps();
    let (mut total, mut min, mut max, mut cycles) = (0u64, u64::MAX, 0u64, 0u64);
    while state.done < k {
        let t = s.timestep(state.done).unwrap_or(0);
        let start = Counters::now();
        if let Err(e) = s.step(arena, &mut state, None) {
            fail(format_args!("step {}: {}", state.done + 1, e));
        }
        let d = Counters::now().since(start);
        (total, min, max, cycles) = (total + d.instret, min.min(d.instret), max.max(d.instret), cycles + d.cycles);
        println!("step {}/{} t={} instret={} cycles={}", state.done, k, t, d.instret, d.cycles);
    }

    let x = s.samples(arena);
    print_ascii(x, c, h, w);
    let mut sum = 0.0f64;
    x.iter().for_each(|v| sum += f64::from(*v));
    println!("mean      {}", sum / x.len() as f64);
    // The same line as host-cli: FNV-1a 64 over the f32 samples' bytes (both ends are little-endian).
    println!("checksum {:016x}", ddpm_core::fnv1a64(bytemuck::cast_slice(x)));
    println!("steps {}", k);
    println!(
        "cost      instructions per step (minstret): mean {} min {} max {}; cycles (mcycle) mean {}",
        total / k as u64,
        min,
        max,
        cycles / k as u64
    );
    semihosting::process::exit(0)
}

/// Most op kinds the profile tells apart.
#[cfg(ddpm_profile)]
const KINDS: usize = 16;

/// One forward pass at timestep `t` on noise, counted op by op through `Model::forward_observed`, then the
/// retired instructions summed per op kind. Built only with `DDPM_PROFILE=1`. It uses the sampler's arena
/// before the run starts: `Sampler::start` sets everything the run reads.
#[cfg(ddpm_profile)]
fn profile(model: &Model, arena: &mut [u8], t: f32) {
    let (n_in, n_out) =
        (model.in_channels() * model.height() * model.width(), model.out_channels() * model.height() * model.width());
    let (fwd, rest) = arena.split_at_mut(model.arena_bytes().min(arena.len()));
    let Ok(rest) = bytemuck::try_cast_slice_mut::<u8, f32>(&mut rest[..(n_in + n_out) * 4]) else {
        fail(format_args!("profile: arena tail not f32-aligned"))
    };
    let (x, out) = rest.split_at_mut(n_in);
    ddpm_core::rng::fill_normal(x, config::SEED, 0, 0);
    let mut kinds: [(&str, u32, u64); KINDS] = [("", 0, 0); KINDS];
    let start = minstret::read64();
    let mut last = start;
    let r = model.forward_observed(fwd, x, t, config::CLASS, out, &mut |_, op| {
        let now = minstret::read64();
        let name = op.name();
        if let Some(k) = kinds.iter_mut().find(|k| k.0 == name || k.0.is_empty()) {
            *k = (name, k.1 + 1, k.2 + (now - last));
        }
        last = minstret::read64();
    });
    if let Err(e) = r {
        fail(format_args!("profile: {}", e));
    }
    let total = last - start;
    println!("profile   one forward pass at t={}: {} instructions, by op kind:", t, total);
    for (name, count, n) in kinds.iter().filter(|k| k.1 > 0) {
        println!("profile   {:<14} x{:<3} {:>11} ({}%)", name, count, n, n * 100 / total.max(1));
    }
}
