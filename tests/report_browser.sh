#!/bin/bash
# report_browser.sh - `ckptd report` rendered by a real headless browser
# (Debian's chromium).  A synthetic Pythia-like run (tests/lib/report_data.sql:
# 154 log-spaced steps, a duplicate checkpoint, a scalar with a drop, one at
# an idx, a per-position series, two per-head series on 6 layers x 8 heads,
# the logit lens per layer, a NaN, three transitions) and SAE lineages go
# into a throwaway PostgreSQL; the page is written, screenshotted and its
# DOM dumped; tests/lib/report_check.py compares every chart with SQL (see
# its header).  Also: the same page twice is byte-identical, the default
# directory, an empty run, an unknown run, an output path that cannot be a
# directory, the caps (rows, idx values, cells), a database without the
# lineage table and one whose table has another shape.
. tests/lib/daemon.sh
dl_init report 54380
dl_migrate

CHROME=$(command -v chromium || true)
if [ -z "$CHROME" ]; then
    dl_fail "chromium missing: scripts/install-deps installs it"
    dl_finish
fi
# chromium --headless with its profile in $T (so cleanup finds it) and a deadline
chrome() {
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --user-data-dir="$T/chrome" "$@" 2>>"$T/chrome.log"
}

RUN=synth-70m
if ! psql -X -q -v ON_ERROR_STOP=1 -v run="$RUN" -f tests/lib/report_data.sql >"$T/data.out" 2>&1; then
    dl_fail "loading tests/lib/report_data.sql"
    cat "$T/data.out"
    dl_finish
fi

# SAE lineages, into the table of schema/005_sae.sql
# layer 2: 30 lineages, layer 3: 250 (over the cap of 200); every third alive
out=$(dl_sql "WITH st AS (SELECT step, row_number() OVER (ORDER BY step) - 1 AS k FROM checkpoints c
              JOIN runs r ON r.id = c.run_id WHERE r.name = '$RUN' AND c.duplicate_of IS NULL),
         l AS (SELECT layer, i, (i * 13) % 120 AS b, CASE WHEN i % 3 = 0 THEN NULL ELSE (i * 13) % 120 + 5 + (i * 7) % 30 END AS d
               FROM (VALUES (2, 30), (3, 250)) v(layer, n), generate_series(0, n - 1) i)
     INSERT INTO feature_lineages (run_id, layer, lineage, root_step, root_feature, birth_step, death_step,
                                   last_step, length, splits, last_feature)
     SELECT r.id, l.layer, l.i, sb.step, l.i, sb.step, sd.step, coalesce(sd.step, (SELECT max(step) FROM st)),
            coalesce(l.d, 152) - l.b + 1, CASE WHEN l.i % 4 = 0 THEN 1 ELSE 0 END, l.i
     FROM l JOIN st sb ON sb.k = l.b LEFT JOIN st sd ON sd.k = l.d, runs r WHERE r.name = '$RUN'")
dl_eq "lineages inserted" "" "$(echo "$out" | grep -i error)"

# ---- the page ----
t0=$(date +%s%N)
out=$("$CKPTD" report "$RUN" --out "$T/out" 2>"$T/report.err")
rc=$?
t1=$(date +%s%N)
dl_eq "report exit" 0 "$rc"
[ "$rc" = 0 ] || cat "$T/report.err"
echo "# $out"
dl_true "index.html written" [ -s "$T/out/index.html" ]
dl_eq "nothing else left in the directory" "index.html" "$(ls -A "$T/out" | tr '\n' ' ' | sed 's/ $//')"
bytes=$(stat -c %s "$T/out/index.html")
dl_true "page size reasonable ($bytes bytes < 4 MB)" [ "$bytes" -lt 4000000 ]

W=1280 H=2400
t2=$(date +%s%N)
chrome --window-size=$W,$H --screenshot="$T/shot.png" "file://$T/out/index.html" >"$T/shot.out"
t3=$(date +%s%N)
dl_true "screenshot written" [ -s "$T/shot.png" ]
chrome --dump-dom "file://$T/out/index.html" >"$T/dom.html"
dl_true "DOM dumped" [ -s "$T/dom.html" ]
echo "# report: $(((t1 - t0) / 1000000)) ms to write $bytes bytes; chromium screenshot: $(((t3 - t2) / 1000000)) ms"

