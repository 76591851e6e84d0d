#!/bin/sh
# sae_saelens.sh - SAE files against an independent reading of them
# (tests/reference/saelens_load_ref.py: SAELens 6's loader rules and
# sparsify's, python3 standard library and `packaging`).
#
# 1. What ckptd writes: the `sae` and `sae_relu` items on a tiny checkpoint
#    at .../pythia-14m/step3000, eval tokens from a file.  The reference
#    loads each dictionary as SAELens would (a 6.x file, not the pre-6.0
#    path), checks its provenance (model pythia-14m and checkpoint_value
#    3000 from the path, the no-processing flags, metadata.ckptd.step), and
#    computes codes and reconstructions of the hook's activations
#    (`ckpt-worker forward --npy --cache`), which must equal what
#    `ckpt-worker sae --encode` computes from the same files (1e-4 of the
#    largest value) with the same active latents; and the items' stored
#    feature_mean_activation must be the file's mean code divided by
#    norm_scaling_factor (relative 1e-4) and feature_density its density
#    (SAELens's fold: the file computes the trained codes).
# 2. What ckptd reads: `test_battery_sae_fixed --zoo` writes a planted and
#    random dictionaries in every format read (SAELens 6 standard, topk,
#    jumprelu with F32, F16, BF16 tensors; pre-6.0 standard and topk;
#    sparsify F32 and BF16; topk with rescale_acts_by_decoder_norm;
#    expected_average_only_in with activation_scaler.json) and activations;
#    for each, ckpt-worker's codes and reconstructions equal the
#    reference's (1e-4 of the largest value, same active latents).
# Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
PY=/usr/bin/python3
REF=tests/reference/saelens_load_ref.py
TBIN=$(dirname "$(dirname "$W")")/tests/test_battery_sae_fixed
TMP=$(mktemp -d /tmp/ckptd-sae-saelens-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# ---- 1. the files the sae items write ----
CK=$TMP/pythia-14m/step3000
mkdir -p "$TMP/pythia-14m"
"$W" init "$CK" --preset tiny --seed 4 >/dev/null 2>&1 || { echo "FAIL: init"; exit 1; }
$PY -c '
import json, random, sys
r = random.Random(5)
json.dump([[r.randrange(0, 500) for _ in range(64)] for _ in range(20)], open(sys.argv[1], "w"))
' "$TMP/tok.json"
if "$W" --threads 1 analyze "$CK" --items sae,sae_relu --eval-tokens "$TMP/tok.json" \
    --artifacts "$TMP/art" --run r14 >"$TMP/rows.tsv" 2>"$TMP/err" &&
    "$W" forward "$CK" --tokens "$TMP/tok.json" --npy "$TMP/npy" \
        --cache blocks.1.hook_resid_post >/dev/null 2>>"$TMP/err"; then
    ok "sae, sae_relu and the hook's activations"
else
    fail "analyze/forward: $(tail -1 "$TMP/err")"
fi
for it in sae sae_relu; do
    D=$TMP/art/$it/blocks.1.hook_resid_post
    if "$W" sae "$D" --encode "$TMP/npy/blocks.1.hook_resid_post.npy" --out "$TMP/c_$it" 2>>"$TMP/err" &&
        $PY "$REF" "$D" --acts "$TMP/npy/blocks.1.hook_resid_post.npy" --c-out "$TMP/c_$it" \
            --expect-model pythia-14m --expect-step 3000 --rows "$TMP/rows.tsv" --item "$it" \
            >"$TMP/ref_$it.out" 2>&1; then
        ok "$it's file read as SAELens reads it: $(grep -c ' ok' "$TMP/ref_$it.out") checks"
    else
        fail "$it's file"; cat "$TMP/ref_$it.out"; tail -2 "$TMP/err"
    fi
done
sed 's/^/  /' "$TMP/ref_sae.out"

# ---- 2. the formats ckptd reads ----
if [ ! -x "$TBIN" ]; then
    fail "$TBIN missing: run make unit"
elif ! "$TBIN" --zoo "$TMP/zoo" >/dev/null 2>"$TMP/err"; then
    fail "writing the dictionaries: $(tail -1 "$TMP/err")"
else
    n=0
    while read -r name; do
        n=$((n + 1))
        out=$TMP/zoo/out/$(echo "$name" | tr / _)
        if "$W" sae "$TMP/zoo/dicts/$name" --encode "$TMP/zoo/acts.npy" --out "$out" 2>"$TMP/err" &&
            $PY "$REF" "$TMP/zoo/dicts/$name" --acts "$TMP/zoo/acts.npy" --c-out "$out" \
                >"$TMP/ref.out" 2>&1; then
            printf '  %-28s %s\n' "$name" "$(grep 'feature activations' "$TMP/ref.out" | sed 's/  */ /g')"
        else
            fail "$name"; cat "$TMP/ref.out"; tail -1 "$TMP/err"
        fi
    done <"$TMP/zoo/names.txt"
    [ "$n" -ge 24 ] && ok "$n dictionaries in every format agree with the reference" ||
        fail "only $n dictionaries"
fi

[ "$fails" -eq 0 ] && echo "sae_saelens: all passed" || echo "sae_saelens: $fails failed"
[ "$fails" -eq 0 ]
