#!/bin/bash
# cluster_netns.sh - a cluster on one machine: PostgreSQL, a checkpoint
# server and four ckptd nodes, each on its own network-namespace host, and
# a partition and a crash in the middle of a run.
#
# Topology (namespaces ckc-PID-*, addresses in 10.213.0.0/24; nothing in the
# root namespace):
#
#     ckc-PID-sw   bridge br0, one veth port per host
#     ckc-PID-db   10.213.0.10  PostgreSQL (scripts/pg-local) on port 54390,
#                               trusting the subnet; its unix socket serves
#                               this script's own queries, off the network
#     ckc-PID-http 10.213.0.11  scripts/hub-serve: a 40-checkpoint series
#                               (scripts/make-fixture-series) as an hf://
#                               repository, weights redirected to its CDN port
#     ckc-PID-n1..n4 10.213.0.21-24  `ckptd serve --until-idle`, 1 worker,
#                               prefetch 1, lease 10 s, heartbeat 1 s, own
#                               cache and spool; the worker is a wrapper
#                               that sleeps 1.5 s and logs when it ran
#
# Scenario: the run (40 checkpoints, items loss,weights) is released once all
# four nodes serve.  When some checkpoints are stored and n1's worker is
# mid-job, n1's link goes down (the partition); when n2's worker is mid-job,
# n2 and its worker are killed with SIGKILL.  n3 and n4 finish the run.
# Then n1's link comes back and n1 runs its course.
#
# Asserted: every job done, every checkpoint's rows exactly once (count,
# per step, no duplicate key, rows_written); the jobs n1 and n2 held were
# stored by n3 or n4 (jobs.done_by) after those leases expired, on their
# second attempt; n1 noticed the dead connection and the server ended n1's
# session while the partition lasted; back, n1 reconnected, had its
# finished rows refused (lease lost) and stored nothing: no job stored by
# n1 after the cut, the measurement count unchanged.  A timeline is
# printed.  Without root or `ip netns` the test says it is skipped, and why.
. tests/lib/daemon.sh
. tests/lib/netns.sh

if ! ns_usable; then
    echo "SKIP: cluster_netns: $NS_WHY"
    exit 0
fi
for f in "$WORKER" "$CKPTD"; do
    [ -x "$f" ] || { echo "FAIL: $f missing: run make"; exit 1; }
done

DL_NAME=cluster_netns
HOSTS="db http n1 n2 n3 n4"
NODES="n1 n2 n3 n4"
declare -A ADDR=([db]=10.213.0.10 [http]=10.213.0.11 [n1]=10.213.0.21 [n2]=10.213.0.22 [n3]=10.213.0.23
                 [n4]=10.213.0.24)
PGPORT_NS=54390
HUB_PORT=18480
N=40
LEASE=10
HUB_STATE=""
SESS_POLL=""

now() { date +%s.%N; }
T0=$(now)

# Everything this test started, whatever happened: daemons and their
# workers, the servers, stray processes naming $T, the namespaces (their
# veths go with them), the temp dir.
cl_cleanup() {
    local rc=$? p kids k
    [ -n "$SESS_POLL" ] && kill "$SESS_POLL" 2>/dev/null
    for p in $DL_DAEMONS; do
        if kill -0 "$p" 2>/dev/null; then
            kill -STOP "$p" 2>/dev/null
            kids=$(pgrep -P "$p")
            kill -9 "$p" 2>/dev/null
            for k in $kids; do kill -9 -- "-$k" "$k" 2>/dev/null; done
        fi
    done
    [ -n "$HUB_STATE" ] && "$ROOT/scripts/hub-serve" stop --state "$HUB_STATE" >/dev/null 2>&1
    if [ -n "$T" ] && [ -d "$T" ]; then
        CKPTD_VAR=$T/db "$ROOT/scripts/pg-local" destroy >/dev/null 2>&1
        for p in $(pgrep -f -- "$T/"); do
            [ "$p" != $$ ] && kill -9 "$p" 2>/dev/null
        done
    fi
    ns_destroy
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ "${DL_KEEP:-0}" = 1 ]; then echo "# kept $T"; else rm -rf "$T"; fi
    fi
    exit "$rc"
}
trap cl_cleanup EXIT
trap 'exit 1' INT TERM HUP

T=$(mktemp -d /tmp/ckc-XXXXXX) || exit 1
export CKPTD_LOG=info
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGPASSWORD
mkdir -p "$T/bin"
ln -s "$(command -v sleep)" "$T/bin/sleep" # a sleep whose command line names $T
echo "# $DL_NAME: $T, namespaces ckc-$$-*"

