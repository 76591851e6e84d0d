#!/bin/sh
# cli_patching.sh - the patching items from the command line, and the
# circuit summary over a toy induction run.
#
#   - `ckpt-worker pairs`: usage errors exit 2; `check` of a malformed set
#     exits 1 naming the pair and key; `check --out` writes the token form,
#     which checks again as the same set (same digest);
#   - `analyze --pairs`: a set the model cannot run (ids outside its
#     vocabulary) exits 1 before any row is printed; a good set's rows come
#     with idx 1 beside the built-in set's idx 0;
#   - a toy induction run (`ckpt-worker train --task induction --steps 600`,
#     ~15 s of CPU): `patching` and `circuit` on every checkpoint, each with
#     the previous checkpoint's artifacts.  The invariants, read against the
#     run's own train_log.jsonl (so they do not depend on the CPU's
#     arithmetic): the circuit of the built-in induction pairs is empty
#     before icl_loss starts its drop and forms (size 0 -> > 0, Jaccard 0 at
#     that checkpoint) inside the window where icl_loss falls from 90 % to
#     10 % of its way from the plateau to its final value, within 3
#     checkpoints of the midpoint crossing, and it is never empty again
#     after the window.
# Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
TMP=$(mktemp -d /tmp/ckptd-cli-patching-XXXXXX)
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

# ---- ckpt-worker pairs
expect 0 "usage: ckpt-worker pairs" -- "$W" pairs --help
expect 2 "usage: ckpt-worker pairs" -- "$W" pairs
expect 2 "usage: ckpt-worker pairs" -- "$W" pairs make fibonacci --out "$TMP/x.json"
expect 2 "usage: ckpt-worker pairs" -- "$W" pairs make ioi
expect 2 "--pairs needs" -- "$W" pairs make ioi --out "$TMP/x.json" --pairs 0
expect 1 "pair 0: the clean prompt has 3 tokens, the corrupted 2" -- "$W" pairs check \
    tests/cases/pairs/text_length_mismatch/input --tokenizer var/data/20B_tokenizer.json
expect 1 "texts need the run's tokenizer" -- "$W" pairs check tests/cases/pairs/text_ioi/input
expect 0 "ioi-text: 1 pairs of 14 tokens" -- "$W" pairs check tests/cases/pairs/text_ioi/input \
    --tokenizer var/data/20B_tokenizer.json --out "$TMP/ioi-tokens.json"
d1=$("$W" pairs check tests/cases/pairs/text_ioi/input --tokenizer var/data/20B_tokenizer.json 2>/dev/null | sed -n 's/.*digest //p')
d2=$("$W" pairs check "$TMP/ioi-tokens.json" 2>/dev/null | sed -n 's/.*digest //p')
check "the token form is the same set ($d1)" test -n "$d1" -a "$d1" = "$d2"
check "shipped sets check" sh -c "'$W' pairs check pairs/ioi.json && '$W' pairs check pairs/greater-than.json && '$W' pairs check pairs/induction.json" >/dev/null

# ---- a toy induction run
R="$TMP/run"
if ! "$W" --threads 1 train --task induction --out "$R" --steps 600 >"$TMP/train.log" 2>&1; then
    echo "FAIL: train"; tail -5 "$TMP/train.log"; exit 1
fi
STEP=$(ls "$R" | sed -n 's/^step//p' | sort -n | tail -1)

# a user pair set for this model (vocabulary 256): ids 300 are outside it
cat >"$TMP/bad.json" <<'EOF'
{"name": "too-big", "pairs": [{"clean": [1, 2, 300], "corrupted": [1, 3, 300], "answer": 4, "wrong": 5}]}
EOF
cat >"$TMP/user.json" <<'EOF'
{"name": "user", "positions": [1, -1], "pairs": [
  {"clean": [9, 17, 40, 9], "corrupted": [9, 18, 40, 9], "answer": 17, "wrong": 18},
  {"clean": [3, 77, 41, 3], "corrupted": [3, 78, 41, 3], "answer": [77], "wrong": [78, 79]}]}
EOF
expect 1 "token 300 of the clean prompt is outside the vocabulary [0, 256)" -- "$W" analyze \
    "$R/step$STEP" --items patching --artifacts "$TMP/a" --pairs "$TMP/bad.json"
check "a bad set prints no rows" test -z "$("$W" analyze "$R/step$STEP" --items patching --artifacts "$TMP/a" --pairs "$TMP/bad.json" 2>/dev/null)"
"$W" analyze "$R/step$STEP" --items patching,circuit --artifacts "$TMP/a" --pairs "$TMP/user.json" \
    --full-sweep >"$TMP/user.rows" 2>"$TMP/user.err"