python3 tests/lib/report_check.py "$RUN" "$T/dom.html" "$T/shot.png" "$W" "$H" >"$T/check.out" 2>&1
crc=$?
while IFS= read -r line; do
    case $line in
    ok:*) dl_ok "${line#ok: }" ;;
    FAIL:*) dl_fail "${line#FAIL: }" ;;
    *) echo "$line" ;;
    esac
done <"$T/check.out"
if [ "$crc" -gt 1 ] || ! tail -n 1 "$T/check.out" | grep -q '^# report_check: '; then
    dl_fail "report_check.py stopped before its end (exit $crc)"
fi

# the same snapshot gives the same bytes
"$CKPTD" report "$RUN" --out "$T/out2" >/dev/null 2>"$T/report2.err"
dl_true "a second page of the same data is byte-identical" cmp -s "$T/out/index.html" "$T/out2/index.html"

# default directory, from a name with a slash; an empty run says so
dl_sql "INSERT INTO runs (name, source, schedule, items) VALUES ('org/empty', 'file:///nowhere', '0,1,2', '{loss}');
        INSERT INTO checkpoints (run_id, step, revision, url)
        SELECT id, s, 'step' || s, 'file:///nowhere' FROM runs, generate_series(0, 2) s WHERE name = 'org/empty'" >/dev/null
mkdir -p "$T/cwd"
out=$(cd "$T/cwd" && "$CKPTD" report org/empty 2>"$T/empty.err")
dl_eq "empty run: exit" 0 $?
dl_grep "empty run: says so on stdout" <(echo "$out") "no data yet"
dl_true "empty run: default directory ./report-org_empty" [ -s "$T/cwd/report-org_empty/index.html" ]
chrome --dump-dom "file://$T/cwd/report-org_empty/index.html" >"$T/empty.html"
dl_grep "empty run: the rendered page says there is no data yet" "$T/empty.html" '<p class="empty">No data yet'
dl_eq "empty run: no chart" 0 "$(grep -c '<figure' "$T/empty.html")"

# an unknown run: exit 1, a message, nothing written
echo "old page" >"$T/out/keep.txt"
cp "$T/out/index.html" "$T/before.html"
out=$("$CKPTD" report nope --out "$T/out" 2>&1)
dl_eq "unknown run: exit" 1 $?
dl_grep "unknown run: names it" <(echo "$out") "no run named 'nope'"
dl_true "unknown run: the old page is untouched" cmp -s "$T/out/index.html" "$T/before.html"
"$CKPTD" report nope --out "$T/nope" >/dev/null 2>&1
dl_true "unknown run: no directory made" [ ! -e "$T/nope" ]
# an output path that is a file
echo x >"$T/afile"
out=$("$CKPTD" report "$RUN" --out "$T/afile" 2>&1)
dl_eq "--out at a file: exit" 1 $?
dl_grep "--out at a file: says why" <(echo "$out") "afile"
"$CKPTD" report >/dev/null 2>&1
dl_eq "no RUN: usage error" 2 $?

# the caps: 64 rows of a heatmap (those that change most), 2 idx values of a
# per-head metric, the page's heatmap-cell budget
dl_sql "INSERT INTO runs (name, source, schedule, items) VALUES ('caps', 'file:///nowhere', 'pythia', '{heads}');
        INSERT INTO checkpoints (run_id, step, revision, url)
        SELECT r.id, c.step, c.revision, c.url FROM runs r, checkpoints c JOIN runs o ON o.id = c.run_id
        WHERE r.name = 'caps' AND o.name = '$RUN';
        INSERT INTO metrics (item, version, name) SELECT 'caps', 1, n
        FROM unnest(ARRAY['broad', 'many_idx', 'fill1', 'fill2', 'fill3', 'fill4', 'fill5']) n;
        -- broad: 12 x 8 heads; L11 H7, L5 H3 and L0 H0 change most
        INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
        SELECT r.id, c.step, m.id, l, h, -1,
               CASE WHEN (l, h) IN ((11, 7), (5, 3), (0, 0)) THEN c.step / 1000.0 ELSE (l * 8 + h + c.step % 7) / 1000.0 END
        FROM runs r JOIN checkpoints c ON c.run_id = r.id, metrics m, generate_series(0, 11) l, generate_series(0, 7) h
        WHERE r.name = 'caps' AND m.item = 'caps' AND m.name = 'broad';
        -- many_idx and fill1..5: 8 x 8 heads at idx 0..4 (2 heatmaps each)
        INSERT INTO measurements (run_id, step, metric_id, layer, head, idx, value)
        SELECT r.id, c.step, m.id, l, h, i, (l + h + i) * 0.01 + c.step * 1e-6
        FROM runs r JOIN checkpoints c ON c.run_id = r.id, metrics m, generate_series(0, 7) l,
             generate_series(0, 7) h, generate_series(0, 4) i
        WHERE r.name = 'caps' AND m.item = 'caps' AND m.name <> 'broad'" >/dev/null
