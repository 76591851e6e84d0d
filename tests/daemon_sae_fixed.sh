#!/bin/bash
# daemon_sae_fixed.sh - following fixed SAE dictionaries through training,
# end to end: `test_battery_sae_fixed --plant-series` writes 5 checkpoints
# (steps 0..4000) of a small GPT-NeoX in which a direction appears in the
# embeddings at step 2000, and one dictionary in several formats whose
# latent 0 reads that direction (tests/test_battery_sae_fixed.c).
#
# Run "fixed": add-run --items sae_fixed,sae with three of them (sparsify
# F32, SAELens 6 jumprelu BF16, SAELens pre-6.0 topk F16) and --model-name;
# run "plain": the sae item alone on one checkpoint.  After serve
# --until-idle, asserted: every job done; sae_fixed_dictionaries lists the
# three in order; sae_fixed_feature_birth gives latent 0 of each its birth
# at the planted step, its density there between 0.15 and 0.35, and no
# density above 0 before; sae_fixed_feature_series has a row per
# dictionary, feature and step; sae_births_by_step counts the three at
# (fixed, layer 0, step 2000); sae_fixed_dictionary_series has fvu and l0
# per dictionary and step.  The `sae` item's cfg.json of every step carries
# the daemon's provenance: model_name (--model-name, or the run's name for
# a file:// run), checkpoint_value and metadata.ckptd.step = the step,
# ckptd.run, a 6.x sae_lens_version.  add-run refuses --sae without
# sae_fixed in --items, sae_fixed without --sae, and a directory that is no
# dictionary (the worker's message); --sae alone adds sae_fixed to the
# default battery.
. tests/lib/daemon.sh
dl_init sae_fixed 54419
dl_migrate
TBIN=$(dirname "$(dirname "$WORKER")")/tests/test_battery_sae_fixed
[ -x "$TBIN" ] || { dl_fail "$TBIN missing: run make unit"; dl_finish; }
"$TBIN" --plant-series "$T/plant" >"$T/plant.out" 2>&1 || { dl_fail "planting"; cat "$T/plant.out"; dl_finish; }
BIRTH=$(sed -n 's/^birth //p' "$T/plant.out")
D=$T/plant/dicts
dl_config "$T/cfg.json" "\"artifact_dir\": \"$T/art\""
C=("$CKPTD" --config "$T/cfg.json")

# ---- add-run's checks ----
out=$("${C[@]}" add-run bad --source "file://$T/plant/ck" --schedule 0 --items loss \
    --sae "$D/jumprelu_bf16" 2>&1)
dl_eq "--sae without sae_fixed in --items: usage error" "2" "$?"
dl_true "... saying so" grep -q "add it to --items" <<<"$out"
out=$("${C[@]}" add-run bad --source "file://$T/plant/ck" --schedule 0 --items sae_fixed 2>&1)
dl_eq "sae_fixed without --sae: usage error" "2" "$?"
mkdir -p "$T/empty"
out=$("${C[@]}" add-run bad --source "file://$T/plant/ck" --schedule 0 --items sae_fixed \
    --sae "$T/empty" 2>&1)
dl_eq "a directory that is no dictionary: usage error" "2" "$?"
dl_true "... with the worker's reason" grep -q "cfg.json" <<<"$out"
dl_eq "nothing registered" "0" "$(dl_sql "SELECT count(*) FROM runs")"

# ---- the runs ----
"${C[@]}" add-run fixed --source "file://$T/plant/ck" --schedule 0:4000:1000 --items sae_fixed,sae \
    --sae "$D/sparsify/layers.0" --sae "$D/jumprelu_bf16" --sae "$D/legacy_topk_f16" \
    --model-name pythia-70m-deduped >"$T/add.out" 2>&1 || { dl_fail "add-run fixed"; cat "$T/add.out"; }
"${C[@]}" add-run plain --source "file://$T/plant/ck" --schedule 1000 --items sae >>"$T/add.out" 2>&1 ||
    { dl_fail "add-run plain"; cat "$T/add.out"; }
dl_serve S --config "$T/cfg.json" serve --until-idle --workers 2 --node S
dl_wait_exit "$S_PID" 300
dl_eq "serve --until-idle exits 0" 0 "$DL_STATUS"
dl_eq "every job done" "11 0" "$(dl_sql "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state <> 'done') FROM job_list" | tr '\t' ' ')"

