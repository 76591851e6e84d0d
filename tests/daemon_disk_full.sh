#!/bin/bash
# daemon_disk_full.sh - one `ckptd serve` through four full disks, each a
# small tmpfs this test mounts in a mount namespace of its own
# (unshare -m: nothing is mounted outside it) and fills with a filler file
# at the moment the work writes there:
#   download  the cache's filesystem fills while a checkpoint's weights
#             are being downloaded (the CDN stalls halfway, via
#             scripts/fault-proxy, while the filler is written);
#   HF cache  a checkpoint found in the HuggingFace cache is linked into a
#             full cache_dir;
#   spool     the spool's filesystem fills just before the worker writes
#             its rows (a worker_path wrapper writes the filler);
#   artifact  the artifact filesystem fills before the sae item saves its
#             dictionary.
# Asserted for each: the job is given back with an error naming the full
# directory and, where the writer could say it, "No space left on device";
# the attempt is not counted; nothing half-written is left (no blob that
# differs from its name, no partial download, no snapshot, no rows or
# artifact recorded, no SAE file half-written); the daemon claims nothing
# while the disk is full and says so; once the filler is removed the work
# completes, with its rows exactly once.  The same daemon (one pid) lives
# through all four.  Without root or mount it prints
# `SKIP: daemon_disk_full: <reason>` and passes.  PostgreSQL port 54432,
# HTTP ports 18640-18642.
if [ -z "${DISKFULL_NS:-}" ]; then
    if [ "$(id -u)" != 0 ] || ! unshare -m true 2>/dev/null; then
        echo "SKIP: daemon_disk_full: needs root for a mount namespace (unshare -m)"
        exit 0
    fi
    DISKFULL_NS=1 exec unshare -m --propagation private "$0" "$@"
fi
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init disk_full 54432
trap 'dl_rc=$?; hub_stop_all; for m in "$T"/fs/*; do umount "$m" 2>/dev/null; done; (exit $dl_rc); dl_cleanup' EXIT
mkdir -p "$T/fs/cache" "$T/fs/spool" "$T/fs/art"
for d in cache spool art; do
    if ! mount -t tmpfs -o size=6m tmpfs "$T/fs/$d" 2>"$T/mount.err"; then
        echo "SKIP: daemon_disk_full: cannot mount a tmpfs: $(cat "$T/mount.err")"
        exit 0
    fi
done
dl_migrate

# fill DIR: a filler file takes every free byte; unfill DIR removes it
fill() { dd if=/dev/zero of="$1/.filler" bs=64k 2>/dev/null; sync; }
unfill() { rm -f "$1/.filler"; }
free_kb() { df -k --output=avail "$1" | tail -1 | tr -d ' '; }

# ---- the checkpoints: an hf:// repository (download, HF cache) and local ones ----
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0,1 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/hubck" --port 18640 --cdn-port 18641 --cdn-url http://127.0.0.1:18642 || exit 1
hub_rules "$T/cdn.rules" '[]'
hub_proxy P 18642 127.0.0.1:18641 "$T/cdn.rules" "$T/p.log" || exit 1
W0=$(sha256sum "$T/hubck/step0/model.safetensors" | cut -d' ' -f1)
SIZE0=$(stat -c %s "$T/hubck/step0/model.safetensors")
# step 1 in a HuggingFace cache (HF_HOME): the daemon links, never downloads it
HFH=$T/hfhome
base=$HFH/hub/models--${H_HUB_REPO%%/*}--${H_HUB_REPO#*/}
commit=0123456789abcdef0123456789abcdef01234567
mkdir -p "$base/refs" "$base/blobs" "$base/snapshots/$commit"
printf '%s' "$commit" >"$base/refs/step1"
for f in config.json model.safetensors; do
    s=$(sha256sum "$T/hubck/step1/$f" | cut -d' ' -f1)
    cp "$T/hubck/step1/$f" "$base/blobs/$s"
    ln -s "../../blobs/$s" "$base/snapshots/$commit/$f"
done
dl_ckpts 3
# eval tokens for the sae item
python3 -c "
import random, struct, sys
r = random.Random(3)
sys.stdout.buffer.write(struct.pack('<2048H', *[r.randrange(512) for _ in range(2048)]))" >"$T/eval.u16"

