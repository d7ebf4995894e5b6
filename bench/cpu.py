#!/usr/bin/env python3
"""CPU benchmark: host-cli (Rust, f32 and f16 blobs) against PyTorch eager diffusers and ONNX Runtime.

Exact command (from the repository root):

    python3 bench/cpu.py [--threads N] [--iters K] [--rounds R] [--models cifar10,mnist] [--batch B] [--sample N,K]
                         [--no-build] [--exact]

Defaults: N = number of cores (os.cpu_count()), R = 3 rounds, K = timed forwards per
measurement per round (per model: cifar10 3, mnist 20), models cifar10,mnist.
20-40 s at the defaults on a quiet 2-core AMD EPYC, up to 263 s on a loaded one (bench/README.md).

For each model, in one run:

1. Build a diffusers ``UNet2DModel`` with seeded random weights (nothing is downloaded).
   Diffusers' init leaves every GroupNorm the identity and every bias zero, so the
   weights get seeded noise on top (as in tests/fixtures/make_fixtures.py); this only
   matters for the accuracy check, not the timings.
   * ``cifar10``: the architecture of google/ddpm-cifar10-32 (35.7M parameters).
   * ``mnist``:   a small 28x28x1 model, block_out_channels (16, 32, 48), attention at
     14x14 and 7x7 (466,657 parameters).
2. ``save_pretrained`` it into a temporary folder, ``host-cli convert`` it to an f32 and
   an f16 blob, and run ``host-cli forward`` on one seeded random input at timestep 500.
   Prints max |ours - torch| / max |torch| for both blobs. The f16 blob is compared both
   with the f32 torch output and with torch run on weights rounded the way the blob
   stores them (matrices and kernels to f16, 1-D tensors kept f32).
3. Time forwards of batch B (default 1) at timestep 500 with N threads: PyTorch eager (float32,
   ``torch.no_grad()``, ``torch.set_num_threads(N)``) in this process, and
   ``host-cli --threads N bench`` (a subprocess) for the f32 and the f16 blob.
   The same model exported with ``torch.onnx.export`` runs in ONNX Runtime
   (``CPUExecutionProvider``, all graph optimisations, ``intra_op_num_threads=N``,
   ``inter_op_num_threads=1``); its output is checked against torch like ours.
   The four are interleaved: each round runs Rust f32, Rust f16, torch, ONNX Runtime,
   each with one untimed warm-up then K timed forwards. A measurement's figure is the median over the
   rounds of each round's median; the spread table gives the lowest and highest round
   median, so noise from other processes on the machine shows up there.
   With ``--sample N,K``, also whole sampling runs of N images in K steps: diffusers' ``DDPMPipeline``
   (``DDPMScheduler`` defaults, respaced to K steps) against ``host-cli sample -n N --steps K`` on the f32 blob.
4. Print torch/diffusers/onnxruntime versions, CPU model, thread count and load averages,
   then one table of latencies, ratios (ours / ONNX Runtime, ours / torch) and achieved
   GFLOP/s (host-cli inspect's FLOP count over the median latency).

``--no-build`` skips ``cargo build --release -p host-cli`` (run by default so the
binary matches the source tree); ``--bin PATH`` uses another binary; ``--exact`` times
host-cli's portable kernels (``host-cli bench --exact``, the firmware's bits).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import diffusers
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parent.parent
TIMESTEP = 500

# google/ddpm-cifar10-32's config.json (UNet2DModel, diffusers >= 0.16 keys), written out
# in full. The published file also has mid_block_scale_factor=1, time_embedding_type=
# "positional", add_attention=true, class_embed_type/num_class_embeds null: all the
# UNet2DModel defaults, given here anyway.
CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    resnet_time_scale_shift="default",
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    center_input_sample=False,
    act_fn="silu",
    mid_block_scale_factor=1,
    time_embedding_type="positional",
    add_attention=True,
)

MNIST = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 48),  # 466,657 parameters; (32, 64, 64) would be 1.16M
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=8,
)

MODELS = {"cifar10": (CIFAR10, 3), "mnist": (MNIST, 20)}  # config, default iters


def log(msg=""):
    print(msg, flush=True)


def run(cmd, **kw):
    """Run a command; on failure print its output exactly and exit."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        log(f"FAILED (exit {p.returncode}): {' '.join(map(str, cmd))}")
        log(p.stdout.rstrip())
        log(p.stderr.rstrip())
        sys.exit(1)
    return p


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sgemm_peak(n=1024, reps=20):
    """The machine's f32 matrix-multiply rate at the benchmark's thread count: torch.mm (MKL or OpenBLAS) on
    n x n matrices, best of `reps`, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def _proc_stat_busy():
    """Busy seconds summed over all CPUs since boot (/proc/stat), or None."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu():
    """CPU seconds of this process (all threads) plus its finished children."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def measure(fn, *a):
    """Run fn(*a); also return the share of the machine's CPU time that OTHER processes
    used meanwhile (0 = machine to ourselves, 0.5 = one of two cores busy elsewhere)."""
    w0, c0, b0 = time.perf_counter(), _own_cpu(), _proc_stat_busy()
    out = fn(*a)
    w1, c1, b1 = time.perf_counter(), _own_cpu(), _proc_stat_busy()
    if b0 is None or b1 is None:
        return out, float("nan")
    other = ((b1 - b0) - (c1 - c0)) / ((w1 - w0) * (os.cpu_count() or 1))
    return out, min(max(other, 0.0), 1.0)


def perturb_(model, seed):
    """Seeded noise on every parameter so no GroupNorm is the identity and no bias is zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and p.dim() == 1:
                p.copy_((1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                std = p.std().item() if p.numel() > 1 else 0.0
                p.add_(noise * (0.1 * std if std > 0 else 0.05))


def build_model(cfg, seed):
    torch.manual_seed(seed)
    m = UNet2DModel(**cfg)
    perturb_(m, seed + 1)
    return m.eval()


def torch_forward(model, x):
    with torch.no_grad():
        return model(x, TIMESTEP).sample


def rel_err(ours, ref):
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def f16_rounded_copy(model, cfg):
    """The model with weights rounded the way an f16 blob stores them."""
    m = UNet2DModel(**cfg).eval()
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.copy_(p.half().float())
    return m


def parse_inspect(text):
    params = int(re.search(r"^parameters\s+(\d+)", text, re.M).group(1))
    gflop = float(re.search(r"^flops\s+([0-9.]+) G", text, re.M).group(1))
    blob = int(re.search(r"^blob bytes\s+(\d+)", text, re.M).group(1))
    arena = int(re.search(r"^arena bytes\s+(\d+)", text, re.M).group(1))
    return params, gflop, blob, arena


BENCH_RE = re.compile(r"forward_ms median ([0-9.]+) min ([0-9.]+) batch \d+ cpu threads (\d+) gflops ([0-9.]+)")


def rust_bench(binary, blob, threads, iters, exact, batch):
    p = run([binary, "--threads", threads, "bench", blob, "--iters", iters, "--warmup", 1, "--batch", batch]
            + (["--exact"] if exact else []))
    m = BENCH_RE.search(p.stdout)
    if not m:
        log(f"unexpected bench output: {p.stdout!r} {p.stderr!r}")
        sys.exit(1)
    if int(m.group(3)) != threads:
        log(f"WARNING: host-cli bench reports {m.group(3)} threads, asked for {threads}")
    return float(m.group(1)), float(m.group(2))


def torch_bench(model, x, iters):
    times = []
    with torch.no_grad():
        model(x, TIMESTEP)  # warm-up
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x, TIMESTEP)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


class _Eps(torch.nn.Module):
    """The UNet as a plain (x, t) -> eps module, for torch.onnx.export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        return self.model(x, t).sample


def ort_session(model, x, path, threads):
    """Export the model to ONNX (timestep a [1] int64 input) and open it in ONNX Runtime."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on diffusers' shape asserts
        torch.onnx.export(_Eps(model), (x, torch.tensor([TIMESTEP])), str(path),
                          input_names=["sample", "timestep"], output_names=["eps"], dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_feeds(x):
    return {"sample": x.numpy().astype(np.float32), "timestep": np.array([TIMESTEP], dtype=np.int64)}


def ort_bench(sess, feeds, iters):
    times = []
    sess.run(None, feeds)  # warm-up
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def sample_bench(name, model, blob, args, binary, tmp):
    """One whole DDPM run of args.sample = (N images, K steps) each: diffusers' DDPMPipeline (DDPMScheduler with
    its defaults, respaced to K steps) against ``host-cli sample`` on the f32 blob (the same schedule and
    respacing), interleaved over the rounds, after one untimed one-step diffusers run; ours includes starting the
    process and loading the blob. Returns (median seconds diffusers, ours, other load)."""
    n, k = args.sample
    pipe = diffusers.DDPMPipeline(unet=model, scheduler=diffusers.DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def diffusers_run():
        with torch.no_grad():
            t0 = time.perf_counter()
            pipe(batch_size=n, num_inference_steps=k, output_type="np", generator=torch.Generator().manual_seed(0))
            return time.perf_counter() - t0

    def ours_run():
        t0 = time.perf_counter()
        run([binary, "--threads", args.threads, "sample", blob, "-n", n, "--steps", k, "-o", tmp / f"{name}_s.png"])
        return time.perf_counter() - t0

    with torch.no_grad():  # untimed warm-up (the first call allocates and picks kernels)
        pipe(batch_size=n, num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    times, other = {"diffusers": [], "ours": []}, []
    for _ in range(args.rounds):
        for key, fn in (("diffusers", diffusers_run), ("ours", ours_run)):
            t, o = measure(fn)
            times[key].append(t)
            other.append(o)
        log(f"sample {n} x {k} steps: diffusers {times['diffusers'][-1]:.2f} s  ours f32 {times['ours'][-1]:.2f} s")
    return statistics.median(times["diffusers"]), statistics.median(times["ours"]), statistics.mean(other)


def bench_model(name, cfg, default_iters, args, binary, tmp):
    log(f"== {name} ==")
    t_start = time.perf_counter()
    model = build_model(cfg, seed=1234)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters (torch): {n_params:,}")

    mdir = tmp / name
    model.save_pretrained(mdir, safe_serialization=True)
    blobs, info = {}, {}
    for prec in ("f32", "f16"):
        blob = tmp / f"{name}_{prec}.blob"
        p = run([binary, "convert", mdir, "-o", blob, "--precision", prec])
        for line in p.stderr.strip().splitlines():
            log(f"  convert {prec}: {line}")
        info[prec] = parse_inspect(run([binary, "inspect", blob]).stdout)
        blobs[prec] = blob
    params, gflop, _, arena = info["f32"]
    log(f"inspect: parameters {params:,}  flops {gflop:.3f} G/forward  "
        f"blob f32 {info['f32'][2]:,} B  f16 {info['f16'][2]:,} B  arena {arena:,} B")
    if params != n_params:
        log(f"WARNING: host-cli counts {params} parameters, torch {n_params}")

    # --- accuracy: one seeded random input, timestep 500 ---------------------------------
    c, h, w = cfg["in_channels"], cfg["sample_size"], cfg["sample_size"]
    x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(99))
    np.save(tmp / f"{name}_x.npy", x.numpy().astype(np.float32))
    ref = torch_forward(model, x).numpy().astype(np.float64)
    ref16 = torch_forward(f16_rounded_copy(model, cfg), x).numpy().astype(np.float64)
    errs = {}
    for prec, blob in blobs.items():
        out = tmp / f"y_{prec}.npy"
        run([binary, "--threads", args.threads, "forward", blob, "--input", tmp / f"{name}_x.npy",
             "--timestep", TIMESTEP, "-o", out] + (["--exact"] if args.exact else []))
        y = np.load(out)
        if y.shape != ref.shape:
            log(f"WARNING: {prec} output shape {y.shape}, torch {ref.shape}")
            errs[prec] = float("nan")
            continue
        errs[prec] = rel_err(y, ref)
        if prec == "f16":
            errs["f16_vs_rounded"] = rel_err(y, ref16)
    log(f"max|ours-torch|/max|torch|: f32 {errs['f32']:.2e}  f16 {errs['f16']:.2e}  "
        f"(f16 vs torch with f16-rounded weights {errs.get('f16_vs_rounded', float('nan')):.2e})")
    t_export = time.perf_counter()
    sess = ort_session(model, x, tmp / f"{name}.onnx", args.threads)
    feeds = ort_feeds(x)
    errs["ort"] = rel_err(sess.run(None, feeds)[0], ref)
    # A batch: its own export, of that fixed batch size (the accuracy check above is on one image).
    xb = x
    if args.batch > 1:
        xb = torch.randn(args.batch, c, h, w, generator=torch.Generator().manual_seed(98))
        sess = ort_session(model, xb, tmp / f"{name}_b{args.batch}.onnx", args.threads)
        feeds = ort_feeds(xb)
    log(f"onnxruntime: exported and loaded in {time.perf_counter() - t_export:.0f} s; "
        f"max|ort-torch|/max|torch| {errs['ort']:.2e}")

    # --- timing, interleaved ----------------------------------------------------------------
    iters = args.iters or default_iters
    keys = ("f32", "f16", "torch", "ort")
    samples, mins, other = ({k: [] for k in keys} for _ in range(3))
    for r in range(args.rounds):
        for k in keys:
            if k in blobs:
                (med, mn), o = measure(rust_bench, binary, blobs[k], args.threads, iters, args.exact, args.batch)
            elif k == "torch":
                (med, mn), o = measure(torch_bench, model, xb, iters)
            else:
                (med, mn), o = measure(ort_bench, sess, feeds, iters)
            samples[k].append(med)
            mins[k].append(mn)
            other[k].append(o)
        log(f"round {r + 1}/{args.rounds} ({iters} iters): "
            + "  ".join(f"{lbl} {samples[k][-1]:.2f} ms (other load {100 * other[k][-1]:.0f}%)"
                        for k, lbl in (("ort", "onnxruntime"), ("torch", "torch"), ("f32", "ours f32"),
                                       ("f16", "ours f16"))))
    res = {k: statistics.median(v) for k, v in samples.items()}
    sampled = sample_bench(name, model, blobs["f32"], args, binary, tmp) if args.sample else None
    log(f"{name} done in {time.perf_counter() - t_start:.0f} s")
    log()
    return dict(name=name, params=params, gflop=gflop, errs=errs, med=res, samples=samples,
                mins={k: min(v) for k, v in mins.items()}, iters=iters, sampled=sampled,
                other=statistics.mean(v for vs in other.values() for v in vs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--iters", type=int, default=0,
                    help="timed forwards per measurement per round (default: cifar10 3, mnist 20)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--models", default="cifar10,mnist")
    ap.add_argument("--sample", default=None, metavar="N,K",
                    help="also time whole runs: diffusers' DDPMPipeline against host-cli sample, N images, K steps")
    ap.add_argument("--batch", type=int, default=1,
                    help="images per timed forward (default 1); host-cli runs one part of the batch per thread")
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "host-cli")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release -p host-cli")
    ap.add_argument("--exact", action="store_true", help="time host-cli's portable kernels (bench --exact)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the models, blobs and ONNX files to this folder and keep them (default: a "
                         "temporary folder)")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(MODELS)}")
    if args.threads < 1 or args.rounds < 1 or args.iters < 0 or args.batch < 1:
        ap.error("--threads, --rounds and --batch must be >= 1, --iters >= 0")
    if args.sample:
        try:
            args.sample = tuple(int(v) for v in args.sample.split(","))
            assert len(args.sample) == 2 and min(args.sample) >= 1
        except (ValueError, AssertionError):
            ap.error("--sample takes N,K: images and steps, both >= 1")

    if not args.no_build:
        log("cargo build --release -p host-cli ...")
        run(["cargo", "build", "--release", "-p", "host-cli"], cwd=ROOT)
    if not args.bin.exists():
        log(f"no binary at {args.bin}; build it with cargo build --release -p host-cli")
        sys.exit(1)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    log(f"date        {datetime.datetime.now().isoformat(timespec='seconds')}")
    log(f"cpu         {cpu_model()} ({os.cpu_count()} logical cores)")
    log(f"threads     {args.threads} (torch.get_num_threads() = {torch.get_num_threads()}, "
        f"host-cli --threads {args.threads})")
    log(f"python      {platform.python_version()}  torch {torch.__version__}  "
        f"diffusers {diffusers.__version__}  onnxruntime {ort.__version__}  numpy {np.__version__}")
    log(f"host-cli    {args.bin} (built {datetime.datetime.fromtimestamp(args.bin.stat().st_mtime).isoformat(timespec='seconds')}, "
        f"git {git_rev()})")
    peak = sgemm_peak()
    log(f"sgemm peak  {peak:.1f} GFLOP/s (torch.mm 1024 x 1024, {args.threads} thread(s))")
    log(f"loadavg     {loadavg()} (start)")
    log()

    results = []
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        work = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        for n in names:
            cfg, default_iters = MODELS[n]
            results.append(bench_model(n, cfg, default_iters, args, args.bin, work))

    log(f"torch {torch.__version__}, diffusers {diffusers.__version__}, onnxruntime {ort.__version__}, "
        f"CPU {cpu_model()}, {args.threads} thread(s), batch {args.batch}, timestep {TIMESTEP}, "
        f"{args.rounds} rounds, median of round medians{', host-cli --exact' if args.exact else ''}")
    log()
    log(f"SGEMM peak {peak:.1f} GFLOP/s; the last column is ours f32 as a share of it."
        + (f" Latencies are per forward of the whole batch of {args.batch}; images/s = {args.batch} × 1000 / ms."
           if args.batch > 1 else ""))
    log()
    log("| model | params | GFLOP/fwd | onnxruntime ms | torch ms | ours f32 ms | ours f16 ms | "
        "f32/ort | f16/ort | f32/torch | GFLOP/s ort | torch | ours f32 | ours f16 | f32 / peak |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["med"]
        gfs = {k: args.batch * r["gflop"] / (m[k] / 1e3) for k in m}
        log(f"| {r['name']} | {r['params']:,} | {r['gflop']:.3f} | {m['ort']:.2f} | {m['torch']:.2f} | "
            f"{m['f32']:.2f} | {m['f16']:.2f} | {m['f32'] / m['ort']:.2f} | {m['f16'] / m['ort']:.2f} | "
            f"{m['f32'] / m['torch']:.2f} | {gfs['ort']:.1f} | {gfs['torch']:.1f} | {gfs['f32']:.1f} | "
            f"{gfs['f16']:.1f} | {100 * gfs['f32'] / peak:.0f} % |")
    log()
    log("Spread (lowest..highest round median; fastest single forward) and accuracy:")
    log()
    log("| model | iters x rounds | other load | onnxruntime ms | torch ms | ours f32 ms | ours f16 ms | "
        "err ort | err f32 | err f16 | err f16 vs f16-rounded torch |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        s, mn, e = r["samples"], r["mins"], r["errs"]
        cell = lambda k: f"{min(s[k]):.2f}..{max(s[k]):.2f}; {mn[k]:.2f}"  # noqa: E731
        log(f"| {r['name']} | {r['iters']} x {len(s['torch'])} | {100 * r['other']:.0f}% | {cell('ort')} | "
            f"{cell('torch')} | {cell('f32')} | {cell('f16')} | {e['ort']:.1e} | {e['f32']:.1e} | "
            f"{e['f16']:.1e} | {e.get('f16_vs_rounded', float('nan')):.1e} |")
    log()
    if args.sample:
        n, k = args.sample
        log(f"Whole runs, {n} images x {k} DDPM steps (median of {args.rounds}): diffusers' DDPMPipeline against "
            f"host-cli sample (f32 blob, {args.threads} thread(s)):")
        log()
        log("| model | diffusers s | ours s | diffusers images/s | ours images/s | ours / diffusers speed | other load |")
        log("|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            d, o, load = r["sampled"]
            log(f"| {r['name']} | {d:.2f} | {o:.2f} | {n / d:.2f} | {n / o:.2f} | {d / o:.2f}x | {100 * load:.0f}% |")
        log()
    log("err = max|ours (or onnxruntime) - torch| / max|torch| on one seeded random input, timestep 500.")
    log("other load = mean share of all cores' time used by other processes while timing "
        "(/proc/stat minus our own CPU time); well above 0% means the timings are inflated.")
    log(f"loadavg     {loadavg()} (end)")
    log(f"total       {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
