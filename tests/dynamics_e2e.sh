#!/bin/bash
# dynamics_e2e.sh - the whole path on real training dynamics: both toy runs
# trained with their defaults (`ckpt-worker train`, the same runs `make
# demo` shows), served in the hub layout by scripts/hub-serve (nginx), added
# with `--schedule refs` and analysed by `ckptd serve --until-idle`; then the
# transitions ckptd detected are compared with what the training logs say.
#
# Ground truth comes from train_log.jsonl (written by the trainer, not by
# ckptd): for modular addition the two checkpoints between which test_acc
# first exceeds 0.5; for induction the two between which icl_loss first
# falls below half-way from its plateau (the largest value after step 16)
# to its final value.  Tolerance: the transition's peak step is one of those
# two checkpoints or the checkpoint on either side (one checkpoint interval:
# 100 steps for modular addition, 20 for induction, on their default
# schedules).
# Asserts:
#   - task.json reached the workers through the fetch: the task item ran on
#     every checkpoint of both runs;
#   - grok: a test_acc transition (rising) at the crossing; test_loss moves
#     with it (a falling transition whose window overlaps it, same group);
#     train_acc's rise ends before test_acc's starts (memorise, then grok);
#   - induction: an icl_loss transition (falling) at the crossing; the heads
#     item's induction score of a layer-1 head rises in a window that
#     overlaps it;
#   - detection is idempotent: `ckptd detect` over the run again leaves the
#     same rows.
# PostgreSQL port 54405, HTTP ports 18610-18611.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init dynamics_e2e 54405
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate

# ---- the toy runs (both at once, one thread each) ----
for task in modular-addition induction; do
    "$WORKER" --threads 1 train --task $task --out "$T/toy/$task" --log-every 0 \
        >"$T/train-$task.out" 2>&1 &
    eval "TRAIN_${task//-/_}=$!"
done
wait "$TRAIN_modular_addition" || { dl_fail "training modular-addition"; cat "$T/train-modular-addition.out"; }
wait "$TRAIN_induction" || { dl_fail "training induction"; cat "$T/train-induction.out"; }
[ "$DL_FAILED" = 0 ] || dl_finish

hub_start H "$T/hub" --root "$T/toy/modular-addition" --repo toy/grok \
    --also "toy/induction=$T/toy/induction" --port 18610 --cdn-port 18611 || exit 1
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

python3 - "$T" <<'PY' >"$T/check.out" 2>&1
import json, sys
T = sys.argv[1]
def log(task):
    return [json.loads(l) for l in open(f"{T}/toy/{task}/train_log.jsonl")]
def bracket(rows, key, pred):
    steps = [r["step"] for r in rows]
    i = next(i for i, r in enumerate(rows) if pred(r[key]))
    # one checkpoint either side of the two that bracket the crossing
    return steps[max(i - 2, 0)], steps[min(i + 1, len(steps) - 1)], steps[i - 1], steps[i]
def pick(trs, metric, sign, layer=None):
    c = [t for t in trs if t["metric"] == metric and (t["magnitude"] > 0) == (sign > 0)
         and (layer is None or t["layer"] == layer)]
    return max(c, key=lambda t: t["score"]) if c else None
def overlap(a, b):
    return a["start_step"] <= b["end_step"] and b["start_step"] <= a["end_step"]
def say(ok, msg):
    print(("ok: " if ok else "FAIL: ") + msg)

grok = json.load(open(f"{T}/grok.json"))
m = log("modular-addition")
lo, hi, a, b = bracket(m, "test_acc", lambda v: v > 0.5)
t = pick(grok, "test_acc", +1)
say(t is not None and lo <= t["peak_step"] <= hi,
    f"grok: test_acc rises at {t and t['peak_step']} (window {t and t['start_step']}-{t and t['end_step']}, "
    f"score {t and round(t['score'], 1)}); the log crosses 0.5 between {a} and {b}, tolerance {lo}-{hi}")
tl = pick(grok, "test_loss", -1)
say(t is not None and tl is not None and overlap(t, tl) and tl["group"] == t["group"],
    f"grok: test_loss falls with it (peak {tl and tl['peak_step']}, group {tl and tl['group']} vs {t and t['group']})")
ta = pick(grok, "train_acc", +1)
say(t is not None and ta is not None and ta["end_step"] < t["start_step"],
    f"grok: train_acc rises first (ends {ta and ta['end_step']}, test_acc starts {t and t['start_step']})")

ind = json.load(open(f"{T}/ind.json"))
d = [r for r in log("induction")]
top = max(r["icl_loss"] for r in d if r["step"] >= 16)
half = (top + d[-1]["icl_loss"]) / 2
lo, hi, a, b = bracket([r for r in d if r["step"] >= 16], "icl_loss", lambda v: v < half)
t = pick(ind, "icl_loss", -1)
say(t is not None and lo <= t["peak_step"] <= hi,
    f"induction: icl_loss falls at {t and t['peak_step']} (window {t and t['start_step']}-{t and t['end_step']}); "
    f"the log crosses half-way ({half:.2f}) between {a} and {b}, tolerance {lo}-{hi}")
h = pick(ind, "induction_score", +1, layer=1)
say(t is not None and h is not None and overlap(t, h),
    f"induction: layer-1 head {h and h['head']} induction score rises at {h and h['peak_step']} "
    f"(window {h and h['start_step']}-{h and h['end_step']}), overlapping icl_loss's")
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
