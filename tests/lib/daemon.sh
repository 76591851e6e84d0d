# tests/lib/daemon.sh - helpers for the integration tests of ckptd
# (tests/daemon_*.sh), sourced by bash scripts run from the repository root.
#
# Each test gets its own temporary directory, its own throwaway PostgreSQL
# from scripts/pg-local for it (CKPTD_VAR=$T: in it, or under
# /var/tmp/ckptd-pg when run as root), and a trap that stops every daemon and worker
# it started and destroys the database, whatever happens.
#
#     . tests/lib/daemon.sh
#     dl_init two_nodes 54343          # temp dir, pg-local, libpq env, trap
#     dl_migrate
#     dl_config "$T/cfg.json" '"lease_s": 3'
#     dl_ckpts 10                      # $T/ck/step0 .. step9, tiny presets
#     dl_serve A --config "$T/cfg.json" serve --until-idle --node A
#     dl_wait_exit "$A_PID" 60 || ...
#     dl_eq "all jobs done" 20 "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
#     dl_finish
#
# Every wait has a deadline; nothing here sleeps for a fixed time to let
# something happen.  Variables set: T (temp dir), ROOT, CKPTD, WORKER,
# DL_NAME; per daemon NAME_PID and the log $T/NAME.log.

set -u
export LC_ALL=C

