#!/bin/bash
# daemon_transitions.sh - transition detection against a real PostgreSQL
# (port 54370).  A worker stand-in writes, per checkpoint, rows of the
# `loss` item whose values come from a table: `loss` steps up from 1 to 3 at
# step 12, `icl_score` down from 0.9 to 0.1 at the same step, `loss_by_pos`
# (4 positions) is noise; steps 24..28 are byte copies of step 23 (duplicate
# checkpoints) whose rows hold an outlier, 9.
#
#  - after `ckptd serve --until-idle`, `transitions` holds one row per
#    changing series (peak at step 12) and none for noise or for the
#    duplicates' outliers; every checkpoint's ingestion was followed by a
#    detection ("transitions detected" logged 40 times);
#  - `ckptd transitions RUN` prints them under a header, in one group,
#    with the group's line (window, metrics, score); --json, --metric,
#    --min-score, --kind, --method; an unknown run exits 1, bad usage 2;
#  - method level-v2 with calibrated p-values <= 1e-3; a ramp-v1 row left
#    from before stays, is listed only with --method all (or ramp-v1) and
#    survives `ckptd detect`;
#  - `ckptd detect RUN` and a re-ingestion after the schedule grows replace
#    the rows, never duplicate them;
#  - with the duplicate marks cleared the outliers become a transition
#    (the test can fail), and with them set again they are gone;
#  - a failing detection (a trigger refusing inserts into transitions)
#    leaves the checkpoint's results stored and the old transitions intact;
#  - transitions_named and transitions_ranked, across two runs; the views
#    spikes, transitions_grouped and transition_groups; the example
#    queries of schema/queries.sql run.
. tests/lib/daemon.sh
dl_init transitions 54370
dl_migrate
C=("$CKPTD" --config "$T/cfg.json")
LOSS_V=$("$WORKER" battery --json | python3 -c 'import json,sys; print([i["version"] for i in json.load(sys.stdin)["items"] if i["name"] == "loss"][0])')

# values per step: loss icl_score pos0..pos3 (noise sd 0.01, seeded)
python3 - "$T/values" <<'EOF'
import random, sys
r = random.Random(7)
with open(sys.argv[1], "w") as f:
    for step in range(60):
        dup = 24 <= step <= 28
        loss = 9.0 if dup else (1.0 if step < 12 else 3.0) + r.gauss(0, 0.01)
        icl = 9.0 if dup else (0.9 if step < 12 else 0.1) + r.gauss(0, 0.01)
        pos = [2.0 + r.gauss(0, 0.01) for _ in range(4)]
        f.write(" ".join(str(x) for x in [step, loss, icl] + pos) + "\n")
