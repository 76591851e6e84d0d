#!/bin/bash
# bench/battery_bench.sh - the battery's cost per checkpoint, against
# baselines measured in the same run.
#
# For the pythia-70m and pythia-160m shapes (random F32 checkpoints from
# `ckpt-worker init`), each battery item is run alone by
# `ckpt-worker --threads N analyze` on the default eval set of a daemon
# (BENCH_EVAL_SEQS sequences of BENCH_EVAL_CTX tokens of the eval text,
# scripts/fetch-corpus; random ids when it cannot be built), under the
# LD_PRELOAD shim build/bench/blas_timer.so, which times every BLAS and
# LAPACK call.  Per item:
#   seconds          the item's own time (the worker's "item done" log line)
#   fwd_equiv        forward passes it ran, in units of one forward over the
#                    eval set (the engine's flop counter, "forward_flop=")
#   x_fwd            seconds / (time those forwards take at the plain
#                    forward rate of the same run): what the item costs
#                    beyond the forwards it needs (1.0 = nothing)
#   outside_blas     share of the item's time not inside BLAS/LAPACK
#   sgemm_rate       its sgemm GFLOP/s against plain sgemm on the model's
#                    shapes in the same run (bench_engine sgemm)
# Baselines: bench_engine forward and sgemm at the eval set's shape.
# Medians of BENCH_REPS runs (default 3).  Nothing passes or fails on
# timings.  Tables to stdout and build/bench/battery.md, raw JSON lines to
# build/bench/battery.jsonl.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1

OUT=build/bench
W=build/bin/ckpt-worker
ENG=$OUT/bench_engine
SHIM=$OUT/blas_timer.so
REPS=${BENCH_REPS:-3}
THREADS=${BENCH_THREADS:-2}
SEQS=${BENCH_EVAL_SEQS:-16}
CTX=${BENCH_EVAL_CTX:-512}
PRESETS=${BENCH_PRESETS:-pythia-70m pythia-160m}
ITEMS=${BENCH_ITEMS:-$("$W" battery --json | python3 -c 'import json,sys; print(" ".join(i["name"] for i in json.load(sys.stdin)["items"] if "task" not in i["needs"] and not i.get("opt_in")))')}
JSONL=$OUT/battery.jsonl
TMP=$(mktemp -d /tmp/ckb-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

for f in "$W" "$ENG" "$SHIM"; do
    [ -e "$f" ] || { echo "battery_bench: $f is missing; run 'make bench'" >&2; exit 1; }
done

# The eval set: the first SEQS*CTX tokens of the eval text.
EVAL=$TMP/eval.u16
EVAL_NOTE="eval text (scripts/fetch-corpus)"
if scripts/fetch-corpus >"$TMP/corpus.log" 2>&1 && [ -s var/data/eval.u16 ]; then
    head -c $((SEQS * CTX * 2)) var/data/eval.u16 >"$EVAL"
else
    EVAL_NOTE="random ids (scripts/fetch-corpus failed: $(tail -n 1 "$TMP/corpus.log"))"
    python3 -c "import random,struct,sys; r=random.Random(0); sys.stdout.buffer.write(struct.pack('<%dH' % ($SEQS*$CTX), *[r.randrange(50277) for _ in range($SEQS*$CTX)]))" >"$EVAL"
fi

: >"$JSONL"
START=$SECONDS
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
for preset in $PRESETS; do
    ck=$TMP/$preset
    "$W" init "$ck" --preset "$preset" >/dev/null || { echo "battery_bench: init $preset failed" >&2; exit 1; }
    echo "battery_bench: $preset baselines" >&2
    for r in $(seq "$REPS"); do
        "$ENG" forward --preset "$preset" --batch 8 --ctx "$CTX" --threads "$THREADS" --reps 1 |
            sed "s/^/{\"preset\":\"$preset\",\"kind\":\"forward\",\"r\":$r,\"line\":/; s/\$/}/" >>"$JSONL"
        "$ENG" sgemm --preset "$preset" --batch 8 --ctx "$CTX" --threads "$THREADS" --reps 1 |
            sed "s/^/{\"preset\":\"$preset\",\"kind\":\"sgemm\",\"r\":$r,\"line\":/; s/\$/}/" >>"$JSONL"
    done
    for item in $ITEMS; do
        for r in $(seq "$REPS"); do
            echo "battery_bench: $preset $item ($r/$REPS)" >&2
            rm -f "$TMP/blas.jsonl"
            if ! BLAS_TIMER_OUT=$TMP/blas.jsonl LD_PRELOAD=$PWD/$SHIM \
                "$W" --threads "$THREADS" analyze "$ck" --items "$item" --eval-tokens "$EVAL" \
                --ctx "$CTX" --artifacts "$TMP/art" >/dev/null 2>"$TMP/log"; then
                echo "battery_bench: $preset $item failed: $(tail -n 2 "$TMP/log")" >&2
                continue
            fi
            python3 - "$preset" "$item" "$r" "$TMP/log" "$TMP/blas.jsonl" >>"$JSONL" <<'PY'
import json, re, sys
preset, item, r, log, blas = sys.argv[1:]
rec = {"preset": preset, "kind": "item", "item": item, "r": int(r)}
for line in open(log):
    if 'msg="item done"' in line:
        for k, v in re.findall(r'(\w+)=([^ ]+)', line):
            if k in ("seconds", "forward_flop", "rows"):
                rec[k] = float(v)
rec["blas"] = json.loads(open(blas).read().splitlines()[-1])
print(json.dumps(rec))
PY
        done
    done
done
note="Eval set: $SEQS x $CTX tokens of $EVAL_NOTE; $THREADS BLAS threads; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg); run took $((SECONDS - START)) s."
python3 bench/battery_report.py "$JSONL" --seqs "$SEQS" --note "$note" | tee "$OUT/battery.md"
