#!/bin/bash
# bench/queue_bench.sh - the scheduler's costs, against baselines measured in
# the same run on a throwaway PostgreSQL (scripts/pg-local):
#
#  1. ingestion: rows/s through the daemon's path (a worker's COPY text
#     checked, translated and COPYed in the transaction that marks the job
#     done; ingest_ms of the "checkpoint done" log line) against `psql
#     \copy` of the same rows, already translated, into the same table with
#     the same indexes.  A fake worker cats a prepared file of
#     BENCH_INGEST_ROWS rows (default 2,000,000) of one registered metric.
#     The table is emptied and checkpointed before each load.
#  2. claims/s with 1, 4 and 16 concurrent claimers (pgbench), using the two
#     statements of queue_claim() extracted from daemon/work/queue.c at run time
#     (so they cannot drift), on a queue of 20,000 one-job checkpoints;
#     BENCH_CLAIMS claims per measurement (default 6000), the queue re-queued
#     and vacuumed before each.  Baseline: bare single-row UPDATE ...
#     RETURNING transactions at the same concurrency.  pgbench does not redo
#     a claim lost to a race the way queue_claim() does, so claims/s counts
#     jobs actually claimed.
#  3. scheduler overhead per checkpoint: (claim_ms + spawn_ms + ingest_ms) /
#     worker_s from the "checkpoint done" lines of one daemon (1 worker, 1
#     thread, items loss,weights) over 30 tiny and 5 pythia-14m checkpoints.
#
# Medians of BENCH_REPS repeats (default 3; 1 for a smoke test).  Nothing
# passes or fails on timings.  The markdown tables go to stdout and to
# build/bench/queue.md (the overhead run's "checkpoint done" lines to
# build/bench/queue-overhead.log); progress to stderr.  Run from anywhere; needs
# build/bin (make), PostgreSQL's server and pgbench, python3.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=$ROOT/build/bench
MD=$OUT/queue.md
CKPTD=$ROOT/build/bin/ckptd
WORKER=$ROOT/build/bin/ckpt-worker
REPS=${BENCH_REPS:-3}
ROWS=${BENCH_INGEST_ROWS:-2000000}
CLAIMS=${BENCH_CLAIMS:-6000}
QUEUE=20000
NTINY=30
N14M=5

say() { echo "queue_bench: $*" >&2; }
die() { say "$*"; exit 1; }

for f in "$CKPTD" "$WORKER"; do [ -x "$f" ] || die "$f is missing; run make"; done
[ "$CLAIMS" -le "$QUEUE" ] || die "BENCH_CLAIMS must not exceed the queue ($QUEUE)"
PGBENCH=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1)
[ -n "$PGBENCH" ] && [ -x "$PGBENCH" ] || die "pgbench not found (Debian: postgresql-client)"
PY=$(command -v python3) || die "python3 not found"
mkdir -p "$OUT"

T=$(mktemp -d /tmp/ckb-XXXXXX) || exit 1
export CKPTD_VAR=$T PGLOCAL_PORT=54360
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE
DAEMON=
cleanup() {
    [ -n "$DAEMON" ] && kill -9 "$DAEMON" 2>/dev/null
    "$ROOT/scripts/pg-local" destroy >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

"$ROOT/scripts/pg-local" start >"$T/pg-start.out" 2>&1 || { cat "$T/pg-start.out" >&2; die "pg-local start failed"; }
eval "$("$ROOT/scripts/pg-local" env)"
"$CKPTD" migrate >/dev/null 2>&1 || die "ckptd migrate failed"
sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 -c "$1"; }
PGVER=$(sql "SHOW server_version" | cut -d' ' -f1)
CORES=$(nproc)

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
now() { echo "$EPOCHREALTIME"; }
# field NAME: the value of NAME=... in each logfmt line on stdin
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# serve NAME CONFIG: one daemon until the queue is idle; its log in $T/NAME.log
serve() {
    "$CKPTD" --config "$2" serve --until-idle --workers 1 --node "$1" 2>"$T/$1.log" &
    DAEMON=$!
    local end=$((SECONDS + 600))
    while kill -0 "$DAEMON" 2>/dev/null; do
        if [ "$SECONDS" -ge "$end" ]; then
            kill -9 "$DAEMON"
            die "daemon $1 did not finish in 600 s"
        fi
        sleep 0.05
    done
    wait "$DAEMON" || die "daemon $1 failed: $(tail -n 3 "$T/$1.log")"
    DAEMON=
}

