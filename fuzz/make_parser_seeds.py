"""Makes the seed corpora of the checkpoint and config parser fuzz targets, one folder each under fuzz/seeds/:

    pickle/       bare pickle streams: the data.pkl of the .pt fixtures (a state dict, an EMA checkpoint with
                  _rebuild_tensor_v3, real UNet2DModel checkpoints, hostile os.system/eval pickles), the raw
                  pickle of a pre-1.6 checkpoint, and plain containers pickled with protocols 0-5
    torch_zip/    torch.save zip archives: the small .pt fixtures as they are and re-zipped with deflate
    safetensors/  the small .safetensors fixtures, and the UNet2DModel fixtures' headers with every dimension
                  cut to at most 2 (same names and dtypes, zero data)
    npy/          the .npy fixtures (versions 1.0 and 2.0) and small v1.0/v2.0/v3.0 arrays written here
    config/       the UNet2DModel config.json fixtures, and no-config inputs for the `config` target:
                  {"_tensors": {name: shape}, "_sets": ["KEY=VALUE", ...]} from the fixtures' tensor shapes, and
                  one with a zero-dimensional tensor
    scheduler/    the scheduler_config.json fixtures, the distinct configs of the tests/fixtures/scheduler/*.json
                  step cases and a trained_betas config

Each folder also gets the inputs of fuzz/regressions/<target>/: every input a run found failing, kept after the
fix (config/zero-dimensional-tensor.json: a zero-dimensional tensor where the config inference read a leading
dimension; the unit test `infer_zero_dimensional_tensors` in convert/src/diffusers/config.rs covers it).

Every seed is under 64 KiB. Only the Python standard library is needed; nothing is unpickled for real (the
shapes of a .pth fixture are read with an unpickler whose globals are inert stand-ins).

    python3 fuzz/make_parser_seeds.py     # from anywhere; rewrites those six folders

The `blob` target's seeds come from fuzz/make_seeds.py.
"""
import collections, io, json, os, pickle, shutil, struct, zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
REGRESSIONS = os.path.join(ROOT, "fuzz", "regressions")
LOAD = os.path.join(ROOT, "convert", "tests", "data", "load")
FIX = os.path.join(ROOT, "tests", "fixtures")
MAX_SEED = 64 << 10


