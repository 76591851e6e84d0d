#!/bin/bash
# transitions_real.sh - the detector on real training series: the subset
# of the labelled benchmark (bench/data/transitions, seed 1 of every kind
# and kernel family; bench/transitions_realbench.py eval --subset) run
# through build/bench/transitions_series.  The labels come from the runs'
# dense training logs (the definitions are in bench/transitions_realbench.py),
# never from a detector.  Asserted, for level-v2:
#   - at least 95% of the labelled transitions of at least 5x their
#     series' checkpoint-to-checkpoint scatter are found (the label's step
#     inside the transition's window, give or take a checkpoint, same
#     sign), and at least 90% of those found peak within one checkpoint of
#     it;
#   - no transition in a constant series, at most one per 100 noise-only
#     series;
#   - no checkpoint the dense log shows to be a one-checkpoint spike lies
#     inside a transition that the dense log does not confirm, and at least
#     90% of those spikes are reported as spikes.
# The numbers, with the former ramp-v1 beside them, are printed.
set -u
cd "$(dirname "$0")/.." || exit 1
T=$(mktemp -d /tmp/ckt-XXXXXX) || exit 1
trap 'rm -rf "$T"' EXIT
if [ ! -x build/bench/transitions_series ]; then
    echo "FAIL: build/bench/transitions_series is missing (make check builds it)"
    exit 1
fi
if ! ls bench/data/transitions/*.json.gz >/dev/null 2>&1; then
    echo "FAIL: no benchmark data in bench/data/transitions"
    exit 1
fi
python3 bench/transitions_realbench.py eval --subset --json "$T/eval.json" >"$T/table.md" 2>"$T/err" || {
    echo "FAIL: transitions_realbench.py eval: $(cat "$T/err")"
    exit 1
}
cat "$T/table.md"
python3 - "$T/eval.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
T = d["tallies"]
fails = 0


def tot(method, pred=lambda k: True):
    out = {}
    for key, v in T.items():
        kind, core, m = key.split("|")
        if m == method and pred(kind):
            for x, y in v.items():
                if not isinstance(y, list):
                    out[x] = out.get(x, 0) + y
    return out


def check(ok, msg):
    global fails
    print(("ok: " if ok else "FAIL: ") + msg)
    fails += not ok


a = tot("level-v2")
check(a["goal"] > 0 and a["found"] >= 0.95 * a["goal"],
      "recall of transitions >= 5x scatter: %d of %d (goal 0.95)" % (a["found"], a["goal"]))
check(a["found"] > 0 and a["peak"] >= 0.9 * a["found"],
      "peak within 1 checkpoint: %d of %d found" % (a["peak"], a["found"]))
c = tot("level-v2", lambda k: k == "constant")
check(c.get("series", 0) > 0 and c.get("false", 0) == 0,
      "constant series: %d transitions in %d series" % (c.get("false", 0), c.get("series", 0)))
nz = tot("level-v2", lambda k: k == "noise-only")
check(nz.get("series", 0) >= 20 and nz.get("false", 0) <= nz.get("series", 0) / 100.0,
      "noise-only series: %d false in %d" % (nz.get("false", 0), nz.get("series", 0)))
check(a["spike_as_tr"] == 0, "labelled spikes inside a false transition: %d" % a["spike_as_tr"])
check(a["spikes"] > 0 and a["spike_as_spike"] >= 0.9 * a["spikes"],
      "labelled spikes reported as spikes: %d of %d" % (a["spike_as_spike"], a["spikes"]))
print("# transitions_real: %d failed" % fails)
sys.exit(1 if fails else 0)
PY
