#!/bin/bash
# daemon_db_timeouts.sh - the session timeouts ckptd sets on every database
# connection (db_statement_timeout_s, db_idle_in_transaction_timeout_s).
#
# Another session holds an ACCESS EXCLUSIVE lock on `measurements` for 8 s
# while a daemon with db_statement_timeout_s 2 analyses a run of 2
# checkpoints: the daemon's storing of rows waits on the lock, fails after
# about 2 s with PostgreSQL's statement-timeout error (logged), and is
# retried; once the lock is gone the run completes, every measurement
# exactly once, the daemon exits 0.  The settings are applied without a
# warning; a negative timeout in the config is refused (exit 2).  With the
# default (600 s) the same daemon would wait for the lock instead: that
# branch is the rest of the suite.
# PostgreSQL port 54412.
. tests/lib/daemon.sh
dl_init db_timeouts 54412
dl_migrate
dl_ckpts 2
C=("$CKPTD" --config "$T/cfg.json")

dl_config "$T/bad.json" '"db_statement_timeout_s": -1'
"$CKPTD" --config "$T/bad.json" status >/dev/null 2>"$T/bad.err"
dl_eq "negative db_statement_timeout_s: exit 2" 2 $?
dl_grep "... saying which setting" "$T/bad.err" "db_statement_timeout_s"

dl_config "$T/cfg.json" '"db_statement_timeout_s": 2' '"db_idle_in_transaction_timeout_s": 30'
"${C[@]}" add-run r --source "file://$T/ck/step{step}" --schedule 0,1 --items weights \
    >/dev/null 2>"$T/add.err" || { dl_fail "add-run"; cat "$T/add.err"; dl_finish; }

# the lock, held 8 s by a session of its own
psql -X -q -v ON_ERROR_STOP=1 \
    -c "BEGIN; LOCK TABLE measurements IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT;" \
    >/dev/null 2>"$T/lock.err" &
LOCK_PID=$!
dl_wait "the lock is held" 20 dl_sql_ge \
    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
     WHERE c.relname = 'measurements' AND l.mode = 'AccessExclusiveLock' AND l.granted" 1
t0=$SECONDS
dl_serve S --config "$T/cfg.json" serve --until-idle --node S
dl_wait_exit "$S_PID" 120
dl_eq "daemon exit" 0 "$DL_STATUS"
wait "$LOCK_PID"
dl_eq "the lock holder committed" 0 $?
dl_grep "a statement gave up on the lock" "$T/S.log" "statement timeout"
if [ $((SECONDS - t0)) -ge 8 ]; then dl_ok "the run finished after the lock was released"
else dl_fail "finished in $((SECONDS - t0)) s, before the lock was released"; fi
dl_eq "no warning about the session settings" 0 "$(dl_log_count "$T/S.log" "cannot set the session's timeouts")"
dl_eq "both jobs done" "2" "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
want=$("$WORKER" analyze "$T/ck/step0" --items weights 2>/dev/null | wc -l)
dl_eq "every measurement exactly once" "$((2 * want)) 0" \
    "$(dl_sql "SELECT count(*) || ' ' || (count(*) - count(DISTINCT (step, metric_id, layer, head, idx))) FROM measurements")"
dl_finish