check "user set: exit 0" test $? -eq 0
check "user set rows at idx 1" grep -qP '^patching\t2\thead_noise_poi\t1\t3\t1\t' "$TMP/user.rows"
check "built-in set rows at idx 0" grep -qP '^patching\t2\tresid_denoise\t0\t31\t0\t' "$TMP/user.rows"
check "circuit of both sets" test "$(grep -cP '^circuit\t2\tcircuit_size\t' "$TMP/user.rows")" -eq 2
# off the sweep: every component estimated, the top k and a sample exact
"$W" analyze "$R/step$STEP" --items patching --artifacts "$TMP/a0" >"$TMP/sparse.rows" 2>/dev/null
n_sweep=$(grep -cP '^patching\t2\tresid_denoise\t[0-9]+\t[0-9]+\t0\t' "$TMP/user.rows")
n_est=$(grep -cP '^patching\t2\tresid_denoise_estimate\t[0-9]+\t[0-9]+\t0\t' "$TMP/sparse.rows")
check "off the sweep: an estimate of every component ($n_est of $n_sweep)" test "$n_est" -eq "$n_sweep" -a "$n_est" -gt 0
check "off the sweep: fewer exact rows" test \
    "$(grep -cP '^patching\t2\thead_noise\t[0-9]+\t[0-9]+\t0\t' "$TMP/sparse.rows")" -le 8
check "off the sweep: selections" grep -qP '^patching\t2\thead_noise_selection\t' "$TMP/sparse.rows"
check "score files of both sets" test -s "$TMP/a/patching/set0.json" -a -s "$TMP/a/patching/set1.json"

# every checkpoint, in order, each reading the previous one's scores
prev=""
for s in $(ls "$R" | sed -n 's/^step//p' | sort -n); do
    mkdir -p "$TMP/art/$s"
    "$W" --threads 1 analyze "$R/step$s" --items patching,circuit --artifacts "$TMP/art/$s" \
        ${prev:+--prev-artifacts "$prev"} 2>>"$TMP/analyze.err" |
        awk -v s="$s" -F'\t' '$1 == "circuit" && $6 == 0 && ($3 == "circuit_size" || $3 == "circuit_jaccard") {print s, $3, $7}' \
        >>"$TMP/series" || { echo "FAIL: analyze step$s"; tail -3 "$TMP/analyze.err"; exit 1; }
    prev="$TMP/art/$s"
done
python3 - "$R/train_log.jsonl" "$TMP/series" <<'EOF'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
icl = {d["step"]: d["icl_loss"] for d in log}
size, jac = {}, {}
for line in open(sys.argv[2]):
    s, m, v = line.split()
    (size if m == "circuit_size" else jac)[int(s)] = float(v)
steps = sorted(icl)
assert sorted(size) == steps, "a circuit_size row for every checkpoint"
late = [s for s in steps if s >= 20]
P, F = max(icl[s] for s in late), min(icl[s] for s in late)
hi, mid, lo = F + 0.9 * (P - F), F + 0.5 * (P - F), F + 0.1 * (P - F)
start = max(s for s in late if icl[s] > hi)
end = min(s for s in late if s > start and icl[s] < lo)
cross = min(s for s in late if s > start and icl[s] < mid)
form = min(s for s in steps if size[s] > 0)
i = steps.index
print("icl_loss plateau %.3f final %.3f: 90%%..10%% window %d..%d, midpoint at %d; "
      "the circuit forms at %d (size %d, Jaccard %s)" % (P, F, start, end, cross, form, size[form],
                                                         jac.get(form)))
ok = True
def req(c, what):
    global ok
    print(("ok: " if c else "FAIL: ") + what)
    ok = ok and c
req(start <= form <= end, "the circuit forms inside the icl_loss drop")
req(abs(i(form) - i(cross)) <= 3, "within 3 checkpoints of the midpoint crossing")
req(all(size[s] == 0 for s in steps if s < start), "empty before the drop")
req(all(size[s] > 0 for s in steps if s >= end), "never empty after the drop")
req(jac.get(form) == 0.0, "Jaccard 0 where it forms")
req(all(jac.get(s) == 1.0 for s in steps[1:] if s < form), "Jaccard 1 while empty")
sys.exit(0 if ok else 1)
EOF
check "circuit summary vs the induction transition" test $? -eq 0

echo "$n checks, $fails failed"
[ "$fails" -eq 0 ]
