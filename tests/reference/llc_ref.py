#!/usr/bin/python3
"""Independent reference for the battery item `llc` (v1): SGLD estimates of
the local learning coefficient (Lau et al. 2023; devinterp's SGLD) on a tiny
GPT-NeoX, fed the same random numbers as the C code.

Writes tests/golden/llc/trace.json, which tests/test_battery_llc.c compares
against.  Run from the repository root:

    /usr/bin/python3 tests/reference/llc_ref.py        (or: make golden)

What is shared with the C code is the definition (workers/battery/sgld.h),
not the code: the random streams are re-derived here from that description
(splitmix64, the chain seeds, the noise blocks and Marsaglia's polar
normals, Fisher-Yates minibatches), the model is the float32 GPT-NeoX of gptneox_ref.py loaded
from tests/golden/f32_parallel_rot025, and gradients come from torch
autograd of

    loss = mean over positions with a target of -log softmax(logits)[target]

(next-token targets; the last position has none).  The SGLD update is done
in numpy float32, one elementwise operation at a time:

    dw = gamma_f * (w - w0) + nbeta_f * g
    w  = (w - halfeps_f * dw) + sqrteps_f * z

The data set is N_SEQ sequences of T ids drawn with rng_below from a
splitmix64 state at DATA_SEED (written into the golden file, which the C
test reads).  The same chains are also run in float64 (noise not rounded to
float32) to show how far float32 rounding alone moves the trace; that
distance is recorded as `f64_max_abs_diff`.
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptneox_ref as ref  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = ref.ROOT
FIXTURE = "f32_parallel_rot025"
OUT = os.path.join(ROOT, "tests", "golden", "llc", "trace.json")

MASK = (1 << 64) - 1
SGLD_SALT = 0x53474C44534C4C43
SGLD_BATCH_SALT = 0x4D494E4942415443

DATA_SEED = 1234
N_SEQ, T = 7, 16
PARAMS = dict(nbeta=20.0, gamma=1000.0, epsilon=1e-4, chains=2, draws=12, burnin=3,
              batch_tokens=32)
SEED = 5


class SplitMix64:
    def __init__(self, state):
        self.s = state & MASK

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return ((self.next() >> 32) * n) >> 32

    def pm1(self):
        return float(self.next() >> 11) * 2.0 ** -52 - 1.0


BLOCK = 65536  # SGLD_NOISE_BLOCK


def normals(key, t, d):
    """The d normals of step t of the chain with key k_c: block b of
    BLOCK parameters draws from the first output of a splitmix64 state
    started at k_c + t * 2^32 + b, by the polar method in pairs (a block of
    odd length drops its last pair's second value); as doubles."""
    out = np.empty(d, dtype=np.float64)
    for b in range(0, (d + BLOCK - 1) // BLOCK):
        rng = SplitMix64(SplitMix64(key + (t << 32) + b).next())
        lo, hi = b * BLOCK, min(d, (b + 1) * BLOCK)
        for i in range(lo, hi, 2):
            while True:
                u = rng.pm1()
                v = rng.pm1()
                q = u * u + v * v
                if q < 1.0 and q != 0.0:
                    break
            f = math.sqrt(-2.0 * math.log(q) / q)
            out[i] = u * f
            if i + 1 < hi:
                out[i + 1] = v * f
    return out


class Batches:
    def __init__(self, state, n):
        self.rng = SplitMix64(state)
        self.n = n
        self.pos = n
        self.perm = []

    def next(self, m):
        idx = []
        for _ in range(m):
            if self.pos == self.n:
                self.perm = list(range(self.n))
                for i in range(self.n - 1, 0, -1):
                    j = self.rng.below(i + 1)
                    self.perm[i], self.perm[j] = self.perm[j], self.perm[i]
                self.pos = 0
            idx.append(self.perm[self.pos])
            self.pos += 1
        return idx


def param_names(cfg):
    """gptneox_params order (the C code's flat vector)."""
    names = ["gpt_neox.embed_in.weight"]
    for l in range(cfg["num_hidden_layers"]):
        p = "gpt_neox.layers.%d." % l
        names += [p + s for s in (
            "input_layernorm.weight", "input_layernorm.bias",
            "attention.query_key_value.weight", "attention.query_key_value.bias",
            "attention.dense.weight", "attention.dense.bias",
            "post_attention_layernorm.weight", "post_attention_layernorm.bias",
            "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias",
            "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias")]
    names += ["gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias",
              "embed_out.weight"]
    return names


def loss_and_grad(cfg, names, shapes, w, tokens, want_grad, dtype):
    """Mean next-token loss on tokens (B,T) at flat w, and its flat gradient."""
    W = {}
    off = 0
    for nm, shp in zip(names, shapes):
        k = int(np.prod(shp))
        W[nm] = torch.tensor(w[off:off + k].reshape(shp), dtype=dtype,
                             requires_grad=want_grad)
        off += k
    tok = torch.tensor(tokens, dtype=torch.int64)
    logits, _, _ = ref.forward(cfg, W, tok, dtype=dtype, record=False)
    lp = logits[:, :-1, :] - torch.logsumexp(logits[:, :-1, :], dim=-1, keepdim=True)
    nll = -lp.gather(-1, tok[:, 1:].unsqueeze(-1)).squeeze(-1)
    loss = nll.mean()
    if not want_grad:
        return float(loss.item()), None
    loss.backward()
    g = np.concatenate([W[nm].grad.detach().numpy().reshape(-1) for nm in names])
    return float(loss.item()), g


def run(cfg, names, shapes, w_star, data, p, seed, f64):
    dt_np = np.float64 if f64 else np.float32
    dt_t = torch.float64 if f64 else torch.float32
    n = data.shape[0]
    m = max(1, min(n, p["batch_tokens"] // data.shape[1]))
    w0 = w_star.astype(dt_np)
    tot = 0.0
    for s0 in range(0, n, m):
        k = min(m, n - s0)
        l, _ = loss_and_grad(cfg, names, shapes, w0, data[s0:s0 + k], False, dt_t)
        tot += l * k
    init_loss = tot / n
    if f64:
        gamma, nbeta = p["gamma"], p["nbeta"]
        halfeps, sqrteps = p["epsilon"] / 2, math.sqrt(p["epsilon"])
    else:
        gamma, nbeta = np.float32(p["gamma"]), np.float32(p["nbeta"])
        halfeps, sqrteps = np.float32(p["epsilon"] / 2), np.float32(math.sqrt(p["epsilon"]))
    seeds = SplitMix64(seed ^ SGLD_SALT)
    traces, llc_chain = [], []
    for ch in range(p["chains"]):
        kc = seeds.next()
        batches = Batches(kc ^ SGLD_BATCH_SALT, n)
        w = w0.copy()
        tr = []
        for t in range(p["burnin"] + p["draws"]):
            idx = batches.next(m)
            l, g = loss_and_grad(cfg, names, shapes, w, data[idx], True, dt_t)
            assert math.isfinite(l)
            if t >= p["burnin"]:
                tr.append(l)
            z = normals(kc, t, w.size).astype(dt_np)
            g = g.astype(dt_np)
            dw = gamma * (w - w0) + nbeta * g
            w = (w - halfeps * dw) + sqrteps * z
            assert w.dtype == dt_np
        traces.append(tr)
        llc_chain.append(p["nbeta"] * (sum(tr) / len(tr) - init_loss))
    mean = sum(llc_chain) / len(llc_chain)
    std = math.sqrt(sum((c - mean) ** 2 for c in llc_chain) / (len(llc_chain) - 1))
    return dict(m=m, init_loss=init_loss, trace=traces, llc_chain=llc_chain, llc=mean,
                llc_std=std)


def main():
    d = os.path.join(ROOT, "tests", "golden", FIXTURE)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    W = ref.read_safetensors(os.path.join(d, "model.safetensors"))
    names = param_names(cfg)
    assert set(names) == set(W), "parameter list differs from the fixture's tensors"
    shapes = [W[nm].shape for nm in names]
    w_star = np.concatenate([W[nm].astype(np.float32).reshape(-1) for nm in names])

    rng = SplitMix64(DATA_SEED)
    V = cfg["vocab_size"]
    data = np.array([[rng.below(V) for _ in range(T)] for _ in range(N_SEQ)], dtype=np.int64)

    r32 = run(cfg, names, shapes, w_star, data, PARAMS, SEED, f64=False)
    r64 = run(cfg, names, shapes, w_star, data, PARAMS, SEED, f64=True)
    diff = max(abs(a - b) for ta, tb in zip(r32["trace"], r64["trace"]) for a, b in zip(ta, tb))
    out = {
        "generator": "tests/reference/llc_ref.py",
        "fixture": FIXTURE,
        "params": PARAMS,
        "seed": SEED,
        "data_seed": DATA_SEED,
        "tokens": data.tolist(),
        "parameters": int(w_star.size),
        "batch": r32["m"],
        "init_loss": r32["init_loss"],
        "trace": r32["trace"],
        "llc_chain": r32["llc_chain"],
        "llc": r32["llc"],
        "llc_std": r32["llc_std"],
        "f64_max_abs_diff": diff,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    rise = [t[-1] - r32["init_loss"] for t in r32["trace"]]
    print("llc/trace.json: %d parameters, batch %d, init_loss %.6f, llc %.4f +- %.4f, "
          "last rise %s, float32 vs float64 trace max |diff| %.2e"
          % (w_star.size, r32["m"], r32["init_loss"], r32["llc"], r32["llc_std"],
             ", ".join("%.4f" % x for x in rise), diff))
    return 0


if __name__ == "__main__":
    sys.exit(main())
