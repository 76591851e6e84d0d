#!/bin/bash
# fetch_discover.sh - `ckptd add-run --schedule refs`: the steps of an
# hf:// run from the hub's refs API, served by scripts/hub-serve (nginx)
# with a bearer token.  Asserts: the step<N> branches become the
# checkpoints (`main` and `v1-release` ignored), the token was sent to the
# refs API; re-adding adds nothing; a new step branch is picked up by the
# next add-run; "refs,3:5:1" is the union; the discovered run is served to
# the end; and each failure exits 1 with the database unchanged and an
# error naming the cause: endpoint unreachable (the URL), 401 (wrong
# token), HF_HUB_OFFLINE=1 (no request made), a repository without step
# branches; a non-hf source with refs exits 2.  PostgreSQL port 54360,
# HTTP ports 18300-18304 (18309 stays closed).
. tests/lib/daemon.sh
. tests/lib/hub.sh
dl_init fetch_discover 54360
trap 'dl_rc=$?; hub_stop_all; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
TOKEN=hf_discover_$$
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 0,1,2,4 >"$T/fixture.out" 2>&1 ||
    { cat "$T/fixture.out"; exit 1; }
cp -a "$T/hubck/step0" "$T/hubck/v1-release" # a branch that is not a step
hub_start H "$T/hub" --root "$T/hubck" --port 18300 --cdn-port 18301 --token "$TOKEN" || exit 1
export HF_ENDPOINT=$H_HUB_URL HF_TOKEN=$TOKEN HF_HOME=$T/hf-none
unset HF_HUB_OFFLINE
dl_config "$T/cfg.json" '"fetch_retries": 0'
C=("$CKPTD" --config "$T/cfg.json")
SRC=hf://$H_HUB_REPO
count() { dl_sql "SELECT (SELECT count(*) FROM runs) || ' ' || (SELECT count(*) FROM checkpoints) || ' ' || (SELECT count(*) FROM jobs)"; }
steps_of() { dl_sql "SELECT string_agg(step::text, ',' ORDER BY step) FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.name = '$1'"; }
refs_reqs() { grep -c '"uri":"/api/models/'"$H_HUB_REPO"'/refs"' "$T/hub/hub.access.log" 2>/dev/null || true; }

