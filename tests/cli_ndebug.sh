#!/bin/sh
# cli_ndebug.sh - the worker built with -DNDEBUG (asserts compiled out, as
# a release build may be) behaves as the normal build: `train` runs and
# writes byte-identical checkpoints, `analyze` prints identical rows.  An
# assert() that does work would break it (adamw_step once filled the
# gradients' parameter list inside one: the NDEBUG build crashed).
# Builds ckpt-worker into build-ndebug/ (CFLAGS=-DNDEBUG; make reuses the
# objects on the next run).
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
TMP=$(mktemp -d /tmp/ckptd-ndebug-XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
fails=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

unset MAKEFLAGS MFLAGS MAKELEVEL
if make -s -j2 DEPS=0 BUILD=build-ndebug CFLAGS=-DNDEBUG build-ndebug/bin/ckpt-worker >"$TMP/build.log" 2>&1; then
    ok "built with -DNDEBUG"
else
    fail "build with -DNDEBUG"
    tail -n 20 "$TMP/build.log"
    exit 1
fi
N=build-ndebug/bin/ckpt-worker

for task in modular-addition induction; do
    "$W" --threads 1 train --task $task --out "$TMP/ref-$task" --steps 30 --checkpoints 0,10,30 \
        --log-every 0 >/dev/null 2>"$TMP/ref-$task.err" || fail "normal build: train $task"
    "$N" --threads 1 train --task $task --out "$TMP/nd-$task" --steps 30 --checkpoints 0,10,30 \
        --log-every 0 >/dev/null 2>"$TMP/nd-$task.err"
    rc=$?
    if [ "$rc" = 0 ]; then ok "NDEBUG build: train $task exits 0"; else
        fail "NDEBUG build: train $task exits $rc"
        tail -n 3 "$TMP/nd-$task.err"
        continue
    fi
    same=1
    for f in step0/model.safetensors step10/model.safetensors step30/model.safetensors task.json; do
        cmp -s "$TMP/ref-$task/$f" "$TMP/nd-$task/$f" || { same=0; fail "$task: $f differs"; }
    done
    [ "$same" = 1 ] && ok "$task: checkpoints and task.json byte-identical to the normal build's"
done

if [ -d "$TMP/nd-modular-addition/step30" ]; then
    "$W" --threads 1 analyze "$TMP/ref-modular-addition/step30" --items loss,weights,task >"$TMP/ref.rows" 2>/dev/null
    "$N" --threads 1 analyze "$TMP/ref-modular-addition/step30" --items loss,weights,task >"$TMP/nd.rows" 2>"$TMP/nd.err"
    if [ -s "$TMP/ref.rows" ] && cmp -s "$TMP/ref.rows" "$TMP/nd.rows"; then
        ok "analyze: the same rows ($(wc -l <"$TMP/ref.rows"))"
    else
        fail "analyze rows differ"
    fi
fi
echo "cli_ndebug: $fails failed"
[ "$fails" = 0 ]
