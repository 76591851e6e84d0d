/*
 * test_daemon_fault_alloc - the daemon's ingest path under allocation
 * failure, SQLite-style (tests/lib/failalloc.h), against a real
 * PostgreSQL.
 *
 * Swept, each allocation N failing once and from N on, until a run no
 * longer reaches N:
 *   - registry_parse of the worker's battery JSON;
 *   - ingest_commit of a worker's rows and of an item's artifact files
 *     (hashed and recorded with the rows).
 * (queue_claim makes no allocation of its own: only libpq's.)
 * Every run must succeed, or fail with ERR_NOMEM and a message, leaving
 * nothing behind: after a failed ingest no measurement and no artifact is
 * stored, the jobs are still running under our lease, the connection is
 * usable; and the same ingest once memory is back stores the rows exactly
 * once.  No run leaks (failalloc_live;
 * LeakSanitizer under SANITIZE=address).  libpq's own allocations are
 * outside the sweep (failalloc.h).
 *
 * Needs a migrated, otherwise empty database named by CKPTD_TEST_DB;
 * tests/daemon_fault_alloc.sh provides one.  Without it the program says
 * so and passes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/source.h"
#include "daemon/store/ingest.h"
#include "daemon/work/queue.h"
#include "tests/lib/failalloc.h"

static const char battery_json[] =
    "{\"items\": ["
    " {\"name\": \"loss\", \"version\": 1, \"metrics\": [{\"name\": \"loss\"}, {\"name\": \"loss_by_pos\"}]},"
    " {\"name\": \"weights\", \"version\": 1, \"metrics\": [{\"name\": \"frobenius_norm\"}]},"
    " {\"name\": \"sae\", \"version\": 1, \"needs\": [\"artifacts\"], \"metrics\": [{\"name\": \"fvu\"}]}"
    "]}";
static const struct queue_item items[3] = {{"loss", 1}, {"weights", 1}, {"sae", 1}};
static const char rows[] = "loss\t1\tloss\t-1\t-1\t-1\t2.5\n"
                           "loss\t1\tloss_by_pos\t-1\t-1\t0\t3.5\n"
                           "weights\t1\tfrobenius_norm\t0\t-1\t0\t1.5\n"
                           "sae\t1\tfvu\t0\t-1\t0\t0.25\n";

static const char *conninfo;
static struct db *db;
static struct registry reg;
static char tmpdir[64], rows_path[128];

static long long sql_num(const char *sql)
{
    struct err e;
    PGresult *r = db_exec(db, sql, 0, NULL, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void sql_do(const char *sql)
{
    struct err e;
    if (db_run(db, sql, 0, NULL, &e) < 0)
        fail_msg("%s: %s", sql, err_str(&e));
}

/* An empty queue holding one checkpoint of the three items. */
static void fresh_run(void)
{
    sql_do("TRUNCATE runs, checkpoints, jobs, measurements, transitions, artifacts, "
           "checkpoint_files, fetches CASCADE");
    long long steps[1] = {8};
    long nc = 0, nj = 0;
    struct err e;
    if (queue_add_run(db, "fa", "file:///nonexistent/step{step}", "8", steps, 1, items, 3, "{}", 5,
                      &nc, &nj, &e) < 0)
        fail_msg("add run: %s", err_str(&e));
}

/* The outcome of one run: ok or ERR_NOMEM with its message, nothing
 * leaked. */
static void check_outcome(const char *what, long n, int persist, int rc, const struct err *e,
                          long long live)
{
    if (rc != 0 && rc != ERR_NOMEM)
        fail_msg("%s, allocation %ld failing%s: code %s, expected ok or nomem: %s", what, n,
                 persist ? " and after" : "", err_code_name(rc), err_str(e));
    if (rc == ERR_NOMEM && (e->code != rc || !e->msg[0]))
        fail_msg("%s, allocation %ld failing: ERR_NOMEM without its message", what, n);
    if (failalloc_live() != live)
        fail_msg("%s, allocation %ld failing%s: %lld bytes leaked", what, n,
                 persist ? " and after" : "", failalloc_live() - live);
}

static void test_registry(void **state)
{
    (void)state;
    long runs = 0, total[2];
    for (int persist = 0; persist < 2; persist++) {
        struct registry r;
        failalloc_arm(0, persist);
        assert_int_equal(registry_parse(&r, battery_json, NULL), 0);
        registry_free(&r);
        total[persist] = failalloc_count();
        for (long n = 1; n <= total[persist]; n++, runs++) {
            struct err e;
            err_clear(&e);
            long long live = failalloc_live();
            failalloc_arm(n, persist);
            int rc = registry_parse(&r, battery_json, &e);
            assert_true(failalloc_disarm());
            if (rc == 0)
                registry_free(&r);
            check_outcome("registry_parse", n, persist, rc, &e, live);
        }
    }
    printf("[ fault ] registry_parse   %4ld allocations (%ld with jansson's), %4ld failing runs\n",
           total[0], total[1], runs);
}

