#!/usr/bin/python3
"""Independent float32 reference for the GPT-NeoX (Pythia) forward pass.

Writes the golden fixtures under tests/golden/<name>/ that the C engine's
golden test compares against.  Run from the repository root:

    /usr/bin/python3 tests/reference/gptneox_ref.py        (or: make golden)

Needs only torch (1.13 is enough) and numpy.  It deliberately does NOT use
`transformers` or `safetensors`: the model below is written from the
semantics of HuggingFace's GPTNeoXForCausalLM (modeling_gpt_neox.py) and the
safetensors container is written by hand with struct + json.

Semantics implemented (all float32):
  x = embed_in[tokens]
  per layer:
    ln1  = LayerNorm(x)                      eps = layer_norm_eps (biased var)
    qkv  = ln1 @ Wqkv^T + bqkv  -> view [B,T,NH,3*HS]; q,k,v = thirds of last dim
    rotary on the first rd = int(HS*rotary_pct) dims of q and k,
        inv_freq = 1/(base ** (arange(0,rd,2)/rd)), angle = pos*inv_freq,
        cos/sin of cat(angle, angle), x*cos + rotate_half(x)*sin,
        rotate_half(x) = cat(-x[rd/2:], x[:rd/2]); positions 0..T-1
    scores = (q @ k^T) * HS**-0.5, causal mask, softmax   -> hook_pattern
    z = pattern @ v (laid out [B,T,NH,HS])                 -> hook_z
    attn_out = z.reshape(B,T,C) @ Wdense^T + bdense        -> hook_attn_out
    parallel:   x = x + attn_out + mlp(LN2(x))
    sequential: x_mid = x + attn_out; x = x_mid + mlp(LN2(x_mid))
    mlp(u) = gelu_erf(u @ Win^T + bin) @ Wout^T + bout     (post = gelu output)
  ln_f = LayerNorm_final(x)         (hook_scale, hook_normalized before w, b)
  logits = ln_f @ embed_out^T (no bias)
  loss[b] = mean_{t<T-1} CE(logits[b,t], tokens[b,t+1])

float64 is used ONLY in the self-checks (check_* functions and the float64
shadow forward pass), never to produce a stored golden value.
"""

import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)          # reproducible reductions run to run
torch.use_deterministic_algorithms(True)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")

# --------------------------------------------------------------------------
# safetensors writer (format: u64 LE header length, JSON header, raw data)
# --------------------------------------------------------------------------

_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}