# ---------------------------------------------------------------- 1. ingest
say "ingest: $ROWS rows, $REPS repeats"
"$WORKER" battery --json >/dev/null 2>&1 || die "ckpt-worker battery failed"
awk -v n="$ROWS" 'BEGIN { for (i = 0; i < n; i++) printf "loss\t1\tloss_by_pos\t-1\t-1\t%d\t%.17g\n", i, 6.2441905736923218 + i * 1e-7 }' >"$T/rows.txt"
cat >"$T/fake-worker" <<EOF
#!/bin/sh
# analyze: the prepared rows; anything else (battery --json): the real worker
case " \$* " in *" analyze "*) exec cat '$T/rows.txt' ;; esac
exec '$WORKER' "\$@"
EOF
chmod +x "$T/fake-worker"
cat >"$T/ingest.json" <<EOF
{"worker_path": "$T/fake-worker", "spool_dir": "$T/spool", "lease_s": 600, "heartbeat_s": 10,
 "poll_s": 0.5, "worker_threads": 1}
EOF
# the baseline's rows: what ingest_translate makes of the same lines, for a run of its own
"$CKPTD" --config "$T/ingest.json" add-run ing-base --source "file:///nonexistent/step{step}" \
    --schedule 0 --items loss >/dev/null 2>&1 || die "add-run failed"
sql "UPDATE jobs SET state = 'done' WHERE state = 'queued'" >/dev/null # the baseline run is never served
base_run=$(sql "SELECT id FROM runs WHERE name = 'ing-base'")
metric=$(sql "SELECT id FROM metrics WHERE item = 'loss' AND name = 'loss_by_pos' ORDER BY version DESC LIMIT 1")
awk -F '\t' -v OFS='\t' -v run="$base_run" -v m="$metric" '{ print run, 0, m, $4, $5, $6, $7 }' "$T/rows.txt" >"$T/rows.copy"

ingest_daemon() {
    local r=$1 line rows ms
    "$CKPTD" --config "$T/ingest.json" add-run "ing-$r" --source "file:///nonexistent/step{step}" \
        --schedule 0 --items loss >/dev/null 2>&1 || die "add-run ing-$r failed"
    sql "TRUNCATE measurements; CHECKPOINT" >/dev/null
    serve "ingest-$r" "$T/ingest.json"
    line=$(grep 'msg="checkpoint done"' "$T/ingest-$r.log")
    rows=$(echo "$line" | field rows)
    ms=$(echo "$line" | field ingest_ms)
    [ "$rows" = "$ROWS" ] || die "daemon ingest $r: rows=$rows, expected $ROWS"
    [ "$(sql "SELECT count(*) FROM measurements")" = "$ROWS" ] || die "daemon ingest $r: row count wrong"
    awk -v n="$rows" -v ms="$ms" 'BEGIN { printf "%.0f\n", n / (ms / 1000) }' >>"$T/ingest-daemon.txt"
}
ingest_copy() {
    local t0 t1
    sql "TRUNCATE measurements; CHECKPOINT" >/dev/null
    t0=$(now)
    psql -X -q -v ON_ERROR_STOP=1 \
        -c "\\copy measurements (run_id, step, metric_id, layer, head, idx, value) FROM '$T/rows.copy'" ||
        die "psql \\copy failed"
    t1=$(now)
    [ "$(sql "SELECT count(*) FROM measurements")" = "$ROWS" ] || die "\\copy: row count wrong"
    awk -v n="$ROWS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }' >>"$T/ingest-copy.txt"
}
: >"$T/ingest-daemon.txt"
: >"$T/ingest-copy.txt"
for r in $(seq "$REPS"); do # alternate which goes first
    if [ $((r % 2)) = 1 ]; then ingest_daemon "$r"; ingest_copy; else ingest_copy; ingest_daemon "$r"; fi
    say "  repeat $r: daemon $(tail -n 1 "$T/ingest-daemon.txt") rows/s, \\copy $(tail -n 1 "$T/ingest-copy.txt") rows/s"
done
ING_D=$(median <"$T/ingest-daemon.txt")
ING_C=$(median <"$T/ingest-copy.txt")
sql "TRUNCATE measurements" >/dev/null
rm -f "$T/rows.txt" "$T/rows.copy"