# the worker: for the spool run (step 2) fill the spool's disk, for the sae
# run (step 1) the artifact disk, just before the real worker starts
dl_wrapper "$T/worker.sh" "case \"\$DIR\" in
*/step2) [ -e '$T/fill.spool' ] && { rm -f '$T/fill.spool'; dd if=/dev/zero of='$T/fs/spool/.filler' bs=64k 2>/dev/null; } ;;
*/step1) [ -e '$T/fill.art' ] && { rm -f '$T/fill.art'; dd if=/dev/zero of='$T/fs/art/.filler' bs=64k 2>/dev/null; } ;;
esac"
export HF_ENDPOINT=$H_HUB_URL HF_HOME=$HFH
dl_config "$T/cfg.json" '"disk_min_free_mb": 1' "\"cache_dir\": \"$T/fs/cache/c\"" \
    "\"spool_dir\": \"$T/fs/spool/s\"" "\"artifact_dir\": \"$T/fs/art/a\"" \
    "\"worker_path\": \"$T/worker.sh\"" '"fetch_retries": 2' '"fetch_backoff_base_s": 0.1' \
    '"fetch_backoff_max_s": 0.2' '"poll_s": 0.3'
add() { # add NAME SOURCE STEPS ITEMS [ARGS...]
    local n=$1 src=$2 st=$3 it=$4
    shift 4
    "$CKPTD" --config "$T/cfg.json" add-run "$n" --source "$src" --schedule "$st" --items "$it" \
        --max-attempts 2 "$@" >>"$T/add.out" 2>"$T/add.err" || { dl_fail "add-run $n"; cat "$T/add.err"; }
}
state() { dl_sql "SELECT state || '/' || attempts FROM job_list WHERE run = '$1' ORDER BY item LIMIT 1"; }
lasterr() { dl_sql "SELECT coalesce(last_error, '') FROM job_list WHERE run = '$1' ORDER BY item LIMIT 1"; }
rows() { dl_sql "SELECT count(*) FROM measurements m JOIN runs r ON r.id = m.run_id WHERE r.name = '$1'"; }

RPC=$(dl_rows_per_ckpt weights)
dl_serve S --config "$T/cfg.json" serve --node S
PID0=$S_PID

# ---- 1. the download: the cache fills mid-transfer ----
hub_rules "$T/cdn.rules" "[{\"match\": \"$W0\", \"times\": 1, \"action\": {\"stall_after\": $((SIZE0 / 2)), \"stall_s\": 3}}]"
add dl "hf://$H_HUB_REPO" 0 weights
part_half() { local f; for f in "$T"/fs/cache/c/partial/*.part; do [ -f "$f" ] && [ "$(stat -c %s "$f")" -ge $((SIZE0 / 2)) ] && return 0; done; return 1; }
dl_wait "half the weights downloaded" 30 part_half && fill "$T/fs/cache"
dl_wait "download given back" 30 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'dl' AND last_error LIKE 'given back%'" 1
e=$(lasterr dl)
case "$e" in *"cache_dir $T/fs/cache/c has "*"free, less than disk_min_free_mb"*"fetch failed: "*"No space left on device"*)
    dl_ok "download: the error names the full cache_dir and ENOSPC" ;;
*) dl_fail "download: last_error '$e'" ;; esac
dl_eq "download: queued, the attempt not counted" queued/0 "$(state dl)"
dl_eq "download: no partial left" 0 "$(ls "$T/fs/cache/c/partial" 2>/dev/null | wc -l)"
dl_eq "download: no blob of the weights" 0 "$(ls "$T/fs/cache/c/blobs" 2>/dev/null | grep -c "$W0")"
dl_grep "download: the daemon says it stops claiming" "$T/S.log" 'msg="not claiming work: disk space low" why=".*cache_dir'
n=$(dl_log_count "$T/S.log" "worker started")
unfill "$T/fs/cache"
dl_wait "download: done once space returned" 60 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'dl' AND state = 'done'" 1
dl_eq "download: rows once" "$RPC" "$(rows dl)"
dl_eq "download: done on the first counted attempt" done/1 "$(state dl)"
dl_grep "download: the daemon says it resumes" "$T/S.log" 'msg="disk space back: claiming work again"'

# ---- 2. the HF cache linked into a full cache_dir ----
# With the space check on, nothing is claimed while the cache is full:
fill "$T/fs/cache"
add hf "hf://$H_HUB_REPO" 1 weights --max-attempts 20
sleep 1.5
dl_eq "HF cache: nothing claimed while the cache is full" queued/0 "$(state hf)"
# with the check off (SIGHUP), the staging itself meets the full disk
reloads_over() { [ "$(dl_log_count "$T/S.log" "config reloaded")" -gt "$1" ]; }
reload() { # reload MIN_FREE_MB
    local n
    n=$(dl_log_count "$T/S.log" "config reloaded")
    sed -i "s/\"disk_min_free_mb\": [0-9]*/\"disk_min_free_mb\": $1/" "$T/cfg.json"
    kill -HUP "$PID0"
    dl_wait "config reloaded" 10 reloads_over "$n"
}
reload 0
dl_wait "HF cache: the staging failed" 30 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'hf' AND last_error <> ''" 1
e=$(lasterr hf)
case "$e" in "fetch failed: "*"No space left on device"*)
    dl_ok "HF cache: the error says the disk is full" ;;
