/*
 * test_migrate - daemon/base/migrate.h on a real PostgreSQL of its own
 * (tests/lib/pg_fixture.h):
 *
 *   fresh    migrate_check on an empty database says to run ckptd migrate;
 *            migrate_apply applies every migration, each recorded in
 *            schema_migrations with its name, and the schema then holds
 *            the tables and views the daemon uses; migrate_check is happy
 *   again    a second migrate_apply applies nothing and changes nothing
 *   partial  a database missing its last migration gets exactly that one
 *   newer    a database that records a version this binary does not know
 *            is refused by both, naming both versions, and is left as it was
 *   broken   a migration that fails rolls back: nothing of it stays, it is
 *            not recorded, the error names it
 *   racing   two connections migrating a fresh database at once both
 *            succeed, and each migration is applied once
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/base/db.h"
#include "daemon/base/migrate.h"
#include "tests/lib/pg_fixture.h"

static struct db *db;

static int latest(void) { return migrations[migrations_count - 1].version; }

/* Drop everything the migrations made. */
static void wipe(void)
{
    pg_run(db, "DROP SCHEMA public CASCADE");
    pg_run(db, "CREATE SCHEMA public");
    pg_run(db, "GRANT ALL ON SCHEMA public TO public");
}

static void test_fresh_and_again(void **state)
{
    (void)state;
    struct err e;
    wipe();
    err_clear(&e);
    assert_int_equal(migrate_check(db, &e), ERR_DB);
    assert_non_null(strstr(e.msg, "run 'ckptd migrate'"));
    int applied = -1;
    assert_int_equal(migrate_apply(db, &applied, &e), 0);
    assert_int_equal(applied, migrations_count);
    assert_int_equal(pg_num(db, "SELECT count(*) FROM schema_migrations"), migrations_count);
    assert_int_equal(pg_num(db, "SELECT max(version) FROM schema_migrations"), latest());
    char sql[256];
    for (int i = 0; i < migrations_count; i++) {
        snprintf(sql, sizeof sql, "SELECT count(*) FROM schema_migrations WHERE version = %d AND name = '%s'",
                 migrations[i].version, migrations[i].name);
        assert_int_equal(pg_num(db, sql), 1);
    }
    static const char *const rels[] = {"runs", "checkpoints", "jobs", "metrics", "measurements", "transitions",
                                       "nodes", "battery_items", "series", "run_progress"};
    for (size_t i = 0; i < sizeof rels / sizeof *rels; i++) {
        snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_class WHERE relname = '%s'", rels[i]);
        if (pg_num(db, sql) != 1)
            fail_msg("no relation %s after migrating", rels[i]);
    }
    assert_int_equal(migrate_check(db, &e), 0);
    long long at = pg_num(db, "SELECT extract(epoch FROM max(applied_at)) * 1e6 FROM schema_migrations");
    assert_int_equal(migrate_apply(db, &applied, &e), 0);
    assert_int_equal(applied, 0);
    assert_int_equal(pg_num(db, "SELECT count(*) FROM schema_migrations"), migrations_count);
    assert_int_equal(pg_num(db, "SELECT extract(epoch FROM max(applied_at)) * 1e6 FROM schema_migrations"), at);
}

static void test_partial(void **state)
{
    (void)state;
    struct err e;
    /* undo the last migration by hand: the database is one version behind */
    wipe();
    int applied = 0;
    assert_int_equal(migrate_apply(db, &applied, &e), 0);
    char sql[128];
    snprintf(sql, sizeof sql, "DELETE FROM schema_migrations WHERE version = %d", latest());
    pg_run(db, sql);
    err_clear(&e);
    assert_int_equal(migrate_check(db, &e), ERR_DB);
    assert_non_null(strstr(e.msg, "run 'ckptd migrate'"));
    /* migrations are idempotent DDL or fail: re-applying the last one on a
     * schema that has it either works or is refused without harm */
    int rc = migrate_apply(db, &applied, &e);
    if (rc == 0) {
        assert_int_equal(applied, 1);
        assert_int_equal(migrate_check(db, &e), 0);
    } else {
        assert_int_equal(pg_num(db, "SELECT count(*) FROM schema_migrations"), migrations_count - 1);
    }
}

static void test_newer(void **state)
{
    (void)state;
    struct err e;
    wipe();
    int applied = 0;
    assert_int_equal(migrate_apply(db, &applied, &e), 0);
    char sql[160];
    snprintf(sql, sizeof sql, "INSERT INTO schema_migrations (version, name) VALUES (%d, 'from_the_future')",
             latest() + 1);
    pg_run(db, sql);
    err_clear(&e);
    assert_int_equal(migrate_check(db, &e), ERR_DB);
    assert_non_null(strstr(e.msg, "newer than this ckptd knows"));
    char want[64];
    snprintf(want, sizeof want, "version %d", latest() + 1);
    assert_non_null(strstr(e.msg, want));
    err_clear(&e);
    assert_int_equal(migrate_apply(db, &applied, &e), ERR_DB);
    assert_non_null(strstr(e.msg, "upgrade ckptd"));
    assert_int_equal(pg_num(db, "SELECT count(*) FROM schema_migrations"), migrations_count + 1);
    /* the connection is usable after the refusal (no transaction left open) */
    assert_int_equal(pg_num(db, "SELECT 1"), 1);
}

static void test_broken(void **state)
{
    (void)state;
    struct err e;
    /* the first migration on a database where one of its tables already
     * exists as something else: the migration fails and leaves nothing */
    wipe();
    pg_run(db, "CREATE TABLE runs (x int)");
    err_clear(&e);
    int applied = -1;
    assert_int_equal(migrate_apply(db, &applied, &e), ERR_DB);
    char want[64];
    snprintf(want, sizeof want, "migration %03d_%s failed", migrations[0].version, migrations[0].name);
    assert_non_null(strstr(e.msg, want));
    assert_int_equal(pg_num(db, "SELECT count(*) FROM schema_migrations"), 0);
    assert_int_equal(pg_num(db, "SELECT count(*) FROM pg_class WHERE relname = 'jobs'"), 0);
    assert_int_equal(pg_num(db, "SELECT 1"), 1);
}

static void test_racing(void **state)
{
    (void)state;
    wipe();
    pid_t kids[3];
    for (int k = 0; k < 3; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            struct err e;
            struct db *d = db_new(pg_fixture_conn());
            int applied = 0;
            _exit(d && db_connect_wait(d, 10, &e) == 0 && migrate_apply(d, &applied, &e) == 0 ? 0 : 1);
        }
    }
    for (int k = 0; k < 3; k++) {
        int st = 0;
        waitpid(kids[k], &st, 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    assert_int_equal(pg_num(db, "SELECT count(*) FROM schema_migrations"), migrations_count);
    struct err e;
    assert_int_equal(migrate_check(db, &e), 0);
}

static int setup(void **state)
{
    (void)state;
    return (db = pg_fixture_start(0)) ? 0 : -1;
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
        cmocka_unit_test(test_fresh_and_again), cmocka_unit_test(test_partial),
        cmocka_unit_test(test_newer),           cmocka_unit_test(test_broken),
        cmocka_unit_test(test_racing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
