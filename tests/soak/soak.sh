#!/bin/bash
# soak.sh - `make soak`: four ckptd nodes work through one run of about a
# thousand tiny checkpoints while a fault is injected every 5-15 s; about
# ten minutes, not part of `make check`.
#
# Topology (network namespaces sk-PID-*, 10.214.0.0/24, tests/lib/netns.sh):
#
#     sk-PID-db    10.214.0.10  PostgreSQL (scripts/pg-local), port 54398
#     sk-PID-http  10.214.0.11  scripts/hub-serve (hub 18500, CDN 18501) with a
#                               scripts/fault-proxy in front of each (hub
#                               18503, CDN 18502), one rules file for both
#     sk-PID-n1..n4 10.214.0.21-24  `ckptd serve`, 2 workers, prefetch, lease
#                               10 s, own spool and cache (budget 16 MB, about
#                               24 checkpoints); the worker is a wrapper that
#                               sleeps 0.2 s, then runs the real one
#
# The run: SOAK_STEPS (1000) checkpoints of the `tiny` preset, step s being
# step 0's weights with one float changed (so each has its own sha256), as
# an hf:// repository; items loss,weights on an eval set of 8 x 16 tokens
# (90 rows a checkpoint); max_attempts 50.
#
# Every 5-15 s (uniform, from SOAK_SEED) one fault, the kinds taken in
# shuffled rounds so each comes up as often as the others:
#   daemon_kill  a node and its workers killed with SIGKILL, restarted 1-3 s
#                later (same node name, spool and cache: a new owner)
#   worker_kill  a running worker's process group killed with SIGKILL
#   pg_restart   scripts/pg-local restart
#   net_cut      a node's link down for 2-12 s (its leases may expire)
#   http_503     both proxies answer 503 to everything for 2-12 s
# Faults stop when every job is done or after SOAK_FAULT_S (420) seconds;
# the run must then finish within SOAK_FINISH_S (300).  The nodes are
# stopped with SIGTERM.
#
# Asserted at the end: every job done, none dead; each job's rows exactly
# once (per job, its measurements = rows_written; no duplicate key; every
# step the same count); no "duplicate key" in any log; no leaked spool
# file, owner lock, partial download, temporary file or unreferenced blob,
# every snapshot with its manifest, each cache within its budget; each
# daemon incarnation that lived over a minute has its peak VmRSS (sampled
# every second from /proc) within 10% of its value at one minute.  Prints
# the faults injected and the figures.  Needs root (namespaces); without
# it, it says why and fails.
#
# Environment: SOAK_STEPS, SOAK_SEED (default: the pid), SOAK_FAULT_S,
# SOAK_FINISH_S, DL_KEEP=1 keeps the temp dir.
cd "$(dirname "$0")/../.." || exit 1
. tests/lib/daemon.sh
. tests/lib/netns.sh

STEPS=${SOAK_STEPS:-1000}
SEED=${SOAK_SEED:-$$}
FAULT_S=${SOAK_FAULT_S:-420}
FINISH_S=${SOAK_FINISH_S:-300}
ITEMS=loss,weights
BUDGET_MB=16
LEASE=10
RANDOM=$SEED
DL_NAME=soak

if ! ns_usable; then
    echo "soak: cannot run: $NS_WHY"
    exit 1
fi
for f in "$WORKER" "$CKPTD"; do
    [ -x "$f" ] || { echo "soak: $f missing: run make"; exit 1; }
done

HOSTS="db http n1 n2 n3 n4"
NODES="n1 n2 n3 n4"
declare -A ADDR=([db]=10.214.0.10 [http]=10.214.0.11 [n1]=10.214.0.21 [n2]=10.214.0.22 [n3]=10.214.0.23
                 [n4]=10.214.0.24)
declare -A PID INC STARTED
PGPORT_NS=54398
HUB_PORT=18500
CDN_PORT=18501
CDN_PROXY=18502
HUB_PROXY=18503
HUB_STATE=""
SAMPLER=""
PROXIES=""

now() { date +%s.%N; }
T0=$(now)
since() { awk -v t0="$T0" -v t="$(now)" 'BEGIN { printf "%.1f", t - t0 }'; }
say() { echo "# +$(since) s $*"; }

