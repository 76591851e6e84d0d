#!/bin/sh
# check_layers.sh - scripts/check-layers can fail: on a copy of the C
# sources it passes, then each planted include against a rule (one per
# rule: a later room, model/ including battery/, daemon/ including
# workers/, common/ including daemon/, "../", a name relative to the
# folder, a room including the commands, a folder that is no room, a
# missing header) makes it exit 1 naming file, line, include and rule;
# the copy is restored between cases.  Run from the repository root.
set -u
CHECK=scripts/check-layers
TMP=$(mktemp -d /tmp/ckptd-check-layers-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# a copy of the C sources the checker reads
mkdir "$TMP/src"
find common daemon workers tests bench \( -name '*.c' -o -name '*.h' -o -name '*.inc' \) | tar -cf - -T - | tar -xf - -C "$TMP/src" ||
    { echo "check_layers: cannot copy the sources"; exit 1; }

"$CHECK" --root "$TMP/src" >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ "$rc" -eq 0 ] && grep -q "every include by the rules" "$TMP/out"; then ok "clean copy passes"; else
    fail "clean copy: exit $rc: $(cat "$TMP/err")"; fi

# plant FILE INCLUDE WANT_TEXT: insert `#include "INCLUDE"` as FILE's line 2;
# the checker must exit 1 with 'FILE:2: #include "INCLUDE": WANT_TEXT'
plant() {
    f=$1 inc=$2 want=$3
    mkdir -p "$(dirname "$TMP/src/$f")"
    [ -f "$TMP/src/$f" ] || echo '/* planted */' >"$TMP/src/$f"
    cp "$TMP/src/$f" "$TMP/saved"
    sed -i "1a #include \"$inc\"" "$TMP/src/$f"
    "$CHECK" --root "$TMP/src" >"$TMP/out" 2>"$TMP/err"
    rc=$?
    line="$f:2: #include \"$inc\": $want"
    if [ "$rc" -eq 1 ] && grep -qF -- "$line" "$TMP/err" &&
        grep -q "^check-layers: 1 include against the rules" "$TMP/err"; then
        ok "$f including $inc: exit 1, '$want'"
    else
        fail "$f including $inc: exit $rc, want 1 and '$line' in: $(cat "$TMP/err")"
    fi
    cp "$TMP/saved" "$TMP/src/$f"
}

plant daemon/fetch/stage.c daemon/work/queue.h "order: work/ comes after fetch/"
plant daemon/base/db.h daemon/ops/config.h "order: ops/ comes after base/"
plant workers/model/gptneox.c workers/battery/battery.h "order: battery/ comes after model/"
plant workers/text/tokens.c workers/train/train.h "order: train/ comes after text/"
plant daemon/base/db.c workers/model/npy.h "apart: daemon/ includes only daemon/ and common/, never workers/"
plant workers/battery/rng.c daemon/base/db.h "apart: workers/ includes only workers/ and common/, never daemon/"
plant common/log.c daemon/base/db.h "common: common/ includes only common/"
plant daemon/fetch/cache.c ../../common/log.h 'root: a path with "./" or "../"'
plant daemon/fetch/cache.c hub.h 'root: named from the including folder; write it from the repository root: "daemon/fetch/hub.h"'
plant tests/test_npy.c ../workers/model/npy.h 'root: a path with "./" or "../"'
plant daemon/fetch/cache.c daemon/fetch/nothing.h "root: no such file from the repository root"
plant workers/train/task.c workers/cli.h "order: a room never includes the top of workers/"
plant daemon/extra/extra.c daemon/base/db.h "order: daemon/extra/ is not a room"

# the same checks on a list of files; each bad include counted
sed -i '1a #include "workers/battery/battery.h"\n#include "../common/err.h"' "$TMP/src/workers/model/kernels.c"
"$CHECK" --root "$TMP/src" workers/model/kernels.c common/log.c >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "^workers/model/kernels.c:2: .*order:" "$TMP/err" &&
    grep -q "^workers/model/kernels.c:3: .*root:" "$TMP/err" &&
    grep -q "^check-layers: 2 includes against the rules" "$TMP/err"; then
    ok "a file list: both bad includes named and counted"
else
    fail "a file list: exit $rc: $(cat "$TMP/err")"
fi
"$CHECK" --root "$TMP/src" common/log.c >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ "$rc" -eq 0 ]; then ok "a clean file list passes"; else fail "clean file list: exit $rc"; fi

# the repository itself
if "$CHECK" >"$TMP/out" 2>"$TMP/err"; then ok "the repository passes"; else
    fail "the repository: $(cat "$TMP/err")"; fi

[ "$fails" -eq 0 ]
