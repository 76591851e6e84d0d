#!/bin/bash
# daemon_leftovers.sh - what a daemon killed with SIGKILL leaves behind is
# removed when it restarts, judged by owner locks (daemon/base/owner.h),
# never by age; and two daemons on one cache keep within its budget.
#
# 1. Daemons node-A and node-B share a spool and a cache; an hf:// run's
#    weights downloads stall (scripts/fault-proxy) and the workers wait for
#    a go file, so each daemon has a worker's spool files and a partial
#    download.  A planted owner "ghost" whose pid is alive (this shell)
#    but whose lock nobody holds stands for a reused pid; an operator's
#    own file sits in the spool.  node-A is killed with SIGKILL (its
#    files stay), then restarted: its predecessor's spool files, partial
#    and lock are gone, and the ghost's; node-B's (alive) and the
#    operator's file are untouched.  Then everything completes and, after
#    both stop, the spool holds only the operator's file and the cache no
#    partial and no owner lock.
# 2. Two daemons on one cache whose budget holds one checkpoint but not
#    two, 8 steps over HTTP (an empty HuggingFace cache), a worker that
#    takes a second: the cache's blobs plus partial downloads, sampled
#    every ~20 ms, never exceed the budget; every "room made" line counts the other daemon's reservation;
#    every job is done, its rows once.
# PostgreSQL port 54396, HTTP ports 18490-18494.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init leftovers 54396
SAMPLER=""
trap 'dl_rc=$?; [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0,1,2,3,4,5,6,7 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/hubck" --port 18490 --cdn-port 18491 --cdn-url http://127.0.0.1:18492 || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_HOME=$T/hf-none
unset HF_HUB_OFFLINE
w() { sha256sum "$T/hubck/step$1/model.safetensors" | cut -d' ' -f1; }
hub_rules "$T/cdn.rules" "[{\"match\": \"$(w 1)|$(w 3)\", \"action\": {\"stall_after\": 3000, \"stall_s\": 600}}]"
hub_proxy P 18492 127.0.0.1:18491 "$T/cdn.rules" "$T/p.log" || exit 1

# ---- 1. leftovers of a daemon killed outright
dl_wrapper "$T/gate.sh" 'if [ -n "$DIR" ]; then while [ ! -e "$T/go" ]; do "$SLEEP" 0.1; done; fi'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/gate.sh\"" '"prefetch": 1' '"fetch_low_speed_s": 5'
"$CKPTD" --config "$T/cfg.json" add-run left --source "hf://$H_HUB_REPO" --schedule 0:3:1 --items weights \
    >/dev/null 2>"$T/add.err" || { dl_fail "add-run"; cat "$T/add.err"; }
dl_sql "UPDATE jobs SET not_before = now() + interval '1 hour'" >/dev/null
release() { dl_sql "UPDATE jobs j SET not_before = now() FROM checkpoints c WHERE c.id = j.checkpoint_id AND c.step IN ($1); NOTIFY ckptd_jobs" >/dev/null; }
# has NODE PID: the daemon's spool files (rows, err, status of a worker) and a partial of 3000+ bytes
has_leftovers() {
    [ "$(ls "$T/spool" | grep -c "^$1\.$2\.ck")" -ge 2 ] &&
        [ -n "$(find "$T/cache/partial" -name "$1.$2.*.part" -size +2999c)" ]
}
dl_serve A --config "$T/cfg.json" serve --workers 1 --node node-A
dl_wait "node-A serving" 30 grep -q 'msg="serving"' "$T/A.log"
release 0,1
dl_wait "node-A: a worker waiting and a download stalled" 30 has_leftovers node-A "$A_PID"
dl_serve B --config "$T/cfg.json" serve --workers 1 --node node-B
dl_wait "node-B serving" 30 grep -q 'msg="serving"' "$T/B.log"
release 2,3
dl_wait "node-B: a worker waiting and a download stalled" 30 has_leftovers node-B "$B_PID"
# a ghost: its pid ($$, this shell) is alive, but nobody holds its lock
for d in "$T/spool" "$T/cache"; do : >"$d/.owners/ghost.$$.lock"; done
: >"$T/spool/ghost.$$.ck99.rows"
: >"$T/cache/partial/ghost.$$.x.part"
echo "kept" >"$T/spool/operator-notes.txt"

A1=$A_PID
dl_kill9_daemon "$A_PID"
dl_true "node-A's spool files stay after SIGKILL" has_leftovers node-A "$A1"
dl_true "and its owner locks" test -e "$T/spool/.owners/node-A.$A1.lock" -a -e "$T/cache/.owners/node-A.$A1.lock"
dl_serve A --config "$T/cfg.json" serve --workers 1 --node node-A
dl_wait "node-A serving again" 30 grep -q 'msg="serving"' "$T/A.log"
dl_eq "the killed daemon's spool files are gone" 0 "$(ls "$T/spool" | grep -c "^node-A\.$A1\.")"
dl_eq "its partial download is gone" 0 "$(ls "$T/cache/partial" | grep -c "^node-A\.$A1\.")"
dl_eq "its owner locks are gone" 0 "$(ls "$T/spool/.owners" "$T/cache/.owners" | grep -c "^node-A\.$A1\.")"
dl_eq "the ghost's files and locks are gone (a live pid is not a live owner)" 0 \
    "$(find "$T/spool" "$T/cache" -name "ghost.*" | wc -l)"