soak_cleanup() {
    local rc=$? p h kids k
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    for h in $NODES; do
        p=${PID[$h]:-}
        [ -n "$p" ] && kill -0 "$p" 2>/dev/null || continue
        kill -STOP "$p" 2>/dev/null
        kids=$(pgrep -P "$p")
        kill -9 "$p" 2>/dev/null
        for k in $kids; do kill -9 -- "-$k" "$k" 2>/dev/null; done
    done
    for p in $PROXIES; do kill "$p" 2>/dev/null; done
    [ -n "$HUB_STATE" ] && ip netns exec "$NS-http" "$ROOT/scripts/hub-serve" stop --state "$HUB_STATE" >/dev/null 2>&1
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
trap soak_cleanup EXIT
trap 'exit 1' INT TERM HUP

T=$(mktemp -d /tmp/cks-XXXXXX) || exit 1
chmod 755 "$T"
export CKPTD_LOG=info
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGPASSWORD
mkdir -p "$T/bin" "$T/current"
ln -s "$(command -v sleep)" "$T/bin/sleep"
say "soak: $T, seed $SEED, $STEPS checkpoints, namespaces sk-$$-*"

ns_build "sk-$$" "$HOSTS" 24 2>"$T/net.err" || { echo "FAIL: cannot build the network:"; cat "$T/net.err"; exit 1; }

# ---- database host
export CKPTD_VAR=$T/db PGLOCAL_PORT=$PGPORT_NS
if ! ip netns exec "$NS-db" env PGLOCAL_LISTEN="${ADDR[db]}" PGLOCAL_TRUST=10.214.0.0/24 \
    "$ROOT/scripts/pg-local" start >"$T/pg-start.out" 2>&1; then
    echo "FAIL: pg-local start in $NS-db"
    cat "$T/pg-start.out"
    exit 1
fi
eval "$("$ROOT/scripts/pg-local" env)" # this script's queries: the unix socket
unset CKPTD_VAR PGLOCAL_PORT
pg_restart() { ip netns exec "$NS-db" env CKPTD_VAR="$T/db" PGLOCAL_PORT=$PGPORT_NS "$ROOT/scripts/pg-local" restart; }
DBNET="host=${ADDR[db]} port=$PGPORT_NS user=ckptd dbname=ckptd"
ip netns exec "$NS-db" "$CKPTD" migrate >"$T/migrate.out" 2>&1 || { echo "FAIL: migrate"; cat "$T/migrate.out"; exit 1; }

# ---- the series: step 0 from init, step s with one float of it changed
mkdir -p "$T/series"
"$WORKER" init "$T/series/step0" --preset tiny --seed 1 >/dev/null 2>&1 || { echo "FAIL: init"; exit 1; }
/usr/bin/python3 - "$T/series" "$STEPS" <<'EOF' || { echo "FAIL: series"; exit 1; }
import json, os, shutil, struct, sys
root, n = sys.argv[1], int(sys.argv[2])
base = open(os.path.join(root, "step0", "model.safetensors"), "rb").read()
hlen = struct.unpack("<Q", base[:8])[0]
header = json.loads(base[8:8 + hlen])
name = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")[0]
at = 8 + hlen + header[name]["data_offsets"][0]
x0 = struct.unpack("<f", base[at:at + 4])[0]
for s in range(1, n):
    d = os.path.join(root, "step%d" % s)
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(root, "step0", "config.json"), os.path.join(d, "config.json"))
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(base[:at] + struct.pack("<f", x0 + 1e-3 * s) + base[at + 4:])
EOF
say "series: $STEPS checkpoints of $(du -cb "$T/series/step0/"* | tail -n 1 | cut -f1) bytes"

# ---- checkpoint server host, a fault-proxy in front of each port
HUB_STATE=$T/hub
ip netns exec "$NS-http" "$ROOT/scripts/hub-serve" start --root "$T/series" --state "$HUB_STATE" \
    --port $HUB_PORT --cdn-port $CDN_PORT --cdn-url "http://${ADDR[http]}:$CDN_PROXY" --host "${ADDR[http]}" \
    >"$T/hub.env" 2>"$T/hub.err" || { echo "FAIL: hub-serve"; cat "$T/hub.err"; exit 1; }
