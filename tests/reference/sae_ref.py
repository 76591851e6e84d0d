#!/usr/bin/env python3
"""Reference for the SAE trainers (workers/battery/sae.h): loss terms,
autograd gradients and two Adam steps, in float64 PyTorch.

Writes tests/golden/sae/adam_step.json, which tests/test_sae.c reads.  Two
cases on the same small dictionary (d_in 6, d_sae 10) and batches of 8:

  topk  k = 3, AuxK with latents 1, 4, 7, 8 marked dead, k_aux = 3,
        aux coefficient 1/32
  relu  L1 coefficient 0.3, weighted by the decoder row norms

Definitions, written from the papers (Gao et al. 2024 for TopK/AuxK,
Bricken et al. 2023 for the L1 autoencoder), not from the C code:

  pre  = (x - b_dec) W_enc + b_enc
  z    = ReLU of the k largest entries of pre (TopK), or ReLU(pre)
  xhat = z W_dec + b_dec
  mse  = mean over tokens of ||x - xhat||^2
  aux  = mean over tokens of ||e - zaux W_dec||^2, e = x - xhat detached,
         zaux = ReLU of the k_aux largest pre-activations among dead latents
  l1   = mean over tokens of sum_i z_i ||W_dec,i||
  loss = mse + 1/32 aux (TopK) or mse + 0.3 l1 (ReLU)

A step: autograd gradients; each W_dec row's gradient loses its component
along the (unit) row; torch.optim.Adam (lr 1e-2, betas 0.9/0.999, eps
1e-6); then every W_dec row is rescaled to unit norm.  The golden holds the
inputs, the loss terms and gradients of step 1, and the parameters after
steps 1 and 2 (step 2 on a second batch, the same dead set).

Run: /usr/bin/python3 tests/reference/sae_ref.py   (or make golden)
"""
import json
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
C, S, N = 6, 10, 8
K, KAUX, AUX = 3, 3, 1.0 / 32.0
L1 = 0.3
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-6
DEAD = [1, 4, 7, 8]


def f32(a):
    """Round to float32 (the C side's storage) and back to float64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def init(rng):
    W_dec = rng.standard_normal((S, C))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_dec = f32(W_dec)
    W_enc = f32(W_dec.T + 0.3 * rng.standard_normal((C, S)))
    b_enc = f32(0.2 * rng.standard_normal(S))
    b_dec = f32(0.3 * rng.standard_normal(C))
    return W_enc, W_dec, b_enc, b_dec


def losses(arch, p, x, dead):
    W_enc, W_dec, b_enc, b_dec = p
    pre = (x - b_dec) @ W_enc + b_enc
    if arch == "topk":
        v, i = pre.topk(K, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
    else:
        z = torch.relu(pre)
    xhat = z @ W_dec + b_dec
    mse = ((xhat - x) ** 2).sum(-1).mean()
    out = {"mse": mse, "aux": torch.zeros(()), "l1": torch.zeros(())}
    loss = mse
    if arch == "topk":
        e = (x - xhat).detach()
        mask = torch.zeros(S, dtype=torch.bool)
        mask[dead] = True
        masked = torch.where(mask, pre, torch.full_like(pre, -float("inf")))
        v, i = masked.topk(min(KAUX, len(dead)), dim=-1)
        zaux = torch.zeros_like(pre).scatter(-1, i, torch.relu(v))
        aux = ((zaux @ W_dec - e) ** 2).sum(-1).mean()
        out["aux"] = aux
        loss = loss + AUX * aux
    else:
        l1 = (z * W_dec.norm(dim=1)).sum(-1).mean()
        out["l1"] = l1
        loss = loss + L1 * l1
    out["loss"] = loss
    out["l0"] = (z > 0).double().sum(-1).mean()
    return out


def case(arch, seed):
    rng = np.random.default_rng(seed)
    p = [torch.tensor(a, requires_grad=True) for a in init(rng)]
    start = [t.detach().numpy().copy() for t in p]
    xs = [f32(rng.standard_normal((N, C)) * 1.5 + 0.5) for _ in range(2)]
    opt = torch.optim.Adam(p, lr=LR, betas=(B1, B2), eps=EPS)
    res = {"arch": arch, "start": [a.tolist() for a in start], "x": [a.tolist() for a in xs]}
    for step, xa in enumerate(xs):
        x = torch.tensor(xa)
        opt.zero_grad()
        out = losses(arch, p, x, DEAD)
        out["loss"].backward()
        if step == 0:
            res["terms"] = {k: float(v) for k, v in out.items()}
            res["grads"] = [t.grad.detach().numpy().tolist() for t in p]
        with torch.no_grad():
            W_dec, g = p[1], p[1].grad
            g -= (g * W_dec).sum(-1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            p[1] /= p[1].norm(dim=-1, keepdim=True)
        res["after%d" % (step + 1)] = [t.detach().numpy().tolist() for t in p]
    return res


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "sae")
    os.makedirs(root, exist_ok=True)
    doc = {
        "d_in": C, "d_sae": S, "n": N, "k": K, "k_aux": KAUX, "aux_coeff": AUX,
        "l1_coeff": L1, "lr": LR, "beta1": B1, "beta2": B2, "eps": EPS, "dead": DEAD,
        "cases": [case("topk", 1), case("relu", 2)],
    }
    path = os.path.join(root, "adam_step.json")
    with open(path, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    for c in doc["cases"]:
        print(c["arch"], {k: round(v, 6) for k, v in c["terms"].items()})
    print("wrote", path)


if __name__ == "__main__":
    main()
