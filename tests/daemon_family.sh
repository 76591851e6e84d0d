#!/bin/bash
# daemon_family.sh - families of runs that differ by seed
# (daemon/detect/family.h), on toy runs trained here (PostgreSQL port 54463).
#
# Two families are trained with `ckpt-worker train`, one thread each, all at
# once (a few minutes on two cores):
#   grok    modular addition (p 31, train fraction 0.45, lr 1.5e-3, 2500
#           steps, a checkpoint every 50) under seeds 1..3, added together
#           with `add-run --family grok --source '.../grok-seed{1..3}/...'`;
#   ind     the induction task (800 steps, a checkpoint every 25) under
#           seeds 1..3, added one by one and grouped by `ckptd add-family`,
#           plus ind-1layer (one layer: it cannot form induction heads,
#           which need two), added with `add-run --family ind`.
# Ground truth comes from the trainer's train_log.jsonl, not from ckptd:
# a grok seed's rise is where test_acc goes from 25% to 75% of the way from
# its plateau (the median over steps 300..700, after memorising) to its
# final value (the best of the last five); an induction seed's crossing is
# the first checkpoint where icl_acc (accuracy on the repeated half of a
# sequence) rises past half-way from its plateau (the median over steps
# 100..300) to its final value (the best of the last five).  Tolerance: one
# checkpoint either side, as in dynamics_e2e.sh.
# Asserts:
#   - every member is a member (family_runs), every job done;
#   - grok: test_acc's late rise is the family's (found in at least 2 of the
#     3 seeds: the detector may miss a slow rise), each found seed's peak
#     inside its own rise; a seed not found is flagged transition_absent;
#     the seeds grok apart (4+ checkpoints in the logs) and the family row
#     shows that spread (its peaks' range within 2 checkpoints of the found
#     seeds' half-way points' range);
#   - family_bands agrees with the members' series computed independently
#     (Python's statistics: count, mean, standard deviation, median, min,
#     max at every step of test_acc), and where the logs' seeds are
#     furthest apart within the rises the band is at least half as wide;
#   - ind: icl_acc's rise is the family's in the three two-layer seeds,
#     each at its crossing, their peaks within 2 checkpoints of each other;
#     ind-1layer is flagged on icl_acc (transition_absent or _far);
#   - `transitions --family --json` and `report --family` show the same
#     (every member named in the page, with its drawing);
#   - refusals: add-family with an unknown run (exit 1, naming it, nothing
#     written), a range without --family, an unknown family.
. tests/lib/daemon.sh
dl_init family 54463
dl_migrate
C=("$CKPTD" --config "$T/cfg.json")
dl_config "$T/cfg.json" '"workers": 2'

train() { # OUT ARGS...
    local out=$1
    shift
    "$WORKER" --threads 1 train "$@" --out "$T/$out" --log-every 0 >"$T/train-$out.out" 2>&1 ||
        { echo "FAIL: training $out"; tail -n 5 "$T/train-$out.out"; return 1; }
}
GROK=(--task modular-addition --p 31 --train-frac 0.45 --lr 1.5e-3 --steps 2500 --ckpt-every 50)
IND=(--task induction --steps 800 --ckpt-every 25)
pids=""
for s in 1 2 3; do
    train grok-seed$s "${GROK[@]}" --seed $s &
    pids="$pids $!"
    train ind-seed$s "${IND[@]}" --seed $s &
    pids="$pids $!"
done
train ind-1layer "${IND[@]}" --layers 1 --seed 1 &
pids="$pids $!"
for p in $pids; do wait "$p" || dl_fail "training"; done
[ "$DL_FAILED" = 0 ] || dl_finish

schedule() { ls "$T/$1" | sed -n 's/^step\([0-9]*\)$/\1/p' | sort -n | paste -sd,; }
GS=$(schedule grok-seed1) IS=$(schedule ind-seed1)

"${C[@]}" add-run --family grok --source "file://$T/grok-seed{1..3}/step{step}" --schedule "$GS" --items task \
    >"$T/add.out" 2>&1 || { dl_fail "add-run --family with a range"; cat "$T/add.out"; }
dl_grep "the range names its runs" "$T/add.out" 'family grok: grok-seed3 added'
for s in 1 2 3; do
    "${C[@]}" add-run ind-seed$s --source "file://$T/ind-seed$s/step{step}" --schedule "$IS" --items task \
        >>"$T/add.out" 2>&1 || dl_fail "add-run ind-seed$s"
