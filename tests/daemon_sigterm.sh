#!/bin/bash
# daemon_sigterm.sh - SIGTERM during a run.  The daemon stops claiming;
# workers that finish within shutdown_grace_s are stored, the others are
# killed (with their process group) and their jobs given back without
# counting the attempt; a second SIGTERM cuts the grace short.  Afterwards
# no job is left `running` under the node's name, no worker process is
# left, and a later daemon completes the run with every job on attempt 1.
. tests/lib/daemon.sh
dl_init sigterm 54348
dl_migrate
N=8
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss,weights)
# the wrapper sleeps for as long as $T/delay says, then runs the worker
dl_wrapper "$T/slow.sh" '[ -n "$DIR" ] && "$SLEEP" "$(cat "$T/delay")"'
"$CKPTD" add-run st --source "file://$T/ck/step{step}" --schedule "0:$((N - 1)):1" \
    --items loss,weights >/dev/null 2>"$T/add.err" || dl_fail "add-run"

running() { dl_sql "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = '$1'"; }
two_running() { [ "$(running "$1")" = 4 ]; }
no_worker_left() { [ -z "$(pgrep -f -- "$T/bin/sleep")" ] && [ -z "$(pgrep -f -- "$T/ck/step")" ]; }
after_stop() { sed -n '/msg="stopping: no new claims"/,$p' "$1"; }

# ---- 1: SIGHUP reloads the config (not the node name); then SIGTERM with
# a grace that passes: workers killed, jobs released
echo 30 >"$T/delay"
dl_config "$T/c1.json" "\"worker_path\": \"$T/slow.sh\"" '"shutdown_grace_s": 1' '"workers": 1'
dl_serve S1 --config "$T/c1.json" serve --node node-1
one_running() { [ "$(running node-1)" = 2 ]; }
if dl_wait "node-1 running one checkpoint" 30 one_running; then
    dl_config "$T/c1.json" "\"worker_path\": \"$T/slow.sh\"" '"shutdown_grace_s": 1' '"workers": 2' \
        '"node": "renamed"'
    kill -HUP "$S1_PID"
    dl_wait "node-1 reloaded its config" 10 grep -q 'msg="config reloaded" workers=2' "$T/S1.log"
    dl_wait "node-1 running two checkpoints after the reload" 30 two_running node-1 &&
        dl_ok "reload: a second worker slot, leases still as node-1"
    echo '{"workers": 2, "wrokers": 3}' >"$T/c1.json"
    kill -HUP "$S1_PID"
    dl_wait "node-1 refused the bad config" 10 grep -q 'msg="config not reloaded".*wrokers' "$T/S1.log"
    dl_true "node-1 still running after the bad config" kill -0 "$S1_PID"
    kill -TERM "$S1_PID"
    t0=$SECONDS
    dl_wait_exit "$S1_PID" 20
    dl_eq "node-1 exit status" 0 "$DL_STATUS"
    dl_true "node-1 stopped within the grace and a little ($((SECONDS - t0)) s)" [ $((SECONDS - t0)) -le 6 ]
fi
dl_grep "node-1 logged the stop" "$T/S1.log" 'msg="stopping: no new claims" running=2'
dl_eq "node-1 released two checkpoints" 2 "$(dl_log_count "$T/S1.log" "worker stopped, jobs released")"
dl_eq "node-1 claimed nothing after SIGTERM" 0 "$(after_stop "$T/S1.log" | grep -c 'msg="worker started"')"
dl_eq "no job running as node-1" 0 "$(running node-1)"
dl_eq "no job running as the reloaded config's node name" 0 "$(running renamed)"
dl_eq "all jobs queued again, attempt not counted" $((N * 2)) \
    "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempts = 0 AND lease_owner IS NULL")"
dl_true "node-1's workers are gone" dl_wait "node-1's workers to go" 5 no_worker_left

# ---- 2: a second SIGTERM shortens a long grace to nothing
dl_config "$T/c2.json" "\"worker_path\": \"$T/slow.sh\"" '"shutdown_grace_s": 60'
dl_serve S2 --config "$T/c2.json" serve --workers 2 --node node-2
if dl_wait "node-2 running two checkpoints" 30 two_running node-2; then
    kill -TERM "$S2_PID"
    dl_wait "node-2 to start draining" 10 grep -q 'msg="stopping: no new claims"' "$T/S2.log"
    kill -TERM "$S2_PID" 2>/dev/null
    t0=$SECONDS
    dl_wait_exit "$S2_PID" 20
    dl_eq "node-2 exit status" 0 "$DL_STATUS"
    dl_true "node-2 stopped at the second SIGTERM ($((SECONDS - t0)) s, grace 60)" [ $((SECONDS - t0)) -le 5 ]
fi
dl_eq "node-2 released two checkpoints" 2 "$(dl_log_count "$T/S2.log" "worker stopped, jobs released")"
dl_eq "no job running as node-2" 0 "$(running node-2)"
dl_true "node-2's workers are gone" dl_wait "node-2's workers to go" 5 no_worker_left

# ---- 3: workers that finish within the grace are stored
echo 1.5 >"$T/delay"
dl_config "$T/c3.json" "\"worker_path\": \"$T/slow.sh\"" '"shutdown_grace_s": 30'
dl_serve S3 --config "$T/c3.json" serve --workers 2 --node node-3
if dl_wait "node-3 running two checkpoints" 30 two_running node-3; then
    kill -TERM "$S3_PID"
    dl_wait_exit "$S3_PID" 30
    dl_eq "node-3 exit status" 0 "$DL_STATUS"
fi
started3=$(dl_log_count "$T/S3.log" "worker started")
dl_true "node-3 was running two or more checkpoints ($started3)" [ "$started3" -ge 2 ]
dl_eq "node-3 stored every checkpoint it started" "$started3" "$(dl_log_count "$T/S3.log" "checkpoint done")"
dl_eq "node-3 released nothing" 0 "$(dl_log_count "$T/S3.log" "worker stopped, jobs released")"
dl_eq "node-3 claimed nothing after SIGTERM" 0 "$(after_stop "$T/S3.log" | grep -c 'msg="worker started"')"
dl_eq "no job running as node-3" 0 "$(running node-3)"
dl_eq "jobs done after node-3" $(($(dl_log_count "$T/S3.log" "checkpoint done") * 2)) \
    "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"

# ---- the rest, by a daemon that is let finish
echo 0 >"$T/delay"
dl_serve S4 --config "$T/c3.json" serve --workers 2 --until-idle --node node-4
dl_wait_exit "$S4_PID" 60
dl_eq "node-4 exit status" 0 "$DL_STATUS"
dl_check_complete st $N 2 "$RPC"
dl_eq "released attempts were not counted: every job on attempt 1" $((N * 2)) \
    "$(dl_sql "SELECT count(*) FROM jobs WHERE attempts = 1")"

dl_finish
