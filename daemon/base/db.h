/*
 * db.h - the daemon's PostgreSQL connection: connect, run a statement, and
 * come back after the server goes away.
 *
 * Connection parameters are a libpq conninfo string (or URI); empty means
 * libpq's own environment (PGHOST, PGPORT, PGUSER, PGDATABASE, ...).  A lost
 * connection is noticed by any call (PQstatus is CONNECTION_BAD after a
 * failed statement); db_ensure() then reconnects with exponential backoff
 * (1 s doubling to 30 s, or less: db_set_backoff_max), never blocking longer
 * than one connect attempt, so the scheduler's tick keeps supervising
 * workers while the database is down.
 *
 * A network that goes dead is noticed too: unless the conninfo says
 * otherwise, connections use TCP keepalives and a TCP user timeout on both
 * ends (about 15 s to notice; 10 s connect timeout), so no statement waits
 * for the kernel's retransmissions and the server ends the session, and
 * its transaction, of a node cut off (db.c lists the settings).
 *
 *     struct db *db = db_new(conninfo);
 *     if (db_ensure(db, &e) == 0) {
 *         PGresult *r = db_exec(db, "SELECT 1", 0, NULL, &e);
 *         ...
 *         PQclear(r);
 *     }
 *     db_free(db);
 */
#ifndef CKPTD_DB_H
#define CKPTD_DB_H

#include <libpq-fe.h>

#include "common/err.h"

struct db;

/* A handle, not yet connected. conninfo is copied. NULL on out of memory. */
struct db *db_new(const char *conninfo);
void db_free(struct db *db);

/* Cap the reconnect backoff at `seconds` (1 to 30). */
void db_set_backoff_max(struct db *db, double seconds);

/* The session's statement_timeout and idle_in_transaction_session_timeout
 * (seconds; 0: none), set on every connection; defaults 600 and 120. */
void db_set_timeouts(struct db *db, double statement_s, double idle_tx_s);

/* Connected now, or try to (unless the backoff says wait): 0 when the
 * connection is up, ERR_DB otherwise. */
int db_ensure(struct db *db, struct err *e) CK_WUR;

/* Connect, retrying up to `seconds` (for one-shot commands). */
int db_connect_wait(struct db *db, double seconds, struct err *e) CK_WUR;

/* The live connection, or NULL while down. Borrowed. */
PGconn *db_conn(struct db *db);

/* Run a statement with text parameters. Returns the result (caller
 * PQclear's it) when its status is COMMAND_OK or TUPLES_OK; otherwise NULL
 * with e holding the server's message, and the connection marked for
 * reconnection if it was lost. */
PGresult *db_exec(struct db *db, const char *sql, int nparams, const char *const *params,
                  struct err *e);

/* db_exec for statements whose result is not needed. */
int db_run(struct db *db, const char *sql, int nparams, const char *const *params,
           struct err *e) CK_WUR;

/* The id of the run named RUN: 0, or ERR_NOTFOUND ("no run named 'RUN'")
 * or ERR_DB. */
int db_run_id(struct db *db, const char *run, long long *id, struct err *e) CK_WUR;

/* Start `COPY (...) TO STDOUT` on the connection: 0 when the rows can be
 * read with PQgetCopyData (and the COPY must then be read to its end),
 * else ERR_DB with e saying "WHAT: <the server's first line>". */
int db_copy_out(struct db *db, const char *sql, const char *what, struct err *e) CK_WUR;

/* Number of times a lost connection was re-established. */
long db_reconnects(const struct db *db);

/* When a statement last got an answer from the server (db_exec with
 * COMMAND_OK or TUPLES_OK, or a connection made), on mono_now()'s clock
 * (CLOCK_MONOTONIC seconds); 0 before the first. */
double db_last_ok(const struct db *db);

/* Mark the connection as lost (after an error outside db_exec). */
void db_lost(struct db *db);

/* End the open transaction after a failure: ROLLBACK when connected, its
 * result ignored; a connection that is gone is marked lost. */
void db_rollback(struct db *db);

/* Format a bigint array literal "{1,2,3}" for ANY($n) into buf. */
void db_int_array(char *buf, size_t n, const long long *ids, int count);

/* A text[] literal {"a","b\"c"} with every element quoted and escaped;
 * the caller frees it. NULL on out of memory. */
char *db_text_array(const char *const *v, int count);

#endif
