#!/bin/bash
# bench/patching_bench.sh - what the patching items cost per checkpoint, in
# forward-equivalents, against a plain forward measured in the same run.
#
# For the pythia-70m shape (a random F32 checkpoint from `ckpt-worker init`;
# BENCH_PATCH_PRESETS adds others) and two pair sets, the built-in
# induction pairs (8 x 32 tokens, idx 0) and the shipped pairs/ioi.json
# (32 x 14; BENCH_PATCH_PAIRS names others), `ckpt-worker analyze
# --items patching,attribution,path_patching` runs once per repetition; each
# item logs, per set, its seconds and the forward FLOPs it spent.  Per
# (preset, set, item):
#   components    what it measures: patching 2 * n_layers * (T + 2 n_heads)
#                 (both directions; residual per position, heads at every
#                 position and at the positions of interest); attribution the
#                 same, estimated; path_patching the paths of its top heads
#                 (sender -> later receiver, sender -> logits; both directions)
#   fwd_equiv     forward FLOPs spent over those of one full forward of the
#                 set's prompts (B x T, with the unembedding; patched runs
#                 skip it and start at the patched layer)
#   seconds       the set's time inside the item
#   x_forward     seconds / the time of one full forward of B x T prompts
#                 (bench_engine forward, same run, same threads): the cost in
#                 forward-equivalents as the clock sees it
#   per_comp      x_forward / components
# Expected: attribution ~ 2 x (one forward + one backward), one per
# direction; exact patching about one forward per component resumed at the
# patched layer (half a forward on average), fewer where the prompts agree
# (causal attention: positions before the first corrupted token are equal
# in both runs and are not run).  Medians of BENCH_REPS runs (default 3);
# nothing passes or fails on timings.  Tables to stdout and
# build/bench/patching.md, raw JSON lines to build/bench/patching.jsonl.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1

OUT=build/bench
W=build/bin/ckpt-worker
ENG=$OUT/bench_engine
REPS=${BENCH_REPS:-3}
THREADS=${BENCH_THREADS:-2}
PRESETS=${BENCH_PATCH_PRESETS:-pythia-70m}
PAIRS=${BENCH_PATCH_PAIRS:-pairs/ioi.json}
JSONL=$OUT/patching.jsonl
MD=$OUT/patching.md
TMP=$(mktemp -d /tmp/ckbp-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
for f in "$W" "$ENG"; do
    [ -e "$f" ] || { echo "patching_bench: $f is missing; run 'make bench'" >&2; exit 1; }
done
mkdir -p "$OUT"
: >"$JSONL"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
for preset in $PRESETS; do
    ck=$TMP/$preset
    "$W" init "$ck" --preset "$preset" >/dev/null || { echo "patching_bench: init $preset failed" >&2; exit 1; }
    shapes="8 32"
    for p in $PAIRS; do
        shapes="$shapes,$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(len(d["pairs"]), len(d["pairs"][0]["clean"]))' "$p")"
    done
    IFS=, read -r -a SHAPES <<<"$shapes"
    for shape in "${SHAPES[@]}"; do
        set -- $shape
        for r in $(seq "$REPS"); do
            "$ENG" forward --preset "$preset" --batch "$1" --ctx "$2" --threads "$THREADS" --reps 1 |
                sed "s/^/{\"preset\":\"$preset\",\"kind\":\"forward\",\"line\":/; s/\$/}/" >>"$JSONL"
        done
    done
    for r in $(seq "$REPS"); do
        echo "patching_bench: $preset ($r/$REPS)" >&2
        rm -rf "$TMP/art"
        if ! "$W" --threads "$THREADS" analyze "$ck" --items patching,attribution,path_patching \
            $(for p in $PAIRS; do printf -- '--pairs %s ' "$p"; done) --artifacts "$TMP/art" \
            >/dev/null 2>"$TMP/log"; then
            echo "patching_bench: $preset failed: $(tail -n 2 "$TMP/log")" >&2
            continue
        fi
        grep -E 'msg="(patching|attribution|path patching) cost"' "$TMP/log" |
            python3 -c 'import json, sys
for l in sys.stdin:
    print(json.dumps({"preset": sys.argv[1], "kind": "cost", "log": l.strip()}))' "$preset" >>"$JSONL"
    done
done
python3 - "$JSONL" "$MD" "$REPS" "$THREADS" "$LOAD0" <<'EOF'
import json, re, statistics, sys
jsonl, md, reps, threads, load0 = sys.argv[1:6]
fwd, cost = {}, {}
for line in open(jsonl):
    d = json.loads(line)
    if d["kind"] == "forward":
        f = d["line"]
        fwd.setdefault((d["preset"], f["B"], f["T"]), []).append(f["seconds"])
    else:
        log = d["log"]
        kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', log))
        item = re.search(r'msg="(\w+)', log).group(1)
        item = {"path": "path_patching"}.get(item, item)
        key = (d["preset"], kv["name"].strip('"'), item, int(kv["pairs"]), int(kv["T"]))
        c = cost.setdefault(key, {"s": [], "fe": [], "kv": kv})
        c["s"].append(float(kv["seconds"]))
        c["fe"].append(float(kv["forward_equivalents"]))
out = ["# Patching items: cost per checkpoint", "",
       "threads %s, medians of %s runs, load average at start %s" % (threads, reps, load0), "",
       "| preset | set | B x T | item | components | fwd_equiv (FLOPs) | seconds | forward s | x_forward | per component |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for (preset, name, item, B, T), c in sorted(cost.items(), key=lambda x: (x[0][0], x[0][1], x[0][2])):
    f = statistics.median(fwd.get((preset, B, T), [float("nan")]))
    s = statistics.median(c["s"])
    kv = c["kv"]
    comp = int(kv["components"]) if "components" in kv else None
    xf = s / f
    out.append("| %s | %s | %d x %d | %s | %s | %.1f | %.3f | %.4f | %.1f | %s |" % (
        preset, name, B, T, item, comp if comp else "all (estimates)",
        statistics.median(c["fe"]), s, f, xf, "%.2f" % (xf / comp) if comp else "-"))
text = "\n".join(out) + "\n"
print(text)
open(md, "w").write(text)
EOF