done
"${C[@]}" add-family ind ind-seed1 ind-seed2 ind-seed3 >"$T/addf.out" 2>&1
dl_eq "add-family exit" 0 $?
dl_grep "add-family reports" "$T/addf.out" '^family ind: 3 runs added, 0 already members'
"${C[@]}" add-run ind-1layer --family ind --source "file://$T/ind-1layer/step{step}" --schedule "$IS" \
    --items task >>"$T/add.out" 2>&1 || dl_fail "add-run --family"
dl_eq "members" "grok:grok-seed1 grok:grok-seed2 grok:grok-seed3 ind:ind-1layer ind:ind-seed1 ind:ind-seed2 ind:ind-seed3" \
    "$(dl_sql "SELECT string_agg(family || ':' || run, ' ' ORDER BY family, run) FROM family_runs")"

# ---- refusals (before serving: nothing may change what follows) ----
"${C[@]}" add-family ind ind-seed1 nonesuch >"$T/bad1.out" 2>&1
dl_eq "add-family with an unknown run: exit 1" 1 $?
dl_grep "the unknown run is named" "$T/bad1.out" 'nonesuch'
dl_eq "nothing written" "4" "$(dl_sql "SELECT count(*) FROM family_runs WHERE family = 'ind'")"
"${C[@]}" add-run --source "file://$T/grok-seed{1..3}/step{step}" --schedule "$GS" >"$T/bad2.out" 2>&1
dl_eq "a range without --family: usage exit" 2 $?
dl_grep "the refusal says why" "$T/bad2.out" 'need NAME, or a source with a range'
"${C[@]}" transitions --family nonesuch >"$T/bad3.out" 2>&1
dl_eq "unknown family: exit 1" 1 $?
dl_grep "unknown family named" "$T/bad3.out" "nonesuch"

dl_serve S --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S_PID" 600
dl_eq "serve exit" 0 "$DL_STATUS"
dl_eq "every job done" 0 "$(dl_sql "SELECT count(*) FROM jobs WHERE state <> 'done'")"
"${C[@]}" detect --family grok >"$T/detg.out" 2>&1 || dl_fail "detect --family grok"
"${C[@]}" detect --family ind >"$T/deti.out" 2>&1 || dl_fail "detect --family ind"
dl_grep "detect --family reports" "$T/detg.out" '^family grok: 3 members, [0-9]+ clusters'

# ---- ground truth from the training logs ----
# truth DIR grok|ind: grok "rise_start half_way rise_end", ind "previous_step
# crossing_step" (empty when none)
truth() {
    /usr/bin/python3 - "$T/$1/train_log.jsonl" "$2" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def first(pred):
    return next((i for i, r in enumerate(rows) if pred(r)), None)
if sys.argv[2] == "grok":
    plateau = statistics.median(r["test_acc"] for r in rows if 300 <= r["step"] <= 700)
    final = max(r["test_acc"] for r in rows[-5:])
    at = [first(lambda r, f=f: r["step"] > 700 and r["test_acc"] >= plateau + f * (final - plateau))
          for f in (0.25, 0.5, 0.75)]
    if None not in at:
        print(*(rows[i]["step"] for i in at))
else:
    plateau = statistics.median(r["icl_acc"] for r in rows if 100 <= r["step"] <= 300)
    half = (plateau + max(r["icl_acc"] for r in rows[-5:])) / 2
    i = first(lambda r: r["step"] > 16 and r["icl_acc"] >= half)
    if i:
        print(rows[i - 1]["step"], rows[i]["step"])
EOF
}
# near PEAK "LO HI" EVERY: the peak within one checkpoint of [LO, HI]
near() { set -- "$1" $2 "$3"; [ -n "${3:-}" ] && [ "$1" -ge $(($2 - $4)) ] && [ "$1" -le $(($3 + $4)) ]; }

# the family's transition of METRIC with SIGN, the first by ORDER:
# "found/total is_family peak_min peak_max spread_ckpts", and its members'
# peaks "run=peak ..."
fam_row() {
    dl_sql "SELECT members_found || '/' || members_total || ' ' || is_family || ' ' || peak_min || ' ' || peak_max
            || ' ' || peak_spread_ckpts FROM family_transitions_named WHERE family = '$1' AND metric = '$2'
            AND sign = $3 AND layer = -1 AND head = -1 ORDER BY $4 LIMIT 1"
}
fam_peaks() {
    dl_sql "SELECT string_agg(m || '=' || p, ' ' ORDER BY m) FROM (SELECT unnest(members) AS m, unnest(peaks) AS p
            FROM (SELECT * FROM family_transitions_named WHERE family = '$1' AND metric = '$2' AND sign = $3
            AND layer = -1 AND head = -1 ORDER BY $4 LIMIT 1) t) x"
}