eval "$(grep -E '^[A-Z_]+=' "$T/hub.env" | sed 's/^/H_/')"
rules() { printf '%s\n' "$1" >"$T/rules.tmp" && mv -f "$T/rules.tmp" "$T/rules.json"; }
rules '[]'
proxy() { # proxy NAME LISTEN UPSTREAM_PORT
    ip netns exec "$NS-http" "$ROOT/scripts/fault-proxy" --host "${ADDR[http]}" --listen "$2" \
        --upstream "${ADDR[http]}:$3" --rules "$T/rules.json" --log "$T/$1.log" >"$T/$1.out" 2>"$T/$1.err" &
    PROXIES="$PROXIES $!"
    dl_wait "fault-proxy $1 listening" 10 grep -q listening "$T/$1.out" || { cat "$T/$1.err"; exit 1; }
}
proxy hubproxy $HUB_PROXY $HUB_PORT
proxy cdnproxy $CDN_PROXY $CDN_PORT
ENDPOINT=http://${ADDR[http]}:$HUB_PROXY

# ---- the run, held back until every node serves; a short eval set keeps
# the loss item to 17 rows (and the series the detector reads after each
# checkpoint to 90)
/usr/bin/python3 -c 'import json; print(json.dumps([[(7 * b + 13 * t) % 512 for t in range(16)] for b in range(8)]))' \
    >"$T/eval.json"
RPC=$("$WORKER" --threads 1 analyze "$T/series/step0" --items $ITEMS --eval-tokens "$T/eval.json" 2>/dev/null |
    wc -l | tr -d ' ')
ip netns exec "$NS-db" "$CKPTD" add-run soak --source "hf://$H_HUB_REPO" --schedule "0:$((STEPS - 1)):1" \
    --items $ITEMS --eval-tokens "$T/eval.json" --max-attempts 50 >"$T/add.out" 2>&1 ||
    { echo "FAIL: add-run"; cat "$T/add.out"; exit 1; }
NJOBS=$(dl_sql "SELECT count(*) FROM jobs")
dl_sql "UPDATE jobs SET not_before = now() + interval '1 hour'" >/dev/null

# ---- the nodes
BUDGET_GB=$(awk "BEGIN { printf \"%.20g\", $BUDGET_MB * 1048576 / 1073741824 }")
for h in $NODES; do
    mkdir -p "$T/$h"
    dl_wrapper "$T/$h/worker.sh" '[ -n "$DIR" ] && "$SLEEP" 0.2'
    dl_config "$T/$h/cfg.json" "\"database\": \"$DBNET\"" "\"worker_path\": \"$T/$h/worker.sh\"" \
        "\"spool_dir\": \"$T/$h/spool\"" "\"cache_dir\": \"$T/$h/cache\"" "\"lease_s\": $LEASE" \
        '"heartbeat_s": 1' '"poll_s": 1' '"prefetch": 1' '"workers": 2' '"backoff_base_s": 0.5' \
        '"backoff_max_s": 5' '"fetch_low_speed_s": 5' '"shutdown_grace_s": 30' "\"cache_budget_gb\": $BUDGET_GB"
    INC[$h]=0
done
# start_node H: a new incarnation of H's daemon (log $T/H.INC.log)
start_node() {
    local h=$1 i
    i=$((INC[$h] + 1))
    INC[$h]=$i
    ip netns exec "$NS-$h" env HF_ENDPOINT="$ENDPOINT" HF_HOME="$T/$h/hf" \
        "$CKPTD" --config "$T/$h/cfg.json" serve --node "$h" >"$T/$h.$i.out" 2>"$T/$h.$i.log" &
    PID[$h]=$!
    STARTED[$h]=$(now)
    echo "$i ${PID[$h]} ${STARTED[$h]}" >"$T/current/$h"
}
for h in $NODES; do start_node "$h"; done
for h in $NODES; do
    dl_wait "$h serving" 30 grep -q 'msg="serving"' "$T/$h.1.log" || { tail -n 5 "$T/$h.1.log"; exit 1; }
done

