#!/bin/bash
# daemon_deps.sh - runs build/tests/test_daemon_deps (job dependencies in
# the claim, the artifacts table, SAE feature lineages, and the time of a
# lineage recompute) against a throwaway, freshly migrated PostgreSQL.
. tests/lib/daemon.sh
dl_init deps 54376
dl_migrate
BIN=$(dirname "$(dirname "$WORKER")")/tests/test_daemon_deps
if [ ! -x "$BIN" ]; then
    dl_fail "$BIN missing: run make unit"
    dl_finish
fi
if CKPTD_TEST_DB="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE" "$BIN"; then
    dl_ok "test_daemon_deps"
else
    dl_fail "test_daemon_deps"
fi
dl_finish
