#!/usr/bin/env bash
# Installs what the Vulkan backend (gpu/, package ddpm-gpu) needs to build and test on Debian/Ubuntu:
#   glslang-tools        glslangValidator, which gpu/build.rs runs to compile the GLSL shaders to SPIR-V
#   libvulkan1           the Vulkan loader (libvulkan.so.1), which vulkano opens at run time
#   mesa-vulkan-drivers  Mesa's drivers, including lavapipe (a Vulkan device on the CPU) for machines with no GPU
# Idempotent: does nothing (and never calls apt) when all three are installed. Needs root (or sudo) otherwise.
set -euo pipefail

packages=(mesa-vulkan-drivers libvulkan1 glslang-tools)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-vulkan: already installed: ${packages[*]}"
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-vulkan: missing ${missing[*]} and no apt-get; install a Vulkan loader, a driver and glslangValidator" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-vulkan: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi

echo "install-vulkan: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v glslangValidator >/dev/null || { echo "install-vulkan: glslangValidator still missing" >&2; exit 1; }
echo "install-vulkan: done"
