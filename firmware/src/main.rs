//! Bare-metal proof for `ddpm-core`: sample one image on a Cortex-M4F (QEMU `mps2-an386`), bit-identical to
//! the host.
//!
//! - The model blob is embedded at build time (`build.rs`, `DDPM_BLOB`) and read in place from flash:
//!   [`Model::new_checked`] validates it, nothing is copied to RAM.
//! - The sampler's arena is one static buffer in RAM whose size is computed at compile time from the blob's
//!   memory plan ([`sampler_arena_bytes`]); there is no heap.
//! - The run (sampler, steps, seed, class) is fixed at build time; the firmware prints the image as ASCII art,
//!   the same `checksum` line as `host-cli sample ... -n 1` (FNV-1a 64 over the samples' f32 bits), and the
//!   emulated cost of each step, then ends QEMU through semihosting with status 0 (1 on any error or panic).
//!
//! Cost: SysTick runs on the core clock (25 MHz on this board, 40 ns a tick) and counts QEMU's virtual time.
//! Under `-icount shift=0` QEMU advances virtual time by exactly 1 ns per guest instruction, so the virtual
//! nanoseconds printed here are instruction counts. Without `-icount` they follow the host's clock and mean
//! nothing.
#![no_std]
#![no_main]
#![deny(missing_docs)]
// cortex-m-rt's `#[entry]` and `#[exception]` expand to `#[export_name]` items and an `unsafe` block that hands
// out the entry's `static mut` as `&'static mut` (sound: the entry runs once); they carry `allow(unsafe_code)`.
// This crate writes no `unsafe` of its own.
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{Peripherals, SCB, SYST};
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprint, hprintln};
use ddpm_core::sampler::{sampler_arena_bytes, Method, SampleSpec, Sampler};
use ddpm_core::Model;
use panic_semihosting as _;

/// The run chosen at build time (see `build.rs`).
mod config {
    use ddpm_core::sampler::Method;
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

/// Gives its contents the blob format's alignment (16), which `include_bytes!` alone does not.
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

/// The model blob, in flash.
static BLOB: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("DDPM_BLOB_PATH")));

/// Arena bytes for one image, from the blob's memory plan, at compile time.
const ARENA_BYTES: usize = sampler_arena_bytes(&BLOB.0, 1);

/// The core clock of the MPS2 AN386 image (SYSCLK), which drives SysTick.
const SYSCLK_HZ: u64 = 25_000_000;
/// Virtual nanoseconds per SysTick tick.
const NS_PER_TICK: u64 = 1_000_000_000 / SYSCLK_HZ;
/// SysTick reload: the full 24-bit range.
const RELOAD: u32 = (1 << 24) - 1;

/// SysTick wraps so far (incremented by the exception handler).
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Virtual nanoseconds since SysTick started. Retries while a wrap is pending but not yet counted, so the
/// result never goes backwards.
fn now_ns() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if !SCB::is_pendst_pending() && WRAPS.load(Ordering::Relaxed) == w {
            let ticks = u64::from(w) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - current);
            return ticks * NS_PER_TICK;
        }
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
        hprintln!("|{}|", core::str::from_utf8(&line[..n]).unwrap_or("?"));
    }
}

