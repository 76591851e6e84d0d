#!/bin/bash
# fetch_serve.sh - `ckptd serve` on an hf:// run served by scripts/hub-serve
# behind scripts/fault-proxy: steps 0, 1, 2, 4, 8 where step 1 has the same
# weights as step 0 (the duplicate-revision defect) and step 2 is sharded;
# the CDN corrupts step 4's weights on every request.  Asserts: steps 0, 1,
# 2 and 8 done with their measurements exactly once; step 1 marked
# duplicate_of step 0, left out of the `series` view and shown by
# `ckptd status`; every file's size and sha256 in checkpoint_files; step 4
# dead after its attempts with last_error naming the sha256 mismatch and
# nothing measured for it; no blob in the cache differs from its name;
# downloads recorded in `fetches`; the worker got the snapshot directory;
# the token never in the CDN's log nor in ckptd's.  PostgreSQL port 54350,
# HTTP ports 18120-18123.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init fetch_serve 54350
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
TOKEN=hf_serve_secret_$$
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0,1,2,4,8 --dup 1=0 --sharded 2 \
    >"$T/fixture.out" 2>&1 || { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/hubck" --port 18120 --cdn-port 18121 --cdn-url http://127.0.0.1:18122 \
    --token "$TOKEN" || exit 1
W4=$(sha256sum "$T/hubck/step4/model.safetensors" | cut -d' ' -f1)
W0=$(sha256sum "$T/hubck/step0/model.safetensors" | cut -d' ' -f1)
hub_rules "$T/cdn.rules" "[{\"match\": \"$W4\", \"action\": {\"corrupt_at\": 5000}}]"
hub_proxy P 18122 127.0.0.1:18121 "$T/cdn.rules" "$T/p.log" || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_TOKEN=$TOKEN HF_HOME=$T/hf-none
RPC=$(dl_rows_per_ckpt weights)
dl_config "$T/cfg.json" '"prefetch": 1' '"fetch_retries": 1' '"fetch_backoff_base_s": 0.1' '"fetch_backoff_max_s": 0.2'
"$CKPTD" --config "$T/cfg.json" add-run hubrun --source "hf://$H_HUB_REPO" --schedule 0,1,2,4,8 \
    --items weights --max-attempts 2 >/dev/null 2>"$T/add.err" || dl_fail "add-run"
dl_serve S --config "$T/cfg.json" serve --until-idle --node node-S
dl_wait_exit "$S_PID" 120
dl_eq "daemon exit" 0 "$DL_STATUS"

state() { dl_sql "SELECT state FROM job_list WHERE run = 'hubrun' AND step = $1"; }
for s in 0 1 2 8; do dl_eq "step $s done" done "$(state $s)"; done
dl_eq "step 4 dead" dead "$(state 4)"
e4=$(dl_sql "SELECT last_error FROM job_list WHERE run = 'hubrun' AND step = 4")
case "$e4" in
"fetch failed: "*"GET $H_HUB_URL/$H_HUB_REPO/resolve/step4/model.safetensors: sha256 mismatch: expected $W4, got "*)
    dl_ok "step 4's error names the URL and both hashes" ;;
*) dl_fail "step 4 error: '$e4'" ;;
esac
dl_eq "step 4 tried max_attempts times" 2 "$(dl_sql "SELECT attempts FROM job_list WHERE run = 'hubrun' AND step = 4")"
dl_eq "nothing measured for step 4" 0 "$(dl_sql "SELECT count(*) FROM measurements WHERE step = 4")"
dl_eq "steps with exactly $RPC rows" "0,1,2,8" \
    "$(dl_sql "SELECT string_agg(step::text, ',' ORDER BY step) FROM (SELECT step FROM measurements GROUP BY step HAVING count(*) = $RPC) s")"
dl_eq "measurements in all" $((4 * RPC)) "$(dl_sql "SELECT count(*) FROM measurements")"
dl_eq "step 1 is a duplicate of step 0" 0 \
    "$(dl_sql "SELECT o.step FROM checkpoints c JOIN checkpoints o ON o.id = c.duplicate_of WHERE c.step = 1")"
dl_eq "only step 1 is a duplicate" 1 "$(dl_sql "SELECT count(*) FROM checkpoints WHERE duplicate_of IS NOT NULL")"
dl_eq "series leaves step 1 out" "0,2,8" \
    "$(dl_sql "SELECT string_agg(DISTINCT step::text, ',') FROM series WHERE run = 'hubrun'")"
dl_eq "step 0's weights recorded" "$W0" \
    "$(dl_sql "SELECT f.sha256 FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id WHERE c.step = 0 AND f.name = 'model.safetensors'")"
dl_eq "step 2: config, index and two shards recorded" 4 \
    "$(dl_sql "SELECT count(*) FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id WHERE c.step = 2")"
dl_eq "checkpoint sizes recorded" 4 "$(dl_sql "SELECT count(*) FROM checkpoints WHERE size > 0")"
dl_eq "fetches: four done" 4 "$(dl_sql "SELECT count(*) FROM fetches WHERE state = 'done'")"
dl_eq "fetches: step 4 failed" failed \
    "$(dl_sql "SELECT f.state FROM fetches f JOIN checkpoints c ON c.id = f.checkpoint_id WHERE c.step = 4")"
"$CKPTD" --config "$T/cfg.json" status hubrun >"$T/status.out" 2>&1
dl_grep "status lists the duplicate" "$T/status.out" "hubrun step 1 = step 0"
dl_grep "status shows step 4's fetch error" "$T/status.out" "hubrun step 4 weights: DEAD .*sha256 mismatch"
bad=0
for b in "$T"/cache/blobs/*; do
    [ "$(sha256sum "$b" | cut -d' ' -f1)" = "$(basename "$b")" ] || bad=$((bad + 1))
done
dl_eq "every cached blob matches its name" 0 "$bad"
dl_eq "the corrupt weights were never cached" 0 "$(ls "$T/cache/blobs" | grep -c "$W4")"
dl_grep "the worker read the snapshot" "$T/S.log" "msg=\"checkpoint fetched\" run=\"hubrun\" step=0 .*dir=\"?$T/cache/snapshots/"
dl_grep "duplicate logged" "$T/S.log" 'msg="duplicate checkpoint.*step=1 same_as_step=0'
dl_eq "token not in the CDN's log" 0 "$(grep -c "$TOKEN" "$T/hub/cdn.access.log")"
dl_eq "token not in ckptd's log" 0 "$(grep -c "$TOKEN" "$T/S.log")"
dl_eq "analysed snapshots marked" 4 "$(grep -l '"analysed": true' -r "$T/cache/manifests" | wc -l)"
dl_finish
