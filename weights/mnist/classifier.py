#!/usr/bin/env python3
"""Small CNN digit classifier used to score generated MNIST samples (evaluate.py).

Trained on the same training split as the diffusion model (mnist_data.py), inputs in
model space [-1, 1], shape [N,1,28,28]. Saves the state dict only to classifier.pt and
reports held-out accuracy. The 128-d penultimate layer (`features`) is what evaluate.py
uses for its Frechet distance.

  nice -n 19 python3 classifier.py            # ~ a few minutes on one CPU core
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_data import load_split, to_model_space  # noqa: E402

FEATURE_DIM = 128


class DigitCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),                                       # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),                                       # 7x7
        )
        self.fc = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x):
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x):
        return self.head(self.drop(self.features(x)))


def load_classifier(path=os.path.join(HERE, "classifier.pt")):
    m = DigitCNN()
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return m.eval()


def augment(x, gen, max_shift=2):
    """Random integer translation by up to max_shift pixels (background -1)."""
    n = x.shape[0]
    p = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = p[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    return out


@torch.no_grad()
def accuracy(model, x, y, bs=500):
    model.eval()
    pred = torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])
    return (pred == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--label-smoothing", type=float, default=0.0,
                    help="0 keeps the softmax confident on real digits (0.05 gave only 89%% >= 0.9)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "classifier.pt"))
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    xt, yt, xh, yh = load_split(args.cache)
    xt, xh = torch.from_numpy(to_model_space(xt)), torch.from_numpy(to_model_space(xh))
    yt, yh = torch.from_numpy(yt), torch.from_numpy(yh)
    model = DigitCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(xt) + args.batch_size - 1) // args.batch_size)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        tot, cnt = 0.0, 0
        for i in range(0, len(xt), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = augment(xt[idx], gen), yt[idx]
            loss = F.cross_entropy(model(xb), yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(); sch.step()
            tot += loss.item() * len(idx); cnt += len(idx)
        acc = accuracy(model, xh, yh)
        print(f"epoch {ep + 1}/{args.epochs} loss={tot / cnt:.4f} held-out acc={acc * 100:.2f}% "
              f"({time.time() - t0:.0f}s)", flush=True)
    acc = accuracy(model, xh, yh)
    tmp = args.out + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.out)
    print(f"final held-out accuracy {acc * 100:.2f}% on {len(xh)} digits; saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
