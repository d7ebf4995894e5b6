#!/usr/bin/env python3
"""Generates the fixtures for host-cli/src/load/*.rs tests.

Run from anywhere:  python3 convert/tests/data/load/make.py [--no-torch]

Only the standard library is required. When `torch` (>= 2.3) is importable the
torch checkpoints are written by the real `torch.save`; otherwise an equivalent
archive (same pickle opcodes, same zip layout) is built by hand with `pickle`
and `zipfile`, using stand-in `torch` modules so the pickle references the same
globals (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`, ...).

Files:
  state_dict.pt          OrderedDict state dict: f32, f16, bf16, f64, a transposed view,
                         a view with storage offset 3, a 0-dim tensor, an empty tensor,
                         a tensor whose storage location is "cuda:0", an nn.Parameter,
                         an int64 `num_batches_tracked` and a bool mask (both skipped).
  checkpoint_ema.pt      {'model': {'w', 'u16', 'f8'}, 'ema': {'w'}, 'step': 1000, 'meta': {...}}:
                         'u16'/'f8' are written with _rebuild_tensor_v3 on an UntypedStorage;
                         'meta' holds bytes, torch.Size, torch.device, a dtype, a big int, a set
  hostile_os_system.pt   zip whose data.pkl calls os.system via REDUCE (must be refused)
  legacy_raw_pickle.pt   raw pickle, like torch.save before 1.6 (not a zip)
  mixed.safetensors      F32, F16, BF16, F64 and an I64 tensor (skipped by the loader)
  f32_2x3.npy            v1.0 float32, shape (2, 3)
  f64_v2.npy             v2.0 float64, shape (3,)
  f16_scalar.npy         v1.0 float16, shape ()
"""

import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

OUT = os.path.dirname(os.path.abspath(__file__))
FIXED_TIME = (1980, 1, 1, 0, 0, 0)

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def path(name):
    return os.path.join(OUT, name)


# ----------------------------------------------------------------------------------------------
# Tensor values shared by both generators (the Rust tests assert these exact numbers).
RAMP12 = [float(i) for i in range(12)]
BIAS = [0.5, -1.0, 2.0]
HALF = [0.0, 0.5, -1.0, 1.5, 2.0, -2.5]
BF16 = [1.0, -2.0, 0.25, 3.0]
DOUBLE = [0.1, 1e10]
CUDA = [42.0, -42.0]
PARAM = [1.0, 2.0]


# ----------------------------------------------------------------------------------------------
# Real torch
def torch_fixtures():
    import torch

    ramp = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    base = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    cuda = torch.tensor(CUDA)
    sd = collections.OrderedDict()
    sd["lin.weight"] = ramp
    sd["lin.bias"] = torch.tensor(BIAS)
    sd["half"] = torch.tensor(HALF, dtype=torch.float16).reshape(2, 3)
    sd["bf16"] = torch.tensor(BF16, dtype=torch.bfloat16)
    sd["double"] = torch.tensor(DOUBLE, dtype=torch.float64)
    sd["transposed"] = ramp.t()
    sd["offset"] = base[1:3]
    sd["scalar"] = torch.tensor(7.25)
    sd["empty"] = torch.zeros(0, 5)
    sd["cuda"] = cuda
    sd["param"] = torch.nn.Parameter(torch.tensor(PARAM))
    sd["bn.num_batches_tracked"] = torch.tensor(5)
    sd["mask"] = torch.tensor([True, False])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])

    # Pretend the `cuda` tensor lived on a GPU: only its storage gets location "cuda:0".
    cuda_ptr = cuda.untyped_storage().data_ptr()
    orig = torch.serialization.location_tag
    torch.serialization.location_tag = lambda s: "cuda:0" if s.data_ptr() == cuda_ptr else orig(s)
    try:
        torch.save(sd, path("state_dict.pt"))
    finally:
        torch.serialization.location_tag = orig

    ckpt = {
        "model": collections.OrderedDict(
            w=torch.ones(2),
            u16=torch.tensor([1, 2], dtype=torch.uint16),
            f8=torch.zeros(2, dtype=torch.float8_e4m3fn),
        ),
        "ema": collections.OrderedDict(w=torch.full((2,), 2.0)),
        "step": 1000,
        "meta": meta_values(torch),
    }
    torch.save(ckpt, path("checkpoint_ema.pt"))


