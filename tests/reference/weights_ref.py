#!/usr/bin/python3
"""Independent numpy reference for the battery item `weights` (v2).

For each fixture checkpoint (tests/golden/<fixture>/model.safetensors) it
computes, in float64 with numpy's LAPACK SVD (np.linalg.svd, no Gram
matrices, no QR), every row the item writes and stores them in
tests/golden/battery/weights_<fixture>.json:

  per matrix (layer L, idx 0 query_key_value, 1 attention.dense,
  2 dense_h_to_4h, 3 dense_4h_to_h; layer -1, idx 4 embed_in, 5 embed_out):
    frobenius_norm, spectral_norm (largest singular value),
    effective_rank = exp(-sum p log p), p = s / sum(s)  (Roy & Vetterli 2007),
    stable_rank = |W|_F^2 / s_max^2
  per head (layer L, head h), raw weights, HF's fused layout (rows: head,
  then q/k/v, then head dim; attention.dense columns per head):
    W_QK = W_Q^T W_K and W_OV = W_O W_V as explicit d_model x d_model
    products: their Frobenius and spectral norms
  total_norm: sqrt of the sum of squares of every tensor the model reads.

Run from the repository root:  /usr/bin/python3 tests/reference/weights_ref.py
"""

import os

import numpy as np

from battery_common import GOLDEN, read_config, read_safetensors, write_golden

FIXTURES = ["f32_parallel_rot025", "f32_sequential_rot100"]
IGNORED = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def matrix_rows(rows, a, layer, idx):
    s = np.linalg.svd(a, compute_uv=False)
    fro2 = float(np.sum(a * a))
    p = s / s.sum()
    p = p[p > 0]
    rows.append(["frobenius_norm", layer, -1, idx, float(np.sqrt(fro2))])
    rows.append(["spectral_norm", layer, -1, idx, float(s[0])])
    rows.append(["effective_rank", layer, -1, idx, float(np.exp(-np.sum(p * np.log(p))))])
    rows.append(["stable_rank", layer, -1, idx, fro2 / float(s[0]) ** 2])


def main():
    for fx in FIXTURES:
        d = os.path.join(GOLDEN, fx)
        cfg = read_config(d)
        t = read_safetensors(os.path.join(d, "model.safetensors"))
        C, NL, NH = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
        HS = C // NH
        rows = []
        for l in range(NL):
            p = "gpt_neox.layers.%d." % l
            qkv = t[p + "attention.query_key_value.weight"]
            dense = t[p + "attention.dense.weight"]
            matrix_rows(rows, qkv, l, 0)
            matrix_rows(rows, dense, l, 1)
            matrix_rows(rows, t[p + "mlp.dense_h_to_4h.weight"], l, 2)
            matrix_rows(rows, t[p + "mlp.dense_4h_to_h.weight"], l, 3)
            for h in range(NH):
                q = qkv[(3 * h + 0) * HS:(3 * h + 1) * HS]
                k = qkv[(3 * h + 1) * HS:(3 * h + 2) * HS]
                v = qkv[(3 * h + 2) * HS:(3 * h + 3) * HS]
                o = dense[:, h * HS:(h + 1) * HS]
                for name, m in (("qk", q.T @ k), ("ov", o @ v)):
                    s = np.linalg.svd(m, compute_uv=False)
                    rows.append([name + "_frobenius_norm", l, h, -1, float(np.linalg.norm(m))])
                    rows.append([name + "_spectral_norm", l, h, -1, float(s[0])])
        matrix_rows(rows, t["gpt_neox.embed_in.weight"], -1, 4)
        if not cfg.get("tie_word_embeddings", False):
            matrix_rows(rows, t["embed_out.weight"], -1, 5)
        tot = sum(float(np.sum(a * a)) for n, a in t.items() if not n.endswith(IGNORED))
        rows.append(["total_norm", -1, -1, -1, float(np.sqrt(tot))])
        write_golden("weights_%s.json" % fx, {"item": "weights", "version": 2, "fixture": fx,
                                              "rows": rows})


if __name__ == "__main__":
    main()
