#!/bin/bash
# bench/fetch_bench.sh - downloads on loopback, against baselines measured in
# the same run, from a local hub (scripts/hub-serve: nginx, the resolve URL
# redirecting to its CDN port):
#
#  1. one checkpoint of BENCH_FETCH_MB MiB of weights (default 1024):
#     `ckptd fetch` (tree API, redirect, streaming sha256, verification,
#     atomic move into the cache) against `curl -L -o` of the same resolve
#     URL; median of BENCH_REPS (default 3) wall times each, fresh cache
#     every time; ratio = ckptd MB/s / curl MB/s (goal >= 0.9).
#  2. 8 checkpoints of BENCH_FETCH_MB/8 MiB at once: 8 `ckptd fetch`
#     processes against 8 `curl` processes, aggregate MB/s.
#  3. the worker's wait for downloads: `ckptd serve` (1 worker) over 6
#     pythia-14m checkpoints from the hub, with prefetch on and off; the
#     "stopped" log line's download_wait_s and download_wait_after_first_s
#     (time the worker slot was idle while a download ran).
#
# Nothing passes or fails on timings.  Tables to stdout and
# build/bench/fetch.md.  HTTP ports 18190-18195, PostgreSQL 54359.
set -u
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 1
. tests/lib/hub.sh
MB=${BENCH_FETCH_MB:-1024}
REPS=${BENCH_REPS:-3}
CKPTD=$PWD/build/bin/ckptd
B=$(mktemp -d /tmp/ckfb-XXXXXX)
cleanup() { hub_stop_all; rm -rf "$B"; }
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
mkdir -p "$B/ck/step0" "$B/many" build/bench
printf '{"model_type": "gpt_neox"}\n' >"$B/ck/step0/config.json"
echo "fetch_bench: writing $MB MiB of weights" >&2
head -c $((MB << 20)) /dev/urandom >"$B/ck/step0/model.safetensors"
for i in 0 1 2 3 4 5 6 7; do
    mkdir -p "$B/many/step$i"
    cp "$B/ck/step0/config.json" "$B/many/step$i/"
    head -c $(((MB << 20) / 8)) /dev/urandom >"$B/many/step$i/model.safetensors"
done
hub_start ONE "$B/hub1" --root "$B/ck" --port 18190 --cdn-port 18191 || exit 1
hub_start MANY "$B/hub2" --root "$B/many" --port 18192 --cdn-port 18193 || exit 1
unset HF_TOKEN HF_HUB_OFFLINE
fetch_t() { # ENDPOINT STEP CACHE: seconds
    local t0 t1
    t0=$(now)
    HF_ENDPOINT=$1 "$CKPTD" --config <(echo "{\"cache_dir\": \"$3\"}") fetch "hf://$ONE_HUB_REPO" --step "$2" \
        >"$B/fetch.out" 2>"$B/fetch.err" || { cat "$B/fetch.err" >&2; echo nan; return; }
    t1=$(now)
    echo "$t1 - $t0" | awk '{print $1 - $3}'
}
curl_t() { # URL: seconds
    local t0 t1
    t0=$(now)
    curl -sfL -o "$B/curl.out" "$1" || echo "curl failed" >&2
    t1=$(now)
    rm -f "$B/curl.out"
    echo "$t1 - $t0" | awk '{print $1 - $3}'
}
echo "fetch_bench: one checkpoint, $REPS reps" >&2
: >"$B/c1"
: >"$B/f1"
for r in $(seq "$REPS"); do
    curl_t "$ONE_HUB_URL/$ONE_HUB_REPO/resolve/step0/model.safetensors" >>"$B/c1"
    rm -rf "$B/cache"
    sync
    fetch_t "$ONE_HUB_URL" 0 "$B/cache" >>"$B/f1"
