#!/usr/bin/python3
"""Independent numpy reference for the battery item `composition` (v1).

Composition scores (Elhage et al. 2021) as TransformerLens computes them
(`all_composition_scores` on a model processed with fold_ln and
center_writing_weights), written here in TransformerLens's row-vector
convention with explicit d_model x d_model products in float64 -- none of
the C item's Gram-matrix algebra:

  per layer, from HF's fused query_key_value weight (rows: head, then
  q/k/v, then head dim) and attention.dense:
    W_Q[h] = Wqkv[(3h+0)HS:(3h+1)HS].T * ln1.w[:, None]   [d_model, d_head]
    (same for W_K, W_V), then each centred over d_model (fold_ln);
    W_O[h] = dense[:, h HS:(h+1) HS].T                      [d_head, d_model]
    centred over d_model (center_writing_weights)
    OV = W_V @ W_O, QK = W_Q @ W_K.T
  score(A, B) = |A B|_F / (|A|_F |B|_F)
    q_composition[L2,h2,L1*NH+h1] = score(OV[L1,h1], QK[L2,h2])
    k_composition                 = score(OV[L1,h1], QK[L2,h2].T)
    v_composition                 = score(OV[L1,h1], OV[L2,h2])

The random baselines re-create the C item's random layers bit for bit:
splitmix64 seeded with 0x636f6d706f736521 + draw, Box-Muller (both
branches: cosine then sine of each pair) in double rounded to float32
(the C item computes them in float: the baselines agree to ~1e-8), u1 = ((x >> 11) + 1) 2^-53,
u2 = (x >> 11) 2^-53; per draw layer L1's query_key_value (3C x C) then its
dense (C x C), then L2's, row-major, LayerNorm weight 1; 2 draws; the mean
of each score over draws and head pairs.

Writes tests/golden/battery/composition_<fixture>.json.  Run from the
repository root:  /usr/bin/python3 tests/reference/composition_ref.py
"""

import math
import os

import numpy as np

from battery_common import GOLDEN, read_config, read_safetensors, write_golden

FIXTURES = ["f32_parallel_rot025", "f32_sequential_rot100"]
SEED = 0x636F6D706F736521
DRAWS = 2
MASK = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def gaussians(state, n):
    out = np.empty(n, dtype=np.float32)
    for i in range(0, n, 2):
        state, a = splitmix64(state)
        state, b = splitmix64(state)
        u1 = ((a >> 11) + 1.0) * 2.0 ** -53
        u2 = (b >> 11) * 2.0 ** -53
        r = math.sqrt(-2.0 * math.log(u1))
        out[i] = r * math.cos(2.0 * math.pi * u2)
        if i + 1 < n:
            out[i + 1] = r * math.sin(2.0 * math.pi * u2)
    return state, out


def layer_maps(qkv, dense, lnw, NH):
    """OV[h], QK[h] (d_model x d_model) of one layer, folded and centred."""
    C = dense.shape[0]
    HS = C // NH
    ov, qk = [], []
    for h in range(NH):
        wq, wk, wv = (qkv[(3 * h + t) * HS:(3 * h + t + 1) * HS].T * lnw[:, None]
                      for t in range(3))
        wq, wk, wv = (w - w.mean(axis=0, keepdims=True) for w in (wq, wk, wv))
        wo = dense[:, h * HS:(h + 1) * HS].T
        wo = wo - wo.mean(axis=1, keepdims=True)
        ov.append(wv @ wo)
        qk.append(wq @ wk.T)
    return ov, qk


def score(a, b):
    return np.linalg.norm(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))


def pair_scores(w, r, NH):
    """[type][h2][h1] for writer layer maps w and reader r."""
    ov1, _ = w
    ov2, qk2 = r
    s = np.zeros((3, NH, NH))
    for h2 in range(NH):
        for h1 in range(NH):
            s[0, h2, h1] = score(ov1[h1], qk2[h2])
            s[1, h2, h1] = score(ov1[h1], qk2[h2].T)
            s[2, h2, h1] = score(ov1[h1], ov2[h2])
    return s


def main():
    names = ["q_composition", "k_composition", "v_composition"]
    for fx in FIXTURES:
        d = os.path.join(GOLDEN, fx)
        cfg = read_config(d)
        t = read_safetensors(os.path.join(d, "model.safetensors"))
        C, NL, NH = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
        maps = []
        for l in range(NL):
            p = "gpt_neox.layers.%d." % l
            maps.append(layer_maps(t[p + "attention.query_key_value.weight"],
                                   t[p + "attention.dense.weight"],
                                   t[p + "input_layernorm.weight"], NH))
        rows = []
        for l2 in range(NL):
            for l1 in range(l2):
                s = pair_scores(maps[l1], maps[l2], NH)
                for k in range(3):
                    for h2 in range(NH):
                        for h1 in range(NH):
                            rows.append([names[k], l2, h2, l1 * NH + h1, float(s[k, h2, h1])])
        total = np.zeros(3)
        ones = np.ones(C)
        for draw in range(DRAWS):
            state = (SEED + draw) & MASK
            rnd = []
            for _ in range(2):
                state, q = gaussians(state, 3 * C * C)
                state, o = gaussians(state, C * C)
                rnd.append(layer_maps(q.astype(np.float64).reshape(3 * C, C),
                                      o.astype(np.float64).reshape(C, C), ones, NH))
            total += pair_scores(rnd[0], rnd[1], NH).sum(axis=(1, 2))
        for k in range(3):
            rows.append([names[k] + "_baseline", -1, -1, -1, float(total[k] / (DRAWS * NH * NH))])
        print(fx, "baselines", total / (DRAWS * NH * NH), "1/sqrt(C-1) =", 1 / math.sqrt(C - 1))
        write_golden("composition_%s.json" % fx, {"item": "composition", "version": 1,
                                                  "fixture": fx, "rows": rows})


if __name__ == "__main__":
    main()
