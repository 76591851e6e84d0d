#!/bin/bash
# daemon_status.sh - `ckptd status` shows, per node, what each worker is
# doing.  Two daemons (node-A and node-B, slow workers)
# share a local run of 4 steps and an hf:// run whose weights download
# stalls (scripts/fault-proxy) so it is seen mid-download (three worker
# slots each, so all five checkpoints are held at once).  While they
# work, status lists both nodes (host, pid, version, uptime, heartbeat,
# workers) and under each node exactly the checkpoints the database says
# that node holds: "analysing" lines with job ids, items, attempt and the
# pid of a live worker reading that step's directory, the lease left; the
# stalled download as a "fetching" line with its bytes; the old "workers:"
# section is still there.  `status RUN` keeps the nodes but only that
# run's lines.  node-B killed with -9: STALE after three missed
# heartbeats; node-A stopped with SIGTERM: "stopped".
# PostgreSQL port 54387, HTTP ports 18465-18467.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init status 54387
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/hubck" --port 18465 --cdn-port 18466 --cdn-url http://127.0.0.1:18467 || exit 1
W0=$(sha256sum "$T/hubck/step0/model.safetensors" | cut -d' ' -f1)
hub_rules "$T/cdn.rules" "[{\"match\": \"$W0\", \"times\": 1, \"action\": {\"stall_after\": 3000, \"stall_s\": 25}}]"
hub_proxy P 18467 127.0.0.1:18466 "$T/cdn.rules" "$T/p.log" || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_HOME=$T/hf-none
dl_ckpts 4
dl_wrapper "$T/slow.sh" '[ -n "$DIR" ] && "$SLEEP" 12'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/slow.sh\"" '"lease_s": 4' '"fetch_low_speed_s": 60'
"$CKPTD" --config "$T/cfg.json" add-run loc --source "file://$T/ck/step{step}" --schedule 0:3:1 --items loss \
    >/dev/null 2>"$T/add.err" || dl_fail "add-run loc"
"$CKPTD" --config "$T/cfg.json" add-run hubrun --source "hf://$H_HUB_REPO" --schedule 0 --items weights \
    >/dev/null 2>>"$T/add.err" || dl_fail "add-run hubrun"
dl_sql "UPDATE jobs SET not_before = now() + interval '1 hour'" >/dev/null
dl_serve A --config "$T/cfg.json" serve --workers 3 --node node-A
dl_serve B --config "$T/cfg.json" serve --workers 3 --node node-B
dl_wait "daemon A serving" 30 grep -q 'msg="serving"' "$T/A.log" &&
    dl_wait "daemon B serving" 30 grep -q 'msg="serving"' "$T/B.log"
dl_sql "UPDATE jobs SET not_before = now(); NOTIFY ckptd_jobs" >/dev/null

# four analysing, one stalled mid-download
phases() {
    dl_sql "SELECT string_agg(a->>'phase', ',' ORDER BY a->>'phase') FROM nodes, jsonb_array_elements(activity) a
            WHERE a->>'phase' <> 'fetching' OR (a->>'bytes_done')::bigint > 0"
}
busy() { [ "$(phases)" = "analysing,analysing,analysing,analysing,fetching" ]; }
dl_wait "four workers analysing and a download stalled, in the nodes rows" 40 busy
"$CKPTD" status >"$T/st.out" 2>"$T/st.err"
dl_eq "status exit" 0 $?
sed 's/^/    | /' "$T/st.out"
dl_grep "the workers section is still there" "$T/st.out" '^workers:$'
dl_grep "a nodes section" "$T/st.out" '^nodes:$'
for n in A B; do
    pid=$(eval echo "\$${n}_PID")
    dl_grep "node-$n listed with host, pid, version, uptime, heartbeat" "$T/st.out" \
        "^  node-$n \\(host $(hostname | cut -c1-63), pid $pid, ckptd [0-9.]+\\): up [0-9]+s, heartbeat [0-9]+s ago, 3 workers"
done
# status lines under their node: "NODE<TAB>line"
awk '/^nodes:$/ { on = 1; next } on && /^  [^ ]/ { node = $1 } on && /^    / { print node "\t" $0 }' "$T/st.out" >"$T/st.lines"
dl_sql "SELECT lease_owner, step, id, attempts FROM job_list WHERE run = 'loc' AND state = 'running' ORDER BY step" >"$T/held"
while IFS=$'\t' read -r owner step id att; do
    line=$(grep -E "^$owner"$'\t'"    analysing +loc step $step \\[loss\\] jobs $id, attempt $att, for [0-9]+s \\(worker pid [0-9]+\\), lease [0-9]+s left$" "$T/st.lines")
    if [ -n "$line" ]; then dl_ok "step $step shown under $owner"; else
        dl_fail "step $step (job $id) not shown under $owner"
        continue
    fi
    wpid=$(printf '%s\n' "$line" | sed -n 's/.*(worker pid \([0-9]*\)).*/\1/p')
    args=$(ps -o args= -p "$wpid" 2>/dev/null)
    case "$args" in *"analyze $T/ck/step$step "*) dl_ok "worker pid $wpid is alive and reads step $step" ;;
    *) dl_fail "worker pid $wpid: '$args'" ;; esac
done <"$T/held"
dl_eq "four analysing lines in all" 4 "$(grep -c $'\t    analysing' "$T/st.lines")"
fowner=$(dl_sql "SELECT node FROM fetches WHERE state = 'fetching'")
fjob=$(dl_sql "SELECT id FROM job_list WHERE run = 'hubrun'")
dl_true "the stalled download shown under $fowner" grep -Eq \
    "^$fowner"$'\t'"    fetching +hubrun step 0 \\[weights\\] jobs $fjob, attempt 1, 0\\.[0-9] of [0-9.]+ MB \\([0-9]+%\\) at [0-9.]+ MB/s for [0-9]+s, lease [0-9]+s left$" "$T/st.lines"

"$CKPTD" status hubrun >"$T/st1.out" 2>&1
dl_grep "status RUN keeps both nodes" "$T/st1.out" '^  node-A .*' && dl_grep "... node-B" "$T/st1.out" '^  node-B .*'
dl_eq "status RUN shows only that run's lines" 0 "$(grep -c '^    .* loc step' "$T/st1.out")"
dl_grep "status RUN shows the download" "$T/st1.out" '^    fetching +hubrun step 0'

# node-B dies: STALE after three missed heartbeats (0.5 s each, plus 1 s)
dl_kill9_daemon "$B_PID"
stale() { "$CKPTD" status >"$T/st2.out" 2>&1 && grep -Eq '^  node-B \(.*\): STALE: last heartbeat [0-9]+s ago \(expected every 0\.5s\)' "$T/st2.out"; }
dl_wait "node-B shown STALE" 15 stale && dl_ok "node-B STALE: $(grep '^  node-B (' "$T/st2.out")"
dl_grep "node-A still current" "$T/st2.out" '^  node-A \(.*\): up [0-9]+s, heartbeat [0-9]s ago'

kill -TERM "$A_PID"
dl_wait_exit "$A_PID" 60
dl_eq "node-A stopped cleanly" 0 "$DL_STATUS"
"$CKPTD" status >"$T/st3.out" 2>&1
dl_grep "node-A shown stopped" "$T/st3.out" '^  node-A \(.*\): stopped [0-9]+s ago, 3 workers, [0-9]+ jobs done, 0 failed$'
dl_eq "a stopped node has no activity lines" 0 \
    "$(awk '/^  node-A/ { on = 1; next } /^  [^ ]/ { on = 0 } on && /^    /' "$T/st3.out" | wc -l)"
dl_finish