def fresh(target):
    """Empties the target's seed folder, then puts back the inputs that once made it fail (fuzz/regressions/)."""
    d = os.path.join(SEEDS, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    kept = os.path.join(REGRESSIONS, target)
    for name in sorted(os.listdir(kept)) if os.path.isdir(kept) else []:
        shutil.copyfile(os.path.join(kept, name), os.path.join(d, "regression_" + name))
    return d


def write(d, name, data):
    assert len(data) < MAX_SEED, (name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


def jdump(obj):
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# The torch.save archives among the fixtures, by seed name (the big UNet ones only give their data.pkl).
SMALL_PT = {
    "state_dict": os.path.join(LOAD, "state_dict.pt"),
    "checkpoint_ema": os.path.join(LOAD, "checkpoint_ema.pt"),
    "hostile_os_system": os.path.join(LOAD, "hostile_os_system.pt"),
    "bad_eval": os.path.join(FIX, "bad", "eval.pt"),
    "bad_os_system": os.path.join(FIX, "bad", "os_system.pt"),
}
BIG_PT = {
    "unet_scale_shift": os.path.join(FIX, "unet", "b_scale_shift", "ckpt.pt"),
    "unet_old_attn": os.path.join(FIX, "unet", "c_old_attn", "model.pth"),
    "unet_f16": os.path.join(FIX, "unet", "e_f16", "model_f16.pt"),
}


def data_pkl(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        return z.read(name)


def pickle_seeds():
    d = fresh("pickle")
    for name, path in {**SMALL_PT, **BIG_PT}.items():
        write(d, f"{name}.pkl", data_pkl(path))
    write(d, "legacy_raw.pkl", read(LOAD, "legacy_raw_pickle.pt"))
    # Protocol 0 spells every str with UNICODE, which the reader refuses: its seed holds no strings.
    shared = [1, 2]
    p0 = {1: [1, -2, 300, 70000, 2**40, 2**70, -(2**100)], 2: (0.5, -1e300, True, False, None),
          3: ((), (1,), (1, 2), (1, 2, 3)), 4: {1, 2, 3}, 5: frozenset([4]), 6: {7: {}, None: []}, 8: [shared, shared]}
    write(d, "plain_p0.pkl", pickle.dumps(p0, protocol=0))
    plain = collections.OrderedDict(
        [("a", p0[1]), ("f", p0[2]), ("t", p0[3]), ("s", p0[4]), ("fs", p0[5]), ("b", b"\x00\xff"),
         ("u", "\u00e9\u4e2d"), ("n", {"k": {}, 7: [], None: "v"}), ("memo", [shared, shared])])
    for proto in range(1, 6):
        if proto == 5:
            plain["ba"] = bytearray(b"xy")  # BYTEARRAY8; older protocols reduce builtins.bytearray
        write(d, f"plain_p{proto}.pkl", pickle.dumps(plain, protocol=proto))


def torch_zip_seeds():
    d = fresh("torch_zip")
    for name, path in SMALL_PT.items():
        write(d, f"{name}.pt", read(path))
    write(d, "legacy_raw_pickle.pt", read(LOAD, "legacy_raw_pickle.pt"))
    for name in ("state_dict", "checkpoint_ema"):
        buf = io.BytesIO()
        with zipfile.ZipFile(SMALL_PT[name]) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                entry = zipfile.ZipInfo(info.filename, info.date_time)  # keeps the seed byte-for-byte stable
                dst.writestr(entry, src.read(info), zipfile.ZIP_DEFLATED)
        write(d, f"{name}_deflate.pt", buf.getvalue())


ST_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "BOOL": 1, "U8": 1}


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def safetensors_file(tensors, metadata=None):
    """`tensors`: (name, dtype, shape) in order; zero data."""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        n = ST_SIZE[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(off)


def shrunk(path):
    h = safetensors_header(path)
    meta = h.pop("__metadata__", None)
    items = sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return safetensors_file([(k, v["dtype"], [min(s, 2) for s in v["shape"]]) for k, v in items], meta)


def safetensors_seeds():
    d = fresh("safetensors")
    write(d, "mixed.safetensors", read(LOAD, "mixed.safetensors"))
    write(d, "not_a_unet.safetensors", read(FIX, "bad", "not_a_unet.safetensors"))
    write(d, "unet_shrunk.safetensors", shrunk(os.path.join(FIX, "unet", "d_safetensors", "model.safetensors")))
    write(d, "unet_f16_shrunk.safetensors", shrunk(os.path.join(FIX, "unet", "e_f16", "model_f16.safetensors")))
    write(d, "all_dtypes.safetensors", safetensors_file(
        [("a", "F32", [2, 3]), ("b", "F16", [4]), ("c", "BF16", []), ("d", "F64", [1, 1]), ("e", "I64", [2]),
         ("f", "BOOL", [3]), ("g", "F32", [0, 5])], {"format": "pt"}))


def npy(descr, shape, data, version=(1, 0)):
    shape_s = "(" + "".join(f"{s}, " for s in shape).rstrip(" ") + ")" if len(shape) != 1 else f"({shape[0]},)"
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}".encode("utf-8")
    pre = 10 if version[0] == 1 else 12
    header += b" " * (-(pre + len(header) + 1) % 64) + b"\n"
    size = struct.pack("<H", len(header)) if version[0] == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes(version) + size + header + data


def npy_seeds():
    d = fresh("npy")
    for f in ("f32_2x3.npy", "f64_v2.npy", "f16_scalar.npy"):
        write(d, f, read(LOAD, f))
    write(d, "fixture_x.npy", read(FIX, "unet", "c_old_attn", "x.npy"))
    write(d, "f32_v3_2x2.npy", npy("<f4", [2, 2], struct.pack("<4f", 1, 2, 3, 4), (3, 0)))
    write(d, "f16_v2_4.npy", npy("<f2", [4], bytes(8), (2, 0)))
    write(d, "f64_empty_0x3.npy", npy("<f8", [0, 3], b""))
    write(d, "f4_big_endian.npy", npy(">f4", [1], bytes(4)))


class _Stub:
    """Inert stand-in for every global of a checkpoint pickle; `_rebuild_tensor*` return the shape."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args):
        if self.name.startswith("_rebuild_tensor"):
            return ("shape", list(args[2]))
        if self.name.startswith("_rebuild_parameter"):
            return args[0]
        if self.name == "OrderedDict":
            return collections.OrderedDict()
        return None


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _Stub(name)

    def persistent_load(self, pid):
        return None


def pt_shapes(path, key=None):
    root = _ShapeUnpickler(io.BytesIO(data_pkl(path))).load()
    root = root[key] if key else root
    return {k: v[1] for k, v in root.items() if isinstance(v, tuple) and v[:1] == ("shape",)}


def st_shapes(path):
    return {k: v["shape"] for k, v in safetensors_header(path).items() if k != "__metadata__"}


MUST_GIVE = ("sample_size", "norm_num_groups", "attention_head_dim")


def config_seeds():
    d = fresh("config")
    unet = os.path.join(FIX, "unet")
    configs = {
        "a_ddpm": os.path.join(unet, "a_ddpm", "unet", "config.json"),
        "b_scale_shift": os.path.join(unet, "b_scale_shift", "config.json"),
        "d_safetensors": os.path.join(unet, "d_safetensors", "config.json"),
        "e_f16": os.path.join(unet, "e_f16", "config.json"),
        "bad_unsupported": os.path.join(FIX, "bad", "unsupported_config", "config.json"),
    }
    for name, path in configs.items():
        write(d, f"{name}.json", read(path))
    # No-config inputs: tensor shapes plus the --set options the shapes cannot tell.
    infer = {
        "a_ddpm": (st_shapes(os.path.join(unet, "a_ddpm", "unet", "diffusion_pytorch_model.safetensors")), "a_ddpm"),
        "d_safetensors": (st_shapes(os.path.join(unet, "d_safetensors", "model.safetensors")), "d_safetensors"),
        "b_scale_shift": (pt_shapes(os.path.join(unet, "b_scale_shift", "ckpt.pt"), "ema"), "b_scale_shift"),
        "c_old_attn": (pt_shapes(os.path.join(unet, "c_old_attn", "model.pth")), None),
    }
    for name, (shapes, cfg) in infer.items():
        sets = []
        if cfg is not None:
            c = json.loads(read(configs[cfg]))
            keys = MUST_GIVE + (("attn_norm_num_groups",) if c.get("attn_norm_num_groups") is not None else ())
            sets = [f"{k}={json.dumps(c[k])}" for k in keys]
        else:
            sets = ["sample_size=8", "norm_num_groups=4", "attention_head_dim=4"]
        write(d, f"infer_{name}.json", jdump({"_tensors": shapes, "_sets": sets}))
    # A zero-dimensional tensor where infer reads a leading dimension (a fuzz finding, fixed).
    zero_dim = {"conv_in.weight": [4, 1, 3, 3], "conv_out.weight": [1, 4, 3, 3],
                "down_blocks.0.resnets.0.conv1.weight": []}
    write(d, "infer_zero_dim.json", jdump({"_tensors": zero_dim, "_sets": ["sample_size=8", "norm_num_groups=4"]}))


def scheduler_seeds():
    d = fresh("scheduler")
    replay = os.path.join(FIX, "replay")
    for case in sorted(os.listdir(replay)):
        p = os.path.join(replay, case, "scheduler_config.json")
        if os.path.isfile(p):
            write(d, f"replay_{case}.json", read(p))
    write(d, "a_ddpm.json", read(FIX, "unet", "a_ddpm", "scheduler", "scheduler_config.json"))
    seen = set()
    sched = os.path.join(FIX, "scheduler")
    for f in sorted(os.listdir(sched)):
        if not f.endswith(".json"):
            continue
        for case in json.loads(read(sched, f)).get("cases", []):
            blob = jdump(case["config"])
            if blob not in seen:
                seen.add(blob)
                write(d, f"{f[:-len('.json')]}_{case['name']}.json", blob)
    write(d, "trained_betas.json", jdump({
        "_class_name": "DDPMScheduler", "num_train_timesteps": 10,
        "trained_betas": [0.001 * (i + 1) for i in range(10)], "variance_type": "learned_range",
        "prediction_type": "v_prediction", "unknown_option": 1}))


for make in (pickle_seeds, torch_zip_seeds, safetensors_seeds, npy_seeds, config_seeds, scheduler_seeds):
    make()
total = sum(os.path.getsize(os.path.join(r, f)) for t in ("pickle", "torch_zip", "safetensors", "npy", "config",
            "scheduler") for r, _, fs in os.walk(os.path.join(SEEDS, t)) for f in fs)
print(f"seeds in {SEEDS}: {total} bytes")
