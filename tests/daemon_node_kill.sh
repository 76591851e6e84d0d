#!/bin/bash
# daemon_node_kill.sh - a daemon killed with SIGKILL while it holds leases:
# node A (a slow worker wrapper) stores a checkpoint and claims more, then
# dies with its workers.  Node B, started afterwards with --until-idle,
# returns A's expired leases to the queue and finishes the run: every job
# done, A's interrupted checkpoints on their second attempt, every
# measurement stored exactly once.
. tests/lib/daemon.sh
dl_init node_kill 54345
dl_migrate
N=8
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss,weights)
dl_wrapper "$T/slow.sh" '[ -n "$DIR" ] && "$SLEEP" 2'
dl_config "$T/a.json" "\"worker_path\": \"$T/slow.sh\""
dl_config "$T/b.json"
"$CKPTD" --config "$T/a.json" add-run nk --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss,weights >/dev/null 2>"$T/add.err" || dl_fail "add-run"

dl_serve A --config "$T/a.json" serve --workers 2 --until-idle --node node-A
cond() {
    [ "$(dl_sql "SELECT count(*) FILTER (WHERE state = 'done') >= 2
                   AND count(*) FILTER (WHERE state = 'running' AND lease_owner = 'node-A') >= 2
                 FROM jobs")" = t ]
}
# freeze A at such a moment; if it let go of its leases meanwhile, thaw and wait again
freeze_holding() {
    cond || return 1
    kill -STOP "$A_PID"
    [ "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = 'node-A'")" -gt 0 ] && return 0
    kill -CONT "$A_PID"
    return 1
}
a_gone() { [ "$(dl_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ckptd'")" = 0 ]; }
if dl_wait "node A to store one checkpoint and hold leases on more" 40 freeze_holding; then
    dl_kill9_daemon "$A_PID"
    dl_wait "node A's database session to end" 20 a_gone
    held=$(dl_sql "SELECT string_agg(DISTINCT step::text, ',' ORDER BY step::text) FROM job_list
                   WHERE state = 'running' AND lease_owner = 'node-A'")
    done_before=$(dl_sql "SELECT count(DISTINCT step) FROM job_list WHERE state = 'done'")
    dl_ok "node A killed holding steps $held ($done_before stored before)"
    dl_eq "no process of node A left" "" "$(pgrep -f -- "$T/slow.sh"; pgrep -f -- "$T/bin/sleep")"
fi

dl_serve B --config "$T/b.json" serve --workers 2 --until-idle --node node-B
dl_wait_exit "$B_PID" 60
dl_eq "daemon B exit" 0 "$DL_STATUS"

dl_check_complete nk $N 2 "$RPC"
dl_grep "B returned the expired leases" "$T/B.log" 'msg="expired leases returned to the queue" jobs=[1-9]'
dl_eq "A's interrupted steps took two attempts" "${held:-?}" \
    "$(dl_sql "SELECT string_agg(DISTINCT step::text, ',' ORDER BY step::text) FROM job_list WHERE attempts = 2")"
dl_eq "no job took more than two attempts" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE attempts > 2")"
# (A's log may lack its last line: it can die between COMMIT and logging)
dl_eq "B stored the checkpoints A had not" "$((N - ${done_before:-0}))" "$(dl_log_count "$T/B.log" "checkpoint done")"
dl_eq "no lease left" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL")"

dl_finish