def f32_to_bf16_bits(a):
    """float32 ndarray -> uint16 ndarray of bfloat16 bits, round-to-nearest-even."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    assert np.all(np.isfinite(a))
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def encode(arr, dtype):
    """Return (raw little-endian bytes, shape) of arr stored as `dtype`."""
    arr = np.asarray(arr)
    shape = list(arr.shape)
    if dtype == "F32":
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    elif dtype == "F16":
        raw = np.ascontiguousarray(arr.astype(np.float32).astype("<f2")).tobytes()
    elif dtype == "BF16":
        raw = f32_to_bf16_bits(arr).astype("<u2").tobytes()
    elif dtype in ("U8", "BOOL"):
        raw = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    else:
        raise ValueError(dtype)
    n = 1
    for s in shape:
        n *= s
    assert len(raw) == n * _ITEMSIZE[dtype]
    return raw, shape


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> (ndarray, dtype string).

    Data is laid out like the reference library does: larger item sizes first
    (so every tensor is naturally aligned), then by name.  Returns the number
    of data bytes."""
    order = sorted(tensors, key=lambda n: (-_ITEMSIZE[tensors[n][1]], n))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs = []
    off = 0
    for name in order:
        arr, dtype = tensors[name]
        raw, shape = encode(arr, dtype)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((-len(hdr)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for b in blobs:
            f.write(b)
    return off


def read_safetensors(path):
    """Minimal reader used to verify what was written (round trip)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        end_max = max(end_max, b)
        buf = data[base + a:base + b]
        dt = info["dtype"]
        if dt == "F32":
            v = np.frombuffer(buf, dtype="<f4")
        elif dt == "F16":
            v = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            v = bf16_bits_to_f32(np.frombuffer(buf, dtype="<u2"))
        else:
            v = np.frombuffer(buf, dtype=np.uint8)
        out[name] = v.reshape(info["shape"])
    assert base + end_max == len(data), "trailing/missing bytes"
    return out


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def layer_norm(x, w, b, eps):
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    return xc / torch.sqrt(var + eps) * w + b


def layer_norm_hooked(x, w, b, eps, rec, prefix):
    """layer_norm with TransformerLens's hook points (>= 3.0): hook_scale
    = sqrt(biased var + eps) [..,1], hook_normalized = (x - mean) / scale,
    before the weight and bias.  The same arithmetic as layer_norm."""
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    sc = torch.sqrt(var + eps)
    rec(prefix + "hook_scale", sc)
    n = xc / sc
    rec(prefix + "hook_normalized", n)
    return n * w + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def rotary_tables(T, rd, base, dtype=torch.float32):
    """cos, sin of shape [T, rd] (float32 unless asked otherwise)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.int64).to(dtype) / rd))
    pos = torch.arange(T, dtype=torch.int64).to(dtype)
    ang = pos[:, None] * inv_freq[None, :]            # [T, rd/2]
    emb = torch.cat([ang, ang], dim=-1)               # [T, rd]
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rotary(x, cos, sin, rd):
    """x: [B,NH,T,HS]; rotate the first rd dims."""
    if rd == 0:
        return x
    xr, xp = x[..., :rd], x[..., rd:]
    xr = xr * cos + rotate_half(xr) * sin
    return torch.cat([xr, xp], dim=-1)


def softmax_lastdim(s):
    m = s.max(dim=-1, keepdim=True).values
    e = torch.exp(s - m)
    return e / e.sum(dim=-1, keepdim=True)


def rotary_dims(cfg):
    hs = cfg["hidden_size"] // cfg["num_attention_heads"]
    pct = cfg.get("rotary_pct", cfg.get("partial_rotary_factor",
                  cfg.get("rope_parameters", {}).get("partial_rotary_factor")))
    return int(hs * pct)


def rotary_base(cfg):
    return cfg.get("rotary_emb_base", cfg.get("rope_theta",
                   cfg.get("rope_parameters", {}).get("rope_theta")))


