#!/bin/bash
# hf_cache.sh - the HuggingFace cache written through, read back by an
# independent resolver (tests/reference/hf_cache_resolve.py: huggingface_hub's
# try_to_load_from_cache and its layout, Python's standard library only)
# against what the local hub (scripts/hub-serve) serves: the commit of the
# revision (X-Repo-Commit), each file's sha256 and its blob named by the
# ETag the hub sends (the sha256 for LFS files, the git blob sha1 else).
#
# `ckptd fetch` (no database): where the cache is, for each of HF_HOME,
# XDG_CACHE_HOME, HOME alone, HUGGINGFACE_HUB_CACHE over HF_HOME and
# HF_HUB_CACHE over HUGGINGFACE_HUB_CACHE (the resolver finds the files
# from the same environment); the weights downloaded once (the CDN's log)
# and the HF blob a hard link of ckptd's (same inode); "hf_cache_write":
# false writes nothing; the token from HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
# $HF_HOME/token and HF_TOKEN_PATH, none -> 401; offline from the HF cache
# alone with HF_HUB_OFFLINE and with TRANSFORMERS_OFFLINE (no request),
# HF_HUB_OFFLINE=0 deciding over TRANSFORMERS_OFFLINE=1, and a clear error
# for a step it does not hold; two fetches writing one HF cache at once;
# a blob lock held by another process (Python's fcntl.flock, as
# huggingface_hub's filelock takes it) briefly -> waited for, for long ->
# that file skipped and the fetch still done.
#
# `ckptd serve` (PostgreSQL): a run of 4 steps; checkpoints.hub_commit =
# the hub's commits.  Then step 2 is re-uploaded (new weights, new commit,
# the server restarted) and a new item is added to the run: staging step 2
# again notices the move, records it in revision_changes (old and new
# commit, weights changed, 1 job queued again, its rows removed), the
# loss job of step 2 runs again and its stored value is what ckpt-worker
# computes on the new files; `ckptd status` reports it; in the HF cache
# refs/step2 names the new commit, the old snapshot stays, and the
# resolver finds the new files.  About 25 s.  PostgreSQL port 54433,
# HTTP ports 18704-18705.
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init hf_cache 54433
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
RESOLVE="$PY $ROOT/tests/reference/hf_cache_resolve.py"
TOKEN=hf_tok_$$_x
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0,1,2,4 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
hub_start H "$T/hub" --root "$T/hubck" --port 18704 --cdn-port 18705 --token "$TOKEN" || exit 1
REPO=$H_HUB_REPO
SRC=hf://$REPO
unset HF_HOME HF_HUB_CACHE HUGGINGFACE_HUB_CACHE XDG_CACHE_HOME HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_TOKEN_PATH \
    HF_HUB_OFFLINE TRANSFORMERS_OFFLINE
export HF_ENDPOINT=$H_HUB_URL
FILES="config.json model.safetensors"
W1=$(sha256sum "$T/hubck/step1/model.safetensors" | cut -d' ' -f1)

# fetch NAME STEP [VAR=VALUE...]: ckptd fetch with the config $T/NAME.json
# (its own cache unless it exists), in an environment with just the given
# hub variables; RC, $T/NAME.out, $T/NAME.err
fetch() {
    local n=$1 step=$2
    shift 2
    [ -f "$T/$n.json" ] || echo "{\"cache_dir\": \"$T/cache-$n\"}" >"$T/$n.json"
    env "$@" "$CKPTD" --config "$T/$n.json" fetch "$SRC" --step "$step" >"$T/$n.out" 2>"$T/$n.err"
    RC=$?
    return $RC
}
# resolves DESC STEP RESOLVER-ARGS...: the reference finds every file of the
# step as the hub serves it
resolves() {
    local d=$1 step=$2
    shift 2
    if $RESOLVE "$@" --repo "$REPO" --revision "step$step" --manifest "$T/hub/manifest.json" $FILES \
        >"$T/resolve.out" 2>&1; then
        dl_ok "$d"
    else
        dl_fail "$d"
        sed 's/^/    | /' "$T/resolve.out"
    fi
}
cdn_gets() { grep -c "\"uri\":\"/blobs/$1\",\"status\":200" "$T/hub/cdn.access.log" 2>/dev/null || true; }

