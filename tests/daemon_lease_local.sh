#!/bin/bash
# daemon_lease_local.sh - the database goes away while a node holds leases
# and cannot renew them: once lease_s has passed since the last renewal the
# node knows the leases are gone, and without waiting for the database it
# kills the worker of one checkpoint and drops the one staged for the next
# (prefetch).  The worker is a wrapper that sleeps 60 s on its first call.
# When PostgreSQL is back the node reconnects within lease_s / 2 (the
# capped backoff), returns the expired leases to the queue itself, and
# finishes the run: every measurement once, the two dropped checkpoints on
# their second attempt, every job stored by this node (jobs.done_by).
# PostgreSQL port 54391.
. tests/lib/daemon.sh
dl_init lease_local 54391
dl_migrate
N=4
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss,weights)
dl_wrapper "$T/wrap.sh" '
if [ -n "$DIR" ] && mkdir "$T/first.marker" 2>/dev/null; then
    echo $$ >"$T/first.pid.tmp" && mv "$T/first.pid.tmp" "$T/first.pid"
    exec "$SLEEP" 60
fi'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/wrap.sh\"" '"lease_s": 3' '"prefetch": 1'
"$CKPTD" --config "$T/cfg.json" add-run ll --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss,weights >/dev/null 2>"$T/add.err" || dl_fail "add-run"

dl_serve L --config "$T/cfg.json" serve --until-idle --node node-L
held() { [ "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = 'node-L'")" = 4 ]; }
if dl_wait "the first worker sleeping and the next checkpoint staged" 30 \
    eval 'test -s "$T/first.pid" && held'; then
    sleeper=$(cat "$T/first.pid")
    "$ROOT/scripts/pg-local" stop >"$T/stop.out" 2>&1 || dl_fail "pg-local stop"
    t_stop=$SECONDS
    dl_wait "the node to drop both leases with the database down" 20 \
        eval '[ "$(dl_log_count "$T/L.log" "lease expired unrenewed: stopping the worker, its work dropped")" = 2 ]'
    dl_ok "leases dropped $((SECONDS - t_stop)) s after the database went (lease_s 3)"
    dl_grep "the worker's checkpoint dropped" "$T/L.log" 'msg="lease expired unrenewed[^"]*" run="ll" step=0 .*phase=run'
    dl_grep "the staged checkpoint dropped" "$T/L.log" 'msg="lease expired unrenewed[^"]*" run="ll" step=1 .*phase=fetch'
    dl_true "the sleeping worker was killed while the database was down" \
        eval '! kill -0 "$sleeper" 2>/dev/null && ! "$ROOT/scripts/pg-local" status'
    if "$ROOT/scripts/pg-local" start >"$T/start.out" 2>&1; then dl_ok "PostgreSQL started again"; else
        dl_fail "pg-local start"
        cat "$T/start.out"
    fi
fi
dl_wait_exit "$L_PID" 60
dl_eq "daemon exit" 0 "$DL_STATUS"

dl_check_complete ll $N 2 "$RPC"
dl_grep "the node saw the connection go" "$T/L.log" 'msg="database connection lost"'
dl_grep "and come back" "$T/L.log" 'msg="database connection re-established"'
dl_grep "the node returned its own expired leases" "$T/L.log" 'msg="expired leases returned to the queue" jobs=4'
dl_eq "steps dropped took two attempts" "0,1" \
    "$(dl_sql "SELECT string_agg(DISTINCT step::text, ',' ORDER BY step::text) FROM job_list WHERE attempts = 2")"
dl_eq "every job stored by node-L" $((N * 2)) "$(dl_sql "SELECT count(*) FROM jobs WHERE done_by = 'node-L'")"
dl_grep "summary counts the two leases" "$T/L.log" 'msg="stopped" node=node-L jobs_done=8 jobs_failed=0 leases_lost=2'

dl_finish
