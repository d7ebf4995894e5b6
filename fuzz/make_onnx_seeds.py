#!/usr/bin/env python3
"""Seeds for the `onnx` fuzz target: tiny networks with every kind of node the lowering handles, through both
of torch's exporters, small enough for the fuzzer's input limit.

    python3 fuzz/make_onnx_seeds.py      # writes fuzz/seeds/onnx/*.onnx
"""

import os

import torch
import torch.nn as nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "onnx")


class Tiny(nn.Module):
    """4x4 sample; embedding table of 8 timesteps; LayerNorm, convolutions, transposed convolution, SiLU, GELU."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(8, 4)
        self.mlp = nn.Sequential(nn.Linear(4, 2), nn.SiLU())
        self.ln = nn.LayerNorm((1, 4, 4))
        self.down = nn.Conv2d(1, 2, 3, 2, 1)
        self.up = nn.ConvTranspose2d(2, 2, 4, 2, 1)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x, t):
        e = self.mlp(self.emb(t)).reshape(len(x), -1, 1, 1)
        h = self.up(nn.functional.gelu(self.down(self.ln(x))) + e)
        return self.out(torch.cat((h, torch.sigmoid(h) * 2.0 - 1.0), dim=1))


class Sinusoidal(nn.Module):
    """A float timestep through the sinusoidal Mul/Exp/Sin/Cos chain, then a per-channel scale of the sample."""

    def forward(self, x, t):
        f = torch.exp(-torch.arange(2, dtype=torch.float32) * 0.5)
        a = t.float()[:, None] * f[None]
        e = torch.cat((a.sin(), a.cos()), dim=-1)
        return x * e.sum(-1).reshape(-1, 1, 1, 1) + torch.relu(x) / 3.0


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 4)
    for name, model, t in [("tiny", Tiny(), torch.tensor([3])), ("sinusoidal", Sinusoidal(), torch.tensor([3.0]))]:
        model.eval()
        for dynamo in (True, False):
            path = os.path.join(OUT, f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx")
            kw = {"external_data": False} if dynamo else {"opset_version": 17}
            torch.onnx.export(model, (x, t), path, dynamo=dynamo, input_names=["x", "t"], output_names=["out"], **kw)
            print(path, os.path.getsize(path))


if __name__ == "__main__":
    main()