dl_true "node-B's files are untouched" has_leftovers node-B "$B_PID"
dl_true "node-B's locks too" test -e "$T/spool/.owners/node-B.$B_PID.lock" -a -e "$T/cache/.owners/node-B.$B_PID.lock"
dl_true "the operator's file is untouched" grep -qx kept "$T/spool/operator-notes.txt"
dl_grep "the spool sweep was logged" "$T/A.log" "msg=\"spool files of a dead daemon removed\" owner=node-A.$A1 files=[23]"
dl_grep "the partial sweep was logged" "$T/A.log" "msg=\"cache: partial downloads of a dead daemon removed\" owner=node-A.$A1 files=1"

# now let it all finish
hub_rules "$T/cdn.rules" '[]'
touch "$T/go"
dl_sql "UPDATE jobs SET lease_expires = now() WHERE lease_owner = 'node-A' AND state = 'running'" >/dev/null
dl_wait "every job done" 90 dl_sql_ge "SELECT count(*) FROM jobs WHERE state = 'done'" 4
kill -TERM "$A_PID" "$B_PID"
dl_wait_exit "$A_PID" 30
dl_wait_exit "$B_PID" 30
dl_eq "the spool holds only the operator's file" "operator-notes.txt" "$(ls "$T/spool")"
dl_eq "no spool owner left" "" "$(ls "$T/spool/.owners")"
dl_eq "no partial left" "" "$(ls "$T/cache/partial")"
dl_eq "no cache owner left" "" "$(ls "$T/cache/.owners")"

# ---- 2. two daemons, one cache, a budget for one checkpoint
# An empty HuggingFace cache: part 1 wrote steps 0-3 through to $T/hf-none,
# and a file found there is linked into ckptd's cache instead of being
# downloaded, outside the download reservations this part measures.
export HF_HOME=$T/hf-part2
SIZE=$(du -cb "$T/hubck/step0/"* | tail -n 1 | cut -f1)
BUDGET=$((SIZE * 3 / 2))
BUDGET_GB=$(awk "BEGIN { printf \"%.20g\", $BUDGET / 1073741824 }")
dl_wrapper "$T/slow.sh" '[ -n "$DIR" ] && "$SLEEP" 1'
for n in C D; do
    dl_config "$T/$n.json" "\"worker_path\": \"$T/slow.sh\"" '"prefetch": 1' "\"cache_dir\": \"$T/shared\"" \
        "\"cache_budget_gb\": $BUDGET_GB"
done
(while :; do
    find "$T/shared/blobs" "$T/shared/partial" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
    sleep 0.02
done) >"$T/du.samples" &
SAMPLER=$!
"$CKPTD" --config "$T/C.json" add-run shared --source "hf://$H_HUB_REPO" --schedule 0:7:1 --items weights \
    >/dev/null 2>"$T/add2.err" || { dl_fail "add-run shared"; cat "$T/add2.err"; }
dl_serve C --config "$T/C.json" serve --workers 1 --until-idle --node node-C
dl_serve D --config "$T/D.json" serve --workers 1 --until-idle --node node-D
dl_wait_exit "$C_PID" 180
dl_eq "node-C exit" 0 "$DL_STATUS"
dl_wait_exit "$D_PID" 60
dl_eq "node-D exit" 0 "$DL_STATUS"
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
SAMPLER=""
RPC=$(dl_sql "SELECT rows_written FROM job_list WHERE run = 'shared' AND step = 0")
dl_check_complete shared 8 1 "$RPC"
dl_true "both daemons stored checkpoints" [ "$(dl_log_count "$T/C.log" "checkpoint done")" -ge 1 ] &&
    [ "$(dl_log_count "$T/D.log" "checkpoint done")" -ge 1 ]
nsamp=$(wc -l <"$T/du.samples")
max=$(sort -n "$T/du.samples" | tail -n 1)
dl_true "sampled the cache ($nsamp samples, max $max bytes)" [ "$nsamp" -ge 20 ] && [ "$max" -gt 0 ]
dl_true "the cache never exceeded the budget (max $max <= $BUDGET)" [ "$max" -le "$BUDGET" ]
over=$(cat "$T/C.log" "$T/D.log" | grep 'msg="cache: room made for a download"' |
    sed -E 's/.* need=([0-9]+) usage=([0-9]+) reserved=([0-9]+) budget=([0-9]+).*/\1 \2 \3 \4/' |
    awk '$1 + $2 + $3 > $4 { n++ } END { print n + 0 }')
dl_eq "room made within the budget every time" 0 "$over"
waits=$(($(dl_log_count "$T/C.log" "cache: waiting for space") + $(dl_log_count "$T/D.log" "cache: waiting for space")))
dl_true "a daemon waited for the other's space ($waits times)" [ "$waits" -ge 1 ]
echo "# shared cache: max $max bytes of budget $BUDGET over $nsamp samples; a checkpoint is $SIZE bytes"
dl_finish
