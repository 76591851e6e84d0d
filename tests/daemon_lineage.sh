#!/bin/bash
# daemon_lineage.sh - SAE feature lineages end to end: two daemons serve
# runs whose battery is weights, sae and sae_match over a synthetic series
# of 7 checkpoints (steps 0, 1000 .. 6000) whose SAE dictionaries are
# planted (tests/lib/sae_plant.h, written by `test_battery_sae_match
# --plant`): features born at known steps, a stable one, two that die, one
# that splits into two rotated children.
#
# The `sae` item is played by a worker wrapper: for an `analyze` whose
# --items name sae, it copies the step's planted dictionaries into
# ARTIFACTS/sae/, prints their feature_density / feature_mean_activation
# rows, and hands the other items to the real worker; `battery --json` gets
# an sae item added (version 1) unless the real worker has one.  With
# LINEAGE_REAL_SAE=1 the wrapper leaves sae to the real worker, and only
# the checks that do not depend on the planted features run (dependencies,
# artifacts and their sha256, one sae_features row per feature).
#
# Runs: lin (add-run --sae-warm-start: sae and sae_match of a step in one
# claim, each step's sae after the previous one), cold (sae and sae_match
# claimed apart), crash (the worker of sae at step 1000 writes half a file
# and is killed; one attempt) and retry (the same on the first attempt
# only, after writing a stray file).  Asserted: births at the planted steps
# (and nowhere else), the stable feature one lineage over all 7 steps, the
# death steps, the split counted and the child's split_of, the example
# query of schema/queries.sql returns exactly the planted set, lin and cold
# give the same lineages, density and mean activation joined in, layer 1
# all stable; every artifacts row's sha256 and size equal sha256sum's and
# stat's of the file; sae_match of step s finished after sae of s and of
# the previous step, and (warm start) sae of s started after sae of the
# previous step finished; the killed job left no artifacts rows though its
# half-written file is on disk, its sae_match died with it and the next
# step ran without a previous dictionary (all born); the retried job's
# rows name only the files of the attempt that succeeded.
. tests/lib/daemon.sh
dl_init lineage 54377
dl_migrate
REAL_SAE=${LINEAGE_REAL_SAE:-0}
TBIN=$(dirname "$(dirname "$WORKER")")/tests/test_battery_sae_match
[ -x "$TBIN" ] || { dl_fail "$TBIN missing: run make unit"; dl_finish; }
"$TBIN" --plant "$T/plant" || { dl_fail "planting the series"; dl_finish; }
STEPS="0 1000 2000 3000 4000 5000 6000"
k=0
for s in $STEPS; do
    "$WORKER" init "$T/ck/step$s" --preset tiny --seed "$k" >/dev/null 2>"$T/init.err" ||
        { dl_fail "ckpt-worker init step$s"; cat "$T/init.err"; dl_finish; }
    k=$((k + 1))
done

# ---- the worker wrapper: sae from the planted series ----
cat >"$T/worker" <<EOF
#!/bin/bash
REAL='$WORKER'
T='$T'
REAL_SAE=$REAL_SAE
EOF
cat >>"$T/worker" <<'EOF'
FAKE='{"name": "sae", "version": 1, "needs": ["eval_tokens", "artifacts", "prev_artifacts"], "metrics": [{"name": "feature_density", "unit": "fraction", "description": "fraction of tokens on which the feature is active", "layer": "the site hook_layer", "head": "", "idx": "feature"}, {"name": "feature_mean_activation", "unit": "activation", "description": "mean activation where active", "layer": "the site hook_layer", "head": "", "idx": "feature"}]}'
args=("$@")
n=${#args[@]}
items= items_i= art=
for ((i = 0; i < n; i++)); do
    case "${args[i]}" in
    battery)
        json=$("$REAL" battery --json) || exit 1
        if [ "$REAL_SAE" = 1 ] || printf '%s' "$json" | grep -q '"name": "sae",'; then
            printf '%s\n' "$json"
        else
            printf '%s\n' "$json" | sed "0,/\"items\": \[/s//\"items\": [ $FAKE,/"
        fi
        exit 0 ;;
    --items) items=${args[i + 1]}; items_i=$((i + 1)) ;;
    --artifacts) art=${args[i + 1]} ;;
    esac
