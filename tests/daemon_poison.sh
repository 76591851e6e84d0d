#!/bin/bash
# daemon_poison.sh - checkpoints that always fail: step 3's worker dies of
# SIGSEGV (a wrapper kills itself after a line on stderr), step 4 is a
# truncated checkpoint the real worker refuses (exit 1), step 5's worker
# hangs past worker_timeout_s (2 s) and is killed with its process group,
# step 6's worker exits 0 having written a row of a metric the battery does
# not have (the results are rejected, nothing is stored).  Each ends `dead`
# after max_attempts (3) with last_error naming the signal, exit status,
# timeout or rejected row, and the tail of stderr (step 4: the worker's own
# message for the item, from its status file), while the other
# checkpoints complete; `ckptd status` lists them as failed with the error;
# `ckptd retry` re-queues them (one job by id, then the rest of the run by
# name), and once healed they complete.
. tests/lib/daemon.sh
dl_init poison 54347
dl_migrate
N=8
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss)
LV=$("$WORKER" battery | awk '$1 == "loss" { print $2; exit }') # the loss item's version
# step 4: cut the weights in half
f=$T/ck/step4/model.safetensors
size=$(stat -c %s "$f")
head -c $((size / 2)) "$f" >"$f.half" && mv "$f.half" "$f"
dl_wrapper "$T/crash.sh" '
case "$DIR" in
*/step3)
    if [ ! -e "$T/healed" ]; then
        echo "crash-wrapper: about to fault on $DIR" >&2
        ulimit -c 0
        kill -SEGV $$
    fi ;;
*/step5)
    [ -e "$T/healed" ] || exec "$SLEEP" 30 ;;
*/step6)
    if [ ! -e "$T/healed" ]; then
        printf "loss\t'"$LV"'\tloss\t-1\t-1\t-1\t2.5\nloss\t'"$LV"'\tperplexity\t-1\t-1\t-1\t9\n"
        exit 0
    fi ;;
esac'
dl_config "$T/cfg.json" "\"worker_path\": \"$T/crash.sh\"" '"worker_timeout_s": 2'
"$CKPTD" --config "$T/cfg.json" add-run pz --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss --max-attempts 3 >/dev/null 2>"$T/add.err" || dl_fail "add-run"

dl_serve P --config "$T/cfg.json" serve --workers 2 --until-idle --node node-P
dl_wait_exit "$P_PID" 60
dl_eq "daemon exit" 0 "$DL_STATUS"

state() { dl_sql "SELECT state || ' ' || attempts FROM job_list WHERE run = 'pz' AND step = $1"; }
err() { dl_sql "SELECT last_error FROM job_list WHERE run = 'pz' AND step = $1"; }
dl_eq "step 3 dead after 3 attempts" "dead 3" "$(state 3)"
dl_eq "step 4 dead after 3 attempts" "dead 3" "$(state 4)"
dl_eq "step 5 dead after 3 attempts" "dead 3" "$(state 5)"
e5=$(err 5)
case "$e5" in
"worker timed out after 2 s and was killed"*) dl_ok "step 5 error names the timeout: $e5" ;;
*) dl_fail "step 5 error: '$e5'" ;;
esac
dl_eq "step 6 dead after 3 attempts" "dead 3" "$(state 6)"
e6=$(err 6)
case "$e6" in
"results rejected: "*"unknown metric loss/$LV/perplexity"*) dl_ok "step 6 error says why its rows were rejected: $e6" ;;
*) dl_fail "step 6 error: '$e6'" ;;
esac
dl_eq "the hung workers were killed with their process group" "" "$(pgrep -f -- "$T/bin/sleep")"
e3=$(err 3)
e4=$(err 4)
case "$e3" in
"worker killed by signal 11 (Segmentation fault); stderr: crash-wrapper: about to fault on $T/ck/step3"*)
    dl_ok "step 3 error names the signal and stderr: $e3" ;;
*) dl_fail "step 3 error: '$e3'" ;;
esac
case "$e4" in
"worker exited with status 1; item loss v"*" not run: "*"exceed"*) dl_ok "step 4 error names the status and the worker's message for the item" ;;
*) dl_fail "step 4 error: '$e4'" ;;
esac
dl_eq "the others done, one attempt each" "$((N - 4))" \
    "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'pz' AND state = 'done' AND attempts = 1")"
dl_eq "their rows stored" $(((N - 4) * RPC)) "$(dl_sql "SELECT count(*) FROM measurements")"
dl_eq "nothing stored for the dead steps" 0 "$(dl_sql "SELECT count(*) FROM measurements WHERE step IN (3, 4, 5, 6)")"
dl_eq "three failures logged per dead step" 12 "$(dl_log_count "$T/P.log" "checkpoint failed")"
dl_grep "step 3 was tried a third time" "$T/P.log" 'msg="worker started" run="pz" step=3 .*attempt=3'
dl_eq "no fourth attempt" 0 "$(grep -c 'attempt=4' "$T/P.log")"

"$CKPTD" status pz >"$T/status.out" 2>&1
dl_eq "status exit" 0 $?
dl_grep "status counts them as failed" "$T/status.out" "pz .* $((N - 4))/$N done, 0 running, 4 failed, 0 queued"
dl_grep "status shows step 3's error" "$T/status.out" "pz step 3 loss: DEAD after 3/3 attempts: worker killed by signal 11"
dl_grep "status shows step 4's error" "$T/status.out" "pz step 4 loss: DEAD after 3/3 attempts: worker exited with status 1"
"$CKPTD" status >"$T/status-all.out" 2>&1
dl_grep "status shows step 5's error" "$T/status.out" "pz step 5 loss: DEAD after 3/3 attempts: worker timed out"
dl_grep "status of all runs too" "$T/status-all.out" "4 failed"

# retry: one job by id, then the run by name (only what is still dead)
id4=$(dl_sql "SELECT id FROM job_list WHERE run = 'pz' AND step = 4")
dl_eq "retry job $id4" "1 job re-queued" "$("$CKPTD" retry "$id4" 2>&1)"
dl_eq "retry run pz" "3 jobs re-queued" "$("$CKPTD" retry pz 2>&1)"
dl_eq "retry again finds nothing dead" "0 jobs re-queued" "$("$CKPTD" retry pz 2>&1)"
dl_eq "retry of a run that does not exist" "0 jobs re-queued" "$("$CKPTD" retry nosuchrun 2>&1)"
dl_eq "re-queued with attempts reset" "queued 0" "$(state 3)"
dl_eq "re-queued with attempts reset (step 4)" "queued 0" "$(state 4)"
dl_eq "re-queued with attempts reset (step 5)" "queued 0" "$(state 5)"
dl_eq "re-queued with attempts reset (step 6)" "queued 0" "$(state 6)"

# heal both and serve again
touch "$T/healed"
rm -rf "$T/ck/step4"
dl_ckpts 1 4
dl_serve Q --config "$T/cfg.json" serve --workers 2 --until-idle --node node-Q
dl_wait_exit "$Q_PID" 60
dl_eq "second daemon exit" 0 "$DL_STATUS"
dl_check_complete pz $N 1 "$RPC"
"$CKPTD" status pz >"$T/status2.out" 2>&1
dl_grep "status: all done" "$T/status2.out" "$N/$N done, 0 running, 0 failed, 0 queued"

dl_finish
