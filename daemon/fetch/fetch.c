#include "daemon/fetch/fetch.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/fetch/hub.h"

#define MEMORY_MAX_DEFAULT (64u << 20)
#define CURL_BUFFER (512 * 1024)

/* One request's transfer state (r->priv). */
struct xfer {
    struct fetch_req *r;
    struct xfer *next;
    struct fetcher *f;
    CURL *h;
    struct curl_slist *hdrs;
    int active;
    double not_before;       /* monotonic; when waiting to (re)start */
    int fd;                  /* FETCH_FILE, while active */
    struct sha256 hash;
    long long offset;        /* resumed from */
    long long got;           /* body bytes of this attempt */
    size_t body_cap;
    /* the answer being read */
    long status;
    long long clen;
    int has_range;
    long long range_start, range_total;
    double retry_after;
    int body_ok;             /* the final 2xx answer: its body is ours */
    int mismatch;            /* our check failed: the partial is bad */
    int write_failed;   /* the partial could not be written (a full disk): dropped */
    int aborted;             /* we stopped the transfer; reason in why */
    char why[1400];
    char linked_sha[SHA256_HEX];
    long long linked_size;
    char etag_sha[SHA256_HEX];
    char linked_etag[FETCH_ETAG_MAX]; /* normalised X-Linked-Etag of any answer */
    char last_etag[FETCH_ETAG_MAX];   /* normalised ETag of the latest answer with one */
    char errbuf[CURL_ERROR_SIZE];
};

struct fetcher {
    struct fetch_opts o;
    CURLM *m;
    struct xfer *head;
    int nactive;
    long long bytes;
    unsigned rng;
};

static int curl_ready;

void fetch_opts_defaults(struct fetch_opts *o)
{
    memset(o, 0, sizeof *o);
    o->parallel = 4;
    o->low_speed_bytes = 1024;
    o->low_speed_s = 30;
    o->connect_timeout_s = 15;
    o->retries = 5;
    o->backoff_base_s = 1;
    o->backoff_max_s = 60;
    o->retry_after_max_s = 600;
}

/* ---- pure helpers ---- */

int fetch_header_split(const char *line, size_t len, char *name, size_t nn, char *value, size_t vn)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line || (len >= 5 && strncmp(line, "HTTP/", 5) == 0))
        return -1;
    size_t kl = (size_t)(colon - line);
    if (kl >= nn)
        kl = nn - 1;
    for (size_t i = 0; i < kl; i++)
        name[i] = (char)tolower((unsigned char)line[i]);
    name[kl] = '\0';
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vl = (size_t)(end - v);
    if (vl >= vn)
        vl = vn - 1;
    memcpy(value, v, vl);
    value[vl] = '\0';
    return 0;
}

double fetch_parse_retry_after(const char *value, time_t now)
{
    while (*value == ' ')
        value++;
    if (!*value)
        return -1;
    char *end;
    errno = 0;
    double d = strtod(value, &end);
    if (end != value && isdigit((unsigned char)*value)) {
        while (*end == ' ')
            end++;
        if (*end || errno || !isfinite(d))
            return -1;
        return d < 0 ? 0 : d;
    }
    time_t t = curl_getdate(value, NULL); /* RFC 1123 and the older forms */
    if (t == (time_t)-1)
        return -1;
    return t > now ? (double)(t - now) : 0;
}

int fetch_etag_sha256(const char *value, char *out)
{
    const char *v = value;
    while (*v == ' ')
        v++;
    if (strncmp(v, "W/", 2) == 0)
        v += 2;
    if (*v == '"')
        v++;
    size_t len = strcspn(v, "\"");
    if (len != 64)
        return -1;
    for (size_t i = 0; i < 64; i++) {
        if (!isxdigit((unsigned char)v[i]))
            return -1;
        out[i] = (char)tolower((unsigned char)v[i]);
    }
    out[64] = '\0';
    const char *rest = v + 64;
    if (*rest == '"')
        rest++;
    while (*rest == ' ')
        rest++;
    return *rest ? -1 : 0;
}

int fetch_etag_normalize(const char *value, char *out, size_t n)
{
    const char *v = value;
    while (*v == ' ')
        v++;
    if (strncmp(v, "W/", 2) == 0)
        v += 2;
    size_t len = strlen(v);
    while (len && v[len - 1] == ' ')
        len--;
    if (len && *v == '"') {
        v++;
        len--;
    }
    if (len && v[len - 1] == '"')
        len--;
    if (len == 0 || len >= n)
        return -1;
    memcpy(out, v, len);
    out[len] = '\0';
    return 0;
}

