#!/usr/bin/env bash
# Firmware check: ddpm-core samples an image on a Cortex-M4F under QEMU (mps2-an386),
# bit-identical to the host. For each model, precision (f32, f16, int8) and sampler (ddim, ddpm, and dpm-solver:
# DPM-Solver++ 2M with diffusers' defaults) it converts the model with host-cli, builds firmware/ with that blob
# embedded, runs it under qemu-system-arm, and requires the firmware's `checksum` line to equal `host-cli sample`'s
# for the same seed and steps. Idempotent: installs the bare-metal target and QEMU only when missing.
#
# Environment (optional):
#   FIRMWARE_MODELS   space-separated checkpoints/diffusers folders (default: the a_ddpm fixture and the shipped MNIST model)
#   FIRMWARE_PRECISIONS  space-separated precisions (default: f32 f16 int8)
#   FIRMWARE_SAMPLERS space-separated samplers (default: ddim ddpm dpm-solver)
#   DDPM_SEED         seed (default 7)
#   DDPM_STEPS        inference steps (default 10)
#   FIRMWARE_TIMEOUT  seconds per QEMU run (default 300)
#
# Output: per case, both checksums, the emulated instructions per step and PASS/FAIL; last line
# `N passed, M failed`. Exit status 0 only when every case passed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=${FIRMWARE_MODELS:-tests/fixtures/unet/a_ddpm weights/mnist/model}
SEED=${DDPM_SEED:-7}
STEPS=${DDPM_STEPS:-10}
PRECISIONS=${FIRMWARE_PRECISIONS:-f32 f16 int8}
SAMPLERS=${FIRMWARE_SAMPLERS:-ddim ddpm dpm-solver}
TIMEOUT=${FIRMWARE_TIMEOUT:-300}
FW=firmware
BLOBS=$FW/target/blobs          # converted blobs (firmware/build.rs defaults to a_ddpm_f16.blob here)
WORK=$FW/target/firmware-test   # ELF images, host PNGs, QEMU logs
mkdir -p "$WORK" "$BLOBS"

echo "== tools"
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    rustup target add thumbv7em-none-eabihf
fi
if ! command -v qemu-system-arm >/dev/null 2>&1; then
    SUDO=
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends qemu-system-arm
fi
qemu-system-arm --version | head -n 1

echo "== host-cli"
cargo build -p host-cli
HOST=${CARGO_TARGET_DIR:-target}/debug/host-cli

# Writes the blob only when its bytes change, so cargo does not rebuild the firmware for nothing.
convert() { # model precision out
    local tmp="$3.tmp"
    "$HOST" convert "$1" --precision "$2" -o "$tmp" 2>"$WORK/convert.log" || {
        cat "$WORK/convert.log" >&2
        return 1
    }
    if cmp -s "$tmp" "$3"; then rm -f "$tmp"; else mv -f "$tmp" "$3"; fi
}

passed=0
failed=0
fail() { # case message
    echo "FAIL  $1: $2"
    failed=$((failed + 1))
}

for model in $MODELS; do
    name=$(basename "${model%/}")
    name=${name%.*}
    # A pipeline's generic folder name (weights/mnist/model) says less than its parent's.
    case $name in model | unet) name=$(basename "$(dirname "${model%/}")") ;; esac
    for precision in $PRECISIONS; do
        blob=$PWD/$BLOBS/${name}_$precision.blob
        echo "== $name $precision: convert"
        if ! convert "$model" "$precision" "$blob"; then
            fail "$name $precision" "host-cli convert failed"
            continue
        fi
        for sampler in $SAMPLERS; do
            case="${name} ${precision} ${sampler} seed ${SEED} steps ${STEPS}"
            tag=${name}_${precision}_${sampler}
            echo "== $case"
            host=$("$HOST" sample "$blob" --exact -n 1 --seed "$SEED" --steps "$STEPS" --sampler "$sampler" \
                -o "$WORK/$tag.png" 2>&1 | grep -o '^checksum [0-9a-f]\{16\}$' || true)
            if [ -z "$host" ]; then
                fail "$case" "host-cli sample printed no checksum"
                continue
            fi
            start=$(date +%s)
            if ! (cd "$FW" && DDPM_BLOB="$blob" DDPM_SEED="$SEED" DDPM_STEPS="$STEPS" \
                DDPM_SAMPLER="$sampler" DDPM_ETA=0 DDPM_CLASS= cargo build --release --quiet); then
                fail "$case" "firmware build failed"
                continue
            fi
            elf=$WORK/$tag.elf
            cp -f "$FW/target/thumbv7em-none-eabihf/release/ddpm-firmware" "$elf"
            echo "   firmware built in $(($(date +%s) - start)) s"
            # -icount shift=0: virtual time advances 1 ns per guest instruction, so the firmware's per-step
            # SysTick timings are instruction counts (README: measuring the cost).
            start=$(date +%s)
            status=0
            timeout "$TIMEOUT" qemu-system-arm -M mps2-an386 -nographic -monitor none -serial none \
                -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
                >"$WORK/$tag.log" 2>&1 || status=$?
            echo "   qemu ran $(($(date +%s) - start)) s (status $status)"
            grep -E '^(blob|arena|cost) ' "$WORK/$tag.log" | sed 's/^/   /' || true
            fw=$(grep -o '^checksum [0-9a-f]\{16\}$' "$WORK/$tag.log" || true)
            echo "   host     ${host#checksum }"
            echo "   firmware ${fw#checksum }"
            if [ "$status" = 124 ]; then
                fail "$case" "QEMU timed out after $TIMEOUT s (log: $WORK/$tag.log)"
            elif [ "$status" != 0 ]; then
                tail -n 5 "$WORK/$tag.log" | sed 's/^/   | /'
                fail "$case" "firmware exited with status $status (log: $WORK/$tag.log)"
            elif ! grep -qx "steps $STEPS" "$WORK/$tag.log"; then
                fail "$case" "firmware did not report $STEPS steps (log: $WORK/$tag.log)"
            elif [ "$fw" != "$host" ]; then
                fail "$case" "checksum mismatch: firmware ${fw#checksum } != host ${host#checksum }"
            else
                echo "PASS  $case"
                passed=$((passed + 1))
            fi
        done
    done
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
