/*
 * metrics.h - what a node has done, in Prometheus's text format, and
 * whether it is healthy, over HTTP (libmicrohttpd).
 *
 * struct metrics is plain storage owned by the serve loop: the loop copies
 * its counters in at the end of every tick and refreshes the per-run queue
 * depths from the database at most every METRICS_QUEUE_REFRESH_S seconds
 * (metrics_refresh_queue), never per scrape.  The HTTP server runs in
 * libmicrohttpd's external-polling mode with epoll: the loop polls one file
 * descriptor (metrics_server_fd) beside its own, never longer than
 * metrics_server_timeout_ms, and calls metrics_server_run after each wait.
 * Requests are answered inside that call, on the loop's thread, so the
 * handler reads struct metrics without a lock; the price is that a scrape
 * waits while the loop is inside a blocking call (a COPY, one connection
 * attempt).
 *
 * Endpoints (GET or HEAD; other methods 405, other paths 404):
 *   /metrics   text exposition format 0.0.4 (metrics_render)
 *   /healthz   200 "ok: ..." or 503 with the reason (metrics_health):
 *              503 until the database has been reached and the schema
 *              checked; afterwards 503 when no database statement got an
 *              answer for more than healthz_max_age_s seconds, or the node
 *              has not been ready (connected, schema checked, LISTEN) for
 *              that long.  The serve loop renews its `nodes` row every
 *              heartbeat_s, so an idle node proves its database too.
 *
 * Listen address: "HOST:PORT", HOST a numeric IPv4 address or a bracketed
 * IPv6 one ("[::1]:9464"); names are refused (nothing is resolved).  Unless
 * allow_remote is set HOST must be loopback, 127.0.0.0/8 or ::1: the
 * endpoint has no authentication and names the runs a node works on, so
 * exposing it beyond the host must be asked for ("metrics_allow_remote":
 * true, or serve --metrics-allow-remote; Kubernetes probes reach the pod's
 * address, not its loopback).
 *
 *     struct metrics m;
 *     metrics_init(&m, "node-a");
 *     struct metrics_server *ms = metrics_server_start("127.0.0.1:9464", 0, &m, &e);
 *     for (;;) { ... poll(metrics_server_fd(ms)) ...; metrics_server_run(ms); }
 *     metrics_server_stop(ms);
 *     metrics_free(&m);
 */
#ifndef CKPTD_METRICS_H
#define CKPTD_METRICS_H

#include <sys/socket.h>

#include "common/err.h"

#define METRICS_QUEUE_REFRESH_S 5.0

/* Jobs of one run, as the database last said. */
struct metrics_run {
    char run[256];
    long long queued;   /* waiting, due now or backing off */
    long long running;  /* leased by any node */
};

struct metrics {
    /* counters, since this process started */
    long long jobs_claimed;        /* jobs taken with a lease (a re-claim counts again) */
    long long jobs_done;           /* jobs whose results were stored */
    long long jobs_failed;         /* failed attempts: worker, download, rejected results */
    long long leases_lost;         /* a heartbeat or the store found the lease taken */
    long long fetch_bytes;         /* HTTP body bytes received */
    double download_s;             /* per checkpoint, claim until its files were ready */
    double download_wait_s;        /* a free worker slot waited for a download */
    double worker_s;               /* wall time of ckpt-worker processes */
    long long db_reconnects;
    /* gauges */
    int workers;                   /* configured */
    int slots_fetch, slots_ready, slots_run;
    int ready;                     /* connected, schema checked, LISTEN, registry synced */
    int ever_ready;
    double unready_since;          /* monotonic; 0 while ready */
    double db_last_ok;             /* monotonic time of the last answered statement; 0 never */
    char db_error[256];            /* why the database is not usable ("" when it is) */
    double healthz_max_age_s;
    /* per run, from the database */
    struct metrics_run *runs;      /* owned */
    int nruns;
    double queue_at;               /* monotonic time of the last refresh; 0 never */
    /* identity */
    char node[128];
    double start_time;             /* Unix seconds */
};

struct db;
struct metrics_server;

/* Zeroed counters for `node`; start_time now. */
void metrics_init(struct metrics *m, const char *node);
/* Frees the runs. Accepts NULL. */
void metrics_free(struct metrics *m);

/* Read the queued and running jobs per run (every run, 0s included).  On
 * error the previous values stay and ERR_DB is returned. */
int metrics_refresh_queue(struct metrics *m, struct db *db, double now, struct err *e) CK_WUR;

/* The exposition text at monotonic time `now`; the caller frees it.  NULL
 * on out of memory. */
char *metrics_render(const struct metrics *m, double now);

/* 200 or 503 by the rule above; `reason` gets one line (no newline). */
int metrics_health(const struct metrics *m, double now, char *reason, size_t n);

/* Check "HOST:PORT" by the rule above and fill *sa and *len (both may be
 * NULL: only check).  ERR_INVALID naming the address and what is wrong. */
int metrics_parse_listen(const char *addr, int allow_remote, struct sockaddr_storage *sa, socklen_t *len,
                         struct err *e) CK_WUR;

/* Listen on `addr` and answer from `m` (borrowed: it must outlive the
 * server).  NULL with e filled when the address is refused or cannot be
 * bound (in use, not an address of this host). */
struct metrics_server *metrics_server_start(const char *addr, int allow_remote, const struct metrics *m,
                                            struct err *e);
/* The descriptor to poll for input. */
int metrics_server_fd(const struct metrics_server *ms);
/* Milliseconds until metrics_server_run is due even without input; -1:
 * only on input. */
int metrics_server_timeout_ms(struct metrics_server *ms);
/* Accept, read and answer what is ready; never blocks. */
void metrics_server_run(struct metrics_server *ms);
/* Requests answered so far. */
long metrics_server_requests(const struct metrics_server *ms);
/* Close every connection and the socket. Accepts NULL. */
void metrics_server_stop(struct metrics_server *ms);

/* Prometheus escaping into out (always NUL-terminated; cut at n-1): a label
 * value escapes backslash, double quote and newline; a HELP text only
 * backslash and newline. */
void metrics_escape_label(char *out, size_t n, const char *s);
void metrics_escape_help(char *out, size_t n, const char *s);

#endif
