#!/bin/bash
# fetch_tls.sh - `ckptd fetch` over HTTPS: scripts/hub-serve --tls (nginx)
# with a CA and server certificates made here by the openssl CLI (SAN
# IP:127.0.0.1 and DNS:localhost).  Asserts: without the CA (the system's
# bundle) and with another CA the fetch exits 1 with libcurl's
# certificate-verification error and the URL, at the first attempt (not
# retried), nothing cached and no request reaching the server;
# SSL_CERT_FILE and CURL_CA_BUNDLE are not read; with the CA given by
# CKPTD_CA_BUNDLE or by the config's "ca_file" the checkpoint arrives (the
# hub over HTTPS and its redirect to the HTTPS CDN), every sha256 as
# served; a certificate for another host name is refused even with the CA;
# an unreadable ca_file is a config error (exit 2).  No database.  Ports
# 18320-18323.
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
command -v openssl >/dev/null || { echo "FAIL: openssl not found (scripts/install-deps)"; exit 1; }

T=$(mktemp -d /tmp/ckt-XXXXXX) || exit 1
cleanup() {
    hub_stop_all
    [ "${DL_KEEP:-0}" = 1 ] && echo "# kept $T" || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# ca NAME: a self-signed CA; cert NAME CA SAN: a server certificate it signs
ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=ckptd test $1" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$T/$1.key" -out "$T/$1.pem" 2>>"$T/openssl.err"
}
cert() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
        -keyout "$T/$1.key" -out "$T/$1.csr" 2>>"$T/openssl.err" &&
        printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" >"$T/$1.ext" &&
        openssl x509 -req -in "$T/$1.csr" -CA "$T/$2.pem" -CAkey "$T/$2.key" -CAcreateserial -days 2 \
            -extfile "$T/$1.ext" -out "$T/$1.pem" 2>>"$T/openssl.err"
}
{ ca ca && ca otherca && cert server ca "IP:127.0.0.1,DNS:localhost" &&
    cert wrongname ca "DNS:wrong.example"; } || { cat "$T/openssl.err"; exit 1; }

CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/ck" --steps 0 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/ck" --port 18320 --cdn-port 18321 --tls "$T/server.pem" "$T/server.key" || exit 1
eq "hub URL is https" "https://127.0.0.1:18320" "$H_HUB_URL"
eq "CDN URL is https" "https://127.0.0.1:18321" "$H_CDN_URL"
export HF_ENDPOINT=$H_HUB_URL HF_HOME=$T/hf-none CKPTD_LOG=info
unset HF_HUB_OFFLINE HF_HUB_CACHE HF_TOKEN CKPTD_CA_BUNDLE SSL_CERT_FILE CURL_CA_BUNDLE
SRC=hf://$H_HUB_REPO
W0=$(sha256sum "$T/ck/step0/model.safetensors" | cut -d' ' -f1)
TREE_URL="$H_HUB_URL/api/models/$H_HUB_REPO/tree/step0"
cfg() { # cfg NAME [MEMBER]: a config with its own cache
    echo "{\"cache_dir\": \"$T/cache-$1\", \"fetch_retries\": 2, \"fetch_backoff_base_s\": 0.1,
           \"fetch_backoff_max_s\": 0.2${2:+, $2}}" >"$T/$1.json"
}
fetch() { # fetch NAME [ENV=VALUE...]
    local n=$1
    shift
    env "$@" "$CKPTD" --config "$T/$n.json" fetch "$SRC" --step 0 >"$T/$n.out" 2>"$T/$n.err"
    RC=$?
}
blobs() { find "$T/cache-$1/blobs" -type f 2>/dev/null | wc -l; }
hub_reqs() { grep -vc '"uri":"/",' "$T/hub/hub.access.log" 2>/dev/null || true; } # not the readiness probe

# not trusted: the system's CA bundle, another CA, the variables ckptd does not read
for case in system other sslcertfile curlcabundle; do
    cfg "$case"
    case $case in
    system) fetch "$case" ;;
    other) fetch "$case" CKPTD_CA_BUNDLE="$T/otherca.pem" ;;
    sslcertfile) fetch "$case" SSL_CERT_FILE="$T/ca.pem" ;;
    curlcabundle) fetch "$case" CURL_CA_BUNDLE="$T/ca.pem" ;;
    esac
    eq "$case: untrusted CA exits 1" 1 "$RC"
    has "$case: certificate error naming the URL" "$T/$case.err" \
        "GET $TREE_URL: SSL certificate problem: (unable to get local issuer certificate|self-signed certificate in certificate chain)"
    hasnt "$case: not retried" "$T/$case.err" "retrying"
    eq "$case: nothing cached" 0 "$(blobs "$case")"
done
eq "no request reached the hub over an untrusted connection" 0 "$(hub_reqs)"

# trusted: CKPTD_CA_BUNDLE, then the config's ca_file
cfg env
fetch env CKPTD_CA_BUNDLE="$T/ca.pem"
eq "CKPTD_CA_BUNDLE: fetch exits 0" 0 "$RC"
has "CKPTD_CA_BUNDLE: weights with their sha256" "$T/env.out" "^model.safetensors +[0-9]+  $W0\$"
has "CKPTD_CA_BUNDLE: config.json fetched" "$T/env.out" "^config.json "
eq "CKPTD_CA_BUNDLE: blobs cached" 2 "$(blobs env)"
hub_log_lines "$T/hub/cdn.access.log" 1 5
has "the weights came from the HTTPS CDN" "$T/hub/cdn.access.log" "\"uri\":\"/blobs/$W0\",\"status\":200"
cfg file "\"ca_file\": \"$T/ca.pem\""
fetch file
eq "ca_file: fetch exits 0" 0 "$RC"
has "ca_file: weights with their sha256" "$T/file.out" "^model.safetensors +[0-9]+  $W0\$"

# the CA is trusted but the certificate names another host
hub_start X "$T/hubx" --root "$T/ck" --port 18322 --cdn-port 18323 --tls "$T/wrongname.pem" "$T/wrongname.key" || exit 1
cfg wrong
HF_ENDPOINT=$X_HUB_URL fetch wrong CKPTD_CA_BUNDLE="$T/ca.pem"
eq "wrong host name exits 1" 1 "$RC"
has "wrong host name: error names the host and the URL" "$T/wrong.err" \
    "GET $X_HUB_URL/api/models/$H_HUB_REPO/tree/step0: .*(subject name|does not match).*127.0.0.1"
eq "wrong host name: nothing cached" 0 "$(blobs wrong)"

cfg missing "\"ca_file\": \"$T/no-such-ca.pem\""
fetch missing
eq "unreadable ca_file exits 2" 2 "$RC"
has "unreadable ca_file named" "$T/missing.err" "ca_file $T/no-such-ca.pem cannot be read"

echo "# fetch_tls: $PASS ok, $FAILS failed"
[ "$FAILS" -eq 0 ]