def forward(cfg, W, tokens, dtype=torch.float32, record=True, keep_graph=False,
            attn_in=None):
    """W: dict name -> tensor (already upcast to float32 from its storage
    dtype).  tokens: LongTensor [B,T].  Returns (logits, loss, hooks).
    keep_graph: hooks[name] is the tensor of the graph itself (retain_grad
    set), so hooks[name].grad holds d metric / d activation after a
    backward; several names may share one tensor (resid_post of layer l is
    resid_pre of layer l+1).  It also computes the attention output as the
    sum of the per-head results and the MLP from a copy of its input, so
    hook_result and hook_mlp_in are points of the graph.  attn_in (default:
    keep_graph) runs each head's LayerNorm on its own copy of the residual,
    as TransformerLens does with use_attn_in."""
    if attn_in is None:
        attn_in = keep_graph
    C = cfg["hidden_size"]
    NH = cfg["num_attention_heads"]
    HS = C // NH
    L = cfg["num_hidden_layers"]
    eps = cfg["layer_norm_eps"]
    par = cfg["use_parallel_residual"]
    rd = rotary_dims(cfg)
    base = float(rotary_base(cfg))
    B, T = tokens.shape
    W = {k: v.to(dtype) for k, v in W.items()}
    hooks = {}

    def rec(name, t):
        if not record:
            return
        if keep_graph:
            t.retain_grad()
            hooks[name] = t
        elif record:
            hooks[name] = t.detach().clone()

    cos, sin = rotary_tables(T, rd, base, dtype)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scale = HS ** -0.5

    x = W["gpt_neox.embed_in.weight"][tokens]         # [B,T,C]
    rec("hook_embed", x)
    for l in range(L):
        p = "gpt_neox.layers.%d." % l
        b_ = "blocks.%d." % l
        rec(b_ + "hook_resid_pre", x)
        Wqkv = W[p + "attention.query_key_value.weight"]
        bqkv = W[p + "attention.query_key_value.bias"]
        if attn_in:
            # TransformerLens's use_attn_in: each head reads its own copy of
            # the residual through its own LayerNorm (ln1 hooks [B,T,NH,..])
            ain = x[:, :, None, :].expand(B, T, NH, C).clone()
            rec(b_ + "hook_attn_in", ain)
            ln1 = layer_norm_hooked(ain, W[p + "input_layernorm.weight"],
                                    W[p + "input_layernorm.bias"], eps, rec, b_ + "ln1.")
            qkv = torch.einsum("bthc,hjc->bthj", ln1, Wqkv.view(NH, 3 * HS, C)) \
                + bqkv.view(NH, 3 * HS)
        else:
            if record:
                rec(b_ + "hook_attn_in", x[:, :, None, :].expand(B, T, NH, C))
            ln1 = layer_norm_hooked(x, W[p + "input_layernorm.weight"],
                                    W[p + "input_layernorm.bias"], eps, rec, b_ + "ln1.")
            qkv = (ln1 @ Wqkv.t() + bqkv).view(B, T, NH, 3 * HS)
        q = qkv[..., 0:HS]                                        # [B,T,NH,HS]
        k = qkv[..., HS:2 * HS]
        v = qkv[..., 2 * HS:3 * HS]
        rec(b_ + "attn.hook_q", q)
        rec(b_ + "attn.hook_k", k)
        rec(b_ + "attn.hook_v", v)
        q = apply_rotary(q, cos[:, None, :], sin[:, None, :], rd)
        k = apply_rotary(k, cos[:, None, :], sin[:, None, :], rd)
        rec(b_ + "attn.hook_rot_q", q)
        rec(b_ + "attn.hook_rot_k", k)
        q = q.permute(0, 2, 1, 3)                                 # [B,NH,T,HS]
        k = k.permute(0, 2, 1, 3)
        v = v.permute(0, 2, 1, 3)
        scores = (q @ k.transpose(-1, -2)) * scale               # [B,NH,T,T]
        scores = scores.masked_fill(~causal, float("-inf"))
        rec(b_ + "attn.hook_attn_scores", scores)
        pattern = softmax_lastdim(scores)
        rec(b_ + "attn.hook_pattern", pattern)
        z = (pattern @ v).permute(0, 2, 1, 3).contiguous()       # [B,T,NH,HS]
        rec(b_ + "attn.hook_z", z)
        Wd = W[p + "attention.dense.weight"]                     # [C, NH*HS]
        if keep_graph:
            # TransformerLens's use_attn_result: the per-head outputs, summed
            res = torch.einsum("bthd,chd->bthc", z, Wd.view(C, NH, HS))
            rec(b_ + "attn.hook_result", res)
            attn_out = res.sum(dim=2) + W[p + "attention.dense.bias"]
        else:
            if record:
                # per-head output without the bias: z[:, :, h] @ W_O[:, h]^T
                rec(b_ + "attn.hook_result", torch.einsum("bthd,chd->bthc", z,
                                                          Wd.view(C, NH, HS)))
            attn_out = z.reshape(B, T, C) @ Wd.t() + W[p + "attention.dense.bias"]
        rec(b_ + "hook_attn_out", attn_out)
        if par:
            mlp_in = x
        else:
            x = x + attn_out
            rec(b_ + "hook_resid_mid", x)
            mlp_in = x
        if keep_graph:
            mlp_in = mlp_in.clone()          # TransformerLens's use_hook_mlp_in
        rec(b_ + "hook_mlp_in", mlp_in)
        ln2 = layer_norm_hooked(mlp_in, W[p + "post_attention_layernorm.weight"],
                                W[p + "post_attention_layernorm.bias"], eps, rec, b_ + "ln2.")
        pre = ln2 @ W[p + "mlp.dense_h_to_4h.weight"].t() + W[p + "mlp.dense_h_to_4h.bias"]
        rec(b_ + "mlp.hook_pre", pre)
        h = gelu_erf(pre)
        rec(b_ + "mlp.hook_post", h)
        mlp_out = h @ W[p + "mlp.dense_4h_to_h.weight"].t() \
            + W[p + "mlp.dense_4h_to_h.bias"]
        rec(b_ + "hook_mlp_out", mlp_out)
        if par:
            x = x + attn_out + mlp_out
        else:
            x = x + mlp_out
        rec(b_ + "hook_resid_post", x)
    lnf = layer_norm_hooked(x, W["gpt_neox.final_layer_norm.weight"],
                            W["gpt_neox.final_layer_norm.bias"], eps, rec, "ln_final.")
    logits = lnf @ W["embed_out.weight"].t()                     # [B,T,V]
    # per-sequence loss
    lp = logits[:, :-1, :] - torch.logsumexp(logits[:, :-1, :], dim=-1, keepdim=True)
    tgt = tokens[:, 1:]
    nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)          # [B,T-1]
    loss = nll.mean(dim=-1)
    return logits, loss, hooks


