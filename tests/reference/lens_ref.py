#!/usr/bin/python3
"""Independent numpy reference for the battery item `lens` (v1).

The logit lens (nostalgebraist 2020; TransformerLens's accumulated_resid
with apply_ln=True, then the unembedding) on a golden fixture: the residual
streams are the PyTorch reference's own hook values stored in
tests/golden/<fixture>/golden.safetensors (hook_embed as layer -1,
blocks.l.hook_resid_post as layer l), the tokens its tokens.json.  Per
layer, in float64:

  z = LayerNorm_final(resid) @ embed_out.T   (weight, bias, layer_norm_eps)
  lens_loss  = mean over b, t < T-1 of logsumexp(z[b,t]) - z[b,t,x[b,t+1]]
  lens_kl    = mean over every b, t of KL(P_final || P_lens), P_final the
               lens of the last layer (the model's output)
  lens_top1_agreement = mean over b, t of [argmax z == argmax z_final]

Writes tests/golden/battery/lens_<fixture>.json and prints the smallest
top-1 margin (a near-tie would make agreement fragile).  Run from the
repository root:  /usr/bin/python3 tests/reference/lens_ref.py
"""

import json
import os

import numpy as np

from battery_common import GOLDEN, read_config, read_safetensors, write_golden

FIXTURES = ["f32_parallel_rot025", "f32_sequential_rot100"]


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def main():
    for fx in FIXTURES:
        d = os.path.join(GOLDEN, fx)
        cfg = read_config(d)
        w = read_safetensors(os.path.join(d, "model.safetensors"))
        g = read_safetensors(os.path.join(d, "golden.safetensors"))
        with open(os.path.join(d, "tokens.json")) as f:
            tok = np.array(json.load(f))
        NL, eps = cfg["num_hidden_layers"], cfg["layer_norm_eps"]
        lw, lb = w["gpt_neox.final_layer_norm.weight"], w["gpt_neox.final_layer_norm.bias"]
        U = w["embed_out.weight"]
        slots = [g["hook_embed"]] + [g["blocks.%d.hook_resid_post" % l] for l in range(NL)]
        lps = []
        for x in slots:
            mu = x.mean(axis=-1, keepdims=True)
            var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
            lps.append(log_softmax(((x - mu) / np.sqrt(var + eps) * lw + lb) @ U.T))
        final = lps[-1]
        pf = np.exp(final)
        top_f = final.argmax(axis=-1)
        rows, margin = [], np.inf
        for s, lp in enumerate(lps):
            tgt = np.take_along_axis(lp[:, :-1], tok[:, 1:, None], axis=-1)[..., 0]
            kl = (pf * (final - lp)).sum(axis=-1)
            srt = np.sort(lp, axis=-1)
            margin = min(margin, float((srt[..., -1] - srt[..., -2]).min()))
            rows.append(["lens_loss", s - 1, -1, -1, float(-tgt.mean())])
            rows.append(["lens_kl", s - 1, -1, -1, float(kl.mean())])
            rows.append(["lens_top1_agreement", s - 1, -1, -1,
                         float((lp.argmax(axis=-1) == top_f).mean())])
        print(fx, "smallest top-1 margin %.3g nats" % margin)
        write_golden("lens_%s.json" % fx, {"item": "lens", "version": 1, "fixture": fx,
                                           "rows": rows})


if __name__ == "__main__":
    main()
