# tests/lib/slurm.sh - a throwaway single-node Slurm cluster (munged,
# slurmctld, slurmd) in a directory, for tests.  Sourced by bash, as root.
#
#     . tests/lib/slurm.sh
#     sl_can_run || { echo "SKIP: $SL_WHY"; exit 0; }   # not root, not installed
#     sl_isolate "$0" "$@"               # re-run the test in its own network namespace
#     sl_start "$T/slurm" || exit 1      # exports SLURM_CONF; sets SL_NODE
#     job=$(sbatch --parsable ...)       # jobs run as root on node $SL_NODE
#     sl_wait_job "$job" 120             # 0 every task COMPLETED, 1 one did not, 2 timeout
#     sl_stop                            # cancel jobs, scontrol shutdown, stop munged
#
# Everything (munge key and socket, pids, logs, state, spool) lives under
# the directory; the ports are free ones the kernel chose.  The node is
# this host under its short name (it must resolve, e.g. through
# /etc/hosts), with all its CPUs and half its memory.  Choices that make a
# test quick and clean (each was seen to matter, Debian 12's slurm-wlm
# 22.05 and munge 0.5.15 on a machine without systemd):
#   - every directory above munged's socket must be a+x (mktemp -d is 0700;
#     munged refuses even 0701); the key is 0400 and owned by root;
#   - clients (sbatch, squeue, scontrol) need SLURM_CONF, else they try
#     DNS SRV records (configless mode);
#   - proctrack/pgid and task/none: no cgroup layout assumed, and a job's
#     background children are killed with it;
#   - batch_sched_delay=0: the next array tasks start at once, not 3 s later;
#   - sl_wait_job polls squeue every 0.2 s: `sbatch --wait` polls the
#     controller every few seconds and adds up to 10 s;
#   - jobs are cancelled before `scontrol shutdown`, which otherwise leaves
#     slurmstepd and the job's processes running.
# Every wait has a deadline.

SL_DIR=""
SL_NODE=""
SL_WHY=""
SL_MUNGED_PID=""
SL_CTLD_PID=""
SL_SLURMD_PID=""

# sl_can_run: 0 when this machine can start a cluster, else 1 with the
# reason in SL_WHY (the daemons are not installed, or not root).  A
# cluster that is installed but does not start is sl_start's failure, not
# a reason to skip.
sl_can_run() {
    local b
    for b in munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo scancel; do
        if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ]; then
            SL_WHY="$b not installed (Debian packages slurm-wlm and munge: scripts/install-deps)"
            return 1
        fi
    done
    if [ "$(id -u)" != 0 ]; then
        SL_WHY="a Slurm cluster needs root (munged, slurmd and the jobs run as root here)"
        return 1
    fi
    if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
        SL_WHY="unshare (util-linux) or ip (iproute2) missing"
        return 1
    fi
    return 0
}

# sl_isolate SCRIPT ARGS...: unless already done, re-run SCRIPT in a
# private network namespace (unshare -n) whose loopback is up and which has
# one IPv4 address besides it (10.253.0.1 on a veth pair): slurmctld and
# slurmd resolve their listening address with AI_ADDRCONFIG, which finds
# nothing where loopback is the only interface (as in `unshare -n` for
# make check).  The cluster's ports are then private too.  Does not
# return when it re-runs; fails the test when the namespace cannot be made.
sl_isolate() {
    if [ -z "${SL_ISOLATED:-}" ]; then
        SL_ISOLATED=1 exec unshare -n bash "$@"
        echo "FAIL: unshare -n: cannot make a network namespace for the cluster"
        exit 1
    fi
    local err
    if ! err=$({ ip link set lo up && ip link add sl0 type veth peer name sl1 &&
        ip addr add 10.253.0.1/24 dev sl0 && ip link set sl0 up && ip link set sl1 up; } 2>&1); then
        echo "FAIL: cannot give the test's network namespace an address: $err"
        exit 1
    fi
}

