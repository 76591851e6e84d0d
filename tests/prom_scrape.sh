#!/bin/bash
# prom_scrape.sh - a real Prometheus, started by this test
# (tests/lib/prom.sh), scrapes `ckptd serve --metrics` every second, and
# its query API answers with what the database holds: up = 1 and the
# target healthy with no scrape error; ckptd_queue_depth{run="held"} = the
# queued jobs of a run held back (not due for an hour);
# ckptd_jobs_done_total = the jobs the node finished (a run of 4 tiny
# checkpoints); after the held run's step 0 is deleted, Prometheus shows
# the new depth within a few scrapes (the node refreshes depths every
# 5 s), and sum(ckptd_queue_depth) = every queued job.  `promtool check
# metrics` passes on the node's /metrics (exit 0, nothing printed).
# Without the prometheus package it says so and is skipped; installed but
# not starting is a failure.  About 20 s (the first scrape waits ~5 s).
# PostgreSQL port 54432, metrics on 127.0.0.1:18702.
. tests/lib/daemon.sh
. tests/lib/prom.sh
# seconds since a `date +%s.%N` reading
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
if ! pl_can_run; then
    echo "SKIP: prom_scrape: $PL_WHY"
    exit 0
fi
dl_init prom_scrape 54432
trap 'dl_rc=$?; pl_stop; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
dl_ckpts 4
MPORT=18702
add() { "$CKPTD" add-run "$@" >/dev/null 2>>"$T/add.err" || dl_fail "add-run $1: $(cat "$T/add.err")"; }
hold() {
    dl_sql "UPDATE jobs j SET not_before = now() + interval '1 hour' FROM checkpoints c, runs r
            WHERE c.id = j.checkpoint_id AND r.id = c.run_id AND r.name = '$1'" >/dev/null
}
add work --source "file://$T/ck/step{step}" --schedule 0:3:1 --items loss
add held --source "file://$T/ck/step{step}" --schedule 0:2:1 --items loss,weights
hold held
dl_config "$T/cfg.json"
dl_serve S --config "$T/cfg.json" serve --node prom-node --metrics 127.0.0.1:$MPORT
dl_wait "the work run done" 60 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'work' AND state = 'done'" 4

# promtool's lint of the exposition, as the node serves it
curl -fsS -m 5 "http://127.0.0.1:$MPORT/metrics" >"$T/metrics.txt" 2>"$T/curl.err" || dl_fail "GET /metrics: $(cat "$T/curl.err")"
promtool check metrics <"$T/metrics.txt" >"$T/promtool.out" 2>&1
dl_eq "promtool check metrics: exit status" 0 $?
dl_eq "promtool check metrics: nothing flagged" "" "$(cat "$T/promtool.out")"
dl_true "/metrics has queue depths" grep -q '^ckptd_queue_depth{run="held"} 6$' "$T/metrics.txt"

t0=$(date +%s.%N)
pl_start "$T/prom" "127.0.0.1:$MPORT" || { dl_fail "prometheus started"; dl_finish; }
v=$(pl_wait_value 'up{job="t"}' 1 30)
dl_eq "Prometheus scraped the node: up" 1 "$v"
echo "# first sample $(since $t0) s after start"
dl_eq "queue depth of the held run, from the query API" 6 "$(pl_wait_value 'ckptd_queue_depth{run="held"}' 6 10)"
dl_eq "jobs done, from the query API" 4 "$(pl_wait_value 'ckptd_jobs_done_total' 4 10)"
dl_eq "the target healthy, no scrape error" "up ''" "$(curl -fsS "$PL_URL/api/v1/targets" | "$PL_PY" -c 'import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
print(" ".join("%s %r" % (x["health"], x["lastError"]) for x in t))')"

# a change in the database reaches Prometheus: the held run's step 0 dropped
dl_sql "DELETE FROM jobs j USING checkpoints c, runs r
        WHERE c.id = j.checkpoint_id AND r.id = c.run_id AND r.name = 'held' AND c.step = 0" >/dev/null
t1=$(date +%s.%N)
dl_eq "the held run's new depth, from the query API" 4 "$(pl_wait_value 'ckptd_queue_depth{run="held"}' 4 20)"
echo "# seen by Prometheus $(since $t1) s after the change"
dl_eq "sum of the depths = every queued job" "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'queued'")" \
    "$(pl_wait_value 'sum(ckptd_queue_depth)' 4 10)"
pl_stop
kill -TERM "$S_PID"
dl_wait_exit "$S_PID" 30 && dl_eq "the node stopped on SIGTERM" 0 "$DL_STATUS"
dl_finish
