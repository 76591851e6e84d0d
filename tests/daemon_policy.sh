#!/bin/bash
# daemon_policy.sh - compute where the change is (daemon/work/policy.h):
# `add-run --policy adaptive` against step order on a toy run with a known
# transition (PostgreSQL port 54465).
#
# One induction run is trained (600 steps, a checkpoint every 15: 46
# checkpoints); its transition is known from the trainer's log: the
# checkpoints where icl_loss is between 75% and 25% of the way from its
# plateau (the largest value after step 16) to its final value, and one
# checkpoint either side.  It is added twice with items weights,heads,task
# (the cost model makes `task`, which evaluates the induction sequences,
# the expensive one, and the heads item's induction score a cheap signal of
# the same change): `order` then `adaptive` (POLICY_FIRST=adaptive: the
# other way round), each served alone by one node with one worker and the
# daemon's default prefetch (one checkpoint claimed ahead of the worker;
# POLICY_PREFETCH=0 turns it off), so the claim order is the order work is
# done in.
# Asserts:
#   - the plan: cheap [weights,heads], expensive [task], skeleton every 8;
#     the dense windows, planned when the first pass ended, cover the
#     known transition;
#   - the phases in order (adaptive): the first pass (every cheap job, and
#     on the skeleton, every 8th checkpoint and the last, the expensive one
#     in the same claim) finished before anything else was claimed (the
#     later phases are held until the plan: prefetch does not take one
#     early), the dense windows' claimed before the rest;
#   - each item once per checkpoint, in one attempt; one claim per
#     skeleton checkpoint and two per other one under adaptive, one per
#     checkpoint under order;
#   - detection: the first pass's series examined once, when it ended (one
#     pass over the run, none per claim before the plan), then each later
#     claim's;
#   - the measure the issue asks for, counted in expensive jobs: adaptive
#     covers the transition window at full density after fewer of them than
#     step order does (and after no more than the skeleton, the dense
#     budget and the window);
#   - the same work in the end: every job done, the same rows and the same
#     transitions from both; each checkpoint's files recorded once, not
#     again when its second claim stages it;
#   - `ckptd status` shows the policy and its phase, before and after;
#   - `--policy` with an unknown name is refused.
# Wall times (to the window covered, in all) and the CPU seconds of each
# serve (time(1): the daemon and its workers) are printed as `# figure`
# lines, not asserted: bench/adaptive_bench.sh takes their medians.
. tests/lib/daemon.sh
# POLICY_HEAVY=1 (bench/adaptive_bench.sh) adds `llc`, seconds a checkpoint
# on this model, far more than a claim's fixed cost: the expensive item,
# with weights, heads and task the cheap ones.
if [ "${POLICY_HEAVY:-0}" = 1 ]; then
    ITEMS=weights,heads,task,llc CHEAP=weights,heads,task EXP=llc
else
    ITEMS=weights,heads,task CHEAP=weights,heads EXP=task
fi
NITEMS=$(echo "$ITEMS" | tr , '\n' | wc -l)
dl_init policy 54465
dl_migrate
C=("$CKPTD" --config "$T/cfg.json")
dl_config "$T/cfg.json" '"workers": 1' "\"prefetch\": ${POLICY_PREFETCH:-1}"

"$WORKER" --threads 1 train --task induction --steps 600 --ckpt-every 15 --seed 1 --out "$T/ind" \
    --log-every 0 >"$T/train.out" 2>&1 || { dl_fail "training"; tail "$T/train.out"; dl_finish; }
S=$(ls "$T/ind" | sed -n 's/^step\([0-9]*\)$/\1/p' | sort -n | paste -sd,)
read -r WLO WHI <<<"$(/usr/bin/python3 - "$T/ind/train_log.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
plateau = max(r["icl_loss"] for r in rows if r["step"] > 16)
final = rows[-1]["icl_loss"]
inside = [i for i, r in enumerate(rows)
          if r["step"] > 16 and final + 0.25 * (plateau - final) <= r["icl_loss"] <= final + 0.75 * (plateau - final)]
