# tests/lib/prom.sh - a throwaway Prometheus scraping loopback targets, for
# tests.  Sourced by bash.
#
#     . tests/lib/prom.sh
#     pl_can_run || { echo "SKIP: $PL_WHY"; exit 0; }     # not installed
#     pl_start "$T/prom" 127.0.0.1:9464 || exit 1  # sets PL_URL, PL_PID
#     pl_wait_value 'up{job="t"}' 1 20     # poll the HTTP API until it says 1
#     pl_query 'some_metric_total'         # the first sample's value
#     pl_stop
#
# Scrape and evaluation interval 1 s (PL_INTERVAL), job name "t", the TSDB
# in DIR/data, the log in DIR/prometheus.log, the listen address
# 127.0.0.1 on a free port (PL_PORT to choose).  The configuration is
# checked with `promtool check config` first.  Prometheus (2.42, Debian 12)
# is ready in under a second, but its first scrape waits for the
# discovery manager's 5 s update throttle, which no flag shortens: allow
# 10 s or more for the first sample.  Needs curl and python3 (JSON).

PL_PID=""
PL_URL=""
PL_WHY=""
PL_PY=/usr/bin/python3
[ -x "$PL_PY" ] || PL_PY=python3

# pl_can_run: 0 when prometheus and promtool are installed, else 1 with
# the reason in PL_WHY.
pl_can_run() {
    local b
    for b in prometheus promtool curl; do
        if ! command -v "$b" >/dev/null 2>&1; then
            PL_WHY="$b not installed (Debian package prometheus: scripts/install-deps)"
            return 1
        fi
    done
    return 0
}

pl_free_port() {
    "$PL_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pl_start DIR TARGET...: write DIR/prometheus.yml, start, wait for /-/ready
# (30 s at most).  1 with the log printed on failure, nothing left running.
pl_start() {
    local d=$1 i targets="" t port
    shift
    port=${PL_PORT:-$(pl_free_port)}
    for t in "$@"; do targets+="${targets:+, }'$t'"; done
    mkdir -p "$d/data" || return 1
    cat >"$d/prometheus.yml" <<YML
global:
  scrape_interval: ${PL_INTERVAL:-1s}
  scrape_timeout: ${PL_INTERVAL:-1s}
  evaluation_interval: ${PL_INTERVAL:-1s}
scrape_configs:
  - job_name: t
    metrics_path: /metrics
    static_configs:
      - targets: [$targets]
YML
    if ! promtool check config "$d/prometheus.yml" >"$d/check-config.out" 2>&1; then
        echo "promtool check config failed:"
        cat "$d/check-config.out"
        return 1
    fi
    PL_URL=http://127.0.0.1:$port
    prometheus --config.file="$d/prometheus.yml" --storage.tsdb.path="$d/data" \
        --web.listen-address="127.0.0.1:$port" --log.level=warn >"$d/prometheus.log" 2>&1 &
    PL_PID=$!
    for ((i = 0; i < 300; i++)); do
        curl -fs "$PL_URL/-/ready" >/dev/null 2>&1 && return 0
        kill -0 "$PL_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "prometheus did not become ready:"
    tail -n 20 "$d/prometheus.log"
    pl_stop
    return 1
}

# pl_query PROMQL: the value of the first sample of an instant query (empty
# when there is none); 1 when the query fails
pl_query() {
    curl -fsS -G "$PL_URL/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
        "$PL_PY" -c 'import json, sys
d = json.load(sys.stdin)
if d.get("status") != "success": sys.exit(1)
r = d["data"]["result"]
print(r[0]["value"][1] if r else "")'
}

# pl_wait_value PROMQL WANT SECONDS: poll until the query's value is WANT
# ("any": until it has one); prints the last value; 1 at the deadline
pl_wait_value() {
    local i v=""
    for ((i = 0; i < $3 * 5; i++)); do
        v=$(pl_query "$1")
        if [ -n "$v" ] && { [ "$2" = any ] || [ "$v" = "$2" ]; }; then
            echo "$v"
            return 0
        fi
        sleep 0.2
    done
    echo "${v:-none}"
    return 1
}

# pl_stop: SIGTERM (a clean TSDB close), SIGKILL after 10 s.  Idempotent.
pl_stop() {
    local i
    [ -n "$PL_PID" ] || return 0
    kill -TERM "$PL_PID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$PL_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$PL_PID" 2>/dev/null
    wait "$PL_PID" 2>/dev/null
    PL_PID=""
}