double fetch_backoff(int k, double base, double max, double u)
{
    if (k < 1)
        k = 1;
    double d = base * pow(2.0, k - 1 > 60 ? 60 : k - 1);
    if (d > max)
        d = max;
    return d * (0.5 + 0.5 * u);
}

int fetch_parse_content_range(const char *value, long long *start, long long *end, long long *total)
{
    const char *p = value;
    if (strncmp(p, "bytes ", 6) != 0)
        return -1;
    p += 6;
    char *q;
    errno = 0;
    long long a = strtoll(p, &q, 10);
    if (q == p || *q != '-' || a < 0)
        return -1;
    p = q + 1;
    long long b = strtoll(p, &q, 10);
    if (q == p || *q != '/' || b < a)
        return -1;
    p = q + 1;
    long long t = -1;
    if (strcmp(p, "*") != 0) {
        t = strtoll(p, &q, 10);
        if (q == p || *q || t <= b)
            return -1;
    }
    if (errno)
        return -1;
    *start = a;
    *end = b;
    *total = t;
    return 0;
}

/* ---- transfers ---- */

static void abort_with(struct xfer *x, int mismatch, const char *fmt, ...) CK_PRINTF(3, 4);
static void abort_with(struct xfer *x, int mismatch, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->why, sizeof x->why, fmt, ap);
    va_end(ap);
    x->aborted = 1;
    x->mismatch = mismatch;
}

/* The end of one answer's headers: decide whether its body is ours and
 * check what the server states against what is expected.  0 to go on. */
