#!/bin/bash
# daemon_pg_maxconn.sh - PostgreSQL at max_connections.  The server is
# restarted with max_connections 4 and superuser_reserved_connections 0 (so
# the superuser ckptd has no spare slot), and every slot is taken by psql
# sessions reading their commands from FIFOs; the first of them is the
# test's own channel to the database.  Asserted: a node started then
# cannot connect, says why ("too many clients") and keeps retrying without
# exiting or claiming; when a slot frees it connects and works.  A second
# node started while the slots are full waits the same way.  The first
# node's session is then ended (pg_terminate_backend) while its worker
# runs and the slot taken at once: it cannot reconnect, says so, keeps its
# finished worker's rows in the spool and its jobs under its lease.  When
# slots free both nodes work, and both end with --until-idle once the run
# is done: every job done exactly once, every checkpoint's rows exactly
# once, nothing dead, no attempt lost to the database.  PostgreSQL port
# 54433.
. tests/lib/daemon.sh
dl_init pg_maxconn 54433
dl_migrate
SLOTS=4
{
    echo "max_connections = $SLOTS"
    echo "superuser_reserved_connections = 0"
} >>"$("$ROOT/scripts/pg-local" where data)/postgresql.conf"
"$ROOT/scripts/pg-local" restart >"$T/pg-restart.out" 2>&1 || { cat "$T/pg-restart.out"; exit 1; }

N=10
dl_ckpts $N
RPC=$(dl_rows_per_ckpt weights)
# workers slow enough that the session is ended while one runs
dl_wrapper "$T/worker.sh" '[ -n "$DIR" ] && { touch "$T/inworker"; "$SLEEP" 0.8; }'
dl_config "$T/cfg.json" '"lease_s": 30' '"heartbeat_s": 1' "\"worker_path\": \"$T/worker.sh\""
"$CKPTD" --config "$T/cfg.json" add-run mc --source "file://$T/ck/step{step}" \
    --schedule "$(seq -s, 0 $((N - 1)))" --items weights --max-attempts 2 >/dev/null 2>"$T/add.err" ||
    { dl_fail "add-run"; cat "$T/add.err"; }

# hold I: a psql session reading commands from the FIFO $T/h<I>.fifo, kept
# open for writing by a sleep (no descriptor of this shell stays open, so
# no child inherits one); release I ends the sleep, psql reads EOF and ends.
hold() {
    local i=$1 f=$T/h$1.fifo
    [ -p "$f" ] || mkfifo "$f"
    : >"$T/h$i.out"
    psql -X -q -t -A -v ON_ERROR_STOP=0 <"$f" >>"$T/h$i.out" 2>&1 &
    "$T/bin/sleep" 3600 >"$f" &
    eval "HOLD_$i=\"\${HOLD_$i:-} $!\""
    echo "SET application_name = 'holder$i'; SELECT 'holding $i';" >"$f"
}
release() { eval "kill \$HOLD_$1"; eval "HOLD_$1="; }
holding() { grep -q "^holding $1\$" "$T/h$1.out"; }
# q SQL: one query through holder 1, its output on stdout (markers around
# it tell it apart; q runs in command substitutions, so they keep no state)
q() {
    local id
    id=$(date +%s%N)$RANDOM
    printf '\\echo @@b%s\n%s\n\\echo @@e%s\n' "$id" "$1;" "$id" >"$T/h1.fifo"
    local end=$((SECONDS + 20))
    until grep -q "^@@e$id\$" "$T/h1.out"; do
        [ "$SECONDS" -ge "$end" ] && { echo "q: no answer to $1" >&2; return 1; }
        sleep 0.05
    done
    awk -v s="@@b$id" -v e="@@e$id" 'f && $0 == e { exit } f { print } $0 == s { f = 1 }' "$T/h1.out"
}
q_ge() { local v; v=$(q "$1"); [ -n "$v" ] && [ "$v" -ge "$2" ]; }
full() { psql -X -tAc "SELECT 1" >/dev/null 2>"$T/full.err" && return 1; grep -q "too many clients" "$T/full.err"; }
hold 1
dl_wait "the test's own session" 20 holding 1
for i in $(seq 2 $SLOTS); do hold "$i"; done
for i in $(seq 2 $SLOTS); do dl_wait "slot $i held" 20 holding "$i"; done
dl_true "every slot taken: the server refuses another session" full

