#!/usr/bin/python3
"""Reference gradients and AdamW steps for the C training code.

Writes tests/golden/grad/*.safetensors, which tests/test_backward.c and
tests/test_adamw.c compare against.  Run from the repository root:

    /usr/bin/python3 tests/reference/grad_ref.py        (or: make golden)

Gradients: the model is the float32 GPT-NeoX forward of gptneox_ref.py (the
independent reference the forward golden files come from), loaded from the
committed fixtures under tests/golden/; torch autograd differentiates

    loss = mean over positions (b,t) with targets[b,t] >= 0 of
           -log softmax(logits[b,t])[targets[b,t]]

with respect to every parameter.  targets[b,t] = tokens[b,t+1] (the last
position has none), and in the masked case only positions with
(b*T + t) % 3 == 0 keep their target (the loss mask of toy tasks).

Each gradient file holds, as F32: `loss` [1], `targets` [B,T] (ids as
floats, -1 = no target) and one tensor per parameter under its checkpoint
name.  A float64 autograd of the same loss checks the float32 gradients
before anything is written.

Activation gradients (act_<case>.safetensors): the gradient of a scalar
metric of the logits with respect to the activation at every hook point
(TransformerLens names, the shapes of gptneox_ref.py's golden hooks),
by retain_grad on the reference forward's own tensors, for two metrics:

    loss      the mean next-token cross-entropy (every position but the last)
    logitdiff sum over b of logits[b, pos[b], ans[b]] - logits[b, pos[b], wrong[b]]

stored as `<metric>.<hook name>` (peaky: loss only), with `logitdiff.pos`, `.ans`, `.wrong`
[B] (as floats) and each metric's value `<metric>.value` [1].  A float64
run of the same metric must agree (max |d| <= 1e-4 * max |g| per tensor)
before anything is written.

AdamW: torch.optim.AdamW (decoupled weight decay, Loshchilov & Hutter 2019)
with two parameter groups, a matrix with weight decay and a bias vector
without, run for 5 steps on stored gradients; the file holds the initial
values, every step's gradients and the values after each step.
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptneox_ref as ref  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = ref.ROOT
OUT_DIR = os.path.join(ROOT, "tests", "golden", "grad")


def load_fixture(name):
    d = os.path.join(ROOT, "tests", "golden", name)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    W = ref.read_safetensors(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "tokens.json")) as f:
        tokens = torch.tensor(json.load(f), dtype=torch.int64)
    return cfg, W, tokens


def masked_loss(logits, targets):
    lp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    keep = targets >= 0
    tgt = targets.clamp(min=0)
    nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (nll * keep).sum() / keep.sum()


def grads(cfg, W, tokens, targets, dtype):
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in W.items()}
    logits, _, _ = ref.forward(cfg, params, tokens, dtype=dtype, record=False)
    loss = masked_loss(logits, targets)
    loss.backward()
    return loss.detach(), {k: p.grad.detach() for k, p in params.items()}


def gradient_file(fixture, out_name, masked):
    cfg, W, tokens = load_fixture(fixture)
    B, T = tokens.shape
    targets = torch.full((B, T), -1, dtype=torch.int64)
    targets[:, :-1] = tokens[:, 1:]
    if masked:
        idx = torch.arange(B * T).reshape(B, T)
        targets[idx % 3 != 0] = -1
    loss32, g32 = grads(cfg, W, tokens, targets, torch.float32)
    loss64, g64 = grads(cfg, W, tokens, targets, torch.float64)
    assert abs(loss32.item() - loss64.item()) < 1e-5
    worst = 0.0
    for k in g32:
        scale = g64[k].abs().max().item()
        d = (g32[k].double() - g64[k]).abs().max().item()
        worst = max(worst, d / (scale + 1e-12))
    assert worst < 1e-4, "float32 gradients disagree with float64: %g" % worst
    out = {"loss": (np.array([loss32.item()], np.float32), "F32"),
           "targets": (targets.numpy().astype(np.float32), "F32")}
    for k, v in g32.items():
        out[k] = (v.numpy(), "F32")
    path = os.path.join(OUT_DIR, out_name + ".safetensors")
    ref.write_safetensors(path, out, {"generator": "tests/reference/grad_ref.py",
                                      "fixture": fixture, "masked": str(masked).lower()})
    print("%-32s loss %.6f  f32 vs f64 max rel %.2e  %d bytes"
          % (out_name, loss32.item(), worst, os.path.getsize(path)))


def activation_grads(cfg, W, tokens, metric, dtype):
    """Run the reference with keep_graph and return (value, {hook: grad})."""
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in W.items()}
    logits, _, hooks = ref.forward(cfg, params, tokens, dtype=dtype, keep_graph=True)
    value = metric(logits)
    value.backward()
    return value.detach(), {k: t.grad.detach().clone() for k, t in hooks.items()}


def activation_grad_file(fixture, out_name, metric_names=("loss", "logitdiff")):
    cfg, W, tokens = load_fixture(fixture)
    B, T = tokens.shape
    V = cfg["vocab_size"]
    targets = torch.full((B, T), -1, dtype=torch.int64)
    targets[:, :-1] = tokens[:, 1:]
    g = torch.Generator().manual_seed(B * 1000 + T)
    pos = torch.randint(T // 2, T, (B,), generator=g)
    ans = torch.randint(0, V, (B,), generator=g)
    wrong = (ans + 1 + torch.randint(0, V - 1, (B,), generator=g)) % V
    metrics = {
        "loss": lambda lg: masked_loss(lg, targets),
        "logitdiff": lambda lg: (lg[torch.arange(B), pos, ans] - lg[torch.arange(B), pos, wrong]).sum(),
    }
    out = {"logitdiff.pos": (pos.numpy().astype(np.float32), "F32"),
           "logitdiff.ans": (ans.numpy().astype(np.float32), "F32"),
           "logitdiff.wrong": (wrong.numpy().astype(np.float32), "F32")}
    worst = 0.0
    nh = 0
    for name, metric in metrics.items():
        if name not in metric_names:
            continue
        v32, g32 = activation_grads(cfg, W, tokens, metric, torch.float32)
        v64, g64 = activation_grads(cfg, W, tokens, metric, torch.float64)
        assert abs(v32.item() - v64.item()) < 1e-4
        out[name + ".value"] = (np.array([v32.item()], np.float32), "F32")
        for k in g32:
            scale = g64[k].abs().max().item()
            d = (g32[k].double() - g64[k]).abs().max().item()
            assert scale > 0, "no gradient reaches %s" % k
            worst = max(worst, d / scale)
            out[name + "." + k] = (g32[k].numpy(), "F32")
            nh += 1
    assert worst < 1e-4, "float32 activation gradients disagree with float64: %g" % worst
    path = os.path.join(OUT_DIR, out_name + ".safetensors")
    ref.write_safetensors(path, out, {"generator": "tests/reference/grad_ref.py",
                                      "fixture": fixture})
    print("%-32s %d hook gradients, f32 vs f64 max rel %.2e  %d bytes"
          % (out_name, nh, worst, os.path.getsize(path)))


def adamw_file():
    gen = torch.Generator().manual_seed(11)
    lr, betas, eps, wd, steps = 0.01, (0.9, 0.98), 1e-8, 0.5, 5
    w = torch.randn(16, 8, generator=gen)
    b = torch.randn(8, generator=gen) * 0.1
    pw = torch.nn.Parameter(w.clone())
    pb = torch.nn.Parameter(b.clone())
    opt = torch.optim.AdamW([{"params": [pw], "weight_decay": wd},
                             {"params": [pb], "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps)
    out = {"init.w": (w.numpy(), "F32"), "init.b": (b.numpy(), "F32")}
    for s in range(1, steps + 1):
        gw = torch.randn(16, 8, generator=gen) * (0.1 * s)
        gb = torch.randn(8, generator=gen) * 0.01
        if s == 3:
            gb.zero_()  # a zero gradient still moves through the moments
        pw.grad = gw.clone()
        pb.grad = gb.clone()
        opt.step()
        out["grad%d.w" % s] = (gw.numpy(), "F32")
        out["grad%d.b" % s] = (gb.numpy(), "F32")
        out["step%d.w" % s] = (pw.detach().numpy().copy(), "F32")
        out["step%d.b" % s] = (pb.detach().numpy().copy(), "F32")
    meta = {"generator": "tests/reference/grad_ref.py", "lr": repr(lr),
            "beta1": repr(betas[0]), "beta2": repr(betas[1]), "eps": repr(eps),
            "weight_decay": repr(wd), "steps": str(steps)}
    path = os.path.join(OUT_DIR, "adamw.safetensors")
    ref.write_safetensors(path, out, meta)
    print("%-32s %d steps, %d bytes" % ("adamw", steps, os.path.getsize(path)))


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    gradient_file("f32_parallel_rot025", "parallel_rot025", masked=False)
    gradient_file("f32_sequential_rot100", "sequential_rot100", masked=False)
    gradient_file("peaky", "peaky_masked", masked=True)
    activation_grad_file("f32_parallel_rot025", "act_parallel_rot025")
    activation_grad_file("f32_sequential_rot100", "act_sequential_rot100")
    activation_grad_file("peaky", "act_peaky", ("loss",))
    adamw_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
