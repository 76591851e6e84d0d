/*
 * fetch.h - HTTP transfers over libcurl's multi interface: parallel,
 * resumable, verified, retried.  Non-blocking: the daemon's loop calls
 * fetcher_run() with its own file descriptors, so leases keep being renewed
 * and workers reaped while bytes arrive.
 *
 * A request is caller-owned storage (struct fetch_req) that lives until it
 * is done or cancelled.  Kinds:
 *   FETCH_FILE    GET into `path` (a partial file): an existing partial is
 *                 re-hashed and resumed with Range; the body is hashed as it
 *                 arrives; at the end its size and sha256 are checked against
 *                 what is expected (want_size / want_sha, filled from the
 *                 caller or from the server: X-Linked-Size, X-Linked-Etag or
 *                 an ETag that is a sha256, Content-Length, Content-Range).
 *                 A mismatch deletes the partial (it is never resumed from
 *                 bad bytes) and counts as a failed attempt.
 *   FETCH_MEMORY  GET a small body (API answers) into r->body.
 *   FETCH_HEAD    HEAD: status, Content-Length and the stated sha256.
 * Every kind also reports what the hub says of the file as huggingface_hub
 * reads it: the commit (X-Repo-Commit) and the ETag (X-Linked-Etag when an
 * answer has one, else the last ETag; "W/" and quotes removed) -- the name
 * huggingface_hub gives the file's blob in its cache.
 * Redirects are followed (the hub answers with one to its CDN).  The bearer
 * token goes only to requests whose origin (scheme, host, port) is the
 * token's origin; libcurl drops a custom Authorization header when a
 * redirect changes host or port (tests/fetch_faults.sh checks it).  TLS
 * peers and host names are always verified, against opts.ca_file or
 * libcurl's default bundle; there is no insecure mode, and a failed
 * verification is not retried.  A transfer slower than
 * low_speed_bytes/s for low_speed_s seconds is aborted.  Timeouts, resets,
 * cut bodies, 408, 429 and 5xx are retried after base*2^(k-1) seconds
 * (capped, with jitter in [0.5, 1.0)), or after Retry-After when the
 * server says so; other 4xx and malformed answers fail at once.  The token
 * is never logged nor part of an error.
 *
 *     struct fetcher *f = fetcher_new(&opts, &e);
 *     struct fetch_req r = {.kind = FETCH_FILE, .want_size = -1};
 *     snprintf(r.url, sizeof r.url, "%s", url); snprintf(r.path, ...);
 *     fetcher_add(f, &r, &e);
 *     while (!r.done) fetcher_run(f, NULL, 0, 1000);
 *     if (!r.ok) puts(r.error); else puts(r.sha256);
 *     fetcher_free(f);
 */
#ifndef CKPTD_FETCH_H
#define CKPTD_FETCH_H

#include <stddef.h>
#include <time.h>

#include "common/err.h"
#include "common/sha256.h"

#define FETCH_URL_MAX 2048
#define FETCH_ETAG_MAX 128
#define FETCH_COMMIT_MAX 64

struct fetch_opts {
    int parallel;            /* transfers at once (this node) */
    long low_speed_bytes;    /* abort below this many bytes/s ... */
    long low_speed_s;        /* ... for this many seconds */
    long connect_timeout_s;
    int retries;             /* attempts after the first */
    double backoff_base_s, backoff_max_s;
    double retry_after_max_s; /* cap on a server's Retry-After */
    char token[512];         /* bearer token; "" none */
    char token_origin[512];  /* scheme://host:port it may be sent to */
    char ca_file[1024];      /* CA bundle; "" libcurl's default */
};

enum fetch_kind {
    FETCH_FILE,
    FETCH_MEMORY,
    FETCH_HEAD,
    FETCH_KIND_COUNT
};