EOF
dl_ckpts 40
for s in 24 25 26 27 28; do rm -rf "$T/ck/step$s" && cp -r "$T/ck/step23" "$T/ck/step$s"; done
dl_wrapper "$T/fake.sh" "if [ -n \"\$DIR\" ]; then
  step=\${DIR%/}; step=\${step##*step}
  awk -v s=\"\$step\" -v ver=$LOSS_V 'BEGIN { OFS = \"\\t\" } \$1 == s {
      print \"loss\", ver, \"loss\", -1, -1, -1, \$2
      print \"loss\", ver, \"icl_score\", -1, -1, -1, \$3
      for (p = 0; p < 4; p++) print \"loss\", ver, \"loss_by_pos\", -1, -1, p, \$(4 + p) }' \"\$T/values\"
  exit 0
fi"
dl_config "$T/cfg.json" "\"worker_path\": \"$T/fake.sh\"" '"workers": 2'

"${C[@]}" add-run tr --source "file://$T/ck/step{step}" --schedule 0:39:1 --items loss >"$T/add.out" 2>&1 ||
    { dl_fail "add-run"; cat "$T/add.out"; dl_finish; }
dl_serve S1 --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S1_PID" 120
dl_eq "serve exit" 0 "$DL_STATUS"
dl_eq "jobs done" 40 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'tr' AND state = 'done'")"
dl_eq "duplicates marked" "24 25 26 27 28" \
    "$(dl_sql "SELECT string_agg(step::text, ' ' ORDER BY step) FROM duplicate_checkpoints WHERE run = 'tr'")"
dl_eq "a detection after every checkpoint" 40 "$(dl_log_count "$T/S1.log" "transitions detected")"
dl_eq "no detection failed" 0 "$(dl_log_count "$T/S1.log" "transition detection failed; the checkpoint's results are stored")"

q_rows="SELECT metric || ':' || start_step || '/' || peak_step || '/' || end_step FROM transitions_named WHERE run = 'tr' AND kind = 'transition' AND method = 'level-v2' ORDER BY metric"
dl_eq "transitions: icl_score and loss at step 12, nothing else" "icl_score:11/12/12
loss:11/12/12" "$(dl_sql "$q_rows")"
dl_eq "magnitudes within 20%" "t" "$(dl_sql "SELECT bool_and(CASE metric WHEN 'loss' THEN abs(magnitude - 2) < 0.4 ELSE abs(magnitude + 0.8) < 0.16 END) FROM transitions_named WHERE run = 'tr'")"
dl_eq "method and p-value" "level-v2 true" "$(dl_sql "SELECT DISTINCT method || ' ' || (p_value <= 1e-3 AND noise > 0)::text FROM transitions WHERE run_id = (SELECT id FROM runs WHERE name = 'tr')")"
dl_eq "no spikes in these series" 0 "$(dl_sql "SELECT count(*) FROM spikes WHERE run = 'tr'")"
dl_eq "levels either side" "t" "$(dl_sql "SELECT bool_and(abs(level_after - level_before - magnitude) < 1e-9) FROM transitions")"

# a row of the former method, as an older ckptd left it
dl_sql "INSERT INTO transitions (run_id, metric_id, start_step, peak_step, end_step, magnitude, score, method)
        SELECT r.id, m.id, 30, 31, 32, 1.0, 20.0, 'ramp-v1' FROM runs r, metrics m
        WHERE r.name = 'tr' AND m.item = 'loss' AND m.version = $LOSS_V AND m.name = 'loss'" >/dev/null
dl_eq "the old row: a transition without p-value" "transition 1" \
    "$(dl_sql "SELECT kind || ' ' || (p_value IS NULL)::int FROM transitions WHERE method = 'ramp-v1'")"

# the listing
"${C[@]}" transitions tr >"$T/list.out" 2>"$T/list.err"
dl_eq "transitions exit" 0 $?
dl_grep "header line" "$T/list.out" '^group +kind +metric +item +ver +layer +head +idx +start +peak +end +before +after +score +p_value +method$'
rows() { awk 'NR > 1 && $2 ~ /^(transition|spike)$/ { print $1, $3, $10 }' "$@"; }
dl_eq "two lines, one group" "1 icl_score 12
1 loss 12" "$(rows "$T/list.out")"
dl_grep "the group's line" "$T/list.out" '^ +1 +11 +12 +2 +[0-9.]+ +level-v2 +loss/icl_score, loss/loss$|^ +1 +11 +12 +2 +[0-9.]+ +level-v2 +loss/loss, loss/icl_score$'
"${C[@]}" transitions tr --json >"$T/list.json" 2>"$T/json.err"
dl_eq "json" "2 1 ['end_step', 'group', 'group_metrics', 'group_score', 'head', 'idx', 'item', 'kind', 'layer', 'level_after', 'level_before', 'magnitude', 'method', 'metric', 'noise', 'p_value', 'peak_step', 'run', 'score', 'start_step', 'version'] tr loss $LOSS_V 2" \
    "$(python3 -c 'import json,sys; a = json.load(open(sys.argv[1])); print(len(a), len({o["group"] for o in a}), sorted(a[1]), a[1]["run"], a[1]["item"], a[1]["version"], a[1]["group_metrics"])' "$T/list.json")"
dl_eq "json: group score is the sum of -log10 p" "t" \
    "$(python3 -c 'import json,sys,math; a = json.load(open(sys.argv[1])); print(str(abs(a[0]["group_score"] - sum(-math.log10(o["p_value"]) for o in a)) < 1e-6).lower()[0])' "$T/list.json")"
dl_eq "--metric NAME" "loss" "$("${C[@]}" transitions tr --metric loss | rows | awk '{ print $2 }')"
dl_eq "--metric ITEM/NAME" "icl_score" "$("${C[@]}" transitions tr --metric loss/icl_score | rows | awk '{ print $2 }')"
dl_eq "--min-score above all" 1 "$("${C[@]}" transitions tr --min-score 1e12 | wc -l)"
dl_eq "--kind spike: none" 1 "$("${C[@]}" transitions tr --kind spike | wc -l)"
dl_eq "--method all: the ramp-v1 row too" "3 ramp-v1" \
    "$("${C[@]}" transitions tr --method all | awk 'NR > 1 && $2 == "transition"' | wc -l) $("${C[@]}" transitions tr --method ramp-v1 | awk 'NR > 1 && $2 == "transition" { print $16 }')"
"${C[@]}" transitions tr --kind blip >/dev/null 2>&1
dl_eq "bad --kind: exit 2" 2 $?
"${C[@]}" transitions nosuch >/dev/null 2>"$T/nosuch.err"
dl_eq "unknown run: exit 1" 1 $?
dl_grep "unknown run named" "$T/nosuch.err" "no run named 'nosuch'"
"${C[@]}" transitions >/dev/null 2>&1
dl_eq "no RUN: exit 2" 2 $?
"${C[@]}" transitions tr --min-score abc >/dev/null 2>&1
dl_eq "bad --min-score: exit 2" 2 $?

# detecting again replaces, never duplicates
ids0=$(dl_sql "SELECT string_agg(id::text, ',' ORDER BY id) FROM transitions WHERE method = 'level-v2'")
out=$("${C[@]}" detect tr 2>"$T/detect.err")
dl_eq "detect exit" 0 $?
case "$out" in "run tr: 6 series, "*" points, 2 transitions, 0 spikes ("*) dl_ok "detect summary ($out)" ;; *) dl_fail "detect summary: $out" ;; esac
dl_eq "detect: still 2 rows of level-v2" 2 "$(dl_sql "SELECT count(*) FROM transitions WHERE method = 'level-v2'")"
dl_eq "detect: the ramp-v1 row stays" 1 "$(dl_sql "SELECT count(*) FROM transitions WHERE method = 'ramp-v1'")"
dl_true "detect: rows replaced" [ "$ids0" != "$(dl_sql "SELECT string_agg(id::text, ',' ORDER BY id) FROM transitions WHERE method = 'level-v2'")" ]
dl_eq "detect: same transitions" "icl_score:11/12/12
loss:11/12/12" "$(dl_sql "$q_rows")"

