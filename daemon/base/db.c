#include "daemon/base/db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

/* The reconnect backoff: 1 s doubling to this (db_set_backoff_max). */
/* Session settings of every connection (db_set_timeouts): a statement that
 * waits (a lock another node holds, a hung server) fails after
 * statement_timeout, and the server ends a session left idle inside a
 * transaction (a node stopped with SIGSTOP, or hung between statements)
 * after idle_in_transaction_session_timeout, releasing its locks; both
 * errors are the ordinary failed statement / lost connection. */
#define DB_STATEMENT_TIMEOUT_MS 600000L
#define DB_IDLE_TX_TIMEOUT_MS 120000L
#define DB_BACKOFF_MAX_S 30.0

/* Statements with parameters run more than once are prepared on the
 * connection and then executed by name: the server parses and plans them
 * once, not at every call (a claim and its settling are some 25
 * statements, and half the server's time went to parsing and planning
 * them).  Keyed by the text; a text is prepared at its second use, so a
 * statement built with values in it costs only its entry; at most
 * DB_STMT_MAX texts are remembered, and the table is emptied whenever the
 * connection is replaced. */
#define DB_STMT_MAX 256

struct stmt {
    char *sql;
    unsigned long long hash;
    int nparams;
    int uses;
    int id; /* prepared as ckptd_<id>; 0: not (yet) */
};

struct db {
    char *conninfo;
    struct stmt stmts[DB_STMT_MAX];
    int nstmts;
    int next_stmt_id;
    int no_prepare; /* the server lost a prepared statement: texts only */
    PGconn *conn;
    double next_try;   /* monotonic seconds: earliest next connect attempt */
    double backoff;    /* seconds */
    double backoff_max;
    int ever_connected;
    long reconnects;
    double last_ok;    /* monotonic seconds of the last answered statement */
    char last_error[256]; /* why the last connection attempt failed */
    long statement_timeout_ms, idle_tx_timeout_ms; /* session settings; 0: none */
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    log_debug("database notice", "notice=%s", log_quote(message));
}

struct db *db_new(const char *conninfo)
{
    struct db *db = calloc(1, sizeof *db);
    if (!db)
        return NULL;
    db->conninfo = strdup(conninfo ? conninfo : "");
    if (!db->conninfo) {
        free(db);
        return NULL;
    }
    db->backoff = 1.0;
    db->backoff_max = DB_BACKOFF_MAX_S;
    db->statement_timeout_ms = DB_STATEMENT_TIMEOUT_MS;
    db->idle_tx_timeout_ms = DB_IDLE_TX_TIMEOUT_MS;
    return db;
}

void db_set_timeouts(struct db *db, double statement_s, double idle_tx_s)
{
    db->statement_timeout_ms = statement_s > 0 ? (long)(statement_s * 1000 + 0.5) : 0;
    db->idle_tx_timeout_ms = idle_tx_s > 0 ? (long)(idle_tx_s * 1000 + 0.5) : 0;
    if (db->conn) { /* the next connection takes them */
        char sql[160];
        snprintf(sql, sizeof sql,
                 "SET statement_timeout = %ld; SET idle_in_transaction_session_timeout = %ld",
                 db->statement_timeout_ms, db->idle_tx_timeout_ms);
        PQclear(PQexec(db->conn, sql));
    }
}

void db_set_backoff_max(struct db *db, double seconds)
{
    db->backoff_max = seconds < 1.0 ? 1.0 : seconds > DB_BACKOFF_MAX_S ? DB_BACKOFF_MAX_S : seconds;
    if (db->backoff > db->backoff_max)
        db->backoff = db->backoff_max;
}

/*
 * Connection settings the conninfo may override (a keyword it names wins;
 * so do PGCONNECT_TIMEOUT and PGOPTIONS from the environment).  Without
 * them a statement sent over a network that went dead waits for the
 * kernel's TCP retransmissions, a quarter of an hour, the scheduler's tick
 * stuck inside libpq; and the server keeps the backend of a vanished node,
 * its open transaction and row locks included, for two hours.
 *   connect_timeout: 10 s per address tried;
 *   keepalives after 10 s idle, every 5 s, and tcp_user_timeout 15 s for
 *     data sent and not acknowledged: a dead network fails the statement
 *     in about 15 s and the connection counts as lost;
 *   options: the same keepalives and user timeout for the server's end of
 *     the connection (settings of the session), so the backend of a node
 *     cut off ends, rolling back what it had open.
 * Unix-socket connections ignore all of it.
 */
#define DB_SERVER_TIMEOUTS "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5" \
                           " -c tcp_keepalives_count=3 -c tcp_user_timeout=15000"