lo, hi = max(min(inside) - 1, 0), min(max(inside) + 1, len(rows) - 1)
print(rows[lo]["step"], rows[hi]["step"])
EOF
)"
echo "# the known transition: icl_loss falls over steps $WLO..$WHI (training log)"

"${C[@]}" add-run r --source "file://$T/ind/step{step}" --schedule "$S" --items "$ITEMS" \
    --policy sideways >"$T/bad.out" 2>&1
dl_eq "an unknown policy: usage exit" 2 $?
dl_grep "the refusal names it" "$T/bad.out" "order or adaptive, not 'sideways'"

# POLICY_FIRST=adaptive serves the adaptive run first (the bench alternates:
# the second run finds a fuller database)
FIRST=${POLICY_FIRST:-order}
[ "$FIRST" = adaptive ] && RUNS="adaptive order" || RUNS="order adaptive"
for pol in $RUNS; do
    "${C[@]}" add-run $pol --source "file://$T/ind/step{step}" --schedule "$S" --items "$ITEMS" \
        --policy $pol >"$T/add-$pol.out" 2>&1 || { dl_fail "add-run $pol"; cat "$T/add-$pol.out"; }
    [ $pol = adaptive ] && "${C[@]}" status adaptive >"$T/status-before.out" 2>&1
    # under time(1): the CPU seconds of the daemon and its workers
    /usr/bin/time -o "$T/time-$pol" -f "%U %S" "$CKPTD" --config "$T/cfg.json" serve --until-idle \
        >"$T/S$pol.out" 2>"$T/S$pol.log" &
    spid=$!
    DL_DAEMONS="$DL_DAEMONS $spid"
    dl_wait_exit "$spid" 900
    dl_eq "$pol: serve exit" 0 "$DL_STATUS"
done
dl_eq "every job done" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE state <> 'done'")"
dl_grep "status before: the phase" "$T/status-before.out" \
    "adaptive: policy adaptive, phase first pass: cheap \[$CHEAP\] on 45 checkpoints \(45 left\), with skeleton \[$EXP\] on 7 of them \(7 left\); dense planned when the first pass ends; rest 38 \(38 left\)"
"${C[@]}" status adaptive >"$T/status-after.out" 2>&1
dl_grep "status after: done" "$T/status-after.out" \
    "adaptive: policy adaptive, phase done: cheap \[$CHEAP\] on 45 checkpoints \(0 left\), with skeleton \[$EXP\] on 7 of them \(0 left\); dense [0-9]+ checkpoints in [0-9., ]+ \(0 left\); rest [0-9]+ \(0 left\)"

dl_eq "the plan" "{$CHEAP} {$EXP} 8 true" \
    "$(dl_sql "SELECT p.cheap_items::text || ' ' || p.expensive_items::text || ' ' || p.skeleton_every || ' ' || (p.planned_at IS NOT NULL)
               FROM run_plans p JOIN runs r ON r.id = p.run_id WHERE r.name = 'adaptive'")"
# the run's jobs with their checkpoint's position and phase
J="(SELECT j.*, c.step, r.name AS run FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id
    JOIN runs r ON r.id = c.run_id)"
dl_eq "the dense windows cover the known transition" "0" \
    "$(dl_sql "SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id JOIN run_plans p ON p.run_id = r.id
               WHERE r.name = 'adaptive' AND c.step BETWEEN $WLO AND $WHI AND NOT EXISTS (SELECT 1
               FROM unnest(p.window_starts, p.window_ends) AS w(s, e) WHERE c.step BETWEEN w.s AND w.e)")"
dl_eq "the first pass (cheap items, the skeleton's $EXP with them) before the rest" "t" \
    "$(dl_sql "SELECT max(finished_at) FILTER (WHERE priority = 0) <= min(started_at) FILTER (WHERE priority > 0)
               FROM $J x WHERE run = 'adaptive'")"
