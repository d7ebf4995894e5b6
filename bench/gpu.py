#!/usr/bin/env python3
"""GPU benchmark: host-cli's Vulkan backend against PyTorch CUDA eager (fp32 and fp16), in one run.

    cargo build --release -p host-cli --features gpu
    python3 bench/gpu.py [--models cifar10,mnist] [--batches 1,64,256] [--steps 50] [--iters 10] [--device SEL]

For each model (the same definitions as bench/cpu.py: the google/ddpm-cifar10-32 architecture and a small
MNIST-size UNet, random seeded weights) and each batch size, it prints:
- forward latency in ms (batch 1) and throughput in images/s (larger batches), ours (f32 blob, f16 blob) and
  PyTorch CUDA eager fp32 and fp16 (`model.half()`), each the median of --iters timed runs after a warm-up;
- images/s of a whole DDPM run of --steps steps at the largest batch (ours: the sampling loop on the device; torch:
  the DDPMScheduler loop of DDPMPipeline);
- ratios ours/torch (time, so below 1 is faster).
Without CUDA (e.g. on Mesa's lavapipe) the PyTorch columns are skipped and the figures are only a smoke test of
the harness. Run it on an NVIDIA machine for figures; write them with the GPU's name into the README.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu as cpubench  # noqa: E402  (model definitions and the seeded builder)

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ours(binary, blob, batch, iters, device, sample_steps=None):
    cmd = [binary, "bench", blob, "--backend", "gpu", "--batch", str(batch), "--iters", str(iters), "--warmup", "1"]
    if device:
        cmd += ["--device", device]
    if sample_steps:
        cmd += ["--sample-steps", str(sample_steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    fields = {k: float(v) for k, v in re.findall(r"\b(median|images_per_s|sample_images_per_s) ([0-9.]+)", out)}
    return fields["median"], fields


def torch_forward_ms(model, x, iters):
    t = torch.full((x.shape[0],), 500, device=x.device, dtype=torch.long)
    with torch.no_grad():
        model(x, t)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x, t)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def torch_sample_s(model, shape, steps, dtype):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler()
    sched.set_timesteps(steps)
    x = torch.randn(shape, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t).sample, t, x).prev_sample
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cifar10,mnist")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default=None, help="Vulkan device index or name substring")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "host-cli"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}  CUDA: {torch.cuda.get_device_name(0) if cuda else 'not available (PyTorch columns skipped)'}")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            cfg, _ = cpubench.MODELS[name]
            model = cpubench.build_model(cfg, seed=0)
            folder = os.path.join(tmp, name)
            model.save_pretrained(folder)
            blobs = {}
            for p in ("f32", "f16"):
                blobs[p] = os.path.join(tmp, f"{name}_{p}.blob")
                subprocess.run([args.bin, "convert", folder, "-o", blobs[p], "--precision", p], check=True,
                               capture_output=True)
            print(f"\n== {name}  ({sum(t.numel() for t in model.parameters()):,} parameters)")
            print(f"{'batch':>6} {'ours f32 ms':>12} {'ours f16 ms':>12} {'torch fp32 ms':>14} {'torch fp16 ms':>14} "
                  f"{'f32/fp32':>9} {'f16/fp16':>9}")
            for b in batches:
                o32, _ = ours(args.bin, blobs["f32"], b, args.iters, args.device)
                o16, _ = ours(args.bin, blobs["f16"], b, args.iters, args.device)
                t32 = t16 = float("nan")
                if cuda:
                    x = torch.randn(b, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], device="cuda")
                    m32 = model.to("cuda").float().eval()
                    t32 = torch_forward_ms(m32, x, args.iters)
                    m16 = model.to("cuda").half().eval()
                    t16 = torch_forward_ms(m16, x.half(), args.iters)
                    model.float()
                print(f"{b:>6} {o32:>12.3f} {o16:>12.3f} {t32:>14.3f} {t16:>14.3f} {o32 / t32:>9.2f} {o16 / t16:>9.2f}")
            b = batches[-1]
            _, fields = ours(args.bin, blobs["f32"], b, 1, args.device, sample_steps=args.steps)
            ours_ips = float(fields["sample_images_per_s"])
            line = f"DDPM {args.steps} steps at batch {b}: ours {ours_ips:.2f} images/s"
            if cuda:
                shape = (b, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
                s32 = torch_sample_s(model.to("cuda").float().eval(), shape, args.steps, torch.float32)
                s16 = torch_sample_s(model.to("cuda").half().eval(), shape, args.steps, torch.float16)
                model.float()
                line += f", torch fp32 {b / s32:.2f}, fp16 {b / s16:.2f} images/s"
            print(line)


if __name__ == "__main__":
    main()