# -- where the cache is ------------------------------------------------------
fetch first 1 HF_TOKEN=$TOKEN HF_HOME="$T/home1"
dl_eq "HF_HOME: fetch exits 0" 0 "$RC"
resolves "HF_HOME: resolved in \$HF_HOME/hub" 1 --cache "$T/home1/hub"
HF_HOME="$T/home1" resolves "HF_HOME: resolved from the same environment" 1 --from-env
hub_log_lines "$T/hub/cdn.access.log" 1 5
base=$T/home1/hub/models--${REPO%%/*}--${REPO#*/}
ino_hf=$(stat -L -c %i "$base/snapshots/$(cat "$base/refs/step1")/model.safetensors")
ino_ck=$(stat -c %i "$T/cache-first/blobs/$W1")
dl_eq "the HF blob is a hard link of ckptd's (one inode)" "$ino_ck" "$ino_hf"
dl_true "refs/step1 has no newline" [ "$(wc -l <"$base/refs/step1")" = 0 ]
dl_true "CACHEDIR.TAG written" grep -q '^Signature: 8a477f597d28d172789f06886806bc55' "$T/home1/hub/CACHEDIR.TAG"
dl_eq "no temporary file left in the HF cache" "" "$(find "$T/home1" -name '*.incomplete' -o -name '.*.tmp')"

# the resolver is no rubber stamp: a cache laid out otherwise fails it
broken() { # broken DESC: the resolver must refuse $T/broken
    if $RESOLVE --cache "$T/broken" --repo "$REPO" --revision step1 --manifest "$T/hub/manifest.json" $FILES \
        >"$T/broken.out" 2>&1; then dl_fail "the resolver refuses $1"; else dl_ok "the resolver refuses $1"; fi
}
bb=$T/broken/models--${REPO%%/*}--${REPO#*/}
c1=$(cat "$base/refs/step1")
rm -rf "$T/broken" && cp -a "$T/home1/hub" "$T/broken"
ln -sfn "$bb/blobs/$W1" "$bb/snapshots/$c1/model.safetensors"
broken "an absolute symlink"
rm -rf "$T/broken" && cp -a "$T/home1/hub" "$T/broken"
printf '%s\n' "$c1" >"$bb/refs/step1"
broken "a ref ending in a newline"
rm -rf "$T/broken" && cp -a "$T/home1/hub" "$T/broken"
cfgblob=$(basename "$(readlink "$bb/snapshots/$c1/config.json")")
printf ' ' >>"$bb/blobs/$cfgblob" # a copy: cp -a did not keep the link to ckptd's blob
broken "a blob whose content is not its name"
rm -rf "$T/broken"

cp "$T/first.json" "$T/shared.json" # every case below reuses the first cache: no new download
for case in xdg home legacy new; do
    rm -f "$T/shared.err"
    case $case in
    xdg) fetch shared 1 HF_TOKEN=$TOKEN XDG_CACHE_HOME="$T/xdg" HOME="$T/nohome"
        where=$T/xdg/huggingface/hub env_args=(XDG_CACHE_HOME="$T/xdg" HOME="$T/nohome") ;;
    home) fetch shared 1 HF_TOKEN=$TOKEN HOME="$T/home"
        where=$T/home/.cache/huggingface/hub env_args=(HOME="$T/home") ;;
    legacy) fetch shared 1 HF_TOKEN=$TOKEN HF_HOME="$T/home2" HUGGINGFACE_HUB_CACHE="$T/legacy"
        where=$T/legacy env_args=(HF_HOME="$T/home2" HUGGINGFACE_HUB_CACHE="$T/legacy") ;;
    new) fetch shared 1 HF_TOKEN=$TOKEN HF_HOME="$T/home2" HUGGINGFACE_HUB_CACHE="$T/legacy2" HF_HUB_CACHE="$T/new"
        where=$T/new env_args=(HF_HOME="$T/home2" HUGGINGFACE_HUB_CACHE="$T/legacy2" HF_HUB_CACHE="$T/new") ;;
    esac
    dl_eq "$case: fetch exits 0" 0 "$RC"
    resolves "$case: resolved in $where" 1 --cache "$where"
    if env -i PATH="$PATH" "${env_args[@]}" $RESOLVE --from-env --repo "$REPO" --revision step1 $FILES \
        >"$T/resolve.out" 2>&1; then dl_ok "$case: the resolver places the cache there too"; else
        dl_fail "$case: the resolver, from the same environment"
        sed 's/^/    | /' "$T/resolve.out"
    fi
