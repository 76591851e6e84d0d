#!/bin/bash
# fetch_faults.sh - `ckptd fetch` against a real local hub (scripts/hub-serve:
# nginx, resolve with HEAD/Range and X-Linked headers, tree and refs APIs, a
# 302 to a second "CDN" port, a bearer token) with scripts/fault-proxy in
# front of both hosts.  Each case asserts the end state: exit status, the
# error naming what went wrong, the files and sha256s printed, the proxy's
# request log (a resumed Range, the retry after Retry-After), and that no
# blob in the cache differs from its name and no partial survives a
# mismatch.  Cases: cut mid-body (resumed), 503 then success, 429 with
# Retry-After, a stall (low-speed abort, retried), a corrupt byte (rejected
# after the retries, never cached), a Content-Length that lies either way,
# the token not following the redirect to the CDN and never printed, a
# revision with only pytorch_model.bin, a sharded revision, the HF cache
# reused, offline mode (no request at all) and offline without the file.
# No database.  Ports 18110-18119.
set -u
export LC_ALL=C
. tests/lib/hub.sh
ROOT=$(pwd)
CKPTD=${CKPTD_BIN:-$ROOT/build/bin/ckptd}
WORKER=$ROOT/build/bin/ckpt-worker
PASS=0
FAILS=0
ok() { PASS=$((PASS + 1)); echo "ok: $*"; }
bad() { FAILS=$((FAILS + 1)); echo "FAIL: $*"; }
eq() { if [ "$2" = "$3" ]; then ok "$1 ($3)"; else bad "$1: want '$2', got '$3'"; fi; }
has() { if grep -Eq -- "$3" "$2"; then ok "$1"; else bad "$1: no /$3/ in $2"; sed 's/^/    | /' "$2" | tail -n 5; fi; }
hasnt() { if grep -Eq -- "$3" "$2"; then bad "$1: /$3/ found in $2"; else ok "$1"; fi; }

