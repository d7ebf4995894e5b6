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


class TinyClass(Tiny):
    """Tiny with a class-label input: an embedding of the label added to the time embedding; pooling, bilinear
    resizing and padding."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Embedding(3, 4)

    def forward(self, x, t, y):
        e = self.mlp(self.emb(t) + self.cls(y)).reshape(len(x), -1, 1, 1)
        h = nn.functional.max_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 2) + e
        h = nn.functional.interpolate(h, size=(4, 4), mode="bilinear", align_corners=True)
        return self.out(torch.cat((h, nn.functional.avg_pool2d(h, 3, 1, 1)), dim=1))


class Sinusoidal(nn.Module):
    """A float timestep through the sinusoidal Mul/Exp/Sin/Cos chain, then a per-channel scale of the sample."""

    def forward(self, x, t):
        f = torch.exp(-torch.arange(2, dtype=torch.float32) * 0.5)
        a = t.float()[:, None] * f[None]
        e = torch.cat((a.sin(), a.cos()), dim=-1)
        return x * e.sum(-1).reshape(-1, 1, 1, 1) + torch.relu(x) / 3.0


class Attention(nn.Module):
    """Token attention: GroupNorm, RMS-style L2 norm, a 1x1 qkv convolution split in three, einsum scores,
    softmax, a pixel-unshuffle transpose, concatenation on the token axis, BatchNorm, multi-head attention."""

    def __init__(self):
        super().__init__()
        self.gn, self.qkv = nn.GroupNorm(2, 2), nn.Conv2d(2, 6, 1)
        self.bn, self.mha = nn.BatchNorm2d(2), nn.MultiheadAttention(2, 1, batch_first=True)
        self.mem = nn.Parameter(torch.randn(2, 1))
        self.out = nn.Conv2d(10, 1, 1)

    def forward(self, x, t):
        h = torch.cat((x, x * t.float().reshape(-1, 1, 1, 1)), dim=1)
        h = nn.functional.normalize(self.gn(h), dim=1)
        q, k, v = self.qkv(h).reshape(1, 6, 16).chunk(3, dim=1)
        k = torch.cat((self.mem[None], k), dim=-1)
        v = torch.cat((self.mem[None], v), dim=-1)
        a = torch.einsum("bci,bcj->bij", q, k).softmax(dim=-1)
        o = torch.einsum("bij,bcj->bci", a, v).reshape(1, 2, 4, 4)
        tok = self.bn(o).reshape(1, 2, 16).transpose(1, 2)
        o = o + self.mha(tok, tok, tok, need_weights=False)[0].transpose(1, 2).reshape(1, 2, 4, 4)
        u = o.reshape(1, 2, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(1, 8, 2, 2)
        u = nn.functional.interpolate(u, scale_factor=2.0, mode="nearest")
        return self.out(torch.cat((u, o.mean(dim=(2, 3), keepdim=True).expand(1, 2, 4, 4)), dim=1))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 4)
    for name, model, t in [("tiny", Tiny(), torch.tensor([3])), ("tiny_class", TinyClass(), (torch.tensor([3]), torch.tensor([1]))),
                          ("sinusoidal", Sinusoidal(), torch.tensor([3.0])),
                          ("attention", Attention(), torch.tensor([3]))]:
        model.eval()
        for dynamo in (True, False):
            path = os.path.join(OUT, f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx")
            kw = {"external_data": False} if dynamo else {"opset_version": 17}
            args = (x, *t) if isinstance(t, tuple) else (x, t)
            names = ["x", "t", "y"][: len(args)]
            torch.onnx.export(model, args, path, dynamo=dynamo, input_names=names, output_names=["out"], **kw)
            print(path, os.path.getsize(path))


if __name__ == "__main__":
    main()
