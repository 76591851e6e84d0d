"""Helpers shared by the battery reference scripts (numpy only).

read_safetensors: the tensors of a single-file safetensors checkpoint as
float64 numpy arrays, read by hand (u64 little-endian header length, JSON
header, raw little-endian data), so the references share no code with the C
reader.  write_golden: the JSON golden file the C tests read.
"""

import json
import os
import struct

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden")


def _bf16_to_f32(raw):
    u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u.view(np.float32)


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        raw = data[lo:hi]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2")
        elif dt == "BF16":
            a = _bf16_to_f32(raw)
        else:
            continue  # legacy buffers (BOOL masks) are not weights
        out[name] = a.astype(np.float64).reshape(info["shape"])
    return out


def read_config(fixture_dir):
    with open(os.path.join(fixture_dir, "config.json")) as f:
        return json.load(f)


def write_golden(name, doc):
    path = os.path.join(GOLDEN, "battery", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=0, sort_keys=True)
        f.write("\n")
    print("wrote", os.path.relpath(path, ROOT), len(doc["rows"]), "rows")
