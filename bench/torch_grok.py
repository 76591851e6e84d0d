#!/usr/bin/python3
"""torch_grok.py - a grokking run trained with PyTorch, outside ckptd's
trainer, written as a checkpoint series ckptd reads.

    /usr/bin/python3 bench/torch_grok.py --out DIR [--seed 1] [--steps 8000]
                                         [--every 20] [--p 59]

The setting of Nanda et al. 2023 ("Progress measures for grokking via
mechanistic interpretability") on modulus p = 59: one layer, d_model 128,
d_mlp 512, 4 heads; full-batch AdamW (lr 1e-3, weight decay 1.0 on the
weight matrices and embeddings, betas 0.9/0.98); 30% of the p^2 pairs as
the training set (a torch.randperm of the seed), the rest the test set.

The model is the GPT-NeoX forward of tests/reference/gptneox_ref.py (the
project's float32 parity reference, sequential residual, rotary on a
quarter of each head) trained by torch autograd; nothing of ckptd's C
trainer is used.  The data are in the layout of `ckpt-worker train
--task modular-addition`: the sequence `a b =` (a, b in [0, p), `=` is
token p, vocabulary p + 1) with the loss only at position 2, whose target
is (a + b) mod p.  The checkpoints' max_position_embeddings is 4, so that
the test pairs written as `a b = c` are eval tokens for `ckpt-worker
analyze --items loss`: its `loss_by_pos` idx 2 (predicting token 3 from
tokens 0..2) is the answer-position loss on the test split.

Writes
  DIR/stepN/config.json, DIR/stepN/model.safetensors   at steps 0, 1, 2,
        4, ..., 512, then every 200 to --steps (float32, HF GPT-NeoX names)
  DIR/train_log.jsonl   one line per checkpoint: step, train_loss,
        train_acc, test_loss, test_acc (the names of ckpt-worker train)
  DIR/eval_log.jsonl    the same every --every steps (the dense log)
  DIR/test_tokens.json  the test pairs as `a b = c` (eval tokens)
  DIR/run.json          the settings and the training pairs
Takes about 16 minutes of one core for 8000 steps (torch threads: 1; 100
steps took 12 s), 40 minutes wall when two ran beside other work on 2 cores.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import gptneox_ref as ref  # noqa: E402  (the parity reference's forward and safetensors writer)

torch.set_num_threads(1)


def schedule(steps, every=200):
    s = [0] + [2 ** k for k in range(10) if 2 ** k <= min(512, steps)]
    s += list(range(600, steps + 1, every))
    return sorted(set(x for x in s if x <= steps))


def init_weights(cfg, seed):
    """N(0, 0.8 / sqrt(d_model)) matrices and embeddings (TransformerLens's
    default range), zero biases, LayerNorm 1 / 0."""
    g = torch.Generator().manual_seed(seed)
    C, F_, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    std = 0.8 / math.sqrt(C)
    W = {}

    def n(*shape):
        return (torch.randn(*shape, generator=g) * std).requires_grad_()

    def z(k):
        return torch.zeros(k, requires_grad=True)

    def o(k):
        return torch.ones(k, requires_grad=True)

    W["gpt_neox.embed_in.weight"] = n(V, C)
    for l in range(cfg["num_hidden_layers"]):
        p = "gpt_neox.layers.%d." % l
        W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"] = o(C), z(C)
        W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"] = o(C), z(C)
        W[p + "attention.query_key_value.weight"], W[p + "attention.query_key_value.bias"] = n(3 * C, C), z(3 * C)
        W[p + "attention.dense.weight"], W[p + "attention.dense.bias"] = n(C, C), z(C)
        W[p + "mlp.dense_h_to_4h.weight"], W[p + "mlp.dense_h_to_4h.bias"] = n(F_, C), z(F_)
        W[p + "mlp.dense_4h_to_h.weight"], W[p + "mlp.dense_4h_to_h.bias"] = n(C, F_), z(C)
    W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"] = o(C), z(C)
    W["embed_out.weight"] = n(V, C)
    return W


def answer_logits(cfg, W, tok):
    logits, _, _ = ref.forward(cfg, W, tok, record=False)
    return logits[:, 2, :]


def metrics(cfg, W, tok, tgt):
    with torch.no_grad():
        lg = answer_logits(cfg, W, tok)
        return float(F.cross_entropy(lg, tgt)), float((lg.argmax(-1) == tgt).float().mean())


def save(cfg, W, d):
    os.makedirs(d, exist_ok=True)
    ref.write_safetensors(os.path.join(d, "model.safetensors"),
                          {k: (v.detach().numpy().astype(np.float32), "F32") for k, v in W.items()})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--every", type=int, default=20, help="dense evaluation spacing")
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--train-frac", type=float, default=0.3)
    a = ap.parse_args()
    p = a.p
    torch.manual_seed(a.seed)
    cfg = ref.make_config(128, 4, 1, 512, p + 1, 0.25, 10000, False, "float32", max_pos=4)
    W = init_weights(cfg, a.seed)
    pairs = torch.tensor([[x, y] for x in range(p) for y in range(p)])
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(1000 + a.seed))
    ntr = int(a.train_frac * p * p)
    tr, te = pairs[order[:ntr]], pairs[order[ntr:]]

    def seqs(pp):
        return torch.cat([pp, torch.full((len(pp), 1), p)], dim=1), (pp[:, 0] + pp[:, 1]) % p

    tr_tok, tr_tgt = seqs(tr)
    te_tok, te_tgt = seqs(te)
    decay = [v for k, v in W.items() if v.dim() >= 2]
    rest = [v for k, v in W.items() if v.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1.0}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.98))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "test_tokens.json"), "w") as f:
        json.dump([[int(x), int(y), p, int((x + y) % p)] for x, y in te.tolist()], f)
    with open(os.path.join(a.out, "run.json"), "w") as f:
        json.dump({"trainer": "bench/torch_grok.py", "torch": torch.__version__, "seed": a.seed, "p": p,
                   "train_frac": a.train_frac, "steps": a.steps, "d_model": 128, "d_mlp": 512, "heads": 4,
                   "layers": 1, "lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98],
                   "format": "a b = ; loss at position 2, target (a + b) mod p; eval tokens a b = c",
                   "train_pairs": tr.tolist()}, f)
    ck = set(schedule(a.steps))
    tlog = open(os.path.join(a.out, "train_log.jsonl"), "w")
    elog = open(os.path.join(a.out, "eval_log.jsonl"), "w")
    t0 = time.monotonic()
    for step in range(a.steps + 1):
        if step in ck or step % a.every == 0:
            trl, tra = metrics(cfg, W, tr_tok, tr_tgt)
            tel, tea = metrics(cfg, W, te_tok, te_tgt)
            line = json.dumps({"step": step, "train_loss": trl, "train_acc": tra, "test_loss": tel,
                               "test_acc": tea}) + "\n"
            if step % a.every == 0:
                elog.write(line)
            if step in ck:
                tlog.write(line)
                save(cfg, W, os.path.join(a.out, "step%d" % step))
            if step % 1000 == 0:
                print("step %d test_loss %.4f test_acc %.3f (%.0f s)" % (step, tel, tea, time.monotonic() - t0),
                      flush=True)
        if step == a.steps:
            break
        opt.zero_grad()
        loss = F.cross_entropy(answer_logits(cfg, W, tr_tok), tr_tgt)
        loss.backward()
        opt.step()
    tlog.close()
    elog.close()


if __name__ == "__main__":
    main()