static PGconn *connect_with_defaults(const char *conninfo)
{
    static const struct {
        const char *key, *value, *env;
    } defaults[] = {
        {"connect_timeout", "10", "PGCONNECT_TIMEOUT"},
        {"keepalives", "1", NULL},
        {"keepalives_idle", "10", NULL},
        {"keepalives_interval", "5", NULL},
        {"keepalives_count", "3", NULL},
        {"tcp_user_timeout", "15000", NULL},
        {"options", DB_SERVER_TIMEOUTS, "PGOPTIONS"},
    };
    const char *keys[sizeof defaults / sizeof *defaults + 2], *vals[sizeof defaults / sizeof *defaults + 2];
    int n = 0;
    for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++) {
        const char *env = defaults[i].env ? getenv(defaults[i].env) : NULL;
        if (env && *env)
            continue;
        keys[n] = defaults[i].key;
        vals[n++] = defaults[i].value;
    }
    /* last: the conninfo, expanded, overrides the defaults above */
    keys[n] = "dbname";
    vals[n++] = conninfo;
    keys[n] = vals[n] = NULL;
    return PQconnectdbParams(keys, vals, 1);
}

/* The connection is gone or new: its prepared statements with it. */
static void stmts_forget(struct db *db)
{
    for (int i = 0; i < db->nstmts; i++)
        free(db->stmts[i].sql);
    db->nstmts = 0;
}

void db_free(struct db *db)
{
    if (!db)
        return;
    if (db->conn)
        PQfinish(db->conn);
    stmts_forget(db);
    free(db->conninfo);
    free(db);
}

void db_rollback(struct db *db)
{
    if (db->conn) {
        PQclear(PQexec(db->conn, "ROLLBACK"));
        if (PQstatus(db->conn) != CONNECTION_OK)
            db_lost(db);
    }
}

void db_lost(struct db *db)
{
    if (db->conn) {
        PQfinish(db->conn);
        db->conn = NULL;
        stmts_forget(db);
        log_warn("database connection lost", "retry_in=%.0fs", db->backoff);
    }
}

int db_ensure(struct db *db, struct err *e)
{
    if (db->conn && PQstatus(db->conn) == CONNECTION_OK)
        return 0;
    if (db->conn)
        db_lost(db);
    double t = now_mono();
    if (t < db->next_try)
        return err_set(e, ERR_DB, "database", "not connected (next attempt in %.1f s)%s%s",
                       db->next_try - t, db->last_error[0] ? ": " : "", db->last_error);
    PGconn *c = connect_with_defaults(db->conninfo);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        err_set(e, ERR_DB, "database", "cannot connect: %s",
                c ? PQerrorMessage(c) : "out of memory");
        if (e) /* one line */
            e->msg[strcspn(e->msg, "\n")] = '\0';
        char msg[sizeof db->last_error];
        snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "out of memory");
        msg[strcspn(msg, "\n")] = '\0';
        /* said once per cause, not once per attempt */
        if (strcmp(msg, db->last_error) != 0)
            log_warn("cannot connect to the database; will retry", "retry_in=%.1fs error=%s", db->backoff,
                     log_quote(msg));
        snprintf(db->last_error, sizeof db->last_error, "%s", msg);
        if (c)
            PQfinish(c);
        db->next_try = t + db->backoff;
        db->backoff = db->backoff * 2 > db->backoff_max ? db->backoff_max : db->backoff * 2;
        return ERR_DB;
    }
    /* notices (e.g. "relation already exists, skipping") are not errors */
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    char sql[200];
    snprintf(sql, sizeof sql,
             "SET application_name = 'ckptd'; SET statement_timeout = %ld;"
             " SET idle_in_transaction_session_timeout = %ld",
             db->statement_timeout_ms, db->idle_tx_timeout_ms);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        log_warn("cannot set the session's timeouts", "error=%s",
                 log_quote(PQresultErrorMessage(r)));
    PQclear(r);
    if (db->ever_connected) {
        db->reconnects++;
        log_info("database connection re-established", "reconnects=%ld", db->reconnects);
    }
    db->ever_connected = 1;
    stmts_forget(db);
    db->conn = c;
    db->backoff = 1.0;
    db->next_try = 0;
    db->last_ok = now_mono();
    db->last_error[0] = '\0';
    return 0;
}

int db_connect_wait(struct db *db, double seconds, struct err *e)
{
    double deadline = now_mono() + seconds;
    for (;;) {
        db->next_try = 0;
        if (db_ensure(db, e) == 0)
            return 0;
        if (now_mono() >= deadline)
            return ERR_DB;
        usleep(250000);
    }
}

PGconn *db_conn(struct db *db) { return db->conn; }

long db_reconnects(const struct db *db) { return db->reconnects; }

double db_last_ok(const struct db *db) { return db->last_ok; }

/* The entry of sql (counted as used once more), or NULL: not remembered
 * (no parameters, the table full of prepared texts, out of memory). */