# ---- the views ----
dl_eq "sae_fixed_dictionaries: the three, in order" \
    "0 $D/sparsify/layers.0|1 $D/jumprelu_bf16|2 $D/legacy_topk_f16" \
    "$(dl_sql "SELECT dictionary || ' ' || dir FROM sae_fixed_dictionaries WHERE run = 'fixed' ORDER BY dictionary" | paste -sd'|')"
dl_eq "latent 0 of each dictionary born at the planted step $BIRTH" "0 $BIRTH|1 $BIRTH|2 $BIRTH" \
    "$(dl_sql "SELECT dictionary || ' ' || birth_step FROM sae_fixed_feature_birth WHERE run = 'fixed' AND feature = 0 ORDER BY dictionary" | paste -sd'|')"
dl_eq "its density at birth in [0.15, 0.35]" "3" \
    "$(dl_sql "SELECT count(*) FROM sae_fixed_feature_birth WHERE run = 'fixed' AND feature = 0 AND density_at_birth BETWEEN 0.15 AND 0.35")"
dl_eq "no density above 0 before it" "0" \
    "$(dl_sql "SELECT count(*) FROM sae_fixed_feature_series WHERE run = 'fixed' AND feature = 0 AND step < $BIRTH AND density > 0")"
dl_eq "a row per dictionary, feature and step" "$((3 * 16 * 5))" \
    "$(dl_sql "SELECT count(*) FROM sae_fixed_feature_series WHERE run = 'fixed' AND density IS NOT NULL AND mean_activation IS NOT NULL")"
dl_eq "sae_births_by_step: three fixed births at layer 0, step $BIRTH" "3" \
    "$(dl_sql "SELECT fixed_born FROM sae_births_by_step WHERE run = 'fixed' AND layer = 0 AND step = $BIRTH")"
dl_eq "sae_fixed_dictionary_series: fvu and l0 per dictionary and step" "15" \
    "$(dl_sql "SELECT count(*) FROM sae_fixed_dictionary_series WHERE run = 'fixed' AND fvu IS NOT NULL AND l0 > 0")"
# the example query of schema/queries.sql, as written there
awk '/^-- 12\. /, /;$/' schema/queries.sql | grep -v '^--' >"$T/q12.sql"
dl_eq "schema/queries.sql 12: latent 0 of each dictionary at step $BIRTH" "0 0 $BIRTH|1 0 $BIRTH|2 0 $BIRTH" \
    "$(psql -X -q -t -A -F ' ' -v run=fixed -f "$T/q12.sql" | awk '$2 == 0 { print $1, $2, $3 }' | paste -sd'|')"
dl_eq "another threshold through sae_fixed_births()" "0" \
    "$(dl_sql "SELECT count(*) FROM sae_fixed_births(0.99) WHERE run = 'fixed' AND birth_step IS NOT NULL")"

# ---- provenance in the sae item's files ----
if /usr/bin/python3 - "$T/art" <<'PY'
import json, sys
art = sys.argv[1]
for run, steps, model in (("fixed", range(0, 4001, 1000), "pythia-70m-deduped"), ("plain", [1000], "plain")):
    for s in steps:
        cfg = json.load(open("%s/%s/step%d/sae/blocks.1.hook_resid_post/cfg.json" % (art, run, s)))
        md = cfg["metadata"]
        assert int(md["sae_lens_version"].split(".")[0]) >= 6, md
        assert md["model_name"] == model, (run, s, md["model_name"])
        kw = md["model_from_pretrained_kwargs"]
        assert kw["checkpoint_value"] == s and kw["fold_ln"] is False, kw
        assert md["ckptd"]["step"] == s and md["ckptd"]["run"] == run, md["ckptd"]
PY
then dl_ok "the sae item's cfg.json: model, checkpoint_value and run from the daemon"; else dl_fail "provenance"; fi

# ---- --sae alone adds sae_fixed ----
"${C[@]}" add-run auto --source "file://$T/plant/ck" --schedule 0:4000:1000 \
    --sae "$D/topk_f32" >"$T/auto.out" 2>&1 || { dl_fail "add-run auto"; cat "$T/auto.out"; }
dl_eq "--sae alone: sae_fixed among the default items" "5" \
    "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'auto' AND item = 'sae_fixed'")"
dl_finish