# VmRSS of the current incarnations, every second:
# "epoch host incarnation pid started_epoch kB"
(while :; do
    for f in "$T"/current/*; do
        read -r i p st <"$f" 2>/dev/null || continue
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
        [ -n "$r" ] && echo "$(date +%s.%N) $(basename "$f") $i $p $st $r"
    done
    sleep 1
done) >"$T/rss.samples" 2>/dev/null &
SAMPLER=$!

dl_sql "UPDATE jobs SET not_before = now(); NOTIFY ckptd_jobs" >/dev/null
T_RUN=$(now)
say "released $NJOBS jobs ($STEPS checkpoints x $ITEMS) to $NODES"

# ---- faults
KINDS=(daemon_kill worker_kill pg_restart net_cut http_503)
ROUND=()
nfault=0
done_jobs() {
    local v
    v=$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")
    case "$v" in '' | *[!0-9]*) echo 0 ;; *) echo "$v" ;; esac
}
rand() { echo $(($1 + RANDOM % ($2 - $1 + 1))); } # an integer in [A, B]
pick_node() {
    local n=($NODES)
    echo "${n[$((RANDOM % ${#n[@]}))]}"
}
next_kind() { # the kinds in shuffled rounds
    if [ ${#ROUND[@]} -eq 0 ]; then
        ROUND=("${KINDS[@]}")
        local i j t
        for ((i = ${#ROUND[@]} - 1; i > 0; i--)); do
            j=$((RANDOM % (i + 1)))
            t=${ROUND[$i]}
            ROUND[$i]=${ROUND[$j]}
            ROUND[$j]=$t
        done
    fi
    KIND=${ROUND[0]}
    ROUND=("${ROUND[@]:1}")
}
# fault KIND SPAN: inject it (what lasts ends within SPAN - 2 s); one line
# saying what was done goes to $T/fault.now
fault() {
    local h p d kids k tries
    case $1 in
    daemon_kill)
        h=$(pick_node)
        p=${PID[$h]}
        dl_kill9_daemon "$p"
        d=$(rand 1 3)
        echo "daemon_kill $h pid $p (incarnation ${INC[$h]}), restarted after $d s" >"$T/fault.now"
        sleep "$d"
        start_node "$h" ;;
    worker_kill)
        echo "worker_kill: none running for 5 s" >"$T/fault.now"
        for tries in $(seq 50); do
            h=$(pick_node)
            kids=$(pgrep -P "${PID[$h]}" | head -n 1)
            if [ -n "$kids" ]; then
                kill -9 -- "-$kids" 2>/dev/null
                echo "worker_kill $h worker $kids" >"$T/fault.now"
                break
            fi
            sleep 0.1
        done ;;
    pg_restart)
        if pg_restart >"$T/pg-restart.out" 2>&1; then echo "pg_restart" >"$T/fault.now"; else
            echo "pg_restart FAILED: $(tail -n 1 "$T/pg-restart.out")" >"$T/fault.now"; fi ;;
    net_cut)
        h=$(pick_node)
        d=$(rand 2 $(($2 - 2 < 12 ? $2 - 2 : 12)))
        ns_link "$h" down
        echo "net_cut $h for $d s" >"$T/fault.now"
        sleep "$d"
        ns_link "$h" up ;;
    http_503)
        d=$(rand 2 $(($2 - 2 < 12 ? $2 - 2 : 12)))
        rules '[{"match": ".", "action": {"status": 503}}]'
        echo "http_503 for $d s" >"$T/fault.now"
        sleep "$d"
        rules '[]' ;;
    esac
}
: >"$T/faults.log"
while [ "$(done_jobs)" -lt "$NJOBS" ] &&
    awk -v a="$T_RUN" -v n="$(now)" -v m="$FAULT_S" 'BEGIN { exit !(n - a < m) }'; do
    span=$(rand 5 15)
    t_start=$(now)
    next_kind
    nfault=$((nfault + 1))
    at=$(since)
    fault "$KIND" "$span"
    line="fault $nfault at +$at s: $(cat "$T/fault.now")"
    echo "$line" >>"$T/faults.log"
    say "$line (done $(done_jobs)/$NJOBS)"
    if [ -n "$(dl_sql "SELECT 1 FROM jobs WHERE state = 'dead' LIMIT 1")" ]; then
        dl_fail "a job is dead: $(dl_sql "SELECT id, item, last_error FROM jobs WHERE state = 'dead' LIMIT 1")"
        break
    fi
    left=$(awk -v s="$t_start" -v n="$(now)" -v p="$span" 'BEGIN { l = s + p - n; printf "%.2f", (l > 0 ? l : 0) }')
    sleep "$left"
done
T_FAULTS_END=$(now)
say "faults over: $nfault injected"

# ---- the rest of the run, then an orderly stop
dl_wait "every job done" "$FINISH_S" dl_sql_ge "SELECT count(*) FROM jobs WHERE state = 'done'" "$NJOBS"
T_DONE=$(now)
say "run complete: $(done_jobs)/$NJOBS jobs done"
for h in $NODES; do kill -TERM "${PID[$h]}" 2>/dev/null; done
for h in $NODES; do
    dl_wait_exit "${PID[$h]}" 60
    dl_eq "$h (incarnation ${INC[$h]}) stopped cleanly" 0 "$DL_STATUS"
done
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
SAMPLER=""
T_END=$(now)

# ---- every job done exactly once
dl_eq "jobs done" "$NJOBS" "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
dl_eq "jobs not done" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE state <> 'done'")"
dl_eq "each job's rows stored once (its measurements = rows_written)" 0 "$(dl_sql "
    SELECT count(*) FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id
    LEFT JOIN LATERAL (SELECT count(*) n FROM measurements m JOIN metrics x ON x.id = m.metric_id
                       WHERE m.run_id = c.run_id AND m.step = c.step AND x.item = j.item
                         AND x.version = j.version) s ON true
    WHERE j.rows_written IS NULL OR s.n <> j.rows_written")"
dl_eq "measurements" $((STEPS * RPC)) "$(dl_sql "SELECT count(*) FROM measurements")"
dl_eq "every step exactly $RPC rows" "$STEPS" \
    "$(dl_sql "SELECT count(*) FROM (SELECT step FROM measurements GROUP BY step HAVING count(*) = $RPC) s")"
dl_eq "no duplicate measurement key" 0 "$(dl_sql "SELECT count(*) FROM (SELECT 1 FROM measurements
    GROUP BY run_id, metric_id, layer, head, idx, step HAVING count(*) > 1) d")"
dl_eq "no duplicate key refused in any log" 0 "$(cat "$T"/n?.*.log | grep -c 'duplicate key')"

# ---- no leaked files
for h in $NODES; do
    dl_eq "$h: spool empty" "" "$(ls -A "$T/$h/spool" | grep -v '^\.owners$')"
    dl_eq "$h: no spool owner lock" "" "$(ls -A "$T/$h/spool/.owners")"
    dl_eq "$h: no partial download" "" "$(ls -A "$T/$h/cache/partial")"
    dl_eq "$h: no cache owner lock" "" "$(ls -A "$T/$h/cache/.owners")"
    dl_eq "$h: no temporary file in the cache" "" "$(find "$T/$h/cache" -name '*.tmp*' | head -n 3)"
    /usr/bin/python3 - "$T/$h/cache" $((BUDGET_MB * 1048576)) >"$T/$h/cache.check" <<'EOF'
import json, os, sys
root, budget = sys.argv[1], int(sys.argv[2])
named, problems, snaps, unanalysed = set(), [], 0, 0
for slug in os.listdir(os.path.join(root, "manifests")):
    for f in os.listdir(os.path.join(root, "manifests", slug)):
        m = json.load(open(os.path.join(root, "manifests", slug, f)))
        snaps += 1
        unanalysed += not m.get("analysed")
        if not m.get("analysed") and not m.get("owner"):
            problems.append("unanalysed snapshot without an owner (never evictable) " + slug + "/" + f)
        key = slug + "/" + f[:-5]
        for e in m["files"]:
            named.add(e["sha256"])
            if not os.path.lexists(os.path.join(root, "snapshots", key, e["name"])):
                problems.append("missing link %s/%s" % (key, e["name"]))
for slug in os.listdir(os.path.join(root, "snapshots")):
    for rev in os.listdir(os.path.join(root, "snapshots", slug)):
        if not os.path.exists(os.path.join(root, "manifests", slug, rev + ".json")):
            problems.append("snapshot without manifest %s/%s" % (slug, rev))
blobs = os.listdir(os.path.join(root, "blobs"))
usage = sum(os.lstat(os.path.join(root, "blobs", b)).st_size for b in blobs)
problems += ["unreferenced blob " + b for b in blobs if b not in named]
if usage > budget:
    problems.append("usage %d over the budget %d" % (usage, budget))
print("snapshots=%d unanalysed=%d blobs=%d bytes=%d problems=%d %s"
      % (snaps, unanalysed, len(blobs), usage, len(problems), "; ".join(problems[:3])))
EOF
    dl_grep "$h: cache consistent and within its budget: $(cat "$T/$h/cache.check")" "$T/$h/cache.check" ' problems=0 '
done

# ---- memory: the peak VmRSS after the first minute of an incarnation
# within 10% of its value at one minute
awk '{ k = $2 "." $3; life[k] = $1 - $5; if (!(k in first)) first[k] = $6
       if ($1 - $5 >= 60) { if (!(k in base)) base[k] = $6; if ($6 > peak[k]) peak[k] = $6 } }
     END { for (k in life) printf "%s %.0f %s %s %s\n", k, life[k], first[k],
                                  (k in base) ? base[k] : "-", (k in peak) ? peak[k] : "-" }' \
    "$T/rss.samples" | sort >"$T/rss.table"
nchecked=0
while read -r k life first base peak; do
    if [ "$base" = - ]; then
        echo "# rss $k: lived $life s, under a minute: no baseline (first sample $first kB)"
        continue
    fi
    nchecked=$((nchecked + 1))
    pct=$(awk -v b="$base" -v p="$peak" 'BEGIN { printf "%+.1f", 100 * (p - b) / b }')
    dl_true "rss $k: peak $peak kB within 10% of $base kB at one minute ($pct%, lived $life s)" \
        awk -v b="$base" -v p="$peak" 'BEGIN { exit !(p <= 1.1 * b) }'
done <"$T/rss.table"
dl_true "RSS checked for $nchecked incarnations" [ "$nchecked" -ge 4 ]

# ---- figures
echo "# faults injected ($nfault):"
sed 's/^/#   /' "$T/faults.log"
echo "# faults by kind: $(awk '{ sub(/:$/, "", $6); print $6 }' "$T/faults.log" | sort | uniq -c |
    awk '{ printf "%s=%s ", $2, $1 }')"
dur() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
echo "# run: $STEPS checkpoints, $NJOBS jobs, $((STEPS * RPC)) measurements in $(dur "$T_RUN" "$T_DONE") s" \
    "(faults for $(dur "$T_RUN" "$T_FAULTS_END") s; whole soak $(dur "$T0" "$T_END") s)"
echo "# attempts per job: $(dl_sql "SELECT string_agg(attempts || ':' || n, ' ' ORDER BY attempts)
    FROM (SELECT attempts, count(*) n FROM jobs GROUP BY attempts) s")"
echo "# jobs stored by node: $(dl_sql "SELECT string_agg(done_by || '=' || n, ' ' ORDER BY done_by)
    FROM (SELECT done_by, count(*) n FROM jobs GROUP BY done_by) s")"
count_logs() { cat "$T"/n?.*.log | grep -c "msg=\"$1\""; }
echo "# logged: checkpoint done $(count_logs "checkpoint done"), partly done $(count_logs "checkpoint partly done")," \
    "failed $(count_logs "checkpoint failed"), results dropped (lease lost) $(count_logs "results dropped")," \
    "expired leases returned $(count_logs "expired leases returned to the queue")," \
    "spool sweeps $(count_logs "spool files of a dead daemon removed")," \
    "partial sweeps $(count_logs "cache: partial downloads of a dead daemon removed")," \
    "evictions $(count_logs "cache: evicted")"
echo "# incarnations: $(for h in $NODES; do printf '%s=%s ' "$h" "${INC[$h]}"; done)"
# transition detection after each checkpoint: its cost as the series grow
cat "$T"/n?.*.log | grep 'msg="transitions detected"' |
    sed -E 's/.* step=([0-9]+) .* points=([0-9]+) .* read_ms=([0-9.]+) write_ms=([0-9.]+).*/\1 \2 \3 \4/' |
    sort -n >"$T/detect.samples"
for r in "0 99" "$((STEPS / 2 - 50)) $((STEPS / 2 + 49))" "$((STEPS - 100)) $((STEPS - 1))"; do
    set -- $r
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { print $3 + $4, $2 }' "$T/detect.samples" | sort -g |
        awk -v a="$1" -v b="$2" '{ t[NR] = $1; p += $2 }
            END { if (NR) printf "# detection after steps %d-%d: %d runs, median %.1f ms, %.0f points read each\n",
                  a, b, NR, t[int((NR + 1) / 2)], p / NR }'
done
echo "# rss (node.incarnation, life s, first kB, at one minute kB, peak kB):"
sed 's/^/#   /' "$T/rss.table"
dl_finish