done
dl_eq "nothing under \$HF_HOME when HF_HUB_CACHE or HUGGINGFACE_HUB_CACHE is set" "" "$(ls "$T/home2" 2>/dev/null)"
dl_eq "the weights of step 1 were downloaded once" 1 "$(cdn_gets "$W1")"

echo "{\"cache_dir\": \"$T/cache-off\", \"hf_cache_write\": false}" >"$T/off.json"
fetch off 1 HF_TOKEN=$TOKEN HF_HOME="$T/home-off"
dl_eq "hf_cache_write false: fetch exits 0" 0 "$RC"
dl_eq "hf_cache_write false: no HF cache" "" "$(ls "$T/home-off" 2>/dev/null)"
echo '{"hf_cache_write": "no"}' >"$T/badcfg.json"
"$CKPTD" --config "$T/badcfg.json" status >/dev/null 2>"$T/badcfg.err"
dl_eq "hf_cache_write must be a boolean: usage error" 2 $?
dl_grep "hf_cache_write must be a boolean: named" "$T/badcfg.err" 'hf_cache_write.{0,2} must be true or false'

# -- the token ---------------------------------------------------------------
mkdir -p "$T/tokhome"
printf '  %s\n' "$TOKEN" >"$T/tokhome/token"
printf '%s' "$TOKEN" >"$T/tokfile"
fetch t_none 0 HF_HOME="$T/h-none"
dl_eq "no token: fetch fails" 1 "$RC"
dl_grep "no token: HTTP 401 named" "$T/t_none.err" 'HTTP 401'
fetch t_legacy 0 HF_HOME="$T/h-legacy" HUGGING_FACE_HUB_TOKEN=$TOKEN
dl_eq "HUGGING_FACE_HUB_TOKEN: fetch exits 0" 0 "$RC"
fetch t_file 0 HF_HOME="$T/tokhome"
dl_eq "\$HF_HOME/token (blanks and newline around it): fetch exits 0" 0 "$RC"
fetch t_path 0 HF_HOME="$T/h-path" HF_TOKEN_PATH="$T/tokfile"
dl_eq "HF_TOKEN_PATH: fetch exits 0" 0 "$RC"
fetch t_over 0 HF_HOME="$T/tokhome" HF_TOKEN=wrong_token
dl_eq "HF_TOKEN decides over the token file (a wrong one: 401)" 1 "$RC"
dl_true "the token is never printed" sh -c "! grep -q '$TOKEN' '$T'/t_*.err '$T'/t_*.out"

# -- offline -----------------------------------------------------------------
hub_reqs() { grep -vc '"uri":"/",' "$T/hub/hub.access.log" 2>/dev/null || true; }
hub_log_lines "$T/hub/hub.access.log" 1 5
n0=$(hub_reqs)
fetch offline 1 HF_HOME="$T/home1" HF_HUB_OFFLINE=1
dl_eq "HF_HUB_OFFLINE=1: from the HF cache alone, exit 0" 0 "$RC"
dl_grep "HF_HUB_OFFLINE=1: the weights' sha256" "$T/offline.out" "^model.safetensors .* $W1\$"
fetch offline_tf 1 HF_HOME="$T/home1" TRANSFORMERS_OFFLINE=1
dl_eq "TRANSFORMERS_OFFLINE=1: exit 0" 0 "$RC"
fetch offline_miss 2 HF_HOME="$T/home1" HF_HUB_OFFLINE=yes
dl_eq "offline, step not in any cache: exit 1" 1 "$RC"
dl_grep "offline, step not in any cache: the error names it and the HF cache" "$T/offline_miss.err" \
    "offline \\(HF_HUB_OFFLINE=1\\) and $REPO revision step2 is in neither the ckptd cache nor the HuggingFace cache \\($T/home1/hub\\)"
