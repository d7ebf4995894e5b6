//! Compiles every `shaders/*.comp` to SPIR-V in OUT_DIR with glslangValidator (Debian/Ubuntu package
//! `glslang-tools`; `scripts/install-vulkan.sh` installs it). A missing compiler fails the build with a message
//! saying so, rather than falling back to building shaderc from source.

use std::path::Path;
use std::process::Command;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let glslang = std::env::var("GLSLANG_VALIDATOR").unwrap_or_else(|_| "glslangValidator".into());
    println!("cargo:rerun-if-env-changed=GLSLANG_VALIDATOR");
    println!("cargo:rerun-if-changed=shaders");
    let mut names: Vec<_> =
        std::fs::read_dir("shaders").expect("gpu/shaders exists").filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().is_none_or(|e| e != "comp") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("ASCII shader names");
        let spv = Path::new(&out).join(format!("{stem}.spv"));
        let result = Command::new(&glslang)
            .args(["-V", "--target-env", "vulkan1.1", "-Ishaders", "-o"])
            .arg(&spv)
            .arg(&path)
            .output();
        match result {
            Err(e) => panic!(
                "\n\nddpm-gpu: cannot run `{glslang}` ({e}).\nThe GLSL compute shaders are compiled at build time with \
                 glslangValidator. Install it with `scripts/install-vulkan.sh` (Debian/Ubuntu: `apt-get install \
                 glslang-tools`), or point GLSLANG_VALIDATOR at the binary.\n"
            ),
            Ok(o) if !o.status.success() => panic!(
                "\n\nddpm-gpu: glslangValidator failed on {}:\n{}{}\n",
                path.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Ok(_) => {}
        }
    }
}
