#!/usr/bin/python3
"""PyTorch CPU forward of a GPT-NeoX (Pythia) model, the baseline of `make bench`.

An independent plain nn.Module with the architecture the C engine runs:
fused query_key_value (rows ordered head, then q/k/v, then head dim),
rotary embedding on the first 25% of each head's dims (rotate-half),
causal softmax attention over the full T x T scores, parallel residual,
exact-erf GELU, final LayerNorm and an untied unembedding.  Weights are
random (N(0, 0.02)); only the time matters.

    /usr/bin/python3 bench/torch_forward.py --preset pythia-70m --batch 8 --ctx 256 \
        --threads 2 --reps 5

prints one JSON line: median seconds of R timed forwards after one warm-up,
tokens/s, and GFLOP/s counted as the C engine counts them (its causal
attention blocks), so the rates compare the same work.  The caller sets
OMP_NUM_THREADS / OMP_WAIT_POLICY / OPENBLAS_NUM_THREADS / OPENBLAS_CORETYPE.
"""
import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn

# V, C, L, NH, F as in workers/model/config.c (Pythia's published configs).
PRESETS = {
    "tiny": (512, 64, 2, 4, 256),
    "pythia-14m": (50304, 128, 6, 4, 512),
    "pythia-70m": (50304, 512, 6, 8, 2048),
    "pythia-160m": (50304, 768, 12, 12, 3072),
    "pythia-410m": (50304, 1024, 24, 16, 4096),
}
ROTARY_PCT = 0.25
ROTARY_BASE = 10000.0
LN_EPS = 1e-5


class Block(nn.Module):
    def __init__(self, C, NH, F):
        super().__init__()
        self.NH, self.HS = NH, C // NH
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        self.qkv = nn.Linear(C, 3 * C)
        self.dense = nn.Linear(C, C)
        self.fc = nn.Linear(C, F)
        self.proj = nn.Linear(F, C)

    def attention(self, x, cos, sin, mask):
        B, T, C = x.shape
        NH, HS = self.NH, self.HS
        qkv = self.qkv(x).view(B, T, NH, 3 * HS).permute(0, 2, 1, 3)  # (B,NH,T,3HS)
        q, k, v = qkv[..., :HS], qkv[..., HS:2 * HS], qkv[..., 2 * HS:]
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(HS))  # (B,NH,T,T)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        z = torch.matmul(att, v)  # (B,NH,T,HS)
        z = z.permute(0, 2, 1, 3).reshape(B, T, C)
        return self.dense(z)

    def forward(self, x, cos, sin, mask):
        # parallel residual: x + attn(ln1(x)) + mlp(ln2(x))
        a = self.attention(self.ln1(x), cos, sin, mask)
        m = self.proj(nn.functional.gelu(self.fc(self.ln2(x))))
        return x + a + m


def rotary(x, cos, sin):
    """Rotate-half rotary on the first rd dims of x (B,NH,T,HS); cos, sin (T, rd)."""
    rd = cos.shape[-1]
    xr, xp = x[..., :rd], x[..., rd:]
    x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
    rot = torch.cat((-x2, x1), dim=-1)
    return torch.cat((xr * cos + rot * sin, xp), dim=-1)


class GPTNeoX(nn.Module):
    def __init__(self, V, C, L, NH, F):
        super().__init__()
        self.HS = C // NH
        self.rd = int(self.HS * ROTARY_PCT)
        self.embed = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(C, NH, F) for _ in range(L))
        self.lnf = nn.LayerNorm(C, eps=LN_EPS)
        self.unembed = nn.Linear(C, V, bias=False)

    def forward(self, tokens):
        B, T = tokens.shape
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, self.rd, 2).float() / self.rd))
        freqs = torch.outer(torch.arange(T).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.unembed(self.lnf(x))


def engine_flops(V, C, L, NH, F, B, T):
    """FLOPs of one forward as gptneox_forward_flops counts them."""
    N, HS = B * T, C // NH
    per_layer = 2 * N * C * 3 * C + 2 * N * C * C + 2 * N * C * F + 2 * N * F * C
    att = 0.0
    for r0 in range(0, T, 128):
        r1 = min(r0 + 128, T)
        att += 4.0 * (r1 - r0) * r1 * HS
    att *= B * NH
    return L * (per_layer + att) + 2 * N * C * V


def openblas_core():
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pythia-70m", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if min(a.batch, a.ctx, a.threads, a.reps) <= 0:
        ap.error("--batch, --ctx, --threads and --reps must be positive")

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    V, C, L, NH, F = PRESETS[a.preset]
    with torch.no_grad():
        model = GPTNeoX(V, C, L, NH, F).float().eval()
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    tokens = torch.randint(0, V, (a.batch, a.ctx))

    times = []
    with torch.inference_mode():
        model(tokens)  # warm-up
        for _ in range(a.reps):
            t0 = time.perf_counter()
            logits = model(tokens)
            times.append(time.perf_counter() - t0)
    assert logits.shape == (a.batch, a.ctx, V)
    s = statistics.median(times)
    flops = engine_flops(V, C, L, NH, F, a.batch, a.ctx)
    print(json.dumps({
        "bench": "torch_forward", "preset": a.preset, "B": a.batch, "T": a.ctx,
        "threads": a.threads, "reps": a.reps, "torch": torch.__version__,
        "core": openblas_core(), "coretype_env": os.environ.get("OPENBLAS_CORETYPE", ""),
        "seconds": round(s, 6), "min_seconds": round(min(times), 6),
        "tokens_per_s": round(a.batch * a.ctx / s, 1),
        "gflops": round(flops * 1e-9 / s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