sleep 0.3
dl_eq "offline: no request reached the hub" "$n0" "$(hub_reqs)"
fetch online_hf0 4 HF_TOKEN=$TOKEN HF_HOME="$T/home1" HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=1
dl_eq "HF_HUB_OFFLINE=0 decides over TRANSFORMERS_OFFLINE=1: online, exit 0" 0 "$RC"
hub_log_lines "$T/hub/hub.access.log" $((n0 + 2)) 5
dl_true "HF_HUB_OFFLINE=0: the hub was asked" [ "$(hub_reqs)" -gt "$n0" ]

# -- writers at once, and huggingface_hub's lock -----------------------------
fetch par_a 2 HF_TOKEN=$TOKEN HF_HOME="$T/par" &
pa=$!
fetch par_b 2 HF_TOKEN=$TOKEN HF_HOME="$T/par"
wait $pa
dl_eq "two fetches writing one HF cache at once: both exit 0" "0 0" "$? $RC"
resolves "two fetches: the layout is whole" 2 --cache "$T/par/hub"
dl_eq "two fetches: no temporary file left" "" "$(find "$T/par" -name '*.incomplete' -o -name '.*.tmp')"

W4=$(sha256sum "$T/hubck/step4/model.safetensors" | cut -d' ' -f1)
lockdir=$T/lk/hub/.locks/models--${REPO%%/*}--${REPO#*/}
mkdir -p "$lockdir"
hold() { # hold SECONDS: flock the weights' blob lock as huggingface_hub's filelock does
    $PY -c 'import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[1] + ".held", "w").close()
time.sleep(float(sys.argv[2]))' "$lockdir/$W4.lock" "$1" &
    HOLD_PID=$!
    dl_wait "the lock taken" 10 test -e "$lockdir/$W4.lock.held"
}
hold 0.8
fetch lk_short 4 HF_TOKEN=$TOKEN HF_HOME="$T/lk"
wait $HOLD_PID
rm -f "$lockdir/$W4.lock.held"
dl_eq "a blob lock held 0.8 s: waited for, exit 0" 0 "$RC"
resolves "a blob lock held 0.8 s: the file is in the HF cache" 4 --cache "$T/lk/hub"
rm -rf "$T/lk/hub/models--${REPO%%/*}--${REPO#*/}"
hold 6
fetch lk_long 4 HF_TOKEN=$TOKEN HF_HOME="$T/lk"
kill "$HOLD_PID" 2>/dev/null
wait "$HOLD_PID" 2>/dev/null
dl_eq "a blob lock held long: the fetch still succeeds" 0 "$RC"
dl_grep "a blob lock held long: the skipped file is logged" "$T/lk_long.err" \
    'HuggingFace cache: a file not written.*file=model.safetensors.*held by another process'
dl_true "a blob lock held long: that blob is not in the HF cache" \
    test ! -e "$T/lk/hub/models--${REPO%%/*}--${REPO#*/}/blobs/$W4"

# -- serve: the commit recorded, a re-uploaded branch ------------------------
dl_migrate
export HF_TOKEN=$TOKEN HF_HOME=$T/serve-hf
dl_config "$T/cfg.json"
"$CKPTD" --config "$T/cfg.json" add-run hubrun --source "$SRC" --schedule 0,1,2,4 --items loss \
    >/dev/null 2>"$T/add.err" || dl_fail "add-run: $(cat "$T/add.err")"
