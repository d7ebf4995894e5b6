#!/usr/bin/env bash
# The project's test command (README, CI): installs what it needs, builds once, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The bare-metal target proves ddpm-core is no_std and heap-free; the firmware runs on it under QEMU.
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    rustup target add thumbv7em-none-eabihf
fi
# The Vulkan backend builds its shaders with glslangValidator and runs its tests on Mesa's lavapipe.
bash scripts/install-vulkan.sh

echo "== unit, integration and parity tests (workspace; GPU tests on lavapipe must run, not skip)"
DDPM_REQUIRE_GPU=1 cargo test --workspace --all-targets

echo "== host-cli --backend gpu"
DDPM_REQUIRE_GPU=1 cargo test -p host-cli --features gpu --test gpu_cli

echo "== ddpm-core without std, for a Cortex-M4F (thumbv7em-none-eabihf)"
cargo build -p ddpm-core --target thumbv7em-none-eabihf --release

echo "== ddpm-core with the std feature (rayon)"
cargo test -p ddpm-core --features std --lib

echo "== rustfmt and clippy"
for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
        rustup component add "$component"
    fi
done
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p host-cli --all-targets --features gpu -- -D warnings

echo "== firmware: sample on an emulated Cortex-M4F (QEMU mps2-an386), bit-identical to the host"
bash scripts/firmware-test.sh

echo "== firmware-riscv: sample on an emulated FPU-less RV32IMAC core (QEMU virt), bit-identical to the host"
bash scripts/firmware-riscv-test.sh
