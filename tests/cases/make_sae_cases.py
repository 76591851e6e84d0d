#!/usr/bin/python3
"""Write the SAE dictionary cases under tests/cases/sae/.

Each case is a directory holding `expected` and one subdirectory, the
dictionary as a researcher would have it on disk (its name matters for
sparsify, whose folder names the hookpoint).  `expected` is one line: `ok`,
a TAB and space-separated key=value pairs sae_load must report (format,
architecture, d_in, d_sae, k, hook, dtype, apply_b_dec), or the
err_code_name of the error, a TAB, and a substring err_str() must contain.
tests/test_sae_file.c walks the directory, so adding a case here needs no
C code.  The numbers of valid dictionaries are checked elsewhere
(tests/sae_saelens.sh against tests/reference/saelens_load_ref.py).

Plain python3 (struct + json), deterministic; run from the repository root:
    /usr/bin/python3 tests/cases/make_sae_cases.py
"""
import json
import os
import shutil
import struct

ROOT = os.path.join("tests", "cases", "sae")
D_IN, D_SAE = 4, 6


def pack(dtype, values):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F64":
        return struct.pack("<%dd" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":  # the top half of the F32 bits (values chosen exact)
        raw = struct.pack("<%df" % len(values), *values)
        return b"".join(raw[i + 2:i + 4] for i in range(0, len(raw), 4))
    if dtype == "I32":
        return struct.pack("<%di" % len(values), *[int(v) for v in values])
    raise ValueError(dtype)


def safetensors(tensors):
    """tensors: list of (name, dtype, shape, values)."""
    header, data = {}, b""
    for name, dtype, shape, values in tensors:
        blob = pack(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def vals(n, seed):
    # exact in BF16 and F16: multiples of 1/8 in [-2, 2)
    return [((i * 37 + seed * 11) % 32 - 16) / 8.0 for i in range(n)]


def saelens_tensors(dtype="F32", arch="standard", d_in=D_IN, d_sae=D_SAE, drop=(), extra=(),
                    shapes=None):
    shapes = shapes or {}
    t = [("W_enc", dtype, shapes.get("W_enc", [d_in, d_sae]), vals(d_in * d_sae, 1)),
         ("W_dec", dtype, shapes.get("W_dec", [d_sae, d_in]), vals(d_in * d_sae, 2)),
         ("b_enc", dtype, [d_sae], vals(d_sae, 3)),
         ("b_dec", dtype, [d_in], vals(d_in, 4))]
    if arch == "jumprelu":
        t.append(("threshold", dtype, [d_sae], [abs(v) for v in vals(d_sae, 5)]))
    t = [x for x in t if x[0] not in drop]
    n = 1
    for x in t:
        n = 1
        for d in x[2]:
            n *= d
        if len(x[3]) != n:  # a deliberately wrong shape: values to match it
            t[t.index(x)] = (x[0], x[1], x[2], vals(n, 6))
    return t + list(extra)


def cfg6(arch="standard", dtype="float32", hook="blocks.0.hook_resid_post", **over):
    c = {"d_in": D_IN, "d_sae": D_SAE, "dtype": dtype, "device": "cpu",
         "apply_b_dec_to_input": True, "normalize_activations": "none",
         "reshape_activations": "none",
         "metadata": {"sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0",
                      "model_name": "pythia-70m-deduped", "hook_name": hook,
                      "hook_head_index": None, "model_from_pretrained_kwargs": {}}}
    if arch == "topk":
        c["k"] = 2
        c["rescale_acts_by_decoder_norm"] = False
    c["architecture"] = arch
    for k, v in over.items():
        c[k] = v
    return {k: v for k, v in c.items() if v is not DELETE}


def cfg_legacy(**over):
    c = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
         "device": "cpu", "model_name": "gpt2-small", "hook_point": "blocks.1.hook_resid_pre",
         "hook_point_layer": 1, "hook_point_head_index": None, "activation_fn_str": "relu",
         "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
         "sae_lens_training_version": None, "prepend_bos": True, "dataset_path": "x",
         "context_size": 128, "normalize_activations": False}
    for k, v in over.items():
        if v is DELETE:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def cfg_sparsify(**over):
    c = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
         "num_latents": D_SAE, "k": 2, "multi_topk": False, "skip_connection": False,
         "transcode": False, "d_in": D_IN}
    c.update(over)
    return c


