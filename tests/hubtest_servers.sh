#!/bin/bash
# hubtest_servers.sh - the local download servers the fetch tests rely on,
# checked with curl alone: scripts/hub-serve (the hub protocol over nginx:
# resolve redirects and their headers, ranges, tree/refs APIs, errors,
# token, logs, plain layout) and scripts/fault-proxy (pass-through with
# keep-alive, and each injected fault as a client sees it).
# Ports 18200-18219.  Run from the repository root.
set -u
export LC_ALL=C
# shellcheck source=tests/lib/hub.sh
. tests/lib/hub.sh

PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
eq() { if [ "$2" = "$3" ]; then ok "$1 ($3)"; else fail "$1: want '$2', got '$3'"; fi; }
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

for f in build/bin/ckpt-worker /usr/sbin/nginx; do
    [ -x "$f" ] || { echo "FAIL: $f missing (make; scripts/install-deps)"; exit 1; }
done
command -v curl >/dev/null || { echo "FAIL: curl missing (scripts/install-deps)"; exit 1; }

T=$(mktemp -d "/tmp/ckhub XXXXXX") || exit 1 # a space: hub-serve quotes its paths
cleanup() {
    local rc=$?
    hub_stop_all
    if [ "${HUB_KEEP:-0}" = 1 ]; then echo "# kept $T"; else rm -rf "$T"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# header FILE NAME: a header's value from a curl -D dump (last response)
header() { tr -d '\r' <"$1" | awk -v n="$(echo "$2" | tr '[:upper:]' '[:lower:]')" '
    /^HTTP\// { delete h } { split($0, a, ": "); k = tolower(a[1]); if (k == n) v = substr($0, length(a[1]) + 3) }
    END { print v }'; }
status_of() { tr -d '\r' <"$1" | awk '/^HTTP\// { s = $2 } END { print s }'; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# jsonq FILE EXPR: evaluate a python expression over the parsed JSON (d)
jsonq() { "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

CK=$T/ck
if ! scripts/make-fixture-series "$CK" --steps 0,1,2,4 --sharded 2 --dup 4=1 >"$T/fixture.out" 2>&1; then
    echo "FAIL: make-fixture-series"; cat "$T/fixture.out"; exit 1
fi
# --dup leaves step4 identical to step1; the sharded step has no single file
eq "fixture: dup copies bytes" "$(sha "$CK/step1/model.safetensors")" "$(sha "$CK/step4/model.safetensors")"
if [ -f "$CK/step2/model-00002-of-00002.safetensors" ] && [ ! -f "$CK/step2/model.safetensors" ] &&
    build/bin/ckpt-worker inspect "$CK/step2" 2>&1 | grep -q "problems: 0"; then
    ok "fixture: sharded step loads"
else fail "fixture: sharded step2 not two loadable shards"; fi

# bad input: a clear message, exit 1 (2 for usage), nothing started
# expect_err DESC STATUS NEEDLE CMD...
expect_err() {
    local d=$1 want=$2 needle=$3 out rc
    shift 3
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" = "$want" ] && printf '%s' "$out" | grep -qF -- "$needle"; then ok "$d"; else
        fail "$d: exit $rc (want $want), output: $(printf '%s' "$out" | tail -n 2)"; fi
}
expect_err "fixture: dup of a step not made" 1 "step 9 is not in --steps" \
    scripts/make-fixture-series "$T/bad" --steps 0,1 --dup 1=9
expect_err "fixture: bad step" 1 "'x' is not a step number" scripts/make-fixture-series "$T/bad" --steps 0,x
expect_err "fixture: missing --pytorch-from" 1 "no such file" \
    scripts/make-fixture-series "$T/bad" --steps 0 --pytorch 0 --pytorch-from "$T/none.bin"
printf 'not a real torch zip' >"$T/fake.bin"
scripts/make-fixture-series "$T/pt" --steps 3 --pytorch 3 --pytorch-from "$T/fake.bin" >/dev/null 2>&1
if cmp -s "$T/fake.bin" "$T/pt/step3/pytorch_model.bin" && [ ! -e "$T/pt/step3/model.safetensors" ]; then
    ok "fixture: --pytorch-from replaces the safetensors"; else fail "fixture: --pytorch-from"; fi
expect_err "hub-serve: missing root" 1 "not a directory" \
    scripts/hub-serve start --root "$T/none" --state "$T/bad" --port 18210
expect_err "hub-serve: no revisions" 1 "no revision directories" \
    scripts/hub-serve start --root "$T/pt/step3" --state "$T/bad" --port 18210
expect_err "hub-serve: bad layout" 1 "--layout 'x'" \
    scripts/hub-serve start --root "$CK" --state "$T/bad" --port 18210 --layout x
expect_err "hub-serve: unknown option" 2 "unknown argument '--frob'" scripts/hub-serve start --frob
expect_err "fault-proxy: bad upstream" 2 "want HOST:PORT" \
    scripts/fault-proxy --listen 18211 --upstream nowhere --rules "$T/r" --log "$T/l"
if curl -s -o /dev/null -m 2 http://127.0.0.1:18210/; then fail "hub-serve started after bad input"; else
    ok "nothing listens after bad input"; fi

# ---------------------------------------------------------------- hub A
TOK=hubtest-secret
AUTH="Authorization: Bearer $TOK"
if ! hub_start A "$T/hubA" --root "$CK" --port 18200 --cdn-port 18201 --repo test-org/series \
    --token "$TOK" --layout both; then exit 1; fi
expect_err "hub-serve: same state twice" 1 "already running" \
    scripts/hub-serve start --root "$CK" --state "$T/hubA" --port 18212
expect_err "hub-serve: port in use" 1 "port 18200 already answers" \
    scripts/hub-serve start --root "$CK" --state "$T/hubX" --port 18200 --cdn-port 18213
eq "start prints the endpoint" "http://127.0.0.1:18200" "$A_HUB_URL"
eq "start prints the CDN" "http://127.0.0.1:18201" "$A_CDN_URL"
eq "start prints the CDN port" "http://127.0.0.1:18201" "$A_CDN_DIRECT_URL"
H=$A_HUB_URL/test-org/series
API=$A_HUB_URL/api/models/test-org/series

# token
curl -s -o /dev/null -I -D "$T/h" "$H/resolve/step0/model.safetensors"
eq "no token: 401" 401 "$(status_of "$T/h")"
eq "no token: X-Error-Code" RepoNotFound "$(header "$T/h" X-Error-Code)"
curl -s -o /dev/null -I -D "$T/h" -H "Authorization: Bearer wrong" "$H/resolve/step0/config.json"
eq "wrong token: 401" 401 "$(status_of "$T/h")"

# resolve of a weights file: 302 to the CDN with the linked headers
W0=$CK/step0/model.safetensors
curl -s -o /dev/null -I -D "$T/h" -H "$AUTH" "$H/resolve/step0/model.safetensors"
eq "weights HEAD: 302" 302 "$(status_of "$T/h")"
eq "X-Linked-Etag is the sha256" "\"$(sha "$W0")\"" "$(header "$T/h" X-Linked-Etag)"
eq "X-Linked-Size" "$(stat -c %s "$W0")" "$(header "$T/h" X-Linked-Size)"
eq "Location on the CDN" "$A_CDN_URL/blobs/$(sha "$W0")" "$(header "$T/h" Location)"
C0=$(header "$T/h" X-Repo-Commit)
if [[ "$C0" =~ ^[0-9a-f]{40}$ ]]; then ok "X-Repo-Commit is a sha ($C0)"; else fail "X-Repo-Commit '$C0'"; fi
E0=$(header "$T/h" ETag)
if [[ "$E0" =~ ^\"[0-9a-f]{40}\"$ ]]; then ok "ETag is the pointer's git sha"; else fail "weights ETag '$E0'"; fi

# following the redirect: the bytes, and the token stays on the hub
curl -s -L -o "$T/w0" -H "$AUTH" "$H/resolve/step0/model.safetensors"
eq "GET -L: bytes" "$(sha "$W0")" "$(sha "$T/w0")"

# small file: served directly, git blob sha1 as ETag
CF=$CK/step2/config.json
GITSHA=$("$PY" -c 'import hashlib, sys; d = open(sys.argv[1], "rb").read(); print(hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest())' "$CF")
curl -s -o /dev/null -I -D "$T/h" -H "$AUTH" "$H/resolve/step2/config.json"
eq "config HEAD: 200" 200 "$(status_of "$T/h")"
eq "config ETag: git blob sha1" "\"$GITSHA\"" "$(header "$T/h" ETag)"
eq "config Content-Length" "$(stat -c %s "$CF")" "$(header "$T/h" Content-Length)"
C2=$(header "$T/h" X-Repo-Commit)
if [ -n "$C2" ] && [ "$C2" != "$C0" ]; then ok "commits differ between revisions"; else
    fail "X-Repo-Commit step2 '$C2' vs step0 '$C0'"; fi

# ranges: small file on the hub, blob on the CDN
curl -s -o "$T/r" -D "$T/h" -H "$AUTH" -r 10-19 "$H/resolve/step2/config.json"
eq "range on hub: 206" 206 "$(status_of "$T/h")"
eq "range on hub: Content-Range" "bytes 10-19/$(stat -c %s "$CF")" "$(header "$T/h" Content-Range)"
eq "range on hub: bytes" "$(tail -c +11 "$CF" | head -c 10 | od -An -tx1)" "$(od -An -tx1 "$T/r")"
curl -s -o "$T/r" -D "$T/h" -r 100000- "$A_CDN_URL/blobs/$(sha "$W0")"
eq "range on CDN: 206" 206 "$(status_of "$T/h")"
eq "range on CDN: bytes" "$(tail -c +100001 "$W0" | sha256sum)" "$(sha256sum <"$T/r")"

# revisions: main is the highest step, a commit sha works, dup shares blobs
curl -s -o /dev/null -I -D "$T/h" -H "$AUTH" "$H/resolve/main/model.safetensors"
eq "main is step4" "\"$(sha "$CK/step4/model.safetensors")\"" "$(header "$T/h" X-Linked-Etag)"
eq "dup: step4 links step1's blob" "\"$(sha "$CK/step1/model.safetensors")\"" "$(header "$T/h" X-Linked-Etag)"
curl -s -o /dev/null -I -D "$T/h" -H "$AUTH" "$H/resolve/$C0/model.safetensors"
eq "commit sha as revision" "\"$(sha "$W0")\"" "$(header "$T/h" X-Linked-Etag)"
curl -s -o /dev/null -I -D "$T/h" -H "$AUTH" "$H/resolve/step2/model-00001-of-00002.safetensors"
eq "shard redirects" 302 "$(status_of "$T/h")"

# errors
curl -s -o /dev/null -D "$T/h" -H "$AUTH" "$H/resolve/step3/config.json"
eq "unknown revision: 404" 404 "$(status_of "$T/h")"
eq "unknown revision: code" RevisionNotFound "$(header "$T/h" X-Error-Code)"
curl -s -o /dev/null -D "$T/h" -H "$AUTH" "$H/resolve/step2/model.safetensors"
eq "unknown file: 404" 404 "$(status_of "$T/h")"
eq "unknown file: code" EntryNotFound "$(header "$T/h" X-Error-Code)"
curl -s -o /dev/null -D "$T/h" -H "$AUTH" "$A_HUB_URL/test-org/other/resolve/main/config.json"
eq "unknown repo: code" RepoNotFound "$(header "$T/h" X-Error-Code)"
curl -s -o /dev/null -D "$T/h" -H "$AUTH" "$API/tree/step7"
eq "tree of unknown revision: code" RevisionNotFound "$(header "$T/h" X-Error-Code)"

# tree API
if curl -sf -o "$T/tree2" -H "$AUTH" "$API/tree/step2"; then ok "tree step2"; else fail "tree step2"; fi
# shellcheck disable=SC2012 # the fixture's names are plain
eq "tree: paths" "$(cd "$CK/step2" && ls | sort | tr '\n' ' ')" \
    "$(jsonq "$T/tree2" '" ".join(sorted(e["path"] for e in d)) + " "')"
# shellcheck disable=SC2012
eq "tree: sizes" "$(cd "$CK/step2" && for f in $(ls | sort); do stat -c %s "$f"; done | tr '\n' ' ')" \
    "$(jsonq "$T/tree2" '" ".join(str(e["size"]) for e in sorted(d, key=lambda e: e["path"])) + " "')"
eq "tree: lfs oid is the sha256" "$(sha "$CK/step2/model-00001-of-00002.safetensors")" \
    "$(jsonq "$T/tree2" '[e["lfs"]["oid"] for e in d if e["path"] == "model-00001-of-00002.safetensors"][0]')"
eq "tree: small files have no lfs" "config.json model.safetensors.index.json" \
    "$(jsonq "$T/tree2" '" ".join(e["path"] for e in d if "lfs" not in e)')"
eq "tree: entries are files with oid" "True" \
    "$(jsonq "$T/tree2" 'all(e["type"] == "file" and len(e["oid"]) == 40 for e in d)')"

# refs API
if curl -sf -o "$T/refs" -H "$AUTH" "$API/refs"; then ok "refs"; else fail "refs"; fi
eq "refs: branches" "main step0 step1 step2 step4" "$(jsonq "$T/refs" '" ".join(b["name"] for b in d["branches"])')"
eq "refs: main's commit is step4's" "True" \
    "$(jsonq "$T/refs" 'len({b["targetCommit"] for b in d["branches"] if b["name"] in ("main", "step4")}) == 1')"
eq "refs: step0's commit matches X-Repo-Commit" "$C0" \
    "$(jsonq "$T/refs" '[b["targetCommit"] for b in d["branches"] if b["name"] == "step0"][0]')"
eq "refs: ref names" "refs/heads/step2" "$(jsonq "$T/refs" '[b["ref"] for b in d["branches"] if b["name"] == "step2"][0]')"
eq "refs: tags and converts" "[] []" "$(jsonq "$T/refs" 'str(d["tags"]) + " " + str(d["converts"])')"

# plain layout
curl -s -o "$T/plain" -H "$AUTH" "$A_PLAIN_URL/step1/config.json"
eq "plain layout: bytes" "$(sha "$CK/step1/config.json")" "$(sha "$T/plain")"

# logs: the token reached the hub, never the CDN; then a request that does
# carry one shows the CDN log would tell
hub_log_lines "$T/hubA/cdn.access.log" 3 5 # probe, GET -L, range
eq "CDN saw no Authorization" 0 "$(grep -c '"authorization":"[^"]' "$T/hubA/cdn.access.log")"
if grep -q "\"authorization\":\"Bearer $TOK\"" "$T/hubA/hub.access.log"; then ok "hub log shows the token"; else
    fail "hub log lacks the token"; fi
curl -s -o /dev/null -H "Authorization: Bearer leaked" "$A_CDN_URL/blobs/$(sha "$W0")"
hub_log_lines "$T/hubA/cdn.access.log" 4 5
if grep -q '"authorization":"Bearer leaked"' "$T/hubA/cdn.access.log"; then ok "CDN log records an Authorization"; else
    fail "CDN log does not record Authorization"; fi
eq "log: range and bytes of the range request" "bytes=10-19 10" \
    "$(grep '/resolve/step2/config.json' "$T/hubA/hub.access.log" | "$PY" -c '
import json, sys
for l in sys.stdin:
    e = json.loads(l)
    if e["status"] == 206: print(e["range"], e["bytes"])')"

hub_stop "$T/hubA"
if curl -s -o /dev/null -m 2 "$A_HUB_URL/"; then fail "hub still answers after stop"; else ok "stop"; fi

# ---------------------------------------------------------------- proxies
# hub B (no token) behind proxy P1 (18202); its redirects point to P2
# (18203) in front of its CDN (18205)
if ! hub_start B "$T/hubB" --root "$CK" --port 18204 --cdn-port 18205 --cdn-url http://127.0.0.1:18203; then exit 1; fi
R1=$T/rules1.json R2=$T/rules2.json
hub_proxy P1 18202 127.0.0.1:18204 "$R1" "$T/p1.log" || exit 1
hub_proxy P2 18203 127.0.0.1:18205 "$R2" "$T/p2.log" || exit 1
PH=http://127.0.0.1:18202/test-org/tiny-series
PC=http://127.0.0.1:18203
eq "--cdn-url: redirects name the proxy" "$PC" "$B_CDN_URL"
eq "--cdn-url: the CDN still on its port" "http://127.0.0.1:18205" "$B_CDN_DIRECT_URL"
W1=$CK/step1/model.safetensors
S1=$(sha "$W1")
N1=$(stat -c %s "$W1")

# pass-through: the redirect comes through unchanged and is followed to P2
curl -s -o /dev/null -I -D "$T/h" "$PH/resolve/step1/model.safetensors"
eq "proxy: 302 passes" "$PC/blobs/$S1" "$(header "$T/h" Location)"
eq "proxy: X-Linked-Etag passes" "\"$S1\"" "$(header "$T/h" X-Linked-Etag)"
curl -s -L -o "$T/p" "$PH/resolve/step1/model.safetensors"
eq "proxy: bytes through both" "$S1" "$(sha "$T/p")"
eq "proxy log: one line per request" "HEAD GET" "$(jq_methods() { "$PY" -c '
import json, sys
print(" ".join(json.loads(l)["method"] for l in open(sys.argv[1])))' "$1"; }; jq_methods "$T/p1.log")"
eq "proxy log: fields" "True" "$("$PY" -c '
import json, sys
e = json.loads(open(sys.argv[1]).readlines()[-1])
print(e["status"] == 200 and e["bytes"] == int(sys.argv[2]) and e["auth"] is False and e["rule"] is None)' "$T/p2.log" "$N1")"
# keep-alive: two requests on one client connection, one upstream connection
cnt=$(curl -s -o /dev/null -o /dev/null -w '%{num_connects} ' "$PC/blobs/$S1" "$PC/blobs/$S1")
eq "proxy: client keep-alive" "1 0 " "$cnt"
hub_log_lines "$T/hubB/cdn.access.log" 4 5 # probe, GET -L, the pair
eq "proxy: upstream keep-alive" "1" "$(tail -n 2 "$T/hubB/cdn.access.log" | "$PY" -c '
import json, sys
print(len({json.loads(l)["connection"] for l in sys.stdin}))')"
curl -s -o /dev/null -H "Authorization: Bearer x" "$PC/blobs/$S1"
eq "proxy log: auth presence" "true" "$(tail -n 1 "$T/p2.log" | "$PY" -c 'import json, sys; print(str(json.load(sys.stdin)["auth"]).lower())')"

# cut_after: headers and 1000 bytes, then the connection closes
hub_rules "$R2" '[{"match": "^/blobs/", "method": "GET", "times": 1, "action": {"cut_after": 1000}}]'
curl -s -o "$T/p" "$PC/blobs/$S1"
rc=$?
eq "cut: curl reports a partial transfer (18)" 18 "$rc"
eq "cut: 1000 bytes" 1000 "$(stat -c %s "$T/p")"
eq "cut: the bytes are a prefix" "$(head -c 1000 "$W1" | sha256sum)" "$(sha256sum <"$T/p")"
curl -s -o "$T/p" "$PC/blobs/$S1"
eq "cut: times 1, then passes" "$S1" "$(sha "$T/p")"
eq "cut: logged" "0 cut_after" "$(tail -n 2 "$T/p2.log" | head -n 1 | "$PY" -c 'import json, sys; e = json.load(sys.stdin); print(e["rule"], e["action"])')"

# status 503 once, then success (rules re-read: the hub proxy's file is new)
hub_rules "$R1" '[{"match": "/resolve/", "times": 1, "action": {"status": 503, "retry_after": null}}]'
s1=$(curl -s -o /dev/null -w '%{http_code}' "$PH/resolve/step1/config.json")
s2=$(curl -s -o /dev/null -w '%{http_code}' "$PH/resolve/step1/config.json")
eq "503 then success" "503 200" "$s1 $s2"
hub_rules "$R1" '[{"match": "/resolve/", "method": "HEAD", "action": {"status": 429, "retry_after": 7}}]'
curl -s -o /dev/null -D "$T/h" "$PH/resolve/step1/config.json"
eq "method filter: GET passes a HEAD rule" 200 "$(status_of "$T/h")"
curl -s -o /dev/null -I -D "$T/h" "$PH/resolve/step1/config.json"
eq "429" 429 "$(status_of "$T/h")"
eq "429 carries Retry-After" 7 "$(header "$T/h" Retry-After)"
eq "injected status never reached upstream" 0 \
    "$(grep -c '"method":"HEAD","uri":"/test-org/tiny-series/resolve/step1/config.json"' "$T/hubB/hub.access.log")"
hub_rules "$R1" '[]'

# stall: 2000 bytes then silence; curl's low-speed limit trips
hub_rules "$R2" '[{"match": "^/blobs/", "times": 1, "action": {"stall_after": 2000, "stall_s": 8}}]'
t0=$SECONDS
curl -s -o "$T/p" --speed-limit 1000 --speed-time 2 "$PC/blobs/$S1"
rc=$?
eq "stall: curl times out (28)" 28 "$rc"
eq "stall: 2000 bytes arrived" 2000 "$(stat -c %s "$T/p")"
if [ $((SECONDS - t0)) -lt 8 ]; then ok "stall: curl gave up before the stall ended"; else
    fail "stall: took $((SECONDS - t0)) s"; fi

# corrupt: same length, one byte inverted (also inside a range)
hub_rules "$R2" '[{"match": "^/blobs/", "times": 2, "action": {"corrupt_at": 12345}}]'
curl -s -o "$T/p" "$PC/blobs/$S1"
eq "corrupt: length kept" "$N1" "$(stat -c %s "$T/p")"
if [ "$(sha "$T/p")" != "$S1" ]; then ok "corrupt: sha256 differs"; else fail "corrupt: sha256 unchanged"; fi
eq "corrupt: one byte at 12345" "12346" "$(cmp -l "$W1" "$T/p" | awk '{print $1}' | head -n 5 | tr '\n' ' ' | sed 's/ $//')"
curl -s -o "$T/p" -r 20000-39999 "$PC/blobs/$S1"
eq "corrupt: offset within the range body" "12346" \
    "$(tail -c +20001 "$W1" | head -c 20000 | cmp -l - "$T/p" | awk '{print $1}' | head -n 5 | tr '\n' ' ' | sed 's/ $//')"

# length lies
hub_rules "$R2" '[{"match": "^/blobs/", "times": 1, "action": {"length_delta": 100}}]'
curl -s -o "$T/p" -D "$T/h" "$PC/blobs/$S1"
rc=$?
eq "length +100: advertised" $((N1 + 100)) "$(header "$T/h" Content-Length)"
eq "length +100: curl reports a partial transfer (18)" 18 "$rc"
eq "length +100: the real body arrived" "$S1" "$(sha "$T/p")"
hub_rules "$R2" '[{"match": "^/blobs/", "times": 1, "action": {"length_delta": -100}}]'
curl -s -o "$T/p" "$PC/blobs/$S1"
rc=$?
eq "length -100: a short body curl accepts" "0 $((N1 - 100))" "$rc $(stat -c %s "$T/p")"

# reset: no answer at all
hub_rules "$R1" '[{"match": "config", "times": 1, "action": {"reset": true}}]'
curl -s -o /dev/null -w '%{http_code}' "$PH/resolve/step1/config.json" >"$T/code"
rc=$?
case "$rc" in 52 | 56) ok "reset: curl reports no reply ($rc)" ;; *) fail "reset: curl exit $rc" ;; esac
eq "reset: no status" 000 "$(cat "$T/code")"
eq "reset: logged without status" "None reset" "$(tail -n 1 "$T/p1.log" | "$PY" -c 'import json, sys; e = json.load(sys.stdin); print(e["status"], e["action"])')"

# a bad rules file is an error a test sees, not a silent pass-through
hub_rules "$R1" '[{"match": "(", "action": {"status": 503}}]'
curl -s -o "$T/p" -D "$T/h" "$PH/resolve/step1/config.json"
if [ "$(status_of "$T/h")" = 500 ] && grep -q "bad match regex" "$T/p"; then ok "bad rule: 500 naming it"; else
    fail "bad rule: $(status_of "$T/h") $(head -c 200 "$T/p")"; fi

hub_rules "$R1" '[{"match": "config", "action": {"status": "soon"}}]'
curl -s -o "$T/p" -D "$T/h" "$PH/resolve/step1/config.json"
if [ "$(status_of "$T/h")" = 500 ] && grep -q 'rule 0: status must be an HTTP status, not "soon"' "$T/p"; then
    ok "bad action value: 500 naming it"; else fail "bad action value: $(status_of "$T/h") $(head -c 200 "$T/p")"; fi

echo "# hubtest_servers: $PASSED ok, $FAILED failed"
[ "$FAILED" -eq 0 ]
