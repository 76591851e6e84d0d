#!/bin/bash
# bench/adaptive_bench.sh - the adaptive policy against step order, in wall
# time (make bench).
#
# Runs tests/daemon_policy.sh BENCH_REPS times (default 3; each trains the
# toy induction run, then serves it under `order` and under `adaptive`, one
# node, one worker; which policy is served first alternates, since the
# second finds a fuller database) and reads its `# figure` lines: per
# policy, the seconds from the first job started until the expensive item
# has covered the known transition window at full density, and until the
# last job finished.  Prints the medians and the ratios adaptive / order
# (window: lower is sooner; total: the policy's overhead, goal at most
# 1.05), and the same measure counted in expensive jobs, which does not
# depend on the machine's load; and the CPU seconds of the daemon and its
# workers (time(1) around each serve), which a busy machine disturbs less
# than wall time.
#
# Two configurations:
#   toy    items weights,heads,task: `task`, the expensive item, takes
#          ~75 ms a checkpoint, about three times a claim's fixed cost
#          (two worker execs, the store, the claim): the second claim
#          adaptive makes of most checkpoints shows;
#   heavy  (BENCH_HEAVY_REPS, default 2) items
#          weights,heads,task,llc: `llc`, the expensive item, takes
#          seconds a checkpoint, as the expensive items of a real model
#          take minutes; the fixed cost is amortised.
# BENCH_REPS=0 BENCH_HEAVY_REPS=0 prints the tables of the logs left in
# build/bench.  Tables to stdout and build/bench/adaptive.md.  Needs `unshare -n` (root)
# like the tests; nothing passes or fails on timings.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
OUT=build/bench
mkdir -p "$OUT"
REPS=${BENCH_REPS:-3}
HEAVY_REPS=${BENCH_HEAVY_REPS:-2}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
run() { # run NAME REPS HEAVY
    local log=$OUT/adaptive-$1.log first
    [ "$2" -gt 0 ] || return 0 # 0 repetitions: the table from the logs there are
    : >"$log"
    for i in $(seq "$2"); do
        [ $((i % 2)) = 1 ] && first=order || first=adaptive
        echo "adaptive_bench: $1, repetition $i of $2 ($first first)" >&2
        POLICY_HEAVY=$3 POLICY_FIRST=$first \
            unshare -n sh -c 'ip link set lo up && exec tests/daemon_policy.sh' >>"$log" 2>&1 ||
            echo "adaptive_bench: $1, repetition $i failed (see $log)" >&2
    done
}
run toy "$REPS" 0
run heavy "$HEAVY_REPS" 1
python3 - "$OUT" "$LOAD0" "$REPS" "$HEAVY_REPS" <<'PY' | tee "$OUT/adaptive.md"
import os, re, statistics, sys
out, load0, reps = sys.argv[1], sys.argv[2], {"toy": sys.argv[3], "heavy": sys.argv[4]}
def med(v):
    return statistics.median(v) if v else float("nan")
print("### Adaptive policy vs step order (tests/daemon_policy.sh, medians)\n")
for conf, what in (("toy", "weights,heads + task (~75 ms a checkpoint)"),
                   ("heavy", "weights,heads,task + llc (seconds a checkpoint)")):
    path = f"{out}/adaptive-{conf}.log"
    if not os.path.exists(path):
        continue
    log = open(path).read()
    fig = {"order": {"window_s": [], "total_s": []}, "adaptive": {"window_s": [], "total_s": []}}
    for pol, w, t in re.findall(r"# figure (order|adaptive) window_s=([0-9.]+) total_s=([0-9.]+)", log):
        fig[pol]["window_s"].append(float(w))
        fig[pol]["total_s"].append(float(t))
    for pol in ("order", "adaptive"):
        fig[pol]["cpu_s"] = [float(c) for c in re.findall(rf"# figure {pol} cpu_s=([0-9.]+)", log)]
    ratios = {k: [a / o for a, o in zip(fig["adaptive"][k], fig["order"][k])] for k in ("window_s", "total_s", "cpu_s")}
    jobs = [tuple(int(x) for x in m) for m in
            re.findall(r"covered: order ([0-9]+), adaptive ([0-9]+), of ([0-9]+)", log)]
    n = len(fig["order"]["total_s"])
    print(f"**{conf}**: {what}; {n} repetitions\n")
    print("| measure | order | adaptive | adaptive ÷ order (median of the runs' ratios) |")
    print("|---|---|---|---|")
    for k, name in (("window_s", "s until the transition window is covered"), ("total_s", "s in all"),
                    ("cpu_s", "CPU s of the daemon and its workers, in all")):
        if not fig["order"][k]:
            continue
        o, a = med(fig["order"][k]), med(fig["adaptive"][k])
        each = ", ".join(f"{r:.2f}" for r in ratios[k])
        print(f"| {name} | {o:.2f} | {a:.2f} | {med(ratios[k]):.2f} ({each}) |")
    if jobs:
        o, a, nt = med([j[0] for j in jobs]), med([j[1] for j in jobs]), jobs[0][2]
        print(f"| expensive jobs done when it is covered (of {nt}) | {o:.0f} | {a:.0f} | {a / o:.2f} |")
    print()
with open("/proc/loadavg") as f:
    end = " ".join(f.read().split()[:3])
print(f"Load average at start {load0}, at end {end}.")
PY