static int headers_done(struct xfer *x)
{
    struct fetch_req *r = x->r;
    if (x->status < 200 || x->status >= 300)
        return 0; /* a redirect, or an error whose body we drop */
    if (r->kind == FETCH_HEAD) {
        x->body_ok = 1;
        return 0;
    }
    long long stated = -1;
    if (r->kind == FETCH_FILE) {
        if (x->offset > 0 && x->status == 200) {
            /* the server ignored Range: start over */
            if (ftruncate(x->fd, 0) != 0 || lseek(x->fd, 0, SEEK_SET) != 0) {
                abort_with(x, 0, "cannot truncate %s: %s", r->path, strerror(errno));
                return -1;
            }
            sha256_free(&x->hash);
            if (sha256_init(&x->hash, NULL) < 0) {
                abort_with(x, 0, "out of memory");
                return -1;
            }
            x->offset = 0;
            r->bytes_now = 0;
        }
        if (x->status == 206) {
            if (!x->has_range || x->range_start != x->offset) {
                abort_with(x, 1, "the server answered a request for bytes from %lld with %s", x->offset,
                           x->has_range ? "another range" : "no Content-Range");
                return -1;
            }
            stated = x->range_total;
        } else if (x->clen >= 0) {
            stated = x->clen;
        }
        if (x->linked_size >= 0) {
            if (r->want_size >= 0 && x->linked_size != r->want_size) {
                abort_with(x, 1, "size mismatch: the server states %lld bytes (X-Linked-Size), expected %lld",
                           x->linked_size, r->want_size);
                return -1;
            }
            r->want_size = x->linked_size;
        }
        const char *ssha = x->linked_sha[0] ? x->linked_sha : x->etag_sha;
        if (ssha[0]) {
            if (r->want_sha[0] && strcmp(r->want_sha, ssha) != 0) {
                abort_with(x, 1, "sha256 mismatch: the server states %s, expected %s", ssha, r->want_sha);
                return -1;
            }
            snprintf(r->want_sha, sizeof r->want_sha, "%s", ssha);
        }
        if (stated >= 0 && r->want_size >= 0 && stated != r->want_size) {
            abort_with(x, 1, "size mismatch: the server states %lld bytes (%s), expected %lld", stated,
                       x->status == 206 ? "Content-Range" : "Content-Length", r->want_size);
            return -1;
        }
        if (r->want_size < 0 && stated >= 0)
            r->want_size = stated;
    }
    x->body_ok = 1;
    return 0;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    char name[64], value[1024];
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        const char *sp = memchr(buf, ' ', len);
        x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        x->clen = -1;
        x->has_range = 0;
        x->body_ok = 0;
        x->retry_after = -1;
        return len;
    }
    if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n'))
        return headers_done(x) == 0 ? len : 0;
    if (fetch_header_split(buf, len, name, sizeof name, value, sizeof value) < 0)
        return len;
    if (strcmp(name, "content-length") == 0) {
        char *end;
        long long v = strtoll(value, &end, 10);
        x->clen = end != value && !*end && v >= 0 ? v : -1;
    } else if (strcmp(name, "content-range") == 0) {
        long long a, b, t;
        x->has_range = fetch_parse_content_range(value, &a, &b, &t) == 0;
        x->range_start = x->has_range ? a : -1;
        x->range_total = x->has_range ? t : -1;
    } else if (strcmp(name, "x-linked-size") == 0) {
        char *end;
        long long v = strtoll(value, &end, 10);
        if (end != value && !*end && v >= 0)
            x->linked_size = v;
    } else if (strcmp(name, "x-linked-etag") == 0) {
        char sha[SHA256_HEX];
        if (fetch_etag_sha256(value, sha) == 0)
            memcpy(x->linked_sha, sha, sizeof sha);
        if (!x->linked_etag[0] && fetch_etag_normalize(value, x->linked_etag, sizeof x->linked_etag) < 0)
            x->linked_etag[0] = '\0';
    } else if (strcmp(name, "etag") == 0) {
        char sha[SHA256_HEX];
        if (fetch_etag_sha256(value, sha) == 0)
            memcpy(x->etag_sha, sha, sizeof sha);
        if (fetch_etag_normalize(value, x->last_etag, sizeof x->last_etag) < 0)
            x->last_etag[0] = '\0';
    } else if (strcmp(name, "x-repo-commit") == 0) {
        if (!x->r->commit[0] && strlen(value) < sizeof x->r->commit)
            snprintf(x->r->commit, sizeof x->r->commit, "%s", value);
    } else if (strcmp(name, "retry-after") == 0) {
        x->retry_after = fetch_parse_retry_after(value, time(NULL));
    }
    return len;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    struct fetch_req *r = x->r;
    size_t len = size * n;
    if (!x->body_ok)
        return len; /* an error page or a redirect's body */
    if (r->kind == FETCH_MEMORY) {
        size_t max = r->max_body ? r->max_body : MEMORY_MAX_DEFAULT;
        if ((size_t)x->got + len > max) {
            abort_with(x, 0, "answer larger than %zu bytes", max);
            return 0;
        }
        if ((size_t)x->got + len + 1 > x->body_cap) {
            size_t nc = x->body_cap ? x->body_cap : 65536;
            while (nc < (size_t)x->got + len + 1)
                nc *= 2;
            char *p = realloc(r->body, nc);
            if (!p) {
                abort_with(x, 0, "out of memory");
                return 0;
            }
            r->body = p;
            x->body_cap = nc;
        }
        memcpy(r->body + x->got, buf, len);
        x->got += (long long)len;
        r->body[x->got] = '\0';
        x->f->bytes += (long long)len;
        return len;
    }
    if (r->kind != FETCH_FILE)
        return len;
    if (r->want_size >= 0 && x->offset + x->got + (long long)len > r->want_size) {
        abort_with(x, 1, "size mismatch: the server sent more than the %lld bytes expected", r->want_size);
        return 0;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(x->fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            abort_with(x, 0, "cannot write %s: %s", r->path, strerror(errno));
            x->write_failed = 1;
            return 0;
        }
        off += (size_t)w;
    }
    sha256_update(&x->hash, buf, len);
    x->got += (long long)len;
    r->bytes_now = x->offset + x->got;
    x->f->bytes += (long long)len;
    return len;
}

static void close_file(struct xfer *x)
{
    if (x->fd >= 0)
        close(x->fd);
    x->fd = -1;
    sha256_free(&x->hash);
}

static void detach(struct fetcher *f, struct xfer *x)
{
    if (x->h) {
        curl_multi_remove_handle(f->m, x->h);
        curl_easy_cleanup(x->h);
        x->h = NULL;
    }
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
    if (x->active) {
        x->active = 0;
        f->nactive--;
    }
    close_file(x);
}

static void unlink_xfer(struct fetcher *f, struct xfer *x)
{
    for (struct xfer **pp = &f->head; *pp; pp = &(*pp)->next)
        if (*pp == x) {
            *pp = x->next;
            break;
        }
}

static void finish(struct fetcher *f, struct xfer *x, int ok)
{
    snprintf(x->r->etag, sizeof x->r->etag, "%s", x->linked_etag[0] ? x->linked_etag : x->last_etag);
    detach(f, x);
    unlink_xfer(f, x);
    x->r->done = 1;
    x->r->ok = ok;
    x->r->priv = NULL;
    free(x);
}

