#!/bin/sh
# cli_sae.sh - the `sae` item through `ckpt-worker analyze`: without
# --artifacts it exits 1 naming the option and prints no row; with it, it
# prints its rows and leaves ARTIFACTS/sae/blocks.1.hook_resid_post/ with
# cfg.json and sae_weights.safetensors, whose header (read here with the
# Python standard library, independently of the C reader) names W_enc
# [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec as F32, and whose
# cfg.json is SAELens 6's (k, metadata.hook_name, a 6.x sae_lens_version,
# the model named after the checkpoint directory, the no-processing flags;
# --model-name, --run and --step are recorded, a stepN directory gives the
# step as checkpoint_value); `ckpt-worker sae DIR --json` reads it back;
# a second run
# with --prev-artifacts warm-starts (warm_start 1); `battery --json` marks
# sae_relu opt-in; --sae-site (repeatable) puts one dictionary per site
# (its cfg.json's hook_name) and the rows at each site's layer; a bad site
# exits 1 naming it and prints no row, and sites are not checked when no
# listed item trains an SAE.  Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
TMP=$(mktemp -d /tmp/ckptd-cli-sae-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$W" init "$TMP/ck" --preset tiny >/dev/null 2>&1 || { echo "FAIL: init"; exit 1; }

"$W" analyze "$TMP/ck" --items sae >"$TMP/out" 2>"$TMP/err"
st=$?
if [ "$st" -eq 1 ] && grep -q -- '--artifacts' "$TMP/err" && [ ! -s "$TMP/out" ]; then
    ok "no --artifacts: exit 1, names the option, no rows"
else
    fail "no --artifacts: exit $st"; tail -2 "$TMP/err"
fi

if "$W" analyze "$TMP/ck" --items sae --artifacts "$TMP/a1" >"$TMP/rows1" 2>"$TMP/err"; then
    ok "analyze --items sae --artifacts (exit 0)"
else
    fail "analyze --items sae: $(tail -1 "$TMP/err")"
fi
D=$TMP/a1/sae/blocks.1.hook_resid_post
if python3 - "$D" <<'PY'
import json, struct, sys
d = sys.argv[1]
cfg = json.load(open(d + "/cfg.json"))
C, S = cfg["d_in"], cfg["d_sae"]
md = cfg["metadata"]
assert cfg["architecture"] == "topk" and cfg["k"] == 32, cfg
assert md["hook_name"] == "blocks.1.hook_resid_post" and "hook_layer" not in cfg, cfg
v = [int(x) for x in md["sae_lens_version"].split(".")]
assert v[0] >= 6 and "sae_lens_version" not in cfg, md  # else SAELens reads it as pre-6.0
assert md["model_name"] == "ck" and md["ckptd"]["step"] is None, md  # the directory's name
kw = md["model_from_pretrained_kwargs"]
assert kw == {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
              "fold_value_biases": False, "refactor_factored_attn_matrices": False}, kw
raw = open(d + "/sae_weights.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
want = {"W_enc": [C, S], "W_dec": [S, C], "b_enc": [S], "b_dec": [C]}
for k, shape in want.items():
    assert hdr[k]["dtype"] == "F32" and hdr[k]["shape"] == shape, (k, hdr[k])
assert set(hdr) - {"__metadata__"} == set(want), hdr.keys()
PY
then ok "cfg.json and the weights' header as SAELens reads them"; else fail "files"; fi
grep -q "^sae	1	warm_start	1	-1	-1	0$" "$TMP/rows1" && ok "first run: warm_start 0" || fail "warm_start row of the first run"

mkdir -p "$TMP/pythia-70m-deduped"
"$W" init "$TMP/pythia-70m-deduped/step2000" --preset tiny >/dev/null 2>&1 || fail "init step2000"
if "$W" analyze "$TMP/pythia-70m-deduped/step2000" --items sae --artifacts "$TMP/a5" >/dev/null 2>"$TMP/err" &&
    "$W" analyze "$TMP/ck" --items sae --artifacts "$TMP/a6" --model-name pythia-160m --run r160 \
        --step 143000 >/dev/null 2>>"$TMP/err" &&
    "$W" analyze "$TMP/ck" --items sae --artifacts "$TMP/a7" --revision main >/dev/null 2>>"$TMP/err" &&
    python3 - "$TMP" <<'PY'
import json, sys
t = sys.argv[1]
def md(a):
    return json.load(open(t + "/" + a + "/sae/blocks.1.hook_resid_post/cfg.json"))["metadata"]
m = md("a5")
assert m["model_name"] == "pythia-70m-deduped", m
assert m["model_from_pretrained_kwargs"]["checkpoint_value"] == 2000 and m["ckptd"]["step"] == 2000, m
m = md("a6")
assert m["model_name"] == "pythia-160m" and m["ckptd"]["run"] == "r160", m
assert m["model_from_pretrained_kwargs"]["checkpoint_value"] == 143000, m
m = md("a7")
kw = m["model_from_pretrained_kwargs"]
assert kw["revision"] == "main" and "checkpoint_value" not in kw, kw
PY
then ok "provenance: model and step from stepN's path, --model-name/--run/--step, --revision"; else fail "provenance: $(tail -1 "$TMP/err")"; fi
if "$W" sae "$D" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["format"] == "saelens" and d["architecture"] == "topk" and d["k"] == 32, d
assert d["hook_name"] == "blocks.1.hook_resid_post" and d["d_sae"] == 4 * d["d_in"], d
'; then ok "ckpt-worker sae --json reads it back"; else fail "ckpt-worker sae --json"; fi

if "$W" analyze "$TMP/ck" --items sae --artifacts "$TMP/a2" --prev-artifacts "$TMP/a1" >"$TMP/rows2" 2>"$TMP/err" &&
    grep -q "^sae	1	warm_start	1	-1	-1	1$" "$TMP/rows2"; then
    ok "--prev-artifacts: warm start"
else
    fail "warm start: $(tail -1 "$TMP/err")"
fi

"$W" battery --json | python3 -c '
import json, sys
d = {i["name"]: i for i in json.load(sys.stdin)["items"]}
assert d["sae_relu"].get("opt_in") is True and "opt_in" not in d["sae"], d["sae"]
assert d["sae"]["needs"] == ["eval_tokens", "artifacts", "prev_artifacts"], d["sae"]["needs"]
' && ok "battery --json: sae_relu opt-in, sae needs" || fail "battery --json"

if "$W" analyze "$TMP/ck" --items sae --artifacts "$TMP/a3" --sae-site blocks.0.hook_resid_pre \
    --sae-site blocks.1.hook_mlp_out >"$TMP/rows3" 2>"$TMP/err" &&
    [ "$(ls "$TMP/a3/sae" | tr '\n' ' ')" = "blocks.0.hook_resid_pre blocks.1.hook_mlp_out " ] &&
    grep -q '"hook_name": "blocks.1.hook_mlp_out"' "$TMP/a3/sae/blocks.1.hook_mlp_out/cfg.json" &&
    [ "$(awk -F'\t' '$3 == "fvu" { printf "%s ", $4 }' "$TMP/rows3")" = "0 1 " ]; then
    ok "--sae-site twice: a dictionary per site, fvu at layers 0 and 1"
else
    fail "--sae-site: $(tail -1 "$TMP/err")"
fi
"$W" analyze "$TMP/ck" --items loss,sae --artifacts "$TMP/a4" --sae-site blocks.0.mlp.hook_post >"$TMP/out" 2>"$TMP/err"
st=$?
if [ "$st" -eq 1 ] && grep -q 'blocks.0.mlp.hook_post.*not an SAE site' "$TMP/err" && [ ! -s "$TMP/out" ]; then
    ok "a bad site: exit 1, names it, no rows (not even loss's)"
else
    fail "bad site: exit $st, $(tail -1 "$TMP/err")"
fi
if "$W" analyze "$TMP/ck" --items loss --sae-site blocks.9.hook_resid_post >"$TMP/out" 2>"$TMP/err" &&
    [ -s "$TMP/out" ] && grep -q "SAE sites unused" "$TMP/err"; then
    ok "sites unused without an SAE item: a warning, the rows"
else
    fail "unused sites: $(tail -1 "$TMP/err")"
fi

[ "$fails" -eq 0 ] && echo "cli_sae: all passed" || echo "cli_sae: $fails failed"
[ "$fails" -eq 0 ]
