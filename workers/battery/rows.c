#include "workers/battery/rows.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void rows_init(struct rows *r)
{
    memset(r, 0, sizeof *r);
}

void rows_free(struct rows *r)
{
    if (!r)
        return;
    free(r->buf);
    rows_init(r);
}

void rows_begin(struct rows *r, const char *item, int version)
{
    r->len = 0;
    r->n = 0;
    r->item = item;
    r->version = version;
}

size_t rows_format_value(char *buf, size_t n, double v)
{
    int k;
    if (isnan(v))
        k = snprintf(buf, n, "NaN");
    else if (isinf(v))
        k = snprintf(buf, n, "%s", v < 0 ? "-Infinity" : "Infinity");
    else
        k = snprintf(buf, n, "%.17g", v);
    if (k < 0)
        return 0;
    return (size_t)k < n ? (size_t)k : n - 1; /* truncated (n too small) */
}

/* Bytes `s` takes once escaped for COPY text. */
static size_t escaped_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += strchr("\\\b\f\n\r\t\v", *s) ? 2 : 1;
    return n;
}

/* Write `s` escaped for COPY text at dst; returns the bytes written.
 * PostgreSQL, "COPY ... text format": backslash and the characters below
 * are written as backslash sequences. */
static size_t escape_into(char *dst, const char *s)
{
    static const char from[] = "\\\b\f\n\r\t\v", to[] = "\\bfnrtv";
    size_t n = 0;
    for (; *s; s++) {
        const char *p = strchr(from, *s);
        if (p) {
            dst[n++] = '\\';
            dst[n++] = to[p - from];
        } else {
            dst[n++] = *s;
        }
    }
    return n;
}

int rows_add(struct rows *r, const char *metric, int layer, int head, int idx,
             double value, struct err *e)
{
    if (!r->item)
        return err_set(e, ERR_INVALID, metric, "row added before rows_begin");
    if (!metric || !*metric)
        return err_set(e, ERR_INVALID, r->item, "row without a metric name");
    if (layer < -1 || head < -1 || idx < -1)
        return err_set(e, ERR_INVALID, metric, "index below -1 (layer %d head %d idx %d)",
                       layer, head, idx);
    /* item \t version \t metric tail \n, tail = \t layer \t head \t idx \t value */
    char ver[16], tail[3 * 12 + 4 + ROWS_VALUE_MAX];
    int vk = snprintf(ver, sizeof ver, "%d", r->version);
    int tk = snprintf(tail, sizeof tail, "\t%d\t%d\t%d\t", layer, head, idx);
    if (vk < 0 || tk < 0)
        return err_set(e, ERR_INVALID, metric, "cannot format row");
    size_t vlen = (size_t)vk, tlen = (size_t)tk;
    tlen += rows_format_value(tail + tlen, sizeof tail - tlen, value);
    size_t need = escaped_len(r->item) + 1 + vlen + 1 + escaped_len(metric) + tlen + 1;
    if (r->len + need > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + need)
            cap *= 2;
        char *p = realloc(r->buf, cap);
        if (!p)
            return err_set(e, ERR_NOMEM, r->item, "out of memory buffering rows");
        r->buf = p;
        r->cap = cap;
    }
    char *d = r->buf + r->len;
    d += escape_into(d, r->item);
    *d++ = '\t';
    memcpy(d, ver, vlen);
    d += vlen;
    *d++ = '\t';
    d += escape_into(d, metric);
    memcpy(d, tail, tlen);
    d += tlen;
    *d++ = '\n';
    r->len = (size_t)(d - r->buf);
    r->n++;
    return 0;
}

int rows_write(const struct rows *r, FILE *f, struct err *e)
{
    if (r->len && fwrite(r->buf, 1, r->len, f) != r->len)
        return err_set(e, ERR_IO, r->item, "cannot write rows");
    return 0;
}

/* ---- the status file ---- */

/* Write one formatted line with a single write(2): a reader never sees
 * half a line of a worker that is still running, and a line written is
 * in the file even if the worker is killed a moment later. */
static int status_line(struct rows_status *s, struct err *e, const char *fmt, ...) CK_PRINTF(3, 4);
static int status_line(struct rows_status *s, struct err *e, const char *fmt, ...)
{
    if (s->fd < 0)
        return 0;
    char line[ERR_MSG_MAX + ERR_CTX_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return err_set(e, ERR_INVALID, "status", "cannot format a status line");
    size_t len = (size_t)n < sizeof line - 1 ? (size_t)n : sizeof line - 2;
    for (size_t i = 0; i < len; i++) /* one line: messages lose their control characters */
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = ' ';
    line[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t w = write(s->fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return err_set(e, ERR_IO, "status", "cannot write the status file: %s",
                           w < 0 ? strerror(errno) : "nothing written");
        off += (size_t)w;
    }
    return 0;
}

int rows_status_open(struct rows_status *s, const char *path, struct err *e)
{
    s->fd = -1;
    if (!path)
        return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, ERR_IO, path, "cannot create the status file: %s", strerror(errno));
    s->fd = fd;
    int rc = status_line(s, e, "%s\t%d", ROWS_STATUS_MAGIC, ROWS_STATUS_VERSION);
    if (rc < 0)
        rows_status_close(s);
    return rc;
}

int rows_status_started(struct rows_status *s, const char *item, int version, struct err *e)
{
    return status_line(s, e, "started\t%s\t%d", item, version);
}

int rows_status_done(struct rows_status *s, const char *item, int version, size_t rows,
                     struct err *e)
{
    return status_line(s, e, "done\t%s\t%d\t%zu", item, version, rows);
}

int rows_status_failed(struct rows_status *s, const char *item, int version, const char *why,
                       struct err *e)
{
    char msg[ERR_MSG_MAX + ERR_CTX_MAX + 8];
    snprintf(msg, sizeof msg, "%s", why && *why ? why : "unknown error");
    for (char *p = msg; *p; p++) /* the message is the last field: no tab inside */
        if (*p == '\t')
            *p = ' ';
    return status_line(s, e, "failed\t%s\t%d\t%s", item, version, msg);
}

void rows_status_close(struct rows_status *s)
{
    if (s && s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}