# --------------------------------------------------------------------------
# Self-checks (float64 alternatives)
# --------------------------------------------------------------------------

def check_layer_norm(gen):
    for shape in [(2, 5, 64), (3, 7, 48)]:
        x = torch.randn(*shape, generator=gen) * 3 + 0.7
        w = 1 + 0.1 * torch.randn(shape[-1], generator=gen)
        b = 0.1 * torch.randn(shape[-1], generator=gen)
        mine = layer_norm(x, w, b, 1e-5)
        ref = F.layer_norm(x, (shape[-1],), w, b, 1e-5)
        d = (mine - ref).abs().max().item()
        assert d < 1e-5, "layer_norm mismatch %g" % d


def check_gelu(gen):
    x = torch.randn(1000, generator=gen) * 4
    d = (gelu_erf(x) - F.gelu(x)).abs().max().item()
    assert d < 1e-6, "gelu mismatch %g" % d


def check_rotary():
    """rotate_half form vs explicit pair rotation in float64:
    dims (i, i+rd/2) are rotated by angle pos * base^(-2i/rd)."""
    for rd, base, T in [(4, 10000.0, 16), (16, 500.0, 16), (8, 10000.0, 9)]:
        g = torch.Generator().manual_seed(rd * 131 + T)
        x = torch.randn(2, 3, T, 16, generator=g)
        cos, sin = rotary_tables(T, rd, base)
        mine = apply_rotary(x, cos, sin, rd).double()
        xd = x.double()
        ref = xd.clone()
        h = rd // 2
        for t in range(T):
            for i in range(h):
                th = t * base ** (-(2.0 * i) / rd)
                a, b = xd[:, :, t, i], xd[:, :, t, i + h]
                ref[:, :, t, i] = a * math.cos(th) - b * math.sin(th)
                ref[:, :, t, i + h] = b * math.cos(th) + a * math.sin(th)
        d = (mine - ref).abs().max().item()
        assert d < 1e-4, "rotary mismatch %g (rd=%d)" % (d, rd)


