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
if [ "$n_ddim" -gt 0 ]; then
    target/release/host-cli sample $model -n "$n_ddim" --sampler ddim --steps 50 --seed 1 --npy "$out/ddim50.npy" -o "$out/ddim50.png"
    python3 "$here/evaluate.py" --npy "$out/ddim50.npy"
fi
if [ "$n_ddpm" -gt 0 ]; then
    target/release/host-cli sample $model -n "$n_ddpm" --sampler ddpm --steps 1000 --seed 2 --npy "$out/ddpm1000.npy" -o "$out/ddpm1000.png"
    python3 "$here/evaluate.py" --npy "$out/ddpm1000.npy"
fi
if [ "$n_ddpm50" -gt 0 ]; then
    target/release/host-cli sample $model -n "$n_ddpm50" --sampler ddpm --steps 50 --seed 1 --npy "$out/ddpm50.npy" -o "$out/ddpm50.png"
    python3 "$here/evaluate.py" --npy "$out/ddpm50.npy"
fi
echo "samples in $out"
