#!/usr/bin/env python3
"""A trained model through the ONNX route, end to end: train the tutorial UNet on MNIST for a few CPU minutes,
export it with torch.onnx.export, convert it with host-cli, sample with the engine and with PyTorch's own DDIM
loop on the same schedule and the same noise, and score both with the shipped classifier.

    cargo build --release -p host-cli
    nice -n 19 python3 weights/mnist/onnx_check.py [--minutes 20] [-n 500] [--seed 1] [--out DIR]

The network is the tutorial UNet of tests/fixtures/make_onnx_fixtures.py (LayerNorm over (C, H, W), strided
convolutions down, ConvTranspose2d up, an nn.Embedding table of sinusoidal time embeddings) at channels
(10, 20, 40). Training: DDPM objective, linear betas 1e-4..0.02, T = 1000, epsilon, Adam, batch 64, EMA
0.999, one thread, seed 0, for a wall-clock budget (lr 2e-3, 20 minutes by default). Sampling: DDIM, 50 steps, eta 0, clip_sample off; the
engine writes its x_T with `host-cli noise`, PyTorch starts from the same x_T. Output (in --out, default
weights/mnist/.cache/onnx_check/): model.onnx, scheduler_config.json, model.blob, both sample sets, and
report.json with the classifier's confident share (max softmax >= 0.9), digits present, the Frechet distance
of its features to the held-out digits for each, their ratios, and the largest difference between the two
sample sets.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from classifier import load_classifier  # noqa: E402
from evaluate import classify, score  # noqa: E402
from make_onnx_fixtures import TutorialUNet  # noqa: E402
from mnist_data import load_split, to_model_space  # noqa: E402

T = 1000
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": T, "beta_start": 1e-4, "beta_end": 0.02,
             "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": False,
             "variance_type": "fixed_small", "timestep_spacing": "leading", "steps_offset": 0}


def train(minutes, lr, seed=0):
    torch.manual_seed(seed)
    xt, _, _, _ = load_split()
    data = torch.from_numpy(to_model_space(xt))
    model = TutorialUNet(emb=100, c=(10, 20, 40))
    ema = TutorialUNet(emb=100, c=(10, 20, 40))
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float()
    g = torch.Generator().manual_seed(seed)
    t0, step, avg = time.time(), 0, None
    while time.time() - t0 < 60 * minutes:
        idx = torch.randint(0, len(data), (64,), generator=g)
        x0 = data[idx]
        t = torch.randint(0, T, (64,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].reshape(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm, alpha=1 - d)
        step += 1
        avg = loss.item() if avg is None else 0.99 * avg + 0.01 * loss.item()
        if step % 500 == 0:
            print(f"step {step}  loss {avg:.4f}  {time.time() - t0:.0f} s", flush=True)
    return ema.eval(), step, avg


@torch.no_grad()
def ddim_torch(model, x_t, steps):
    from diffusers import DDIMScheduler
    s = DDIMScheduler.from_config(SCHEDULER)
    s.set_timesteps(steps)
    x = torch.from_numpy(x_t)
    out = []
    for i in range(0, len(x), 100):
        xb = x[i:i + 100]
        for t in s.timesteps:
            xb = s.step(model(xb, t.reshape(1).expand(len(xb))), t, xb, eta=0.0).prev_sample
        out.append(xb)
    return torch.cat(out).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(HERE, ".cache", "onnx_check"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "host-cli"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    p = lambda f: os.path.join(a.out, f)  # noqa: E731

    model, steps, loss = train(a.minutes, a.lr)
    x = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model, (x, torch.tensor([500])), p("model.onnx"), dynamo=True, input_names=["x", "t"],
                      output_names=["out"], external_data=False)
    with open(p("scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f)
    run = lambda *args: subprocess.run([a.bin, *args], check=True)  # noqa: E731
    run("convert", p("model.onnx"), "--scheduler", p("scheduler_config.json"), "-o", p("model.blob"))
    run("noise", p("model.blob"), "-n", str(a.n), "--steps", str(a.steps), "--seed", str(a.seed), "-o", p("noise.npy"))
    t0 = time.time()
    run("sample", p("model.blob"), "-n", str(a.n), "--sampler", "ddim", "--steps", str(a.steps), "--seed",
        str(a.seed), "--npy", p("engine.npy"), "-o", p("engine.png"))
    engine_s = time.time() - t0
    noise = np.load(p("noise.npy"))
    t0 = time.time()
    ours_torch = ddim_torch(model, np.ascontiguousarray(noise[0, :a.n], dtype=np.float32), a.steps)
    torch_s = time.time() - t0
    np.save(p("torch.npy"), ours_torch)
    engine = np.load(p("engine.npy"))

    clf = load_classifier()
    _, _, xh, _ = load_split()
    _, ref = classify(clf, to_model_space(xh))
    clip = lambda v: np.clip(v, -1, 1).astype(np.float32)  # noqa: E731
    se, st = score(clf, clip(engine), ref), score(clf, clip(ours_torch), ref)
    report = {
        "train": {"minutes": a.minutes, "lr": a.lr, "steps": steps, "loss_ema": loss},
        "sampling": {"sampler": "ddim", "steps": a.steps, "eta": 0, "n": a.n, "seed": a.seed,
                     "engine_s": engine_s, "torch_s": torch_s},
        "engine": se, "torch": st,
        "confident_ratio": se["confident_share"] / max(st["confident_share"], 1e-9),
        "fd_ratio": se["fd"] / st["fd"],
        "max_abs_diff": float(np.abs(engine - ours_torch).max()),
    }
    with open(p("report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
