#!/usr/bin/env bash
# The project's test command (README, CI): installs what it needs, builds once, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The bare-metal target proves ddpm-core is no_std and heap-free (issue 2, point 9).
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    rustup target add thumbv7em-none-eabihf
fi

echo "== unit, integration and parity tests (workspace)"
cargo test --workspace --all-targets

echo "== ddpm-core without std, for a Cortex-M4F (thumbv7em-none-eabihf)"
cargo build -p ddpm-core --target thumbv7em-none-eabihf --release

echo "== ddpm-core with the std feature (rayon)"
cargo test -p ddpm-core --features std --lib

if cargo clippy --version >/dev/null 2>&1; then
    echo "== clippy"
    cargo clippy --workspace --all-targets -- -D warnings
fi

echo "== firmware: sample on an emulated Cortex-M4F (QEMU mps2-an386), bit-identical to the host"
bash scripts/firmware-test.sh
