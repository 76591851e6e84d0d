#!/bin/bash
# daemon_addrun.sh - `ckptd add-run`: idempotent (the second call adds 0
# checkpoints and 0 jobs), the pythia schedule (154 checkpoints, URLs from
# the template), adding items to an existing run, and bad input refused with
# exit status 2 (schedule, source, item, max attempts) or 1 (a run name
# reused with another source), leaving the database unchanged.  Nothing is
# served.
. tests/lib/daemon.sh
dl_init addrun 54342
dl_migrate
dl_config "$T/cfg.json"
C=("$CKPTD" --config "$T/cfg.json")
count() { dl_sql "SELECT (SELECT count(*) FROM runs) || ' ' || (SELECT count(*) FROM checkpoints) || ' ' || (SELECT count(*) FROM jobs)"; }

out=$("${C[@]}" add-run small --source "file://$T/ck/step{step}" --schedule 0,1,2,4:10:2 --items loss,weights 2>"$T/a1.err")
dl_eq "add-run exit" 0 $?
dl_eq "add-run message" "run small: 7 steps, 2 items; added 7 checkpoints and 14 jobs" "$out"
dl_eq "runs checkpoints jobs" "1 7 14" "$(count)"
dl_eq "steps" "0,1,2,4,6,8,10" "$(dl_sql "SELECT string_agg(step::text, ',' ORDER BY step) FROM checkpoints")"
dl_eq "jobs queued, 0 attempts" 14 "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0")"
dl_eq "url of step 6" "file://$T/ck/step6" "$(dl_sql "SELECT url FROM checkpoints WHERE step = 6")"
dl_eq "revision of step 6" "step6" "$(dl_sql "SELECT revision FROM checkpoints WHERE step = 6")"
dl_eq "metrics registered" t "$(dl_sql "SELECT count(*) > 0 FROM metrics WHERE item = 'loss'")"

out=$("${C[@]}" add-run small --source "file://$T/ck/step{step}" --schedule 0,1,2,4:10:2 --items loss,weights 2>"$T/a2.err")
dl_eq "add-run again exit" 0 $?
dl_eq "add-run again adds nothing" "run small: 7 steps, 2 items; added 0 checkpoints and 0 jobs" "$out"
dl_eq "counts unchanged" "1 7 14" "$(count)"

# a longer schedule and a subset of items: only what is missing is added
out=$("${C[@]}" add-run small --source "file://$T/ck/step{step}" --schedule 0:12:2 --items weights 2>"$T/a3.err")
dl_eq "extend schedule" "run small: 7 steps, 1 items; added 1 checkpoints and 1 jobs" "$out"
dl_eq "counts after extension" "1 8 15" "$(count)"

# pythia: 154 checkpoints from any source (not fetched: nothing serves here)
out=$("${C[@]}" add-run pythia-14m --source "https://ckpt.example.invalid/pythia-14m" --schedule pythia --items loss 2>"$T/p.err")
dl_eq "pythia add-run" "run pythia-14m: 154 steps, 1 items; added 154 checkpoints and 154 jobs" "$out"
dl_eq "pythia checkpoints" 154 "$(dl_sql "SELECT count(*) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = 'pythia-14m'")"
dl_eq "pythia first steps" "0,1,2,4,8,16,32,64,128,256,512,1000,2000" \
    "$(dl_sql "SELECT string_agg(step::text, ',' ORDER BY step) FROM (SELECT step FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = 'pythia-14m' ORDER BY step LIMIT 13) s")"
dl_eq "pythia last step" 143000 "$(dl_sql "SELECT max(step) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = 'pythia-14m'")"
dl_eq "pythia url (step appended)" "https://ckpt.example.invalid/pythia-14m/step143000" \
    "$(dl_sql "SELECT url FROM checkpoints WHERE step = 143000")"
out=$("${C[@]}" add-run pythia-14m --source "https://ckpt.example.invalid/pythia-14m" --schedule pythia --items loss 2>&1)
dl_eq "pythia again" "run pythia-14m: 154 steps, 1 items; added 0 checkpoints and 0 jobs" "$out"
dl_eq "max_attempts default 5" 5 "$(dl_sql "SELECT DISTINCT max_attempts FROM jobs")"

# bad input: exit 2 (usage), nothing written
before=$(count)
bad() { # bad WANT_STATUS DESC ARGS...
    local want=$1 d=$2 rc
    shift 2
    "${C[@]}" add-run "$@" >"$T/bad.out" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then dl_ok "$d: exit $rc"; else
        dl_fail "$d: exit $rc, want $want"
        tail -n 3 "$T/bad.out"
    fi
}
bad 2 "schedule not a number" x --source "file://$T/ck" --schedule 1,two
bad 2 "schedule range backwards" x --source "file://$T/ck" --schedule 10:5:1
bad 2 "schedule range stride 0" x --source "file://$T/ck" --schedule 0:10:0
bad 2 "schedule range missing stride" x --source "file://$T/ck" --schedule 0:10
bad 2 "schedule negative" x --source "file://$T/ck" --schedule -5
bad 2 "schedule empty" x --source "file://$T/ck" --schedule ''
bad 2 "schedule trailing comma" x --source "file://$T/ck" --schedule 1,2,
bad 2 "source with unknown scheme" x --source "ftp://host/ck" --schedule 0
bad 2 "source with two {step}" x --source "file:///a/{step}/b{step}" --schedule 0
bad 2 "source empty" x --source '' --schedule 0
bad 2 "unknown battery item" x --source "file://$T/ck" --schedule 0 --items loss,nonesuch
bad 2 "max attempts 0" x --source "file://$T/ck" --schedule 0 --max-attempts 0
bad 2 "no source" x --schedule 0
bad 2 "unknown option" x --source "file://$T/ck" --schedule 0 --frobnicate
bad 1 "same name, other source" small --source "file://$T/other/step{step}" --schedule 0
dl_eq "bad input changed nothing" "$before" "$(count)"
dl_eq "source of small kept" "file://$T/ck/step{step}" "$(dl_sql "SELECT source FROM runs WHERE name = 'small'")"

# without --items: the whole battery but the toy-run items (needs "task") and opt-in items
out=$("${C[@]}" add-run whole --source "file://$T/ck" --schedule 0 2>&1)
want=$("$WORKER" battery --json | python3 -c 'import json, sys; print(",".join(sorted(i["name"] for i in json.load(sys.stdin)["items"] if "task" not in i["needs"] and not i.get("opt_in"))))')
dl_eq "default items: all but task" "$want" \
    "$(dl_sql "SELECT string_agg(item, ',' ORDER BY item) FROM job_list WHERE run = 'whole'")"
case ",$want," in *,loss,*) dl_ok "default items include loss" ;; *) dl_fail "default items: $want" ;; esac

# --max-attempts is stored on the jobs
out=$("${C[@]}" add-run tries --source "file://$T/ck" --schedule 3 --items loss --max-attempts 2 2>&1)
dl_eq "max attempts 2 stored" 2 "$(dl_sql "SELECT max_attempts FROM job_list WHERE run = 'tries'")"

dl_finish