out=$("$CKPTD" report caps --out "$T/caps" 2>&1)
dl_eq "caps: exit" 0 $?
echo "# $out"
python3 - "$T/caps/index.html" >"$T/caps.out" 2>&1 <<'PY'
import re, sys
page = open(sys.argv[1], encoding="utf-8").read()
blocks = {re.search(r'data-metric="([^"]*)"', b).group(1): b for b in page.split('<div class="metric')[1:]}
def ok(c, d): print(("ok: " if c else "FAIL: ") + d)
wide = blocks["broad"]
rows = re.findall(r'<g class="row" data-layer="(\d+)" data-head="(\d+)"', wide)
ok(len(rows) == 64, "caps: broad draws 64 rows (%d)" % len(rows))
ok({("11", "7"), ("5", "3"), ("0", "0")} <= set(rows), "caps: the rows that change most are among them")
ok("64 of 96 rows drawn" in wide, "caps: the row cap is stated")
ok(rows == sorted(rows, key=lambda r: (int(r[0]), int(r[1]))), "caps: rows in layer, head order")
m = blocks["many_idx"]
ok(re.findall(r'<figure class="chart heat" data-idx="(\d+)"', m) == ["0", "1"], "caps: heatmaps of idx 0 and 1")
ok("first 2 of 5 idx values" in m, "caps: the idx cap is stated")
cells = len(re.findall(r'<rect[^>]* data-step=', page))
ok(cells <= 100000, "caps: %d heatmap cells, within the budget of 100000" % cells)
ok(page.count("Not drawn:") >= 1 and "budget of 100000 heatmap cells" in page, "caps: heatmaps past the budget say so")
PY
while IFS= read -r line; do
    case $line in
    ok:*) dl_ok "${line#ok: }" ;;
    FAIL:*) dl_fail "${line#FAIL: }" ;;
    *) dl_fail "caps check: $line" ;;
    esac
done <"$T/caps.out"

# a database without feature_lineages: the section says so, the rest is drawn
dl_sql "CREATE DATABASE nolin" >/dev/null
"$CKPTD" --db dbname=nolin migrate >/dev/null 2>&1
psql -X -q -d nolin -c "DROP TABLE IF EXISTS feature_lineages CASCADE" >/dev/null 2>&1
psql -X -q -d nolin -v ON_ERROR_STOP=1 -v run=nolin -f tests/lib/report_data.sql >/dev/null 2>&1
out=$("$CKPTD" --db dbname=nolin report nolin --out "$T/nolin" 2>&1)
dl_eq "no lineage table: exit" 0 $?
dl_grep "no lineage table: the page says so" "$T/nolin/index.html" 'no <code>feature_lineages</code> table'
dl_grep "no lineage table: the other charts are there" "$T/nolin/index.html" 'data-metric="induction_score"'
# a lineage table of another shape: a note naming the problem, the rest drawn
psql -X -q -d nolin -c "CREATE TABLE feature_lineages (run_id bigint, layer int, born bigint)" >/dev/null 2>&1
out=$("$CKPTD" --db dbname=nolin report nolin --out "$T/nolin2" 2>&1)
dl_eq "lineage table of another shape: exit" 0 $?
dl_grep "lineage table of another shape: the page names the problem" "$T/nolin2/index.html" \
    'Cannot read <code>feature_lineages</code>: ERROR: +column &quot;[a-z_]+&quot; does not exist'
dl_grep "lineage table of another shape: the other charts are there" "$T/nolin2/index.html" 'data-metric="lens_loss"'

dl_finish
