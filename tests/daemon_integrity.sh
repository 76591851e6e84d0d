#!/bin/bash
# daemon_integrity.sh - checkpoints checked before they are believed
# (daemon/detect/integrity.h), on a real toy run (PostgreSQL port 54461).
#
# One modular-addition run is trained (p 31, 1500 steps, a checkpoint every
# 25); series are made of it (every 50th step, or all) with plants the
# Pythia tracker reports:
#   clean    the run as trained;
#   plants   sharded in two files per checkpoint (HuggingFace's index), with
#            step 0 a copy of the final step (pythia #83/#195: step0 equals
#            step1; #205: early branches serve the final weights), step 300
#            a copy of step 1200 (a late step's weights under an early
#            name, #108), and step 700's first shard the final step's
#            (#206);
#   block    every 25th step, with steps 200..375 (8 checkpoints) copies of
#            steps 1100..1275 (a shifted stretch of labels, #205), analysed
#            with the integrity item; block-plain the same series without it
#            (the check needs the sketches: ckptd before it kept the earliest
#            copy).
# Asserts:
#   - the clean run: nothing suspect, every checkpoint has its signals
#     (distance to the previous one > 0, cosine in (0, 1]);
#   - plants: step 0 step0_is_final (a duplicate of the last step, which
#     stays canonical), step 300 mislabel like step 1200 (whose copy it is:
#     1200 stays canonical, not the earliest step), step 700 shard_duplicate
#     like the last step, naming the shard; nothing else suspect; series
#     and detection leave them out; `ckptd status` and `ckptd integrity`
#     list them;
#   - block: the eight are mislabel, each like its twin; block-plain: the
#     copies stay in the series and detection reports transitions of the
#     task item peaking on a planted step (the fake transitions, shown to
#     appear); block: none (the transitions it finds around the stretch
#     are the run's own, whose windows now span the gap);
#   - `ckptd integrity` on an unknown run exits 1.
. tests/lib/daemon.sh
dl_init integrity 54461
dl_migrate
C=("$CKPTD" --config "$T/cfg.json")
dl_config "$T/cfg.json" '"workers": 2'

STEPS=$(seq -s, 0 50 1500) DENSE=$(seq -s, 0 25 1500)
"$WORKER" --threads 1 train --task modular-addition --p 31 --train-frac 0.5 --steps 1500 \
    --checkpoints "$DENSE" --seed 3 --out "$T/base" --log-every 0 >"$T/train.out" 2>&1 ||
    { dl_fail "training"; tail "$T/train.out"; dl_finish; }