def check_attention(cfg, W, tokens, hooks):
    """Recompute every layer's attention from the recorded float32 residual
    stream with an explicit per-(batch, head, query) loop in float64 and
    compare the pattern, z and attn_out."""
    C = cfg["hidden_size"]
    NH = cfg["num_attention_heads"]
    HS = C // NH
    rd = rotary_dims(cfg)
    base = float(rotary_base(cfg))
    eps = cfg["layer_norm_eps"]
    B, T = tokens.shape
    Wd = {k: v.double() for k, v in W.items()}
    worst = [0.0, 0.0, 0.0]
    for l in range(cfg["num_hidden_layers"]):
        p = "gpt_neox.layers.%d." % l
        x = hooks["blocks.%d.hook_resid_pre" % l].double()
        ln1 = F.layer_norm(x, (C,), Wd[p + "input_layernorm.weight"],
                           Wd[p + "input_layernorm.bias"], eps)
        Wqkv = Wd[p + "attention.query_key_value.weight"]
        bqkv = Wd[p + "attention.query_key_value.bias"]
        pat = torch.zeros(B, NH, T, T, dtype=torch.float64)
        z = torch.zeros(B, T, NH, HS, dtype=torch.float64)
        for hd in range(NH):
            r0 = hd * 3 * HS
            Wq, bq = Wqkv[r0:r0 + HS], bqkv[r0:r0 + HS]
            Wk, bk = Wqkv[r0 + HS:r0 + 2 * HS], bqkv[r0 + HS:r0 + 2 * HS]
            Wv, bv = Wqkv[r0 + 2 * HS:r0 + 3 * HS], bqkv[r0 + 2 * HS:r0 + 3 * HS]
            for bb in range(B):
                q = ln1[bb] @ Wq.t() + bq          # [T,HS]
                k = ln1[bb] @ Wk.t() + bk
                v = ln1[bb] @ Wv.t() + bv
                # explicit pair rotation
                qr, kr = q.clone(), k.clone()
                hh = rd // 2
                for t in range(T):
                    for i in range(hh):
                        th = t * base ** (-(2.0 * i) / rd)
                        c, s = math.cos(th), math.sin(th)
                        qr[t, i] = q[t, i] * c - q[t, i + hh] * s
                        qr[t, i + hh] = q[t, i + hh] * c + q[t, i] * s
                        kr[t, i] = k[t, i] * c - k[t, i + hh] * s
                        kr[t, i + hh] = k[t, i + hh] * c + k[t, i] * s
                for t in range(T):
                    sc = [float((qr[t] * kr[j]).sum()) / math.sqrt(HS)
                          for j in range(t + 1)]
                    m = max(sc)
                    e = [math.exp(s_ - m) for s_ in sc]
                    tot = sum(e)
                    for j in range(t + 1):
                        pat[bb, hd, t, j] = e[j] / tot
                    z[bb, t, hd] = sum(pat[bb, hd, t, j] * v[j] for j in range(t + 1))
        attn_out = z.reshape(B, T, C) @ Wd[p + "attention.dense.weight"].t() \
            + Wd[p + "attention.dense.bias"]
        dp = (hooks["blocks.%d.attn.hook_pattern" % l].double() - pat).abs().max().item()
        dz = (hooks["blocks.%d.attn.hook_z" % l].double() - z).abs().max().item()
        da = (hooks["blocks.%d.hook_attn_out" % l].double() - attn_out).abs().max().item()
        worst = [max(worst[0], dp), max(worst[1], dz), max(worst[2], da)]
    assert worst[0] < 2e-6, "attention pattern self-check failed: %g" % worst[0]
    assert worst[1] < 1e-4 and worst[2] < 1e-4, "attention z/out self-check failed: %s" % worst
    return worst


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

def make_config(C, NH, L, F_, V, rot_pct, base, parallel, torch_dtype,
                max_pos=64, newer=False):
    cfg = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": V,
        "hidden_size": C,
        "num_hidden_layers": L,
        "num_attention_heads": NH,
        "intermediate_size": F_,
        "max_position_embeddings": max_pos,
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": parallel,
        "hidden_act": "gelu",
        "tie_word_embeddings": False,
        "torch_dtype": torch_dtype,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if newer:
        cfg["rope_theta"] = base
        cfg["partial_rotary_factor"] = rot_pct
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": base,
                                  "partial_rotary_factor": rot_pct}
    else:
        cfg["rotary_pct"] = rot_pct
        cfg["rotary_emb_base"] = base
    return cfg