# ---- grok: the spread of the seeds ----
LATE="peak_median DESC" # the late rise (grokking), not memorising's at the start
read -r gfound gfam gmin gmax gspread <<<"$(fam_row grok test_acc 1 "$LATE")"
ok=0
[ "${gfam:-}" = true ] && [ "${gfound%/*}" -ge 2 ] && [ "${gfound#*/}" = 3 ] && ok=1
dl_eq "grok: test_acc's late rise is the family's (${gfound:-none})" 1 $ok
half_lo=999999 half_hi=0 rise_lo=999999 rise_hi=0 all_lo=999999 all_hi=0
for s in 1 2 3; do
    set -- $(truth grok-seed$s grok)
    [ -n "${3:-}" ] || { dl_fail "grok-seed$s: no rise in its log"; continue; }
    [ "$2" -lt "$all_lo" ] && all_lo=$2
    [ "$2" -gt "$all_hi" ] && all_hi=$2
    [ "$1" -lt "$rise_lo" ] && rise_lo=$1
    [ "$3" -gt "$rise_hi" ] && rise_hi=$3
    peak=$(fam_peaks grok test_acc 1 "$LATE" | tr ' ' '\n' | sed -n "s/^grok-seed$s=//p")
    if [ -n "$peak" ]; then
        dl_true "grok-seed$s: its peak $peak inside its rise ($1..$3 in its log)" near "$peak" "$1 $3" 50
        [ "$2" -lt "$half_lo" ] && half_lo=$2
        [ "$2" -gt "$half_hi" ] && half_hi=$2
    else
        dl_eq "grok-seed$s: not found, flagged absent (rise $1..$3 in its log)" "1" \
            "$(dl_sql "SELECT count(*) FROM family_outliers_named WHERE family = 'grok' AND run = 'grok-seed$s'
                       AND metric = 'test_acc' AND layer = -1 AND reason = 'transition_absent'
                       AND abs(value - (SELECT peak_median FROM family_transitions_named WHERE family = 'grok'
                           AND metric = 'test_acc' AND sign = 1 AND layer = -1 ORDER BY $LATE LIMIT 1)) < 1e-6")"
    fi
done
echo "# grok: half-way in the logs at $all_lo..$all_hi; the family's peaks ${gmin:-}..${gmax:-} (${gspread:-} checkpoints)"
dl_true "the seeds grok apart (logs: $((all_hi - all_lo)) steps)" [ $((all_hi - all_lo)) -ge 200 ]
d=$(((${gmax:-0} - ${gmin:-0}) - (half_hi - half_lo)))
dl_true "the family row shows the found seeds' spread ($((${gmax:-0} - ${gmin:-0})) steps, logs $((half_hi - half_lo)))" \
    [ "${d#-}" -le 100 ]
dl_sql "SELECT '# outlier ' || run || ' ' || metric || ' ' || reason || ' ' || round(value::numeric, 2)
        FROM family_outliers_named WHERE family = 'grok' AND layer = -1 ORDER BY run, metric, reason"

# ---- family_bands against the members' series ----
dl_sql "SELECT s.step, s.run, s.value FROM series s JOIN family_runs f ON f.run = s.run AND f.family = 'grok'
        WHERE s.metric = 'test_acc' AND s.layer = -1" >"$T/members.tsv"
dl_sql "SELECT step, members, mean, coalesce(stddev::text, 'nan'), median, min, max FROM family_bands
        WHERE family = 'grok' AND metric = 'test_acc' AND layer = -1 ORDER BY step" >"$T/bands.tsv"
dl_eq "family_bands = the members' statistics" "ok" "$(/usr/bin/python3 - "$T/members.tsv" "$T/bands.tsv" <<'EOF'
import math, statistics, sys
by = {}
for line in open(sys.argv[1]):
    step, run, v = line.split("\t")
    if math.isfinite(float(v)):
        by.setdefault(int(step), []).append(float(v))
