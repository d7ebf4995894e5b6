#!/usr/bin/env python3
"""Score generated MNIST samples with the classifier from classifier.py.

Input: samples [N,1,28,28] float32 in model space ([-1, 1]), either
  --npy FILE                      e.g. written by `host-cli sample MODEL -n N --seed S --steps K
                                  --sampler ddpm|ddim --npy OUT.npy`, or
  --diffusers MODEL_DIR --steps S sampled here with diffusers from a pipeline folder
                                  (MODEL_DIR/unet + MODEL_DIR/scheduler, or a bare unet folder);
                                  S = 1000 (DDPM, every step), ddimK (DDIM, K steps, eta 0) or dpmK
                                  (DPM-Solver++ 2M, K steps: DPMSolverMultistepScheduler with its
                                  defaults, solver_order 2, lower_order_final, final sigma zero).
Figures, for the samples and for the yardstick (N real training digits, seeded):
  (a) share classified with max softmax >= 0.9
  (b) how many of the 10 digits appear as argmax (histogram printed)
  (c) Frechet distance between the classifier's 128-d penultimate features and those of
      the held-out real digits (all 999 of them).
The goal for a good model: (a) >= 0.85, (b) 10, (c) <= 1.5x the yardstick's FD.
FD at N = 500 moves by tens of percent between seeds (the class proportions of 500 draws alone
move it), so hold the goal against the means over several seeds (--seed 0,1,2,3).

  nice -n 19 python3 evaluate.py --diffusers model --steps ddim50 -n 500 --seed 0
  nice -n 19 python3 evaluate.py --diffusers model --steps ddim50 -n 500 --seed 0,1,2,3 --json out.json
  nice -n 19 python3 evaluate.py --diffusers model --steps dpm15 -n 500 --seed 0,1,2,3
  nice -n 19 python3 evaluate.py --npy out.npy
  host-cli noise mnist-f32.blob -n 500 --steps 50 --seed 1 -o n1.npy    # the engine's seed-1 noise, then
  nice -n 19 python3 evaluate.py --diffusers model --steps ddim50 -n 500 --noise n1.npy   # its samples
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from classifier import load_classifier  # noqa: E402
from mnist_data import load_split, to_model_space  # noqa: E402

CONF = 0.9


@torch.no_grad()
def classify(clf, x, bs=500):
    probs, feats = [], []
    for i in range(0, len(x), bs):
        xb = torch.as_tensor(x[i:i + bs])
        f = clf.features(xb)
        probs.append(torch.softmax(clf.head(f), 1)); feats.append(f)
    return torch.cat(probs).double().numpy(), torch.cat(feats).double().numpy()


def _psd_sqrt(a):
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _psd_sqrt(s1)
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)


def score(clf, x, ref_feats):
    p, f = classify(clf, x)
    hist = np.bincount(p.argmax(1), minlength=10)
    return dict(n=len(x), confident_share=float((p.max(1) >= CONF).mean()),
                digits_present=int((hist > 0).sum()), histogram=hist.tolist(),
                fd=frechet(f, ref_feats))


def load_pipeline_parts(model_dir):
    from diffusers import DDPMScheduler, UNet2DModel
    unet_dir = os.path.join(model_dir, "unet")
    if not os.path.exists(os.path.join(unet_dir, "config.json")):
        unet_dir = model_dir
    unet = UNet2DModel.from_pretrained(unet_dir).eval()
    sdir = os.path.join(model_dir, "scheduler")
    if os.path.exists(os.path.join(sdir, "scheduler_config.json")):
        sched = DDPMScheduler.from_pretrained(sdir)
    else:
        sys.path.insert(0, HERE)
        from train import make_scheduler
        sched = make_scheduler()
    return unet, sched


@torch.no_grad()
def sample_diffusers(model_dir, n, steps, seed, batch, eta=0.0, noise=None):
    """noise: the engine's [K+1, N, 1, 28, 28] array (`host-cli noise`), x_T then each step's noise (DDIM and
    DPM-Solver++, which uses x_T only)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    unet, sched = load_pipeline_parts(model_dir)
    dpm = steps.startswith("dpm")
    if noise is not None and not (steps.startswith("ddim") or dpm):
        sys.exit("--noise replays DDIM (--steps ddimK) and DPM-Solver++ (--steps dpmK) only")
    if steps.startswith("ddim"):
        sched = DDIMScheduler.from_config(sched.config)
        sched.set_timesteps(int(steps[4:]))
        kw = dict(eta=eta)
    elif dpm:
        # DPM-Solver++ (2M) as diffusers users pick it: from the pipeline's scheduler config (its spacing and
        # betas), with DPMSolverMultistepScheduler's defaults for the solver options.
        sched = DPMSolverMultistepScheduler.from_config(sched.config)
        sched.set_timesteps(int(steps[3:]))
        kw = {}
    else:
        k = int(steps)
        sched.set_timesteps(k)
        kw = {}
    g = torch.Generator().manual_seed(seed)
    c, h = unet.config.in_channels, unet.config.sample_size
    out = []
    if noise is not None and (noise.ndim != 5 or noise.shape[0] != len(sched.timesteps) + 1 or noise.shape[1] < n
                              or noise.shape[2:] != (c, h, h)):
        sys.exit(f"--noise: shape {list(noise.shape)} does not fit {len(sched.timesteps)} steps x {n} images; "
                 f"write it with `host-cli noise MODEL -n {n} --steps {len(sched.timesteps)} --seed S`")

    def frame(k, i, b):
        """The engine's noise for images i..i+b: x_T at k = 0, then step k's."""
        return torch.from_numpy(np.ascontiguousarray(noise[k, i:i + b], dtype=np.float32))

    for i in range(0, n, batch):
        b = min(batch, n - i)
        x = torch.randn((b, c, h, h), generator=g) if noise is None else frame(0, i, b)
        if dpm:
            sched.set_timesteps(int(steps[3:]))  # a multistep scheduler keeps state: restart it for each batch
        for k, t in enumerate(sched.timesteps):
            eps = unet(x, t).sample
            if dpm:
                step_noise = {}
            else:
                step_noise = dict(generator=g) if noise is None else dict(variance_noise=frame(k + 1, i, b))
            x = sched.step(eps, t, x, **step_noise, **kw).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out).numpy().astype(np.float32)


