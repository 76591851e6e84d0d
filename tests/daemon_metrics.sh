#!/bin/bash
# daemon_metrics.sh - `ckptd serve --metrics` against a real PostgreSQL and a
# local hub (scripts/hub-serve).  One node works through three runs: an
# hf:// run of 4 steps (bytes over HTTP), a local run of 8 steps where
# step 3's worker always fails (dead after 2 attempts) and step 5's lease
# is taken from the node once while its worker runs, and a run held back
# (its jobs not due) so its queue depth stays known.  Meanwhile
# tests/lib/prom_check.py scrapes /metrics every 0.2 s: every scrape is
# valid text format 0.0.4 and no *_total counter ever goes down.  At the
# end the counters equal the database's truth: jobs done = jobs in state
# done, jobs failed = attempts of the dead jobs, jobs claimed = all
# attempts, leases lost = 1, fetch bytes = the body bytes of every 2xx
# answer in the hub's and CDN's access logs, worker seconds = the stored
# worker_seconds plus the failed workers' (< 0.5 s); queue depth per run
# label = the queued jobs of that run.  /healthz: 200, then PostgreSQL
# stopped -> 503 within healthz_max_age_s + 2 s with the reason, /metrics
# still answers (database_up 0); PostgreSQL back -> 200 and
# ckptd_db_reconnects_total 1.  Prints the scrape latency (median, max)
# and the daemon's CPU time per scrape.  Also: a non-loopback --metrics is
# refused, a port in use fails the start.
# PostgreSQL port 54385, HTTP ports 18460-18462.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init metrics 54385
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
MPORT=18462
MURL=http://127.0.0.1:$MPORT
MAXAGE=2
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
CHECK="$PY $ROOT/tests/lib/prom_check.py"

CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0,1,2,4 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/hubck" --port 18460 --cdn-port 18461 || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_HOME=$T/hf-none
dl_ckpts 8
# step 3 fails every time; step 5 runs long enough to lose its lease
dl_wrapper "$T/w.sh" 'case "$DIR" in */step3) echo "step 3 refuses" >&2; exit 1 ;; */step5) "$SLEEP" 3 ;; ?*) "$SLEEP" 0.3 ;; esac'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/w.sh\"" '"prefetch": 1' "\"healthz_max_age_s\": $MAXAGE" \
    '"fetch_retries": 1' '"fetch_backoff_base_s": 0.1' '"fetch_backoff_max_s": 0.2'
add() { "$CKPTD" --config "$T/cfg.json" add-run "$@" >/dev/null 2>>"$T/add.err" || dl_fail "add-run $1"; }
add hubrun --source "hf://$H_HUB_REPO" --schedule 0,1,2,4 --items weights
add loc --source "file://$T/ck/step{step}" --schedule 0:7:1 --items loss,weights --max-attempts 2
add later --source "file://$T/ck/step{step}" --schedule 0:5:1 --items loss
dl_sql "UPDATE jobs j SET not_before = now() + interval '1 hour' FROM checkpoints c, runs r
        WHERE c.id = j.checkpoint_id AND r.id = c.run_id AND r.name = 'later'" >/dev/null

# refused before anything starts
"$CKPTD" --config "$T/cfg.json" serve --metrics 0.0.0.0:$MPORT >"$T/r.out" 2>"$T/r.err"
dl_eq "a non-loopback --metrics is refused (usage)" 2 $?
dl_grep "the refusal names the setting" "$T/r.err" 'not a loopback address.*metrics_allow_remote'

NODE='node-m"1\x'
dl_serve S --config "$T/cfg.json" serve --workers 2 --node "$NODE" --metrics 127.0.0.1:$MPORT
healthz() { curl -s -o "$T/hz.body" -w '%{http_code}' -m 5 "$MURL/healthz"; }
code_is() { [ "$(healthz)" = "$1" ]; }
dl_wait "/healthz 200 once the database is reached" 30 code_is 200 && dl_ok "/healthz 200: $(cat "$T/hz.body")"