/* A fresh claim whose worker "finished": its rows and the sae item's
 * artifact files on disk. */
static void claimed(struct claim *c)
{
    struct err e;
    fresh_run();
    assert_int_equal(queue_claim(db, "n1", 60, c, &e), 1);
    assert_int_equal(c->njobs, 3);
    snprintf(c->artifact_dir, sizeof c->artifact_dir, "%s/art", tmpdir);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/art/fa/step8/sae/blocks.0 && printf 'dictionary' > %s/art/fa/step8/sae/blocks.0/w"
             " && printf '{}' > %s/art/fa/step8/sae/blocks.0/cfg.json",
             tmpdir, tmpdir, tmpdir);
    assert_int_equal(system(cmd), 0);
}

static void test_ingest(void **state)
{
    (void)state;
    FILE *f = fopen(rows_path, "w");
    assert_non_null(f);
    fputs(rows, f);
    fclose(f);
    long runs = 0, total[2];
    /* twice unarmed first: the connection's table of prepared statements
     * (db.c) has seen every text of the path twice, and later runs make
     * the same allocations */
    for (int warm = 0; warm < 2; warm++) {
        struct claim c;
        struct err e;
        long nrows = 0;
        claimed(&c);
        if (ingest_commit(db, &reg, "n1", &c, rows_path, 1.0, &nrows, &e) != 0)
            fail_msg("clean ingest: %s", err_str(&e));
    }
    for (int persist = 0; persist < 2; persist++) {
        struct claim c;
        struct err e;
        long nrows = 0;
        claimed(&c);
        failalloc_arm(0, persist);
        if (ingest_commit(db, &reg, "n1", &c, rows_path, 1.0, &nrows, &e) != 0)
            fail_msg("clean ingest: %s", err_str(&e));
        total[persist] = failalloc_count();
        for (long n = 1; n <= total[persist]; n++, runs++) {
            claimed(&c);
            err_clear(&e);
            long long live = failalloc_live();
            failalloc_arm(n, persist);
            int rc = ingest_commit(db, &reg, "n1", &c, rows_path, 1.0, &nrows, &e);
            assert_true(failalloc_disarm());
            check_outcome("ingest_commit", n, persist, rc, &e, live);
            if (rc < 0) {
                /* nothing stored, the jobs still ours, the connection usable */
                assert_int_equal(nrows, 0);
                assert_non_null(db_conn(db));
                assert_int_equal(sql_num("SELECT count(*) FROM measurements"), 0);
                assert_int_equal(sql_num("SELECT count(*) FROM artifacts"), 0);
                assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'running' AND "
                                         "lease_owner = 'n1' AND lease_expires > now()"), 3);
                /* memory back: the same results go in, once */
                if (ingest_commit(db, &reg, "n1", &c, rows_path, 1.0, &nrows, &e) != 0)
                    fail_msg("ingest after allocation %ld failed: %s", n, err_str(&e));
            }
            assert_int_equal(nrows, 4);
            assert_int_equal(sql_num("SELECT count(*) FROM measurements"), 4);
            assert_int_equal(sql_num("SELECT count(*) FROM artifacts"), 2);
            assert_int_equal(sql_num("SELECT count(*) FROM jobs WHERE state = 'done'"), 3);
        }
    }
    printf("[ fault ] ingest_commit    %4ld allocations (%ld with jansson's), %4ld failing runs\n",
           total[0], total[1], runs);
}

static int setup(void **state)
{
    (void)state;
    struct err e;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ckptd-dfa-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(rows_path, sizeof rows_path, "%s/rows", tmpdir);
    db = db_new(conninfo);
    if (!db || db_connect_wait(db, 10, &e) < 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", conninfo, err_str(&e));
        return -1;
    }
    if (registry_parse(&reg, battery_json, &e) < 0 || registry_sync(&reg, db, &e) < 0) {
        fprintf(stderr, "registry: %s\n", err_str(&e));
        return -1;
    }
    failalloc_jansson();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    registry_free(&reg);
    db_free(db);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    conninfo = getenv("CKPTD_TEST_DB");
    if (!conninfo || !*conninfo) {
        printf("test_daemon_fault_alloc: skipped (needs CKPTD_TEST_DB; tests/daemon_fault_alloc.sh sets it)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_ingest),
    };
    return cmocka_run_group_tests_name("daemon_fault_alloc", tests, setup, teardown);
}
