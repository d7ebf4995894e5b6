"""Makes the seed corpus for the `blob` fuzz target: two tiny UNet2DModel blobs (with and without attention,
f32, f16 and int8), small enough for libFuzzer's default input sizes.

    python3 fuzz/make_seeds.py        # needs torch + diffusers, and a built host-cli (cargo build -p host-cli)

The parser targets' seeds (pickle, torch_zip, safetensors, npy, config, scheduler) come from
fuzz/make_parser_seeds.py, which needs only the standard library.
"""
import os, subprocess, tempfile

import torch
from diffusers import UNet2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds", "blob")
CLI = os.path.join(ROOT, "target", "debug", "host-cli")

torch.manual_seed(0)
os.makedirs(OUT, exist_ok=True)
configs = {
    "plain": dict(down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), add_attention=False),
    "attn": dict(down_block_types=("AttnDownBlock2D",), up_block_types=("AttnUpBlock2D",), num_class_embeds=3,
                 resnet_time_scale_shift="scale_shift", attn_norm_num_groups=2, center_input_sample=True),
}
for name, extra in configs.items():
    model = UNet2DModel(sample_size=2, in_channels=1, out_channels=1, block_out_channels=(4,), layers_per_block=1,
                        norm_num_groups=2, attention_head_dim=2, **extra)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        for p in ("f32", "f16", "int8"):
            calib = ["--calibration-trajectories", "1", "--calibration-steps", "4"] if p == "int8" else []
            subprocess.run([CLI, "convert", d, "-o", os.path.join(OUT, f"{name}-{p}.blob"), "--precision", p, *calib],
                           check=True)
print("seeds in", OUT)
