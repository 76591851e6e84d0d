#!/bin/bash
# bench/battery_bench.sh - the battery's cost per checkpoint and per series,
# against baselines measured in the same run, and the cost model's
# projection of it.
#
# For the pythia-70m and pythia-160m shapes (random F32 checkpoints from
# `ckpt-worker init`), the default battery of `ckptd add-run` (not `task`,
# not the opt-in items; BENCH_ITEMS to choose) is run as a node runs it: one
# `ckpt-worker --threads N analyze` with every item, on the eval set of a
# daemon (BENCH_EVAL_SEQS sequences of BENCH_EVAL_CTX tokens of the eval
# text, scripts/fetch-corpus; random ids when it cannot be built).  Per
# item, from the worker's log:
#   seconds        the item's own time ("item done": its run plus its share of
#                  the shared eval forward's hooks and batch work)
#   fwd_equiv      forward passes it ran beyond the shared one, in units of
#                  one forward over the eval set (the engine's FLOP counter)
#   cpu            its CPU seconds (every thread): the work, which other
#                  processes on a shared machine do not stretch
#   x_fwd          its CPU seconds / the CPU seconds of the shared eval forward,
#                  one plain forward of the eval set in the same process: the
#                  load-independent number to compare, and what the cost
#                  model's table is fitted to (BENCH_THREADS=1 fits it best:
#                  no BLAS thread waits for a descheduled partner)
# and the shared eval forward ("eval pass done"), the checkpoint's load, and
# the whole worker process.  Once per preset (BENCH_SWEEP=0 skips it) the
# items with a sparse exact part (`ablation`, `patching`) run again with
# --full-sweep, as on the skeleton checkpoints ckptd marks (every 32nd of
# the schedule and the last).
# The projection: `ckptd plan --model-config`'s item by item, against the
# measurement, both as multiples of the shared eval forward; seconds at the
# reference rate of cost.c (a quiet node) are x_fwd times that forward's
# GFLOP over the rate.  The series: Pythia's 154 checkpoints, 6 of them
# full sweeps.
# BENCH_ALONE=1 also runs each item alone under the LD_PRELOAD shim
# build/bench/blas_timer.so (BLAS share, sgemm rate), as before the items
# shared a forward; in build/bench/ckpt-worker-shared, the worker with the
# shared OpenBLAS the shim can preload into.
# Baselines: bench_engine forward and sgemm at the eval set's shape.
# Medians of BENCH_REPS runs (default 3).  Nothing passes or fails on
# timings.  Tables to stdout and build/bench/battery.md, raw JSON lines to
# build/bench/battery.jsonl; the fitted calibration (cost.c's table) at
# the end of the report.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1