sl_free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sl_wait_pid_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# sl_start DIR: write the key and slurm.conf, start the daemons, wait until
# the node is idle (about 2 s).  1 with the logs printed on failure, having
# stopped what it started.
sl_start() {
    SL_DIR=$1
    local d=$SL_DIR i p
    PATH=$PATH:/usr/sbin
    mkdir -p "$d/munge" "$d/state" "$d/spool" "$d/log" || return 1
    p=$d
    while [ "$p" != / ]; do
        chmod a+x "$p" 2>/dev/null
        p=$(dirname "$p")
    done
    chmod 0755 "$d/munge"
    mungekey --create --keyfile="$d/munge/munge.key" --force 2>"$d/log/mungekey.err" ||
        { echo "mungekey failed:"; cat "$d/log/mungekey.err"; return 1; }
    chmod 0400 "$d/munge/munge.key"
    # without -F munged forks and returns once its socket exists
    if ! munged --socket="$d/munge/munge.socket" --key-file="$d/munge/munge.key" \
        --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" \
        --seed-file="$d/munge/munged.seed" 2>"$d/log/munged.err"; then
        echo "munged did not start:"
        cat "$d/log/munged.err"
        return 1
    fi
    SL_MUNGED_PID=$(cat "$d/munge/munged.pid")
    SL_NODE=$(hostname -s)
    if ! getent hosts "$SL_NODE" >/dev/null; then
        echo "the host name $SL_NODE does not resolve (slurmd finds its node by it): add it to /etc/hosts"
        sl_stop
        return 1
    fi
    local ctld_port slurmd_port mem
    ctld_port=$(sl_free_port)
    slurmd_port=$(sl_free_port)
    [ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((slurmd_port + 1))
    mem=$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)
    cat >"$d/slurm.conf" <<EOF
ClusterName=ckptdtest
SlurmctldHost=$SL_NODE
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.socket
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool/slurmd-%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd-%n.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$SL_NODE CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$SL_NODE Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$d/slurm.conf
    # -D: in the foreground, so $! is the daemon
    slurmctld -D >"$d/log/slurmctld.out" 2>&1 &
    SL_CTLD_PID=$!
    slurmd -D >"$d/log/slurmd.out" 2>&1 &
    SL_SLURMD_PID=$!
    for ((i = 0; i < 300; i++)); do
        [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)" = 1 ] && return 0
        kill -0 "$SL_CTLD_PID" 2>/dev/null && kill -0 "$SL_SLURMD_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "the Slurm cluster did not come up: $(sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ' ')"
    tail -n 20 "$d"/log/*.out "$d"/log/*.log 2>/dev/null
    sl_stop
    return 1
}

# sl_stop: cancel every job, shut the daemons down, stop munged.  Idempotent.
sl_stop() {
    local i p
    if [ -n "$SL_CTLD_PID" ] && kill -0 "$SL_CTLD_PID" 2>/dev/null; then
        scancel --user=root --full 2>/dev/null
        for ((i = 0; i < 150; i++)); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
        scontrol shutdown >/dev/null 2>&1
    fi
    for p in $SL_SLURMD_PID $SL_CTLD_PID; do
        sl_wait_pid_gone "$p" 10 || { kill -TERM "$p" 2>/dev/null; sl_wait_pid_gone "$p" 5 || kill -KILL "$p" 2>/dev/null; }
        wait "$p" 2>/dev/null
    done
    if [ -n "$SL_MUNGED_PID" ]; then
        munged --stop --socket="$SL_DIR/munge/munge.socket" >/dev/null 2>&1 || kill -TERM "$SL_MUNGED_PID" 2>/dev/null
        sl_wait_pid_gone "$SL_MUNGED_PID" 5 || kill -KILL "$SL_MUNGED_PID" 2>/dev/null
    fi
    SL_CTLD_PID="" SL_SLURMD_PID="" SL_MUNGED_PID=""
}

# sl_wait_job JOBID SECONDS: until no task of the job is pending or
# running; 0 when every task COMPLETED, 1 when one did not, 2 at the
# deadline.  (MinJobAge keeps finished jobs in `scontrol show job`.)
sl_wait_job() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        if [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; then
            scontrol -o show job "$1" | grep -v -q 'JobState=COMPLETED' && return 1
            return 0
        fi
        sleep 0.2
    done
    return 2
}