# a second daemon on the same port does not start
"$CKPTD" --config "$T/cfg.json" serve --node other --metrics 127.0.0.1:$MPORT >"$T/o.out" 2>"$T/o.err"
dl_eq "a port in use fails the start" 1 $?
dl_grep "the failure names the address" "$T/o.err" 'cannot listen on 127.0.0.1:18462'
dl_sql "DELETE FROM nodes WHERE node = 'other'" >/dev/null

$CHECK watch "$MURL/metrics" 0.2 "$T/watch.stop" "$T/watch.json" 2>"$T/watch.err" &
WATCH_PID=$!

# take step 5's lease from the node once while its worker runs
dl_wait "step 5 running" 60 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'loc' AND step = 5 AND state = 'running'" 2
stolen=$(dl_sql "UPDATE jobs j SET lease_owner = 'thief' FROM checkpoints c, runs r
                 WHERE c.id = j.checkpoint_id AND r.id = c.run_id AND r.name = 'loc' AND c.step = 5
                 AND j.state = 'running' RETURNING j.id" | wc -l)
dl_eq "step 5's jobs taken" 2 "$stolen"
settled() {
    [ "$(dl_sql "SELECT count(*) FROM job_list WHERE run IN ('hubrun', 'loc') AND state NOT IN ('done', 'dead')")" = 0 ]
}
dl_wait "runs hubrun and loc settled" 90 settled
dl_eq "step 3 dead" dead "$(dl_sql "SELECT DISTINCT state FROM job_list WHERE run = 'loc' AND step = 3")"
dl_eq "step 5 done after the theft" done "$(dl_sql "SELECT DISTINCT state FROM job_list WHERE run = 'loc' AND step = 5")"

# the queue depths are read every 5 s: wait for a read after the runs settled
scrape() { curl -s -m 5 "$MURL/metrics" >"$T/m.txt" && $CHECK parse "$T/m.txt" >"$T/m.json"; }
val() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.6f" % d[sys.argv[2]] if sys.argv[2] in d else "missing")' "$T/m.json" "$1"; }
ival() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(d[sys.argv[2]]) if sys.argv[2] in d else "missing")' "$T/m.json" "$1"; }
queue_settled() { scrape && [ "$(ival 'ckptd_queue_depth{run="loc"}')" = 0 ] && [ "$(ival 'ckptd_jobs_running{run="loc"}')" = 0 ] &&
    [ "$(ival 'ckptd_slots{phase="run"}')" = 0 ]; }
dl_wait "queue depths read after the runs settled" 20 queue_settled
touch "$T/watch.stop"
wait "$WATCH_PID"
dl_true "the scraper ran" [ -s "$T/watch.json" ]
read -r nscr nerr lat_med lat_max < <($PY -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(d["scrapes"], len(d["errors"]), "%.2f" % d["latency_ms"][0], "%.2f" % d["latency_ms"][1])' "$T/watch.json")
dl_true "at least 20 scrapes during the run ($nscr)" [ "$nscr" -ge 20 ]
dl_eq "every scrape valid, no counter went down" 0 "$nerr"
[ "$nerr" = 0 ] || $PY -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["errors"]))' "$T/watch.json" | head -n 5
echo "# scrape latency during the run: median $lat_med ms, max $lat_max ms over $nscr scrapes"

# counters against the database
scrape || { dl_fail "last scrape invalid"; cat "$T/m.txt" | head; }
dl_eq "jobs done = jobs in state done" "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")" \
    "$(ival ckptd_jobs_done_total)"
dl_eq "jobs failed = attempts of the dead jobs (step 3: 2 jobs x 2)" 4 "$(ival ckptd_jobs_failed_total)"
dl_eq "jobs failed = the database's count" "$(dl_sql "SELECT sum(attempts) FROM jobs WHERE state = 'dead'")" \
    "$(ival ckptd_jobs_failed_total)"
dl_eq "jobs claimed = all attempts" "$(dl_sql "SELECT sum(attempts) FROM jobs")" "$(ival ckptd_jobs_claimed_total)"
dl_eq "leases lost: the one taken" 1 "$(ival ckptd_lease_renewals_lost_total)"
hub_bytes=$(cat "$T/hub/hub.access.log" "$T/hub/cdn.access.log" |
    $PY -c 'import json,sys; print(sum(d["bytes"] for d in map(json.loads, sys.stdin) if 200 <= d["status"] < 300))')