struct fetch_req {
    /* in */
    enum fetch_kind kind;
    char url[FETCH_URL_MAX];
    char path[1024];              /* FETCH_FILE: the partial file */
    long long want_size;          /* -1 unknown (filled from the server) */
    char want_sha[SHA256_HEX];    /* "" unknown (filled from the server) */
    size_t max_body;              /* FETCH_MEMORY: refuse more (0: 64 MiB) */
    /* out */
    int done, ok;
    long http_status;             /* of the last answer (0: none) */
    long long size;               /* bytes of the file / body; HEAD: stated length or -1 */
    char sha256[SHA256_HEX];      /* FILE: computed; HEAD: stated ("" unknown) */
    char commit[FETCH_COMMIT_MAX]; /* X-Repo-Commit ("" none, or a FILE complete before it started) */
    char etag[FETCH_ETAG_MAX];    /* X-Linked-Etag, else ETag, normalised ("" none) */
    char *body;                   /* FETCH_MEMORY: NUL-terminated; fetch_req_clear frees */
    long long bytes_now;          /* FILE: bytes on disk so far (progress) */
    long long bytes_resumed;      /* FILE: bytes that were on disk before this run */
    int attempts;
    char error[4096];             /* when done && !ok */
    void *priv;                   /* the fetcher's */
};

struct fetcher;

/* Defaults: 4 parallel, 1024 B/s for 30 s, 15 s connect, 5 retries,
 * backoff 1 s to 60 s, Retry-After up to 600 s. */
void fetch_opts_defaults(struct fetch_opts *o);

struct fetcher *fetcher_new(const struct fetch_opts *o, struct err *e);
/* Cancels what is still running (partials stay for a later resume). */
void fetcher_free(struct fetcher *f);

/* Queue a request (its `out` fields are reset). It starts when a slot is
 * free. ERR_INVALID for an unusable URL or path. */
int fetcher_add(struct fetcher *f, struct fetch_req *r, struct err *e) CK_WUR;

/* Stop a request that is not done; a partial file stays for resuming.
 * The request is no longer the fetcher's. */
void fetcher_cancel(struct fetcher *f, struct fetch_req *r);

/* Free r->body. Accepts a request that never ran. */
void fetch_req_clear(struct fetch_req *r);

/* Move bytes for up to timeout_ms: returns early when a request finishes
 * (1), when one of `fds` is readable (2), or at the timeout (0).  With
 * nothing to do it just waits on fds. */
int fetcher_run(struct fetcher *f, const int *fds, int nfds, int timeout_ms);

/* New settings (SIGHUP): the parallel limit, retries and backoff apply at
 * once (to the next start or retry decision); the low-speed limits,
 * connect timeout, token and CA file to transfers started from now on
 * (a running transfer keeps the ones it started with). */
void fetcher_set_opts(struct fetcher *f, const struct fetch_opts *o);
/* The settings in force. Borrowed. */
const struct fetch_opts *fetcher_opts(const struct fetcher *f);

/* Requests queued, waiting to retry or running. */
int fetcher_pending(const struct fetcher *f);

/* Bytes received by this fetcher since it was made (all requests). */
long long fetcher_bytes(const struct fetcher *f);

/* ---- the pure parts, exposed for tests ---- */

/* Retry-After: delta seconds or an HTTP-date (relative to `now`); -1 when
 * unparseable.  Negative deltas and past dates are 0. */
double fetch_parse_retry_after(const char *value, time_t now);

/* A sha256 from an ETag / X-Linked-Etag value (quotes and W/ removed):
 * lowercase hex into out, 0; -1 when the value is not a sha256. */
int fetch_etag_sha256(const char *value, char *out);

/* An ETag as huggingface_hub names blobs by it: a leading "W/" and the
 * surrounding quotes removed, into out; -1 when nothing is left or it does
 * not fit. */
int fetch_etag_normalize(const char *value, char *out, size_t n);

/* Seconds before retry `k` (1 = first retry): base*2^(k-1), at most max,
 * times a jitter in [0.5, 1.0) taken from u in [0, 1). */
double fetch_backoff(int k, double base, double max, double u);

/* Split one header line ("Name: value\r\n") into lowercase name and
 * trimmed value; -1 when it is not a header (a status line, the blank
 * line). */
int fetch_header_split(const char *line, size_t len, char *name, size_t nn, char *value, size_t vn);

/* "bytes START-END/TOTAL": 0 and the numbers; -1 when malformed. TOTAL may
 * be "*" (-1). */
int fetch_parse_content_range(const char *value, long long *start, long long *end, long long *total);

#endif
