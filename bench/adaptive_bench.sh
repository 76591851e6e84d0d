#!/bin/bash
# bench/adaptive_bench.sh - the adaptive policy against step order, in wall
# time (make bench).
#
# Runs tests/daemon_policy.sh BENCH_REPS times (default 3; each trains the
# toy induction run, then serves it under `order` and under `adaptive`, one
# node, one worker) and reads its `# figure` lines: per policy, the seconds
# from the first job started until the expensive item (`task`) has covered
# the known transition window at full density, and until the last job
# finished.  Prints the medians and the ratios adaptive / order (window:
# lower is sooner; total: the policy's overhead, goal at most 1.05), and
# the same measure counted in expensive jobs, which does not depend on the
# machine's load.  Table to stdout and build/bench/adaptive.md.  Needs
# `unshare -n` (root) like the tests; nothing passes or fails on timings.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
OUT=build/bench
mkdir -p "$OUT"
REPS=${BENCH_REPS:-3}
LOG=$OUT/adaptive.log
: >"$LOG"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for i in $(seq "$REPS"); do
    echo "adaptive_bench: repetition $i of $REPS" >&2
    unshare -n sh -c 'ip link set lo up && exec tests/daemon_policy.sh' >>"$LOG" 2>&1 ||
        echo "adaptive_bench: repetition $i failed (see $LOG)" >&2
done
python3 - "$LOG" "$LOAD0" "$REPS" <<'PY' | tee "$OUT/adaptive.md"
import re, statistics, sys
log = open(sys.argv[1]).read()
fig = {"order": {"window_s": [], "total_s": []}, "adaptive": {"window_s": [], "total_s": []}}
for pol, w, t in re.findall(r"# figure (order|adaptive) window_s=([0-9.]+) total_s=([0-9.]+)", log):
    fig[pol]["window_s"].append(float(w))
    fig[pol]["total_s"].append(float(t))
jobs = [tuple(int(x) for x in m) for m in
        re.findall(r"covered: order ([0-9]+), adaptive ([0-9]+), of ([0-9]+)", log)]
def med(v):
    return statistics.median(v) if v else float("nan")
print("### Adaptive policy vs step order (tests/daemon_policy.sh, medians)\n")
print("| measure | order | adaptive | adaptive ÷ order |")
print("|---|---|---|---|")
for k, name in (("window_s", "s until the transition window is covered"), ("total_s", "s in all")):
    o, a = med(fig["order"][k]), med(fig["adaptive"][k])
    print(f"| {name} | {o:.2f} | {a:.2f} | {a / o:.2f} |")
if jobs:
    o, a, n = med([j[0] for j in jobs]), med([j[1] for j in jobs]), jobs[0][2]
    print(f"| expensive jobs done when it is covered (of {n}) | {o:.0f} | {a:.0f} | {a / o:.2f} |")
with open("/proc/loadavg") as f:
    end = " ".join(f.read().split()[:3])
print(f"\n{len(fig['order']['total_s'])} of {sys.argv[3]} repetitions; load average at start {sys.argv[2]}, "
      f"at end {end}.")
PY
