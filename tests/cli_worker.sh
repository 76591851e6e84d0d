#!/bin/sh
# cli_worker.sh - ckpt-worker's command line: exit statuses and messages a
# script can rely on (0 ok, 1 bad input, 2 usage), on the golden fixtures
# and on checkpoints broken on purpose.  Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
G=tests/golden
TMP=$(mktemp -d /tmp/ckptd-cli-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
n=0

# expect STATUS NEEDLE -- command...: run, check exit status and that
# stdout+stderr contains NEEDLE (empty: anything)
expect() {
    want=$1 needle=$2
    shift 3
    n=$((n + 1))
    out=$("$@" 2>&1)
    got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL: exit $got (want $want): $*"; echo "$out" | tail -5; fails=$((fails + 1)); return
    fi
    if [ -n "$needle" ] && ! printf '%s' "$out" | grep -qF -- "$needle"; then
        echo "FAIL: output lacks '$needle': $*"; echo "$out" | tail -5; fails=$((fails + 1)); return
    fi
    echo "ok: $*"
}

expect 0 "usage: ckpt-worker" -- "$W" --help
expect 2 "unknown command" -- "$W" frobnicate
expect 2 "unknown option" -- "$W" --frob inspect x
expect 2 "usage: ckpt-worker inspect" -- "$W" inspect
expect 0 "usage: ckpt-worker forward" -- "$W" forward --help
expect 2 "needs --npy" -- "$W" forward "$G/f32_parallel_rot025" --tokens "$G/f32_parallel_rot025/tokens.json" --cache hook_embed

for f in f32_parallel_rot025 f32_sequential_rot100 f16_parallel bf16_parallel sharded peaky newer_config; do
    expect 0 "problems: 0" -- "$W" inspect "$G/$f"
done
expect 0 "(ignored: old export)" -- "$W" inspect "$G/newer_config"
expect 0 "seq 1 loss" -- "$W" forward "$G/f32_parallel_rot025" --tokens "$G/f32_parallel_rot025/tokens.json"

# --npy with globs: logits + one file per matched hook
expect 0 "mean loss" -- "$W" forward "$G/f32_sequential_rot100" --tokens "$G/f32_sequential_rot100/tokens.json" \
    --npy "$TMP/npy" --cache 'blocks.*.hook_resid_mid,blocks.0.attn.hook_pattern,hook_embed'
count=$(ls "$TMP/npy" | wc -l)
n=$((n + 1))
if [ "$count" -eq 6 ] && head -c 6 "$TMP/npy/logits.npy" | grep -q NUMPY; then echo "ok: npy files ($count)"; else
    echo "FAIL: expected 6 npy files, got $count"; fails=$((fails + 1)); fi
# every hook point of a layer by a glob (hook_attn_in only by its name:
# then that layer's ln1 hooks have a head axis)
expect 0 "mean loss" -- "$W" forward "$G/f32_sequential_rot100" --tokens "$G/f32_sequential_rot100/tokens.json" \
    --npy "$TMP/npy2" --cache 'blocks.0.*,blocks.1.hook_attn_in,blocks.1.ln1.hook_scale'
count=$(ls "$TMP/npy2" | wc -l)
n=$((n + 1))
if [ "$count" -eq 24 ] && [ ! -e "$TMP/npy2/blocks.0.hook_attn_in.npy" ] &&
    head -c 128 "$TMP/npy2/blocks.0.ln1.hook_scale.npy" | grep -q "(1, 16, 1)" &&
    head -c 128 "$TMP/npy2/blocks.1.ln1.hook_scale.npy" | grep -q "(1, 16, 4, 1)" &&
    head -c 128 "$TMP/npy2/blocks.0.attn.hook_attn_scores.npy" | grep -q "(1, 4, 16, 16)"; then
    echo "ok: TransformerLens hook points ($count files)"
else
    echo "FAIL: TransformerLens hook points: $count files"; ls "$TMP/npy2"; fails=$((fails + 1))
fi
expect 1 "no hook point of this model matches" -- "$W" forward "$G/f32_parallel_rot025" \
    --tokens "$G/f32_parallel_rot025/tokens.json" --npy "$TMP/x" --cache 'blocks.9.*'
expect 1 "hook_resid_mid" -- "$W" forward "$G/f32_parallel_rot025" \
    --tokens "$G/f32_parallel_rot025/tokens.json" --npy "$TMP/x" --cache 'blocks.0.hook_resid_mid'

# broken inputs: each a specific error, exit 1, never a crash
cp -r "$G/f32_parallel_rot025" "$TMP/trunc"
size=$(stat -c %s "$TMP/trunc/model.safetensors")
head -c $((size / 2)) "$G/f32_parallel_rot025/model.safetensors" > "$TMP/trunc/model.safetensors"
expect 1 "exceed" -- "$W" inspect "$TMP/trunc"
expect 1 "exceed" -- "$W" forward "$TMP/trunc" --tokens "$G/f32_parallel_rot025/tokens.json"

cp -r "$G/f32_parallel_rot025" "$TMP/badcfg"
sed 's/"hidden_size": 64/"hidden_size": 128/' "$G/f32_parallel_rot025/config.json" > "$TMP/badcfg/config.json"
expect 1 "config implies shape" -- "$W" inspect "$TMP/badcfg"

cp -r "$G/f32_parallel_rot025" "$TMP/nocfg"
rm "$TMP/nocfg/config.json"
expect 1 "cannot open config" -- "$W" forward "$TMP/nocfg" --tokens "$G/f32_parallel_rot025/tokens.json"

mkdir -p "$TMP/empty"
cp "$G/f32_parallel_rot025/config.json" "$TMP/empty/"
expect 1 "no model.safetensors" -- "$W" inspect "$TMP/empty"

echo '[[1,2,3],[4,5]]' > "$TMP/ragged.json"
expect 1 "sequence 1: expected a list of 3" -- "$W" forward "$G/f32_parallel_rot025" --tokens "$TMP/ragged.json"
echo '[[1,2,3,999]]' > "$TMP/oov.json"
expect 1 "outside the vocabulary" -- "$W" forward "$G/f32_parallel_rot025" --tokens "$TMP/oov.json"

for c in tests/cases/safetensors/*/; do
    grep -q '^ok' "$c/expected" && continue
    mkdir -p "$TMP/case"
    cp "$G/f32_parallel_rot025/config.json" "$TMP/case/"
    cp "$c/input.safetensors" "$TMP/case/model.safetensors"
    expect 1 "" -- "$W" inspect "$TMP/case"
done

# init writes a loadable checkpoint in every dtype
for dt in f32 f16 bf16; do
    expect 0 "wrote" -- "$W" init "$TMP/init-$dt" --preset tiny --dtype "$dt"
    expect 0 "problems: 0" -- "$W" inspect "$TMP/init-$dt"
done

echo "cli_worker: $((n - fails)) of $n checks passed"
[ "$fails" -eq 0 ]
