#!/bin/bash
# bench/train_bench.sh - training throughput against the forward of the same
# model, in the same run (make bench).
#
# build/bench/bench_train times, on random weights and tokens, a forward
# (logits), a forward+backward (loss and every gradient) and an AdamW step,
# each the median of BENCH_REPS (default 5) repetitions after a warm-up.
# The figure that matters is a training step's time over a forward's
# (goal: at most 3.5).  Shapes: pythia-14m and pythia-70m at 8 x 128 tokens,
# 1 and 2 BLAS threads.  JSON lines go to build/bench/train.jsonl, the table
# to stdout and build/bench/train.md.  Nothing passes or fails on timings.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
BIN=build/bench/bench_train
OUT=build/bench
[ -x "$BIN" ] || { echo "train_bench: $BIN is missing; run 'make bench'" >&2; exit 1; }
REPS=${BENCH_REPS:-5}
JSONL=$OUT/train.jsonl
: >"$JSONL"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for preset in pythia-14m pythia-70m; do
    for n in 1 2; do
        echo "train_bench: $preset 8x128, $n thread(s)" >&2
        "$BIN" --preset $preset --batch 8 --ctx 128 --threads $n --reps "$REPS" >>"$JSONL" ||
            echo "train_bench: $preset failed" >&2
    done
done
python3 - "$JSONL" "$LOAD0" <<'PY' | tee "$OUT/train.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("### Training step vs forward (bench_train, medians)\n")
print("| model | tokens | threads | forward tok/s | training tok/s | step ÷ forward (goal ≤ 3.5) |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['preset']} | {r['B']}x{r['T']} | {r['threads']} | {r['forward_tok_s']:.0f} | "
          f"{r['train_tok_s']:.0f} | {r['step_over_forward']:.2f} |")
with open("/proc/loadavg") as f:
    end = " ".join(f.read().split()[:3])
print(f"\nLoad average at start {sys.argv[2]}, at end {end}; repetitions: median of "
      f"{rows[0]['reps'] if rows else '?'}.")
PY
