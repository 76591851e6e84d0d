#!/bin/bash
# deploy_validate.sh - deploy/ checked by what this machine can run.
#
# systemd: `systemd-analyze verify` on deploy/systemd/ckptd.service (a copy
#   whose ExecStart is the built ckptd) says nothing; a misspelt key in a
#   copy is reported; its exposure level (systemd-analyze security
#   --offline) is below 3; ckptd.env is VAR=value lines; ckptd loads
#   ckptd.json.
# Kubernetes: tests/deploy/check_deploy.py against the committed schema
#   tests/deploy/k8s_required.json (kinds, apiVersions, required fields,
#   one versioned image, the database from the Secret by secretKeyRef,
#   probes on the port metrics_listen names, writable volumes for the
#   cache, spool and HF_HOME, the Indexed sweep Job); ckptd loads the
#   ConfigMap's ckptd.json; broken copies (probe on another port, a literal
#   password, an image without a version, no completionMode) each fail;
#   `kubectl kustomize` when kubectl is installed.
# Slurm: `bash -n`, a broken copy fails it; the script run outside Slurm
#   with SLURM_* set drains a queued run into the database (exit 0, a node
#   named slurm-JOB-TASK@host, its scratch directory removed).
# Grafana: every variable's and panel's SQL run against that database
#   (migrated by ckptd migrate, filled by the run above, a dead job, a
#   transition and a download in progress) as a login role that only has
#   ckptd_reader: each succeeds and returns rows; a copy with a misspelt
#   view fails.
# Container: COPY sources exist and are in the build context, the
#   --from=build paths are what `make install DESTDIR=` writes, RUN's
#   scripts exist, a non-root user; every library ckptd and ckpt-worker
#   link (NEEDED) or load at first use (libzip, libcrypto: common/lazylib.h)
#   comes from a package the runtime stage installs (or
#   libc6); `docker build` only when a docker daemon answers.
# PostgreSQL port 54388.
. tests/lib/daemon.sh
dl_init deploy 54388
dl_migrate
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
CHECK="$PY $ROOT/tests/deploy/check_deploy.py"
# run_check NAME ARGS...: the checker's ok/FAIL lines count as this test's
run_check() {
    local name=$1 out
    shift
    out=$($CHECK "$@" 2>&1)
    local rc=$? nok nfail
    nok=$(printf '%s\n' "$out" | grep -c '^ok: ')
    nfail=$(printf '%s\n' "$out" | grep -c '^FAIL: ')
    printf '%s\n' "$out" | grep -v '^ok: ' | sed 's/^/    | /'
    DL_PASSED=$((DL_PASSED + nok))
    DL_FAILED=$((DL_FAILED + nfail))
    if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then dl_fail "$name: check_deploy.py exit $rc"; fi
    echo "# $name: $nok checks ok, $nfail failed"
}
# must_fail DESC PATTERN ARGS...: the checker exits 1 naming PATTERN
must_fail() {
    local d=$1 pat=$2 out
    shift 2
    out=$($CHECK "$@" 2>&1)
    if [ $? -eq 1 ] && printf '%s\n' "$out" | grep -q -- "^FAIL: .*$pat"; then dl_ok "$d"; else
        dl_fail "$d: no FAIL naming /$pat/"
        printf '%s\n' "$out" | grep FAIL | head -n 3
    fi
}

# ---- systemd
UNIT=deploy/systemd/ckptd.service
if command -v systemd-analyze >/dev/null 2>&1; then
    mkdir -p "$T/unit"
    sed "s|^ExecStart=/usr/local/bin/ckptd |ExecStart=$CKPTD |" "$UNIT" >"$T/unit/ckptd.service"
    dl_true "the copy runs the built ckptd" grep -q "^ExecStart=$CKPTD " "$T/unit/ckptd.service"
    systemd-analyze verify "$T/unit/ckptd.service" >"$T/verify.out" 2>&1
    rc=$?
    dl_eq "systemd-analyze verify exit" 0 "$rc"
    dl_eq "systemd-analyze verify says nothing about the unit" 0 "$(grep -c 'ckptd' "$T/verify.out")"
    grep ckptd "$T/verify.out" | head -n 5
    sed 's/^KillMode=/KilMode=/' "$T/unit/ckptd.service" >"$T/unit/broken.service"
    systemd-analyze verify "$T/unit/broken.service" >"$T/verify2.out" 2>&1
    dl_grep "a misspelt key is reported" "$T/verify2.out" "Unknown key 'KilMode'"
    if systemd-analyze security --offline=true "$T/unit/ckptd.service" >"$T/sec.out" 2>&1; then
        level=$(sed -n 's/.*Overall exposure level for ckptd.service: \([0-9.]*\).*/\1/p' "$T/sec.out")
        dl_true "exposure level $level < 3 (systemd-analyze security)" awk -v l="$level" 'BEGIN { exit !(l != "" && l < 3) }'
    else
        echo "# systemd-analyze security --offline not available: exposure not measured"
    fi