static struct stmt *stmt_use(struct db *db, const char *sql, int nparams)
{
    if (nparams <= 0 || db->no_prepare)
        return NULL;
    unsigned long long h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *p = sql; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    for (int i = 0; i < db->nstmts; i++) {
        struct stmt *t = &db->stmts[i];
        if (t->hash == h && t->nparams == nparams && strcmp(t->sql, sql) == 0) {
            t->uses++;
            return t;
        }
    }
    if (db->nstmts == DB_STMT_MAX) { /* room: forget the texts used once */
        int k = 0;
        for (int i = 0; i < db->nstmts; i++) {
            if (db->stmts[i].id == 0 && db->stmts[i].uses < 2)
                free(db->stmts[i].sql);
            else
                db->stmts[k++] = db->stmts[i];
        }
        db->nstmts = k;
        if (k == DB_STMT_MAX)
            return NULL;
    }
    char *copy = strdup(sql);
    if (!copy)
        return NULL;
    db->stmts[db->nstmts] = (struct stmt){copy, h, nparams, 1, 0};
    return &db->stmts[db->nstmts++];
}

/* Run sql: by name when it is prepared (preparing it at its second use),
 * else as text.  A prepared statement the server no longer runs (its plan
 * outdated by a schema change, or its name unknown) is forgotten, and run
 * again as text at once when no transaction was open. */
static PGresult *exec_stmt(struct db *db, const char *sql, int nparams, const char *const *params)
{
    struct stmt *t = stmt_use(db, sql, nparams);
    if (!t || (t->id == 0 && t->uses < 2))
        return PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    char name[32];
    snprintf(name, sizeof name, "ckptd_%d", t->id ? t->id : db->next_stmt_id + 1);
    if (t->id == 0) { /* its second use: prepared now */
        PGresult *p = PQprepare(db->conn, name, sql, nparams, NULL);
        if (PQresultStatus(p) != PGRES_COMMAND_OK)
            return p; /* the statement's own error (or a lost connection) */
        PQclear(p);
        t->id = ++db->next_stmt_id;
    }
    PGresult *r = PQexecPrepared(db->conn, name, nparams, params, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || PQstatus(db->conn) != CONNECTION_OK)
        return r;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (!state || (strcmp(state, "0A000") != 0 && strcmp(state, "26000") != 0))
        return r; /* the statement's own failure */
    /* 0A000: "cached plan must not change result type" (the schema
     * changed); 26000: the server does not know the name (a connection
     * pooler that hands each transaction another server session): texts
     * from now on */
    t->id = 0;
    t->uses = 1;
    if (strcmp(state, "26000") == 0 && !db->no_prepare) {
        db->no_prepare = 1;
        log_warn("prepared statements are not kept on this connection (a pooler?); statements sent as text",
                 "error=%s", log_quote(PQresultErrorMessage(r)));
    }
    if (PQtransactionStatus(db->conn) != PQTRANS_IDLE)
        return r;
    PQclear(r);
    return PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0);
}

PGresult *db_exec(struct db *db, const char *sql, int nparams, const char *const *params,
                  struct err *e)
{
    if (!db->conn) {
        err_set(e, ERR_DB, "database", "not connected");
        return NULL;
    }
    PGresult *r = exec_stmt(db, sql, nparams, params);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        db->last_ok = now_mono();
        return r;
    }
    err_set(e, ERR_DB, "database", "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(db->conn));
    if (e)
        e->msg[strcspn(e->msg, "\n")] = '\0';
    PQclear(r);
    if (PQstatus(db->conn) != CONNECTION_OK)
        db_lost(db);
    return NULL;
}

int db_run(struct db *db, const char *sql, int nparams, const char *const *params, struct err *e)
{
    PGresult *r = db_exec(db, sql, nparams, params, e);
    if (!r)
        return ERR_DB;
    PQclear(r);
    return 0;
}

int db_run_id(struct db *db, const char *run, long long *id, struct err *e)
{
    const char *p[1] = {run};
    PGresult *r = db_exec(db, "SELECT id FROM runs WHERE name = $1", 1, p, e);
    if (!r)
        return ERR_DB;
    int found = PQntuples(r) == 1;
    if (found)
        *id = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return found ? 0 : err_set(e, ERR_NOTFOUND, run, "no run named '%s'", run);
}

int db_copy_out(struct db *db, const char *sql, const char *what, struct err *e)
{
    PGresult *r = PQexec(db_conn(db), sql);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        err_set(e, ERR_DB, "database", "%s: %s", what, PQresultErrorMessage(r));
        if (e)
            e->msg[strcspn(e->msg, "\n")] = '\0';
        PQclear(r);
        return ERR_DB;
    }
    PQclear(r);
    return 0;
}

void db_int_array(char *buf, size_t n, const long long *ids, int count)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, n, "{");
    for (int i = 0; i < count && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? "," : "", ids[i]);
    if (o < n)
        snprintf(buf + o, n - o, "}");
}

char *db_text_array(const char *const *v, int count)
{
    size_t n = 3;
    for (int i = 0; i < count; i++)
        n += 2 * strlen(v[i]) + 3; /* quotes, comma, every byte escaped at worst */
    char *out = malloc(n), *o = out;
    if (!out)
        return NULL;
    *o++ = '{';
    for (int i = 0; i < count; i++) {
        if (i)
            *o++ = ',';
        *o++ = '"';
        for (const char *c = v[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                *o++ = '\\';
            *o++ = *c;
        }
        *o++ = '"';
    }
    *o++ = '}';
    *o = '\0';
    return out;
}