# ---------------------------------------------------------------- 2. claims
say "claims: queue of $QUEUE one-job checkpoints, $CLAIMS claims per measurement"
"$PY" - "$ROOT/daemon/work/queue.c" "$T/claim.sql" <<'EOF' || die "cannot extract queue_claim's SQL from daemon/work/queue.c"
# The statements of queue_claim(): every db_exec(db, "..." "...", ...) in
# its body, string literals joined.  $1/$2 become pgbench variables.
import re, sys
src = open(sys.argv[1]).read()
start = src.index("int queue_claim(")
body = src[start:src.index("\n}\n", start)]
stmts = []
for m in re.finditer(r'db_exec\(db,\s*((?:"(?:[^"\\]|\\.)*"\s*)+),', body):
    stmts.append("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))))
if len(stmts) != 2 or "FOR UPDATE" not in stmts[0] or "checkpoint_id" not in stmts[0]:
    sys.exit("expected the claim statement (returning checkpoint_id) and the checkpoint lookup, found %d" % len(stmts))
claim = stmts[0].replace("$1", "('bench-' || :client_id)").replace("$2", "'600'")
info = stmts[1].replace("$1", ":checkpoint_id")
if "$" in claim + info:
    sys.exit("unexpected parameter left")
with open(sys.argv[2], "w") as f:
    f.write(claim + " \\gset\n" + info + ";\n")
EOF
cat >"$T/update.sql" <<'EOF'
\set id random(:lo, :hi)
UPDATE jobs SET attempts = attempts WHERE id = :id RETURNING id;
EOF
"$CKPTD" --config "$T/ingest.json" add-run claims --source "file:///nonexistent/step{step}" \
    --schedule "0:$((QUEUE - 1)):1" --items loss >/dev/null 2>&1 || die "add-run claims failed"
claims_run=$(sql "SELECT id FROM runs WHERE name = 'claims'")
lo=$(sql "SELECT min(j.id) FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id WHERE c.run_id = $claims_run")
hi=$(sql "SELECT max(j.id) FROM jobs j JOIN checkpoints c ON c.id = j.checkpoint_id WHERE c.run_id = $claims_run")
requeue() {
    sql "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL, attempts = 0,
         not_before = now() - interval '1 second' WHERE state = 'running'" >/dev/null
    sql "VACUUM ANALYZE jobs" >/dev/null
    sql "VACUUM ANALYZE checkpoints" >/dev/null
    sql "CHECKPOINT" >/dev/null # no backlog of dirty pages competing with the commits
}
# pgbench_run FILE CLIENTS ARGS...: transactions per second (without
# connection time) of CLAIMS transactions; an aborted run is an error
pgbench_run() {
    local file=$1 n=$2 out
    shift 2
    out=$("$PGBENCH" -n -f "$file" -c "$n" -j "$n" -t $((CLAIMS / n)) "$@" 2>&1)
    if echo "$out" | grep -q 'aborted\|error'; then
        echo "$out" | tail -n 5 >&2
        die "pgbench $file with $n clients failed"
    fi
    echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
declare -A CLAIM UPD
for n in 1 4 16; do
    : >"$T/claim-$n.txt"
    : >"$T/upd-$n.txt"
    for r in $(seq "$REPS"); do
        requeue
        tps=$(pgbench_run "$T/claim.sql" "$n")
        claimed=$(sql "SELECT count(*) FROM jobs WHERE state = 'running'")
        tx=$(((CLAIMS / n) * n))
        # jobs claimed / elapsed, elapsed = transactions / tps
        awk -v c="$claimed" -v tx="$tx" -v tps="$tps" 'BEGIN { printf "%.0f\n", c / (tx / tps) }' >>"$T/claim-$n.txt"
        tps=$(pgbench_run "$T/update.sql" "$n" -D lo="$lo" -D hi="$hi")
        printf '%.0f\n' "$tps" >>"$T/upd-$n.txt"
        say "  $n claimer(s), repeat $r: $(tail -n 1 "$T/claim-$n.txt") claims/s ($claimed of $tx claimed), $(tail -n 1 "$T/upd-$n.txt") bare updates/s"
    done
    CLAIM[$n]=$(median <"$T/claim-$n.txt")
    UPD[$n]=$(median <"$T/upd-$n.txt")
done
sql "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires = NULL WHERE state IN ('queued', 'running')" >/dev/null

# ---------------------------------------------------------------- 3. overhead
say "overhead: $NTINY tiny and $N14M pythia-14m checkpoints"
mkdir -p "$T/tiny" "$T/p14m"
for i in $(seq 0 $((NTINY - 1))); do
    "$WORKER" init "$T/tiny/step$i" --preset tiny --seed "$i" >/dev/null 2>&1 || die "init tiny failed"
done
for i in $(seq 0 $((N14M - 1))); do
    "$WORKER" init "$T/p14m/step$i" --preset pythia-14m --seed "$i" >/dev/null 2>&1 || die "init pythia-14m failed"
done
cat >"$T/ovh.json" <<EOF
{"spool_dir": "$T/spool", "lease_s": 120, "heartbeat_s": 10, "poll_s": 0.5, "worker_threads": 1}
EOF
"$CKPTD" --config "$T/ovh.json" add-run ovh-tiny --source "file://$T/tiny/step{step}" \
    --schedule "0:$((NTINY - 1)):1" --items loss,weights >/dev/null 2>&1 || die "add-run ovh-tiny failed"
"$CKPTD" --config "$T/ovh.json" add-run ovh-14m --source "file://$T/p14m/step{step}" \
    --schedule "0:$((N14M - 1)):1" --items loss,weights >/dev/null 2>&1 || die "add-run ovh-14m failed"
serve overhead "$T/ovh.json"
grep 'msg="checkpoint done"' "$T/overhead.log" >"$OUT/queue-overhead.log" # the raw lines, for a closer look
# per run: overhead ratio, claim_ms, spawn_ms, ingest_ms, worker_s; medians
ovh() {
    grep 'msg="checkpoint done"' "$T/overhead.log" | grep "run=\"$1\"" >"$T/ovh-$1.lines"
    [ "$(wc -l <"$T/ovh-$1.lines")" -gt 0 ] || die "no checkpoint done lines for $1"
    local k
    for k in claim_ms spawn_ms ingest_ms worker_s rows; do field $k <"$T/ovh-$1.lines" | median; done
    paste <(field claim_ms <"$T/ovh-$1.lines") <(field spawn_ms <"$T/ovh-$1.lines") \
          <(field ingest_ms <"$T/ovh-$1.lines") <(field worker_s <"$T/ovh-$1.lines") |
        awk '{ printf "%.6f\n", ($1 + $2 + $3) / 1000 / $4 }' | median
    wc -l <"$T/ovh-$1.lines"
}
read -r -d '' T_CLAIM T_SPAWN T_INGEST T_WORKER T_ROWS T_RATIO T_N < <(ovh ovh-tiny)
read -r -d '' P_CLAIM P_SPAWN P_INGEST P_WORKER P_ROWS P_RATIO P_N < <(ovh ovh-14m)

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "?" }'; }
pct() { awk -v a="$1" 'BEGIN { printf "%.2f%%", a * 100 }'; }
num() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }
{
    echo "## Scheduler queue and ingestion (bench/queue_bench.sh)"
    echo
    echo "PostgreSQL $PGVER (pg-local, fsync on), $CORES cores; medians of $REPS repeats."
    echo
    echo "| measure | ckptd | baseline | ratio |"
    echo "|---|---:|---:|---:|"
    echo "| ingest, rows/s ($(num "$ROWS") rows of one metric; baseline \`psql \\copy\` of the translated rows; goal ≥ 0.8) | $(num "$ING_D") | $(num "$ING_C") | $(ratio "$ING_D" "$ING_C") |"
    for n in 1 4 16; do
        echo "| claims/s, $n concurrent claimer$([ $n = 1 ] || echo s) (queue of $(num $QUEUE); baseline: bare single-row UPDATE/s) | $(num "${CLAIM[$n]}") | $(num "${UPD[$n]}") | $(ratio "${CLAIM[$n]}" "${UPD[$n]}") |"
    done
    echo
    echo "Scheduler overhead per checkpoint, (claim + spawn + ingest) / worker time, one worker with one thread, items loss,weights:"
    echo
    echo "| checkpoints | n | rows | claim ms | spawn ms | ingest ms | worker s | overhead |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    echo "| tiny | $T_N | $T_ROWS | $T_CLAIM | $T_SPAWN | $T_INGEST | $T_WORKER | $(pct "$T_RATIO") |"
    echo "| pythia-14m | $P_N | $P_ROWS | $P_CLAIM | $P_SPAWN | $P_INGEST | $P_WORKER | $(pct "$P_RATIO") |"
} | tee "$MD"
