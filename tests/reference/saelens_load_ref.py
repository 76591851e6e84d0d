#!/usr/bin/python3
"""Read an SAE dictionary the way SAELens 6 (and, for sparsify folders,
sparsify) reads it, and compare what it computes with ckptd's C side.

Written from SAELens 6.18.0's loader rules, independently of the C code
(python3 standard library only: json, struct, a small safetensors and .npy
reader here):
  - files: cfg.json + sae_weights.safetensors (SAELens) or cfg.json +
    sae.safetensors (sparsify);
  - the dialect test of handle_config_defaulting: the top-level
    sae_lens_version, else metadata's; missing, empty or below 6.0.0rc0
    (PEP 440, compared with the `packaging` library SAELens uses) is the
    pre-6.0 dialect, converted as handle_pre_6_0_config converts it;
  - the architecture registry (standard, topk, jumprelu here; the rest of
    SAELens's refused), the config class's fields (unknown keys dropped,
    TopK's k defaulting to 100), DTYPE_MAP;
  - the state dict: every tensor cast to cfg.json's dtype, loaded strictly
    (exact names and shapes), scaling_factor of ones dropped;
  - encode/decode: x - b_dec * apply_b_dec_to_input; pre = x W_enc + b_enc;
    standard ReLU, topk the k largest of pre (times the decoder row norms
    with rescale_acts_by_decoder_norm) then ReLU, jumprelu ReLU(pre) where
    pre > threshold; out = acts W_dec (acts / norms when rescaled) + b_dec;
    normalize_activations expected_average_only_in with
    activation_scaler.json: the input times the factor, the output divided
    by it (what SAELens's trainer does around the SAE);
  - sparsify: x - b_dec, ReLU(x W_enc^T + b), its k largest; out = acts W_dec
    + b_dec (W_dec [num_latents, d_in] as stored).
The activations are the float32 values ckptd reads; the weights are cast
exactly as SAELens casts them; the arithmetic is float64.  (SAELens itself
would also cast the input to a float16/bfloat16 dictionary's dtype and
compute in it; that rounding is SAELens's own and is not modelled.)

Usage (run from the repository root):
  saelens_load_ref.py DIR --acts X.npy --c-out OUT [--tol 1e-4]
      [--expect-model NAME] [--expect-step N] [--expect-revision REV]
      [--rows ROWS.tsv --item ITEM]
DIR is the dictionary, X.npy float32 activations [..., d_in], OUT holds
ckpt-worker sae's feature_acts.npy and reconstruction.npy for X.  Asserted:
  - |C - reference| <= tol * max(1, max |reference|) for the codes and the
    reconstruction (tolerance stated per tensor; topk/jumprelu selections
    must agree);
  - with --expect-*: cfg.json's provenance (metadata.model_name,
    model_from_pretrained_kwargs checkpoint_value or revision plus the five
    no-processing flags false, model_class_name HookedTransformer,
    metadata.ckptd.step);
  - with --rows (the item's COPY rows) and --item: the SAELens-folded file
    computes the trained codes, so for every latent the mean activation the
    reference computes over X (where active) divided by
    metadata.ckptd.norm_scaling_factor equals the item's
    feature_mean_activation (relative 1e-4), and the density equals
    feature_density (within 2 tokens, ties at 0 aside).
Prints the largest differences; exits 1 on any failure.
"""
import argparse
import ast
import json
import math
import os
import struct
import sys

try:
    from packaging.version import Version
except ImportError:  # Debian: the copy setuptools carries
    from pkg_resources.extern.packaging.version import Version


# ---- files ----

def read_npy(path):
    raw = open(path, "rb").read()
    if raw[:6] != b"\x93NUMPY":
        raise ValueError("%s: not a .npy file" % path)
    major = raw[6]
    if major == 1:
        hlen = struct.unpack("<H", raw[8:10])[0]
        off = 10
    else:
        hlen = struct.unpack("<I", raw[8:12])[0]
        off = 12
    hdr = ast.literal_eval(raw[off:off + hlen].decode("latin1"))
    if hdr["descr"] != "<f4" or hdr["fortran_order"]:
        raise ValueError("%s: %s" % (path, hdr))
    shape = tuple(hdr["shape"])
    n = 1
    for d in shape:
        n *= d
    data = struct.unpack("<%df" % n, raw[off + hlen:off + hlen + 4 * n])
    return shape, list(data)


def f16_round(v):
    return struct.unpack("<e", struct.pack("<e", v))[0]


