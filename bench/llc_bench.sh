#!/bin/bash
# bench/llc_bench.sh - the battery item `llc`: seconds per checkpoint, and
# as a ratio to one forward+backward on one of its minibatches, measured in
# the same run (build/bench/bench_llc, see its header).
#
# Models:
#   modadd      a toy modular-addition run (`ckpt-worker train --task
#               modular-addition --steps 200`, p 47, 1 layer, d_model 64),
#               its last checkpoint, on its training pairs: the full item
#   pythia-14m  a random pythia-14m-shaped checkpoint (`ckpt-worker init`),
#               on the generated eval set (16 x 128): BENCH_LLC_STEPS SGLD
#               steps (one chain, no burn-in; default 20) and the full
#               item's time extrapolated from them (the cost is linear in
#               the steps); BENCH_LLC_FULL=1 runs the full item instead
# Medians of BENCH_REPS runs (default 3), BENCH_THREADS threads (default 2).
# Nothing passes or fails on timings.  A table to stdout and
# build/bench/llc.md, raw JSON lines to build/bench/llc.jsonl.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1

OUT=build/bench
W=build/bin/ckpt-worker
BIN=$OUT/bench_llc
REPS=${BENCH_REPS:-3}
THREADS=${BENCH_THREADS:-2}
STEPS=${BENCH_LLC_STEPS:-20}
JSONL=$OUT/llc.jsonl
MD=$OUT/llc.md
TMP=$(mktemp -d /tmp/ckllc-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

for f in "$W" "$BIN"; do
    [ -x "$f" ] || { echo "llc_bench: $f is missing; run 'make bench'" >&2; exit 1; }
done
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
START=$SECONDS

echo "llc_bench: training the modular-addition model" >&2
"$W" --threads "$THREADS" train --task modular-addition --out "$TMP/ma" --steps 200 \
    --checkpoints 0,200 >/dev/null 2>"$TMP/train.log" ||
    { echo "llc_bench: train failed: $(tail -n 2 "$TMP/train.log")" >&2; exit 1; }
"$W" init "$TMP/p14" --preset pythia-14m >/dev/null ||
    { echo "llc_bench: init pythia-14m failed" >&2; exit 1; }

: >"$JSONL"
echo "llc_bench: modadd, full item x $REPS" >&2
"$BIN" "$TMP/ma/step200" --task "$TMP/ma/task.json" --threads "$THREADS" --reps "$REPS" |
    sed 's/^{/{"model":"modadd",/' >>"$JSONL" || exit 1
if [ "${BENCH_LLC_FULL:-0}" = 1 ]; then
    echo "llc_bench: pythia-14m, full item x $REPS" >&2
    "$BIN" "$TMP/p14" --threads "$THREADS" --reps "$REPS"
else
    echo "llc_bench: pythia-14m, $STEPS steps x $REPS" >&2
    "$BIN" "$TMP/p14" --threads "$THREADS" --reps "$REPS" --chains 1 --burnin 0 --draws "$STEPS"
fi | sed 's/^{/{"model":"pythia-14m",/' >>"$JSONL" || exit 1

python3 - "$JSONL" "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$((SECONDS - START))" <<'EOF' | tee "$MD"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("## llc item (median of %d; load average %s at start, %s at end; %s s in all)\n"
      % (rows[0]["reps"], sys.argv[2], sys.argv[3], sys.argv[4]))
print("| model | parameters | data | minibatch | steps timed | fwd+bwd s | SGLD step s | step / fwd+bwd | llc s per checkpoint | item / fwd+bwd |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    full = "%.1f%s" % (r["full_item_s"], "" if r["full_measured"] else " (extrapolated)")
    print("| %s | %d | %s, %d x %d | %d x %d | %d | %.4f | %.4f | %.2f | %s | %.0f |"
          % (r["model"], r["parameters"], r["data"], r["examples"], r["T"], r["batch"], r["T"],
             r["steps"], r["fwd_bwd_s"], r["per_step_s"], r["step_over_fwd_bwd"], full,
             r["full_item_s"] / r["fwd_bwd_s"]))
EOF
