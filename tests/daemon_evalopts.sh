#!/bin/bash
# daemon_evalopts.sh - a run's eval options reach its workers: `add-run
# --eval-tokens FILE --ctx N --eval-seqs K --probe FILE` stores them in
# runs.options, and `ckptd serve` passes them to `ckpt-worker analyze`
# (--ctx, --max-seqs, --probe), as the measurements show: loss_by_pos has
# N-1 positions, the `loss` value equals the worker's own on the first K
# sequences, and the user probe set's rows land with idx 0.  Bad
# combinations exit 2 and write nothing.
. tests/lib/daemon.sh
dl_init evalopts 54357
dl_migrate
dl_config "$T/cfg.json"
dl_ckpts 2
C=("$CKPTD" --config "$T/cfg.json")

# 12 sequences of 16 ids (tiny's vocabulary is 512) as one uint16 stream
/usr/bin/python3 -c '
import random, struct, sys
r = random.Random(7)
sys.stdout.buffer.write(struct.pack("<192H", *[r.randrange(512) for _ in range(192)]))' >"$T/eval.u16"
/usr/bin/python3 -c '
import json, random
r = random.Random(3)
seqs = [{"tokens": [r.randrange(512) for _ in range(8)], "label": i % 2} for i in range(20)]
json.dump({"name": "parity", "kind": "classification", "sequences": seqs}, open("'"$T"'/probe.json", "w"))'

bad() { # bad DESC ARGS...
    local d=$1 rc
    shift
    "${C[@]}" add-run "$@" >"$T/bad.out" 2>&1
    rc=$?
    if [ "$rc" -eq 2 ]; then dl_ok "$d: exit 2"; else dl_fail "$d: exit $rc, want 2"; fi
}
bad "--ctx without --eval-tokens" x --source "file://$T/ck" --schedule 0 --ctx 16
bad "--eval-seqs without --eval-tokens" x --source "file://$T/ck" --schedule 0 --eval-seqs 3
bad "negative --ctx" x --source "file://$T/ck" --schedule 0 --eval-tokens "$T/eval.u16" --ctx -1
bad "missing probe file" x --source "file://$T/ck" --schedule 0 --probe "$T/nonesuch.json"
dl_eq "nothing written" 0 "$(dl_sql "SELECT count(*) FROM runs")"

out=$("${C[@]}" add-run ev --source "file://$T/ck/step{step}" --schedule 0,1 --items loss,probes \
    --eval-tokens "$T/eval.u16" --ctx 16 --eval-seqs 10 --probe "$T/probe.json" 2>"$T/add.err")
dl_eq "add-run" "run ev: 2 steps, 2 items; added 2 checkpoints and 4 jobs" "$out"
dl_eq "options stored" "16 10 $T/probe.json" \
    "$(dl_sql "SELECT (options->>'ctx') || ' ' || (options->>'eval_seqs') || ' ' || (options->'probes'->>0) FROM runs WHERE name = 'ev'")"

dl_serve A --config "$T/cfg.json" serve --until-idle --node A
dl_wait_exit "$A_PID" 60
dl_eq "jobs done" 4 "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
dl_eq "loss_by_pos positions (ctx 16)" "15 14" \
    "$(dl_sql "SELECT count(DISTINCT idx) || ' ' || max(idx) FROM series WHERE metric = 'loss_by_pos' AND step = 0")"
want=$("$WORKER" analyze "$T/ck/step1" --items loss --eval-tokens "$T/eval.u16" --ctx 16 --max-seqs 10 2>/dev/null |
    awk -F'\t' '$3 == "loss" { print $7 }')
all=$("$WORKER" analyze "$T/ck/step1" --items loss --eval-tokens "$T/eval.u16" --ctx 16 2>/dev/null |
    awk -F'\t' '$3 == "loss" { print $7 }')
got=$(dl_sql "SELECT value FROM series WHERE metric = 'loss' AND step = 1")
# measurements hold float4: equal to 1e-6 relative
if awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-6 * a) }'; then
    dl_ok "loss over the first 10 sequences ($got)"
else
    dl_fail "loss over the first 10 sequences: want $want, got $got"
fi
if [ "$want" != "$all" ]; then dl_ok "10 of 12 sequences differ from all 12"; else dl_fail "--max-seqs changed nothing"; fi
dl_eq "user probe rows, idx 0" "true 0" \
    "$(dl_sql "SELECT (count(*) > 0) || ' ' || max(idx) FROM series WHERE metric = 'user_acc'")"
dl_finish
