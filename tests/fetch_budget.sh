#!/bin/bash
# fetch_budget.sh - `ckptd serve` on an hf:// run served by scripts/hub-serve,
# built wholly from the PyTorch-zip fixtures (tests/golden/torchzip: one
# tiny model, C=32 — not the `tiny` preset of make-fixture-series — saved
# several ways): step 0 model.safetensors (F32), step 1 pytorch_model.bin
# only (F32, the same weights), step 2 pytorch_model.bin.index.json and two
# .bin shards, step 3 model.safetensors (F16), step 4 pytorch_model.bin only
# (F16, the same weights as step 3).  The cache budget (160000 bytes) holds
# one checkpoint but not two; the series is ~390 kB.  The daemon starts
# with no budget and gets it by SIGHUP, with new fetch settings.
# Asserts: the reload logged with the new values and a warning for
# cache_dir (restart only); every step done with its rows exactly once;
# the pytorch-only steps' measurements equal, value for value, those of
# their safetensors twins; nothing marked duplicate; the cache's blobs plus
# partial downloads, sampled every ~20 ms during the run, never exceed the
# budget; every "room made" log line has usage + reserved + need <= budget;
# the daemon waited for space and evicted snapshots; `ckptd fetch` of a
# checkpoint larger than a budget fails naming both.  PostgreSQL port
# 54361, HTTP ports 18310-18311.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init fetch_budget 54361
SAMPLER=""
trap 'dl_rc=$?; [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
TOKEN=hf_budget_$$
G=tests/golden/torchzip
mkdir -p "$T/hubck"/step{0,1,2,3,4}
cp "$G/st_f32/config.json" "$G/st_f32/model.safetensors" "$T/hubck/step0/"
cp "$G/bin_f32_p2/config.json" "$G/bin_f32_p2/pytorch_model.bin" "$T/hubck/step1/"
cp "$G"/bin_sharded/* "$T/hubck/step2/"
cp "$G/st_f16/config.json" "$G/st_f16/model.safetensors" "$T/hubck/step3/"
cp "$G/bin_f16_p4/config.json" "$G/bin_f16_p4/pytorch_model.bin" "$T/hubck/step4/"
dl_eq "steps 1, 2 and 4 carry no safetensors" 0 "$(ls "$T"/hubck/step{1,2,4} | grep -c safetensors)"
hub_start H "$T/hub" --root "$T/hubck" --port 18310 --cdn-port 18311 --token "$TOKEN" || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_TOKEN=$TOKEN HF_HOME=$T/hf-none
unset HF_HUB_OFFLINE
BUDGET=160000
BUDGET_GB=$(awk "BEGIN { printf \"%.20g\", $BUDGET / 1073741824 }")
# a worker that takes a second, so the next checkpoint is staged while
# the current one is pinned by its analysis
dl_wrapper "$T/slow-worker" '[ -n "$DIR" ] && "$SLEEP" 1'
dl_config "$T/cfg.json" '"prefetch": 1' "\"worker_path\": \"$T/slow-worker\"" '"fetch_parallel": 4'
"$CKPTD" --config "$T/cfg.json" migrate >/dev/null 2>&1
dl_serve S --config "$T/cfg.json" serve --node node-S
dl_wait "daemon serving" 30 grep -qs 'msg="serving"' "$T/S.log"

# SIGHUP: the budget and the fetch settings, and a key that needs a restart
dl_config "$T/cfg.json" '"prefetch": 1' "\"worker_path\": \"$T/slow-worker\"" '"fetch_parallel": 2' \
    '"fetch_retries": 3' '"fetch_low_speed_s": 20' '"fetch_low_speed_bytes": 500' \
    "\"cache_budget_gb\": $BUDGET_GB" "\"cache_dir\": \"$T/cache-other\""
kill -HUP "$S_PID"
dl_wait "config reloaded" 10 grep -qs 'msg="config reloaded"' "$T/S.log"
dl_grep "reload: fetch settings and budget in force" "$T/S.log" \
    "msg=\"config reloaded\" .*fetch_parallel=2 fetch_retries=3 fetch_low_speed_bytes=500 fetch_low_speed_s=20 .*cache_budget_bytes=$BUDGET\$"
dl_grep "reload: cache_dir needs a restart" "$T/S.log" \
    "msg=\"config: this setting changes only at a restart\" key=cache_dir running=\"?$T/cache\"? "
dl_true "the other cache_dir was not used" test ! -e "$T/cache-other"

# sample the cache's bytes on disk during the run
(while :; do
    find "$T/cache/blobs" "$T/cache/partial" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
    sleep 0.02
done) >"$T/du.samples" &
SAMPLER=$!
"$CKPTD" --config "$T/cfg.json" add-run torch --source "hf://$H_HUB_REPO" --schedule 0:4:1 \
    --items weights,lens >/dev/null 2>"$T/add.err" || dl_fail "add-run"
dl_wait "all jobs done" 180 dl_sql_ge "SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')" 10
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
SAMPLER=""
kill -TERM "$S_PID"
dl_wait_exit "$S_PID" 30
dl_eq "daemon exit" 0 "$DL_STATUS"

dl_eq "jobs done" 10 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'torch' AND state = 'done'")"
RPC=$(dl_sql "SELECT count(*) FROM measurements WHERE step = 0")
dl_true "step 0 has rows ($RPC)" [ "$RPC" -gt 50 ]
dl_eq "every step has the same number of rows" "0,1,2,3,4" \
    "$(dl_sql "SELECT string_agg(step::text, ',' ORDER BY step) FROM (SELECT step FROM measurements GROUP BY step HAVING count(*) = $RPC) s")"
# value for value: a step against its safetensors twin
same() {
    dl_sql "SELECT count(*) FROM measurements a JOIN measurements b
              ON b.metric_id = a.metric_id AND b.layer = a.layer AND b.head = a.head AND b.idx = a.idx
                 AND b.run_id = a.run_id
            WHERE a.step = $1 AND b.step = $2 AND a.value IS NOT DISTINCT FROM b.value"
}
dl_eq "step 1 (pytorch_model.bin) equals step 0 (safetensors)" "$RPC" "$(same 1 0)"
dl_eq "step 2 (sharded .bin) equals step 0" "$RPC" "$(same 2 0)"
dl_eq "step 4 (F16 .bin) equals step 3 (F16 safetensors)" "$RPC" "$(same 4 3)"
dl_true "F16 differs from F32 (the comparison can fail)" [ "$(same 3 0)" -lt "$RPC" ]
dl_eq "pytorch files recorded for step 1" "config.json,pytorch_model.bin" \
    "$(dl_sql "SELECT string_agg(f.name, ',' ORDER BY f.name) FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id WHERE c.step = 1")"
dl_eq "step 2: config, index and two shards" 4 \
    "$(dl_sql "SELECT count(*) FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id WHERE c.step = 2")"
dl_eq "nothing marked duplicate" 0 "$(dl_sql "SELECT count(*) FROM checkpoints WHERE duplicate_of IS NOT NULL")"

# the budget
total=$(du -cb "$T"/hubck/step*/* | tail -n 1 | cut -f1)
dl_true "the series ($total bytes) is larger than the budget" [ "$total" -gt "$BUDGET" ]
nsamp=$(wc -l <"$T/du.samples")
max=$(sort -n "$T/du.samples" | tail -n 1)
dl_true "sampled the cache ($nsamp samples, max $max bytes)" [ "$nsamp" -ge 20 ] && [ "$max" -gt 0 ]
dl_true "the cache never exceeded the budget (max $max <= $BUDGET)" [ "$max" -le "$BUDGET" ]
over=$(grep 'msg="cache: room made for a download"' "$T/S.log" |
    sed -E 's/.* need=([0-9]+) usage=([0-9]+) reserved=([0-9]+) budget=([0-9]+).*/\1 \2 \3 \4/' |
    awk '$1 + $2 + $3 > $4 { n++ } END { print n + 0 }')
