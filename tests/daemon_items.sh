#!/bin/bash
# daemon_items.sh - an item's failure costs only that item.
#
# 1. A run of 49 tiny checkpoints with items loss,weights,task and no
#    task.json anywhere: the worker reports task failed and loss, weights
#    done (its --status file); the daemon stores loss's and weights' rows
#    and fails task alone.  At the end 98 jobs are done on their first
#    attempt (task's retries did not run them again), 49 task jobs are dead
#    after max_attempts (2) with last_error naming task.json, and every
#    step has exactly the rows of loss and weights.
# 2. A worker killed with SIGKILL part-way: for step 3, on its first
#    attempt only, the worker wrapper reads the real worker's status
#    through a FIFO and, as soon as `weights` is reported done, kills the
#    worker and itself.  loss and weights of step 3 are stored from that
#    attempt (attempts 1), heads fails ("killed by signal 9 ... before
#    starting item heads"), is retried alone and stored once: every step
#    has its rows exactly once.
# PostgreSQL port 54395.
. tests/lib/daemon.sh
dl_init items 54395
dl_migrate

# ---- 1. loss,weights,task without task.json
N=49
dl_ckpts $N
RPC=$(dl_rows_per_ckpt loss,weights)
dl_true "rows per checkpoint of loss,weights ($RPC)" [ "$RPC" -gt 0 ]
dl_true "no task.json anywhere" [ -z "$(find "$T/ck" -name task.json)" ]
dl_config "$T/cfg.json"
"$CKPTD" --config "$T/cfg.json" add-run notask --source "file://$T/ck/step{step}" \
    --schedule "0:$((N - 1)):1" --items loss,weights,task --max-attempts 2 >/dev/null 2>"$T/add.err" ||
    { dl_fail "add-run notask"; cat "$T/add.err"; }
dl_serve A --config "$T/cfg.json" serve --workers 2 --until-idle --node node-A
dl_wait_exit "$A_PID" 240
dl_eq "daemon exit" 0 "$DL_STATUS"

q() { dl_sql "SELECT count(*) FROM job_list WHERE run = 'notask' AND $1"; }
dl_eq "loss and weights done" $((2 * N)) "$(q "item IN ('loss', 'weights') AND state = 'done'")"
dl_eq "...each on its first attempt" $((2 * N)) "$(q "item IN ('loss', 'weights') AND attempts = 1")"
dl_eq "task dead" "$N" "$(q "item = 'task' AND state = 'dead'")"
dl_eq "...after its 2 attempts" "$N" "$(q "item = 'task' AND attempts = 2")"
dl_eq "every task error names task.json" "$N" "$(q "item = 'task' AND last_error LIKE '%task.json%'")"
dl_eq "no other job failed" 0 "$(q "item <> 'task' AND last_error IS NOT NULL")"
err=$(dl_sql "SELECT last_error FROM job_list WHERE run = 'notask' AND item = 'task' AND step = 7")
case "$err" in
"worker exited with status 1; item task v"*": needs the run's task.json"*) dl_ok "the error of step 7: $err" ;;
*) dl_fail "the error of step 7: '$err'" ;;
esac
dl_eq "measurements: loss and weights of every step" $((N * RPC)) \
    "$(dl_sql "SELECT count(*) FROM measurements m JOIN runs r ON r.id = m.run_id WHERE r.name = 'notask'")"
dl_eq "steps with exactly their rows" "$N" \
    "$(dl_sql "SELECT count(*) FROM (SELECT step FROM measurements m JOIN runs r ON r.id = m.run_id
               WHERE r.name = 'notask' GROUP BY step HAVING count(*) = $RPC) s")"
dl_eq "rows_written matches" $((N * RPC)) "$(dl_sql "SELECT sum(rows_written) FROM job_list WHERE run = 'notask'")"
dl_eq "each first attempt logged partly done" "$N" "$(dl_log_count "$T/A.log" "checkpoint partly done")"
dl_eq "each retry of task alone logged failed" "$N" "$(dl_log_count "$T/A.log" "checkpoint failed")"
dl_eq "the retries ran task alone" "$N" "$(grep -c 'msg="worker started" run="notask" step=[0-9]* items=task pid' "$T/A.log")"
dl_eq "spool left empty" "" "$(ls "$T/spool")"

# ---- 2. a worker killed between two items
N2=6
RPC2=$(dl_rows_per_ckpt loss,weights,heads)
dl_wrapper "$T/wrap.sh" '
case "$DIR" in
*/step3)
    if mkdir "$T/victim.marker" 2>/dev/null; then
        st= prev=
        for a in "$@"; do [ "$prev" = --status ] && st=$a; prev=$a; done
        fifo=$T/status.fifo
        mkfifo "$fifo" || exit 3
        n=$# prev=
        for a in "$@"; do
            if [ "$prev" = --status ]; then set -- "$@" "$fifo"; else set -- "$@" "$a"; fi
            prev=$a
        done
        shift "$n"
        "$REAL" "$@" &
        child=$!
        while IFS= read -r line; do
            printf "%s\n" "$line" >>"$st"
            case "$line" in "done	weights	"*) kill -9 "$child"; kill -9 $$ ;; esac
        done <"$fifo"
        exit 3
    fi ;;
esac'
dl_config "$T/cfg2.json" "\"worker_path\": \"$T/wrap.sh\""
"$CKPTD" --config "$T/cfg2.json" add-run killed --source "file://$T/ck/step{step}" \
    --schedule "0:$((N2 - 1)):1" --items loss,weights,heads >/dev/null 2>"$T/add2.err" ||
    { dl_fail "add-run killed"; cat "$T/add2.err"; }
dl_serve B --config "$T/cfg2.json" serve --workers 2 --until-idle --node node-B
dl_wait_exit "$B_PID" 120
dl_eq "daemon exit" 0 "$DL_STATUS"
dl_true "the step 3 worker was the victim" test -d "$T/victim.marker"
dl_check_complete killed $N2 3 "$RPC2"
s3() { dl_sql "SELECT string_agg(item || ':' || attempts, ',' ORDER BY item) FROM job_list WHERE run = 'killed' AND step = 3"; }
dl_eq "step 3: loss and weights from the killed attempt, heads retried" "heads:2,loss:1,weights:1" "$(s3)"
dl_eq "step 3: each row once" "$RPC2" \
    "$(dl_sql "SELECT count(DISTINCT (metric_id, layer, head, idx)) FROM measurements m JOIN runs r ON r.id = m.run_id
               WHERE r.name = 'killed' AND m.step = 3")"
dl_grep "the kill left loss and weights done" "$T/B.log" \
    'msg="checkpoint partly done" run="killed" step=3 attempt=1 jobs_done=2 jobs_failed=1'
dl_grep "heads failed naming the signal and the item" "$T/B.log" \
    'msg="item failed" run="killed" step=3 item=heads attempt=1 error="worker killed by signal 9 \(Killed\) before starting item heads v2'
dl_grep "the retry ran heads alone" "$T/B.log" 'msg="worker started" run="killed" step=3 items=heads pid=[0-9]+ attempt=2'
dl_eq "spool left empty" "" "$(ls "$T/spool")"

dl_finish
