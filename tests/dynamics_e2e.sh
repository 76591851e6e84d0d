#!/bin/bash
# dynamics_e2e.sh - the whole path on real training dynamics: both toy runs
# trained with their defaults (`ckpt-worker train`, the same runs `make
# demo` shows) under one OpenBLAS kernel family (DYN_CORETYPE, default
# Haswell; tests/dynamics_e2e_sandybridge.sh runs it under Sandybridge, so
# CI sees two families' numbers), served in the hub layout by
# scripts/hub-serve (nginx), added with `--schedule refs` and analysed by
# `ckptd serve --until-idle`; then the transitions ckptd detected are
# compared with what the dense training logs say.
#
# Ground truth: both runs are trained with --eval-every 10, and the labels
# come from bench/transitions_realbench.py's definitions (truth(): the
# dense log's running median of 5; memorisation, grokking and the
# induction-head loss drop, each at the step where the smoothed curve
# passes half-way between its two levels).  Tolerances, the benchmark's:
# a transition matches a label of its sign when the label's step lies in
# [start - 1 checkpoint, end + 1 checkpoint], and its peak is within one
# checkpoint of it.  Nothing here depends on a trajectory detail that
# changes with the kernels (the step of a loss spike, a value at the end).
# Asserts:
#   - the kernel family asked for is the one OpenBLAS uses;
#   - task.json reached the workers through the fetch: the task item ran on
#     every checkpoint of both runs;
#   - grok: test_acc's rise and test_loss's fall match their labels, in
#     one group; train_acc's rise (memorisation) matches its label and ends
#     before test_acc's starts;
#   - induction: icl_loss's fall matches its label; the heads item's
#     induction score of a layer-1 head rises in a window overlapping it;
#   - no transition peaks at a checkpoint the dense log shows to be a
#     one-checkpoint spike;
#   - detection is idempotent: `ckptd detect` over the run again leaves the
#     same rows.
# PostgreSQL port 54405, HTTP ports 18610-18611 (DYN_PG_PORT, DYN_HTTP_PORT
# and the one after it: tests/dynamics_e2e_sandybridge.sh runs beside it).
. tests/lib/daemon.sh
. tests/lib/hub.sh
CORE=${DYN_CORETYPE:-Haswell}
dl_init "dynamics_e2e_$CORE" "${DYN_PG_PORT:-54405}"
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
export OPENBLAS_CORETYPE=$CORE
dl_eq "OpenBLAS runs the $CORE kernels" "$CORE" \
    "$("$WORKER" --log-level debug battery 2>&1 >/dev/null | sed -n 's/.*msg="blas ready" core=\([A-Za-z0-9]*\).*/\1/p')"

# ---- the toy runs (both at once, one thread each) ----
for task in modular-addition induction; do
    "$WORKER" --threads 1 train --task $task --out "$T/toy/$task" --log-every 0 --eval-every 10 \
        >"$T/train-$task.out" 2>&1 &
    eval "TRAIN_${task//-/_}=$!"
done
wait "$TRAIN_modular_addition" || { dl_fail "training modular-addition"; cat "$T/train-modular-addition.out"; }
wait "$TRAIN_induction" || { dl_fail "training induction"; cat "$T/train-induction.out"; }
[ "$DL_FAILED" = 0 ] || dl_finish

hub_start H "$T/hub" --root "$T/toy/modular-addition" --repo toy/grok \
    --also "toy/induction=$T/toy/induction" --port "${DYN_HTTP_PORT:-18610}" --cdn-port $((${DYN_HTTP_PORT:-18610} + 1)) || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_HOME=$T/hf-none
unset HF_TOKEN HF_HUB_OFFLINE
dl_config "$T/cfg.json" '"prefetch": 1'
"$CKPTD" --config "$T/cfg.json" add-run grok --source hf://toy/grok --schedule refs \
    --items task,weights >/dev/null 2>"$T/add1.err" || { dl_fail "add-run grok"; cat "$T/add1.err"; }
"$CKPTD" --config "$T/cfg.json" add-run induction --source hf://toy/induction --schedule refs \
    --items task,heads >/dev/null 2>"$T/add2.err" || { dl_fail "add-run induction"; cat "$T/add2.err"; }
dl_serve S --config "$T/cfg.json" serve --workers 2 --until-idle --node e2e
dl_wait_exit "$S_PID" 400
dl_eq "daemon exit" 0 "$DL_STATUS"

NG=$(ls -d "$T/toy/modular-addition"/step* | wc -l)
NI=$(ls -d "$T/toy/induction"/step* | wc -l)
dl_eq "grok: task item on every checkpoint" "$NG" \
    "$(dl_sql "SELECT count(DISTINCT step) FROM series WHERE run = 'grok' AND metric = 'test_acc'")"
dl_eq "induction: task item on every checkpoint" "$NI" \
    "$(dl_sql "SELECT count(DISTINCT step) FROM series WHERE run = 'induction' AND metric = 'icl_loss'")"
dl_eq "no dead jobs" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE state <> 'done'")"

# ---- ground truth from the training logs, transitions from ckptd ----
"$CKPTD" --config "$T/cfg.json" transitions grok --json >"$T/grok.json" 2>"$T/tr1.err" ||
    dl_fail "ckptd transitions grok: $(cat "$T/tr1.err")"
"$CKPTD" --config "$T/cfg.json" transitions induction --json >"$T/ind.json" 2>"$T/tr2.err" ||
    dl_fail "ckptd transitions induction: $(cat "$T/tr2.err")"
dl_sql "SELECT count(*) FROM transitions" >"$T/count.before"