else
    echo "# systemd-analyze not installed: unit not verified (scripts/install-deps installs systemd)"
fi
for k in 'Type=notify' 'WatchdogSec=' 'KillMode=mixed' 'EnvironmentFile=/etc/ckptd/ckptd.env' 'ExecReload=/bin/kill -HUP $MAINPID'; do
    dl_true "unit has $k" grep -qF "$k" "$UNIT"
done
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$UNIT")
dl_true "TimeoutStopSec $stop > shutdown_grace_s 30" [ "${stop:-0}" -gt 30 ]
dl_eq "ckptd.env: VAR=value lines only" 0 \
    "$(grep -v '^#' deploy/systemd/ckptd.env | grep -v '^$' | grep -cvE '^[A-Z_][A-Z0-9_]*=[^ ]*$')"
"$CKPTD" --config deploy/systemd/ckptd.json status >"$T/cfg1.out" 2>&1
dl_eq "ckptd loads deploy/systemd/ckptd.json" 0 $?

# ---- Kubernetes
run_check kubernetes k8s deploy/kubernetes tests/deploy/k8s_required.json "$T/cm.json"
"$CKPTD" --config "$T/cm.json" status >"$T/cfg2.out" 2>&1
dl_eq "ckptd loads the ConfigMap's ckptd.json" 0 $?
mutate() { # mutate NAME FILE SED: a copy of deploy/kubernetes with FILE changed
    rm -rf "$T/k8s-$1"
    cp -r deploy/kubernetes "$T/k8s-$1"
    sed -i "$3" "$T/k8s-$1/$2"
    cmp -s "deploy/kubernetes/$2" "$T/k8s-$1/$2" && echo "# mutation $1 changed nothing" >&2
}
mutate port deployment.yaml 's/containerPort: 9464/containerPort: 9465/'
must_fail "a probe off the metrics port fails" "containerPort 9464" k8s "$T/k8s-port" tests/deploy/k8s_required.json "$T/x.json"
mutate pw sweep-job.yaml '0,/secretKeyRef: {name: ckptd-db, key: password}/s//secretKeyRef: {name: ckptd-db, key: password}\n              value: hunter2/'
must_fail "a literal password fails" "PGPASSWORD has no literal value" k8s "$T/k8s-pw" tests/deploy/k8s_required.json "$T/x.json"
mutate img migrate-job.yaml 's/ckptd:0.1.0/ckptd:latest/'
must_fail "an image without a version fails" "is tagged with a version" k8s "$T/k8s-img" tests/deploy/k8s_required.json "$T/x.json"
mutate idx sweep-job.yaml '/completionMode: Indexed/d'
must_fail "a sweep that is not an Indexed Job fails" "an Indexed Job" k8s "$T/k8s-idx" tests/deploy/k8s_required.json "$T/x.json"
mutate cache configmap.yaml 's|"cache_dir": "/var/cache/ckptd/checkpoints"|"cache_dir": "/opt/cache"|'
must_fail "a cache off the volumes fails" "cache_dir /opt/cache is on a writable volume" k8s "$T/k8s-cache" tests/deploy/k8s_required.json "$T/x.json"
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize deploy/kubernetes >"$T/kustomize.out" 2>&1; then
    dl_eq "kubectl kustomize: ConfigMap and Deployment" "ConfigMap Deployment" \
        "$(sed -n 's/^kind: //p' "$T/kustomize.out" | sort | tr '\n' ' ' | sed 's/ $//')"
else
    echo "# kubectl kustomize not available: skipped"
fi

# ---- Slurm
SB=deploy/slurm/ckptd-array.sbatch
dl_true "bash -n $SB" bash -n "$SB"
sed 's/^mkdir -p "$dir\/cache"/mkdir -p "$dir\/cache/' "$SB" >"$T/broken.sbatch"
if bash -n "$T/broken.sbatch" 2>/dev/null; then dl_fail "a broken copy passes bash -n"; else dl_ok "a broken copy fails bash -n"; fi
dl_true "the array's tasks run serve --until-idle" grep -q 'serve --until-idle' "$SB"
dl_true "sbatch --array in the script" grep -q '^#SBATCH --array=' "$SB"
dl_ckpts 4
"$CKPTD" add-run sweep --source "file://$T/ck/step{step}" --schedule 0:3:1 --items loss,weights >/dev/null 2>"$T/add.err" ||
    dl_fail "add-run sweep"
"$CKPTD" add-run broken --source "file://$T/missing/step{step}" --schedule 0 --items loss --max-attempts 1 \
    >/dev/null 2>>"$T/add.err" || dl_fail "add-run broken"
mkdir -p "$T/scratch"
CKPTD=$CKPTD CKPTD_SCRATCH=$T/scratch SLURM_ARRAY_JOB_ID=77 SLURM_ARRAY_TASK_ID=3 SLURM_CPUS_PER_TASK=2 \
    bash "$SB" >"$T/sbatch.out" 2>&1