out=$("${C[@]}" add-run disc --source "$SRC" --schedule refs --items weights 2>"$T/a1.err")
dl_eq "add-run refs exit" 0 $?
dl_eq "add-run refs message" "run disc: 4 steps, 1 items; added 4 checkpoints and 4 jobs" "$out"
dl_eq "steps are the step branches" "0,1,2,4" "$(steps_of disc)"
dl_eq "schedule stored as given" refs "$(dl_sql "SELECT schedule FROM runs WHERE name = 'disc'")"
dl_grep "discovery logged" "$T/a1.err" 'msg="steps discovered" .*steps=4 first=0 last=4'
hub_log_lines "$T/hub/hub.access.log" 1 5
dl_eq "the token went to the refs API" 1 \
    "$(grep '"uri":"/api/models/'"$H_HUB_REPO"'/refs"' "$T/hub/hub.access.log" | grep -c '"status":200,"range":"[^"]*","authorization":"Bearer '"$TOKEN"'"')"
dl_eq "token not in add-run's log" 0 "$(grep -c "$TOKEN" "$T/a1.err")"

out=$("${C[@]}" add-run disc --source "$SRC" --schedule refs --items weights 2>"$T/a2.err")
dl_eq "re-add adds nothing" "run disc: 4 steps, 1 items; added 0 checkpoints and 0 jobs" "$out"

# a new branch appears: the next add-run adds just that step
CKPT_WORKER=$WORKER scripts/make-fixture-series "$T/hubck" --steps 8 >/dev/null 2>&1 || dl_fail "fixture step 8"
hub_stop "$T/hub"
hub_start H "$T/hub" --root "$T/hubck" --port 18300 --cdn-port 18301 --token "$TOKEN" || exit 1
out=$("${C[@]}" add-run disc --source "$SRC" --schedule refs --items weights 2>"$T/a3.err")
dl_eq "new branch picked up" "run disc: 5 steps, 1 items; added 1 checkpoints and 1 jobs" "$out"
dl_eq "steps after the new branch" "0,1,2,4,8" "$(steps_of disc)"

out=$("${C[@]}" add-run union --source "$SRC" --schedule "refs,3:5:1" --items weights 2>"$T/a4.err")
dl_eq "refs,3:5:1 is the union" "0,1,2,3,4,5,8" "$(steps_of union)"
out=$("${C[@]}" add-run pyu --source "$SRC" --schedule "pythia,refs" --items weights 2>"$T/a5.err")
dl_eq "pythia,refs" "run pyu: 154 steps, 1 items; added 154 checkpoints and 154 jobs" "$out"
dl_sql "DELETE FROM runs WHERE name IN ('union', 'pyu')" >/dev/null
before=$(count)

# failures: exit 1, nothing added, the cause named
HF_ENDPOINT=http://127.0.0.1:18309 "${C[@]}" add-run bad1 --source "$SRC" --schedule refs >/dev/null 2>"$T/b1.err"
dl_eq "unreachable endpoint exit" 1 $?
dl_grep "unreachable: URL named" "$T/b1.err" "step discovery: GET http://127.0.0.1:18309/api/models/$H_HUB_REPO/refs: .*(onnect|refused)"
n0=$(refs_reqs)
HF_HUB_OFFLINE=1 "${C[@]}" add-run bad2 --source "$SRC" --schedule refs >/dev/null 2>"$T/b2.err"
dl_eq "offline exit" 1 $?
dl_grep "offline: HF_HUB_OFFLINE named" "$T/b2.err" 'offline \(HF_HUB_OFFLINE=1\): the refs schedule needs the hub'"'"'s refs API'
HF_TOKEN=wrong "${C[@]}" add-run bad3 --source "$SRC" --schedule refs >/dev/null 2>"$T/b3.err"
dl_eq "wrong token exit" 1 $?
dl_grep "wrong token: HTTP 401 and the URL" "$T/b3.err" "GET $H_HUB_URL/api/models/$H_HUB_REPO/refs: HTTP 401"
end=$((SECONDS + 5)) # nginx logs just after answering
while [ "$(refs_reqs)" -lt $((n0 + 1)) ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
dl_eq "offline made no request (only the 401 one)" $((n0 + 1)) "$(refs_reqs)"
mkdir -p "$T/nosteps"
cp -a "$T/hubck/step0" "$T/nosteps/v1"
hub_start N "$T/hubn" --root "$T/nosteps" --port 18302 --cdn-port 18303 --repo test-org/no-steps || exit 1
HF_ENDPOINT=$N_HUB_URL "${C[@]}" add-run bad4 --source "hf://test-org/no-steps" --schedule refs >/dev/null 2>"$T/b4.err"
dl_eq "no step branches exit" 1 $?
dl_grep "no step branches named" "$T/b4.err" "no branch named step<N>"
"${C[@]}" add-run bad5 --source "https://example.invalid/run/step{step}" --schedule refs >/dev/null 2>"$T/b5.err"
dl_eq "refs on a non-hf source exit" 2 $?
dl_grep "non-hf source named" "$T/b5.err" "refs schedule needs an hf://ORG/NAME source"
"${C[@]}" add-run bad6 --source "$SRC" --schedule "refs,x" >/dev/null 2>"$T/b6.err"
dl_eq "bad schedule exits 2 before asking the hub" 2 $?
dl_eq "database unchanged by the failures" "$before" "$(count)"

# the discovered run, served to the end
RPC=$(dl_rows_per_ckpt weights)
dl_serve S --config "$T/cfg.json" serve --until-idle --node node-S
dl_wait_exit "$S_PID" 120
dl_eq "serve exit" 0 "$DL_STATUS"
dl_eq "all five steps done" 5 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'disc' AND state = 'done'")"
dl_eq "measurements for every step" $((5 * RPC)) "$(dl_sql "SELECT count(*) FROM measurements")"
dl_finish
