#!/bin/bash
# slurm_array.sh - deploy/slurm/ckptd-array.sbatch, unchanged, submitted to
# a real Slurm cluster that this test starts (tests/lib/slurm.sh: munged,
# slurmctld and slurmd in $T/slurm, one node, this host) against a real
# PostgreSQL: a toy series of 6 tiny checkpoints with items loss and
# weights (12 jobs), a job array of two tasks.  Checks: both array tasks
# COMPLETED with exit code 0; every job done exactly once (one attempt,
# each checkpoint's rows once); each job's done_by is one of the array
# tasks' node names slurm-JOB-TASK@host, and both names are in `nodes`;
# each task's log says which task of which job ran where and that ckptd
# exited 0; the tasks' scratch directories are gone.
# Without root, or without slurm-wlm and munge installed, it says so and
# is skipped; installed and root but not starting is a failure (with the
# daemons' logs).  The test runs in its own network namespace
# (sl_isolate).  About 15 s.  PostgreSQL port 54431.
. tests/lib/daemon.sh
. tests/lib/slurm.sh
# seconds since a `date +%s.%N` reading
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
if ! sl_can_run; then
    echo "SKIP: slurm_array: $SL_WHY"
    exit 0
fi
sl_isolate "$0" "$@"
dl_init slurm_array 54431
# dl_cleanup reads $? first: keep it across sl_stop
trap 'dl_rc=$?; sl_stop; (exit $dl_rc); dl_cleanup' EXIT
dl_migrate
dl_ckpts 6
RPC=$(dl_rows_per_ckpt loss,weights)
"$CKPTD" add-run sweep --source "file://$T/ck/step{step}" --schedule 0:5:1 --items loss,weights \
    >/dev/null 2>"$T/add.err" || { dl_fail "add-run sweep"; cat "$T/add.err"; }

t0=$(date +%s.%N)
sl_start "$T/slurm" || { dl_fail "the Slurm cluster started"; dl_finish; }
dl_ok "Slurm cluster up in $(since $t0) s on node $SL_NODE"
mkdir -p "$T/scratch" "$T/logs"
# The script's own #SBATCH --cpus-per-task=8 --mem=32G would be accepted
# and then pend forever on a small node: the command line overrides them.
# PGHOST... (dl_init) reach the job: sbatch exports the environment.
# --output=ckptd-%A_%a.log is relative to --chdir.
t0=$(date +%s.%N)
job=$(CKPTD=$CKPTD CKPTD_SCRATCH=$T/scratch CKPTD_WORKERS=1 HF_HOME=$T/hf \
    sbatch --parsable --chdir="$T/logs" --array=0-1 --cpus-per-task=1 --mem=1G --time=10 \
    deploy/slurm/ckptd-array.sbatch 2>"$T/sbatch.err")
job=${job%%;*}
case "$job" in
'' | *[!0-9]*)
    dl_fail "sbatch accepted the script: '$job' $(cat "$T/sbatch.err")"
    dl_finish
    ;;
esac
dl_ok "sbatch: job $job"
sl_wait_job "$job" 120
dl_eq "every array task COMPLETED" 0 $?
echo "# array done in $(since $t0) s"
for task in 0 1; do
    dl_eq "task $task: exit code" "ExitCode=0:0" \
        "$(scontrol -o show job "${job}_$task" | grep -o 'ExitCode=[0-9:]*' | head -n 1)"
done

dl_check_complete sweep 6 2 "$RPC"
dl_eq "every job done on its first attempt" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE attempts <> 1")"
host=$(hostname -s)
names="'slurm-$job-0@$host', 'slurm-$job-1@$host'"
dl_eq "every job stored by one of the array's tasks" 12 \
    "$(dl_sql "SELECT count(*) FROM jobs WHERE done_by IN ($names)")"
dl_eq "both tasks registered as nodes" 2 "$(dl_sql "SELECT count(*) FROM nodes WHERE node IN ($names)")"
echo "# jobs per task: $(dl_sql "SELECT done_by || ' ' || count(*) FROM jobs GROUP BY done_by ORDER BY 1" | tr '\n' ';')"
for task in 0 1; do
    log=$T/logs/ckptd-${job}_$task.log
    dl_grep "task $task's log names task, job and host" "$log" "^ckptd task $task of job $job on $host: 1 workers x 1 threads"
    dl_grep "task $task's ckptd exited 0" "$log" "^ckptd task $task: exit 0\$"
done
dl_eq "the tasks' scratch directories removed" 0 "$(find "$T/scratch" -mindepth 1 | wc -l)"
pids="$SL_CTLD_PID $SL_SLURMD_PID $SL_MUNGED_PID"
sl_stop
left=0
for p in $pids; do kill -0 "$p" 2>/dev/null && left=$((left + 1)); done
dl_eq "slurmctld, slurmd and munged stopped" 0 "$left"
dl_finish