T=$(mktemp -d /tmp/ckf-XXXXXX) || exit 1
cleanup() {
    hub_stop_all
    [ "${DL_KEEP:-0}" = 1 ] && echo "# kept $T" || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

TOKEN=hf_secret_$$_token
head -c 300000 /dev/urandom >"$T/fake.bin"
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/ck" --steps 0,1,2,4,8 --dup 1=0 --sharded 2 \
    --pytorch 4 --pytorch-from "$T/fake.bin" >"$T/fixture.out" 2>&1 || { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/ck" --port 18110 --cdn-port 18111 --cdn-url http://127.0.0.1:18113 \
    --token "$TOKEN" || exit 1
hub_rules "$T/hub.rules" '[]'
hub_rules "$T/cdn.rules" '[]'
hub_proxy P1 18112 127.0.0.1:18110 "$T/hub.rules" "$T/p1.log" || exit 1
hub_proxy P2 18113 127.0.0.1:18111 "$T/cdn.rules" "$T/p2.log" || exit 1
REPO=$H_HUB_REPO
export HF_ENDPOINT=http://127.0.0.1:18112 HF_TOKEN=$TOKEN HF_HOME=$T/hf-none CKPTD_LOG=info
unset HF_HUB_OFFLINE HF_HUB_CACHE
sha() { sha256sum "$1" | cut -d' ' -f1; }
W0=$(sha "$T/ck/step0/model.safetensors")
W8=$(sha "$T/ck/step8/model.safetensors")
SIZE0=$(stat -c %s "$T/ck/step0/model.safetensors")

# cfg NAME [MEMBERS]: a config with its own cache
cfg() {
    local n=$1
    shift
    local extra=""
    for m in "$@"; do extra="$extra, $m"; done
    # the cases are about downloads: a fetch must not find the previous
    # case's files in the HuggingFace cache (read in a case of its own)
    echo "{\"cache_dir\": \"$T/cache-$n\", \"hf_cache_write\": false, \"fetch_backoff_base_s\": 0.1, \"fetch_backoff_max_s\": 0.5,
           \"fetch_retries\": 3, \"fetch_low_speed_s\": 2, \"fetch_low_speed_bytes\": 1000$extra}" >"$T/$n.json"
}
# fetch NAME STEP: run ckptd fetch with config NAME; status in RC, output in $T/NAME.out/.err
fetch() {
    "$CKPTD" --config "$T/$1.json" fetch "hf://$REPO" --step "$2" >"$T/$1.out" 2>"$T/$1.err"
    RC=$?
}
# every blob's content matches its name; no partial of a rejected file
cache_clean() {
    local d=$T/cache-$1 b badn=0
    for b in "$d"/blobs/*; do
        [ -e "$b" ] || continue
        [ "$(sha "$b")" = "$(basename "$b")" ] || badn=$((badn + 1))
    done
    eq "$1: every blob matches its name" 0 "$badn"
}
reqs() { grep -c "$2" "$1" 2>/dev/null || true; }

# -- plain success, sharded and pytorch revisions, the token --------------
cfg plain
fetch plain 0
eq "plain fetch exit" 0 "$RC"
has "plain: weights with their sha256" "$T/plain.out" "^model.safetensors +$SIZE0  $W0\$"
has "plain: config.json listed" "$T/plain.out" "^config.json "
cache_clean plain
eq "token sent to the hub" 1 "$(grep -c "\"authorization\":\"Bearer $TOKEN\"" "$T/hub/hub.access.log" | awk '{print ($1 > 0)}')"
eq "token never reaches the CDN (its log)" 0 "$(grep -c "$TOKEN" "$T/hub/cdn.access.log")"
eq "no Authorization arrives at the CDN proxy" 0 "$(grep -c '"auth": true' "$T/p2.log")"
eq "CDN proxy saw the weights" 1 "$(reqs "$T/p2.log" "$W0" | awk '{print ($1 > 0)}')"
hasnt "token absent from ckptd's output" "$T/plain.out" "$TOKEN"
hasnt "token absent from ckptd's log" "$T/plain.err" "$TOKEN"

fetch plain 2
eq "sharded fetch exit" 0 "$RC"
has "sharded: first shard" "$T/plain.out" "^model-00001-of-00002.safetensors "
has "sharded: second shard" "$T/plain.out" "^model-00002-of-00002.safetensors "
has "sharded: index" "$T/plain.out" "^model.safetensors.index.json "
fetch plain 4
eq "pytorch-only fetch exit" 0 "$RC"
has "pytorch_model.bin chosen" "$T/plain.out" "^pytorch_model.bin +300000  $(sha "$T/fake.bin")\$"
eq "pytorch: two files" "2 files" "$(grep -o '^[0-9]* files' "$T/plain.out")"
fetch plain 0
has "second fetch is a cache hit" "$T/plain.err" 'msg="cache hit"'
eq "cache hit downloads nothing" 1 "$(grep -c 'downloaded 0 bytes' "$T/plain.out")"
"$CKPTD" --config "$T/plain.json" fetch "hf://$REPO" --step 0 --to "$T/out0" >/dev/null 2>&1
eq "--to DIR holds the weights" "$W0" "$(sha "$T/out0/model.safetensors")"

# -- cut mid-body: resumed with Range -------------------------------------
cfg cut
hub_rules "$T/cdn.rules" "[{\"match\": \"$W0\", \"method\": \"GET\", \"times\": 1, \"action\": {\"cut_after\": 200000}}]"
fetch cut 0
eq "cut: exit" 0 "$RC"
has "cut: resumed with a Range from the cut" "$T/p2.log" "\"range\": \"bytes=200000-\""
has "cut: verified sha256" "$T/cut.out" "^model.safetensors +$SIZE0  $W0\$"
has "cut: the cut was retried" "$T/cut.err" 'msg="download failed; retrying".*attempt=1 ' 
cache_clean cut

# -- 503 then success ------------------------------------------------------
cfg s503
hub_rules "$T/hub.rules" '[{"match": "resolve/step0/model.safetensors", "method": "GET", "times": 1, "action": {"status": 503}}]'
hub_rules "$T/cdn.rules" '[]'
fetch s503 0
eq "503: exit" 0 "$RC"
has "503: retried" "$T/s503.err" 'msg="download failed; retrying".*HTTP 503'
cache_clean s503

# -- 429 with Retry-After: 2 ----------------------------------------------
cfg s429
hub_rules "$T/hub.rules" '[{"match": "resolve/step0/config.json", "times": 1, "action": {"status": 429, "retry_after": 2}}]'
t0=$(date +%s.%N)
fetch s429 0
t1=$(date +%s.%N)
eq "429: exit" 0 "$RC"
has "429: waited the Retry-After (2 s), not the 0.1 s backoff" "$T/s429.err" 'attempt=1 wait_s=2\.00 error="HTTP 429"'
eq "429: took at least 2 s" 1 "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print (b - a >= 2) }')"

# -- stall: low-speed abort, then resumed ----------------------------------
cfg stall
hub_rules "$T/hub.rules" '[]'
hub_rules "$T/cdn.rules" "[{\"match\": \"$W0\", \"method\": \"GET\", \"times\": 1, \"action\": {\"stall_after\": 100000, \"stall_s\": 30}}]"
t0=$SECONDS
fetch stall 0
eq "stall: exit" 0 "$RC"
has "stall: named as a stall" "$T/stall.err" "transfer stalled"
eq "stall: aborted well before the 30 s stall ended" 1 "$(( SECONDS - t0 < 20 ))"
cache_clean stall

# -- corrupt byte: rejected after the retries, never cached ----------------
cfg corrupt
hub_rules "$T/cdn.rules" "[{\"match\": \"$W0\", \"action\": {\"corrupt_at\": 1000}}]"
fetch corrupt 0
eq "corrupt: exit 1" 1 "$RC"
has "corrupt: error names both hashes" "$T/corrupt.err" "sha256 mismatch: expected $W0, got [0-9a-f]{64}"
has "corrupt: after the retries" "$T/corrupt.err" "gave up after 4 attempts"
eq "corrupt: no blob of the weights" 0 "$(ls "$T/cache-corrupt/blobs" | grep -c "$W0")"
eq "corrupt: no partial kept" 0 "$(ls "$T/cache-corrupt/partial" | grep -c "$W0")"
eq "corrupt: no complete snapshot" 0 "$(grep -l '"complete": true' -r "$T/cache-corrupt/manifests" 2>/dev/null | wc -l)"
cache_clean corrupt

# -- Content-Length lies ---------------------------------------------------
for d in 1000 -1000; do
    cfg "len$d"
    hub_rules "$T/cdn.rules" "[{\"match\": \"$W0\", \"action\": {\"length_delta\": $d}}]"
    fetch "len$d" 0
    eq "Content-Length $d: exit 1" 1 "$RC"
    has "Content-Length $d: size mismatch named" "$T/len$d.err" "size mismatch: the server states $((SIZE0 + d)) bytes \\(Content-Length\\), expected $SIZE0"
    eq "Content-Length $d: not cached" 0 "$(ls "$T/cache-len$d/blobs" | grep -c "$W0")"
    cache_clean "len$d"
done
hub_rules "$T/cdn.rules" '[]'

# -- the HuggingFace cache reused, then offline ----------------------------
HFH=$T/hfhome
base=$HFH/hub/models--${REPO%%/*}--${REPO#*/}
commit=0123456789abcdef0123456789abcdef01234567
mkdir -p "$base/refs" "$base/blobs" "$base/snapshots/$commit"
printf '%s' "$commit" >"$base/refs/step8"
for f in config.json model.safetensors; do
    s=$(sha "$T/ck/step8/$f")
    cp "$T/ck/step8/$f" "$base/blobs/$s"
    ln -s "../../blobs/$s" "$base/snapshots/$commit/$f"
done
cfg hf
n_cdn=$(wc -l <"$T/p2.log")
HF_HOME=$HFH fetch hf 8
eq "HF cache: exit" 0 "$RC"
has "HF cache: used" "$T/hf.err" 'msg="taken from the HuggingFace cache".*model.safetensors'
eq "HF cache: no weights download" 0 "$(tail -n +$((n_cdn + 1)) "$T/p2.log" | grep -c "$W8")"
has "HF cache: right sha256" "$T/hf.out" "^model.safetensors .* $W8\$"

cfg off
n_hub=$(wc -l <"$T/p1.log")
n_cdn=$(wc -l <"$T/p2.log")
HF_HOME=$HFH HF_HUB_OFFLINE=1 fetch off 8
eq "offline with HF cache: exit" 0 "$RC"
has "offline: sha256 from the HF cache" "$T/off.out" "^model.safetensors .* $W8\$"
HF_HOME=$HFH HF_HUB_OFFLINE=1 fetch off 0
eq "offline, not cached: exit 1" 1 "$RC"
has "offline, not cached: clear error" "$T/off.err" "offline \\(HF_HUB_OFFLINE=1\\).*step0"
sleep 0.3
eq "offline: no request to the hub" "$n_hub" "$(wc -l <"$T/p1.log")"
eq "offline: no request to the CDN" "$n_cdn" "$(wc -l <"$T/p2.log")"

# -- bad use ---------------------------------------------------------------
"$CKPTD" --config "$T/plain.json" fetch "hf://$REPO" >/dev/null 2>&1
eq "no --step: usage" 2 $?
"$CKPTD" --config "$T/plain.json" fetch "hf://$REPO" --step 77 >"$T/nostep.out" 2>"$T/nostep.err"
eq "unknown revision: exit 1" 1 $?
has "unknown revision: HTTP 404 and the URL" "$T/nostep.err" "file listing: GET http://127.0.0.1:18112/api/models/$REPO/tree/step77: HTTP 404"

echo "# fetch_faults: $PASS ok, $FAILS failed"
[ "$FAILS" -eq 0 ]
