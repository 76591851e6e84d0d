#!/bin/bash
# daemon_evalopts.sh - a run's eval options reach its workers: `add-run
# --eval-tokens FILE --ctx N --eval-seqs K --probe FILE` stores them in
# runs.options, and `ckptd serve` passes them to `ckpt-worker analyze`
# (--ctx, --max-seqs, --probe), as the measurements show: loss_by_pos has
# N-1 positions, the `loss` value equals the worker's own on the first K
# sequences, and the user probe set's rows land with idx 0.  `--sae-site
# HOOK` (repeatable) is stored as options.sae_sites and reaches the worker
# (--sae-site): the sae rows land at each site's layer and each site's
# dictionary is recorded in `artifacts`; a site the model lacks fails the
# job with an error naming it.  Bad combinations exit 2 and write nothing.
. tests/lib/daemon.sh
dl_init evalopts 54357
dl_migrate
dl_config "$T/cfg.json" "\"artifact_dir\": \"$T/art\""
dl_ckpts 2
C=("$CKPTD" --config "$T/cfg.json")

# 12 sequences of 16 ids (tiny's vocabulary is 512) as one uint16 stream
/usr/bin/python3 -c '
import random, struct, sys
r = random.Random(7)
sys.stdout.buffer.write(struct.pack("<192H", *[r.randrange(512) for _ in range(192)]))' >"$T/eval.u16"
/usr/bin/python3 -c '
import json, random
r = random.Random(3)
seqs = [{"tokens": [r.randrange(512) for _ in range(8)], "label": i % 2} for i in range(20)]
json.dump({"name": "parity", "kind": "classification", "sequences": seqs}, open("'"$T"'/probe.json", "w"))'

bad() { # bad DESC ARGS...
    local d=$1 rc
    shift
    "${C[@]}" add-run "$@" >"$T/bad.out" 2>&1
    rc=$?
    if [ "$rc" -eq 2 ]; then dl_ok "$d: exit 2"; else dl_fail "$d: exit $rc, want 2"; fi
}
bad "--ctx without --eval-tokens" x --source "file://$T/ck" --schedule 0 --ctx 16
bad "--eval-seqs without --eval-tokens" x --source "file://$T/ck" --schedule 0 --eval-seqs 3
bad "negative --ctx" x --source "file://$T/ck" --schedule 0 --eval-tokens "$T/eval.u16" --ctx -1
bad "missing probe file" x --source "file://$T/ck" --schedule 0 --probe "$T/nonesuch.json"
bad "an SAE site that is no site" x --source "file://$T/ck" --schedule 0 --sae-site blocks.0.attn.hook_pattern
bad "two SAE sites of one layer" x --source "file://$T/ck" --schedule 0 \
    --sae-site blocks.1.hook_mlp_out --sae-site blocks.1.hook_resid_post
dl_grep "... saying why" "$T/bad.out" "one site per layer"
dl_eq "nothing written" 0 "$(dl_sql "SELECT count(*) FROM runs")"

out=$("${C[@]}" add-run ev --source "file://$T/ck/step{step}" --schedule 0,1 --items loss,probes \
    --eval-tokens "$T/eval.u16" --ctx 16 --eval-seqs 10 --probe "$T/probe.json" 2>"$T/add.err")
dl_eq "add-run" "run ev: 2 steps, 2 items; added 2 checkpoints and 4 jobs" "$out"
dl_eq "options stored" "16 10 $T/probe.json" \
    "$(dl_sql "SELECT (options->>'ctx') || ' ' || (options->>'eval_seqs') || ' ' || (options->'probes'->>0) FROM runs WHERE name = 'ev'")"

dl_serve A --config "$T/cfg.json" serve --until-idle --node A
dl_wait_exit "$A_PID" 60
dl_eq "jobs done" 4 "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
dl_eq "loss_by_pos positions (ctx 16)" "15 14" \
    "$(dl_sql "SELECT count(DISTINCT idx) || ' ' || max(idx) FROM series WHERE metric = 'loss_by_pos' AND step = 0")"
want=$("$WORKER" analyze "$T/ck/step1" --items loss --eval-tokens "$T/eval.u16" --ctx 16 --max-seqs 10 2>/dev/null |
    awk -F'\t' '$3 == "loss" { print $7 }')
all=$("$WORKER" analyze "$T/ck/step1" --items loss --eval-tokens "$T/eval.u16" --ctx 16 2>/dev/null |
    awk -F'\t' '$3 == "loss" { print $7 }')
got=$(dl_sql "SELECT value FROM series WHERE metric = 'loss' AND step = 1")
# measurements hold float4: equal to 1e-6 relative
if awk -v a="$want" -v b="$got" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-6 * a) }'; then
    dl_ok "loss over the first 10 sequences ($got)"
else
    dl_fail "loss over the first 10 sequences: want $want, got $got"
fi
if [ "$want" != "$all" ]; then dl_ok "10 of 12 sequences differ from all 12"; else dl_fail "--max-seqs changed nothing"; fi
dl_eq "user probe rows, idx 0" "true 0" \
    "$(dl_sql "SELECT (count(*) > 0) || ' ' || max(idx) FROM series WHERE metric = 'user_acc'")"

