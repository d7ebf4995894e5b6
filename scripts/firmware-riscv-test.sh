#!/usr/bin/env bash
# RISC-V firmware check: ddpm-core samples an image on an FPU-less RV32IMAC core under QEMU (virt), bit-identical
# to the host. For each case (precision, sampler, steps) it builds firmware-riscv/ with the shipped MNIST blob of
# that precision embedded, runs it under qemu-system-riscv32, and requires the firmware's `checksum` line to equal
# `host-cli sample`'s for the same seed and steps. Idempotent: installs the bare-metal target and QEMU only when
# missing.
#
# Default cases: int8, f16 and f32, each with DDIM and DDPM; int8 at 10 steps, f16 and f32 at 2. In soft float an f32 or
# f16 MNIST step is ~8 G instructions, 12-16 s of emulation (int8: 0.45 G, under 1 s); the per-step cost hardly
# depends on the step, so 2 steps measure it and keep the whole script at a few minutes.
#
# Environment (optional):
#   RISCV_CASES     space-separated precision:sampler:steps (default: int8:ddim:10 int8:ddpm:10 f16:ddim:2 f16:ddpm:2 f32:ddim:2 f32:ddpm:2)
#   RISCV_TARGETS   space-separated targets (default riscv32imac-unknown-none-elf; add riscv32imafc-unknown-none-elf
#                   to compare with hardware f32)
#   RISCV_BLOBS     blob path prefix, + PRECISION.blob (default weights/mnist/mnist-)
#   DDPM_SEED       seed (default 7)
#   RISCV_TIMEOUT   seconds per QEMU run (default 300)
#
# Output: per case, both checksums, the instructions of every step and PASS/FAIL; then a table of instructions per
# step; last line `N passed, M failed`. Exit status 0 only when every case passed.
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${RISCV_CASES:-int8:ddim:10 int8:ddpm:10 f16:ddim:2 f16:ddpm:2 f32:ddim:2 f32:ddpm:2}
TARGETS=${RISCV_TARGETS:-riscv32imac-unknown-none-elf}
BLOBS=${RISCV_BLOBS:-weights/mnist/mnist-}
SEED=${DDPM_SEED:-7}
TIMEOUT=${RISCV_TIMEOUT:-300}
FW=firmware-riscv
WORK=$FW/target/firmware-riscv-test # ELF images, host PNGs, QEMU logs
mkdir -p "$WORK"
script_start=$(date +%s)

echo "== tools"
for target in $TARGETS; do
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
done
if ! command -v qemu-system-riscv32 >/dev/null 2>&1; then
    SUDO=
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends qemu-system-misc
fi
qemu-system-riscv32 --version | head -n 1

echo "== host-cli"
cargo build -p host-cli
HOST=${CARGO_TARGET_DIR:-target}/debug/host-cli

passed=0
failed=0
table=""
fail() { # case message
    echo "FAIL  $1: $2"
    failed=$((failed + 1))
}

for target in $TARGETS; do
    # The FPU-less target runs on a CPU without F and D, so a stray float instruction would trap (and fail the
    # case) instead of running; the F target gets QEMU's default rv32 CPU.
    case $target in
        riscv32imac-*) cpu="rv32,f=false,d=false" ;;
        *) cpu="rv32" ;;
    esac
    for spec in $CASES; do
        IFS=: read -r precision sampler steps <<<"$spec"
        blob=$PWD/$BLOBS$precision.blob
        case="$target mnist $precision $sampler seed $SEED steps $steps"
        tag=${target%%-*}_${precision}_${sampler}_$steps
        echo "== $case"
        if [ ! -f "$blob" ]; then
            fail "$case" "no blob $blob"
            continue
        fi
        # --threads 1: this machine is shared; the checksum does not depend on the thread count.
        host=$("$HOST" --threads 1 sample "$blob" --exact -n 1 --seed "$SEED" --steps "$steps" --sampler "$sampler" \
            -o "$WORK/$tag.png" 2>&1 | grep -o '^checksum [0-9a-f]\{16\}$' || true)
        if [ -z "$host" ]; then
            fail "$case" "host-cli sample printed no checksum"
            continue
        fi
        start=$(date +%s)
        if ! (cd "$FW" && DDPM_BLOB="$blob" DDPM_SEED="$SEED" DDPM_STEPS="$steps" DDPM_SAMPLER="$sampler" \
            DDPM_ETA=0 DDPM_CLASS= DDPM_PROFILE= cargo build --release --quiet --target "$target"); then
            fail "$case" "firmware build failed"
            continue
        fi
        elf=$WORK/$tag.elf
        cp -f "$FW/target/$target/release/ddpm-firmware-riscv" "$elf"
        echo "   firmware built in $(($(date +%s) - start)) s"
        # -icount shift=0: QEMU's instruction counter drives mcycle and minstret, so the firmware's per-step
        # counts are executed instructions, exact and repeatable.
        start=$(date +%s)
        status=0
        timeout "$TIMEOUT" qemu-system-riscv32 -M virt -cpu "$cpu" -bios none -nographic -monitor none \
            -serial none -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
            >"$WORK/$tag.log" 2>&1 || status=$?
        echo "   qemu ran $(($(date +%s) - start)) s (status $status)"
        grep -E '^(blob|arena|step|cost) ' "$WORK/$tag.log" | sed 's/^/   /' || true
        fw=$(grep -o '^checksum [0-9a-f]\{16\}$' "$WORK/$tag.log" || true)
        echo "   host     ${host#checksum }"
        echo "   firmware ${fw#checksum }"
        if [ "$status" = 124 ]; then
            fail "$case" "QEMU timed out after $TIMEOUT s (log: $WORK/$tag.log)"
        elif [ "$status" != 0 ]; then
            tail -n 5 "$WORK/$tag.log" | sed 's/^/   | /'
            fail "$case" "firmware exited with status $status (log: $WORK/$tag.log)"
        elif ! grep -qx "steps $steps" "$WORK/$tag.log"; then
            fail "$case" "firmware did not report $steps steps (log: $WORK/$tag.log)"
        elif [ "$fw" != "$host" ]; then
            fail "$case" "checksum mismatch: firmware ${fw#checksum } != host ${host#checksum }"
        else
            echo "PASS  $case"
            passed=$((passed + 1))
            mean=$(sed -n 's/^cost .*(minstret): mean \([0-9]*\) min \([0-9]*\) max \([0-9]*\).*/\1 \2 \3/p' \
                "$WORK/$tag.log")
            table+=$(printf '%-30s %-5s %-5s %5s %14s %14s %14s' "$target" "$precision" "$sampler" "$steps" $mean)
            table+=$'\n'
        fi
    done
done

echo "== instructions per denoising step (minstret under -icount shift=0; MNIST 1x28x28, batch 1)"
printf '%-30s %-5s %-5s %5s %14s %14s %14s\n' target prec sampler steps mean min max
printf '%s' "$table"
echo "total $(($(date +%s) - script_start)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