def meta_values(torch):
    """Non-tensor values of the kinds training checkpoints carry."""
    return {
        "bytes": b"\x00\xff",
        "size": torch.Size([2, 3]),
        "device": torch.device("cuda", 0),
        "dtype": torch.float16,
        "big": 2**70,
        "set": {1},
        "list": [1.5, None, True, "s", (1, 2)],
    }


# ----------------------------------------------------------------------------------------------
# Hand-built equivalent (no torch)
def install_fake_torch():
    """Registers stand-in `torch` / `torch._utils` modules so pickle writes torch's globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def stub(name):
        def f(*args):
            raise RuntimeError("stand-in only")

        f.__module__ = "torch._utils"
        f.__name__ = f.__qualname__ = name
        setattr(utils, name, f)

    stub("_rebuild_tensor_v2")
    stub("_rebuild_tensor_v3")
    stub("_rebuild_parameter")
    for name in ["FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "BoolStorage"]:
        cls = type(name, (), {})
        cls.__module__ = "torch"
        setattr(torch, name, cls)
    storage = types.ModuleType("torch.storage")
    storage.UntypedStorage = type("UntypedStorage", (), {"__module__": "torch.storage"})

    class dtype:
        """`torch.<name>`: pickled as a global reference."""

        def __init__(self, name):
            self.name = name

        def __reduce__(self):
            return self.name

    dtype.__module__, dtype.__qualname__ = "torch", "dtype"
    for name in ["float16", "uint16", "float8_e4m3fn"]:
        setattr(torch, name, dtype(name))

    class Size(tuple):
        def __reduce__(self):
            return (Size, (tuple(self),))

    class device:
        def __init__(self, kind, index):
            self.args = (kind, index)

        def __reduce__(self):
            return (device, self.args)

    for cls in (Size, device):
        cls.__module__, cls.__qualname__ = "torch", cls.__name__
        setattr(torch, cls.__name__, cls)
    torch._utils = utils
    torch.storage = storage
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    sys.modules["torch.storage"] = storage
    return torch


class Storage:
    """A storage: element class, zip key, location, numel, raw bytes."""

    def __init__(self, cls, key, location, fmt, values):
        self.cls, self.key, self.location = cls, key, location
        self.numel = len(values)
        self.data = b"".join(pack(fmt, v) for v in values)


def pack(fmt, v):
    if fmt == "bf16":
        return struct.pack("<f", v)[2:]  # exact for the values used (low mantissa bits zero)
    return struct.pack("<" + fmt, v)


class View:
    """A tensor: pickles as `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


class View3:
    """A tensor of a dtype without a legacy storage class, as torch >= 2.1 writes it:
    `_rebuild_tensor_v3(untyped_storage, offset, size, stride, False, OrderedDict(), dtype)`."""

    def __init__(self, storage, size, dtype):
        self.args = (storage, 0, tuple(size), (1,), False, collections.OrderedDict(), dtype)

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v3, self.args)


class Param:
    """An nn.Parameter: pickles as `_rebuild_parameter(tensor, requires_grad, OrderedDict())`."""

    def __init__(self, view):
        self.view = view

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_parameter, (self.view, True, collections.OrderedDict()))


def contiguous(storage, size, offset=0):
    stride, acc = [], 1
    for d in reversed(size):
        stride.insert(0, acc)
        acc *= d
    return View(storage, offset, size, stride)


def write_archive(filename, pickled, storages):
    """Writes the torch.save zip layout: <stem>/data.pkl, byteorder, data/<key>, version."""
    stem = os.path.splitext(filename)[0]
    with zipfile.ZipFile(path(filename), "w", zipfile.ZIP_STORED) as z:

        def add(name, data):
            z.writestr(zipfile.ZipInfo(f"{stem}/{name}", FIXED_TIME), data)

        add("data.pkl", pickled)
        add("byteorder", b"little")
        for s in storages:
            add(f"data/{s.key}", s.data)
        add("version", b"3\n")


def dump(obj, storages):
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.persistent_id = lambda o: ("storage", o.cls, o.key, o.location, o.numel) if isinstance(o, Storage) else None
    p.dump(obj)
    return buf.getvalue()


def hand_fixtures():
    torch = install_fake_torch()
    s_ramp = Storage(torch.FloatStorage, "0", "cpu", "f", RAMP12)
    s_bias = Storage(torch.FloatStorage, "1", "cpu", "f", BIAS)
    s_half = Storage(torch.HalfStorage, "2", "cpu", "e", HALF)
    s_bf16 = Storage(torch.BFloat16Storage, "3", "cpu", "bf16", BF16)
    s_dbl = Storage(torch.DoubleStorage, "4", "cpu", "d", DOUBLE)
    s_base = Storage(torch.FloatStorage, "5", "cpu", "f", RAMP12)
    s_scalar = Storage(torch.FloatStorage, "6", "cpu", "f", [7.25])
    s_empty = Storage(torch.FloatStorage, "7", "cpu", "f", [])
    s_cuda = Storage(torch.FloatStorage, "8", "cuda:0", "f", CUDA)
    s_param = Storage(torch.FloatStorage, "9", "cpu", "f", PARAM)
    s_nbt = Storage(torch.LongStorage, "10", "cpu", "q", [5])
    s_mask = Storage(torch.BoolStorage, "11", "cpu", "B", [1, 0])
    storages = [s_ramp, s_bias, s_half, s_bf16, s_dbl, s_base, s_scalar, s_empty, s_cuda, s_param, s_nbt, s_mask]

    sd = collections.OrderedDict()
    sd["lin.weight"] = contiguous(s_ramp, [3, 4])
    sd["lin.bias"] = contiguous(s_bias, [3])
    sd["half"] = contiguous(s_half, [2, 3])
    sd["bf16"] = contiguous(s_bf16, [4])
    sd["double"] = contiguous(s_dbl, [2])
    sd["transposed"] = View(s_ramp, 0, [4, 3], [1, 4])
    sd["offset"] = View(s_base, 3, [2, 3], [3, 1])
    sd["scalar"] = View(s_scalar, 0, [], [])
    sd["empty"] = View(s_empty, 0, [0, 5], [5, 1])
    sd["cuda"] = contiguous(s_cuda, [2])
    sd["param"] = Param(contiguous(s_param, [2]))
    sd["bn.num_batches_tracked"] = View(s_nbt, 0, [], [])
    sd["mask"] = contiguous(s_mask, [2])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    write_archive("state_dict.pt", dump(sd, storages), storages)

    s_model = Storage(torch.FloatStorage, "0", "cpu", "f", [1.0, 1.0])
    s_u16 = Storage(torch.storage.UntypedStorage, "1", "cpu", "H", [1, 2])
    s_u16.numel = len(s_u16.data)  # untyped storages count bytes
    s_f8 = Storage(torch.storage.UntypedStorage, "2", "cpu", "B", [0, 0])
    s_ema = Storage(torch.FloatStorage, "3", "cpu", "f", [2.0, 2.0])
    ckpt = {
        "model": collections.OrderedDict(
            w=contiguous(s_model, [2]),
            u16=View3(s_u16, [2], torch.uint16),
            f8=View3(s_f8, [2], torch.float8_e4m3fn),
        ),
        "ema": collections.OrderedDict(w=contiguous(s_ema, [2])),
        "step": 1000,
        "meta": meta_values(torch),
    }
    storages = [s_model, s_u16, s_f8, s_ema]
    write_archive("checkpoint_ema.pt", dump(ckpt, storages), storages)


# ----------------------------------------------------------------------------------------------
# Torch-independent fixtures
def hostile_fixture():
    """data.pkl = os.system('touch /tmp/ddpm_load_test_pwned'), written opcode by opcode.

    NEVER pickle.load this file: Python's unpickler would run the command.
    """
    cmd = b"touch /tmp/ddpm_load_test_pwned"
    pkl = (
        b"\x80\x02"  # PROTO 2
        + b"cos\nsystem\n"  # GLOBAL 'os system'
        + b"q\x00"  # BINPUT 0
        + b"X" + struct.pack("<I", len(cmd)) + cmd  # BINUNICODE
        + b"q\x01"  # BINPUT 1
        + b"\x85"  # TUPLE1
        + b"q\x02"  # BINPUT 2
        + b"R"  # REDUCE
        + b"q\x03"  # BINPUT 3
        + b"."  # STOP
    )
    with zipfile.ZipFile(path("hostile_os_system.pt"), "w", zipfile.ZIP_STORED) as z:
        for name, data in [("data.pkl", pkl), ("byteorder", b"little"), ("version", b"3\n")]:
            z.writestr(zipfile.ZipInfo(f"hostile_os_system/{name}", FIXED_TIME), data)


def legacy_fixture():
    """What torch.save(..., _use_new_zipfile_serialization=False) starts with: magic, protocol, ..."""
    with open(path("legacy_raw_pickle.pt"), "wb") as f:
        f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))


def safetensors_fixture():
    tensors = [
        ("f32", "F32", [2, 3], b"".join(struct.pack("<f", float(i)) for i in range(6))),
        ("f16", "F16", [3], b"".join(struct.pack("<e", v) for v in [0.5, -1.0, 65504.0])),
        ("bf16", "BF16", [2], b"".join(pack("bf16", v) for v in [1.0, -3.0])),
        ("f64", "F64", [], struct.pack("<d", 0.125)),
        ("i64", "I64", [1], struct.pack("<q", 7)),
    ]
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    blob = struct.pack("<Q", len(h)) + h + data
    with open(path("mixed.safetensors"), "wb") as f:
        f.write(blob)
    try:  # cross-check with the reference implementation when installed
        import safetensors

        parsed = dict(safetensors.deserialize(blob))
        assert parsed["bf16"]["dtype"] == "BF16" and parsed["f32"]["shape"] == [2, 3], parsed
    except ImportError:
        pass


def npy_bytes(descr, shape, raw, version=1):
    dims = "(%d,)" % shape[0] if len(shape) == 1 else "(" + ", ".join(str(d) for d in shape) + ")"
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, dims)
    prefix = 10 if version == 1 else 12
    header += " " * (-(prefix + len(header) + 1) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode("latin1") + raw


def npy_fixtures():
    f32 = [0.0, 1.0, 2.0, 3.0, 4.0, 5.5]
    files = {
        "f32_2x3.npy": npy_bytes("<f4", [2, 3], b"".join(struct.pack("<f", v) for v in f32)),
        "f64_v2.npy": npy_bytes("<f8", [3], b"".join(struct.pack("<d", v) for v in [0.5, -1.0, 1e-3]), version=2),
        "f16_scalar.npy": npy_bytes("<f2", [], struct.pack("<e", -2.5)),
    }
    for name, blob in files.items():
        with open(path(name), "wb") as f:
            f.write(blob)
    try:  # cross-check the hand-written layout against numpy when installed
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.array(f32, dtype="<f4").reshape(2, 3))
        assert buf.getvalue() == files["f32_2x3.npy"], "np.save layout differs"
        assert np.load(path("f64_v2.npy")).tolist() == [0.5, -1.0, 1e-3]
        assert np.load(path("f16_scalar.npy")).shape == ()
    except ImportError:
        pass


if __name__ == "__main__":
    if "--no-torch" in sys.argv[1:]:  # exercise the hand-built path even where torch is installed
        HAVE_TORCH = False
    if HAVE_TORCH:
        torch_fixtures()
    else:
        hand_fixtures()
    hostile_fixture()
    legacy_fixture()
    safetensors_fixture()
    npy_fixtures()
    print("torch checkpoints written by", "torch.save" if HAVE_TORCH else "the hand-built pickler")