static const char *kind_verb(enum fetch_kind k) { return k == FETCH_HEAD ? "HEAD" : "GET"; }

/* A failed attempt: retry later, or give up with `why`. */
static void failed_attempt(struct fetcher *f, struct xfer *x, int retryable, double retry_after,
                           const char *why)
{
    struct fetch_req *r = x->r;
    detach(f, x);
    /* never resume from bytes that proved wrong; a partial that could not
     * be written (a full disk) is not kept half-written either */
    if ((x->mismatch || x->write_failed) && r->kind == FETCH_FILE)
        unlink(r->path);
    if (retryable && r->attempts <= f->o.retries) {
        double u = (double)rand_r(&f->rng) / ((double)RAND_MAX + 1.0);
        double wait = retry_after >= 0 ? fmin(retry_after, f->o.retry_after_max_s)
                                       : fetch_backoff(r->attempts, f->o.backoff_base_s, f->o.backoff_max_s, u);
        x->not_before = mono_now() + wait;
        log_warn("download failed; retrying", "url=%s attempt=%d wait_s=%.2f error=%s", log_quote(r->url),
                 r->attempts, wait, log_quote(why));
        return;
    }
    if (retryable)
        snprintf(r->error, sizeof r->error, "%s %s: %s (gave up after %d attempts)", kind_verb(r->kind), r->url,
                 why, r->attempts);
    else
        snprintf(r->error, sizeof r->error, "%s %s: %s", kind_verb(r->kind), r->url, why);
    finish(f, x, 0);
}

/* The body is complete: check it. */
static void verify_file(struct fetcher *f, struct xfer *x)
{
    struct fetch_req *r = x->r;
    long long total = x->offset + x->got;
    char why[1400];
    if (r->want_size >= 0 && total != r->want_size) {
        x->mismatch = 1;
        snprintf(why, sizeof why, "size mismatch: expected %lld bytes, got %lld", r->want_size, total);
        failed_attempt(f, x, 1, -1, why);
        return;
    }
    sha256_final(&x->hash, r->sha256);
    if (r->want_sha[0] && strcmp(r->want_sha, r->sha256) != 0) {
        x->mismatch = 1;
        snprintf(why, sizeof why, "sha256 mismatch: expected %s, got %s", r->want_sha, r->sha256);
        failed_attempt(f, x, 1, -1, why);
        return;
    }
    if (fdatasync(x->fd) != 0) {
        snprintf(why, sizeof why, "cannot sync %s: %s", r->path, strerror(errno));
        failed_attempt(f, x, 0, -1, why);
        return;
    }
    r->size = total;
    r->bytes_now = total;
    finish(f, x, 1);
}