# ---- a node that cannot connect waits, says why, claims nothing ----
dl_serve A --config "$T/cfg.json" serve --until-idle --node A
sleep 3
dl_true "node A still running without a connection" kill -0 "$A_PID"
dl_grep "node A says why it cannot connect" "$T/A.log" 'msg="cannot connect to the database; will retry".*too many clients'
dl_eq "nothing claimed" 0 "$(q "SELECT count(*) FROM jobs WHERE state <> 'queued'")"
release $SLOTS
dl_wait "node A connects and works once a slot frees" 30 q_ge "SELECT count(*) FROM jobs WHERE state = 'done'" 1

# ---- a second node waits while every slot is taken ----
dl_serve B --config "$T/cfg.json" serve --until-idle --node B
sleep 2
dl_true "node B still running without a connection" kill -0 "$B_PID"
dl_grep "node B says why it cannot connect" "$T/B.log" 'too many clients'

# ---- node A's session ended mid-run, its slot taken at once ----
# A is stopped while its session is ended and the slot taken (by a new
# holder, or by B), so it cannot win it back; then it goes on without one
a_in_worker() { [ -e "$T/inworker" ] && pgrep -P "$A_PID" >/dev/null; }
rm -f "$T/inworker"
dl_wait "node A has a worker running" 20 a_in_worker
kill -STOP "$A_PID"
q "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ckptd') t" >/dev/null
# the freed slot is taken at once, by a new holder or by node B
slot_taken() { holding 5 || full || { hold 5; false; }; }
hold 5
dl_wait "the freed slot taken" 20 slot_taken
sleep 1.5 # the worker ends meanwhile
kill -CONT "$A_PID"
dl_grep "node A noticed" "$T/A.log" 'msg="database connection lost"'
locked_out() { [ "$(grep -c 'too many clients' "$T/A.log")" -ge 2 ]; }
dl_wait "node A cannot reconnect: every slot taken" 20 locked_out
rows_kept() { ls "$T"/spool/*.rows >/dev/null 2>&1; }
dl_true "node A keeps its finished worker's rows in the spool" rows_kept
dl_eq "its jobs stay running under its lease" 1 \
    "$(q "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = 'A' AND lease_expires > now()")"
done_mid=$(q "SELECT count(*) FROM jobs WHERE state = 'done'")
release 5
release $((SLOTS - 1))
dl_wait_exit "$A_PID" 120
dl_eq "node A exit" 0 "$DL_STATUS"
dl_wait_exit "$B_PID" 120
dl_eq "node B exit" 0 "$DL_STATUS"
dl_eq "every job done" $N "$(q "SELECT count(*) FROM jobs WHERE state = 'done'")"
dl_eq "nothing dead" 0 "$(q "SELECT count(*) FROM jobs WHERE state = 'dead'")"
dl_eq "no attempt lost to the database" $N "$(q "SELECT count(*) FROM jobs WHERE attempts = 1")"
dl_eq "every checkpoint's rows exactly once" "$N" \
    "$(q "SELECT count(*) FROM (SELECT step FROM measurements GROUP BY step HAVING count(*) = $RPC) s")"
dl_eq "rows in all" $((N * RPC)) "$(q "SELECT count(*) FROM measurements")"
dl_grep "node A reconnected" "$T/A.log" 'msg="database connection re-established"'
for i in $(seq 1 $((SLOTS - 2))); do release "$i"; done
dl_finish