done
c1=$(median <"$B/c1")
f1=$(median <"$B/f1")
echo "fetch_bench: 8 checkpoints at once, $REPS reps" >&2
: >"$B/c8"
: >"$B/f8"
for r in $(seq "$REPS"); do
    t0=$(now)
    for i in 0 1 2 3 4 5 6 7; do curl -sfL -o "$B/c8.$i" "$MANY_HUB_URL/$MANY_HUB_REPO/resolve/step$i/model.safetensors" & done
    wait
    t1=$(now)
    rm -f "$B"/c8.*
    echo "$t1 $t0" | awk '{print $1 - $2}' >>"$B/c8"
    rm -rf "$B/cache8"
    sync
    t0=$(now)
    for i in 0 1 2 3 4 5 6 7; do
        HF_ENDPOINT=$MANY_HUB_URL "$CKPTD" --config <(echo "{\"cache_dir\": \"$B/cache8\"}") \
            fetch "hf://$MANY_HUB_REPO" --step "$i" >/dev/null 2>"$B/f8.$i.err" &
    done
    wait
    t1=$(now)
    echo "$t1 $t0" | awk '{print $1 - $2}' >>"$B/f8"
done
c8=$(median <"$B/c8")
f8=$(median <"$B/f8")

# 3: the worker's wait, prefetch on and off
echo "fetch_bench: worker wait for downloads" >&2
hub_stop_all
(
    . tests/lib/daemon.sh
    dl_init fetch_bench 54359 >/dev/null
    trap 'hub_stop_all; dl_cleanup' EXIT
    dl_migrate
    mkdir -p "$T/hubck"
    for i in 0 1 2 3 4 5; do "$WORKER" init "$T/hubck/step$i" --preset pythia-14m --seed "$i" >/dev/null 2>&1; done
    hub_start W "$T/hub" --root "$T/hubck" --port 18194 --cdn-port 18195 >/dev/null || exit 1
    export HF_ENDPOINT=$W_HUB_URL
    for pf in 1 0; do
        dl_config "$T/cfg$pf.json" "\"prefetch\": $pf" "\"cache_dir\": \"$T/cache$pf\""
        "$CKPTD" --config "$T/cfg$pf.json" add-run "r$pf" --source "hf://$W_HUB_REPO" --schedule 0:5:1 \
            --items loss,weights >/dev/null 2>&1
        "$CKPTD" --config "$T/cfg$pf.json" serve --until-idle --workers 1 >/dev/null 2>"$T/serve$pf.log"
        w=$(grep 'msg="stopped"' "$T/serve$pf.log" | sed -E 's/.*download_wait_s=([0-9.]+) download_wait_after_first_s=([0-9.]+).*/\1 \2/')
        ws=$(grep -o 'worker_s=[0-9.]*' "$T/serve$pf.log" | cut -d= -f2 | median)
        fs=$(grep -o 'msg="checkpoint fetched".*fetch_s=[0-9.]*' "$T/serve$pf.log" | grep -o 'fetch_s=[0-9.]*' | cut -d= -f2 | median)
        echo "$pf $w $ws $fs" >>"$B/wait"
    done
)
{
    echo "## fetch (loopback, nginx hub with a redirect to its CDN port)"
    echo
    echo "| case | curl | ckptd fetch | ratio |"
    echo "|---|---|---|---|"
    awk -v mb="$MB" -v c="$c1" -v f="$f1" 'BEGIN { printf "| 1 checkpoint, %d MiB | %.0f MB/s (%.2f s) | %.0f MB/s (%.2f s) | %.2f |\n", mb, mb*1.048576/c, c, mb*1.048576/f, f, c/f }'
    awk -v mb="$MB" -v c="$c8" -v f="$f8" 'BEGIN { printf "| 8 checkpoints at once, %d MiB each | %.0f MB/s (%.2f s) | %.0f MB/s (%.2f s) | %.2f |\n", mb/8, mb*1.048576/c, c, mb*1.048576/f, f, c/f }'
    echo
    echo "Medians of $REPS; ckptd's time includes the tree API call, sha256 of every byte, fdatasync and the move into the cache."
    echo
    echo "| prefetch | worker idle waiting for downloads | after the first checkpoint | median worker_s | median fetch_s |"
    echo "|---|---|---|---|---|"
    while read -r pf a b ws fs; do echo "| $([ "$pf" = 1 ] && echo on || echo off) | ${a}s | ${b}s | ${ws}s | ${fs}s |"; done <"$B/wait"
    echo
    echo "6 pythia-14m checkpoints, 1 worker, items loss,weights."
} | tee build/bench/fetch.md