# the schedule grows: 8 more checkpoints, re-ingested and detected
dl_ckpts 8 40
"${C[@]}" add-run tr --source "file://$T/ck/step{step}" --schedule 0:47:1 --items loss >"$T/add2.out" 2>&1
dl_serve S2 --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S2_PID" 120
dl_eq "second serve: 48 jobs done" 48 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'tr' AND state = 'done'")"
dl_eq "second serve: 8 detections" 8 "$(dl_log_count "$T/S2.log" "transitions detected")"
dl_eq "after re-ingestion: the same 2" "icl_score:11/12/12
loss:11/12/12" "$(dl_sql "$q_rows")"

# without the duplicate marks the outliers are a change (the test can fail)
dl_sql "UPDATE checkpoints SET duplicate_of = NULL WHERE step BETWEEN 24 AND 28" >/dev/null
"${C[@]}" detect tr >/dev/null 2>&1
dl_eq "duplicates unmarked: the outliers show" "t" \
    "$(dl_sql "SELECT count(*) > 2 AND bool_or(peak_step = 24) FROM transitions_named WHERE run = 'tr'")"
dl_sql "UPDATE checkpoints c SET duplicate_of = o.id FROM checkpoints o WHERE o.run_id = c.run_id AND o.step = 23 AND c.step BETWEEN 24 AND 28" >/dev/null
"${C[@]}" detect tr >/dev/null 2>&1
dl_eq "duplicates marked again: gone" "icl_score:11/12/12
loss:11/12/12" "$(dl_sql "$q_rows")"

# a failing detection: the results stay, the old transitions too
dl_sql "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN RAISE EXCEPTION 'injected fault'; END \$\$;
        CREATE TRIGGER refuse BEFORE INSERT ON transitions FOR EACH ROW EXECUTE FUNCTION refuse();" >/dev/null