dl_eq "the array task outside Slurm: exit" 0 $?
dl_eq "the run drained: jobs done" 8 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'sweep' AND state = 'done'")"
dl_eq "the task's node name" "slurm-77-3@$(hostname -s)" "$(dl_sql "SELECT node FROM nodes WHERE node LIKE 'slurm-%'")"
dl_eq "its scratch directory removed" 0 "$(ls "$T/scratch" | wc -l)"
dl_grep "it says what it ran" "$T/sbatch.out" "ckptd task 3 of job 77 on .*: 1 workers x 2 threads"

# ---- Grafana
dl_eq "the broken run's job is dead with an error" 1 \
    "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'broken' AND state = 'dead' AND last_error IS NOT NULL")"
dl_sql "INSERT INTO transitions (run_id, metric_id, start_step, peak_step, end_step, magnitude, score, method)
        SELECT r.id, m.id, 0, 1, 2, 0.5, 3.0, 'test' FROM runs r, metrics m
        WHERE r.name = 'sweep' AND m.name = (SELECT metric FROM series WHERE run = 'sweep' LIMIT 1) LIMIT 1;
        INSERT INTO fetches (checkpoint_id, node, state, bytes_done, bytes_total, bytes_per_s)
        SELECT c.id, 'node-x', 'fetching', 1000, 5000, 100 FROM checkpoints c JOIN runs r ON r.id = c.run_id
        WHERE r.name = 'sweep' AND c.step = 3
        ON CONFLICT (checkpoint_id) DO UPDATE SET state = 'fetching', updated_at = now()" >/dev/null
dl_sql "CREATE ROLE grafana_reader LOGIN; GRANT ckptd_reader TO grafana_reader" >/dev/null
dl_eq "the reader may not write" 1 \
    "$(PGUSER=grafana_reader dl_sql "DELETE FROM runs" | grep -c 'permission denied')"
PGUSER=grafana_reader run_check grafana grafana deploy/grafana/ckptd-dashboard.json
sed 's/FROM job_list/FROM job_lists/' deploy/grafana/ckptd-dashboard.json >"$T/dash.json"
PGUSER=grafana_reader must_fail "a misspelt view fails" 'relation "job_lists" does not exist' grafana "$T/dash.json"

# ---- container
CF=deploy/container/Containerfile
make --no-print-directory -s install PREFIX=/usr/local DESTDIR="$T/inst" >"$T/install.out" 2>&1 ||
    { dl_fail "make install DESTDIR"; tail -n 5 "$T/install.out"; }
run_check container container "$CF" . "$T/inst" "$T/runtime.pkgs"
"$CKPTD" --config deploy/container/ckptd.json status >"$T/cfg3.out" 2>&1
dl_eq "ckptd loads the image's ckptd.json" 0 $?
dl_true "the image's default command reads it" grep -q '^CMD \["--config", "/etc/ckptd/ckptd.json", "serve"' "$CF"
for bin in "$T/inst/usr/local/bin/ckptd" "$T/inst/usr/local/bin/ckpt-worker"; do # what the image gets
    # the libraries it links, and those it loads at their first use
    # (common/lazylib.h: the sonames are strings in the binary)
    for lib in $({ objdump -p "$bin" | awk '$1 == "NEEDED" { print $2 }'
                   strings -a "$bin" | grep -oE 'lib(zip|crypto)\.so\.[0-9]+$'; } | sort -u); do
        path=$(ldd "$bin" | awk -v l="$lib" '$1 == l { print $3 } $1 ~ ("/" l "$") { print $1 }')
        [ -n "$path" ] || path=$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
        pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -n 1 | cut -d: -f1)
        [ -n "$pkg" ] || pkg=$(dpkg -S "$path" 2>/dev/null | head -n 1 | cut -d: -f1)
        if [ "$pkg" = libc6 ] || grep -qx "$pkg" "$T/runtime.pkgs"; then
            dl_ok "$(basename "$bin") needs $lib: package $pkg is in the runtime stage"
        else
            dl_fail "$(basename "$bin") needs $lib (package '${pkg:-unknown}'), not installed by the runtime stage"
        fi
    done
done
if [ -n "$(apt-cache policy libpq5 2>/dev/null | grep Candidate)" ]; then
    while read -r p; do
        dl_true "runtime package $p exists" apt-cache show "$p" >/dev/null 2>&1
    done <"$T/runtime.pkgs"
fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    docker build -q -f "$CF" -t ckptd-validate:test . >"$T/docker.out" 2>&1
    dl_eq "docker build" 0 $?
    dl_eq "the image runs ckptd --version" "ckptd $("$CKPTD" --version | cut -d' ' -f2)" \
        "$(docker run --rm ckptd-validate:test --version 2>&1)"
else
    echo "# no docker daemon: the container file was checked, not built"
fi
dl_finish