def sparsify_tensors(dtype="F32", drop=(), extra=(), enc_shape=None):
    t = [("encoder.weight", dtype, enc_shape or [D_SAE, D_IN], vals(D_IN * D_SAE, 1)),
         ("encoder.bias", dtype, [D_SAE], vals(D_SAE, 3)),
         ("W_dec", dtype, [D_SAE, D_IN], vals(D_IN * D_SAE, 2)),
         ("b_dec", dtype, [D_IN], vals(D_IN, 4))]
    return [x for x in t if x[0] not in drop] + list(extra)


DELETE = object()
CASES = {}


def case(name, expected, folder, files):
    """files: name -> bytes or dict (JSON) or str."""
    CASES[name] = (expected, folder, files)


def saelens(name, expected, cfg, tensors, folder="sae", more=None):
    files = {"cfg.json": cfg, "sae_weights.safetensors": safetensors(tensors)}
    files.update(more or {})
    case(name, expected, folder, files)


def sparsify(name, expected, cfg, tensors, folder="layers.2"):
    case(name, expected, folder, {"cfg.json": cfg, "sae.safetensors": safetensors(tensors)})


# ---- valid dictionaries ----

saelens("ok_standard_f32",
        "ok\tformat=saelens architecture=standard d_in=4 d_sae=6 hook=blocks.0.hook_resid_post "
        "dtype=float32 apply_b_dec=1", cfg6(), saelens_tensors())
saelens("ok_topk_f16", "ok\tformat=saelens architecture=topk k=2 dtype=float16",
        cfg6("topk", "float16"), saelens_tensors("F16"))
saelens("ok_jumprelu_bf16", "ok\tformat=saelens architecture=jumprelu dtype=bfloat16",
        cfg6("jumprelu", "torch.bfloat16"), saelens_tensors("BF16", "jumprelu"))
saelens("ok_f32_file_cast_to_f16", "ok\tformat=saelens dtype=float16",
        cfg6(dtype="float16"), saelens_tensors("F32"))
saelens("ok_f64", "ok\tformat=saelens dtype=float64", cfg6(dtype="float64"),
        saelens_tensors("F64"))
saelens("ok_topk_default_k", "ok\tarchitecture=topk k=100 d_sae=128",
        cfg6("topk", k=DELETE, d_sae=128), saelens_tensors(d_sae=128))
saelens("topk_default_k_too_big", "invalid\tTopK k = 100 outside [1, d_sae = 6]",
        cfg6("topk", k=DELETE), saelens_tensors())
saelens("ok_no_b_dec", "ok\tapply_b_dec=0", cfg6(apply_b_dec_to_input=False), saelens_tensors())
saelens("ok_version_top_level", "ok\tformat=saelens",
        dict(cfg6(), sae_lens_version="6.0.0-rc.0"), saelens_tensors())
saelens("ok_scaling_factor_ones", "ok\tformat=saelens", cfg6(),
        saelens_tensors(extra=[("scaling_factor", "F32", [D_SAE], [1.0] * D_SAE)]))
saelens("ok_scaler_file", "ok\tformat=saelens",
        cfg6(normalize_activations="expected_average_only_in"), saelens_tensors(),
        more={"activation_scaler.json": {"scaling_factor": 2.5}})
saelens("ok_hook_z", "ok\thook=blocks.0.attn.hook_z",
        cfg6(hook="blocks.0.attn.hook_z", reshape_activations="hook_z"), saelens_tensors())
saelens("ok_legacy_standard", "ok\tformat=saelens-legacy architecture=standard "
        "hook=blocks.1.hook_resid_pre", cfg_legacy(), saelens_tensors())
