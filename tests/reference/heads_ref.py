#!/usr/bin/python3
"""Independent reference for the `heads` and `ablation` battery items.

Writes tests/golden/heads/<name>.json: every row the `heads` and
`ablation_exact` items print for a checkpoint with --seed 0 and the
generated eval set (key "ablation": ablation v1's rows, which
ablation_exact keeps and ablation v2 shares where both write a row), and
ablation v2's attribution patching estimates of every head (key
"ablation_atp"), computed here in float64 with torch from the
checkpoint's weights.  tests/test_heads.c
runs the C items on the same checkpoints and compares row by row (the
tolerances are stated there and in tests/golden/README.md).  Run from the
repository root after `make` (the hand-built circuits are written by
build/bin/ckpt-worker init into a temporary directory; they are too large to
commit and are rebuilt by the C test in memory):

    /usr/bin/python3 tests/reference/heads_ref.py

Checkpoints: the golden fixtures f32_parallel_rot025 (parallel residual)
and f32_sequential_rot100 (sequential), and the presets prev-token-circuit
and induction-circuit.

Definitions (workers/battery/battery_heads.c, battery_ablation.c):
  repeated sequences  8 x [BOS=0, R, R]; R: L = min(64, (max_pos-1)//2, V-1)
                      distinct ids from [1, V), drawn with rng_below from a
                      splitmix64 state seed ^ 0x5245504541544544, redrawing 0
                      and repeats
  eval set            16 x min(128, max_pos) ids, rng_below(V) from state seed
  induction_score     mean P[i, i-L+1], i = L+1 .. 2L;  duplicate: P[i, i-L]
  prev_token_score    mean P[i, i-1], i = 1 .. 2L
  attention_entropy   mean over eval rows t >= 1 of -sum p log p
  induction_loss      mean loss of R[1..L-1] in the second copy; first_copy_loss
                      the same in the first copy; drop = first - second
  ablation            sets: 4 eval sequences (every prediction; ablation v3, v4
                      takes the first holding 1024 tokens, at most 4: all 4
                      of the generated set's <= 128 tokens), 4 repeated
                      sequences (second-copy R[1..L-1]); zero / mean (over
                      the set's every position) of a head's hook_z slice;
                      delta = ablated - clean mean loss; direct logit
                      attribution of every component through the clean
                      final LayerNorm scale, towards W_U[y] - mean W_U.
  estimates           g = d (scored mean loss) / d hook_z by autograd;
                      zero: -sum z . g, mean: sum (zmean - z) . g per head.
The forward pass is written here again (not imported from gptneox_ref.py's
forward) because the ablations edit hook_z; its pieces (layer norm, rotary,
GELU) are gptneox_ref.py's, which checks them against torch and float64.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptneox_ref as R  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(ROOT, "tests", "golden", "heads")
WORKER = os.path.join(ROOT, "build", "bin", "ckpt-worker")
M64 = (1 << 64) - 1
DT = torch.float64


class SplitMix:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return ((self.next() >> 32) * n) >> 32


def eval_default(V, max_pos, seed):
    T = min(128, max_pos)
    r = SplitMix(seed)
    return torch.tensor([[r.below(V) for _ in range(T)] for _ in range(16)])


def repeated(V, max_pos, seed):
    L = min(64, (max_pos - 1) // 2, V - 1)
    r = SplitMix(seed ^ 0x5245504541544544)
    rows = []
    for _ in range(8):
        R_ = []
        while len(R_) < L:
            t = r.below(V)
            if t != 0 and t not in R_:
                R_.append(t)
        rows.append([0] + R_ + R_)
    return torch.tensor(rows), L


def forward(cfg, W, tok, z_edit=None):
    """float64 forward; z_edit(layer, z) may return a replacement hook_z.
    Returns logits and a dict of what the items read."""
    C = cfg["hidden_size"]
    NH = cfg["num_attention_heads"]
    HS = C // NH
    eps = cfg["layer_norm_eps"]
    rd = R.rotary_dims(cfg)
    B, T = tok.shape
    cos, sin = R.rotary_tables(T, rd, float(R.rotary_base(cfg)), DT)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    out = {"pattern": [], "z": [], "mlp_out": [], "resid_pre": []}
    x = W["gpt_neox.embed_in.weight"][tok]
    for l in range(cfg["num_hidden_layers"]):
        p = "gpt_neox.layers.%d." % l
        out["resid_pre"].append(x)
        ln1 = R.layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps)
        qkv = ln1 @ W[p + "attention.query_key_value.weight"].t() + W[p + "attention.query_key_value.bias"]
        qkv = qkv.view(B, T, NH, 3 * HS).permute(0, 2, 1, 3)
        q = R.apply_rotary(qkv[..., :HS], cos, sin, rd)
        k = R.apply_rotary(qkv[..., HS:2 * HS], cos, sin, rd)
        v = qkv[..., 2 * HS:]
        s = (q @ k.transpose(-1, -2)) * HS ** -0.5
        pat = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
        out["pattern"].append(pat)
        z = (pat @ v).permute(0, 2, 1, 3).contiguous()          # [B,T,NH,HS]
        if z_edit is not None:
            z = z_edit(l, z)
        out["z"].append(z)
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
        out["mlp_out"].append(mlp)
        x = x + attn + mlp if cfg["use_parallel_residual"] else x + mlp
    out["final"] = x
    lnf = R.layer_norm(x, W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"], eps)
    return lnf @ W["embed_out.weight"].t(), out


def token_loss(logits, tok):
    """[B, T-1]: loss of predicting tok[:, t+1] from row t."""
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -lp.gather(-1, tok[:, 1:, None])[..., 0]


def heads_rows(cfg, W, seed):
    V, mp = cfg["vocab_size"], cfg["max_position_embeddings"]
    NL, NH = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    rep, L = repeated(V, mp, seed)
    ev = eval_default(V, mp, seed)
    logits, o = forward(cfg, W, rep)
    _, oe = forward(cfg, W, ev)
    rows = []
    i2 = torch.arange(L + 1, 2 * L + 1)
    i1 = torch.arange(1, 2 * L + 1)
    for l in range(NL):
        P = o["pattern"][l]
        Pe = oe["pattern"][l]
        ent = -(Pe * torch.where(Pe > 0, Pe.log(), torch.zeros_like(Pe))).sum(-1)  # [B,NH,T]
        for h in range(NH):
            rows += [["induction_score", l, h, -1, P[:, h, i2, i2 - L + 1].mean().item()],
                     ["prev_token_score", l, h, -1, P[:, h, i1, i1 - 1].mean().item()],
                     ["duplicate_token_score", l, h, -1, P[:, h, i2, i2 - L].mean().item()],
                     ["attention_entropy", l, h, -1, ent[:, h, 1:].mean().item()]]
    nll = token_loss(logits, rep)            # row t predicts position t+1
    first = nll[:, 1:L].mean().item()        # R[1..L-1] at positions 2..L
    second = nll[:, L + 1:2 * L].mean().item()
    rows += [["induction_loss", -1, -1, -1, second], ["first_copy_loss", -1, -1, -1, first],
             ["induction_loss_drop", -1, -1, -1, first - second]]
    return rows


def ablation_rows(cfg, W, seed):
    V, mp = cfg["vocab_size"], cfg["max_position_embeddings"]
    NL, NH = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    C = cfg["hidden_size"]
    HS = C // NH
    eps = cfg["layer_norm_eps"]
    rep, L = repeated(V, mp, seed)
    ev = eval_default(V, mp, seed)
    sets = [(ev[:4], torch.ones(ev.shape[1] - 1, dtype=torch.bool)),
            (rep[:4], torch.tensor([L + 1 <= t <= 2 * L - 1 for t in range(rep.shape[1] - 1)]))]
    U = W["embed_out.weight"]
    wf, bf = W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"]
    rows = []
    for idx, (tok, mask) in enumerate(sets):
        def loss_of(logits):
            return token_loss(logits, tok)[:, mask].mean().item()
        logits, o = forward(cfg, W, tok)
        clean = loss_of(logits)
        rows.append(["clean_loss", -1, -1, idx, clean])
        zmean = [z.mean(dim=(0, 1)) for z in o["z"]]        # [NH,HS]
        delta = {}
        for l in range(NL):
            for h in range(NH):
                for kind in ("zero", "mean"):
                    def edit(layer, z, l=l, h=h, kind=kind):
                        if layer != l:
                            return z
                        z = z.clone()
                        z[:, :, h] = 0 if kind == "zero" else zmean[l][h]
                        return z
                    lg, _ = forward(cfg, W, tok, edit)
                    delta[(l, h, kind)] = loss_of(lg) - clean
        # direct logit attribution at the scored rows
        y = tok[:, 1:][:, mask]                               # [B, n]
        x = o["final"][:, :-1][:, mask]                       # [B, n, C]
        sigma = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True).add(eps).sqrt()
        u = U[y] - U.mean(0)                                  # [B, n, C]
        direction = wf * u / sigma

        def dla(comp):                                        # comp [B, n, C]
            c = comp - comp.mean(-1, keepdim=True)
            return (c * direction).sum(-1).mean().item()

        def rows_of(a):
            return a[:, :-1][:, mask]
        lg_sel = logits[:, :-1][:, mask]
        logit_diff = (lg_sel.gather(-1, y[..., None])[..., 0] - lg_sel.mean(-1)).mean().item()
        for l in range(NL):
            p = "gpt_neox.layers.%d." % l
            WO = W[p + "attention.dense.weight"]
            for h in range(NH):
                zh = rows_of(o["z"][l][:, :, h])              # [B, n, HS]
                head = zh @ WO[:, h * HS:(h + 1) * HS].t()
                rows += [["zero_ablation_delta", l, h, idx, delta[(l, h, "zero")]],
                         ["mean_ablation_delta", l, h, idx, delta[(l, h, "mean")]],
                         ["dla_head", l, h, idx, dla(head)]]
        for l in range(NL):
            p = "gpt_neox.layers.%d." % l
            bias = W[p + "attention.dense.bias"].expand(x.shape)
            rows += [["dla_attn_bias", l, -1, idx, dla(bias)],
                     ["dla_mlp", l, -1, idx, dla(rows_of(o["mlp_out"][l]))]]
        rows += [["dla_embed", -1, -1, idx, dla(rows_of(o["resid_pre"][0]))],
                 ["dla_final_bias", -1, -1, idx, (bf * u).sum(-1).mean().item()],
                 ["logit_diff", -1, -1, idx, logit_diff]]
    return rows


def atp_rows(cfg, W, seed):
    """The attribution patching estimates of ablation v2: with g = d (scored
    mean loss) / d hook_z of the clean run (torch autograd, float64),
    zero: -sum over positions of z . g; mean: sum of (zmean - z) . g."""
    V, mp = cfg["vocab_size"], cfg["max_position_embeddings"]
    NL, NH = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    rep, L = repeated(V, mp, seed)
    ev = eval_default(V, mp, seed)
    sets = [(ev[:4], torch.ones(ev.shape[1] - 1, dtype=torch.bool)),
            (rep[:4], torch.tensor([L + 1 <= t <= 2 * L - 1 for t in range(rep.shape[1] - 1)]))]
    rows = []
    for idx, (tok, mask) in enumerate(sets):
        zs = []

        def keep(layer, z):
            if z.requires_grad:
                z.retain_grad()
            else:
                z.requires_grad_()
            zs.append(z)
            return z
        logits, _ = forward(cfg, W, tok, keep)
        token_loss(logits, tok)[:, mask].mean().backward()
        for kind in ("zero", "mean"):
            for l in range(NL):
                z, g = zs[l].detach(), zs[l].grad
                zmean = z.mean(dim=(0, 1))                     # [NH,HS]
                for h in range(NH):
                    base = z[:, :, h] if kind == "zero" else z[:, :, h] - zmean[h]
                    rows.append(["%s_ablation_estimate" % kind, l, h, idx,
                                 -(base * g[:, :, h]).sum().item()])
    return rows


def load(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    raw = R.read_safetensors(os.path.join(d, "model.safetensors"))
    W = {k: torch.from_numpy(v.copy()).to(DT) for k, v in raw.items()}
    cfg.setdefault("use_parallel_residual", True)
    if "gpt_neox.layers.0.attention.dense.bias" not in W:
        raise SystemExit("%s: expected attention biases" % d)
    return cfg, W


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="heads-ref-")
    cases = [("f32_parallel_rot025", os.path.join(ROOT, "tests", "golden", "f32_parallel_rot025")),
             ("f32_sequential_rot100", os.path.join(ROOT, "tests", "golden", "f32_sequential_rot100"))]
    for preset in ("prev-token-circuit", "induction-circuit"):
        d = os.path.join(tmp, preset)
        subprocess.run([WORKER, "init", d, "--preset", preset], check=True, stdout=subprocess.DEVNULL)
        cases.append((preset, d))
    for name, d in cases:
        cfg, W = load(d)
        doc = {"checkpoint": name, "seed": 0,
               "heads": heads_rows(cfg, W, 0), "ablation": ablation_rows(cfg, W, 0),
               "ablation_atp": atp_rows(cfg, W, 0)}
        keys = ("heads", "ablation", "ablation_atp")
        path = os.path.join(OUT_DIR, name + ".json")
        with open(path, "w") as f:   # one row per line
            f.write('{"checkpoint": %s, "seed": 0,\n' % json.dumps(name))
            for i, item in enumerate(keys):
                f.write(' "%s": [\n  ' % item)
                f.write(",\n  ".join(json.dumps(r) for r in doc[item]))
                f.write("\n ]%s\n" % ("," if i + 1 < len(keys) else ""))
            f.write("}\n")
        print("== %s: %d heads rows, %d ablation rows -> %s"
              % (name, len(doc["heads"]), len(doc["ablation"]), os.path.relpath(path, ROOT)))
        for r in doc["heads"]:
            if r[0] in ("induction_loss", "first_copy_loss"):
                print("   %s %.6g" % (r[0], r[4]))
    subprocess.run(["rm", "-rf", tmp], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
