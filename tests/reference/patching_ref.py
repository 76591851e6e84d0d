#!/usr/bin/python3
"""Independent reference for the patching items (`patching`, `attribution`,
`path_patching`'s path matrix), written from the definitions in
workers/battery/patching.h and battery_patching*.c, in float64 with torch.

For the golden fixtures f32_parallel_rot025 (parallel residual) and
f32_sequential_rot100 (sequential), writes to tests/golden/patching/:

  pairs_<fixture>.json      a pair set made here (4 pairs of 10 tokens, two
                            positions corrupted, answers the clean run's two
                            most likely last tokens, the wrong answer the
                            corrupted run's most likely other one; positions
                            of interest 5 and the last)
  <fixture>_patching.json   every row of the `patching` item with --seed 0
                            and --pairs pairs_<fixture>.json: idx 0 the
                            built-in induction pairs (rebuilt here from the
                            splitmix64 stream), idx 1 the file's set
  <fixture>_attribution.json  the `attribution` item's rows (the estimates
                            by autograd, and their errors against the exact
                            scores)
  <fixture>_path.json       path patching with every head a sender and a
                            receiver, both directions, set idx 1 (normalised;
                            null where the receiver is not in a later layer;
                            the last column the direct path)

tests/test_patching.c compares the C items with these; tolerances are
stated there and in tests/golden/README.md.  Run from the repository root:

    /usr/bin/python3 tests/reference/patching_ref.py

Definitions:
  LD of a pair   at the last position: mean logit of its answers minus mean
                 logit of its wrong answers; a set's LD is the mean over pairs
  normalised     (LD - LD_corrupted) / (LD_clean - LD_corrupted)
  denoise        base run corrupted, the component's activation from clean;
  noise          base clean, activation from corrupted
  components     blocks.L.hook_resid_pre at position t; head h's slice of
                 blocks.L.attn.hook_z at every position, or at the positions
                 of interest
  attribution    denoise: g_corrupted . (a_clean - a_corrupted) / gap;
                 noise: 1 + g_clean . (a_corrupted - a_clean) / gap, with g
                 the gradient of the set's LD at the base run
  path s -> r    base resumed at s's layer with s's z from the source and
                 every other head's z frozen at the base's (MLPs recomputed);
                 r's z recorded there; the base run with r's z replaced by
                 it.  Direct: (z_src - z_base)[s] W_O[:, s] added to the base
                 run's final residual at the last position.
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptneox_ref as R  # noqa: E402
from heads_ref import SplitMix, load  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(ROOT, "tests", "golden", "patching")
DT = torch.float64
IND_SALT = 0x50415443484E4744
FAMILIES = ["head_denoise", "head_noise", "head_denoise_poi", "head_noise_poi",
            "resid_denoise", "resid_noise"]


def induction_pairs(V, max_pos, seed, npairs=8):
    L = min(16, max_pos // 2, (V - 1) // 2)
    r = SplitMix(seed ^ IND_SALT)

    def draw(n, avoid):
        out = []
        while len(out) < n:
            t = r.below(V)
            if t != 0 and t not in out and t not in avoid:
                out.append(t)
        return out

    clean, corr, ans, wrong = [], [], [], []
    for _ in range(npairs):
        R_ = draw(L, [])
        Z, W_ = draw(2, R_)
        c = [0] + R_ + R_[:L - 1]
        k = list(c)
        k[L - 1] = Z
        clean.append(c)
        corr.append(k)
        ans.append([R_[L - 1]])
        wrong.append([W_])
    return {"clean": clean, "corrupted": corr, "answer": ans, "wrong": wrong,
            "positions": [L - 1, L, 2 * L - 1]}


def run(cfg, W, tok, start=0, x0=None, z_hook=None, x_hook=None, grad=False):
    """float64 forward from tokens (start 0) or from a residual x0 entering
    block `start`; z_hook(layer, z) may return a replacement hook_z
    [B,T,NH,HS]; x_hook(layer, x) a replacement hook_resid_pre.  Returns the
    final residual and the per-layer resid_pre and z (with grad retained
    when asked)."""
    C = cfg["hidden_size"]
    NH = cfg["num_attention_heads"]
    HS = C // NH
    eps = cfg["layer_norm_eps"]
    rd = R.rotary_dims(cfg)
    B, T = tok.shape if x0 is None else x0.shape[:2]
    cos, sin = R.rotary_tables(T, rd, float(R.rotary_base(cfg)), DT)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    out = {"resid_pre": {}, "z": {}}
    x = W["gpt_neox.embed_in.weight"][tok] if x0 is None else x0
    if grad:
        x = x.detach().clone().requires_grad_(True)
    for l in range(start, cfg["num_hidden_layers"]):
        p = "gpt_neox.layers.%d." % l
        if x_hook is not None:
            x = x_hook(l, x)
        if grad:
            x.retain_grad()
        out["resid_pre"][l] = x
        ln1 = R.layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps)
        qkv = ln1 @ W[p + "attention.query_key_value.weight"].t() + W[p + "attention.query_key_value.bias"]
        qkv = qkv.view(B, T, NH, 3 * HS).permute(0, 2, 1, 3)
        q = R.apply_rotary(qkv[..., :HS], cos, sin, rd)
        k = R.apply_rotary(qkv[..., HS:2 * HS], cos, sin, rd)
        v = qkv[..., 2 * HS:]
        s = (q @ k.transpose(-1, -2)) * HS ** -0.5
        pat = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
        z = (pat @ v).permute(0, 2, 1, 3).contiguous()
        if z_hook is not None:
            z = z_hook(l, z)
        if grad:
            z.retain_grad()
        out["z"][l] = z
        attn = z.reshape(B, T, C) @ W[p + "attention.dense.weight"].t() + W[p + "attention.dense.bias"]
        if cfg["use_parallel_residual"]:
            mlp_in = x
        else:
            x = x + attn
            mlp_in = x
        ln2 = R.layer_norm(mlp_in, W[p + "post_attention_layernorm.weight"],
                           W[p + "post_attention_layernorm.bias"], eps)
        h = R.gelu_erf(ln2 @ W[p + "mlp.dense_h_to_4h.weight"].t() + W[p + "mlp.dense_h_to_4h.bias"])
        mlp = h @ W[p + "mlp.dense_4h_to_h.weight"].t() + W[p + "mlp.dense_4h_to_h.bias"]
        x = x + attn + mlp if cfg["use_parallel_residual"] else x + mlp
    out["final"] = x
    return x, out


class PairSet:
    def __init__(self, cfg, W, d):
        self.cfg, self.W = cfg, W
        self.clean = torch.tensor(d["clean"])
        self.corr = torch.tensor(d["corrupted"])
        self.B, self.T = self.clean.shape
        self.pos = sorted(p % self.T for p in d["positions"])
        U = W["embed_out.weight"]
        self.dir = torch.stack([U[a].mean(0) - U[w].mean(0)
                                for a, w in zip(d["answer"], d["wrong"])])   # [B,C]
        eps = cfg["layer_norm_eps"]
        self.lnf = lambda x: R.layer_norm(x, W["gpt_neox.final_layer_norm.weight"],
                                          W["gpt_neox.final_layer_norm.bias"], eps)
        self.runs = []
        for tok in (self.clean, self.corr):
            _, o = run(cfg, W, tok)
            self.runs.append(o)
        self.ld = [self.ld_of(o["final"]) for o in self.runs]

    def ld_of(self, final):
        return (self.lnf(final[:, -1]) * self.dir).sum(-1).mean()

    def norm(self, ld):
        return float((ld - self.ld[1]) / (self.ld[0] - self.ld[1]))

    def base_src(self, direction):
        return (1, 0) if direction == "denoise" else (0, 1)

    def exact(self, fam):
        cfg = self.cfg
        NL, NH = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        direction = fam.split("_")[1]
        base, src = self.base_src(direction)
        tok = self.clean if base == 0 else self.corr
        S, Bo = self.runs[src], self.runs[base]
        vals = {}
        for l in range(NL):
            if fam.startswith("resid"):
                for t in range(self.T):
                    def xh(layer, x, l=l, t=t):
                        if layer != l:
                            return x
                        x = x.clone()
                        x[:, t] = S["resid_pre"][l][:, t]
                        return x
                    fin, _ = run(cfg, self.W, tok, start=l, x0=Bo["resid_pre"][l], x_hook=xh)
                    vals[(l, t)] = self.norm(self.ld_of(fin))
            else:
                where = self.pos if fam.endswith("poi") else list(range(self.T))
                for h in range(NH):
                    def zh(layer, z, l=l, h=h):
                        if layer != l:
                            return z
                        z = z.clone()
                        z[:, where, h] = S["z"][l][:, where, h]
                        return z
                    fin, _ = run(cfg, self.W, tok, start=l, x0=Bo["resid_pre"][l], z_hook=zh)
                    vals[(l, h)] = self.norm(self.ld_of(fin))
        return vals

    def grads(self, run_idx):
        tok = self.clean if run_idx == 0 else self.corr
        fin, o = run(self.cfg, self.W, tok, grad=True)
        self.ld_of(fin).backward()
        return o

    def atp(self, fam, g):
        cfg = self.cfg
        NL, NH = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        direction = fam.split("_")[1]
        base, src = self.base_src(direction)
        gap = self.ld[0] - self.ld[1]
        S, Bo = self.runs[src], self.runs[base]
        G = g[base]
        vals = {}
        for l in range(NL):
            if fam.startswith("resid"):
                d = (S["resid_pre"][l] - Bo["resid_pre"][l]) * G["resid_pre"][l].grad
                for t in range(self.T):
                    vals[(l, t)] = d[:, t].sum()
            else:
                where = self.pos if fam.endswith("poi") else list(range(self.T))
                d = (S["z"][l] - Bo["z"][l]) * G["z"][l].grad       # [B,T,NH,HS]
                for h in range(NH):
                    vals[(l, h)] = d[:, where, h].sum()
        off = 0.0 if direction == "denoise" else 1.0
        return {k: float(off + v / gap) for k, v in vals.items()}

    def path(self, direction, senders, receivers):
        cfg, W = self.cfg, self.W
        NH = cfg["num_attention_heads"]
        HS = cfg["hidden_size"] // NH
        base, src = self.base_src(direction)
        tok = self.clean if base == 0 else self.corr
        S, Bo = self.runs[src], self.runs[base]
        out = []
        for s in senders:
            ls, hs = divmod(s, NH)
            row = []
            rec = {}

            def za(layer, z, ls=ls, hs=hs):
                z = z.clone()
                if layer == ls:
                    z[:, :, hs] = S["z"][ls][:, :, hs]
                    return z
                for r in receivers:
                    if r // NH == layer:
                        rec[r] = z[:, :, r % NH].clone()
                return Bo["z"][layer].clone()
            run(cfg, W, tok, start=ls, x0=Bo["resid_pre"][ls], z_hook=za)
            for r in receivers:
                lr, hr = divmod(r, NH)
                if lr <= ls:
                    row.append(None)
                    continue

                def zb(layer, z, lr=lr, hr=hr, r=r):
                    if layer != lr:
                        return z
                    z = z.clone()
                    z[:, :, hr] = rec[r]
                    return z
                fin, _ = run(cfg, W, tok, start=lr, x0=Bo["resid_pre"][lr], z_hook=zb)
                row.append(self.norm(self.ld_of(fin)))
            Wo = W["gpt_neox.layers.%d.attention.dense.weight" % ls][:, hs * HS:(hs + 1) * HS]
            dz = (S["z"][ls] - Bo["z"][ls])[:, -1, hs]          # [B,HS]
            fin = Bo["final"].clone()
            fin[:, -1] = fin[:, -1] + dz @ Wo.t()
            row.append(self.norm(self.ld_of(fin)))
            out.append(row)
        return out


def make_user_set(cfg, W, seed):
    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]
    B, T = 4, 10
    clean = torch.randint(0, V, (B, T), generator=g)
    corr = clean.clone()
    for t in (2, 5):
        corr[:, t] = (clean[:, t] + 1 + torch.randint(0, V - 1, (B,), generator=g)) % V
    U = W["embed_out.weight"]
    ans, wrong = [], []
    _, oc = run(cfg, W, clean)
    _, ok = run(cfg, W, corr)
    ps_l = lambda o: R.layer_norm(o["final"][:, -1], W["gpt_neox.final_layer_norm.weight"],  # noqa: E731
                                  W["gpt_neox.final_layer_norm.bias"], cfg["layer_norm_eps"]) @ U.t()
    lc, lk = ps_l(oc), ps_l(ok)
    for b in range(B):
        a = lc[b].argsort(descending=True)[:2].tolist()
        w = [t for t in lk[b].argsort(descending=True).tolist() if t not in a][:1]
        ans.append(a)
        wrong.append(w)
    return {"name": "ref-pairs", "positions": [5, -1],
            "pairs": [{"clean": clean[b].tolist(), "corrupted": corr[b].tolist(),
                       "answer": ans[b], "wrong": wrong[b]} for b in range(B)]}


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else float("nan")


def write_rows(path, rows):
    with open(path, "w") as f:
        f.write('{"rows": [\n  ')
        f.write(",\n  ".join(json.dumps(r) for r in rows))
        f.write("\n]}\n")
    print("wrote", os.path.relpath(path, ROOT), len(rows), "rows")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, seed in (("f32_parallel_rot025", 11), ("f32_sequential_rot100", 12)):
        cfg, W = load(os.path.join(ROOT, "tests", "golden", name))
        NL, NH = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        user = make_user_set(cfg, W, seed)
        with open(os.path.join(OUT_DIR, "pairs_%s.json" % name), "w") as f:
            f.write('{"name": %s, "positions": %s, "pairs": [\n  ' % (json.dumps(user["name"]),
                                                                        json.dumps(user["positions"])))
            f.write(",\n  ".join(json.dumps(p) for p in user["pairs"]))
            f.write("\n]}\n")
        sets = [induction_pairs(cfg["vocab_size"], cfg["max_position_embeddings"], 0),
                {"clean": [p["clean"] for p in user["pairs"]],
                 "corrupted": [p["corrupted"] for p in user["pairs"]],
                 "answer": [p["answer"] for p in user["pairs"]],
                 "wrong": [p["wrong"] for p in user["pairs"]],
                 "positions": user["positions"]}]
        prow, arow, path_doc = [], [], {}
        for k, d in enumerate(sets):
            ps = PairSet(cfg, W, d)
            print("== %s set %d: LD clean %.6f corrupted %.6f" % (name, k, ps.ld[0], ps.ld[1]))
            prow += [["clean_logit_diff", -1, -1, k, float(ps.ld[0])],
                     ["corrupted_logit_diff", -1, -1, k, float(ps.ld[1])]]
            g = [ps.grads(0), ps.grads(1)]
            arow += [["clean_logit_diff", -1, -1, k, float(ps.ld[0])],
                     ["corrupted_logit_diff", -1, -1, k, float(ps.ld[1])]]
            for fi, fam in enumerate(FAMILIES):
                ex = ps.exact(fam)
                at = ps.atp(fam, g)
                keys = sorted(ex)
                prow += [[fam, l, j, k, ex[(l, j)]] for (l, j) in keys]
                arow += [["atp_" + fam, l, j, k, at[(l, j)]] for (l, j) in keys]
                diffs = [abs(at[x] - ex[x]) for x in keys]
                arow += [["atp_error_mean_abs", -1, fi, k, sum(diffs) / len(diffs)],
                         ["atp_error_max_abs", -1, fi, k, max(diffs)]]
                r = pearson([at[x] for x in keys], [ex[x] for x in keys])
                if not math.isnan(r):
                    arow.append(["atp_error_pearson", -1, fi, k, r])
            if k == 1:
                heads = list(range(NL * NH))
                path_doc = {"set": 1, "senders": heads, "receivers": heads,
                            "denoise": ps.path("denoise", heads, heads),
                            "noise": ps.path("noise", heads, heads)}
        write_rows(os.path.join(OUT_DIR, "%s_patching.json" % name), prow)
        write_rows(os.path.join(OUT_DIR, "%s_attribution.json" % name), arow)
        with open(os.path.join(OUT_DIR, "%s_path.json" % name), "w") as f:
            json.dump(path_doc, f)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
