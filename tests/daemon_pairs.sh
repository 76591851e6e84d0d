#!/bin/bash
# daemon_pairs.sh - a run's prompt-pair sets reach its workers the way
# probe sets do: `add-run --pairs FILE` has the worker check the file
# (`ckpt-worker pairs check`), pins its token form in the data directory
# (DATA/pairs-<hash>.json, texts tokenized with --tokenizer) and stores that
# path in runs.options ("pairs"); `ckptd serve` passes it to `analyze
# --pairs`.  The patching rows land with idx 1 beside the built-in set's
# idx 0, the score files are recorded in `artifacts`, and the circuit job
# of step 1 waits for step 0's patching job and reads its scores (a
# circuit_jaccard row at step 1, none at step 0).  A malformed set, a
# missing file, --tokenizer without a use, and `circuit` without
# `patching` exit 2 and write nothing.
. tests/lib/daemon.sh
dl_init pairs 54425
dl_migrate
dl_config "$T/cfg.json" "\"artifact_dir\": \"$T/art\""
dl_ckpts 2
C=("$CKPTD" --config "$T/cfg.json")
export CKPTD_DATA=$T/data
TOKJ=$ROOT/var/data/20B_tokenizer.json
[ -f "$TOKJ" ] || CKPTD_DATA=$ROOT/var/data "$ROOT/scripts/fetch-tokenizer" >/dev/null 2>&1

# tiny's vocabulary is 512
cat >"$T/user.json" <<'EOF'
{"name": "user", "positions": [2], "pairs": [
  {"clean": [5, 9, 17, 40, 9], "corrupted": [5, 9, 18, 40, 9], "answer": 17, "wrong": 18},
  {"clean": [6, 3, 77, 41, 3], "corrupted": [6, 3, 78, 41, 3], "answer": [77], "wrong": [78, 79]}]}
EOF
cat >"$T/broken.json" <<'EOF'
{"name": "broken", "pairs": [{"clean": [1, 2, 3], "corrupted": [1, 2], "answer": 4, "wrong": 5}]}
EOF

bad() { # bad DESC ARGS...
    local d=$1 rc
    shift
    "${C[@]}" add-run "$@" >"$T/bad.out" 2>&1
    rc=$?
    if [ "$rc" -eq 2 ]; then dl_ok "$d: exit 2"; else dl_fail "$d: exit $rc, want 2"; fi
}
bad "missing pair file" x --source "file://$T/ck" --schedule 0 --pairs "$T/nonesuch.json"
dl_grep "... naming it" "$T/bad.out" "cannot use pair set '$T/nonesuch.json'"
bad "malformed pair file" x --source "file://$T/ck" --schedule 0 --pairs "$T/broken.json"
dl_grep "... with the worker's reason" "$T/bad.out" "pair 0: the clean prompt has 3 tokens, the corrupted 2"
bad "--tokenizer alone" x --source "file://$T/ck" --schedule 0 --tokenizer "$TOKJ"
bad "circuit without patching" x --source "file://$T/ck" --schedule 0 --items circuit --pairs "$T/user.json"
dl_eq "nothing written" 0 "$(dl_sql "SELECT count(*) FROM runs")"

out=$("${C[@]}" add-run pt --source "file://$T/ck/step{step}" --schedule 0,1 --items patching,circuit \
    --pairs "$T/user.json" 2>"$T/add.err")
dl_eq "add-run" "run pt: 2 steps, 2 items; added 2 checkpoints and 4 jobs" "$out"
pinned=$(dl_sql "SELECT options->'pairs'->>0 FROM runs WHERE name = 'pt'")
case "$pinned" in "$T"/data/pairs-*.json) dl_ok "pinned token form stored ($pinned)" ;;
    *) dl_fail "options.pairs: '$pinned'" ;; esac
d1=$("$WORKER" pairs check "$T/user.json" 2>/dev/null | sed -n 's/.*digest //p')
d2=$("$WORKER" pairs check "$pinned" 2>/dev/null | sed -n 's/.*digest //p')
dl_true "... the same set ($d1)" [ -n "$d1" -a "$d1" = "$d2" ]
echo '{"name": "edited"}' >"$T/user.json" # later edits do not reach the run
dl_serve A --config "$T/cfg.json" serve --until-idle --node A
dl_wait_exit "$A_PID" 120
dl_eq "jobs done" 4 "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
dl_eq "patching rows of both sets" "0 1" \
    "$(dl_sql "SELECT string_agg(DISTINCT idx::text, ' ') FROM series WHERE run = 'pt' AND metric = 'head_denoise'")"
dl_eq "user set's resid rows: 2 layers x 5 positions, both steps" 20 \
    "$(dl_sql "SELECT count(*) FROM series WHERE run = 'pt' AND metric = 'resid_noise' AND idx = 1")"
dl_eq "score files recorded" "patching/set0.json patching/set1.json" \
    "$(dl_sql "SELECT string_agg(DISTINCT substring(a.path from 'patching/.*'), ' ') FROM artifacts a JOIN runs r ON r.id = a.run_id WHERE r.name = 'pt' AND a.step = 1")"
dl_eq "circuit_jaccard at step 1 only (both sets)" "1 2" \
    "$(dl_sql "SELECT step || ' ' || count(*) FROM series WHERE run = 'pt' AND metric = 'circuit_jaccard' GROUP BY step")"

# a set given as text: tokenized at add-run with --tokenizer
cat >"$T/text.json" <<'EOF'
{"name": "ioi-text", "pairs": [
  {"clean_text": "When Mary and John went to the store, John gave a drink to",
   "corrupted_text": "When Mary and John went to the store, Alice gave a drink to",
   "answer_text": " Mary", "wrong_text": " John"}]}
EOF
out=$("${C[@]}" add-run tx --source "file://$T/ck/step{step}" --schedule 0 --items patching \
    --pairs "$T/text.json" --tokenizer "$TOKJ" 2>"$T/tx.err")
dl_eq "add-run with a text set" "run tx: 1 steps, 1 items; added 1 checkpoints and 1 jobs" "$out"
tp=$(dl_sql "SELECT options->'pairs'->>0 FROM runs WHERE name = 'tx'")
dl_grep "... its token form holds ids" "$tp" '"clean":\[3039,6393,285,2516'
dl_true "... and no text" [ "$(grep -c clean_text "$tp")" -eq 0 ]

dl_finish
