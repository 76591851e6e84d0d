#!/bin/bash
# daemon_worker_kill.sh - a worker killed with SIGKILL in the middle of a
# job: the daemon records the failure (signal 9), the job goes back to the
# queue after its backoff, the second attempt completes, and the rows are
# stored once.  The worker is a wrapper that, for step 3 on its first
# invocation only, becomes a long sleep which the test kills.
. tests/lib/daemon.sh
dl_init worker_kill 54344
dl_migrate
N=6
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss,weights)
dl_wrapper "$T/wrap.sh" '
case "$DIR" in
*/step3)
    if mkdir "$T/victim.marker" 2>/dev/null; then
        echo $$ >"$T/victim.pid.tmp" && mv "$T/victim.pid.tmp" "$T/victim.pid"
        exec "$SLEEP" 30
    fi ;;
esac'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/wrap.sh\""
"$CKPTD" --config "$T/cfg.json" add-run wk --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss,weights >/dev/null 2>"$T/add.err" || dl_fail "add-run"

dl_serve D --config "$T/cfg.json" serve --workers 2 --until-idle --node node-D
if dl_wait "the step 3 worker to start" 30 test -s "$T/victim.pid"; then
    victim=$(cat "$T/victim.pid")
    dl_eq "step 3 is running, leased by node-D" "2 node-D" \
        "$(dl_sql "SELECT count(*) || ' ' || min(lease_owner) FROM job_list WHERE run = 'wk' AND step = 3 AND state = 'running'")"
    kill -9 "$victim"
    dl_ok "killed worker $victim with SIGKILL"
fi
dl_wait_exit "$D_PID" 60
dl_eq "daemon exit" 0 "$DL_STATUS"

dl_check_complete wk $N 2 "$RPC"
dl_eq "step 3: attempts of its jobs" "2,2" \
    "$(dl_sql "SELECT string_agg(attempts::text, ',') FROM job_list WHERE run = 'wk' AND step = 3")"
dl_eq "other steps: one attempt each" $(((N - 1) * 2)) \
    "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'wk' AND step <> 3 AND attempts = 1")"
dl_eq "error cleared once done" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE last_error IS NOT NULL")"
dl_grep "the failure was logged with the signal" "$T/D.log" \
    'msg="checkpoint failed" run="wk" step=3 attempt=1 error="worker killed by signal 9'
dl_grep "the retry was attempt 2" "$T/D.log" 'msg="worker started" run="wk" step=3 .*attempt=2'
dl_eq "checkpoints done" $N "$(dl_log_count "$T/D.log" "checkpoint done")"

dl_finish