dl_eq "the skeleton: every 8th checkpoint and the last, all $NITEMS items at priority 0" "0,8,16,24,32,40,44" \
    "$(dl_sql "SELECT string_agg(i::text, ',' ORDER BY i) FROM (SELECT x.checkpoint_id,
               (SELECT count(*) FROM checkpoints o WHERE o.run_id = c.run_id AND o.step < c.step) AS i
               FROM $J x JOIN checkpoints c ON c.id = x.checkpoint_id WHERE run = 'adaptive' GROUP BY x.checkpoint_id, c.run_id, c.step
               HAVING count(*) FILTER (WHERE x.priority = 0) = $NITEMS) s")"
dl_eq "dense claimed before rest" "t" \
    "$(dl_sql "SELECT max(started_at) FILTER (WHERE priority = 1) < min(started_at) FILTER (WHERE priority = 2)
               FROM $J x WHERE run = 'adaptive' AND item = '$EXP'")"
# a claim's jobs start together: claims per checkpoint by distinct started_at
dl_eq "each item once per checkpoint, in one attempt" "0 0" \
    "$(dl_sql "SELECT (SELECT count(*) FROM (SELECT 1 FROM $J x GROUP BY run, checkpoint_id, item HAVING count(*) <> 1) d)
               || ' ' || (SELECT count(*) FROM $J x WHERE attempts <> 1)")"
dl_eq "claims: the skeleton's checkpoints one (every item together), the others two" "7:1 38:2" \
    "$(dl_sql "SELECT string_agg(n || ':' || claims, ' ' ORDER BY claims) FROM (SELECT claims, count(*) AS n FROM
               (SELECT checkpoint_id, count(DISTINCT started_at) AS claims FROM $J x WHERE run = 'adaptive'
                GROUP BY checkpoint_id) a GROUP BY claims) b")"
dl_eq "step order: one claim per checkpoint" "45:1" \
    "$(dl_sql "SELECT string_agg(n || ':' || claims, ' ') FROM (SELECT claims, count(*) AS n FROM
               (SELECT checkpoint_id, count(DISTINCT started_at) AS claims FROM $J x WHERE run = 'order'
                GROUP BY checkpoint_id) a GROUP BY claims) b")"
# detection: the first pass's series once, at its end (one line for the
# whole run, none per claim before the plan); per claim after it
dl_eq "the first pass examined once, when it ended" "1 0" \
    "$(grep -c 'msg="transitions detected" run_id=' "$T/Sadaptive.log") $(sed -n '1,/adaptive run planned/p' "$T/Sadaptive.log" |
       grep -c 'msg="transitions detected" run="adaptive"')"
dl_true "then each claim of the dense phase and the rest" \
    [ "$(grep -c 'msg="transitions detected" run="adaptive"' "$T/Sadaptive.log")" -eq 38 ]
dl_eq "step order kept its order (every job priority 0)" "0" \
    "$(dl_sql "SELECT count(*) FROM $J x WHERE run = 'order' AND priority <> 0")"