# series SERIES STEPS: a directory of links to the base run's checkpoints
series() {
    mkdir -p "$T/$1"
    cp "$T/base/task.json" "$T/$1/"
    for s in ${2//,/ }; do ln -s "$T/base/step$s" "$T/$1/step$s"; done
}
plant() { rm -f "$T/$1/step$2" && cp -r "$T/base/step$3" "$T/$1/step$2"; } # SERIES STEP FROM

series clean "$STEPS"
series block "$DENSE"
for k in 0 1 2 3 4 5 6 7; do plant block $((200 + 25 * k)) $((1100 + 25 * k)); done
mkdir -p "$T/plants" && cp "$T/base/task.json" "$T/plants/"
for s in ${STEPS//,/ }; do /usr/bin/python3 tests/lib/shard_checkpoint.py "$T/base/step$s" "$T/plants/step$s"; done
rm -rf "$T/plants/step0" "$T/plants/step300"
cp -r "$T/plants/step1500" "$T/plants/step0"
cp -r "$T/plants/step1200" "$T/plants/step300"
cp "$T/plants/step1500/model-00001-of-00002.safetensors" "$T/plants/step700/"

for r in clean plants block; do
    sched=$STEPS
    [ $r = block ] && sched=$DENSE
    "${C[@]}" add-run $r --source "file://$T/$r/step{step}" --schedule "$sched" --items integrity,task \
        >>"$T/add.out" 2>&1 || dl_fail "add-run $r"
done
"${C[@]}" add-run block-plain --source "file://$T/block/step{step}" --schedule "$DENSE" --items task \
    >>"$T/add.out" 2>&1 || dl_fail "add-run block-plain"
dl_serve S --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S_PID" 600
dl_eq "serve exit" 0 "$DL_STATUS"
dl_eq "every job done" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE state <> 'done'")"

suspects() { dl_sql "SELECT coalesce(string_agg(step || ':' || reason || ':' || coalesce(suspect_step::text, '-'), ' ' ORDER BY step), '') FROM suspect_checkpoints WHERE run = '$1'"; }

# ---- the clean run ----
dl_eq "clean: nothing suspect" "" "$(suspects clean)"
dl_eq "clean: every checkpoint's signals" "31 30 true" \
    "$(dl_sql "SELECT count(*) || ' ' || count(dist_prev) || ' ' || bool_and(dist_prev > 0 AND cos_prev > 0 AND cos_prev <= 1)
               FROM checkpoint_signals WHERE run = 'clean'")"
"${C[@]}" integrity clean >"$T/clean.out" 2>&1
dl_eq "integrity clean exit" 0 $?
dl_grep "integrity prints the headroom" "$T/clean.out" '^headroom: nearest non-neighbour at [0-9.e+-]+ x'
sed -n 2p "$T/clean.out" | sed 's/^/# /'

# ---- the plants ----
dl_eq "plants: each with its reason" "0:step0_is_final:1500 300:mislabel:1200 700:shard_duplicate:1500" "$(suspects plants)"
dl_eq "plants: copies of weights point to the copy that fits" "0=1500 300=1200" \
    "$(dl_sql "SELECT string_agg(step || '=' || same_as_step, ' ' ORDER BY step) FROM duplicate_checkpoints WHERE run = 'plants'")"
dl_grep "plants: the shard is named" <(dl_sql "SELECT suspect_detail FROM suspect_checkpoints WHERE run = 'plants' AND step = 700") \
    'model-00001-of-00002\.safetensors'
dl_eq "plants: left out of series" "0" \
    "$(dl_sql "SELECT count(*) FROM series WHERE run = 'plants' AND step IN (0, 300, 700)")"
dl_eq "plants: the others in series" "28" "$(dl_sql "SELECT count(DISTINCT step) FROM series WHERE run = 'plants'")"
dl_eq "plants: no transition peaks on a suspect" "0" \
    "$(dl_sql "SELECT count(*) FROM transitions_named WHERE run = 'plants' AND peak_step IN (0, 300, 700)")"
"${C[@]}" status plants >"$T/status.out" 2>&1
dl_grep "status lists them" "$T/status.out" '^  plants step 300: mislabel: '
dl_grep "status lists step 0" "$T/status.out" '^  plants step 0: step0_is_final: .*\(a duplicate of step 1500\)'
"${C[@]}" integrity plants --json >"$T/plants.json" 2>&1
dl_eq "integrity --json" "31 shard_duplicate 1500" "$(python3 -c '
import json, sys
a = json.load(open(sys.argv[1]))
s = [o for o in a if o["step"] == 700][0]
print(len(a), s["suspect"], s["suspect_step"])' "$T/plants.json")"

# ---- the stretch of shifted labels ----
want=""
for k in 0 1 2 3 4 5 6 7; do want="$want${want:+ }$((200 + 25 * k)):mislabel:$((1100 + 25 * k))"; done
dl_eq "block: eight mislabels, each like its twin" "$want" "$(suspects block)"
dl_eq "block-plain: no sketches, no verdict" "" "$(suspects block-plain)"
planted="(SELECT generate_series(200, 375, 25))"
fake="SELECT count(*) FROM transitions_named WHERE item = 'task' AND peak_step IN $planted AND run ="
nplain=$(dl_sql "$fake 'block-plain'")
dl_true "without the check the plant makes fake transitions ($nplain peak on planted steps)" [ "$nplain" -gt 0 ]
dl_eq "with it, none" "0" "$(dl_sql "$fake 'block'")"
dl_sql "SELECT '# block-plain: ' || metric || ' idx ' || idx || ' peak ' || peak_step || ' magnitude '
        || round(magnitude::numeric, 3) FROM transitions_named WHERE run = 'block-plain' AND item = 'task'
        AND peak_step IN $planted ORDER BY metric, idx LIMIT 4"

"${C[@]}" integrity nonesuch >"$T/none.out" 2>&1
dl_eq "unknown run: exit 1" 1 $?
dl_grep "unknown run named" "$T/none.out" "no run named 'nonesuch'"
dl_finish
