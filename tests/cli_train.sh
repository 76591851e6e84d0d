#!/bin/sh
# cli_train.sh - `ckpt-worker train`: usage errors exit 2, a short run writes
# the HuggingFace-layout series (stepN/config.json + model.safetensors),
# task.json and train_log.jsonl, and every checkpoint loads with `inspect`.
# Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
TMP=$(mktemp -d /tmp/ckptd-cli-train-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
n=0

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
check() { # check DESCRIPTION CONDITION...
    d=$1
    shift
    n=$((n + 1))
    if "$@"; then echo "ok: $d"; else echo "FAIL: $d"; fails=$((fails + 1)); fi
}

T="$W --threads 1 train"
expect 0 "usage: ckpt-worker train" -- $T --help
expect 2 "need --task" -- $T --out "$TMP/x"
expect 2 "need --task" -- $T --task subtraction --out "$TMP/x"
expect 2 "need --task" -- $T --task induction
expect 2 "unexpected argument '--frob'" -- $T --task induction --out "$TMP/x" --frob
expect 2 "--steps needs a number, got 'ten'" -- $T --task induction --out "$TMP/x" --steps ten
expect 2 "--lr needs a number" -- $T --task induction --out "$TMP/x" --lr 1e-3x
expect 2 "--checkpoints needs comma-separated steps" -- $T --task induction --out "$TMP/x" --checkpoints 1,,2
expect 2 "--checkpoints must increase" -- $T --task induction --out "$TMP/x" --steps 5 --checkpoints 3,2
expect 2 "--heads 3 must divide --d-model 64" -- $T --task induction --out "$TMP/x" --heads 3
expect 2 "--p must be in" -- $T --task modular-addition --out "$TMP/x" --p 1
check "nothing written after usage errors" test ! -e "$TMP/x"
expect 1 "cannot" -- $T --task induction --out /dev/null/run --steps 1

# a short run: steps 0 1 2 4 5 (--ckpt-every 5 after the powers of two)
R="$TMP/ma"
expect 0 "5 checkpoints" -- $T --task modular-addition --out "$R" --p 7 --d-model 16 --heads 2 --d-mlp 32 \
    --steps 5 --ckpt-every 5
for s in 0 1 2 4 5; do
    check "step$s has config.json and model.safetensors" \
        test -s "$R/step$s/config.json" -a -s "$R/step$s/model.safetensors"
done
check "no other step directories" test "$(ls -d "$R"/step* | wc -l)" -eq 5
check "train_log.jsonl has one line per checkpoint" test "$(wc -l < "$R/train_log.jsonl")" -eq 5
check "train_log.jsonl names the metrics" grep -q '"step":5,"train_loss":' "$R/train_log.jsonl"
check "task.json names the task and p" grep -q '"task":"modular-addition".*"p":7' "$R/task.json"
check "task.json lists the train pairs" grep -q '"train_pairs":\[\[' "$R/task.json"
expect 0 "problems: 0" -- "$W" inspect "$R/step5"
expect 0 "problems: 0" -- "$W" inspect "$R/step0"

# the task item finds OUT/task.json from OUT/stepN and gives the logged values
A="$W --threads 1 analyze"
want=$(sed -n 's/.*"step":5,"train_loss":\([^,]*\),"train_acc":\([^,]*\),"test_loss":\([^,]*\),"test_acc":\([^}]*\)}/\1 \2 \3 \4/p' "$R/train_log.jsonl")
got=$($A "$R/step5" --items task 2>/dev/null | awk -F'\t' '$3 ~ /^(train|test)_(loss|acc)$/ { printf "%.6g ", $7 }')
check "task item at step5 = train_log.jsonl ($got/ $want)" python3 -c '
import sys
g = [float(x) for x in sys.argv[1].split()]; w = [float(x) for x in sys.argv[2].split()]
sys.exit(not (len(g) == 4 and len(w) == 4 and all(abs(a - b) <= 1e-5 for a, b in zip(g, w))))' "$got" "$want"
expect 0 "fourier_key_fraction" -- $A "$R/step5" --items task
mkdir -p "$TMP/lone" && cp -r "$R/step5" "$TMP/lone/"
check "each revision carries task.json" cmp "$R/task.json" "$R/step5/task.json"
rm "$TMP/lone/step5/task.json"
expect 1 "needs the run's task.json" -- $A "$TMP/lone/step5" --items task
expect 0 "excluded_loss" -- $A "$TMP/lone/step5" --items task --task "$R/task.json"
expect 1 "cannot open the task metadata" -- $A "$TMP/lone/step5" --items task --task "$TMP/none.json"

R="$TMP/ind"
expect 0 "3 checkpoints" -- $T --task induction --out "$R" --vocab 16 --seq-len 16 --batch 4 \
    --d-model 16 --heads 2 --d-mlp 16 --steps 3 --checkpoints 0,1,3 --sequential
check "induction log has icl_loss" grep -q '"step":3,"loss":.*"icl_loss"' "$R/train_log.jsonl"
expect 0 "icl_acc" -- "$W" --threads 1 analyze "$R/step3" --items task
expect 0 "problems: 0" -- "$W" inspect "$R/step3"

echo "$n checks, $fails failed"
[ "$fails" -eq 0 ]
