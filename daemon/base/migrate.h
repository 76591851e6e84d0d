/*
 * migrate.h - the numbered schema migrations (schema/NNN_name.sql), compiled
 * into ckptd, and applying them.
 *
 * Applied migrations are recorded in schema_migrations(version, name,
 * applied_at).  migrate_apply() takes an advisory lock (so two nodes
 * migrating at once take turns), refuses a database that records a version
 * newer than this binary knows, and applies each missing migration in its
 * own transaction together with its record.  Re-running is a no-op.
 *
 *     int applied;
 *     if (migrate_apply(db, &applied, &e) < 0) ...   // "database is at version 7, ..."
 */
#ifndef CKPTD_MIGRATE_H
#define CKPTD_MIGRATE_H

#include "common/err.h"

struct migration {
    int version;
    const char *name;
    const char *sql;
};

/* From the generated build/gen/schema_sql.c, in version order. */
extern const struct migration migrations[];
extern const int migrations_count;

struct db;

/* Apply what is missing; *applied (may be NULL) gets how many were. */
int migrate_apply(struct db *db, int *applied, struct err *e) CK_WUR;

/* 0 when the database is at exactly this binary's latest version; ERR_DB
 * with a message telling what to do otherwise ("run ckptd migrate"). */
int migrate_check(struct db *db, struct err *e) CK_WUR;

#endif
