#!/bin/bash
# daemon_migrate.sh - `ckptd migrate` against a real PostgreSQL: from an
# empty database, a second run that applies nothing, two nodes migrating a
# fresh database at once, and a database newer than the binary (migrate,
# serve and add-run refuse, naming the version).  Also: serve refuses a
# database that was never migrated.
. tests/lib/daemon.sh
dl_init migrate 54341

nmig=$(ls schema/[0-9][0-9][0-9]_*.sql | wc -l)
latest=$(ls schema/[0-9][0-9][0-9]_*.sql | sed 's|.*/0*\([0-9]*\)_.*|\1|' | sort -n | tail -n 1)
dl_config "$T/cfg.json"

# serve on an empty database: refuses, says what to do
dl_serve S0 --config "$T/cfg.json" serve --until-idle --node S0
dl_wait_exit "$S0_PID" 30
dl_true "serve refuses an unmigrated database (exit $DL_STATUS)" [ "$DL_STATUS" -ne 0 ]
dl_grep "serve says to run ckptd migrate" "$T/S0.log" "run 'ckptd migrate'"

# from empty
out=$("$CKPTD" migrate 2>"$T/m1.err")
dl_eq "first migrate exit" 0 $?
dl_eq "first migrate applies all" "schema at version $latest ($nmig migration$([ "$nmig" = 1 ] || echo s) applied)" "$out"
dl_eq "schema_migrations rows" "$nmig" "$(dl_sql "SELECT count(*) FROM schema_migrations")"
dl_eq "schema_migrations latest" "$latest" "$(dl_sql "SELECT max(version) FROM schema_migrations")"
for rel in runs checkpoints jobs metrics measurements transitions artifacts series job_list run_progress; do
    dl_eq "relation $rel exists" t "$(dl_sql "SELECT to_regclass('$rel') IS NOT NULL")"
done
dl_eq "analyst role exists" 1 "$(dl_sql "SELECT count(*) FROM pg_roles WHERE rolname = 'ckptd_reader'")"

# twice: nothing to do
out=$("$CKPTD" migrate 2>"$T/m2.err")
dl_eq "second migrate exit" 0 $?
dl_eq "second migrate applies 0" "schema at version $latest (0 migrations applied)" "$out"
dl_eq "schema_migrations rows after second" "$nmig" "$(dl_sql "SELECT count(*) FROM schema_migrations")"

# two nodes migrating one fresh database at once take turns (advisory lock)
for i in 1 2 3 4 5; do
    dl_sql "CREATE DATABASE race$i" >/dev/null
    "$CKPTD" --db "dbname=race$i" migrate >"$T/race$i.a" 2>&1 &
    pa=$!
    "$CKPTD" --db "dbname=race$i" migrate >"$T/race$i.b" 2>&1 &
    pb=$!
    wait $pa
    ra=$?
    wait $pb
    rb=$?
    if [ $ra -ne 0 ] || [ $rb -ne 0 ]; then
        dl_fail "concurrent migrate $i: exit $ra and $rb"
        cat "$T/race$i.a" "$T/race$i.b" | grep error | head -n 2
    else
        applied=$(cat "$T/race$i.a" "$T/race$i.b" | sed -n 's/.*(\([0-9]*\) migrations* applied)/\1/p' |
                  awk '{ s += $1 } END { print s }')
        dl_eq "concurrent migrate $i: both exit 0, $nmig applied in all" "$nmig" "$applied"
    fi
    dl_eq "concurrent migrate $i: schema_migrations rows" "$nmig" \
        "$(psql -X -tAq -d "race$i" -c "SELECT count(*) FROM schema_migrations")"
done

# a database newer than this binary: everything refuses, naming the version
newer=$((latest + 5))
dl_sql "INSERT INTO schema_migrations (version, name) VALUES ($newer, 'from_the_future')" >/dev/null
out=$("$CKPTD" migrate 2>&1)
rc=$?
dl_true "migrate refuses a newer database (exit $rc)" [ "$rc" -ne 0 ]
case "$out" in
*"version $newer"*) dl_ok "migrate names version $newer" ;;
*) dl_fail "migrate message lacks 'version $newer': $out" ;;
esac
dl_eq "nothing applied or removed" "$((nmig + 1))" "$(dl_sql "SELECT count(*) FROM schema_migrations")"

dl_serve S1 --config "$T/cfg.json" serve --until-idle --node S1
dl_wait_exit "$S1_PID" 30
dl_true "serve refuses a newer database (exit $DL_STATUS)" [ "$DL_STATUS" -ne 0 ]
dl_grep "serve names version $newer" "$T/S1.log" "version $newer"

dl_ckpts 1
out=$("$CKPTD" --config "$T/cfg.json" add-run r --source "file://$T/ck" --schedule 0 --items loss 2>&1)
rc=$?
dl_true "add-run refuses a newer database (exit $rc)" [ "$rc" -ne 0 ]
case "$out" in
*"version $newer"*) dl_ok "add-run names version $newer" ;;
*) dl_fail "add-run message lacks 'version $newer': $out" ;;
esac
dl_eq "no run added" 0 "$(dl_sql "SELECT count(*) FROM runs")"

dl_finish