saelens("ok_legacy_topk", "ok\tformat=saelens-legacy architecture=topk k=3",
        cfg_legacy(architecture="standard", activation_fn_str="topk",
                   activation_fn_kwargs={"k": 3}), saelens_tensors())
saelens("ok_legacy_old_version", "ok\tformat=saelens-legacy",
        cfg_legacy(sae_lens_version="5.4.2"), saelens_tensors())
saelens("ok_legacy_6x_in_metadata_ignored_top_level_old",
        "ok\tformat=saelens-legacy architecture=standard",
        dict(cfg6(), sae_lens_version="5.0.0", activation_fn="relu"), saelens_tensors())
sparsify("ok_sparsify", "ok\tformat=sparsify architecture=topk k=2 d_in=4 d_sae=6 "
         "hook=blocks.2.hook_resid_post dtype=float32", cfg_sparsify(), sparsify_tensors())
sparsify("ok_sparsify_bf16_mlp", "ok\tformat=sparsify hook=blocks.1.hook_mlp_out dtype=bfloat16",
         cfg_sparsify(), sparsify_tensors("BF16"), folder="layers.1.mlp")
sparsify("ok_sparsify_underscore", "ok\thook=blocks.3.hook_resid_post", cfg_sparsify(),
         sparsify_tensors(), folder="layers_3")
sparsify("ok_sparsify_embed", "ok\thook=hook_embed", cfg_sparsify(), sparsify_tensors(),
         folder="embed_in")
sparsify("ok_sparsify_expansion", "ok\td_sae=8",
         cfg_sparsify(num_latents=0, expansion_factor=2),
         [("encoder.weight", "F32", [8, D_IN], vals(32, 1)), ("encoder.bias", "F32", [8], vals(8, 2)),
          ("W_dec", "F32", [8, D_IN], vals(32, 3)), ("b_dec", "F32", [D_IN], vals(D_IN, 4))])

# ---- files missing or not JSON ----

case("no_cfg", "notfound\tcfg.json", "sae",
     {"sae_weights.safetensors": safetensors(saelens_tensors())})
case("no_weights", "notfound\tneither sae_weights.safetensors (SAELens) nor sae.safetensors",
     "sae", {"cfg.json": cfg6()})
case("cfg_not_json", "format\tnot JSON", "sae",
     {"cfg.json": "{\"d_in\": 4,", "sae_weights.safetensors": safetensors(saelens_tensors())})
case("cfg_not_object", "format\tnot a JSON object", "sae",
     {"cfg.json": [1, 2], "sae_weights.safetensors": safetensors(saelens_tensors())})
case("weights_truncated", "format\tsae_weights.safetensors", "sae",
     {"cfg.json": cfg6(), "sae_weights.safetensors": safetensors(saelens_tensors())[:40]})

# ---- SAELens 6 keys ----

saelens("version_not_pep440", "format\t\"six\" is not a PEP 440 version",
        dict(cfg6(), metadata=dict(cfg6()["metadata"], sae_lens_version="six")), saelens_tensors())
saelens("version_not_string", "format\t\"sae_lens_version\" is not a string",
        dict(cfg6(), sae_lens_version=6), saelens_tensors())
saelens("architecture_missing", "format\t\"architecture\" is missing",
        cfg6(architecture=DELETE), saelens_tensors())
saelens("architecture_unknown", "format\tarchitecture \"sparse\" is not in SAELens's registry",
        cfg6(architecture="sparse"), saelens_tensors())
saelens("architecture_gated", "unsupported\tarchitecture \"gated\" is SAELens's but not read",
        cfg6(architecture="gated"), saelens_tensors())
saelens("architecture_transcoder", "unsupported\tarchitecture \"transcoder\"",
        cfg6(architecture="transcoder"), saelens_tensors())