dl_serve S1 --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S1_PID" 90 && dl_eq "serve: exit 0" 0 "$DL_STATUS"
commit_of() { $PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["revisions"][sys.argv[2]]["commit"])' "$T/hub/manifest.json" "$1"; }
want=""
for s in 0 1 2 4; do want="$want$s $(commit_of step$s);"; done
dl_eq "checkpoints.hub_commit = the hub's commit of each revision" "$want" \
    "$(dl_sql "SELECT c.step || ' ' || c.hub_commit FROM checkpoints c JOIN runs r ON r.id = c.run_id
               WHERE r.name = 'hubrun' ORDER BY c.step" | tr '\n' ';')"
OLD2=$(commit_of step2)
resolves "serve: step 2 in the HF cache" 2 --cache "$T/serve-hf/hub"
loss_at() { dl_sql "SELECT value FROM series WHERE run = 'hubrun' AND metric = 'loss' AND layer = -1 AND head = -1 AND idx = -1 AND step = $1"; }

# step 2 re-uploaded: other weights, so another commit
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 2 --seed-base 100 >"$T/fixture2.out" 2>&1 ||
    { cat "$T/fixture2.out"; exit 1; }
hub_stop "$T/hub"
hub_start H "$T/hub" --root "$T/hubck" --port 18704 --cdn-port 18705 --token "$TOKEN" || exit 1
NEW2=$(commit_of step2)
dl_true "the server moved step2 to another commit" [ "$OLD2" != "$NEW2" ]
"$CKPTD" --config "$T/cfg.json" add-run hubrun --source "$SRC" --schedule 0,1,2,4 --items loss,weights \
    >/dev/null 2>"$T/add2.err" || dl_fail "add-run again: $(cat "$T/add2.err")"
dl_serve S2 --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S2_PID" 90 && dl_eq "serve again: exit 0" 0 "$DL_STATUS"
rpl=$(dl_rows_per_ckpt loss)
dl_eq "the move recorded: step, commits, weights changed, jobs queued again, rows removed" \
    "hubrun|2|$OLD2|$NEW2|t|1|$rpl" \
    "$(dl_sql "SELECT run, step, old_commit, new_commit, weights_changed, jobs_requeued, rows_removed
               FROM revision_changes_named" | tr '\t' '|')"
dl_eq "only step 2 moved" "2 $NEW2" \
    "$(dl_sql "SELECT c.step || ' ' || c.hub_commit FROM checkpoints c WHERE c.hub_commit <> ALL(ARRAY['$(commit_of step0)',
               '$(commit_of step1)', '$(commit_of step4)'])")"
dl_grep "the move logged" "$T/S2.log" 'revision moved on the hub.*step=2 old_commit='"$OLD2"' commit='"$NEW2"
dl_check_complete hubrun 4 2 "$(dl_rows_per_ckpt loss,weights)"
# the stored loss of step 2 is the new files' (the worker on the new directory)
direct=$("$WORKER" --threads 1 analyze "$T/hubck/step2" --items loss 2>/dev/null |
    awk -F'\t' '$1 == "loss" && $3 == "loss" && $4 == -1 && $5 == -1 && $6 == -1 { print $7 }')
dl_true "step 2's stored loss ($(loss_at 2)) is the new weights' ($direct)" \
    $PY -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-9 * max(1, abs(b)))' \
    "$(loss_at 2)" "${direct:-nan}"
"$CKPTD" status hubrun >"$T/status.out" 2>&1
dl_grep "status reports the move" "$T/status.out" \
    "hubrun step 2: commit ${OLD2:0:12} -> ${NEW2:0:12} \\(weights changed\\), 1 jobs queued again, $rpl rows removed"
hf=$T/serve-hf/hub/models--${REPO%%/*}--${REPO#*/}
dl_eq "HF cache: refs/step2 names the new commit" "$NEW2" "$(cat "$hf/refs/step2")"
dl_true "HF cache: the old commit's snapshot stays" test -L "$hf/snapshots/$OLD2/model.safetensors"
resolves "HF cache: step 2 resolves to the new files" 2 --cache "$T/serve-hf/hub"
dl_finish