dl_ckpts 1 48
"${C[@]}" add-run tr --source "file://$T/ck/step{step}" --schedule 0:48:1 --items loss >"$T/add3.out" 2>&1
dl_serve S3 --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S3_PID" 120
dl_eq "fault: serve exit" 0 "$DL_STATUS"
dl_eq "fault: the job is done" done "$(dl_sql "SELECT state FROM job_list WHERE run = 'tr' AND step = 48")"
dl_eq "fault: its rows stored" 6 "$(dl_sql "SELECT count(*) FROM measurements WHERE step = 48")"
dl_grep "fault: logged" "$T/S3.log" 'msg="transition detection failed; the checkpoint.s results are stored".*injected fault'
dl_eq "fault: old transitions intact" "icl_score:11/12/12
loss:11/12/12" "$(dl_sql "$q_rows")"
"${C[@]}" detect tr >/dev/null 2>"$T/detect-fault.err"
dl_eq "fault: ckptd detect exits 1" 1 $?
dl_sql "DROP TRIGGER refuse ON transitions; DROP FUNCTION refuse();" >/dev/null

# a second run, inserted directly, for the views
dl_sql "INSERT INTO runs (name, source, schedule, items) VALUES ('tr2', 'file:///nowhere', '0:59:1', '{loss}');
        INSERT INTO checkpoints (run_id, step, revision, url)
            SELECT r.id, s, 'step' || s, 'file:///nowhere/step' || s FROM runs r, generate_series(0, 59) s WHERE r.name = 'tr2';
        INSERT INTO measurements (run_id, step, metric_id, value)
            SELECT r.id, s, m.id, CASE WHEN s < 30 THEN 0 ELSE 5 END + 0.001 * sin(s * 7.3)
            FROM runs r, generate_series(0, 59) s, metrics m
            WHERE r.name = 'tr2' AND m.item = 'loss' AND m.version = $LOSS_V AND m.name = 'loss';" >/dev/null
"${C[@]}" detect tr2 >/dev/null 2>&1
dl_eq "tr2: one transition at 30" "loss:29/30/30" \
    "$(dl_sql "SELECT metric || ':' || start_step || '/' || peak_step || '/' || end_step FROM transitions_named WHERE run = 'tr2'")"
dl_eq "ranked: both runs" 2 "$(dl_sql "SELECT count(DISTINCT run) FROM transitions_ranked")"
dl_eq "ranked: rank_in_run 1..k per run" "tr 1,2 tr2 1" \
    "$(dl_sql "SELECT string_agg(run || ' ' || ranks, ' ' ORDER BY run) FROM (SELECT run, string_agg(rank_in_run::text, ',' ORDER BY rank_in_run) AS ranks FROM transitions_ranked WHERE method = 'level-v2' GROUP BY run) x")"
dl_eq "ranked: rank_overall follows score" "t" \
    "$(dl_sql "SELECT bool_and(ok) FROM (SELECT rank_overall = rank() OVER (ORDER BY score DESC) AS ok FROM transitions_ranked WHERE method = 'level-v2') x")"
dl_eq "ranked: loss across runs" "1 2" \
    "$(dl_sql "SELECT string_agg(rank_in_metric::text, ' ' ORDER BY rank_in_metric) FROM transitions_ranked WHERE metric = 'loss' AND method = 'level-v2'")"
dl_eq "reader role may read the views" "t" \
    "$(dl_sql "SELECT bool_and(has_table_privilege('ckptd_reader', v, 'SELECT')) FROM unnest(ARRAY['transitions_ranked', 'transitions_named', 'spikes', 'transitions_grouped', 'transition_groups']) v")"
dl_eq "transition_groups: run tr's level-v2 group of 2 metrics" "1 11 12 2 2 1" \
    "$(dl_sql "SELECT group_no || ' ' || start_step || ' ' || end_step || ' ' || transitions || ' ' || metrics || ' ' || (group_score > 6)::int FROM transition_groups WHERE run = 'tr' AND method = 'level-v2'")"
psql -X -q -v ON_ERROR_STOP=1 -v run=tr -f schema/queries.sql >"$T/queries.out" 2>&1
dl_eq "schema/queries.sql runs" 0 $?

dl_finish