/// Ends QEMU with a failure status after printing `msg`.
fn fail(msg: core::fmt::Arguments) -> ! {
    hprintln!("error: {}", msg);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[entry]
fn main() -> ! {
    // `static mut` in the entry becomes a `&'static mut` (cortex-m-rt): the arena, zero-initialised in .bss.
    static mut ARENA: Aligned<[u8; ARENA_BYTES]> = Aligned([0; ARENA_BYTES]);
    let arena: &mut [u8] = &mut ARENA.0;

    let Some(mut p) = Peripherals::take() else { fail(format_args!("peripherals already taken")) };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(RELOAD);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
    // `clear_current` leaves the counter at 0 until its first tick reloads it; start timing after that.
    while SYST::get_current() == 0 {}

    hprintln!("ddpm-firmware on mps2-an386 (Cortex-M4F, thumbv7em-none-eabihf)");
    let model = match Model::new_checked(&BLOB.0) {
        Ok(m) => m,
        Err(e) => fail(format_args!("blob {}: {}", config::BLOB_NAME, e)),
    };
    let (c, h, w) = (model.in_channels(), model.height(), model.width());
    hprintln!(
        "blob      {} ({}, {} parameters): {} bytes in flash at {:#010x}",
        config::BLOB_NAME,
        model.precision().name(),
        model.parameter_count(),
        BLOB.0.len(),
        BLOB.0.as_ptr() as usize
    );
    hprintln!("model     {}x{}x{}, {} training steps", c, h, w, model.schedule().num_train_timesteps);
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
    hprintln!(
        "arena     {} bytes in RAM at {:#010x} (sampler_arena_bytes; the sampler needs {})",
        ARENA_BYTES,
        arena.as_ptr() as usize,
        s.arena_bytes()
    );
    match config::METHOD {
        Method::Ddim { eta } => hprint!("sampler   ddim (eta {})", eta),
        Method::Ddpm => hprint!("sampler   ddpm"),
        Method::DpmSolver { order, lower_order_final, final_sigmas } => hprint!(
            "sampler   dpm-solver (order {}, lower_order_final {}, final sigma {})",
            order,
            lower_order_final,
            final_sigmas.name()
        ),
    }
    hprintln!(", {} steps, seed {}, class {:?}", s.num_steps(), config::SEED, config::CLASS);

    #[cfg(ddpm_profile)]
    profile(&model, arena, s.timestep(0).unwrap_or(0) as f32);

    let mut state = match s.start(arena, None) {
        Ok(st) => st,
        Err(e) => fail(format_args!("{}", e)),
    };
    let k = s.num_steps();
    let (mut total, mut min, mut max) = (0u64, u64::MAX, 0u64);
    while state.done < k {
        let t = s.timestep(state.done).unwrap_or(0);
        let t0 = now_ns();
        if let Err(e) = s.step(arena, &mut state, None) {
            fail(format_args!("step {}: {}", state.done + 1, e));
        }
        let dt = now_ns() - t0;
        (total, min, max) = (total + dt, min.min(dt), max.max(dt));
        hprintln!("step {}/{} t={} vns={}", state.done, k, t, dt);
    }

    // The FPU's mode decides bit-identity with the host: flush-to-zero and default-NaN off, round to nearest
    // (the reset values; cortex-m-rt only grants FPU access). The sticky flags are informational: LLVM treats them
    // as unobservable and may speculate operations that set them (README).
    let f = cortex_m::register::fpscr::read();
    hprintln!(
        "fpscr     {:#010x}: FZ {} DN {} round-to-nearest {}; sticky IDC {} UFC {} OFC {} DZC {} IOC {}",
        f.bits(),
        u8::from(f.fz()),
        u8::from(f.dn()),
        u8::from(f.rmode().is_nearest()),
        u8::from(f.idc()),
        u8::from(f.ufc()),
        u8::from(f.ofc()),
        u8::from(f.dzc()),
        u8::from(f.ioc())
    );
    let x = s.samples(arena);
    print_ascii(x, c, h, w);
    let mut sum = 0.0f64;
    x.iter().for_each(|v| sum += f64::from(*v));
    hprintln!("mean      {}", sum / x.len() as f64);
    // The same line as host-cli: FNV-1a 64 over the f32 samples' bytes (both ends are little-endian).
    hprintln!("checksum {:016x}", ddpm_core::fnv1a64(bytemuck::cast_slice(x)));
    hprintln!("steps {}", k);
    hprintln!(
        "cost      virtual ns per step (= instructions under -icount shift=0): mean {} min {} max {}",
        total / k as u64,
        min,
        max
    );
    debug::exit(debug::EXIT_SUCCESS);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Most op kinds the profile tells apart.
#[cfg(ddpm_profile)]
const KINDS: usize = 16;

/// One forward pass at timestep `t` on noise, timed op by op through `Model::forward_observed`, then the virtual
/// ns (instructions under `-icount shift=0`) summed per op kind. Built only with `DDPM_PROFILE=1`. It uses the
/// sampler's arena before the run starts: `Sampler::start` sets everything the run reads.
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
    let start = now_ns();
    let mut last = start;
    let r = model.forward_observed(fwd, x, t, config::CLASS, out, &mut |_, op| {
        let now = now_ns();
        let name = op.name();
        if let Some(k) = kinds.iter_mut().find(|k| k.0 == name || k.0.is_empty()) {
            *k = (name, k.1 + 1, k.2 + (now - last));
        }
        last = now_ns();
    });
    if let Err(e) = r {
        fail(format_args!("profile: {}", e));
    }
    hprintln!("profile   one forward pass at t={}: {} virtual ns (instructions), by op kind:", t, last - start);
    for (name, count, ns) in kinds.iter().filter(|k| k.1 > 0) {
        hprintln!("profile   {:<14} x{:<3} {:>11} ({}%)", name, count, ns, ns * 100 / (last - start).max(1));
    }
}