python3 - "$T" "$ROOT" <<'PY' >"$T/check.out" 2>&1
import json, sys
T, ROOT = sys.argv[1], sys.argv[2]
sys.path.insert(0, ROOT + "/bench")
import transitions_realbench as rb


def run(task, kind):
    """the run as the benchmark stores it: dense log and checkpoint series"""
    dense = [json.loads(l) for l in open(f"{T}/toy/{task}/eval_log.jsonl")]
    ck = [json.loads(l) for l in open(f"{T}/toy/{task}/train_log.jsonl")]
    ms = [k for k in ck[0] if k != "step"]
    return {"kind": kind, "args": [], "dense": {"steps": [r["step"] for r in dense], **{m: [r[m] for r in dense] for m in ms}},
            "series": [{"metric": m, "steps": [r["step"] for r in ck], "values": [r[m] for r in ck]} for m in ms]}


def say(ok, msg):
    print(("ok: " if ok else "FAIL: ") + msg)


def check(r, trs, metric, name):
    """the label of metric (and name), the best matching transition, and whether its peak is within 1 checkpoint"""
    dn, labels = rb.truth(r)
    lbs = [lb for lb in labels if lb["metric"] == metric and lb["name"].startswith(name)]
    steps = r["series"][0]["steps"]
    if not lbs:
        say(False, f"{metric}: the dense log has no {name} label")
        return None, None
    lb = max(lbs, key=lambda x: abs(x["after"] - x["before"]))
    idx = {s: i for i, s in enumerate(steps)}
    best = None
    for t in trs:
        if t["metric"] != metric or t["kind"] != "transition" or (t["magnitude"] > 0) != lb["up"]:
            continue
        lo = steps[max(0, idx[t["start_step"]] - 1)]
        hi = steps[min(len(steps) - 1, idx[t["end_step"]] + 1)]
        if lo <= lb["t"] <= hi:
            d = abs(idx[t["peak_step"]] - rb.index_of(steps, lb["t"]))
            if best is None or d < best[1]:
                best = (t, d)
    t = best and best[0]
    say(best is not None and best[1] <= 1.0,
        f"{name}: {metric} {'rises' if lb['up'] else 'falls'} {lb['before']:.3g} -> {lb['after']:.3g}, half-way at "
        f"step {lb['t']} in the dense log; ckptd: "
        + (f"{t['level_before']:.3g} -> {t['level_after']:.3g}, steps {t['start_step']}-{t['end_step']}, peak "
           f"{t['peak_step']} ({best[1]:.1f} checkpoints off), p {t['p_value']:.1g}" if t else "none matching"))
    return lb, t


def no_spike_peaks(r, trs, run_name):
    dn, _ = rb.truth(r)
    bad = []
    for s in r["series"]:
        scat = rb.scatter_before(s["steps"], s["values"], s["steps"][-1] + 1)
        for sp in rb.spike_labels(dn, s["metric"], s["steps"], s["values"], scat):
            bad += [(s["metric"], sp) for t in trs
                    if t["metric"] == s["metric"] and t["kind"] == "transition" and t["peak_step"] == sp]
    say(not bad, f"{run_name}: no transition peaks at a one-checkpoint spike of the dense log {bad or ''}")


grok = json.load(open(f"{T}/grok.json"))
g = run("modular-addition", "grok-spiky")
_, ta = check(g, grok, "test_acc", "grokking")
_, tl = check(g, grok, "test_loss", "grokking")
say(ta is not None and tl is not None and ta["group"] == tl["group"],
    f"grok: test_acc and test_loss in one group ({ta and ta['group']}, {tl and tl['group']}; "
    f"{ta and ta['group_metrics']} metrics, group score {ta and round(ta['group_score'], 1)})")
_, tm = check(g, grok, "train_acc", "memorisation")
say(tm is not None and ta is not None and tm["end_step"] <= ta["start_step"],
    f"grok: memorised (train_acc ends {tm and tm['end_step']}) before test_acc starts ({ta and ta['start_step']})")
no_spike_peaks(g, grok, "grok")

ind = json.load(open(f"{T}/ind.json"))
i = run("induction", "induction")
_, ti = check(i, ind, "icl_loss", "induction")
# some layer-1 head's induction score rises with the in-context loss's fall
# (which head forms first, and whether another rises earlier, varies)
h = [t for t in ind if t["metric"] == "induction_score" and t["layer"] == 1 and t["kind"] == "transition"
     and t["magnitude"] > 0]
hov = [t for t in h if ti is not None and t["start_step"] <= ti["end_step"] and ti["start_step"] <= t["end_step"]]
hb = max(hov or h, key=lambda t: t["score"]) if h else None
say(bool(hov),
    f"induction: layer-1 head {hb and hb['head']} induction score rises at {hb and hb['peak_step']} "
    f"(window {hb and hb['start_step']}-{hb and hb['end_step']}), overlapping icl_loss's "
    f"({len(hov)} of {len(h)} rising layer-1 heads' transitions overlap)")
no_spike_peaks(i, ind, "induction")
PY
cat "$T/check.out"
DL_PASSED=$((DL_PASSED + $(grep -c '^ok:' "$T/check.out")))
DL_FAILED=$((DL_FAILED + $(grep -c '^FAIL:' "$T/check.out")))
grep -q '^ok:\|^FAIL:' "$T/check.out" || dl_fail "the comparison did not run"

"$CKPTD" --config "$T/cfg.json" detect grok >/dev/null 2>&1 || dl_fail "ckptd detect grok"
"$CKPTD" --config "$T/cfg.json" detect induction >/dev/null 2>&1 || dl_fail "ckptd detect induction"
dl_eq "re-detection leaves the same number of transitions" "$(cat "$T/count.before")" \
    "$(dl_sql "SELECT count(*) FROM transitions")"
dl_finish