*) dl_fail "HF cache: last_error '$e'" ;; esac
dl_eq "HF cache: no manifest written halfway" 0 "$(find "$T/fs/cache/c" -name '*.tmp*' | wc -l)"
dl_eq "HF cache: no snapshot marked complete" 0 "$(grep -l '"complete": true' -r "$T/fs/cache/c/manifests" 2>/dev/null | xargs -r grep -l step1 | wc -l)"
unfill "$T/fs/cache"
reload 1
dl_wait "HF cache: done once space returned" 60 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'hf' AND state = 'done'" 1
dl_eq "HF cache: rows once" "$RPC" "$(rows hf)"
dl_grep "HF cache: used, not downloaded" "$T/S.log" 'msg="taken from the HuggingFace cache"'
dl_eq "HF cache: no weights download" 0 "$(grep -c "$(sha256sum "$T/hubck/step1/model.safetensors" | cut -d' ' -f1)" "$T/p.log")"

# ---- 3. the spool fills before the worker writes its rows ----
touch "$T/fill.spool"
add sp "file://$T/ck/step{step}" 2 weights
dl_wait "spool: given back" 30 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'sp' AND last_error LIKE 'given back%'" 1
e=$(lasterr sp)
case "$e" in *"spool_dir $T/fs/spool/s has "*"free, less than disk_min_free_mb"*"worker exited with status 1"*)
    dl_ok "spool: the error names the full spool_dir and the worker's failure" ;;
*) dl_fail "spool: last_error '$e'" ;; esac
dl_eq "spool: queued, the attempt not counted" queued/0 "$(state sp)"
dl_eq "spool: no rows stored" 0 "$(rows sp)"
dl_eq "spool: no worker output left in the spool" 0 "$(ls "$T/fs/spool/s" | wc -l)"
unfill "$T/fs/spool"
dl_wait "spool: done once space returned" 60 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'sp' AND state = 'done'" 1
dl_eq "spool: rows once" "$RPC" "$(rows sp)"

# ---- 4. the artifact disk fills before the SAE is saved ----
touch "$T/fill.art"
add sae "file://$T/ck/step{step}" 1 sae --eval-tokens "$T/eval.u16" --ctx 32
dl_wait "sae: given back" 120 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'sae' AND last_error LIKE 'given back%'" 1
e=$(lasterr sae)
case "$e" in *"artifact_dir $T/fs/art/a has "*"free, less than disk_min_free_mb"*"worker exited with status 1"*"No space left on device"*)
    dl_ok "sae: the error names the full artifact_dir and the worker's ENOSPC" ;;
*) dl_fail "sae: last_error '$e'" ;; esac
dl_eq "sae: queued, the attempt not counted" queued/0 "$(state sae)"
dl_eq "sae: no file of the dictionary left" 0 "$(find "$T/fs/art/a" -type f | wc -l)"
dl_eq "sae: no artifact recorded" 0 "$(dl_sql "SELECT count(*) FROM artifacts")"
unfill "$T/fs/art"
dl_wait "sae: done once space returned" 120 dl_sql_ge "SELECT count(*) FROM job_list WHERE run = 'sae' AND state = 'done'" 1
dl_eq "sae: no temporary file left" 0 "$(find "$T/fs/art" -name '*.tmp*' | wc -l)"
dl_eq "sae: its files recorded once" "$(find "$T/fs/art/a" -type f | wc -l)" "$(dl_sql "SELECT count(*) FROM artifacts")"
dl_true "sae: a dictionary saved" test -s "$(find "$T/fs/art/a" -name sae_weights.safetensors | head -1)"

# ---- the same daemon all along; every blob is what its name says ----
dl_true "the daemon lived through all four" kill -0 "$PID0"
bad=0
for b in "$T"/fs/cache/c/blobs/*; do
    [ -f "$b" ] || continue
    [ "$(sha256sum "$b" | cut -d' ' -f1)" = "$(basename "$b")" ] || bad=$((bad + 1))
done
dl_eq "every cached blob matches its name" 0 "$bad"
dl_finish
