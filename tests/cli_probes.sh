#!/bin/sh
# cli_probes.sh - `ckpt-worker analyze --items probes [--probe FILE]...` from
# the outside: valid probe sets give user_* rows with idx = the position in
# the --probe list (and a `probe set idx=..` line on stderr naming each),
# twice byte-identical; every malformed set exits 1 with a message naming
# what is wrong, and prints no rows at all (sets are checked before any
# item runs).  Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
G=tests/golden/f32_parallel_rot025 # V 96, 2 layers, max_position_embeddings 64
TMP=$(mktemp -d /tmp/ckptd-cli-probes-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

status() {
    want=$1 name=$2
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    got=$?
    if [ "$got" -eq "$want" ]; then ok "$name (exit $got)"; else
        fail "$name: exit $got, want $want"; tail -3 "$TMP/err"; fi
}

# gen NAME PYTHON-EXPR: write $TMP/NAME.json from a Python expression over
# seqs(n, T, label_fn) helpers
gen() {
    python3 - "$TMP/$1.json" "$2" <<'EOF'
import json, random, sys
r = random.Random(7)
def toks(T):
    return [r.randrange(96) for _ in range(T)]
def cls(n, T, f=lambda t: "even" if t % 2 == 0 else "odd"):
    out = []
    for _ in range(n):
        tk = toks(T)
        out.append({"tokens": tk, "labels": [None] + [f(t) for t in tk[1:]]})
    return out
def doc(seqs, kind="classification", name="parity", **kw):
    d = {"name": name, "kind": kind, "sequences": seqs}
    d.update(kw)
    return d
obj = eval(sys.argv[2])
with open(sys.argv[1], "w") as f:
    f.write(obj if isinstance(obj, str) else json.dumps(obj))
EOF
}

# bad NAME EXPR NEEDLE: the set is refused with a message containing NEEDLE
bad() {
    gen "$1" "$2"
    status 1 "$1 refused" -- "$W" analyze "$G" --items weights,probes --probe "$TMP/$1.json"
    # logfmt escapes the quotes inside error="..."
    if sed 's/\\"/"/g' "$TMP/err" | grep -qF -- "$3"; then ok "$1: message has '$3'"; else
        fail "$1: message lacks '$3': $(cat "$TMP/err")"; fi
    [ -s "$TMP/out" ] && fail "$1: rows printed" || ok "$1: no rows printed"
}

# valid sets
gen parity 'doc(cls(30, 12))'
gen seqlabel 'doc([{"tokens": toks(5 + i % 4), "label": (i * 7) % 11 / 3.0} for i in range(40)], kind="regression", name="seq value", layers=[-1, 1])'
status 0 "two probe sets" -- "$W" analyze "$G" --items probes --probe "$TMP/parity.json" --probe "$TMP/seqlabel.json"
cp "$TMP/out" "$TMP/run1"
n0=$(awk -F'\t' '$3 ~ /^user_/ && $6 == 0' "$TMP/run1" | wc -l)
n1=$(awk -F'\t' '$3 ~ /^user_/ && $6 == 1' "$TMP/run1" | wc -l)
# set 0: majority + (acc, shuffled) x 3 sites; set 1: (r2, shuffled) x layers -1, 1
[ "$n0" -eq 7 ] && ok "7 rows for the classification set (idx 0)" || fail "$n0 rows for idx 0"
[ "$n1" -eq 4 ] && ok "4 rows for the regression set (idx 1)" || fail "$n1 rows for idx 1"
awk -F'\t' '$6 == 1 && $3 ~ /^user_/ { print $3, $4 }' "$TMP/run1" | sort | tr '\n' ' ' >"$TMP/sites"
[ "$(cat "$TMP/sites")" = "user_r2 -1 user_r2 1 user_shuffled_r2 -1 user_shuffled_r2 1 " ] &&
    ok "regression set only at its layers -1 and 1" || fail "regression rows: $(cat "$TMP/sites")"
grep 'msg="probe set"' "$TMP/err" | grep -q 'idx=1 name="seq value"' &&
    ok "stderr maps idx 1 to its name" || fail "no idx mapping on stderr: $(cat "$TMP/err")"
# parity of the current token is in the embedding: readable at hook_embed
acc=$(awk -F'\t' '$3 == "user_acc" && $4 == -1 && $6 == 0 { print $7 }' "$TMP/run1")
awk -v a="$acc" 'BEGIN { exit !(a > 0.9) }' && ok "parity probe at hook_embed: $acc" ||
    fail "parity probe at hook_embed: '$acc'"
status 0 "again" -- "$W" analyze "$G" --items probes --probe "$TMP/parity.json" --probe "$TMP/seqlabel.json"
cmp -s "$TMP/out" "$TMP/run1" && ok "second run byte-identical" || fail "second run differs"
status 0 "--probe without the probes item" -- "$W" analyze "$G" --items weights --probe "$TMP/parity.json"
grep -q "probe sets unused" "$TMP/err" && ok "unused probe sets warned about" || fail "no warning"

# malformed sets
bad notjson '"{\"name\": "' "not valid JSON"
status 1 "missing probe file" -- "$W" analyze "$G" --items probes --probe "$TMP/none.json"
grep -q "cannot open probe set" "$TMP/err" && ok "missing file message" || fail "missing file message"
bad notobject '[1, 2]' "a probe set is a JSON object"
bad noname 'dict(doc(cls(6, 5)), name="")' '"name" must be a non-empty string'
bad badkind 'doc(cls(6, 5), kind="ranking")' '"kind" must be "classification" or "regression"'
bad unknownkey 'dict(doc(cls(6, 5)), layer_site=3)' 'unknown key "layer_site"'
bad fewseqs 'doc(cls(4, 30))' "4 sequences: at least 5 are needed"
bad lengths 'doc(cls(5, 6)[:4] + [{"tokens": [1, 2, 3, 4], "labels": ["odd", "even", None]}])' \
    "sequence 4: 3 labels for 4 tokens"
bad mixed 'doc(cls(6, 6) + [{"tokens": [1, 2], "labels": [None, 3]}])' \
    "sequence 6, position 1: label is an integer but earlier labels are strings (labels of mixed types)"
bad bothlabels 'doc(cls(5, 6) + [{"tokens": [1], "label": "a", "labels": ["a"]}])' \
    'sequence 5: give either "labels" (one per token) or "label" (the last token'"'"'s), not both'
bad negtoken 'doc(cls(5, 6) + [{"tokens": [1, -2], "label": "odd"}])' \
    "sequence 5, position 1: token is not a non-negative integer"
bad vocab 'doc(cls(5, 6) + [{"tokens": [1, 500], "label": "odd"}])' \
    "sequence 5, position 1: token 500 is outside the vocabulary [0, 96)"
bad toolong 'doc(cls(5, 6) + [{"tokens": list(range(65)), "label": "odd"}])' \
    "sequence 5 has 65 tokens, more than the model's max_position_embeddings 64"
bad fewclass 'doc(cls(5, 6) + [{"tokens": [1, 2], "label": "rare"}, {"tokens": [3], "label": "rare"}])' \
    'class "rare" has 2 labelled positions; each class needs at least 4 (too few examples)'
bad oneclass 'doc(cls(6, 6, lambda t: "x"))' 'only one class (x)'
bad regnum 'doc([{"tokens": [1, 2], "label": "3.5"}] * 6, kind="regression")' \
    "sequence 0, position 1: a regression label must be a number"
bad regfew 'doc([{"tokens": [1, 2], "label": i} for i in range(6)], kind="regression")' \
    "6 labelled positions: a regression probe needs at least 10"
bad regsame 'doc([{"tokens": [1, 2], "label": 2.5} for i in range(12)], kind="regression")' \
    "every regression label is 2.5"
bad noheldout 'doc([{"tokens": [1, 2], "label": "odd" if i % 2 else "even"} if i % 5 != 4 else {"tokens": [1, 2], "labels": [None, None]} for i in range(20)])' \
    "no labelled positions in the held-out sequences"
bad badlayer 'doc(cls(6, 6), layers=[0, 2])' "layer 2: the model has layers -1 (hook_embed) .. 1"
bad duplayer 'doc(cls(6, 6), layers=[1, 1])' '"layers" lists layer 1 twice'
bad typolayer 'doc(cls(6, 6), layers=["1"])' '"layers"[0] is not a layer'

[ "$fails" -eq 0 ] || { echo "cli_probes: $fails failed"; exit 1; }
echo "cli_probes: all passed"
