#!/bin/bash
# daemon_startup_leaks.sh - `ckptd serve` that cannot start releases
# everything it made: built with SANITIZE=address (into build-asan/, the
# daemon only), each way of failing at start must exit with its message
# and LeakSanitizer must report nothing:
#   - the database reachable but not migrated (after the registry, the
#     fetcher, the cache and the connection were made)
#   - the cache directory cannot be made (a path under a regular file)
#   - the artifact directory cannot be made
#   - the metrics address is taken
#   - the worker cannot be run (no registry)
# and, for contrast, a node that starts, is stopped by SIGTERM and exits 0.
. tests/lib/daemon.sh
dl_init startup_leaks 54431

unset MAKEFLAGS MFLAGS MAKELEVEL
if ! make -s -j2 DEPS=0 SANITIZE=address BUILD=build-asan build-asan/bin/ckptd >"$T/build.log" 2>&1; then
    dl_fail "build ckptd with SANITIZE=address"
    tail -n 20 "$T/build.log"
    dl_finish
fi
ASAN_CKPTD=$ROOT/build-asan/bin/ckptd
DB="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE"

# The leaks that count are those allocated by ckptd's own code (a frame in
# daemon/ or common/).  use_globals=0: an object reachable only from a
# global (the server's static state) counts as leaked too; the libraries'
# own global allocations (libpq, curl, GnuTLS, p11-kit) then appear as
# well, with no frame of ours, and are not counted.
ours() {
    awk '/^(Direct|Indirect) leak/ { rec = $0; keep = 0; inrec = 1; next }
         inrec && / in [^ ]+ (daemon|common)\/[^ ]+:[0-9]+/ { keep = 1 }
         inrec { rec = rec "\n" $0 }
         inrec && /^$/ { if (keep) print rec; inrec = 0 }
         END { if (inrec && keep) print rec }' "$1"
}

# run DESC WANT_RC PATTERN CONFIG_EXTRA [SERVE_ARGS...]: once for the exit
# status and the message, once with LeakSanitizer on (its report replaces
# the exit status when a library leaks).  The sanitized ckptd runs the
# normal build's worker.
run() {
    local desc=$1 want=$2 pat=$3 extra=$4
    shift 4
    case "$extra" in *worker_path*) ;; *) extra="${extra:+$extra, }\"worker_path\": \"$WORKER\"" ;; esac
    case "$extra" in *artifact_dir*) ;; *) extra="$extra, \"artifact_dir\": \"$T/art\"" ;; esac
    dl_config "$T/$desc.json" "$extra"
    ASAN_OPTIONS=detect_leaks=0 "$ASAN_CKPTD" --db "$DB" --config "$T/$desc.json" serve --until-idle "$@" \
        >"$T/$desc.log" 2>&1
    dl_eq "$desc: exit status" "$want" "$?"
    dl_grep "$desc: says why" "$T/$desc.log" "$pat"
    ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=use_globals=0 \
        "$ASAN_CKPTD" --db "$DB" --config "$T/$desc.json" serve --until-idle "$@" >"$T/$desc.lsan" 2>&1
    ours "$T/$desc.lsan" >"$T/$desc.ours"
    if [ -s "$T/$desc.ours" ]; then
        dl_fail "$desc: ckptd's own allocations leaked"
        head -n 40 "$T/$desc.ours" | sed 's/^/    | /'
    elif grep -q "ERROR: AddressSanitizer" "$T/$desc.lsan"; then
        dl_fail "$desc: AddressSanitizer error"
        grep -A12 "ERROR: AddressSanitizer" "$T/$desc.lsan" | sed 's/^/    | /'
    else
        dl_ok "$desc: nothing of ckptd's leaked"
    fi
}

touch "$T/file"
run not_migrated 1 "ckptd migrate" ""
dl_migrate
run cache_dir 1 "cannot set up downloads" "\"cache_dir\": \"$T/file/cache\""
run artifact_dir 1 "cannot set up the artifact directory" "\"artifact_dir\": \"$T/file/art\""
run no_worker 1 "cannot read the battery" "\"worker_path\": \"$T/no-such-worker\""

# a port held by another process
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True); time.sleep(60)' >"$T/port" &
HOLDER=$!
for _ in $(seq 100); do [ -s "$T/port" ] && break; sleep 0.1; done
run metrics_taken 1 "cannot serve metrics" "" --metrics "127.0.0.1:$(cat "$T/port")"
kill "$HOLDER" 2>/dev/null
wait "$HOLDER" 2>/dev/null

# a node that starts (nothing queued: --until-idle ends it) exits 0, clean
run started 0 "stopped" ""
dl_finish
