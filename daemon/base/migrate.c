#include "daemon/base/migrate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/base/db.h"

#define MIGRATE_LOCK "74210001" /* pg_advisory_xact_lock key for migrations */

static int latest(void) { return migrations_count ? migrations[migrations_count - 1].version : 0; }

/* Highest recorded version, 0 for a fresh database, <0 on error. */
static int db_version(struct db *db, struct err *e)
{
    PGresult *r = db_exec(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL, e);
    if (!r)
        return ERR_DB;
    int v = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

int migrate_apply(struct db *db, int *applied, struct err *e)
{
    int n = 0;
    if (applied)
        *applied = 0;
    /* Under the lock too: two CREATE TABLE IF NOT EXISTS racing on a fresh
     * database fail with a duplicate key in pg_type. */
    if (db_run(db, "BEGIN", 0, NULL, e) < 0)
        return ERR_DB;
    if (db_run(db, "SET LOCAL statement_timeout = 0", 0, NULL, e) < 0 ||
        db_run(db, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")", 0, NULL, e) < 0 ||
        db_run(db, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                   " version int PRIMARY KEY, name text NOT NULL,"
                   " applied_at timestamptz NOT NULL DEFAULT now())", 0, NULL, e) < 0 ||
        db_run(db, "COMMIT", 0, NULL, e) < 0)
        goto fail;
    for (int i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations[i];
        if (db_run(db, "BEGIN", 0, NULL, e) < 0)
            return ERR_DB;
        /* a migration over a large table may take longer than the session's
         * statement_timeout: none inside it */
        int rc = db_run(db, "SET LOCAL statement_timeout = 0", 0, NULL, e);
        if (rc == 0)
            rc = db_run(db, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")", 0, NULL, e);
        int v = rc < 0 ? rc : db_version(db, e);
        if (v < 0)
            goto fail;
        if (v > latest()) {
            err_set(e, ERR_DB, "database",
                    "database schema is at version %d, newer than this ckptd knows (%d): "
                    "upgrade ckptd before using this database", v, latest());
            goto fail;
        }
        char ver[16];
        snprintf(ver, sizeof ver, "%d", m->version);
        const char *p[2] = {ver, m->name};
        PGresult *r = db_exec(db, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, p, e);
        if (!r)
            goto fail;
        int done = PQntuples(r) > 0;
        PQclear(r);
        if (done) {
            if (db_run(db, "COMMIT", 0, NULL, e) < 0)
                return ERR_DB;
            continue;
        }
        /* multi-statement text: simple query protocol */
        PGresult *x = PQexec(db_conn(db), m->sql);
        if (PQresultStatus(x) != PGRES_COMMAND_OK && PQresultStatus(x) != PGRES_TUPLES_OK) {
            err_set(e, ERR_DB, "database", "migration %03d_%s failed: %s", m->version, m->name,
                    PQresultErrorMessage(x));
            if (e)
                e->msg[strcspn(e->msg, "\n")] = '\0';
            PQclear(x);
            goto fail;
        }
        PQclear(x);
        if (db_run(db, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, p, e) < 0 ||
            db_run(db, "COMMIT", 0, NULL, e) < 0)
            goto fail;
        log_info("migration applied", "version=%d name=%s", m->version, m->name);
        n++;
    }
    if (applied)
        *applied = n;
    return 0;
fail:
    db_rollback(db);
    return ERR_DB;
}

int migrate_check(struct db *db, struct err *e)
{
    PGresult *r = db_exec(db, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL, e);
    if (!r)
        return ERR_DB;
    int exists = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    int v = exists ? db_version(db, e) : 0;
    if (v < 0)
        return v;
    if (v < latest())
        return err_set(e, ERR_DB, "database",
                       "database schema is at version %d, this ckptd needs %d: run 'ckptd migrate'",
                       v, latest());
    if (v > latest())
        return err_set(e, ERR_DB, "database",
                       "database schema is at version %d, newer than this ckptd knows (%d): "
                       "upgrade ckptd", v, latest());
    return 0;
}