def make_weights(cfg, seed, qk_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    C = cfg["hidden_size"]
    NH = cfg["num_attention_heads"]
    HS = C // NH
    F_ = cfg["intermediate_size"]
    V = cfg["vocab_size"]

    def n(*shape, std):
        return torch.randn(*shape, generator=g) * std

    W = {}
    W["gpt_neox.embed_in.weight"] = n(V, C, std=0.1)
    for l in range(cfg["num_hidden_layers"]):
        p = "gpt_neox.layers.%d." % l
        W[p + "input_layernorm.weight"] = 1 + n(C, std=0.1)
        W[p + "input_layernorm.bias"] = n(C, std=0.05)
        W[p + "post_attention_layernorm.weight"] = 1 + n(C, std=0.1)
        W[p + "post_attention_layernorm.bias"] = n(C, std=0.05)
        wqkv = n(3 * C, C, std=0.05)
        bqkv = n(3 * C, std=0.05)
        if qk_scale != 1.0:
            for h in range(NH):
                r0 = h * 3 * HS
                wqkv[r0:r0 + 2 * HS] *= qk_scale     # q and k rows of head h
                bqkv[r0:r0 + 2 * HS] *= qk_scale
        W[p + "attention.query_key_value.weight"] = wqkv
        W[p + "attention.query_key_value.bias"] = bqkv
        W[p + "attention.dense.weight"] = n(C, C, std=0.05)
        W[p + "attention.dense.bias"] = n(C, std=0.03)
        W[p + "mlp.dense_h_to_4h.weight"] = n(F_, C, std=0.05)
        W[p + "mlp.dense_h_to_4h.bias"] = n(F_, std=0.05)
        W[p + "mlp.dense_4h_to_h.weight"] = n(C, F_, std=0.05)
        W[p + "mlp.dense_4h_to_h.bias"] = n(C, std=0.03)
    W["gpt_neox.final_layer_norm.weight"] = 1 + n(C, std=0.1)
    W["gpt_neox.final_layer_norm.bias"] = n(C, std=0.05)
    W["embed_out.weight"] = n(V, C, std=0.1)
    return W, g


def round_to(W, st_dtype):
    """Round float32 weights to the storage dtype and back (exactly what the
    C engine sees after upcasting)."""
    out = {}
    for k, v in W.items():
        a = v.numpy().astype(np.float32)
        if st_dtype == "F16":
            r = a.astype(np.float16).astype(np.float32)
            assert np.array_equal(r, v.half().float().numpy())
        elif st_dtype == "BF16":
            r = bf16_bits_to_f32(f32_to_bf16_bits(a))
            # our RNE must agree with torch's own bfloat16 conversion
            assert np.array_equal(r, v.bfloat16().float().numpy()), k
        else:
            r = a
        out[k] = torch.from_numpy(np.ascontiguousarray(r))
    return out


# Hook points of the first golden set; the others (TransformerLens's full
# set) are stored only in the fixtures made with tl_hooks=True, to keep the
# files small.  hook_attn_in is never stored: it is hook_resid_pre repeated
# per head.
HOOKS_BASIC = {"hook_embed", "hook_resid_pre", "attn.hook_pattern", "attn.hook_z",
               "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
               "hook_resid_post", "ln_final.hook_normalized"}

HOOK_ORDER_LAYER = ["hook_resid_pre", "attn.hook_pattern", "attn.hook_z",
                    "hook_attn_out", "hook_resid_mid", "mlp.hook_post",
                    "hook_mlp_out", "hook_resid_post",
                    "hook_attn_in", "ln1.hook_scale", "ln1.hook_normalized",
                    "attn.hook_q", "attn.hook_k", "attn.hook_v",
                    "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores",
                    "attn.hook_result", "hook_mlp_in", "ln2.hook_scale",
                    "ln2.hook_normalized", "mlp.hook_pre"]


def fixture(name, *, C=64, NH=4, L=2, F_=256, V=96, rot_pct=0.25, base=10000,
            parallel=True, B=2, T=12, st_dtype="F32", seed=0, qk_scale=1.0,
            sharded=False, newer=False, tl_hooks=False):
    out_dir = os.path.join(GOLDEN_DIR, name)
    os.makedirs(out_dir, exist_ok=True)
    for fn in os.listdir(out_dir):           # drop stale files from old runs
        os.remove(os.path.join(out_dir, fn))
    torch_dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[st_dtype]
    cfg = make_config(C, NH, L, F_, V, rot_pct, base, parallel, torch_dtype,
                      newer=newer)
    W, g = make_weights(cfg, seed, qk_scale)
    tokens = torch.randint(0, V, (B, T), generator=g)
    Wr = round_to(W, st_dtype)

    logits, loss, hooks = forward(cfg, Wr, tokens)

    # --- self-checks -----------------------------------------------------
    worst = check_attention(cfg, Wr, tokens, hooks)
    logits64, loss64, _ = forward(cfg, Wr, tokens, dtype=torch.float64, record=False)
    dl = (logits.double() - logits64).abs().max().item()
    assert dl < 1e-4, "float32 vs float64 logits differ by %g" % dl
    ce = torch.stack([F.cross_entropy(logits[b, :-1], tokens[b, 1:]) for b in range(B)])
    assert (ce - loss).abs().max().item() < 1e-5
    assert torch.isfinite(logits).all()

    # --- weights -----------------------------------------------------------
    wt = {k: (v.numpy(), st_dtype) for k, v in Wr.items()}
    if newer:
        rd = rotary_dims(cfg)
        mp = cfg["max_position_embeddings"]
        inv = (1.0 / (float(base) ** (torch.arange(0, rd, 2).float() / rd))).numpy()
        for l in range(L):
            p = "gpt_neox.layers.%d.attention." % l
            wt[p + "bias"] = (np.tril(np.ones((mp, mp), np.uint8)).reshape(1, 1, mp, mp), "BOOL")
            wt[p + "masked_bias"] = (np.array(-1e9, dtype=np.float32), "F32")
            wt[p + "rotary_emb.inv_freq"] = (inv.astype(np.float32), "F32")
    meta = {"format": "pt"}
    if sharded:
        names = sorted(wt)
        # put the first half of the layers (+ embed_in) in shard 1, rest in 2
        s1 = [n_ for n_ in names if n_.startswith("gpt_neox.embed_in")
              or n_.startswith("gpt_neox.layers.0.")]
        s2 = [n_ for n_ in names if n_ not in s1]
        files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        total = 0
        wmap = {}
        for fn, group in zip(files, [s1, s2]):
            total += write_safetensors(os.path.join(out_dir, fn),
                                       {n_: wt[n_] for n_ in group}, meta)
            for n_ in group:
                wmap[n_] = fn
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total},
                       "weight_map": dict(sorted(wmap.items()))}, f, indent=2)
            f.write("\n")
        shard_paths = [os.path.join(out_dir, fn) for fn in files]
    else:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), wt, meta)
        shard_paths = [os.path.join(out_dir, "model.safetensors")]

    # round-trip check of the weights we wrote
    back = {}
    for sp in shard_paths:
        back.update(read_safetensors(sp))
    assert set(back) == set(wt)
    for k, v in Wr.items():
        assert np.array_equal(back[k], v.numpy()), k

    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "tokens.json"), "w") as f:
        json.dump(tokens.tolist(), f)
        f.write("\n")

    # --- golden -----------------------------------------------------------
    gold = {"logits": (logits.numpy(), "F32"), "loss": (loss.numpy(), "F32")}

    def stored(name):
        short = name.split(".", 2)[2] if name.startswith("blocks.") else name
        return short != "hook_attn_in" and (tl_hooks or short in HOOKS_BASIC)

    for k, v in hooks.items():
        if stored(k):
            gold[k] = (v.numpy(), "F32")
    # shape sanity
    HS = C // NH
    expect = {"hook_embed": [B, T, C], "ln_final.hook_normalized": [B, T, C],
              "logits": [B, T, V], "loss": [B]}
    if tl_hooks:
        expect["ln_final.hook_scale"] = [B, T, 1]
    for l in range(L):
        for h in HOOK_ORDER_LAYER:
            if (h == "hook_resid_mid" and parallel) or not stored("blocks.0." + h):
                continue
            shp = {"attn.hook_pattern": [B, NH, T, T], "attn.hook_attn_scores": [B, NH, T, T],
                   "attn.hook_z": [B, T, NH, HS], "attn.hook_q": [B, T, NH, HS],
                   "attn.hook_k": [B, T, NH, HS], "attn.hook_v": [B, T, NH, HS],
                   "attn.hook_rot_q": [B, T, NH, HS], "attn.hook_rot_k": [B, T, NH, HS],
                   "attn.hook_result": [B, T, NH, C], "hook_attn_in": [B, T, NH, C],
                   "ln1.hook_scale": [B, T, 1], "ln2.hook_scale": [B, T, 1],
                   "mlp.hook_post": [B, T, F_], "mlp.hook_pre": [B, T, F_]}.get(h, [B, T, C])
            expect["blocks.%d.%s" % (l, h)] = shp
    assert {k: list(v[0].shape) for k, v in gold.items()} == expect
    write_safetensors(os.path.join(out_dir, "golden.safetensors"), gold,
                      {"generator": "tests/reference/gptneox_ref.py"})
    gb = read_safetensors(os.path.join(out_dir, "golden.safetensors"))
    assert np.array_equal(gb["logits"], logits.numpy())

    # --- report -----------------------------------------------------------
    print("== %s  (%s, C=%d NH=%d L=%d F=%d V=%d rd=%d base=%g %s, B=%d T=%d)"
          % (name, st_dtype, C, NH, L, F_, V, rotary_dims(cfg), float(base),
             "parallel" if parallel else "sequential", B, T))
    tot = 0
    for fn in sorted(os.listdir(out_dir)):
        sz = os.path.getsize(os.path.join(out_dir, fn))
        tot += sz
        print("   %-40s %8d bytes" % (fn, sz))
    print("   %-40s %8d bytes" % ("TOTAL", tot))
    print("   loss = [%s]" % ", ".join("%.6f" % x for x in loss.tolist()))
    print("   self-check: max|dpattern| %.2e  max|dz| %.2e  max|dattn_out| %.2e"
          " (vs float64 loop); max|dlogit| f32 vs f64 %.2e" % (worst[0], worst[1], worst[2], dl))
    pats = torch.stack([hooks["blocks.%d.attn.hook_pattern" % l] for l in range(L)])
    rowmax = pats.max(dim=-1).values                  # [L,B,NH,T]
    frac_all = (rowmax > 0.9).float().mean().item()
    frac_nontriv = (rowmax[..., 1:] > 0.9).float().mean().item()
    print("   rows with max prob > 0.9: %.1f%% of all rows, %.1f%% excluding t=0"
          % (100 * frac_all, 100 * frac_nontriv))
    if tot > 620 * 1024:
        print("   WARNING: fixture larger than ~600 KB")
    return frac_nontriv