done
case ",$items," in *,sae,*) ;; *) exec "$REAL" "$@" ;; esac
[ "$REAL_SAE" = 1 ] && exec "$REAL" "$@"
step=${art##*/step}
run=${art#"$T/art/"}
run=${run%/step*}
site="$art/sae/blocks.0.hook_resid_post"
if [ "$run/$step" = crash/1000 ] || { [ "$run/$step" = retry/1000 ] && [ ! -e "$T/retry-crashed" ]; }; then
    [ "$run" = retry ] && touch "$T/retry-crashed"
    mkdir -p "$site"
    head -c 1000 "$T/plant/step$step/sae/blocks.0.hook_resid_post/sae_weights.safetensors" >"$site/sae_weights.safetensors"
    echo stray >"$art/sae/stray.bin"
    kill -9 $$
fi
mkdir -p "$art/sae" && cp -r "$T/plant/step$step/sae/." "$art/sae/" || exit 1
ver=$(printf '%s\n' "$("$REAL" battery --json)" | awk '/"name": "sae",/ { f = 1 } f && /"version"/ { gsub(/[^0-9]/, ""); print; exit }')
sed "s/^sae\t1\t/sae\t${ver:-1}\t/" "$T/plant/step$step/sae_rows.tsv"
rest=$(printf ',%s,' "$items" | sed 's/,sae,/,/; s/^,//; s/,$//')
[ -z "$rest" ] && exit 0
args[items_i]=$rest
exec "$REAL" "${args[@]}"
EOF
chmod +x "$T/worker"

dl_config "$T/cfg.json" "\"worker_path\": \"$T/worker\"" "\"artifact_dir\": \"$T/art\""
add() {
    "$CKPTD" --config "$T/cfg.json" add-run "$@" --source "file://$T/ck/step{step}" \
        --items weights,sae,sae_match >>"$T/add.out" 2>"$T/add.err" || { dl_fail "add-run $1"; cat "$T/add.err"; }
}
add lin --schedule 0:6000:1000 --sae-warm-start
add cold --schedule 0:6000:1000
add crash --schedule 0:2000:1000 --max-attempts 1
add retry --schedule 0:2000:1000 --max-attempts 3
dl_eq "sae_warm_start stored" true "$(dl_sql "SELECT options->>'sae_warm_start' FROM runs WHERE name = 'lin'")"
# add-run refuses sae_match without sae
"$CKPTD" --config "$T/cfg.json" add-run nosae --source "file://$T/ck/step{step}" --schedule 0 \
    --items sae_match >/dev/null 2>"$T/nosae.err"
dl_eq "add-run --items sae_match alone: usage error" 2 $?
dl_grep "... saying what to add" "$T/nosae.err" "item 'sae_match' reads what 'sae' writes: add 'sae' to --items"

dl_serve A --config "$T/cfg.json" serve --workers 2 --until-idle --node node-A
dl_serve B --config "$T/cfg.json" serve --workers 2 --until-idle --node node-B
dl_wait_exit "$A_PID" 300
dl_eq "daemon A exit" 0 "$DL_STATUS"
dl_wait_exit "$B_PID" 300
dl_eq "daemon B exit" 0 "$DL_STATUS"

for run in lin cold; do
    dl_eq "$run: every job done" 21 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = '$run' AND state = 'done'")"
done
dl_eq "retry: every job done" 9 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'retry' AND state = 'done'")"
dl_eq "retry: sae of step 1000 took two attempts" 2 \
    "$(dl_sql "SELECT attempts FROM job_list WHERE run = 'retry' AND step = 1000 AND item = 'sae'")"

# ---- dependencies ----
dl_eq "sae_match finished after sae of its step and of the step before" 0 "$(dl_sql "
    SELECT count(*) FROM job_list m
    JOIN job_list s ON s.run = m.run AND s.item = 'sae' AND s.step IN (m.step, m.step - 1000)
    WHERE m.item = 'sae_match' AND m.state = 'done' AND s.state = 'done' AND m.finished_at < s.finished_at")"
dl_eq "cold: sae_match started after those sae finished" 0 "$(dl_sql "
    SELECT count(*) FROM job_list m
    JOIN job_list s ON s.run = m.run AND s.item = 'sae' AND s.step IN (m.step, m.step - 1000)
    WHERE m.run = 'cold' AND m.item = 'sae_match' AND m.started_at < s.finished_at")"
dl_eq "lin (warm start): sae started after the previous sae finished" 0 "$(dl_sql "
    SELECT count(*) FROM job_list s JOIN job_list p ON p.run = s.run AND p.item = 'sae' AND p.step = s.step - 1000
    WHERE s.run = 'lin' AND s.item = 'sae' AND s.started_at < p.finished_at")"
dl_eq "lin: sae and sae_match of a step claimed together" 7 "$(dl_sql "
    SELECT count(*) FROM job_list m JOIN job_list s ON s.run = m.run AND s.step = m.step AND s.item = 'sae'
    WHERE m.run = 'lin' AND m.item = 'sae_match' AND m.started_at = s.started_at")"
dl_eq "cold: never claimed together" 0 "$(dl_sql "
    SELECT count(*) FROM job_list m JOIN job_list s ON s.run = m.run AND s.step = m.step AND s.item = 'sae'
    WHERE m.run = 'cold' AND m.item = 'sae_match' AND m.started_at = s.started_at")"
dl_grep "workers got --prev-artifacts of the previous step" "$T/A.log" 'msg="worker started".*items=.*sae_match.* prev_step=[0-9]'

# ---- artifacts ----
dl_eq "lin: 4 files per step recorded (2 sites x cfg.json, sae_weights.safetensors)" 28 \
    "$(dl_sql "SELECT count(*) FROM artifacts a JOIN runs r ON r.id = a.run_id WHERE r.name = 'lin' AND a.kind = 'sae'")"
dl_eq "lin: artifacts rows name the sae job of their step" 0 "$(dl_sql "
    SELECT count(*) FROM artifacts a JOIN runs r ON r.id = a.run_id
    LEFT JOIN job_list j ON j.id = a.job_id AND j.run = r.name AND j.step = a.step AND j.item = 'sae'
    WHERE r.name = 'lin' AND j.id IS NULL")"
bad=0
nfiles=0
while IFS=$'\t' read -r path sha size; do
    nfiles=$((nfiles + 1))
    got=$(sha256sum "$T/art/$path" | cut -d' ' -f1)
    gsize=$(stat -c %s "$T/art/$path")
    if [ "$got" != "$sha" ] || [ "$gsize" != "$size" ]; then
        bad=$((bad + 1))
        echo "    | $path: recorded $sha $size, on disk $got $gsize"
    fi
done < <(dl_sql "SELECT path, sha256, size FROM artifacts ORDER BY path")
dl_true "artifacts rows recorded ($nfiles)" [ "$nfiles" -ge 56 ]
dl_eq "every recorded sha256 and size equal sha256sum and stat of the file" 0 "$bad"

# ---- the crash ----
crash_sae=$(dl_sql "SELECT id FROM job_list WHERE run = 'crash' AND step = 1000 AND item = 'sae'")
dl_eq "crash: the killed sae job is dead" dead "$(dl_sql "SELECT state FROM jobs WHERE id = $crash_sae")"
dl_grep "crash: ... killed by a signal" <(dl_sql "SELECT last_error FROM jobs WHERE id = $crash_sae") "signal 9"
dl_true "crash: its half-written file is on disk" \
    test -s "$T/art/crash/step1000/sae/blocks.0.hook_resid_post/sae_weights.safetensors"
dl_eq "crash: no artifacts rows for the killed job" 0 \
    "$(dl_sql "SELECT count(*) FROM artifacts WHERE job_id = $crash_sae")"
dl_eq "crash: no artifacts rows for its step" 0 "$(dl_sql "SELECT count(*) FROM artifacts a
    JOIN runs r ON r.id = a.run_id WHERE r.name = 'crash' AND a.step = 1000")"
dl_grep "crash: sae_match of that step died with it" <(dl_sql "SELECT state || ' ' || last_error FROM job_list
    WHERE run = 'crash' AND step = 1000 AND item = 'sae_match'") "^dead depends on sae \(job $crash_sae\)"
dl_eq "crash: step 2000 matched against nothing" "t" "$(dl_sql "SELECT bool_and(prev_step IS NULL) FROM sae_features f
    JOIN runs r ON r.id = f.run_id WHERE r.name = 'crash' AND f.step = 2000")"
dl_eq "crash: every feature of step 2000 born there" 0 "$(dl_sql "SELECT count(*) FROM sae_features f
    JOIN runs r ON r.id = f.run_id WHERE r.name = 'crash' AND f.step = 2000 AND f.root_step <> 2000")"
dl_eq "retry: the stray file of the killed attempt is not recorded" 0 \
    "$(dl_sql "SELECT count(*) FROM artifacts WHERE path LIKE 'retry/%stray%'")"
dl_true "retry: ... nor left on disk" test ! -e "$T/art/retry/step1000/sae/stray.bin"
dl_eq "retry: the successful attempt's 4 files" 4 "$(dl_sql "SELECT count(*) FROM artifacts a
    JOIN runs r ON r.id = a.run_id WHERE r.name = 'retry' AND a.step = 1000")"

# ---- features and lineages ----
nf=$(awk 'BEGIN { n = 0 } FNR == 1 { n++ } END { print n }' "$T"/plant/step*/sae_rows.tsv)
rows=$(cat "$T"/plant/step*/sae_rows.tsv | wc -l)
dl_eq "lin: one sae_features row per planted feature" $((rows / 2)) \
    "$(dl_sql "SELECT count(*) FROM sae_features f JOIN runs r ON r.id = f.run_id WHERE r.name = 'lin'")"
if [ "$REAL_SAE" = 1 ]; then
    dl_finish
fi
dl_eq "lin: density and mean activation joined from the sae rows" 0 "$(dl_sql "SELECT count(*) FROM sae_features f
    JOIN runs r ON r.id = f.run_id WHERE r.name = 'lin'
      AND (density IS DISTINCT FROM (feature + 1) / 1000.0 OR abs(mean_activation - (1 + feature / 100.0)) > 1e-12)")"

# manifest: layer, name, step, feature
idx() { awk -F '\t' -v n="$1" -v s="$2" '$2 == n && $3 == s { print $4 }' "$T/plant/manifest.tsv"; }
lq() { dl_sql "SELECT $1 FROM feature_lineages l JOIN runs r ON r.id = l.run_id WHERE r.name = 'lin' AND l.layer = 0 $2"; }

want=""
for nb in born1000:1000 born2000:2000 born2000_dies5000:2000 born3000:3000 child_b:4000 born5000:5000; do
    want="$want$(idx "${nb%%:*}" "${nb##*:}")@${nb##*:} "
done
want=$(echo "$want" | tr ' ' '\n' | grep . | sort -t@ -k2,2n -k1,1n | tr '\n' ' ')
got=$(lq "root_feature || '@' || birth_step" "AND birth_step > 0 ORDER BY birth_step, root_feature" | tr '\n' ' ')
dl_eq "layer 0: births after step 0 exactly the planted ones (feature@step)" "$want" "$got"
dl_eq "layer 0: lineages born at step 0 (24 background + stable, dies, parent)" 27 "$(lq "count(*)" "AND birth_step = 0")"

st0=$(idx stable 0)
dl_eq "stable: one lineage over all 7 steps, alive, ending at its planted index" "7 6000 - $(idx stable 6000)" \
    "$(lq "length || ' ' || last_step || ' ' || coalesce(death_step::text, '-') || ' ' || last_feature" "AND root_step = 0 AND root_feature = $st0")"
dl_eq "stable: its sae_features rows all in that lineage" 7 "$(dl_sql "SELECT count(*) FROM sae_features f
    JOIN runs r ON r.id = f.run_id JOIN (VALUES $(awk -F '\t' '$2 == "stable" { printf "%s(%s, %s)", c, $3, $4; c = ", " }' "$T/plant/manifest.tsv")) v(s, fe)
      ON v.s = f.step AND v.fe = f.feature
    WHERE r.name = 'lin' AND f.layer = 0 AND f.root_step = 0 AND f.root_feature = $st0")"
dl_eq "dies: last step 2000, death step 3000" "2000 3000" \
    "$(lq "last_step || ' ' || death_step" "AND root_step = 0 AND root_feature = $(idx dies 0)")"
dl_eq "born2000_dies5000: born 2000, last 4000, death 5000, length 3" "2000 4000 5000 3" \
    "$(lq "birth_step || ' ' || last_step || ' ' || death_step || ' ' || length" "AND root_step = 2000 AND root_feature = $(idx born2000_dies5000 2000)")"
dl_eq "parent: continued by child_a over 7 steps, one split, alive" "7 1 - $(idx child_a 6000)" \
    "$(lq "length || ' ' || splits || ' ' || coalesce(death_step::text, '-') || ' ' || last_feature" "AND root_step = 0 AND root_feature = $(idx parent 0)")"
dl_eq "child_b: split_of = the parent's lineage" \
    "$(lq "lineage" "AND root_step = 0 AND root_feature = $(idx parent 0)")" \
    "$(lq "split_of" "AND root_step = 4000 AND root_feature = $(idx child_b 4000)")"
dl_eq "layer 0: one split in all" 1 "$(lq "sum(splits)" "")"
dl_eq "layer 1: 16 lineages, each over all 7 steps and alive" "16 16" "$(dl_sql "SELECT count(*) || ' ' ||
    count(*) FILTER (WHERE length = 7 AND death_step IS NULL) FROM feature_lineages l JOIN runs r ON r.id = l.run_id
    WHERE r.name = 'lin' AND l.layer = 1")"

# the example query of schema/queries.sql, as written there
awk '/^-- 6\. /, /;$/' schema/queries.sql | grep -v '^--' >"$T/q6.sql"
dl_grep "example query found in schema/queries.sql" "$T/q6.sql" "birth_step BETWEEN 1000 AND 4000"
want=""
for nb in born1000:1000 born2000:2000 born3000:3000 child_b:4000; do
    want="${want}0 ${nb##*:} $(idx "${nb%%:*}" 6000)
"
done
got=$(psql -X -q -t -A -F ' ' -v ON_ERROR_STOP=1 -v run=lin -f "$T/q6.sql" 2>&1 | awk '{ print $1, $3, $6 }')
dl_eq "example query: exactly the planted features (layer, birth, index at the end)" "$(printf '%s' "$want" | sort)" \
    "$(printf '%s\n' "$got" | sort)"

lineage_table() { dl_sql "SELECT string_agg(concat_ws(',', layer, lineage, root_step, root_feature, death_step,
    last_step, length, splits, last_feature, split_of), ' ' ORDER BY layer, lineage)
    FROM feature_lineages l JOIN runs r ON r.id = l.run_id WHERE r.name = '$1'" | md5sum | cut -c1-16; }
dl_eq "cold (sae and sae_match apart) gives the same lineages as lin (warm start)" "$(lineage_table lin)" "$(lineage_table cold)"
failed_lines=$(cat "$T/A.log" "$T/B.log" | grep 'msg="checkpoint failed"')
dl_eq "no errors logged but the two planted crashes" 2 "$(printf '%s\n' "$failed_lines" | grep -c .)"
[ "$(printf '%s\n' "$failed_lines" | grep -c .)" = 2 ] || printf '    | %s\n' "$failed_lines"
dl_finish