dl_eq "fetch bytes = 2xx body bytes in the hub's and CDN's logs" "$hub_bytes" "$(ival ckptd_fetch_bytes_total)"
weights=$(dl_sql "SELECT sum(f.size) FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id
                  JOIN runs r ON r.id = c.run_id WHERE r.name = 'hubrun'")
dl_true "fetch bytes cover the hub run's files ($weights)" [ "$(ival ckptd_fetch_bytes_total)" -ge "$weights" ]
stored=$(dl_sql "SELECT sum(s) FROM (SELECT max(worker_seconds) AS s FROM jobs WHERE state = 'done' GROUP BY checkpoint_id) x")
ws=$(val ckptd_worker_seconds_total)
dl_true "worker seconds ($ws) = stored ($stored) + the failed workers' (< 0.5 s)" \
    $PY -c 'import sys; d = float(sys.argv[1]) - float(sys.argv[2]); sys.exit(not (-0.002 * 20 <= d < 0.5))' "$ws" "$stored"
ds=$(val ckptd_download_seconds_total)
dl_true "download seconds positive ($ds)" $PY -c 'import sys; sys.exit(not float(sys.argv[1]) > 0)' "$ds"
dl_eq "queue depth of the held-back run = its queued jobs" "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'later' AND state = 'queued'")" \
    "$(ival 'ckptd_queue_depth{run="later"}')"
dl_eq "queue depth of hubrun" 0 "$(ival 'ckptd_queue_depth{run="hubrun"}')"
dl_eq "db reconnects so far" 0 "$(ival ckptd_db_reconnects_total)"
dl_eq "build info names the node (label escaped)" 1 \
    "$(ival "ckptd_build_info{version=\"$("$CKPTD" --version | cut -d' ' -f2)\",node=\"node-m\\\"1\\\\x\"}")"
dl_eq "database up" 1 "$(ival ckptd_database_up)"
dl_eq "nodes row: the same jobs done" "$(ival ckptd_jobs_done_total)" \
    "$(dl_sql "SELECT stats->>'jobs_done' FROM nodes WHERE node = '$(printf '%s' "$NODE" | sed "s/'/''/g")'")"

# scrape cost: 200 scrapes back to back, the daemon's CPU time per scrape
cpu() { awk '{ print $14 + $15 }' "/proc/$S_PID/stat"; }
c0=$(cpu)
t0=$(date +%s.%N)
for i in $(seq 200); do curl -s -o /dev/null "$MURL/metrics"; done
t1=$(date +%s.%N)
c1=$(cpu)
echo "# 200 scrapes: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) * 1000 / 200 }') ms each" \
    "(curl included), daemon CPU $(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (b - a) * 1000 / hz / 200 }') ms per scrape"

# the database goes away
t0=$(date +%s.%N)
"$ROOT/scripts/pg-local" stop >"$T/stop.out" 2>&1
if dl_wait "/healthz 503 after PostgreSQL stopped" $((MAXAGE + 5)) code_is 503; then
    took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    dl_true "503 within healthz_max_age_s + 2 s (${took} s)" awk -v t="$took" -v m="$MAXAGE" 'BEGIN { exit !(t <= m + 2) }'
    dl_grep "503 says why" "$T/hz.body" "no database statement answered for [0-9.]+ s \\(limit healthz_max_age_s $MAXAGE s\\)"
fi
scrape && dl_eq "/metrics answers without the database: database_up" 0 "$(ival ckptd_database_up)"
"$ROOT/scripts/pg-local" start >"$T/start.out" 2>&1 || dl_fail "pg-local start"
dl_wait "/healthz 200 again" 40 code_is 200 && dl_ok "back: $(cat "$T/hz.body")"
scrape
dl_eq "one reconnection counted" 1 "$(ival ckptd_db_reconnects_total)"
dl_grep "the log agrees" "$T/S.log" 'msg="database connection re-established" reconnects=1'

kill -TERM "$S_PID"
dl_wait_exit "$S_PID" 30
dl_eq "daemon stopped cleanly" 0 "$DL_STATUS"
dl_eq "its node row says stopped" t "$(dl_sql "SELECT stopped_at IS NOT NULL FROM nodes WHERE pid = $S_PID")"
dl_finish