def main():
    gen = torch.Generator().manual_seed(1234)
    check_layer_norm(gen)
    check_gelu(gen)
    check_rotary()
    # bf16 rounding: ties go to even
    t = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -1.0 - 2 ** -8], dtype=np.float32)
    assert list(bf16_bits_to_f32(f32_to_bf16_bits(t))) == [1.0, 1.0 + 2 ** -6, -1.0]
    print("unit self-checks passed (layer_norm, gelu, rotary, bf16 rounding)")

    fixture("f32_parallel_rot025", seed=1, tl_hooks=True)
    # F=128 (!= 4C) keeps the 3-layer fixture under ~600 KB and checks the
    # engine reads intermediate_size instead of assuming 4*hidden.
    fixture("f32_sequential_rot100", rot_pct=1.0, base=500, parallel=False,
            L=3, F_=128, B=1, T=16, seed=2, tl_hooks=True)
    fixture("f16_parallel", st_dtype="F16", seed=3)
    fixture("bf16_parallel", st_dtype="BF16", seed=4)
    fixture("sharded", sharded=True, seed=5)
    frac = fixture("peaky", B=2, T=16, F_=128, qk_scale=8.0, seed=6, tl_hooks=True)
    assert frac > 0.30, "peaky fixture is not peaky enough: %.3f" % frac
    print("   peaky: %.1f%% of non-trivial attention rows have max prob > 0.9" % (100 * frac))
    # non-default values, so an engine that ignored the newer spellings and
    # fell back to the defaults (0.25, 10000) would fail
    fixture("newer_config", newer=True, rot_pct=0.5, base=2500, seed=7)
    return 0


if __name__ == "__main__":
    sys.exit(main())