# SAE sites: two of them, and one the 2-layer model does not have
out=$("${C[@]}" add-run sites --source "file://$T/ck/step{step}" --schedule 0 --items sae \
    --sae-site blocks.0.hook_mlp_out --sae-site blocks.1.hook_attn_out 2>"$T/sites.err")
dl_eq "add-run --sae-site" "run sites: 1 steps, 1 items; added 1 checkpoints and 1 jobs" "$out"
dl_eq "sites stored" '["blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"]' \
    "$(dl_sql "SELECT options->'sae_sites' FROM runs WHERE name = 'sites'")"
"${C[@]}" add-run nosite --source "file://$T/ck/step{step}" --schedule 0 --items sae \
    --sae-site blocks.7.hook_resid_post --max-attempts 1 >/dev/null 2>&1
dl_serve S --config "$T/cfg.json" serve --until-idle --node S
dl_wait_exit "$S_PID" 120
dl_eq "sae rows at the sites' layers" "0 1" \
    "$(dl_sql "SELECT string_agg(layer::text, ' ' ORDER BY layer) FROM series s WHERE s.run = 'sites' AND s.item = 'sae' AND s.metric = 'fvu'")"
dl_eq "one dictionary per site" "sae/blocks.0.hook_mlp_out/cfg.json sae/blocks.1.hook_attn_out/cfg.json" \
    "$(dl_sql "SELECT string_agg(substring(a.path from 'sae/.*'), ' ' ORDER BY a.path) FROM artifacts a JOIN runs r ON r.id = a.run_id WHERE r.name = 'sites' AND a.path LIKE '%cfg.json'")"
dl_eq "the missing site's job is dead" dead "$(dl_sql "SELECT state FROM job_list WHERE run = 'nosite'")"
dl_sql "SELECT last_error FROM job_list WHERE run = 'nosite'" >"$T/nosite.err"
dl_grep "... its error names the site" "$T/nosite.err" \
    "blocks.7.hook_resid_post.*layer 7 is outside the model.s 2 layers"

# --eval-text: tokenized once by the worker into the data directory, under a
# name from the text's and tokenizer's contents; reused; errors are clear
export CKPTD_DATA=$T/data
printf 'Hello world. The quick brown fox jumps over the lazy dog.\n%.0s' $(seq 40) >"$T/text.txt"
# the real GPT-NeoX-20B tokenizer (make unit fetches it into var/data)
TOKJ=$ROOT/var/data/20B_tokenizer.json
[ -f "$TOKJ" ] || CKPTD_DATA=$ROOT/var/data "$ROOT/scripts/fetch-tokenizer" >/dev/null 2>&1
out=$("${C[@]}" add-run tx --source "file://$T/ck/step{step}" --schedule 0 --items loss \
    --eval-text "$T/text.txt" --tokenizer "$TOKJ" --ctx 16 2>"$T/tx.err")
dl_eq "add-run --eval-text" "run tx: 1 steps, 1 items; added 1 checkpoints and 1 jobs" "$out"
tokf=$(dl_sql "SELECT options->>'eval_tokens' FROM runs WHERE name = 'tx'")
case "$tokf" in "$T"/data/eval-*.u32) dl_ok "token file in the data directory" ;;
*) dl_fail "token file: $tokf" ;; esac
"$WORKER" tokenize --tokenizer "$TOKJ" --in "$T/text.txt" --out "$T/want.u32" 2>/dev/null
if cmp -s "$tokf" "$T/want.u32"; then dl_ok "token file = ckpt-worker tokenize"; else dl_fail "token file differs"; fi
out=$("${C[@]}" add-run tx2 --source "file://$T/ck/step{step}" --schedule 0 --items loss \
    --eval-text "$T/text.txt" --tokenizer "$TOKJ" 2>"$T/tx2.err")
dl_eq "same text, same file" "$tokf" "$(dl_sql "SELECT options->>'eval_tokens' FROM runs WHERE name = 'tx2'")"
if grep -q "already tokenized" "$T/tx2.err"; then dl_ok "second add-run reused it"; else dl_fail "tokenized twice"; fi
dl_eq "no temporary files left" 1 "$(ls "$T/data" | wc -l)"
"${C[@]}" add-run tx3 --source "file://$T/ck" --schedule 0 --eval-text "$T/nonesuch.txt" --tokenizer "$TOKJ" >/dev/null 2>"$T/tx3.err"
dl_eq "missing text: exit 2" 2 $?
"${C[@]}" add-run tx4 --source "file://$T/ck" --schedule 0 --eval-text "$T/text.txt" --tokenizer "$T/text.txt" >/dev/null 2>"$T/tx4.err"
dl_eq "bad tokenizer: exit 1" 1 $?
if grep -q "tokenize" "$T/tx4.err"; then dl_ok "bad tokenizer named"; else dl_fail "no message: $(cat "$T/tx4.err")"; fi
"${C[@]}" add-run tx5 --source "file://$T/ck" --schedule 0 --eval-text "$T/text.txt" --eval-tokens "$T/eval.u16" >/dev/null 2>&1
dl_eq "--eval-text with --eval-tokens: exit 2" 2 $?
dl_eq "failed add-runs wrote nothing" "" "$(dl_sql "SELECT name FROM runs WHERE name IN ('tx3', 'tx4', 'tx5')")"
dl_finish
