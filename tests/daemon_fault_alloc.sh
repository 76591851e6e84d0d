#!/bin/bash
# daemon_fault_alloc.sh - runs build/tests/test_daemon_fault_alloc (the
# battery registry, queue_claim and ingest_commit with their Nth allocation
# failing) against a throwaway, freshly migrated PostgreSQL (port 54431).
. tests/lib/daemon.sh
dl_init fault_alloc 54431
dl_migrate
BIN=$(dirname "$(dirname "$WORKER")")/tests/test_daemon_fault_alloc
if [ ! -x "$BIN" ]; then
    dl_fail "$BIN missing: run make unit"
    dl_finish
fi
if CKPTD_TEST_DB="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE" "$BIN"; then
    dl_ok "test_daemon_fault_alloc"
else
    dl_fail "test_daemon_fault_alloc"
fi
dl_finish