saelens("d_in_missing", "format\t\"d_in\" is missing", cfg6(d_in=DELETE), saelens_tensors())
saelens("d_sae_not_int", "format\t\"d_sae\" is not an integer", cfg6(d_sae="6"), saelens_tensors())
saelens("d_in_zero", "format\t\"d_in\" is 0, outside", cfg6(d_in=0), saelens_tensors())
saelens("dtype_missing", "format\t\"dtype\" is missing", cfg6(dtype=DELETE), saelens_tensors())
saelens("dtype_unknown", "format\tdtype \"float8\" is not float32", cfg6(dtype="float8"),
        saelens_tensors())
saelens("apply_b_dec_not_bool", "format\t\"apply_b_dec_to_input\" is not true or false",
        cfg6(apply_b_dec_to_input="yes"), saelens_tensors())
saelens("normalize_layer_norm", "unsupported\tnormalize_activations \"layer_norm\"",
        cfg6(normalize_activations="layer_norm"), saelens_tensors())
saelens("normalize_constant", "unsupported\tnormalize_activations \"constant_norm_rescale\"",
        cfg6(normalize_activations="constant_norm_rescale"), saelens_tensors())
saelens("normalize_unknown", "format\tnormalize_activations \"sometimes\" is not none",
        cfg6(normalize_activations="sometimes"), saelens_tensors())
saelens("normalize_expected_no_scaler", "unsupported\tthere is no activation_scaler.json",
        cfg6(normalize_activations="expected_average_only_in"), saelens_tensors())
saelens("scaler_not_positive", "format\t\"scaling_factor\" is not a positive number",
        cfg6(normalize_activations="expected_average_only_in"), saelens_tensors(),
        more={"activation_scaler.json": {"scaling_factor": -1}})
saelens("reshape_unknown", "format\treshape_activations \"hook_q\" is not none or hook_z",
        cfg6(reshape_activations="hook_q"), saelens_tensors())
saelens("topk_k_zero", "format\t\"k\" is 0, outside [1, 6]", cfg6("topk", k=0), saelens_tensors())
saelens("topk_k_too_big", "format\t\"k\" is 7, outside [1, 6]", cfg6("topk", k=7),
        saelens_tensors())
saelens("head_index_set", "unsupported\tmetadata.hook_head_index is set",
        dict(cfg6(), metadata=dict(cfg6()["metadata"], hook_head_index=3)), saelens_tensors())
saelens("metadata_not_object", "format\t\"metadata\" is not an object",
        dict(cfg6(), metadata=[1]), saelens_tensors())

# ---- SAELens weights ----

saelens("tensor_missing", "format\ttensor W_dec is missing", cfg6(),
        saelens_tensors(drop=("W_dec",)))
saelens("threshold_missing", "format\ttensor threshold is missing", cfg6("jumprelu"),
        saelens_tensors())
saelens("tensor_transposed", "format\ttensor W_enc has shape [6, 4]; cfg.json implies [4, 6]",
        cfg6(), saelens_tensors(shapes={"W_enc": [D_SAE, D_IN]}))
saelens("tensor_unexpected", "format\tunexpected tensor log_threshold", cfg6(),
        saelens_tensors(extra=[("log_threshold", "F32", [D_SAE], vals(D_SAE, 7))]))
saelens("tensor_int", "unsupported\ttensor W_enc is I32", cfg6(),
        [("W_enc", "I32", [D_IN, D_SAE], [1] * 24)] + saelens_tensors()[1:])
saelens("tensor_nan", "numeric\ttensor b_dec holds a non-finite value at 2", cfg6(),
        saelens_tensors()[:3] + [("b_dec", "F32", [D_IN], [0.0, 1.0, float("nan"), 2.0])])
saelens("cast_overflows_f16", "numeric\ttensor b_enc holds a non-finite value at 0 (after the cast",
        cfg6(dtype="float16"),
        saelens_tensors()[:2] + [("b_enc", "F32", [D_SAE], [1e6] + [0.0] * 5)] +
        saelens_tensors()[3:])
