#!/bin/sh
# cli_battery.sh - `ckpt-worker battery` and `ckpt-worker analyze` from the
# outside: the registry document parses as JSON, analyze prints well-formed
# COPY rows (7 tab-separated fields, integer version/layer/head/idx),
# byte-identical on a second run, exit statuses 1/2 for bad input/usage, and
# the `loss` row agrees (1e-5) with the per-sequence losses `forward` prints
# for the same tokens.  A failing item (task, no task.json) costs only
# itself: the items around it print their rows, exit 1, and --status says
# started/done with the row count/failed with the message, item by item;
# an item depending on a failed one is reported not run.  --gate: the rows
# of a run whose byte comes 1 s late equal the ungated rows, and the
# seconds it logs leave the wait out (gate_wait_s); a gate closed without a
# byte fails every item, exit 1.  Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
G=tests/golden/f32_parallel_rot025
TMP=$(mktemp -d /tmp/ckptd-cli-battery-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# status WANT NAME -- command...: run (stdout to $TMP/out, stderr to
# $TMP/err) and check the exit status
status() {
    want=$1 name=$2
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    got=$?
    if [ "$got" -eq "$want" ]; then ok "$name (exit $got)"; else
        fail "$name: exit $got, want $want"; tail -3 "$TMP/err"; fi
}

# the registry
status 0 "battery table" -- "$W" battery
grep -q '^loss ' "$TMP/out" && grep -q 'spectral_norm' "$TMP/out" && ok "table lists loss and spectral_norm" ||
    fail "table lacks loss or spectral_norm"
status 0 "battery --json" -- "$W" battery --json
if python3 -c '
import json, sys
d = json.load(sys.stdin)
names = [i["name"] for i in d["items"]]
assert "loss" in names and "weights" in names, names
for i in d["items"]:
    assert isinstance(i["version"], int) and i["version"] > 0
    assert isinstance(i["needs"], list)
    for m in i["metrics"]:
        assert m["unit"] and m["description"], m
        for k in ("layer", "head", "idx"):
            assert isinstance(m[k], str)
' <"$TMP/out"; then ok "battery --json parses and is complete"; else fail "battery --json"; fi
status 2 "battery with a stray argument" -- "$W" battery --frob

# analyze: well-formed rows, deterministic
status 0 "analyze loss,weights" -- "$W" analyze "$G" --items loss,weights
cp "$TMP/out" "$TMP/run1"
bad=$(awk -F'\t' '
    NF != 7 || $2 !~ /^[0-9]+$/ || $4 !~ /^-?[0-9]+$/ || $5 !~ /^-?[0-9]+$/ || $6 !~ /^-?[0-9]+$/ ||
    $7 !~ /^(-?[0-9.]+(e[-+][0-9]+)?|NaN|-?Infinity)$/ { n++ }
    END { print n + 0 }' "$TMP/run1")
lines=$(wc -l <"$TMP/run1")
if [ "$lines" -gt 0 ] && [ "$bad" -eq 0 ]; then ok "$lines rows, all with 7 well-formed fields"; else
    fail "$bad of $lines rows malformed"; fi
for item in loss weights; do
    grep -q "^$item	[1-9][0-9]*	" "$TMP/run1" && ok "rows of $item" || fail "no rows of $item"
done
status 0 "analyze again" -- "$W" analyze "$G" --items loss,weights
cmp -s "$TMP/run1" "$TMP/out" && ok "second run byte-identical" || fail "second run differs"
status 0 "analyze with another seed" -- "$W" analyze "$G" --items loss --seed 1
cmp -s "$TMP/out" "$TMP/run1" && fail "--seed 1 gives the seed-0 rows" || ok "--seed changes the eval set"

# usage errors and bad input
status 2 "unknown item" -- "$W" analyze "$G" --items loss,frobnicate
grep -q "known items: loss, weights" "$TMP/err" && ok "unknown item lists the known ones" ||
    fail "unknown item message: $(cat "$TMP/err")"
[ -s "$TMP/out" ] && fail "unknown item printed rows" || ok "unknown item printed nothing"
status 2 "no --items" -- "$W" analyze "$G"
status 2 "item twice" -- "$W" analyze "$G" --items loss,loss
status 2 "empty item" -- "$W" analyze "$G" --items loss,
status 2 "bad seed" -- "$W" analyze "$G" --items loss --seed -3
status 1 "missing checkpoint" -- "$W" analyze "$TMP/nonexistent" --items weights
[ -s "$TMP/out" ] && fail "missing checkpoint printed rows" || ok "missing checkpoint printed nothing"
status 1 "missing eval file" -- "$W" analyze "$G" --items weights,loss --eval-tokens "$TMP/none.u16"
[ -s "$TMP/out" ] && fail "rows printed although the eval file is missing" ||
    ok "nothing printed when the eval file is missing"
printf '\001\000\002\000\003' >"$TMP/odd.u16"
status 1 "odd-sized .u16" -- "$W" analyze "$G" --items loss --eval-tokens "$TMP/odd.u16"
grep -q "not a whole number" "$TMP/err" && ok "odd-sized .u16 message" || fail "odd-sized .u16 message"
echo '[[1,2,3,500]]' >"$TMP/oov.json"
status 1 "id outside the vocabulary" -- "$W" analyze "$G" --items weights,loss --eval-tokens "$TMP/oov.json"
grep -q "outside the vocabulary" "$TMP/err" && ok "vocabulary message" || fail "vocabulary message"
grep -q "^weights" "$TMP/out" && ok "the item before the failing one printed its rows" ||
    fail "no weights rows before the failing loss item"
grep -q "^loss" "$TMP/out" && fail "half a loss item printed" || ok "failed item printed no rows"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(2 * 65))' >"$TMP/long.u16"
status 1 "sequences longer than max positions" -- "$W" analyze "$G" --items loss --eval-tokens "$TMP/long.u16" --ctx 65
grep -q "max_position_embeddings 64" "$TMP/err" && ok "max positions message" || fail "max positions message"

# the loss row equals the mean of forward's per-sequence losses
status 0 "analyze --eval-tokens tokens.json" -- "$W" analyze "$G" --items loss --eval-tokens "$G/tokens.json"
mine=$(awk -F'\t' '$3 == "loss" { print $7 }' "$TMP/out")
"$W" forward "$G" --tokens "$G/tokens.json" >"$TMP/fwd" 2>/dev/null
theirs=$(awk '$1 == "seq" { s += $4; n++ } END { if (n == 2) printf "%.9f", s / n }' "$TMP/fwd")
if [ -n "$mine" ] && [ -n "$theirs" ] &&
    awk -v a="$mine" -v b="$theirs" 'BEGIN { d = a - b; exit !(d <= 1e-5 && d >= -1e-5) }'; then
    ok "loss $mine = mean of forward's per-sequence losses $theirs"
else
    fail "loss '$mine' vs forward's mean '$theirs'"
fi
npos=$(awk -F'\t' '$3 == "loss_by_pos"' "$TMP/out" | wc -l)
[ "$npos" -eq 11 ] && ok "11 loss_by_pos rows for 12-token sequences" || fail "$npos loss_by_pos rows"
# icl_score_scaled idx 11 = loss of token 11 - loss of token 1 (loss_by_pos 10 - 0); no icl_score
if awk -F'\t' '$3 == "loss_by_pos" && $6 == 10 { a = $7 } $3 == "loss_by_pos" && $6 == 0 { b = $7 }
    $3 == "icl_score_scaled" && $6 == 11 { c = $7; n++ } $3 == "icl_score" { bad = 1 }
    END { d = c - (a - b); exit !(n == 1 && !bad && d <= 1e-12 && d >= -1e-12) }' "$TMP/out"; then
    ok "icl_score_scaled idx 11 = loss_by_pos 10 - loss_by_pos 0, no icl_score at T=12"
else
    fail "icl_score_scaled rows: $(grep icl "$TMP/out")"
fi

# the same tokens as a .u32 stream cut at --ctx 12 give the same rows
python3 -c '
import json, struct, sys
seqs = json.load(open(sys.argv[1]))
sys.stdout.buffer.write(b"".join(struct.pack("<I", t) for s in seqs for t in s) + b"\0\0\0\0")
' "$G/tokens.json" >"$TMP/tokens.u32"
cp "$TMP/out" "$TMP/json_rows"
status 0 "analyze --eval-tokens tokens.u32 --ctx 12" -- "$W" analyze "$G" --items loss --eval-tokens "$TMP/tokens.u32" --ctx 12
cmp -s "$TMP/out" "$TMP/json_rows" && ok ".u32 stream gives the rows of the .json" || fail ".u32 rows differ from .json rows"

# a failing item costs only itself; --status tells item by item
status 1 "loss,task,weights: task fails" -- "$W" analyze "$G" --items loss,task,weights --status "$TMP/status"
nl=$(grep -c '^loss	' "$TMP/out")
nw=$(grep -c '^weights	' "$TMP/out")
[ "$nl" -gt 0 ] && [ "$nw" -gt 0 ] && ok "the items around task printed their rows ($nl, $nw)" ||
    fail "rows of loss $nl, weights $nw"
grep -q '^task	' "$TMP/out" && fail "rows of the failed task item" || ok "no rows of the failed item"
lv=$("$W" battery | awk '$1 == "loss" { print $2; exit }')
tv=$("$W" battery | awk '$1 == "task" { print $2; exit }')
printf 'ckpt-worker-status\t1\nstarted\tloss\t%s\ndone\tloss\t%s\t%s\nstarted\ttask\t%s\n' \
    "$lv" "$lv" "$nl" "$tv" >"$TMP/want"
head -n 4 "$TMP/status" | cmp -s - "$TMP/want" && ok "status: started and done with the row count" ||
    fail "status head: $(head -n 4 "$TMP/status")"
sed -n 5p "$TMP/status" | grep -q "^failed	task	[0-9]*	item task v[0-9]*: needs the run's task.json" &&
    ok "status: task failed with its message" || fail "status line 5: $(sed -n 5p "$TMP/status")"
sed -n 7p "$TMP/status" | grep -q "^done	weights	[0-9]*	$nw\$" && ok "status: weights done after it" ||
    fail "status line 7: $(sed -n 7p "$TMP/status")"
status 1 "sae without --artifacts, then sae_match" -- "$W" analyze "$G" --items sae,sae_match --status "$TMP/status"
grep -q "^failed	sae_match	[0-9]*	item sae_match v[0-9]* not run: depends on sae, which failed\$" "$TMP/status" &&
    ok "status: the dependent item not run" || fail "status: $(cat "$TMP/status")"
status 1 "a checkpoint that cannot be read fails every item" -- "$W" analyze "$TMP/nonexistent" --items loss,weights --status "$TMP/status"
[ "$(grep -c "^failed	.* not run: .*config.json" "$TMP/status")" = 2 ] && ok "status: both items failed naming config.json" ||
    fail "status: $(cat "$TMP/status")"

# a closed stdout is an error, not a silent success
"$W" analyze "$G" --items weights,loss 2>"$TMP/err" >&-
got=$?
[ "$got" -eq 1 ] && ok "closed stdout: exit 1" || fail "closed stdout: exit $got"

# a hand-built circuit from init: its induction head found by analyze
status 0 "init --preset induction-circuit" -- "$W" init "$TMP/circ" --preset induction-circuit
status 0 "analyze the circuit --items heads" -- "$W" analyze "$TMP/circ" --items heads
if awk -F'\t' '$3 == "induction_score" && $4 == 1 && $5 == 0 { s = $7 }
    $3 == "induction_loss" { l = $7 } END { exit !(s > 0.9 && l < 0.1) }' "$TMP/out"; then
    ok "induction-circuit: head 1.0 induction score > 0.9, induction loss < 0.1"
else fail "induction-circuit rows: $(grep -E 'induction_(score\t1\t0|loss\t)' "$TMP/out")"; fi

# --gate: load, wait for one byte on stdin, then analyse
{ sleep 1; printf g; } | "$W" analyze "$G" --items loss,weights --gate >"$TMP/gated" 2>"$TMP/err"
got=$?
if [ "$got" -eq 0 ] && cmp -s "$TMP/gated" "$TMP/run1"; then ok "gated analyze: exit 0, the ungated rows"
else fail "gated analyze: exit $got, rows differ from the ungated run's"; tail -3 "$TMP/err"; fi
if awk '/msg="analyze done"/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { exit !(v["gate_wait_s"] >= 0.9 && v["seconds"] < v["gate_wait_s"]) }' "$TMP/err"
then ok "gated analyze: the wait logged apart from the seconds ($(grep -o 'seconds=[^ ]* cpu_seconds=[^ ]* gate_wait_s=[^ ]*' "$TMP/err"))"
else fail "gated analyze's done line: $(grep 'analyze done' "$TMP/err")"; fi
status 1 "gate closed without a byte" -- "$W" analyze "$G" --items loss,weights --gate </dev/null
grep -q 'the gate closed without a start (end of input)' "$TMP/err" && [ ! -s "$TMP/out" ] &&
    ok "... says so and prints no rows" || fail "closed gate: $(tail -2 "$TMP/err")"

[ "$fails" -eq 0 ] || { echo "cli_battery: $fails failed"; exit 1; }
echo "cli_battery: all passed"
