#!/bin/bash
# bench/sae_bench.sh - the `sae` item's costs, against plain sgemm measured
# in the same run.
#
#   training   build/bench/bench_sae train: TopK SAE training at the
#              pythia-70m site's shape (d_in 512, d_sae 2048, k 32, batch
#              256, 65536 tokens), under the LD_PRELOAD shim
#              build/bench/blas_timer.so: tokens/s, the share of its time
#              inside sgemm, and its sgemm GFLOP/s
#   sgemm      build/bench/bench_sae sgemm: the five products of one step
#              as plain cblas_sgemm calls of the same shapes: GFLOP/s
#   item       `ckpt-worker analyze --items sae --artifacts DIR` on a
#              random pythia-70m-shaped checkpoint (ckpt-worker init) with
#              the default eval set: the item's seconds ("item done") and
#              the process's peak RSS (getrusage of the child)
# Medians of BENCH_REPS runs (default 3), BENCH_THREADS BLAS threads
# (default 2).  Nothing passes or fails on timings.  Markdown to stdout and
# build/bench/sae.md, raw JSON lines to build/bench/sae.jsonl.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
OUT=build/bench
W=build/bin/ckpt-worker
B=$OUT/bench_sae
SHIM=$OUT/blas_timer.so
REPS=${BENCH_REPS:-3}
THREADS=${BENCH_THREADS:-2}
JSONL=$OUT/sae.jsonl
TMP=$(mktemp -d /tmp/ckb-sae-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
for f in "$W" "$B" "$SHIM"; do
    [ -e "$f" ] || { echo "sae_bench: $f is missing; run 'make bench'" >&2; exit 1; }
done
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
: >"$JSONL"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
START=$SECONDS
"$W" init "$TMP/ck" --preset pythia-70m >/dev/null || { echo "sae_bench: init failed" >&2; exit 1; }
for r in $(seq "$REPS"); do
    echo "sae_bench: run $r/$REPS" >&2
    "$B" sgemm --threads "$THREADS" >>"$JSONL" || exit 1
    rm -f "$TMP/blas.jsonl"
    BLAS_TIMER_OUT=$TMP/blas.jsonl LD_PRELOAD=$PWD/$SHIM "$B" train --threads "$THREADS" >"$TMP/train" || exit 1
    python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); t["blas"]=json.loads(open(sys.argv[2]).read().splitlines()[-1]); print(json.dumps(t))' \
        "$TMP/train" "$TMP/blas.jsonl" >>"$JSONL"
    rm -rf "$TMP/art"
    python3 - "$W" "$THREADS" "$TMP/ck" "$TMP/art" >>"$JSONL" <<'PY' || exit 1
import json, re, resource, subprocess, sys
w, threads, ck, art = sys.argv[1:]
p = subprocess.run([w, "--threads", threads, "analyze", ck, "--items", "sae", "--artifacts", art],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if p.returncode != 0:
    sys.exit("sae_bench: analyze failed: " + p.stderr[-300:])
rec = {"kind": "item", "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
for line in p.stderr.splitlines():
    if 'msg="item done"' in line:
        rec["seconds"] = float(re.search(r"seconds=([0-9.]+)", line).group(1))
print(json.dumps(rec))
PY
done
note="$THREADS BLAS threads; load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg); run took $((SECONDS - START)) s."
python3 - "$JSONL" "$note" <<'PY' | tee "$OUT/sae.md"
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: st.median(xs) if xs else float("nan")
sg = [r for r in rows if r["kind"] == "sgemm"]
tr = [r for r in rows if r["kind"] == "train"]
it = [r for r in rows if r["kind"] == "item"]
plain = med([r["gflops"] for r in sg])
tps = med([r["tokens_per_s"] for r in tr])
share = med([r["blas"]["sgemm_s"] / r["seconds"] for r in tr])
rate = med([r["blas"]["sgemm_flop"] / r["blas"]["sgemm_s"] * 1e-9 for r in tr])
t = tr[0] if tr else {}
print("## SAE training and the `sae` item (medians of %d)\n" % len(tr))
print("| measure | value |\n|---|---|")
print("| training shape | d_in %s, d_sae %s, k %s, batch %s, %s tokens |" % (
    t.get("d_in"), t.get("d_sae"), t.get("k"), t.get("batch"), t.get("tokens")))
print("| SAE training | %.0f tokens/s |" % tps)
print("| share of training time in sgemm | %.1f %% |" % (100 * share))
print("| sgemm rate inside training | %.1f GFLOP/s |" % rate)
print("| plain sgemm, same shapes | %.1f GFLOP/s |" % plain)
print("| training sgemm / plain sgemm | %.2f |" % (rate / plain))
print("| `sae` item, pythia-70m shape, default eval set | %.1f s |" % med([r["seconds"] for r in it]))
print("| peak RSS of that `analyze` | %.0f MB |" % med([r["peak_rss_mb"] for r in it]))
print("\n" + sys.argv[2])
PY