static int start(struct fetcher *f, struct xfer *x)
{
    struct fetch_req *r = x->r;
    char why[1400];
    x->got = 0;
    x->offset = 0;
    x->status = 0;
    x->clen = -1;
    x->has_range = 0;
    x->retry_after = -1;
    x->body_ok = 0;
    x->mismatch = 0;
    x->aborted = 0;
    x->why[0] = '\0';
    x->errbuf[0] = '\0';
    x->linked_sha[0] = x->etag_sha[0] = '\0';
    x->linked_etag[0] = x->last_etag[0] = '\0';
    x->linked_size = -1;
    r->commit[0] = r->etag[0] = '\0';
    r->attempts++;
    if (r->kind == FETCH_MEMORY) {
        free(r->body);
        r->body = NULL;
        x->body_cap = 0;
    }
    if (r->kind == FETCH_FILE) {
        x->fd = open(r->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (x->fd < 0) {
            snprintf(why, sizeof why, "cannot open %s: %s", r->path, strerror(errno));
            failed_attempt(f, x, 0, -1, why);
            return -1;
        }
        struct stat st;
        long long have = fstat(x->fd, &st) == 0 ? (long long)st.st_size : 0;
        if (r->want_size >= 0 && have > r->want_size) {
            if (ftruncate(x->fd, 0) != 0)
                have = -1;
            else
                have = 0;
        }
        struct err e;
        if (have < 0 || sha256_init(&x->hash, &e) < 0 ||
            (have > 0 && sha256_update_file(&x->hash, r->path, have, &e) < 0) ||
            lseek(x->fd, have, SEEK_SET) != have) {
            snprintf(why, sizeof why, "cannot resume %s", r->path);
            failed_attempt(f, x, 0, -1, why);
            return -1;
        }
        x->offset = have;
        r->bytes_now = have;
        if (r->attempts == 1)
            r->bytes_resumed = have;
        if (have > 0 && have == r->want_size) { /* complete from an earlier run */
            x->active = 1;
            f->nactive++;
            verify_file(f, x);
            return 0;
        }
    }
    CURL *h = curl_easy_init();
    if (!h) {
        failed_attempt(f, x, 0, -1, "cannot create a transfer (out of memory)");
        return -1;
    }
    x->h = h;
    curl_easy_setopt(h, CURLOPT_URL, r->url);
    curl_easy_setopt(h, CURLOPT_PRIVATE, x);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_UNRESTRICTED_AUTH, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (f->o.ca_file[0])
        curl_easy_setopt(h, CURLOPT_CAINFO, f->o.ca_file);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, f->o.connect_timeout_s);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, f->o.low_speed_bytes);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, f->o.low_speed_s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, (long)CURL_BUFFER);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "ckptd/0.1");
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    if (r->kind == FETCH_HEAD)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    if (x->offset > 0)
        curl_easy_setopt(h, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)x->offset);
    char origin[512];
    if (f->o.token[0] && hub_url_origin(r->url, origin, sizeof origin, NULL) == 0 &&
        strcmp(origin, f->o.token_origin) == 0) {
        char hdr[600];
        snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", f->o.token);
        x->hdrs = curl_slist_append(NULL, hdr);
        memset(hdr, 0, sizeof hdr);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->hdrs);
    }
    if (curl_multi_add_handle(f->m, h) != CURLM_OK) {
        failed_attempt(f, x, 0, -1, "cannot start the transfer");
        return -1;
    }
    x->active = 1;
    f->nactive++;
    return 0;
}

static int retryable_code(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_WEIRD_SERVER_REPLY:
        return 1;
    default:
        return 0;
    }
}

static void on_done(struct fetcher *f, struct xfer *x, CURLcode res)
{
    struct fetch_req *r = x->r;
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    r->http_status = code;
    char why[900];
    if (x->aborted) {
        failed_attempt(f, x, x->mismatch, -1, x->why);
        return;
    }
    if (res != CURLE_OK) {
        const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(res);
        if (res == CURLE_OPERATION_TIMEDOUT && x->got + x->offset > 0 && strstr(detail, "too slow"))
            snprintf(why, sizeof why, "transfer stalled: under %ld bytes/s for %ld s at byte %lld (%s)",
                     f->o.low_speed_bytes, f->o.low_speed_s, x->offset + x->got, detail);
        else
            snprintf(why, sizeof why, "%s", detail);
        failed_attempt(f, x, retryable_code(res), -1, why);
        return;
    }
    if (code >= 200 && code < 300) {
        if (r->kind == FETCH_FILE) {
            verify_file(f, x);
            return;
        }
        if (r->kind == FETCH_HEAD) {
            r->size = x->linked_size >= 0 ? x->linked_size : x->clen;
            snprintf(r->sha256, sizeof r->sha256, "%s", x->linked_sha[0] ? x->linked_sha : x->etag_sha);
        } else {
            r->size = x->got;
            if (!r->body) {
                r->body = calloc(1, 1);
                if (!r->body) {
                    failed_attempt(f, x, 0, -1, "out of memory");
                    return;
                }
            }
        }
        finish(f, x, 1);
        return;
    }
    snprintf(why, sizeof why, "HTTP %ld", code);
    if (code == 408 || code == 429 || code >= 500)
        failed_attempt(f, x, 1, x->retry_after, why);
    else
        failed_attempt(f, x, 0, -1, why);
}

struct fetcher *fetcher_new(const struct fetch_opts *o, struct err *e)
{
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
            err_set(e, ERR_NET, "curl", "cannot initialise libcurl");
            return NULL;
        }
        curl_ready = 1;
    }
    struct fetcher *f = calloc(1, sizeof *f);
    if (!f) {
        err_set(e, ERR_NOMEM, "fetch", "out of memory");
        return NULL;
    }
    f->o = *o;
    if (f->o.parallel < 1)
        f->o.parallel = 1;
    f->m = curl_multi_init();
    if (!f->m) {
        free(f);
        err_set(e, ERR_NOMEM, "fetch", "cannot create a libcurl multi handle");
        return NULL;
    }
    curl_multi_setopt(f->m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)f->o.parallel);
    f->rng = (unsigned)getpid() ^ (unsigned)(mono_now() * 1000);
    return f;
}

