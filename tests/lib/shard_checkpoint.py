#!/usr/bin/python3
"""Split a single-file safetensors checkpoint into two shards, as
HuggingFace's save_pretrained(max_shard_size=...) lays them out:
model-00001-of-00002.safetensors, model-00002-of-00002.safetensors and
model.safetensors.index.json ({"metadata": {"total_size": N},
"weight_map": {tensor: shard}}), config.json copied.  The first shard takes
the tensors in name order until half the bytes.  Standard library only.

Usage: shard_checkpoint.py SRC_DIR DST_DIR
"""

import json
import os
import shutil
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    return header, data, meta


def write(path, tensors, meta):
    header, off, parts = {}, 0, []
    for name, info, raw in tensors:
        header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [off, off + len(raw)]}
        parts.append(raw)
        off += len(raw)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(parts))
    os.rename(path + ".tmp", path)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    header, data, meta = read(os.path.join(src, "model.safetensors"))
    items = sorted((name, info, data[info["data_offsets"][0]:info["data_offsets"][1]]) for name, info in header.items())
    total = sum(len(raw) for _, _, raw in items)
    first, acc = [], 0
    while items and (acc < total / 2 or not first):
        first.append(items.pop(0))
        acc += len(first[-1][2])
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    write(os.path.join(dst, names[0]), first, meta)
    write(os.path.join(dst, names[1]), items, meta)
    index = {"metadata": {"total_size": total},
             "weight_map": {n: names[0] for n, _, _ in first} | {n: names[1] for n, _, _ in items}}
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))


if __name__ == "__main__":
    main()