def save_grid(x, path, cols=20):
    from PIL import Image
    n = min(len(x), cols * 10)
    rows = (n + cols - 1) // cols
    img = np.zeros((rows * 28, cols * 28), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        img[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] = ((x[i, 0] + 1) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def fmt(name, s, yard_fd=None):
    extra = f"  ({s['fd'] / yard_fd:.2f}x yardstick)" if yard_fd else ""
    return (f"{name:<10} N={s['n']:<5} confident(>= {CONF})={s['confident_share']:.3f}  "
            f"digits={s['digits_present']}/10  FD={s['fd']:.3f}{extra}\n"
            f"{'':<10} argmax histogram 0..9: {s['histogram']}")


def evaluate_one(args, seed, clf, ref, xt):
    """Samples (or loads) one set, scores it and its yardstick; returns (source, gen, yard, seconds)."""
    t0 = time.time()
    if args.npy:
        x = np.load(args.npy).astype(np.float32)
        source = f"npy {args.npy}"
    else:
        noise = np.load(args.noise, mmap_mode="r") if args.noise else None
        x = sample_diffusers(args.diffusers, args.n, args.steps, seed, args.batch, args.eta, noise)
        source = f"diffusers {args.diffusers} steps={args.steps} eta={args.eta} " + (
            f"noise={args.noise} (yardstick seed {seed})" if args.noise else f"seed={seed}")
        if args.save_npy:
            np.save(args.save_npy if len(args.seeds) == 1 else f"{args.save_npy}.seed{seed}.npy", x)
    t_sample = time.time() - t0
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        sys.exit(f"expected [N,1,28,28], got {list(x.shape)}")
    bad = ~np.isfinite(x)
    if bad.any():
        print(f"warning: {int(bad.sum())} non-finite values replaced by -1")
        x = np.where(bad, -1.0, x).astype(np.float32)
    if x.min() < -1.001 or x.max() > 1.001:
        print(f"warning: values outside [-1,1] (min {x.min():.3f}, max {x.max():.3f}); clamped")
    x = np.clip(x, -1, 1)
    rng = np.random.default_rng(seed)
    yard_x = to_model_space(xt[rng.choice(len(xt), size=min(len(x), len(xt)), replace=False)])
    if args.grid and seed == args.seeds[0]:
        save_grid(x, args.grid)
    return source, score(clf, x, ref), score(clf, yard_x, ref), t_sample


def meets(confident_share, digits_present, fd, yard_fd):
    return confident_share >= 0.85 and digits_present == 10 and fd <= 1.5 * yard_fd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--npy", help="samples [N,1,28,28] float32 in [-1,1]")
    src.add_argument("--diffusers", metavar="MODEL_DIR", help="sample with diffusers from this folder")
    ap.add_argument("--steps", default="ddim50", help="1000 (DDPM), ddimK or dpmK (DPM-Solver++) (with --diffusers)")
    ap.add_argument("-n", type=int, default=500, help="samples to draw (--diffusers)")
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM's eta (--diffusers with ddimK)")
    ap.add_argument("--seed", default="0",
                    help="seed of the diffusers noise and of the yardstick's draw; a comma list (0,1,2,3) "
                         "repeats the whole evaluation per seed and also reports the means")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--noise", help="with --diffusers ddimK or dpmK: replay the engine's noise (`host-cli noise MODEL -n N "
                    "--steps K --seed S -o FILE`) instead of torch's, to score the engine's samples faster")
    ap.add_argument("--save-npy", help="also write the diffusers samples here")
    ap.add_argument("--grid", help="write a PNG grid of (up to 200) samples here")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--classifier", default=os.path.join(HERE, "classifier.pt"))
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    args = ap.parse_args()
    try:
        args.seeds = [int(v) for v in args.seed.split(",")]
    except ValueError:
        ap.error(f"--seed: expected an integer or a comma list of integers, got {args.seed!r}")
    if args.noise and not args.diffusers:
        ap.error("--noise replays the engine's noise through --diffusers MODEL_DIR")
    if (args.npy or args.noise) and len(args.seeds) > 1:
        ap.error("--npy and --noise score one set of samples: give one --seed (the yardstick's)")
    torch.set_num_threads(args.threads)

    clf = load_classifier(args.classifier)
    xt, _, xh, _ = load_split(args.cache)
    _, ref = classify(clf, to_model_space(xh))
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        source, gen, yard, t_sample = evaluate_one(args, seed, clf, ref, xt)
        ok = meets(gen["confident_share"], gen["digits_present"], gen["fd"], yard["fd"])
        runs.append(dict(seed=seed, source=source, generated=gen, yardstick=yard, goal_met=ok,
                         sampling_seconds=t_sample))
        print(f"source: {source}  (sampling {t_sample:.0f}s)")
        print(f"reference: {len(xh)} held-out real digits")
        print(fmt("generated", gen, yard["fd"]))
        print(fmt("yardstick", yard) + "   <- N real training digits vs held-out")
        print(f"goal (conf >= 0.85, 10 digits, FD <= 1.5x yardstick): {'MET' if ok else 'NOT MET'}")
    out = runs[0]
    if len(runs) > 1:
        # FD at a few hundred samples moves a lot with the seed (class proportions alone): the means over seeds are
        # the figure to hold against the goal.
        mean = lambda key, part: float(np.mean([r[part][key] for r in runs]))  # noqa: E731
        gen_fd, yard_fd, conf = mean("fd", "generated"), mean("fd", "yardstick"), mean("confident_share", "generated")
        digits = min(r["generated"]["digits_present"] for r in runs)
        ratios = [r["generated"]["fd"] / r["yardstick"]["fd"] for r in runs]
        ok = meets(conf, digits, gen_fd, yard_fd)
        print(f"mean over seeds {args.seed}: confident={conf:.3f}  digits (fewest)={digits}/10  FD={gen_fd:.3f}  "
              f"yardstick FD={yard_fd:.3f}  ({gen_fd / yard_fd:.2f}x; per seed "
              f"{' '.join(f'{r:.2f}' for r in ratios)})")
        print(f"goal on the means: {'MET' if ok else 'NOT MET'}")
        out = dict(runs=runs, mean=dict(confident_share=conf, digits_present_min=digits, fd=gen_fd,
                                        yardstick_fd=yard_fd, ratio=gen_fd / yard_fd), goal_met=ok)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
