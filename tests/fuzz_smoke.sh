#!/bin/bash
# fuzz_smoke.sh - every libFuzzer harness of fuzz/ still builds and survives
# a short run: `make fuzz FUZZ_S=3` (each harness replays its whole seed
# corpus, regression inputs included, then fuzzes 3 s under ASan and UBSan;
# a crash, leak, hang over 1 s or a broken invariant fails it).  The longer
# runs are `make fuzz FUZZ_S=600`.  FUZZ_SMOKE_S changes the seconds.
set -u
if ! command -v "${FUZZ_CC:-clang}" >/dev/null 2>&1; then
    echo "FAIL: fuzz_smoke: ${FUZZ_CC:-clang} not found (scripts/install-deps installs clang)"
    exit 1
fi
# a make of its own: the jobserver of an enclosing make is not ours
unset MAKEFLAGS MFLAGS MAKELEVEL
mkdir -p build-fuzz
if ! make --no-print-directory -j2 fuzz-build >build-fuzz/build.log 2>&1; then
    echo "FAIL: fuzz_smoke: the harnesses do not build (build-fuzz/build.log)"
    grep -E "error|Error" build-fuzz/build.log | head -20
    exit 1
fi
exec make --no-print-directory fuzz FUZZ_S="${FUZZ_SMOKE_S:-3}"
