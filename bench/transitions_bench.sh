#!/bin/bash
# bench/transitions_bench.sh - the transition detector's share of `make
# bench`: build/bench/transitions_bench on 10,000 series of Pythia's 154
# steps (white noise, a third with a change), detection alone and the
# daemon's whole path after a checkpoint lands (detect_run: COPY the run's
# series out, detect, replace their transitions) against a throwaway
# PostgreSQL (scripts/pg-local, port 54374).  Medians of BENCH_REPS
# repetitions (default 5); BENCH_TR_SERIES series (default 10000).  The
# markdown table goes to stdout and build/bench/transitions.md.  Nothing
# passes or fails on timings.  The threshold's calibration, which takes
# minutes, is `build/bench/transitions_bench --calibrate 10000`.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=$ROOT/build/bench/transitions_bench
MD=$ROOT/build/bench/transitions.md
REPS=${BENCH_REPS:-5}
SERIES=${BENCH_TR_SERIES:-10000}
[ -x "$BIN" ] || { echo "transitions_bench.sh: $BIN is missing; run make bench" >&2; exit 1; }
T=$(mktemp -d /tmp/ckb-XXXXXX) || exit 1
export CKPTD_VAR=$T PGLOCAL_PORT=54374
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE
trap '"$ROOT/scripts/pg-local" destroy >/dev/null 2>&1; rm -rf "$T"' EXIT
trap 'exit 1' INT TERM HUP
DB=
if "$ROOT/scripts/pg-local" start >"$T/pg-start.out" 2>&1; then
    eval "$("$ROOT/scripts/pg-local" env)"
    DB=1
else
    echo "transitions_bench.sh: pg-local start failed; detection alone" >&2
fi
{
    echo "### Transition detection ($SERIES series of 154 points, median of $REPS; $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg))"
    echo
    "$BIN" --series "$SERIES" --reps "$REPS" ${DB:+--db ""} | grep -v '^{'
} | tee "$MD"