ROOT=$(pwd)
WORKER=${CKPT_WORKER:-build/bin/ckpt-worker}
case "$WORKER" in /*) ;; *) WORKER=$ROOT/$WORKER ;; esac
CKPTD=$(dirname "$WORKER")/ckptd
DL_PASSED=0
DL_FAILED=0
DL_DAEMONS=""
T=""

dl_ok() { DL_PASSED=$((DL_PASSED + 1)); echo "ok: $*"; }
dl_fail() { DL_FAILED=$((DL_FAILED + 1)); echo "FAIL: $*"; }

# dl_eq DESC WANT GOT
dl_eq() {
    if [ "$2" = "$3" ]; then dl_ok "$1 ($3)"; else dl_fail "$1: want '$2', got '$3'"; fi
}

# dl_true DESC CMD...: CMD must succeed
dl_true() {
    local d=$1
    shift
    if "$@"; then dl_ok "$d"; else dl_fail "$d"; fi
}

# dl_grep DESC FILE PATTERN (extended regexp)
dl_grep() {
    if grep -Eq -- "$3" "$2"; then dl_ok "$1"; else
        dl_fail "$1: no /$3/ in $2"
        tail -n 5 "$2" | sed 's/^/    | /'
    fi
}

# dl_init NAME PORT: temp dir, pg-local on its own socket, trap.
dl_init() {
    DL_NAME=$1
    for f in "$WORKER" "$CKPTD"; do
        if [ ! -x "$f" ]; then
            echo "FAIL: $f missing: run make"
            exit 1
        fi
    done
    T=$(mktemp -d /tmp/ckd-XXXXXX) || exit 1 # mode 700: pg-local copes
    export CKPTD_VAR=$T PGLOCAL_PORT=$2 CKPTD_LOG=info
    unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGPASSWORD
    trap dl_cleanup EXIT
    trap 'exit 1' INT TERM HUP
    mkdir -p "$T/bin" "$T/ck" "$T/spool"
    # a sleep whose command line names $T, so cleanup can find it
    ln -s "$(command -v sleep)" "$T/bin/sleep"
    if ! "$ROOT/scripts/pg-local" start >"$T/pg-start.out" 2>&1; then
        echo "FAIL: pg-local start"
        cat "$T/pg-start.out" "$("$ROOT/scripts/pg-local" where log)" 2>/dev/null | tail -n 20
        exit 1
    fi
    eval "$("$ROOT/scripts/pg-local" env)"
    echo "# $DL_NAME: $T, PostgreSQL on $PGHOST port $PGPORT"
}

# Stop what this test started: daemons (and their workers' process
# groups), then the database, then whatever still names $T on its command
# line (orphaned workers of a daemon killed on purpose).
dl_cleanup() {
    local rc=$? p kids
    for p in $DL_DAEMONS; do
        if kill -0 "$p" 2>/dev/null; then
            kill -STOP "$p" 2>/dev/null
            kids=$(pgrep -P "$p")
            kill -9 "$p" 2>/dev/null
            for k in $kids; do kill -9 -- "-$k" "$k" 2>/dev/null; done
        fi
    done
    if [ -n "$T" ] && [ -d "$T" ]; then
        "$ROOT/scripts/pg-local" destroy >/dev/null 2>&1
        for p in $(pgrep -f -- "$T/"); do
            [ "$p" != $$ ] && kill -9 "$p" 2>/dev/null
        done
        if [ "${DL_KEEP:-0}" = 1 ]; then echo "# kept $T"; else rm -rf "$T"; fi
    fi
    exit "$rc"
}

# dl_sql SQL: one value or rows (unaligned, tab-separated), errors fatal to
# the statement only.
dl_sql() { psql -X -q -t -A -F "$(printf '\t')" -v ON_ERROR_STOP=1 -c "$1" 2>&1; }

dl_migrate() {
    if ! "$CKPTD" migrate >"$T/migrate.out" 2>&1; then
        echo "FAIL: ckptd migrate"
        cat "$T/migrate.out"
        exit 1
    fi
}

# dl_config FILE [MEMBER...]: a config with small timings, its cache in $T
# and prefetch off (the queue tests count one claimed checkpoint per worker).  Each MEMBER is
# one JSON member ('"lease_s": 10'); a default is left out when a MEMBER
# names its key (ckptd refuses duplicate keys).
dl_config() {
    local f=$1 k body=""
    shift
    local extras="$*"
    for kv in '"lease_s": 3' '"heartbeat_s": 0.5' '"poll_s": 0.5' '"backoff_base_s": 0.2' \
              '"backoff_max_s": 1' "\"spool_dir\": \"$T/spool\"" '"worker_threads": 1' \
              '"shutdown_grace_s": 5' '"worker_timeout_s": 120' "\"cache_dir\": \"$T/cache\"" '"prefetch": 0'; do
        k=${kv%%:*}
        case "$extras" in *"$k"*) continue ;; esac
        body="$body${body:+, }$kv"
    done
    for kv in "$@"; do body="$body${body:+, }$kv"; done
    echo "{$body}" >"$f"
}

# dl_ckpts N [FIRST]: tiny checkpoints $T/ck/stepI for I in FIRST..FIRST+N-1
dl_ckpts() {
    local n=$1 i=${2:-0} last
    last=$((i + n - 1))
    for i in $(seq "$i" "$last"); do
        [ -d "$T/ck/step$i" ] && continue
        if ! "$WORKER" init "$T/ck/step$i" --preset tiny --seed "$i" >/dev/null 2>"$T/init.err"; then
            echo "FAIL: ckpt-worker init step$i"
            cat "$T/init.err"
            exit 1
        fi
    done
}

# dl_rows_per_ckpt ITEMS: rows the real worker writes for one tiny checkpoint
dl_rows_per_ckpt() {
    dl_ckpts 1
    "$WORKER" --threads 1 analyze "$T/ck/step0" --items "$1" 2>/dev/null | wc -l | tr -d ' '
}

# dl_wrapper FILE BODY: a worker_path script.  BODY runs with DIR set to the
# checkpoint directory of an `analyze` call (empty for `battery --json`),
# REAL the real worker, T the temp dir, SLEEP a sleep that names $T; then the
# real worker is exec'd with the same arguments.
dl_wrapper() {
    cat >"$1" <<EOF
#!/bin/sh
REAL='$WORKER'
T='$T'
SLEEP='$T/bin/sleep'
DIR=
prev=
for a in "\$@"; do [ "\$prev" = analyze ] && DIR=\$a; prev=\$a; done
$2
exec "\$REAL" "\$@"
EOF
    chmod +x "$1"
}

# dl_serve NAME ARGS...: start `ckptd ARGS...` in the background, log to
# $T/NAME.log, pid in NAME_PID.
dl_serve() {
    local name=$1
    shift
    "$CKPTD" "$@" >"$T/$name.out" 2>"$T/$name.log" &
    local pid=$!
    eval "${name}_PID=$pid"
    DL_DAEMONS="$DL_DAEMONS $pid"
}

# dl_wait DESC SECONDS CMD...: until CMD succeeds; 1 (and FAIL) at the deadline
dl_wait() {
    local d=$1 secs=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@"; do
        if [ "$SECONDS" -ge "$end" ]; then
            dl_fail "timed out after ${secs}s waiting for: $d"
            return 1
        fi
        sleep 0.1
    done
    return 0
}

# dl_sql_ge SQL N: the query's value is >= N (for dl_wait)
dl_sql_ge() {
    local v
    v=$(dl_sql "$1")
    case "$v" in '' | *[!0-9]*) return 1 ;; esac
    [ "$v" -ge "$2" ]
}

# dl_log_count FILE MSG: lines of a daemon log with msg="MSG"
dl_log_count() { grep -c "msg=\"$2\"" "$1" 2>/dev/null || true; }

# dl_wait_exit PID SECONDS: wait for a background daemon; sets DL_STATUS to
# its exit status.  At the deadline it is killed, FAIL is printed and 1
# returned.
dl_wait_exit() {
    local pid=$1 end=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        # a zombie of ours still answers kill -0: wait reaps it below
        if [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ]; then break; fi
        if [ "$SECONDS" -ge "$end" ]; then
            dl_fail "daemon $pid still running after $2 s; killed"
            kill -9 "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            DL_STATUS=137
            return 1
        fi
        sleep 0.1
    done
    wait "$pid"
    DL_STATUS=$?
    return 0
}

# dl_kill9_daemon PID: SIGKILL a daemon and the process groups of its
# workers (they are group leaders; they would outlive it otherwise).
dl_kill9_daemon() {
    local p=$1 kids k
    kill -STOP "$p" 2>/dev/null # no new worker between the listing and the kill
    kids=$(pgrep -P "$p")
    kill -9 "$p" 2>/dev/null
    for k in $kids; do kill -9 -- "-$k" 2>/dev/null; done
    wait "$p" 2>/dev/null
    return 0
}

# The common end of a run: every job done, every checkpoint's rows exactly
# once.  dl_check_complete RUN NCKPTS NJOBS_PER_CKPT ROWS_PER_CKPT
dl_check_complete() {
    local run=$1 n=$2 jpc=$3 rpc=$4
    dl_eq "$run: jobs done" $((n * jpc)) \
        "$(dl_sql "SELECT count(*) FROM job_list WHERE run = '$run' AND state = 'done'")"
    dl_eq "$run: jobs not done" 0 \
        "$(dl_sql "SELECT count(*) FROM job_list WHERE run = '$run' AND state <> 'done'")"
    dl_eq "$run: measurements" $((n * rpc)) \
        "$(dl_sql "SELECT count(*) FROM measurements m JOIN runs r ON r.id = m.run_id WHERE r.name = '$run'")"
    dl_eq "$run: steps with exactly $rpc rows" "$n" \
        "$(dl_sql "SELECT count(*) FROM (SELECT m.step FROM measurements m JOIN runs r ON r.id = m.run_id
                   WHERE r.name = '$run' GROUP BY m.step HAVING count(*) = $rpc) s")"
    dl_eq "$run: rows_written matches measurements" "$((n * rpc))" \
        "$(dl_sql "SELECT coalesce(sum(rows_written), 0) FROM job_list WHERE run = '$run'")"
}

dl_finish() {
    echo "# $DL_NAME: $DL_PASSED ok, $DL_FAILED failed"
    [ "$DL_FAILED" -eq 0 ]
    exit $?
}
