#!/bin/bash
# daemon_plan.sh - `ckptd plan` and the cost model's ETA in `ckptd status`.
# A local run of three tiny checkpoints with sweep_every 2: before any work,
# `plan RUN` prices it from its first checkpoint's config.json (file://
# source) — table and --json agree on the shape, 3 checkpoints, 2 full
# sweeps (the first and the last) — and status shows the work left from the
# cost model.  After `serve --until-idle`: the model's shape is in
# runs.model, the workers of steps 0 and 2 got --full-sweep and step 1's
# did not, status has nothing left.  Offline (--model-config, no database):
# the eval forward's FLOPs are the worker's own count (the `eval pass done`
# log line, 4 digits).  Errors: no such run, a run whose shape cannot be
# known yet (https source, nothing staged), a bad config.json, no
# arguments.  PostgreSQL port 54418.
. tests/lib/daemon.sh
dl_init plan 54418
dl_migrate
dl_ckpts 3
dl_config "$T/cfg.json"
"$CKPTD" --config "$T/cfg.json" add-run pr --source "file://$T/ck/step{step}" --schedule 0:2:1 \
    --items loss,weights --sweep-every 2 >/dev/null 2>"$T/add.err" || dl_fail "add-run pr"
dl_eq "sweep_every in the run's options" 2 "$(dl_sql "SELECT options->>'sweep_every' FROM runs WHERE name = 'pr'")"

"$CKPTD" --config "$T/cfg.json" plan pr >"$T/plan.out" 2>"$T/plan.err"
dl_eq "plan RUN exit" 0 $?
sed 's/^/    | /' "$T/plan.out"
layers=$(python3 -c "import json; print(json.load(open('$T/ck/step0/config.json'))['num_hidden_layers'])")
dl_grep "plan names the shape from the first checkpoint" "$T/plan.out" "^run pr: $layers layers, "
dl_grep "plan: a row per item" "$T/plan.out" '^  loss +[0-9]'
dl_grep "plan: weights" "$T/plan.out" '^  weights +[0-9]'
dl_grep "plan: the shared eval forward" "$T/plan.out" '^  \(eval forward\) +[0-9]'
dl_grep "plan: the series" "$T/plan.out" '^series: .* on one node'
"$CKPTD" --config "$T/cfg.json" plan pr --json --nodes 2 --workers 3 >"$T/plan.json" 2>>"$T/plan.err"
dl_eq "plan --json: 3 checkpoints, 2 sweeps, 2 nodes, 3 workers" "3 2 2 3" \
    "$(python3 -c "import json; d = json.load(open('$T/plan.json')); print(d['checkpoints'], d['sweeps'], d['nodes'], d['workers'])")"
dl_eq "plan --json: per checkpoint = eval forward + items" ok \
    "$(python3 -c "
import json; d = json.load(open('$T/plan.json'))
s = d['pass_seconds'] + sum(i['seconds'] for i in d['items'])
print('ok' if abs(s - d['checkpoint_seconds']) <= 1e-9 * s and d['series_seconds'] > 0 else s)")"

"$CKPTD" --config "$T/cfg.json" status pr >"$T/st1.out" 2>&1
dl_grep "status before any work: the cost model's work left" "$T/st1.out" \
    '^pr .* 0/3 done.*; [0-9.]+[smhd] of work left \(no worker on it\) \(cost model\)$'

dl_serve A --config "$T/cfg.json" serve --until-idle --node node-A
dl_wait_exit "$A_PID" 120 || dl_fail "serve --until-idle did not end"
dl_eq "all jobs done" 6 "$(dl_sql "SELECT count(*) FROM jobs WHERE state = 'done'")"
dl_eq "the model's shape recorded from the staged checkpoint" "$layers" \
    "$(dl_sql "SELECT model->>'num_hidden_layers' FROM runs WHERE name = 'pr'")"
for step in 0 1 2; do
    want=$([ "$step" = 1 ] && echo 0 || echo 1)
    dl_grep "step $step's worker: full_sweep=$want" "$T/A.log" \
        "msg=\"worker started\" run=\"pr\" step=$step .* full_sweep=$want gated=[01]\$"
done
"$CKPTD" --config "$T/cfg.json" status pr >"$T/st2.out" 2>&1
dl_grep "status when done: 3/3, no ETA" "$T/st2.out" '^pr .* 3/3 done, 0 running, 0 failed, 0 queued$'

# offline: the eval forward's FLOPs are the worker's
"$WORKER" analyze "$T/ck/step0" --items loss,lens >/dev/null 2>"$T/an.err" || dl_fail "analyze"
"$CKPTD" plan --model-config "$T/ck/step0/config.json" --items loss,lens --steps 10 --json >"$T/off.json" 2>"$T/off.err"
dl_eq "offline plan exit" 0 $?
dl_eq "offline: 10 checkpoints, sweeps every 32 and the last" "10 2" \
    "$(python3 -c "import json; d = json.load(open('$T/off.json')); print(d['checkpoints'], d['sweeps'])")"
dl_eq "offline: the eval forward's GFLOP is the worker's count" ok "$(python3 - "$T/an.err" "$T/off.json" <<'PY'
import json, re, sys
flop = float(re.search(r'msg="eval pass done".* forward_flop=([^ \n]+)', open(sys.argv[1]).read()).group(1))
plan = json.load(open(sys.argv[2]))["pass_gflop"] * 1e9
print("ok" if abs(flop - plan) <= 1e-3 * plan else "%g vs %g" % (flop, plan))
PY
)"

# errors
"$CKPTD" --config "$T/cfg.json" plan nosuchrun >/dev/null 2>"$T/e1.err"
dl_eq "plan of no such run: exit 1" 1 $?
dl_grep "it says so" "$T/e1.err" 'no run by this name'
"$CKPTD" --config "$T/cfg.json" add-run remote --source "https://example.invalid/ck/step{step}" \
    --schedule 0 --items loss >/dev/null 2>>"$T/add.err" || dl_fail "add-run remote"
"$CKPTD" --config "$T/cfg.json" plan remote >/dev/null 2>"$T/e2.err"
dl_eq "plan of a run whose shape is not known: exit 1" 1 $?
dl_grep "it says what to give" "$T/e2.err" 'not known yet: give --model-config FILE'
echo '{"hidden_size": 64}' >"$T/bad.json"
"$CKPTD" plan --model-config "$T/bad.json" --items loss >/dev/null 2>"$T/e3.err"
dl_eq "a config.json without num_hidden_layers: exit 2" 2 $?
dl_grep "it names the key" "$T/e3.err" 'num_hidden_layers is missing'
"$CKPTD" plan >/dev/null 2>"$T/e4.err"
dl_eq "plan without a run or a config: exit 2" 2 $?
dl_finish
