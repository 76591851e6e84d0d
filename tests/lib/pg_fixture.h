/* pg_fixture.h - a real, throwaway PostgreSQL for a cmocka test of the
 * daemon (include after <cmocka.h>).
 *
 * pg_fixture_start() starts a server of the test's own with scripts/pg-local
 * in a fresh CKPTD_VAR (/tmp/ckpg-XXXXXX; unix socket only, so tests never
 * share a port), migrates it with the daemon's migrations (or not) and
 * returns a connected handle; pg_fixture_stop() frees it and destroys the
 * server.
 * The tests run from the repository root (scripts/pg-local).
 *
 *     static struct db *db;
 *     static int setup(void **s) { (void)s; return (db = pg_fixture_start(1)) ? 0 : -1; }
 *     static int teardown(void **s) { (void)s; pg_fixture_stop(db); return 0; }
 */
#ifndef CKPTD_TESTS_LIB_PG_FIXTURE_H
#define CKPTD_TESTS_LIB_PG_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/base/db.h"
#include "daemon/base/migrate.h"

static char pg_fixture_var[64];
static char pg_fixture_conninfo[1200];

/* The output of a pg-local command of this test's server, first line. */
static int pg_fixture_cmd(const char *args, char *out, size_t n)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "CKPTD_VAR='%s' scripts/pg-local %s 2>>'%s/pg-local.err'", pg_fixture_var, args,
             pg_fixture_var);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[1100] = "";
    if (out && fgets(line, sizeof line, p))
        line[strcspn(line, "\n")] = '\0';
    while (fgetc(p) != EOF)
        ;
    int rc = pclose(p);
    if (out)
        snprintf(out, n, "%s", line);
    return rc == 0 ? 0 : -1;
}

/* The conninfo of the server pg_fixture_start made (valid after it). */
static inline const char *pg_fixture_conn(void) { return pg_fixture_conninfo; }

/* A database on a server of this test's own, migrated when `migrated`;
 * NULL (after saying why on stderr) when it cannot be had. */
static inline struct db *pg_fixture_start(int migrated)
{
    struct err e;
    snprintf(pg_fixture_var, sizeof pg_fixture_var, "/tmp/ckpg-XXXXXX");
    if (!mkdtemp(pg_fixture_var))
        return NULL;
    chmod(pg_fixture_var, 0755);
    char sock[1024];
    setenv("PGLOCAL_PORT", "5432", 1);
    unsetenv("PGLOCAL_TCP");
    if (pg_fixture_cmd("start", NULL, 0) < 0 || pg_fixture_cmd("where socket", sock, sizeof sock) < 0) {
        fprintf(stderr, "pg-local start failed (see %s/pg-local.err)\n", pg_fixture_var);
        return NULL;
    }
    snprintf(pg_fixture_conninfo, sizeof pg_fixture_conninfo, "host=%s port=5432 user=ckptd dbname=ckptd", sock);
    struct db *db = db_new(pg_fixture_conninfo);
    int applied = 0;
    err_clear(&e);
    if (!db || db_connect_wait(db, 20, &e) < 0 || (migrated && migrate_apply(db, &applied, &e) < 0)) {
        fprintf(stderr, "test database: %s\n", err_str(&e));
        db_free(db);
        return NULL;
    }
    return db;
}

/* One value (the first column of the first row; -999 for NULL) of a
 * query on db; fails the test on an error. */
static inline long long pg_num(struct db *db, const char *sql)
{
    struct err e;
    PGresult *r = db_exec(db, sql, 0, NULL, &e);
    if (!r)
        fail_msg("%s: %s", sql, err_str(&e));
    if (PQntuples(r) < 1)
        fail_msg("%s: no row", sql);
    long long v = PQgetisnull(r, 0, 0) ? -999 : atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Run a statement on db; fails the test on an error. */
static inline void pg_run(struct db *db, const char *sql)
{
    struct err e;
    if (db_run(db, sql, 0, NULL, &e) < 0)
        fail_msg("%s: %s", sql, err_str(&e));
}

/* Free db and destroy the server with everything it wrote. */
static inline void pg_fixture_stop(struct db *db)
{
    db_free(db);
    if (!pg_fixture_var[0])
        return;
    pg_fixture_cmd("destroy", NULL, 0);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", pg_fixture_var);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", pg_fixture_var);
    pg_fixture_var[0] = '\0';
}

#endif
