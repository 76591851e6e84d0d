# tests/lib/hub.sh - helpers for tests that download from local servers:
# scripts/hub-serve (nginx speaking the hub protocol) and scripts/fault-proxy.
# Sourced by bash scripts run from the repository root.
#
#     . tests/lib/hub.sh
#     hub_start A "$T/hubA" --root "$T/ck" --port 18200 --token t
#         # sets A_HUB_URL, A_CDN_URL, A_HUB_REPO (A_PLAIN_URL for plain|both)
#     hub_proxy P1 18202 127.0.0.1:18200 "$T/rules.json" "$T/p1.log"
#     hub_rules "$T/rules.json" '[{"match": "resolve", "times": 1,
#                                  "action": {"status": 503}}]'
#     hub_stop "$T/hubA"  # one server
#     hub_stop_all      # in the test's EXIT trap: every server and proxy
#
# Nothing here sleeps for a fixed time to let something happen: waits poll
# with a deadline.  fault-proxy writes a request's log line before the last
# byte of its answer leaves, so the line is there when the client is done;
# nginx writes its line just after the answer: wait with hub_log_lines.

# shellcheck shell=bash
HUB_ROOT=${HUB_ROOT:-$(pwd)}
HUB_STATES=() # state directories (paths may hold spaces)
HUB_PROXY_PIDS=""

# hub_start PREFIX SDIR ARGS...: scripts/hub-serve start --state SDIR ARGS;
# its output lines become PREFIX_NAME=value.  Returns its status.
hub_start() {
    local prefix=$1 sdir=$2 out
    shift 2
    mkdir -p "$sdir"
    if ! out=$("$HUB_ROOT/scripts/hub-serve" start --state "$sdir" "$@" 2>"$sdir.start.err"); then
        echo "hub-serve start failed:" >&2
        sed 's/^/    | /' "$sdir.start.err" >&2
        return 1
    fi
    HUB_STATES+=("$sdir")
    eval "$(printf '%s\n' "$out" | grep -E '^[A-Z_]+=' | sed "s/^/${prefix}_/")"
}

# hub_proxy NAME LISTEN_PORT UPSTREAM RULES LOG: start scripts/fault-proxy in
# the background and wait until it listens; NAME_PID is set.
hub_proxy() {
    local name=$1 port=$2 up=$3 rules=$4 log=$5 pid end
    "$HUB_ROOT/scripts/fault-proxy" --listen "$port" --upstream "$up" --rules "$rules" \
        --log "$log" >"$log.out" 2>"$log.err" &
    pid=$!
    HUB_PROXY_PIDS="$HUB_PROXY_PIDS $pid"
    eval "${name}_PID=$pid"
    end=$((SECONDS + 10))
    until grep -q "listening" "$log.out" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$end" ]; then
            echo "fault-proxy on $port did not start:" >&2
            sed 's/^/    | /' "$log.err" >&2
            return 1
        fi
        sleep 0.05
    done
}

# hub_rules FILE JSON: replace the rules file atomically
hub_rules() {
    printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}

# hub_log_lines FILE N SECONDS: wait until FILE has at least N lines
# (nginx logs a request once its last byte is out, maybe after curl returned)
hub_log_lines() {
    local end=$((SECONDS + $3))
    while [ "$(wc -l <"$1" 2>/dev/null || echo 0)" -lt "$2" ]; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.05
    done
    return 0
}

# hub_stop SDIR: stop one server started by hub_start
hub_stop() {
    "$HUB_ROOT/scripts/hub-serve" stop --state "$1" >/dev/null 2>&1
    local s rest=()
    for s in "${HUB_STATES[@]}"; do [ "$s" = "$1" ] || rest+=("$s"); done
    HUB_STATES=("${rest[@]}")
}

hub_stop_all() {
    local p s
    for p in $HUB_PROXY_PIDS; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    for s in "${HUB_STATES[@]}"; do
        "$HUB_ROOT/scripts/hub-serve" stop --state "$s" >/dev/null 2>&1
    done
    HUB_PROXY_PIDS=""
    HUB_STATES=()
    return 0
}