void fetcher_set_opts(struct fetcher *f, const struct fetch_opts *o)
{
    f->o = *o;
    if (f->o.parallel < 1)
        f->o.parallel = 1;
    curl_multi_setopt(f->m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)f->o.parallel);
}

const struct fetch_opts *fetcher_opts(const struct fetcher *f) { return &f->o; }

void fetcher_cancel(struct fetcher *f, struct fetch_req *r)
{
    struct xfer *x = r->priv;
    if (!f || !x)
        return;
    detach(f, x);
    unlink_xfer(f, x);
    r->priv = NULL;
    free(x);
}

void fetcher_free(struct fetcher *f)
{
    if (!f)
        return;
    while (f->head)
        fetcher_cancel(f, f->head->r);
    curl_multi_cleanup(f->m);
    memset(f->o.token, 0, sizeof f->o.token);
    free(f);
}

void fetch_req_clear(struct fetch_req *r)
{
    if (!r)
        return;
    free(r->body);
    r->body = NULL;
}

int fetcher_add(struct fetcher *f, struct fetch_req *r, struct err *e)
{
    if (strncmp(r->url, "http://", 7) != 0 && strncmp(r->url, "https://", 8) != 0)
        return err_set(e, ERR_INVALID, r->url, "not an http(s) URL");
    if (r->kind == FETCH_FILE && !r->path[0])
        return err_set(e, ERR_INVALID, r->url, "no file to download into");
    if (r->priv)
        return err_set(e, ERR_INVALID, r->url, "request already queued");
    struct xfer *x = calloc(1, sizeof *x);
    if (!x)
        return err_set(e, ERR_NOMEM, r->url, "out of memory");
    x->r = r;
    x->f = f;
    x->fd = -1;
    r->done = r->ok = 0;
    r->http_status = 0;
    r->size = -1;
    r->sha256[0] = '\0';
    r->commit[0] = r->etag[0] = '\0';
    r->error[0] = '\0';
    r->attempts = 0;
    r->bytes_now = r->bytes_resumed = 0;
    free(r->body);
    r->body = NULL;
    r->priv = x;
    /* append: first come, first started */
    struct xfer **pp = &f->head;
    while (*pp)
        pp = &(*pp)->next;
    *pp = x;
    return 0;
}

int fetcher_pending(const struct fetcher *f)
{
    int n = 0;
    for (const struct xfer *x = f ? f->head : NULL; x; x = x->next)
        n++;
    return n;
}

long long fetcher_bytes(const struct fetcher *f) { return f ? f->bytes : 0; }

/* Start what is due while slots are free; the earliest later start in *next. */
static int start_due(struct fetcher *f, double *next)
{
    double now = mono_now();
    int finished = 0;
    *next = INFINITY;
    struct xfer *x = f->head;
    while (x) {
        struct xfer *nx = x->next;
        if (!x->active) {
            if (x->not_before > now) {
                *next = fmin(*next, x->not_before);
            } else if (f->nactive < f->o.parallel) {
                struct fetch_req *r = x->r;
                start(f, x);
                finished += r->done;
            }
        }
        x = nx;
    }
    return finished;
}

static int reap(struct fetcher *f)
{
    int finished = 0, left;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(f->m, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (!x)
            continue;
        struct fetch_req *r = x->r;
        on_done(f, x, msg->data.result);
        finished += r->done;
    }
    return finished;
}

int fetcher_run(struct fetcher *f, const int *fds, int nfds, int timeout_ms)
{
    double deadline = mono_now() + timeout_ms / 1000.0;
    struct curl_waitfd wf[8];
    if (nfds > 8)
        nfds = 8;
    for (;;) {
        double next;
        int finished = start_due(f, &next);
        int running = 0;
        if (f->nactive > 0)
            curl_multi_perform(f->m, &running);
        finished += reap(f);
        if (finished)
            return 1;
        double now = mono_now(), left = deadline - now;
        if (left <= 0)
            return 0;
        double wait = fmin(left, next - now);
        if (wait < 0)
            wait = 0;
        for (int i = 0; i < nfds; i++)
            wf[i] = (struct curl_waitfd){fds[i], CURL_WAIT_POLLIN, 0};
        int numfds = 0;
        curl_multi_poll(f->m, wf, (unsigned)nfds, (int)ceil(wait * 1000), &numfds);
        for (int i = 0; i < nfds; i++)
            if (wf[i].revents)
                return 2;
    }
}
