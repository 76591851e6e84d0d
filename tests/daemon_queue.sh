#!/bin/bash
# daemon_queue.sh - runs build/tests/test_daemon_queue (queue_claim under 8
# concurrent claimers, the lease life cycle, ingest_commit's exactly-once
# rules) against a throwaway, freshly migrated PostgreSQL.
. tests/lib/daemon.sh
dl_init queue 54349
dl_migrate
BIN=$(dirname "$(dirname "$WORKER")")/tests/test_daemon_queue
if [ ! -x "$BIN" ]; then
    dl_fail "$BIN missing: run make unit"
    dl_finish
fi
if CKPTD_TEST_DB="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE" "$BIN"; then
    dl_ok "test_daemon_queue"
else
    dl_fail "test_daemon_queue"
fi
dl_finish