def f32_round(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def bf16_round(v):
    """Round a float32 value to bfloat16, nearest even (as torch's cast)."""
    bits = struct.unpack("<I", struct.pack("<f", f32_round(v)))[0]
    if (bits & 0x7F800000) == 0x7F800000:
        return struct.unpack("<f", struct.pack("<I", bits & 0xFFFF0000))[0]
    bits += 0x7FFF + ((bits >> 16) & 1)
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFF0000))[0]


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        blob = raw[base + a:base + b]
        dt = t["dtype"]
        if dt == "F32":
            vals = list(struct.unpack("<%df" % (len(blob) // 4), blob))
        elif dt == "F64":
            vals = list(struct.unpack("<%dd" % (len(blob) // 8), blob))
        elif dt == "F16":
            vals = list(struct.unpack("<%de" % (len(blob) // 2), blob))
        elif dt == "BF16":
            halves = struct.unpack("<%dH" % (len(blob) // 2), blob)
            vals = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
        else:
            raise ValueError("%s: tensor %s is %s" % (path, name, dt))
        out[name] = (dt, list(t["shape"]), vals)
    return out


# ---- SAELens's rules ----

DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16",
          "bfloat16": "bfloat16", "torch.float32": "float32", "torch.float64": "float64",
          "torch.float16": "float16", "torch.bfloat16": "bfloat16"}
BASE_FIELDS = ["d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
               "normalize_activations", "reshape_activations", "metadata"]
ARCH_FIELDS = {"standard": BASE_FIELDS, "jumprelu": BASE_FIELDS,
               "topk": BASE_FIELDS + ["k", "rescale_acts_by_decoder_norm"]}
ARCH_DEFAULTS = {"standard": {}, "jumprelu": {},
                 "topk": {"k": 100, "rescale_acts_by_decoder_norm": False}}
REGISTRY_OTHERS = ["gated", "transcoder", "skip_transcoder", "jumprelu_transcoder"]
LLM_METADATA_KEYS = {"model_name", "hook_name", "model_class_name", "hook_head_index",
                     "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                     "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                     "sae_lens_version", "sae_lens_training_version", "hook_name_out",
                     "hook_head_index_out"}


def is_legacy(cfg):
    v = cfg.get("sae_lens_version")
    if not v and "metadata" in cfg:
        v = cfg["metadata"].get("sae_lens_version")
    return not v or Version(v) < Version("6.0.0-rc.0")


def pre_6_to_6(cfg):
    """The pre-6.0 conversion's rules, restated."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    c = {renames.get(k, k): v for k, v in cfg.items()}
    c.setdefault("apply_b_dec_to_input", True)
    c.setdefault("activation_fn", "relu")
    c.setdefault("architecture", "standard")
    c.setdefault("reshape_activations", "hook_z" if "hook_z" in c.get("hook_name", "") else "none")
    if c.get("activation_fn") == "topk" and (c.get("activation_fn_kwargs") or {}).get("k") is not None:
        c["architecture"] = "topk"
        c["k"] = c["activation_fn_kwargs"]["k"]
    if isinstance(c.get("normalize_activations"), bool):
        c["normalize_activations"] = ("expected_average_only_in" if c["normalize_activations"]
                                      else "none")
    if c.get("normalize_activations") is None:
        c["normalize_activations"] = "none"
    arch = c["architecture"]
    out = {k: v for k, v in c.items() if k in ARCH_FIELDS[arch]}
    out["metadata"] = {k: v for k, v in c.items() if k in LLM_METADATA_KEYS}
    out["architecture"] = arch
    return out


class Dictionary:
    pass


def load(path):
    d = Dictionary()
    cfg = json.load(open(os.path.join(path, "cfg.json")))
    wpath = os.path.join(path, "sae_weights.safetensors")
    if not os.path.exists(wpath):
        return load_sparsify(path, cfg)
    if is_legacy(cfg):
        cfg = pre_6_to_6(cfg)
        d.format = "saelens-legacy"
    else:
        d.format = "saelens"
    arch = cfg["architecture"]
    if arch in REGISTRY_OTHERS:
        raise ValueError("architecture %s is not modelled here" % arch)
    fields = dict(ARCH_DEFAULTS[arch])
    fields.update({k: v for k, v in cfg.items() if k in ARCH_FIELDS[arch]})
    d.arch = arch
    d.d_in, d.d_sae = fields["d_in"], fields["d_sae"]
    dtype = DTYPES[fields["dtype"]]
    d.apply_b_dec = fields.get("apply_b_dec_to_input", True)
    d.k = fields.get("k")
    d.rescale = fields.get("rescale_acts_by_decoder_norm", False)
    d.metadata = cfg.get("metadata", {})
    d.scaler = None
    norm = fields.get("normalize_activations", "none")
    if norm == "expected_average_only_in":
        d.scaler = json.load(open(os.path.join(path, "activation_scaler.json")))["scaling_factor"]
    elif norm != "none":
        raise ValueError("normalize_activations %s is not modelled here" % norm)
    sd = read_safetensors(wpath)
    if "scaling_factor" in sd and all(v == 1.0 for v in sd["scaling_factor"][2]):
        del sd["scaling_factor"]
    want = {"W_enc": [d.d_in, d.d_sae], "W_dec": [d.d_sae, d.d_in], "b_enc": [d.d_sae],
            "b_dec": [d.d_in]}
    if arch == "jumprelu":
        want["threshold"] = [d.d_sae]
    if set(sd) != set(want):
        raise ValueError("state dict %s, expected %s" % (sorted(sd), sorted(want)))
    cast = {"float16": f16_round, "bfloat16": bf16_round, "float32": f32_round,
            "float64": lambda v: v}[dtype]
    for name, shape in want.items():
        if sd[name][1] != shape:
            raise ValueError("%s has shape %s, expected %s" % (name, sd[name][1], shape))
        setattr(d, name, [cast(v) for v in sd[name][2]])
    if arch != "jumprelu":
        d.threshold = None
    d.sparsify = False
    return d


def load_sparsify(path, cfg):
    d = Dictionary()
    d.format = "sparsify"
    d.d_in = cfg["d_in"]
    d.d_sae = cfg.get("num_latents") or d.d_in * cfg.get("expansion_factor", 32)
    d.k = cfg.get("k", 32)
    d.arch = "topk"
    d.apply_b_dec, d.rescale, d.scaler, d.metadata, d.threshold = True, False, None, {}, None
    d.sparsify = True
    sd = read_safetensors(os.path.join(path, "sae.safetensors"))
    enc = sd["encoder.weight"][2]  # [d_sae, d_in]
    d.W_enc = [enc[i * d.d_in + j] for j in range(d.d_in) for i in range(d.d_sae)]
    d.b_enc = sd["encoder.bias"][2]
    d.W_dec = sd["W_dec"][2]
    d.b_dec = sd["b_dec"][2]
    return d


def forward(d, x):
    """Codes and reconstruction of one activation x (list of d_in floats)."""
    C, S = d.d_in, d.d_sae
    if d.scaler:
        x = [v * d.scaler for v in x]
    xc = [x[j] - (d.b_dec[j] if d.apply_b_dec else 0.0) for j in range(C)]
    pre = list(d.b_enc)
    for j in range(C):
        a = xc[j]
        if a:
            row = d.W_enc[j * S:(j + 1) * S]
            pre = [p + a * w for p, w in zip(pre, row)]
    norms = None
    if d.rescale:
        norms = [math.sqrt(sum(v * v for v in d.W_dec[i * C:(i + 1) * C])) for i in range(S)]
        pre = [p * n for p, n in zip(pre, norms)]
    acts = [0.0] * S
    if d.arch == "standard":
        acts = [p if p > 0 else 0.0 for p in pre]
    elif d.arch == "jumprelu":
        acts = [p if (p > 0 and p > t) else 0.0 for p, t in zip(pre, d.threshold)]
    else:
        if d.sparsify:  # ReLU first, then the k largest
            pre = [p if p > 0 else 0.0 for p in pre]
        order = sorted(range(S), key=lambda i: (-pre[i], i))[:d.k]
        for i in order:
            acts[i] = pre[i] if pre[i] > 0 else 0.0
    dec = [a / n for a, n in zip(acts, norms)] if norms else acts
    out = list(d.b_dec)
    for i in range(S):
        a = dec[i]
        if a:
            row = d.W_dec[i * C:(i + 1) * C]
            out = [o + a * w for o, w in zip(out, row)]
    if d.scaler:
        out = [o / d.scaler for o in out]
    return acts, out


# ---- checks ----

def compare(name, ref, got, tol, failures):
    scale = max(1.0, max(abs(v) for v in ref)) if ref else 1.0
    worst = max((abs(a - b) for a, b in zip(ref, got)), default=0.0)
    status = "ok" if worst <= tol * scale else "FAIL"
    print("%-20s maxdiff %.3g (scale %.3g, tol %.3g) %s" % (name, worst, scale, tol * scale, status))
    if status != "ok":
        failures.append(name)


def check_provenance(d, args, failures):
    md = d.metadata
    kw = md.get("model_from_pretrained_kwargs") or {}
    flags = {"fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
             "refactor_factored_attn_matrices"}
    problems = []
    if args.expect_model is not None and md.get("model_name") != args.expect_model:
        problems.append("model_name %r" % md.get("model_name"))
    if md.get("model_class_name") != "HookedTransformer":
        problems.append("model_class_name %r" % md.get("model_class_name"))
    if any(kw.get(f) is not False for f in flags):
        problems.append("no-processing flags %r" % kw)
    if args.expect_step is not None:
        if kw.get("checkpoint_value") != args.expect_step or "revision" in kw:
            problems.append("checkpoint_value %r" % kw.get("checkpoint_value"))
        if (md.get("ckptd") or {}).get("step") != args.expect_step:
            problems.append("ckptd.step %r" % (md.get("ckptd") or {}).get("step"))
    if args.expect_revision is not None and (kw.get("revision") != args.expect_revision
                                             or "checkpoint_value" in kw):
        problems.append("revision %r" % kw.get("revision"))
    print("provenance          %s" % ("ok" if not problems else "FAIL: " + ", ".join(problems)))
    if problems:
        failures.append("provenance")


def check_rows(d, codes, n, args, failures):
    """The item's per-latent rows against the file's codes / s."""
    s = (d.metadata.get("ckptd") or {}).get("norm_scaling_factor")
    dens, mean = {}, {}
    for line in open(args.rows):
        f = line.rstrip("\n").split("\t")
        if f[0] != args.item:
            continue
        if f[2] == "feature_density":
            dens[int(f[5])] = float(f[6])
        elif f[2] == "feature_mean_activation":
            mean[int(f[5])] = float(f[6])
    S = d.d_sae
    if len(dens) != S or len(mean) != S or not s:
        print("rows                FAIL: %d densities, %d means, s %r" % (len(dens), len(mean), s))
        failures.append("rows")
        return
    worst_m, worst_d, checked = 0.0, 0, 0
    for i in range(S):
        col = [codes[t * S + i] for t in range(n)]
        active = [v for v in col if v > 0]
        cnt = len(active)
        worst_d = max(worst_d, abs(cnt - round(dens[i] * n)))
        if cnt > 2:
            ref = sum(active) / cnt / s
            worst_m = max(worst_m, abs(ref - mean[i]) / max(abs(ref), 1e-12))
            checked += 1
    ok = worst_m <= 1e-4 and worst_d <= 2 and checked > S // 2
    print("rows / s            mean rel diff %.3g over %d latents, density diff %d tokens (s %.6g) %s"
          % (worst_m, checked, worst_d, s, "ok" if ok else "FAIL"))
    if not ok:
        failures.append("rows")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--acts", required=True)
    ap.add_argument("--c-out", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--expect-model")
    ap.add_argument("--expect-step", type=int)
    ap.add_argument("--expect-revision")
    ap.add_argument("--rows")
    ap.add_argument("--item", default="sae")
    args = ap.parse_args()
    d = load(args.dir)
    shape, x = read_npy(args.acts)
    if shape[-1] != d.d_in:
        sys.exit("%s: last dimension %d, d_in %d" % (args.acts, shape[-1], d.d_in))
    n = len(x) // d.d_in
    codes, recon = [], []
    for t in range(n):
        a, o = forward(d, x[t * d.d_in:(t + 1) * d.d_in])
        codes += a
        recon += o
    zs, zc = read_npy(os.path.join(args.c_out, "feature_acts.npy"))
    rs, rc = read_npy(os.path.join(args.c_out, "reconstruction.npy"))
    failures = []
    print("%s: %s %s d_in %d d_sae %d k %s, %d activations" %
          (args.dir, d.format, d.arch, d.d_in, d.d_sae, d.k, n))
    if zs != (n, d.d_sae) or rs != (n, d.d_in):
        print("shapes              FAIL: %s %s" % (zs, rs))
        sys.exit(1)
    compare("feature activations", codes, zc, args.tol, failures)
    compare("reconstruction", recon, rc, args.tol, failures)
    sel = sum(1 for a, b in zip(codes, zc) if (a > 0) != (b > 0))
    print("active sets         %d disagreements %s" % (sel, "ok" if sel == 0 else "FAIL"))
    if sel:
        failures.append("active sets")
    if args.expect_model is not None or args.expect_step is not None or args.expect_revision:
        check_provenance(d, args, failures)
    if args.rows:
        check_rows(d, codes, n, args, failures)
    if failures:
        print("FAILED: %s" % ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