# ---- topology (tests/lib/netns.sh)
ns_build "ckc-$$" "$HOSTS" 24 2>"$T/net.err" || { echo "FAIL: cannot build the network:"; cat "$T/net.err"; exit 1; }
dl_ok "network: bridge in $NS-sw, hosts $HOSTS"

# ---- database host
export CKPTD_VAR=$T/db PGLOCAL_PORT=$PGPORT_NS
if ! ip netns exec "$NS-db" env PGLOCAL_LISTEN="${ADDR[db]}" PGLOCAL_TRUST=10.213.0.0/24 \
    "$ROOT/scripts/pg-local" start >"$T/pg-start.out" 2>&1; then
    echo "FAIL: pg-local start in $NS-db"
    cat "$T/pg-start.out" "$("$ROOT/scripts/pg-local" where log)" 2>/dev/null | tail -n 20
    exit 1
fi
eval "$("$ROOT/scripts/pg-local" env)" # this script's queries: the unix socket
unset CKPTD_VAR PGLOCAL_PORT
DBNET="host=${ADDR[db]} port=$PGPORT_NS user=ckptd dbname=ckptd"
# one-shot commands run on the database host, over its unix socket
ip netns exec "$NS-db" "$CKPTD" migrate >"$T/migrate.out" 2>&1 ||
    { echo "FAIL: ckptd migrate"; cat "$T/migrate.out"; exit 1; }

# ---- checkpoint server host
CKPT_WORKER=$WORKER "$ROOT/scripts/make-fixture-series" "$T/series" --steps "$(seq -s, 0 $((N - 1)))" \
    >"$T/fixture.out" 2>&1 || { echo "FAIL: make-fixture-series"; cat "$T/fixture.out"; exit 1; }
HUB_STATE=$T/hub
if ! ip netns exec "$NS-http" "$ROOT/scripts/hub-serve" start --root "$T/series" --state "$HUB_STATE" \
    --port $HUB_PORT --host "${ADDR[http]}" >"$T/hub.env" 2>"$T/hub.err"; then
    echo "FAIL: hub-serve start in $NS-http"
    cat "$T/hub.err"
    exit 1
fi
eval "$(grep -E '^[A-Z_]+=' "$T/hub.env" | sed 's/^/H_/')"
dl_eq "checkpoint server on its host" "http://${ADDR[http]}:$HUB_PORT" "$H_HUB_URL"

# ---- the run
RPC=$("$WORKER" --threads 1 analyze "$T/series/step0" --items loss,weights 2>/dev/null | wc -l | tr -d ' ')
dl_true "rows per checkpoint known ($RPC)" [ "$RPC" -gt 0 ]
ip netns exec "$NS-db" "$CKPTD" add-run cl --source "hf://$H_HUB_REPO" --schedule "0:$((N - 1)):1" \
    --items loss,weights >/dev/null 2>"$T/add.err" || { dl_fail "add-run"; cat "$T/add.err"; }
dl_sql "UPDATE jobs SET not_before = now() + interval '1 hour'" >/dev/null

# ---- the nodes
for h in $NODES; do
    mkdir -p "$T/$h"
    # $T/$h/busy: "start EPOCH" while the wrapper sleeps; jobs: one line a job
    dl_wrapper "$T/$h/worker.sh" "