saelens("scaling_factor_not_ones", "unsupported\ttensor scaling_factor is not all ones", cfg6(),
        saelens_tensors(extra=[("scaling_factor", "F32", [D_SAE], [2.0] * D_SAE)]))
saelens("shape_vs_d_sae", "format\ttensor W_enc has shape [4, 6]; cfg.json implies [4, 7]",
        cfg6(d_sae=7), saelens_tensors())

# ---- pre-6.0 ----

saelens("legacy_tanh_relu", "unsupported\tactivation_fn \"tanh-relu\"",
        cfg_legacy(activation_fn_str="tanh-relu"), saelens_tensors())
saelens("legacy_topk_without_k", "unsupported\tand no activation_fn_kwargs.k",
        cfg_legacy(activation_fn_str="topk"), saelens_tensors())
saelens("legacy_finetuning", "unsupported\tfinetuning_scaling_factor is true",
        cfg_legacy(finetuning_scaling_factor=True), saelens_tensors())
saelens("legacy_norm_true_no_scaler", "unsupported\tthere is no activation_scaler.json",
        cfg_legacy(normalize_activations=True), saelens_tensors())
saelens("legacy_dtype_missing", "format\t\"dtype\" is missing", cfg_legacy(dtype=DELETE),
        saelens_tensors())

# ---- sparsify ----

sparsify("sparsify_groupmax", "unsupported\tactivation \"groupmax\"",
         cfg_sparsify(activation="groupmax"), sparsify_tensors())
sparsify("sparsify_transcoder", "unsupported\ttranscoder", cfg_sparsify(transcode=True),
         sparsify_tensors())
sparsify("sparsify_skip", "unsupported\tskip connection", cfg_sparsify(skip_connection=True),
         sparsify_tensors(extra=[("W_skip", "F32", [D_IN, D_IN], vals(16, 8))]))
sparsify("sparsify_folder", "unsupported\ta sparsify dictionary's folder names its hookpoint",
         cfg_sparsify(), sparsify_tensors(), folder="gpt_neox.layers.2")
sparsify("sparsify_no_decoder", "format\ttensor W_dec is missing", cfg_sparsify(),
         sparsify_tensors(drop=("W_dec",)))
sparsify("sparsify_encoder_shape",
         "format\ttensor encoder.weight has shape [4, 6]; cfg.json implies [6, 4]",
         cfg_sparsify(), sparsify_tensors(enc_shape=[D_IN, D_SAE]))
sparsify("sparsify_k_too_big", "format\t\"k\" is 9, outside [1, 6]", cfg_sparsify(k=9),
         sparsify_tensors())
sparsify("sparsify_d_in_missing", "format\t\"d_in\" is missing",
         {k: v for k, v in cfg_sparsify().items() if k != "d_in"}, sparsify_tensors())

# found by fuzz/fuzz_sae.c: sizes far beyond the weights (2^31 floats a
# matrix) are refused by the shape check before memory is taken for them
saelens("sizes_beyond_weights",
        "format\ttensor W_enc has shape [4, 6]; cfg.json implies [46341, 46340]",
        cfg6(d_in=46341, d_sae=46340), saelens_tensors())
sparsify("sparsify_sizes_beyond_weights",
         "format\ttensor encoder.weight has shape [6, 4]; cfg.json implies [46340, 46341]",
         cfg_sparsify(d_in=46341, num_latents=46340), sparsify_tensors())


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    for name, (expected, folder, files) in sorted(CASES.items()):
        d = os.path.join(ROOT, name, folder)
        os.makedirs(d)
        with open(os.path.join(ROOT, name, "expected"), "w") as f:
            f.write(expected + "\n")
        for fname, content in files.items():
            path = os.path.join(d, fname)
            if isinstance(content, bytes):
                mode, data = "wb", content
            elif isinstance(content, str):
                mode, data = "w", content
            else:
                mode, data = "w", json.dumps(content, indent=2) + "\n"
            with open(path, mode) as f:
                f.write(data)
    print("%d cases in %s" % (len(CASES), ROOT))


if __name__ == "__main__":
    main()