dl_eq "room made within the budget every time" 0 "$over"
dl_eq "room made for each checkpoint (step 2 twice: its index, then its shards)" 6 "$(dl_log_count "$T/S.log" "cache: room made for a download")"
dl_true "waited for space while a checkpoint was analysed" [ "$(dl_log_count "$T/S.log" "cache: waiting for space")" -ge 1 ]
dl_true "evicted analysed snapshots" [ "$(dl_log_count "$T/S.log" "cache: evicted")" -ge 3 ]
# a checkpoint larger than the whole budget: refused, naming the numbers
echo "{\"cache_dir\": \"$T/cache-small\", \"cache_budget_gb\": $(awk 'BEGIN { printf "%.20g", 50000 / 1073741824 }')}" >"$T/small.json"
# (an empty HuggingFace cache: the serve above wrote step 0 into $HF_HOME's)
HF_HOME=$T/hf-empty "$CKPTD" --config "$T/small.json" fetch "hf://$H_HUB_REPO" --step 0 >"$T/small.out" 2>"$T/small.err"
dl_eq "ckptd fetch beyond the budget exits 1" 1 $?
dl_grep "the error names budget and bytes needed" "$T/small.err" \
    "step 0: hf://$H_HUB_REPO revision step0 \(91098 bytes to download\): cache budget 50000 bytes cannot hold 91098 more"
dl_eq "nothing downloaded beyond the budget" 0 "$(find "$T/cache-small/blobs" "$T/cache-small/partial" -type f | wc -l)"
echo "# cache bytes: max $max of budget $BUDGET over $nsamp samples; series $total bytes"
dl_finish
