/*
 * test_node - daemon/ops/node.h, a daemon's row in `nodes`, on a real
 * PostgreSQL of its own (tests/lib/pg_fixture.h):
 *
 *   heartbeat  the first heartbeat inserts the row (identity, started_at =
 *              now - uptime, activity and stats as JSON); the next renews
 *              heartbeat_at, activity and stats and keeps started_at
 *   restart    the same name from another process takes the row over:
 *              new pid, a new started_at, stopped_at cleared
 *   stopped    node_stopped marks the stop and empties the activity, but
 *              only for the process that owns the row (a stale process's
 *              stop leaves its successor's row alone)
 *   bad input  activity that is not a JSON array is refused, the row as
 *              it was
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/ops/node.h"
#include "tests/lib/pg_fixture.h"

static struct db *db;

/* One value of the row of node n, as text ("" for NULL). */
static void field(const char *n, const char *expr, char *out, size_t size)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT %s FROM nodes WHERE node = $1", expr);
    const char *p[1] = {n};
    struct err e;
    PGresult *r = db_exec(db, sql, 1, p, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    if (PQntuples(r) != 1)
        fail_msg("%s: %d rows", sql, PQntuples(r));
    snprintf(out, size, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
    PQclear(r);
}

static double fnum(const char *n, const char *expr)
{
    char v[64];
    field(n, expr, v, sizeof v);
    return atof(v);
}

static void test_heartbeat_and_restart(void **state)
{
    (void)state;
    struct err e;
    struct node_info ni = {"gpu07", "gpu07.example", "9.9.9", 4242, 2, 10, 3600};
    const char *act = "[{\"phase\": \"analysing\", \"run\": \"r\", \"step\": 1000, \"pid\": 77}]";
    assert_int_equal(node_heartbeat(db, &ni, act, "{\"jobs_done\": 3}", &e), 0);
    char v[256];
    field("gpu07", "host || ' ' || pid || ' ' || version || ' ' || workers || ' ' || heartbeat_s", v, sizeof v);
    assert_string_equal(v, "gpu07.example 4242 9.9.9 2 10");
    /* started an hour ago, give or take the statement */
    double age = fnum("gpu07", "extract(epoch FROM now() - started_at)");
    assert_true(age > 3590 && age < 3610);
    field("gpu07", "activity->0->>'phase'", v, sizeof v);
    assert_string_equal(v, "analysing");
    field("gpu07", "stats->>'jobs_done'", v, sizeof v);
    assert_string_equal(v, "3");
    field("gpu07", "stopped_at", v, sizeof v);
    assert_string_equal(v, "");

    /* the same process renews: started_at stays, the rest follows */
    char started[64], started2[64];
    field("gpu07", "started_at", started, sizeof started);
    ni.uptime_s = 5; /* would move started_at if it were taken */
    assert_int_equal(node_heartbeat(db, &ni, "[]", "{\"jobs_done\": 4}", &e), 0);
    field("gpu07", "started_at", started2, sizeof started2);
    assert_string_equal(started, started2);
    field("gpu07", "jsonb_array_length(activity) || ' ' || (stats->>'jobs_done')", v, sizeof v);
    assert_string_equal(v, "0 4");

    /* another process under the same name takes the row over */
    struct node_info ni2 = {"gpu07", "gpu07.example", "9.9.10", 5151, 4, 5, 1};
    assert_int_equal(node_heartbeat(db, &ni2, "[]", "{}", &e), 0);
    field("gpu07", "pid || ' ' || version || ' ' || workers", v, sizeof v);
    assert_string_equal(v, "5151 9.9.10 4");
    age = fnum("gpu07", "extract(epoch FROM now() - started_at)");
    assert_true(age < 60);
    assert_int_equal(fnum("gpu07", "count(*)"), 1);
}

static void test_stopped(void **state)
{
    (void)state;
    struct err e;
    struct node_info ni = {"cpu1", "cpu1.example", "1", 100, 1, 2, 10};
    assert_int_equal(node_heartbeat(db, &ni, "[{\"phase\": \"fetching\"}]", "{}", &e), 0);
    /* a stale process of the same name (an older pid) changes nothing */
    assert_int_equal(node_stopped(db, "cpu1", 99, &e), 0);
    char v[128];
    field("cpu1", "coalesce(stopped_at::text, 'running') || ' ' || jsonb_array_length(activity)", v, sizeof v);
    assert_string_equal(v, "running 1");
    assert_int_equal(node_stopped(db, "cpu1", 100, &e), 0);
    field("cpu1", "(stopped_at IS NOT NULL) || ' ' || jsonb_array_length(activity)", v, sizeof v);
    assert_string_equal(v, "true 0");
    /* started again: no longer stopped */
    assert_int_equal(node_heartbeat(db, &ni, "[]", "{}", &e), 0);
    field("cpu1", "stopped_at IS NULL", v, sizeof v);
    assert_string_equal(v, "t");
    /* a node that never beat: nothing to stop, no row appears */
    assert_int_equal(node_stopped(db, "ghost", 1, &e), 0);
    PGresult *r = db_exec(db, "SELECT count(*) FROM nodes WHERE node = 'ghost'", 0, NULL, &e);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct err e;
    struct node_info ni = {"bad", "bad.example", "1", 7, 1, 2, 10};
    assert_int_equal(node_heartbeat(db, &ni, "[]", "{}", &e), 0);
    err_clear(&e);
    assert_int_equal(node_heartbeat(db, &ni, "{\"not\": \"an array\"}", "{}", &e), ERR_DB);
    assert_true(e.msg[0] != '\0');
    assert_int_equal(node_heartbeat(db, &ni, "[", "{}", &e), ERR_DB);
    char v[64];
    field("bad", "jsonb_array_length(activity)", v, sizeof v);
    assert_string_equal(v, "0");
    struct node_info zero = {"bad2", "h", "1", 7, 1, 0, 10}; /* heartbeat_s must be > 0 */
    assert_int_equal(node_heartbeat(db, &zero, "[]", "{}", &e), ERR_DB);
}

static int setup(void **state)
{
    (void)state;
    return (db = pg_fixture_start(1)) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    pg_fixture_stop(db);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heartbeat_and_restart),
        cmocka_unit_test(test_stopped),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
