#!/usr/bin/python3
"""Independent numpy reference for the modular-addition part of the battery
item `task` (v1): the embedding's Fourier spectrum, the key frequencies and
the restricted / excluded losses (Nanda et al. 2023), on seeded random
inputs with planted structure.

Method, deliberately unlike the C code:
  spectrum   np.fft.rfft of each embedding column over x = 0..p-1;
             |X_0|^2 / p for k = 0, 2 |X_k|^2 / p for 0 < k < p/2,
             |X_{p/2}|^2 / p for even p, summed over columns, square root
  keys       np.argsort (stable) of -norm over k >= 1, first K
  projection least squares (np.linalg.lstsq) of each output's logit vector
             over the p^2 grid on the explicit design matrix
             [1, cos(w_k (a+b)), sin(w_k (a+b)) for key k]
  losses     log-sum-exp cross-entropy over the p answer tokens, mean over
             the listed training pairs

Writes tests/golden/task/fourier.json (inputs and expected outputs).
Run from the repository root:  /usr/bin/python3 tests/reference/task_ref.py
"""

import json
import os

import numpy as np

P, C, K = 19, 6, 5
OUT = os.path.join(os.path.dirname(__file__), "..", "golden", "task", "fourier.json")


def spectrum(embed, p):
    X = np.fft.rfft(embed[:p].astype(np.float64), axis=0)  # (p//2+1, C)
    w = np.full(X.shape[0], 2.0 / p)
    w[0] = 1.0 / p
    if p % 2 == 0:
        w[-1] = 1.0 / p
    return np.sqrt((w[:, None] * np.abs(X) ** 2).sum(axis=1))


def f32(v):
    """A float32 value as the shortest decimal that reads back as it."""
    return float(str(np.float32(v)))


def ce(z, t):
    m = z.max(axis=1, keepdims=True)
    return np.log(np.exp(z - m).sum(axis=1)) + m[:, 0] - z[np.arange(len(t)), t]


def main():
    rng = np.random.default_rng(20230117)
    p = P
    x = np.arange(p)
    # embedding: three planted frequencies of decreasing strength plus noise;
    # row p is the `=` token and must not count
    embed = 0.05 * rng.standard_normal((p + 1, C))
    for k, amp in ((4, 1.0), (9, 0.7), (2, 0.4)):
        ph = rng.uniform(0, 2 * np.pi, C)
        embed[:p] += amp * np.cos(2 * np.pi * k * x[:, None] / p + ph[None, :])
    embed[p] = 5.0
    embed = embed.astype(np.float32)

    norms = spectrum(embed, p)
    keys = np.argsort(-norms[1:], kind="stable")[:K] + 1
    nonconst = (norms[1:] ** 2).sum()
    shares = norms[keys] ** 2 / nonconst

    # logits (a, b, c): a Fourier-multiplication part on two key frequencies,
    # a non-key frequency part, a per-output bias and noise
    a, b = np.meshgrid(x, x, indexing="ij")
    s = ((a + b) % p).reshape(-1)
    c = x
    lg = np.zeros((p * p, p))
    for k, amp in ((4, 3.0), (9, 2.0)):
        lg += amp * np.cos(2 * np.pi * k * (s[:, None] - c[None, :]) / p)
    lg += 1.5 * np.sin(2 * np.pi * 6 * (s[:, None] + 2 * c[None, :]) / p)
    lg += 0.3 * rng.standard_normal(p)[None, :]
    lg += 0.2 * rng.standard_normal((p * p, p))
    lg = lg.astype(np.float32)

    order = rng.permutation(p * p)
    train = order[: (p * p) // 2]

    cols = [np.ones(p * p)]
    for k in keys:
        cols.append(np.cos(2 * np.pi * k * s / p))
        cols.append(np.sin(2 * np.pi * k * s / p))
    D = np.stack(cols, axis=1)
    L = lg.astype(np.float64)
    coef, *_ = np.linalg.lstsq(D, L, rcond=None)
    proj_all = D @ coef                     # constant + key frequencies
    proj_key = D[:, 1:] @ coef[1:]          # key frequencies only
    restricted = proj_all
    excluded = L - proj_key

    tgt = s[train]
    out = {
        "p": p, "C": C, "K": K,
        "embed": [f32(v) for v in embed.reshape(-1)],
        "logits": [f32(v) for v in lg.reshape(-1)],
        "train": [[int(i // p), int(i % p)] for i in train],
        "norms": [float(v) for v in norms],
        "keys": [int(k) for k in keys],
        "shares": [float(v) for v in shares],
        "key_fraction": float(shares.sum()),
        "answer_loss": float(ce(L[train], tgt).mean()),
        "restricted_loss": float(ce(restricted[train], tgt).mean()),
        "excluded_loss": float(ce(excluded[train], tgt).mean()),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print("wrote", OUT, "keys", out["keys"], "losses", out["answer_loss"],
          out["restricted_loss"], out["excluded_loss"])


if __name__ == "__main__":
    main()
