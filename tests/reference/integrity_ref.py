#!/usr/bin/python3
"""Independent numpy reference for the battery item `integrity` (v1).

For each fixture checkpoint (tests/golden/<fixture>/model.safetensors) it
computes the count sketches the item writes, from the tensors as stored
(float32 widened to float64), and stores every row in
tests/golden/battery/integrity_<fixture>.json:

  For a tensor named N (HuggingFace's name) of n elements in row-major
  order: state = FNV-1a 64 of N's bytes xor 0x494e544547524954 ("INTEGRIT");
  element i takes z = splitmix64's (i+1)-th output from that state
  (z = mix(state + (i+1) * 0x9e3779b97f4a7c15)); it adds +-w_i (minus when
  bit 63 of z is set) to bucket z & 255 of the whole-model sketch and to
  bucket (z >> 8) & 63 of the tensor's own sketch.
  sketch (layer -1, head -1, idx k), tensor_sketch (layer, head = slot,
  idx k), tensor_norm (idx -1), param_norm.

The sums are numpy's (np.bincount per tensor, then tensor by tensor), so
they differ from the C item's element-by-element order by rounding only:
the C test allows |diff| <= 1e-12 * param_norm.

Run from the repository root:  /usr/bin/python3 tests/reference/integrity_ref.py
"""

import os

import numpy as np

from battery_common import GOLDEN, read_config, read_safetensors, write_golden

FIXTURES = ["f32_parallel_rot025", "f32_sequential_rot100"]
K, KT = 256, 64
SALT = 0x494E544547524954
GAMMA = np.uint64(0x9E3779B97F4A7C15)
M64 = (1 << 64) - 1
LAYER_TENSORS = [
    "input_layernorm.weight", "input_layernorm.bias", "attention.query_key_value.weight",
    "attention.query_key_value.bias", "attention.dense.weight", "attention.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias",
]


def name_hash(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h ^ SALT


def splitmix_outputs(state, n):
    with np.errstate(over="ignore"):
        z = np.uint64(state) + np.arange(1, n + 1, dtype=np.uint64) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sketch(x, name):
    x = x.reshape(-1)
    z = splitmix_outputs(name_hash(name), x.size)
    v = np.where((z >> np.uint64(63)) == 1, -x, x)
    whole = np.bincount((z & np.uint64(K - 1)).astype(np.int64), weights=v, minlength=K)
    own = np.bincount(((z >> np.uint64(8)) & np.uint64(KT - 1)).astype(np.int64), weights=v, minlength=KT)
    return whole, own, float(np.sum(x * x))


def main():
    for fx in FIXTURES:
        d = os.path.join(GOLDEN, fx)
        cfg = read_config(d)
        t = read_safetensors(os.path.join(d, "model.safetensors"))
        order = [("gpt_neox.embed_in.weight", -1, 0)]
        for l in range(cfg["num_hidden_layers"]):
            for k, s in enumerate(LAYER_TENSORS):
                order.append(("gpt_neox.layers.%d.%s" % (l, s), l, k))
        order += [("gpt_neox.final_layer_norm.weight", -1, 1), ("gpt_neox.final_layer_norm.bias", -1, 2)]
        if not cfg.get("tie_word_embeddings", False):
            order.append(("embed_out.weight", -1, 3))
        rows, whole, total = [], np.zeros(K), 0.0
        for name, layer, head in order:
            if name not in t:
                continue  # a bias the model lacks
            w, own, ss = sketch(t[name], name)
            whole += w
            total += ss
            rows += [["tensor_sketch", layer, head, k, float(own[k])] for k in range(KT)]
            rows.append(["tensor_norm", layer, head, -1, float(np.sqrt(ss))])
        rows += [["sketch", -1, -1, k, float(whole[k])] for k in range(K)]
        rows.append(["param_norm", -1, -1, -1, float(np.sqrt(total))])
        write_golden("integrity_%s.json" % fx, {"rows": rows})


if __name__ == "__main__":
    main()
