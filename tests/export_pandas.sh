#!/bin/bash
# export_pandas.sh - `ckptd export` and the pandas recipes of
# docs/data-out.md against a real run (real PostgreSQL on port 54440, the
# real worker on tiny checkpoints; step 4 is a byte copy of step 3, so a
# duplicate checkpoint that `series` leaves out).
#
#  - csv to a file and to standard output are the same bytes; jsonl and npy
#    (a directory of .npy files and index.json) are written; the summary on
#    stderr counts every value of the run;
#  - tests/reference/data_out_check.py runs every "# recipe:" block of
#    docs/data-out.md as written (pandas.read_sql on `series`, pivoted per
#    head; the CSV, JSON-lines and npy readers) and compares each result,
#    value for value, with the base tables read by psycopg2 (measurements,
#    metrics, checkpoints: not the `series` view or the export's SQL);
#  - it can fail: after one stored value is changed the same exports no
#    longer agree with the database, and the checker says so;
#  - filters: --metric NAME, --metric ITEM.NAME and --item select exactly
#    the rows SQL selects;
#  - bad input: an unknown run, a filter that matches nothing, an unknown
#    format, a stray argument, an npy directory that is not empty: a clear
#    error, exit 1 or 2, and nothing written.
. tests/lib/daemon.sh
dl_init export_pandas 54440
dl_migrate
C=("$CKPTD" --config "$T/cfg.json")

for m in pandas psycopg2 numpy; do
    if ! /usr/bin/python3 -c "import $m" 2>/dev/null; then
        dl_fail "python3-$m is not installed (scripts/install-deps)"
        dl_finish
    fi
done

dl_ckpts 6
rm -rf "$T/ck/step4" && cp -r "$T/ck/step3" "$T/ck/step4"
dl_config "$T/cfg.json" "\"worker_path\": \"$WORKER\"" '"workers": 2'
"${C[@]}" add-run ex --source "file://$T/ck/step{step}" --schedule 0:5:1 --items heads,loss,weights \
    >"$T/add.out" 2>&1 || { dl_fail "add-run"; cat "$T/add.out"; dl_finish; }
dl_serve S --config "$T/cfg.json" serve --until-idle
dl_wait_exit "$S_PID" 180
dl_eq "serve exit" 0 "$DL_STATUS"
dl_eq "jobs done" 18 "$(dl_sql "SELECT count(*) FROM job_list WHERE run = 'ex' AND state = 'done'")"
dl_eq "step 4 is a duplicate" 4 "$(dl_sql "SELECT string_agg(step::text, ' ') FROM duplicate_checkpoints WHERE run = 'ex'")"
N=$(dl_sql "SELECT count(*) FROM series WHERE run = 'ex'")
NALL=$(dl_sql "SELECT count(*) FROM measurements m JOIN runs r ON r.id = m.run_id WHERE r.name = 'ex'")
dl_true "the duplicate's rows are stored, the series leaves them out ($N of $NALL)" [ "$N" -gt 0 ] && [ "$NALL" -gt "$N" ]

# the four exports
"${C[@]}" export ex --out "$T/ex.csv" 2>"$T/csv.err"
dl_eq "csv export exit" 0 $?
dl_grep "csv summary counts the run's values" "$T/csv.err" "^exported $N values of run ex as csv \([0-9]+ bytes\) to $T/ex.csv in "
dl_eq "csv: header + one line per value" $((N + 1)) "$(wc -l <"$T/ex.csv")"
"${C[@]}" export ex >"$T/stdout.csv" 2>/dev/null
dl_eq "csv on standard output" 0 $?
dl_true "csv on standard output: the same bytes as --out" cmp -s "$T/ex.csv" "$T/stdout.csv"
"${C[@]}" export ex --format jsonl --out "$T/ex.jsonl" 2>"$T/jsonl.err"
dl_eq "jsonl export exit" 0 $?
dl_eq "jsonl: one line per value" "$N" "$(wc -l <"$T/ex.jsonl")"
(cd "$T" && "${C[@]}" export ex --format npy 2>"$T/npy.err")
dl_eq "npy export exit" 0 $?
dl_grep "npy summary" "$T/npy.err" "^exported $N values of run ex as [0-9]+ arrays? \([0-9]+ bytes\) to export-ex in "
dl_true "npy: ./export-ex/index.json" [ -f "$T/export-ex/index.json" ]
dl_eq "no temporary left" "" "$(ls -d "$T"/*.tmp-* 2>/dev/null)"