# expensive jobs finished by the time the window's last one finished
covered() {
    dl_sql "SELECT count(*) FROM $J x WHERE run = '$1' AND item = '$EXP' AND finished_at <= (SELECT max(finished_at)
            FROM $J y WHERE run = '$1' AND item = '$EXP' AND step BETWEEN $WLO AND $WHI)"
}
NO=$(covered order) NA=$(covered adaptive)
NT=$(dl_sql "SELECT count(*) FROM $J x WHERE run = 'adaptive' AND item = '$EXP'")
NW=$(dl_sql "SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = 'adaptive'
             AND c.step BETWEEN $WLO AND $WHI")
echo "# expensive jobs done when the window ($NW checkpoints) was covered: order $NO, adaptive $NA, of $NT"
dl_true "adaptive covers the transition sooner ($NA < $NO expensive jobs)" [ "$NA" -lt "$NO" ]
limit=$(((NT + 7) / 8 + 1 + (NT + 3) / 4 + NW))
dl_true "and no later than skeleton + dense budget + window ($NA <= $limit)" [ "$NA" -le "$limit" ]
dl_eq "the same rows from both" "0 0" \
    "$(dl_sql "SELECT (SELECT count(*) FROM (SELECT metric, layer, head, idx, step, value FROM series WHERE run = 'order'
               EXCEPT SELECT metric, layer, head, idx, step, value FROM series WHERE run = 'adaptive') a) || ' ' ||
               (SELECT count(*) FROM (SELECT metric, layer, head, idx, step, value FROM series WHERE run = 'adaptive'
               EXCEPT SELECT metric, layer, head, idx, step, value FROM series WHERE run = 'order') b)")"

# the second claim of a checkpoint stages it again: its files, recorded at
# the first, are not written again (the full path deletes and inserts them)
dl_eq "files recorded once per checkpoint: 3 each, none deleted" "90 3 0" \
    "$(dl_sql "SELECT count(DISTINCT checkpoint_id) || ' ' || (count(*) / count(DISTINCT checkpoint_id)) || ' ' ||
               (SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'checkpoint_files') FROM checkpoint_files")"
TDIFF=$(dl_sql "WITH t AS (SELECT r.name AS run, t.metric_id, t.layer, t.head, t.idx, t.kind, t.method, t.start_step,
               t.peak_step, t.end_step, t.score FROM transitions t JOIN runs r ON r.id = t.run_id)
               SELECT (SELECT count(*) FROM (SELECT metric_id, layer, head, idx, kind, method, start_step, peak_step, end_step, score
               FROM t WHERE run = 'order' EXCEPT SELECT metric_id, layer, head, idx, kind, method, start_step, peak_step, end_step, score
               FROM t WHERE run = 'adaptive') a) || ' ' || (SELECT count(*) FROM (SELECT metric_id, layer, head, idx, kind, method,
               start_step, peak_step, end_step, score FROM t WHERE run = 'adaptive' EXCEPT SELECT metric_id, layer, head, idx, kind,
               method, start_step, peak_step, end_step, score FROM t WHERE run = 'order') b)")
dl_eq "the same transitions from both" "0 0" "$TDIFF"
if [ "$TDIFF" != "0 0" ]; then # what differs, for the log
    dl_sql "SELECT r.name, m.name, t.layer, t.head, t.idx, t.kind, t.method, t.start_step, t.peak_step, t.end_step,
            t.score, t.detected_at FROM transitions t JOIN runs r ON r.id = t.run_id JOIN metrics m ON m.id = t.metric_id
            ORDER BY m.name, t.layer, t.head, t.idx, t.peak_step, r.name LIMIT 40" | sed 's/^/#   /'
fi

# wall times, for bench/adaptive_bench.sh (never asserted: the machine is shared)
for pol in order adaptive; do
    dl_sql "SELECT '# figure $pol window_s=' || round(extract(epoch FROM (SELECT max(finished_at) FROM $J y WHERE run = '$pol'
            AND item = '$EXP' AND step BETWEEN $WLO AND $WHI) - min(started_at))::numeric, 2)
            || ' total_s=' || round(extract(epoch FROM max(finished_at) - min(started_at))::numeric, 2)
            FROM $J x WHERE run = '$pol'"
done
for pol in order adaptive; do
    echo "# figure $pol cpu_s=$(awk '{ printf "%.2f", $1 + $2 }' "$T/time-$pol")"
done
dl_sql "SELECT '# figure adaptive phase ' || priority || ': ' || count(*) || ' jobs, claims from '
        || round(extract(epoch FROM min(started_at) - (SELECT min(started_at) FROM $J z WHERE run = 'adaptive'))::numeric, 2)
        || ' to ' || round(extract(epoch FROM max(finished_at) - (SELECT min(started_at) FROM $J z WHERE run = 'adaptive'))::numeric, 2)
        || ' s, work ' || round(extract(epoch FROM sum(finished_at - started_at))::numeric, 2) || ' s'
        FROM $J x WHERE run = 'adaptive' GROUP BY priority ORDER BY priority"
dl_sql "SELECT '# figure order: ' || count(*) || ' jobs, work ' || round(extract(epoch FROM sum(finished_at - started_at))::numeric, 2)
        || ' s' FROM $J x WHERE run = 'order'"
dl_finish
