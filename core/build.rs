//! Sets `cfg(ddpm_dsp)` when the target is an Arm core with the DSP extension (`smlad`, `sxtb16`), which selects
//! the packed int8 convolution kernel (`src/ops/int8/conv2d_dsp.rs`).
//!
//! `cfg(target_feature = "dsp")` cannot be used directly: Arm target features are unstable, so stable rustc
//! leaves them out of `cfg` (cargo's `CARGO_CFG_TARGET_FEATURE` lacks them too). The thumbv7em targets
//! (Cortex-M4/M7) always have the extension; other Arm targets get it when a nightly compiler reports the
//! feature. `-C target-feature=-dsp` turns it off.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ddpm_dsp)");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let features = env("CARGO_CFG_TARGET_FEATURE");
    let has_feature = features.split(',').any(|f| f == "dsp");
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let turned_off = flags.split('\x1f').any(|f| f.contains("target-feature") && f.contains("-dsp"));
    if env("CARGO_CFG_TARGET_ARCH") == "arm" && (has_feature || env("TARGET").starts_with("thumbv7em")) && !turned_off {
        println!("cargo::rustc-cfg=ddpm_dsp");
    }
}