# the recipes, checked against the base tables
/usr/bin/python3 tests/reference/data_out_check.py --doc docs/data-out.md --run ex --csv "$T/ex.csv" \
    --jsonl "$T/ex.jsonl" --npy "$T/export-ex" >"$T/check.out" 2>&1
rc=$?
sed 's/^/    | /' "$T/check.out"
dl_eq "data_out_check: recipes agree with the database" 0 "$rc"

# the check can fail: one stored value changed after the export
dl_sql "UPDATE measurements SET value = value + 0.5 WHERE (run_id, metric_id, layer, head, idx, step) =
    (SELECT m.run_id, m.metric_id, m.layer, m.head, m.idx, m.step FROM measurements m
     JOIN metrics mt ON mt.id = m.metric_id JOIN runs r ON r.id = m.run_id
     WHERE r.name = 'ex' AND mt.name = 'induction_score' AND m.step = 2 AND m.layer = 1 AND m.head = 0)" >"$T/upd.out"
/usr/bin/python3 tests/reference/data_out_check.py --doc docs/data-out.md --run ex --csv "$T/ex.csv" \
    --jsonl "$T/ex.jsonl" --npy "$T/export-ex" >"$T/check2.out" 2>&1
dl_eq "a changed value: the check fails" 1 $?
dl_grep "  ... naming the csv" "$T/check2.out" '^FAIL: csv: every value of the run'
dl_grep "  ... and the npy arrays" "$T/check2.out" '^FAIL: npy: every array holds the stored values.*heads\.induction_score\.npy\(2, 1, 0\)'

# filters select what SQL selects
count_csv() { "${C[@]}" export ex "$@" 2>/dev/null | tail -n +2 | wc -l; }
dl_eq "--metric induction_score" "$(dl_sql "SELECT count(*) FROM series WHERE run = 'ex' AND metric = 'induction_score'")" \
    "$(count_csv --metric induction_score)"
dl_eq "--metric loss.loss_by_pos --metric heads.induction_score" \
    "$(dl_sql "SELECT count(*) FROM series WHERE run = 'ex' AND (item, metric) IN (('loss', 'loss_by_pos'), ('heads', 'induction_score'))")" \
    "$(count_csv --metric loss.loss_by_pos --metric heads.induction_score)"
dl_eq "--item weights" "$(dl_sql "SELECT count(*) FROM series WHERE run = 'ex' AND item = 'weights'")" "$(count_csv --item weights)"
dl_eq "csv: the value column as SQL prints it (shortest exact)" \
    "$(dl_sql "SELECT string_agg(value::text, ' ' ORDER BY step) FROM series WHERE run = 'ex' AND item = 'loss' AND metric = 'loss'")" \
    "$("${C[@]}" export ex --metric loss.loss 2>/dev/null | awk -F, 'NR > 1 { printf "%s%s", (NR > 2 ? " " : ""), $9 }')"

# bad input: a clear error, nothing written
bad() { # DESC WANT_EXIT PATTERN ARGS...
    local d=$1 want=$2 pat=$3
    shift 3
    "${C[@]}" export "$@" >"$T/bad.out" 2>"$T/bad.err"
    dl_eq "$d: exit $want" "$want" $?
    dl_grep "$d: says why" "$T/bad.err" "$pat"
}
bad "unknown run" 1 "no run named 'nosuch'" nosuch --out "$T/none.csv"
bad "a metric the run lacks" 1 '--metric nosuch matches nothing in run ex .*it has: .*heads\.induction_score' \
    ex --metric nosuch --out "$T/none.csv"
bad "an item the run lacks" 1 '--item sae matches nothing in run ex' ex --item sae --format npy --out "$T/none.d"
bad "a metric outside --item" 1 '--metric loss matches nothing in run ex with --item' ex --item heads --metric loss --out "$T/none.csv"
bad "an unknown format" 2 "unknown format 'parquet'" ex --format parquet
bad "two runs" 2 "unexpected argument 'ex2'" ex ex2
bad "no run" 2 'need RUN' --format csv
mkdir -p "$T/full" && touch "$T/full/keep"
bad "an npy directory that is not empty" 1 'exists: the npy export writes a new directory' ex --format npy --out "$T/full"
dl_eq "nothing written by the failures" "keep" "$(ls "$T/full"; ls -d "$T"/none.* "$T"/*.tmp-* 2>/dev/null)"
dl_finish