OUT=build/bench
W=build/bin/ckpt-worker
W_SHARED=$OUT/ckpt-worker-shared
D=build/bin/ckptd
ENG=$OUT/bench_engine
SHIM=$OUT/blas_timer.so
REPS=${BENCH_REPS:-3}
THREADS=${BENCH_THREADS:-2}
SEQS=${BENCH_EVAL_SEQS:-16}
CTX=${BENCH_EVAL_CTX:-512}
SWEEP=${BENCH_SWEEP:-1}
ALONE=${BENCH_ALONE:-0}
PRESETS=${BENCH_PRESETS:-pythia-70m pythia-160m}
ITEMS=${BENCH_ITEMS:-$("$W" battery --json | python3 -c 'import json,sys; print(",".join(i["name"] for i in json.load(sys.stdin)["items"] if "task" not in i["needs"] and not i.get("opt_in")))')}
JSONL=$OUT/battery.jsonl
TMP=$(mktemp -d /tmp/ckb-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

for f in "$W" "$W_SHARED" "$D" "$ENG" "$SHIM"; do
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

# One analyze: its log and wall time as a JSON line.  RUNENV: extra
# environment of the worker alone (the BLAS timer).
RUNENV=()
analyze_json() { # preset kind r items [extra args...]
    local preset=$1 kind=$2 r=$3 items=$4
    shift 4
    rm -rf "$TMP/art"
    local t0 t1
    t0=$(date +%s.%N)
    if ! env ${RUNENV[@]+"${RUNENV[@]}"} "$W" --threads "$THREADS" analyze "$ck" --items "$items" --eval-tokens "$EVAL" \
        --ctx "$CTX" --artifacts "$TMP/art" "$@" >/dev/null 2>"$TMP/log"; then
        echo "battery_bench: $preset $kind failed: $(tail -n 2 "$TMP/log")" >&2
        return 1
    fi
    t1=$(date +%s.%N)
    python3 - "$preset" "$kind" "$r" "$TMP/log" "$t0" "$t1" <<'PY'
import json, re, sys
preset, kind, r, log, t0, t1 = sys.argv[1:]
rec = {"preset": preset, "kind": kind, "r": int(r), "wall": float(t1) - float(t0), "items": {}}
for line in open(log):
    kv = dict(re.findall(r'(\w+)=("[^"]*"|[^ ]+)', line))
    msg = kv.get("msg", "").strip('"')
    if msg == "item done":
        rec["items"][kv["item"]] = {k: float(kv[k]) for k in ("seconds", "cpu_seconds", "forward_flop", "rows")}
    elif msg == "eval pass done":
        rec["pass"] = {k: float(kv[k]) for k in ("seconds", "cpu_seconds", "forward_seconds",
                                                 "forward_cpu_seconds", "forward_flop")}
    elif msg == "checkpoint loaded":
        rec["load"] = float(kv["seconds"])
    elif msg == "analyze done":
        rec["cpu"] = float(kv["cpu_seconds"])
print(json.dumps(rec))
PY
}

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
    for r in $(seq "$REPS"); do
        echo "battery_bench: $preset battery ($r/$REPS)" >&2
        analyze_json "$preset" battery "$r" "$ITEMS" >>"$JSONL"
    done
    # the items with a sparse exact part, on a skeleton checkpoint
    SWEEP_ITEMS=""
    for it in ablation patching; do
        [[ ",$ITEMS," == *,$it,* ]] && SWEEP_ITEMS=${SWEEP_ITEMS:+$SWEEP_ITEMS,}$it
    done
    if [ "$SWEEP" = 1 ] && [ -n "$SWEEP_ITEMS" ]; then
        echo "battery_bench: $preset $SWEEP_ITEMS, full sweep" >&2
        analyze_json "$preset" sweep 1 "$SWEEP_ITEMS" --full-sweep >>"$JSONL"
    fi
    "$D" plan --model-config "$ck/config.json" --items "$ITEMS" --eval-seqs "$SEQS" --ctx "$CTX" --json |
        python3 -c "import json,sys; print(json.dumps({'preset': '$preset', 'kind': 'plan', 'plan': json.load(sys.stdin)}))" >>"$JSONL"
    if [ "$ALONE" = 1 ]; then
        for item in ${ITEMS//,/ }; do
            for r in $(seq "$REPS"); do
                echo "battery_bench: $preset $item alone ($r/$REPS)" >&2
                rm -f "$TMP/blas.jsonl"
                RUNENV=("BLAS_TIMER_OUT=$TMP/blas.jsonl" "LD_PRELOAD=$PWD/$SHIM")
                W0=$W W=$W_SHARED
                analyze_json "$preset" alone "$r" "$item" >"$TMP/rec" || { RUNENV=() W=$W0; continue; }
                RUNENV=() W=$W0
                python3 - "$TMP/rec" "$TMP/blas.jsonl" >>"$JSONL" <<'PY'
import json, sys
rec = json.loads(open(sys.argv[1]).read())
rec["blas"] = json.loads(open(sys.argv[2]).read().splitlines()[-1])
print(json.dumps(rec))
PY
            done
        done
    fi
done
note="Eval set: $SEQS x $CTX tokens of $EVAL_NOTE; $THREADS BLAS threads; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg); run took $((SECONDS - START)) s."
python3 bench/battery_report.py "$JSONL" --seqs "$SEQS" --note "$note" | tee "$OUT/battery.md"