bands = [l.split("\t") for l in open(sys.argv[2])]
bad = []
if len(bands) != len(by):
    bad.append("steps %d vs %d" % (len(bands), len(by)))
for b in bands:
    step, n = int(b[0]), int(b[1])
    mean, sd, med, lo, hi = (float(x) for x in b[2:])
    v = by.get(step, [])
    want = (len(v), statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else float("nan"),
            statistics.median(v), min(v), max(v))
    got = (n, mean, sd, med, lo, hi)
    for w, g in zip(want, got):
        if not (math.isnan(w) and math.isnan(g)) and abs(w - g) > 1e-9 * max(1.0, abs(w)):
            bad.append("step %d: %r vs %r" % (step, got, want))
            break
print("ok" if not bad else "; ".join(bad[:3]))
EOF
)"
# where the seeds' logs are furthest apart within the rises: "step width"
read -r wstep wlog <<<"$(/usr/bin/python3 - "$T" "$rise_lo" "$rise_hi" <<'EOF'
import json, sys
logs = [{r["step"]: r["test_acc"] for r in map(json.loads, open("%s/grok-seed%d/train_log.jsonl" % (sys.argv[1], s)))}
        for s in (1, 2, 3)]
steps = [t for t in logs[0] if int(sys.argv[2]) <= t <= int(sys.argv[3])]
best = max(steps, key=lambda t: max(l[t] for l in logs) - min(l[t] for l in logs))
print(best, round(max(l[best] for l in logs) - min(l[best] for l in logs), 4))
EOF
)"
wband=$(dl_sql "SELECT round((max - min)::numeric, 4) FROM family_bands WHERE family = 'grok' AND metric = 'test_acc'
                AND layer = -1 AND step = $wstep")
dl_true "family_bands shows the seeds apart at step $wstep (band ${wband:-none}, logs $wlog)" \
    python3 -c "import sys; sys.exit(not float('${wband:-0}') >= 0.5 * float('$wlog') > 0.1)"

# ---- induction: the seeds agree ----
FIRST="members_found DESC, peak_median"
read -r ifound ifam imin imax ispread <<<"$(fam_row ind icl_acc 1 "$FIRST")"
dl_eq "ind: icl_acc's rise is the family's, in the three two-layer seeds" "3/4 true" "${ifound:-} ${ifam:-}"
for s in 1 2 3; do
    cr=$(truth ind-seed$s ind)
    peak=$(fam_peaks ind icl_acc 1 "$FIRST" | tr ' ' '\n' | sed -n "s/^ind-seed$s=//p")
    dl_true "ind-seed$s: its peak ${peak:-none} at its crossing (${cr:-none} in its log)" near "${peak:-0}" "$cr" 25
done
echo "# ind: the family's peaks ${imin:-}..${imax:-} (${ispread:-} checkpoints)"
dl_true "induction forms together: peaks within 2 checkpoints (${ispread:-none})" [ "${ispread:-99}" -le 2 ]
dl_eq "ind-1layer: flagged on icl_acc" "1" \
    "$(dl_sql "SELECT count(DISTINCT run) FROM family_outliers_named WHERE family = 'ind' AND run = 'ind-1layer'
               AND metric = 'icl_acc' AND reason IN ('transition_absent', 'transition_far')")"
dl_sql "SELECT '# outlier ' || run || ' ' || metric || ' ' || reason || ' ' || round(value::numeric, 2)
        FROM family_outliers_named WHERE family = 'ind' AND layer = -1 ORDER BY run, metric, reason"

# ---- the listing and the report ----
"${C[@]}" transitions --family grok --json >"$T/grok.json" 2>&1
dl_eq "transitions --family --json: members, the late rise" "3 ${gmin:-} ${gmax:-}" "$(/usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
t = [x for x in d["transitions"] if x["metric"] == "test_acc" and x["sign"] == 1 and x["layer"] == -1]
t.sort(key=lambda x: -x["peak_median"])
print(len(d["members"]), t[0]["peak_min"] if t else "-", t[0]["peak_max"] if t else "-")' "$T/grok.json")"
"${C[@]}" report --family grok --out "$T/report" >"$T/report.out" 2>&1
dl_eq "report --family exit" 0 $?
for r in grok-seed1 grok-seed2 grok-seed3; do
    dl_grep "report names $r" "$T/report/index.html" "$r"
done
dl_grep "report draws" "$T/report/index.html" '<svg'
dl_finish