if [ -n \"\$DIR\" ]; then
    t=\$(date +%s.%N); echo \"start \$t\" >'$T/$h/busy'
    \"\$SLEEP\" 1.5
    echo \"\$t \$(date +%s.%N)\" >>'$T/$h/jobs'; rm -f '$T/$h/busy'
fi"
    dl_config "$T/$h/cfg.json" "\"database\": \"$DBNET\"" "\"worker_path\": \"$T/$h/worker.sh\"" \
        "\"spool_dir\": \"$T/$h/spool\"" "\"cache_dir\": \"$T/$h/cache\"" "\"lease_s\": $LEASE" \
        '"heartbeat_s": 1' '"poll_s": 1' '"prefetch": 1'
    ip netns exec "$NS-$h" env HF_ENDPOINT="$H_HUB_URL" HF_HOME="$T/$h/hf" \
        "$CKPTD" --config "$T/$h/cfg.json" serve --until-idle --node "$h" >"$T/$h.out" 2>"$T/$h.log" &
    eval "${h}_PID=$!"
    DL_DAEMONS="$DL_DAEMONS $!"
done
for h in $NODES; do
    dl_wait "$h serving" 30 grep -q 'msg="serving"' "$T/$h.log" || { tail -n 5 "$T/$h.log"; exit 1; }
done
dl_sql "UPDATE jobs SET not_before = now(); NOTIFY ckptd_jobs" >/dev/null
T_RUN=$(now)

# mid_job H: H holds a running lease and its worker began sleeping < 0.7 s
# ago (looked at last: the caller acts on it at once)
mid_job() {
    local b
    [ "$(dl_sql "SELECT count(*) > 0 FROM jobs WHERE state = 'running' AND lease_owner = '$1'")" = t ] &&
        b=$(sed -n 's/^start //p' "$T/$1/busy" 2>/dev/null) && [ -n "$b" ] &&
        awk -v b="$b" -v n="$(now)" 'BEGIN { exit !(n - b < 0.7) }'
}
# held H: the jobs H holds, "id id ..." and the latest expiry (epoch)
held_ids() { dl_sql "SELECT string_agg(id::text, ' ' ORDER BY id) FROM jobs WHERE state = 'running' AND lease_owner = '$1'"; }
held_until() { dl_sql "SELECT extract(epoch FROM max(lease_expires)) FROM jobs WHERE state = 'running' AND lease_owner = '$1'"; }

# ---- partition: n1 cut off mid-job
cut_ready() { dl_sql_ge "SELECT count(*) FROM jobs WHERE state = 'done'" 8 && mid_job n1; }
dl_wait "4 checkpoints stored and n1 mid-job" 60 cut_ready || exit 1
ns_link n1 down
T_CUT=$(now)
H1=$(held_ids n1)
E1=$(held_until n1)
DONE_AT_CUT=$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")
dl_true "n1 cut off holding jobs $H1 ($DONE_AT_CUT jobs stored before)" [ -n "$H1" ]
# when the server ends n1's session (n1 cannot tell it: its keepalives)
n1_sessions() { [ "$(dl_sql "SELECT count(*) FROM pg_stat_activity WHERE client_addr = '${ADDR[n1]}'")" = 0 ]; }
(until n1_sessions; do sleep 0.2; done; now >"$T/n1_session_gone") &
SESS_POLL=$!

# ---- crash: n2 and its worker killed mid-job
dl_wait "n2 mid-job" 30 mid_job n2 || exit 1
kill -STOP "$n2_PID"
H2=$(held_ids n2)
E2=$(held_until n2)
dl_kill9_daemon "$n2_PID"
T_KILL=$(now)
dl_true "n2 killed holding jobs $H2" [ -n "$H2" ]

# ---- n3 and n4 finish; n1 stays cut off meanwhile
for h in n3 n4; do
    eval "p=\$${h}_PID"
    dl_wait_exit "$p" 120
    dl_eq "$h exit" 0 "$DL_STATUS"
done
T_DONE=$(now)
COUNT_BEFORE=$(dl_sql "SELECT count(*) FROM measurements")
N1_DONE_BEFORE=$(dl_sql "SELECT count(*) FROM jobs WHERE done_by = 'n1'")
dl_check_complete cl $N 2 "$RPC"

# while cut off: n1 saw its connection die; the server ended n1's session
dl_wait "n1 to notice the dead connection" 40 grep -q 'msg="database connection lost"' "$T/n1.log"
dl_wait "the server to end n1's session" 40 test -s "$T/n1_session_gone" && T_SESS=$(cat "$T/n1_session_gone")
dl_true "n1 still running, still cut off" kill -0 "$n1_PID"

# ---- n1 back
ns_link n1 up
T_UP=$(now)
dl_wait_exit "$n1_PID" 60
dl_eq "n1 exit" 0 "$DL_STATUS"
T_N1_EXIT=$(now)
dl_grep "n1 reconnected" "$T/n1.log" 'msg="database connection re-established"'
dl_grep "n1's finished rows refused: lease lost" "$T/n1.log" 'msg="results dropped" .*no longer ours'
dl_eq "measurements unchanged by n1's return" "$COUNT_BEFORE" "$(dl_sql "SELECT count(*) FROM measurements")"
dl_eq "jobs stored by n1 unchanged by its return" "$N1_DONE_BEFORE" "$(dl_sql "SELECT count(*) FROM jobs WHERE done_by = 'n1'")"
dl_eq "no job stored by n1 after the cut" 0 \
    "$(dl_sql "SELECT count(*) FROM jobs WHERE done_by = 'n1' AND finished_at > to_timestamp($T_CUT)")"
dl_check_complete cl $N 2 "$RPC"
dl_eq "no duplicate measurement key" 0 "$(dl_sql "SELECT count(*) FROM (SELECT 1 FROM measurements
    GROUP BY run_id, metric_id, layer, head, idx, step HAVING count(*) > 1) d")"

# ---- the held jobs: taken over after expiry, stored elsewhere
# n1's worker was mid-job at the cut (its own record)
dl_true "n1's worker was mid-job at the cut" awk -v c="$T_CUT" '$1 < c && $2 > c { f = 1 } END { exit !f }' "$T/n1/jobs"
takeover() { # takeover NAME IDS EXPIRY
    local ids
    ids="{$(echo "$2" | tr ' ' ',')}"
    dl_eq "$1's jobs stored by n3/n4" "$(echo "$2" | wc -w)" \
        "$(dl_sql "SELECT count(*) FROM jobs WHERE id = ANY('$ids') AND state = 'done' AND done_by IN ('n3', 'n4')")"
    dl_eq "$1's jobs claimed again only after the lease expired" 0 \
        "$(dl_sql "SELECT count(*) FROM jobs WHERE id = ANY('$ids') AND started_at <= to_timestamp($3)")"
    dl_eq "$1's jobs on their second attempt" "$(echo "$2" | wc -w)" \
        "$(dl_sql "SELECT count(*) FROM jobs WHERE id = ANY('$ids') AND attempts = 2")"
}
takeover n1 "$H1" "$E1"
takeover n2 "$H2" "$E2"
dl_true "expired leases returned by n3 or n4" \
    grep -q 'msg="expired leases returned to the queue"' "$T/n3.log" "$T/n4.log"
dl_eq "no job took more than two attempts" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE attempts > 2")"
dl_eq "jobs stored, by node" "$((N * 2))" "$(dl_sql "SELECT count(*) FROM jobs WHERE done_by IN ('n1', 'n2', 'n3', 'n4')")"
dl_grep "n1 counts a lost lease" "$T/n1.log" 'msg="stopped" node=n1 .*leases_lost=[1-9]'

# ---- timeline (seconds from the start of the test)
logt() { # logt FILE MSG: epoch of the first line with msg="MSG"
    local ts
    ts=$(grep -m1 "msg=\"$2\"" "$1" | sed -n 's/^ts=\([^ ]*\) .*/\1/p')
    [ -n "$ts" ] && date -d "$ts" +%s.%N
}
dbt() { dl_sql "SELECT extract(epoch FROM $1)"; }
ids1="{$(echo "$H1" | tr ' ' ',')}"
ids2="{$(echo "$H2" | tr ' ' ',')}"
{
    echo "released $T_RUN"
    echo "n1_cut $T_CUT"
    echo "n1_lease_expiry $E1"
    echo "n2_killed $T_KILL"
    echo "n2_lease_expiry $E2"
    echo "n1_jobs_claimed_again $(dbt "(SELECT min(started_at) FROM jobs WHERE id = ANY('$ids1'))")"
    echo "n1_jobs_stored $(dbt "(SELECT max(finished_at) FROM jobs WHERE id = ANY('$ids1'))")"
    echo "n2_jobs_claimed_again $(dbt "(SELECT min(started_at) FROM jobs WHERE id = ANY('$ids2'))")"
    echo "n2_jobs_stored $(dbt "(SELECT max(finished_at) FROM jobs WHERE id = ANY('$ids2'))")"
    echo "n1_saw_connection_lost $(logt "$T/n1.log" "database connection lost")"
    echo "server_ended_n1_session ${T_SESS:-}"
    echo "n1_dropped_an_unrenewed_lease $(logt "$T/n1.log" "lease expired unrenewed: stopping the worker, its work dropped")"
    echo "run_complete $(dbt "(SELECT max(finished_at) FROM jobs)")"
    echo "n3_n4_exited $T_DONE"
    echo "n1_link_up $T_UP"
    echo "n1_reconnected $(logt "$T/n1.log" "database connection re-established")"
    echo "n1_rows_refused $(logt "$T/n1.log" "results dropped")"
    echo "n1_exited $T_N1_EXIT"
    echo "end $(now)"
} | awk -v t0="$T0" '$2 != "" { printf "# %7.1f s  %s\n", $2 - t0, $1 }' | sort -k2 -g >"$T/timeline"
echo "# timeline (s since start; lease $LEASE s):"
cat "$T/timeline"
echo "# jobs stored by node: $(dl_sql "SELECT string_agg(done_by || '=' || n, ' ' ORDER BY done_by)
    FROM (SELECT done_by, count(*) n FROM jobs GROUP BY done_by) s")"

dl_finish
