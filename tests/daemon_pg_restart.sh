#!/bin/bash
# daemon_pg_restart.sh - the database goes away under a working daemon.
#
# 1. PostgreSQL restarted (scripts/pg-local restart) while a daemon works
#    through a run with a slow worker: the daemon reconnects (its log says
#    so) and the run completes, nothing lost, nothing stored twice.
# 2. After that reconnection, NOTIFY still reaches it: a run added later is
#    claimed at once although poll_s is 30 s (LISTEN was renewed).
# 3. One node cut off from the database (its role may not log in, its
#    backend terminated) while work is queued and announced: once it may
#    log in again it claims that work at once, not a poll_s later - the
#    NOTIFY it missed is not waited for.
. tests/lib/daemon.sh
dl_init pg_restart 54346
dl_migrate
N=10
dl_ckpts 16
RPC=$(dl_rows_per_ckpt loss,weights)
dl_wrapper "$T/slow.sh" '[ -n "$DIR" ] && "$SLEEP" 0.5'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/slow.sh\"" '"lease_s": 10' '"heartbeat_s": 1' '"poll_s": 30'
"$CKPTD" --config "$T/cfg.json" add-run pr --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss,weights >/dev/null 2>"$T/add.err" || dl_fail "add-run"

# ---- 1: restart under load
dl_serve F --config "$T/cfg.json" serve --workers 2 --node node-F
if dl_wait "two checkpoints stored" 30 dl_sql_ge "SELECT count(*) FROM jobs WHERE state = 'done'" 4; then
    before=$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")
    dl_true "restart while the run is under way ($before of $((N * 2)) jobs done)" [ "$before" -lt $((N * 2)) ]
    if "$ROOT/scripts/pg-local" restart >"$T/restart.out" 2>&1; then dl_ok "PostgreSQL restarted"; else
        dl_fail "pg-local restart"
        cat "$T/restart.out"
    fi
fi
dl_wait "run pr complete" 60 dl_sql_ge "SELECT count(*) FROM jobs WHERE state = 'done'" $((N * 2))
dl_grep "the daemon saw the connection go" "$T/F.log" 'msg="database connection lost"'
dl_grep "the daemon reconnected" "$T/F.log" 'msg="database connection re-established"'
dl_check_complete pr $N 2 "$RPC"
# a claim cut off mid-flight is retried once its lease expires: <= 2 attempts
dl_eq "no job took more than two attempts" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE attempts > 2")"

# ---- 2: LISTEN after the reconnection (poll_s is 30: only NOTIFY is fast)
t0=$SECONDS
"$CKPTD" --config "$T/cfg.json" add-run pr2 --source "file://$T/ck/step{step}" \
    --schedule 10,11 --items loss,weights >/dev/null 2>"$T/add2.err" || dl_fail "add-run pr2"
if dl_wait "run pr2, added after the restart, done well before poll_s" 15 \
    dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'pr2' AND state = 'done'" 4; then
    dl_ok "run pr2 done $((SECONDS - t0)) s after add-run"
fi

# ---- 3: cut off, work announced meanwhile, back: claims at once
dl_sql "CREATE ROLE node_g LOGIN SUPERUSER" >/dev/null
dl_serve G --config "$T/cfg.json" --db "user=node_g" serve --workers 2 --node node-G
dl_wait "node G connected" 20 grep -q 'msg="serving"' "$T/G.log"
dl_sql "ALTER ROLE node_g NOLOGIN" >/dev/null
# F stops taking work so that only G can take run pr3
kill -TERM "$F_PID"
dl_wait_exit "$F_PID" 30
dl_eq "daemon F stopped cleanly" 0 "$DL_STATUS"
dl_sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'node_g'" >/dev/null
dl_wait "node G noticed the loss" 20 grep -q 'msg="database connection lost"' "$T/G.log"
"$CKPTD" --config "$T/cfg.json" add-run pr3 --source "file://$T/ck/step{step}" \
    --schedule 12,13 --items loss,weights >/dev/null 2>"$T/add3.err" || dl_fail "add-run pr3"
dl_sql "ALTER ROLE node_g LOGIN" >/dev/null
t0=$SECONDS
if dl_wait "node G back and run pr3 done well before poll_s" 20 \
    dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'pr3' AND state = 'done'" 4; then
    dl_ok "run pr3 done $((SECONDS - t0)) s after node G may log in again"
fi
dl_grep "node G reconnected" "$T/G.log" 'msg="database connection re-established"'
kill -TERM "$G_PID"
dl_wait_exit "$G_PID" 30
dl_eq "daemon G stopped cleanly" 0 "$DL_STATUS"
dl_check_complete pr2 2 2 "$RPC"
dl_check_complete pr3 2 2 "$RPC"

dl_finish
