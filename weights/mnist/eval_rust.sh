#!/usr/bin/env bash
# Quality report of the shipped MNIST model sampled by the Rust engine (host-cli, built-in default model):
# a short DDIM schedule, the full 1000-step DDPM and (optionally) DDPM respaced to 50 steps, each scored by
# evaluate.py (classifier confidence share, digits present, Fréchet distance to the held-out digits, with
# real-vs-real as the yardstick).
#
#   bash weights/mnist/eval_rust.sh [N_DDIM=500] [N_DDPM=100] [N_DDPM50=0]
#   MODEL=weights/mnist/mnist-int8.blob bash weights/mnist/eval_rust.sh 500 0     # another blob; 0 skips a part
#
# Cost on the 2-core machine here: about 18 ms per image-step, so DDIM-50 × 500 ≈ 4 min,
# DDPM-50 × 500 ≈ 4 min and DDPM-1000 × 100 ≈ 15 min with both cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
n_ddim=${1:-500}
n_ddpm=${2:-100}
n_ddpm50=${3:-0}
cargo build --release -q -p host-cli
out=$(mktemp -d)
model=${MODEL:-}   # empty: the built-in default model
# part NAME COUNT SAMPLER STEPS SEED: sample COUNT images (none when 0) and score them.
part() {
    [ "$2" -gt 0 ] || return 0
    target/release/host-cli sample $model -n "$2" --sampler "$3" --steps "$4" --seed "$5" --npy "$out/$1.npy" -o "$out/$1.png"
    python3 "$here/evaluate.py" --npy "$out/$1.npy"
}
part ddim50 "$n_ddim" ddim 50 1
part ddpm1000 "$n_ddpm" ddpm 1000 2
part ddpm50 "$n_ddpm50" ddpm 50 1
echo "samples in $out"
