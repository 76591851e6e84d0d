#!/bin/bash
# daemon_two_nodes.sh - two daemons (separate processes, different --node,
# two workers each) share one run of 50 tiny checkpoints through one
# PostgreSQL: every job is done exactly once (one attempt each in this
# fault-free run), every checkpoint's rows are stored exactly once, and both
# nodes did part of the work.
. tests/lib/daemon.sh
dl_init two_nodes 54343
dl_migrate
N=50
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss,weights)
dl_true "rows per checkpoint known ($RPC)" [ "$RPC" -gt 0 ]
dl_config "$T/cfg.json"
"$CKPTD" --config "$T/cfg.json" add-run duo --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss,weights >/dev/null 2>"$T/add.err" ||
    { dl_fail "add-run"; cat "$T/add.err"; }

# hold the jobs back until both daemons are up, then release them at once
dl_sql "UPDATE jobs SET not_before = now() + interval '1 hour'" >/dev/null
dl_serve A --config "$T/cfg.json" serve --workers 2 --until-idle --node node-A
dl_serve B --config "$T/cfg.json" serve --workers 2 --until-idle --node node-B
dl_wait "daemon A serving" 30 grep -q 'msg="serving"' "$T/A.log" &&
    dl_wait "daemon B serving" 30 grep -q 'msg="serving"' "$T/B.log"
dl_sql "UPDATE jobs SET not_before = now(); NOTIFY ckptd_jobs" >/dev/null
dl_wait_exit "$A_PID" 120
dl_eq "daemon A exit" 0 "$DL_STATUS"
dl_wait_exit "$B_PID" 120
dl_eq "daemon B exit" 0 "$DL_STATUS"

dl_check_complete duo $N 2 "$RPC"
dl_eq "every job took one attempt" $((N * 2)) "$(dl_sql "SELECT count(*) FROM jobs WHERE attempts = 1")"
dl_eq "no job has an error" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE last_error IS NOT NULL")"
dl_eq "no duplicate measurement key" 0 "$(dl_sql "SELECT count(*) FROM (SELECT 1 FROM measurements
    GROUP BY run_id, metric_id, layer, head, idx, step HAVING count(*) > 1) d")"
# both jobs of a checkpoint were claimed together: one start per checkpoint
dl_eq "both jobs of a checkpoint claimed together" $N \
    "$(dl_sql "SELECT count(*) FROM (SELECT checkpoint_id FROM jobs GROUP BY checkpoint_id
               HAVING count(DISTINCT started_at) = 1) s")"

a=$(dl_log_count "$T/A.log" "checkpoint done")
b=$(dl_log_count "$T/B.log" "checkpoint done")
dl_eq "checkpoints done by A + B" $N $((a + b))
dl_true "node A did some work ($a checkpoints)" [ "$a" -gt 0 ]
dl_true "node B did some work ($b checkpoints)" [ "$b" -gt 0 ]
dl_eq "no failures logged" 0 "$(cat "$T/A.log" "$T/B.log" | grep -c 'level=error\|checkpoint failed\|lease lost')"
dl_grep "A's summary" "$T/A.log" "msg=\"stopped\" node=node-A jobs_done=$((a * 2)) jobs_failed=0 leases_lost=0"
dl_grep "B's summary" "$T/B.log" "msg=\"stopped\" node=node-B jobs_done=$((b * 2)) jobs_failed=0 leases_lost=0"
dl_eq "spool directory left empty" 0 "$(ls "$T/spool" | wc -l)"

dl_finish
