#include "daemon/plan/source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static int push(long long **v, int *n, int *cap, long long x, struct err *e)
{
    if (*n >= SCHEDULE_MAX_STEPS)
        return err_set(e, ERR_INVALID, "schedule", "more than %d steps", SCHEDULE_MAX_STEPS);
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 256;
        long long *p = realloc(*v, (size_t)nc * sizeof *p);
        if (!p)
            return err_set(e, ERR_NOMEM, "schedule", "out of memory");
        *v = p;
        *cap = nc;
    }
    (*v)[(*n)++] = x;
    return 0;
}

static int parse_ll(const char *s, const char *end, long long *out)
{
    if (s == end)
        return -1;
    char buf[32];
    size_t len = (size_t)(end - s);
    if (len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *ep;
    errno = 0;
    long long v = strtoll(buf, &ep, 10);
    if (*ep || errno || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int push_pythia(long long **v, int *n, int *cap, struct err *e)
{
    int rc = push(v, n, cap, 0, e);
    for (long long s = 1; rc == 0 && s <= 512; s *= 2)
        rc = push(v, n, cap, s, e);
    for (long long s = 1000; rc == 0 && s <= 143000; s += 1000)
        rc = push(v, n, cap, s, e);
    return rc;
}

static int is_word(const char *p, const char *end, const char *w)
{
    size_t len = strlen(w);
    return (size_t)(end - p) == len && memcmp(p, w, len) == 0;
}

int schedule_uses_refs(const char *spec)
{
    const char *p = spec;
    while (p && *p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        if (is_word(p, end, SCHEDULE_REFS))
            return 1;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int schedule_parse(const char *spec, long long **steps, int *n, struct err *e)
{
    return schedule_parse_refs(spec, NULL, -1, steps, n, e);
}

int schedule_parse_refs(const char *spec, const long long *refs, int nrefs, long long **steps, int *n,
                        struct err *e)
{
    long long *v = NULL;
    int cnt = 0, cap = 0, rc = 0;
    *steps = NULL;
    *n = 0;
    if (!spec || !*spec)
        return err_set(e, ERR_INVALID, "schedule", "empty schedule");
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *c1 = memchr(p, ':', (size_t)(end - p));
        long long a, b, stride;
        if (is_word(p, end, "pythia")) {
            if ((rc = push_pythia(&v, &cnt, &cap, e)) < 0)
                goto out;
        } else if (is_word(p, end, SCHEDULE_REFS)) {
            if (nrefs < 0) {
                rc = err_set(e, ERR_INVALID, "schedule",
                             "'refs' means the step<N> branches of an hf:// source; they were not looked up");
                goto out;
            }
            for (int i = 0; i < nrefs; i++)
                if ((rc = push(&v, &cnt, &cap, refs[i], e)) < 0)
                    goto out;
        } else if (!c1) {
            if (parse_ll(p, end, &a) < 0) {
                rc = err_set(e, ERR_INVALID, "schedule", "'%.*s' is not a step number", (int)(end - p), p);
                goto out;
            }
            if ((rc = push(&v, &cnt, &cap, a, e)) < 0)
                goto out;
        } else {
            const char *c2 = memchr(c1 + 1, ':', (size_t)(end - c1 - 1));
            if (!c2 || parse_ll(p, c1, &a) < 0 || parse_ll(c1 + 1, c2, &b) < 0 ||
                parse_ll(c2 + 1, end, &stride) < 0 || stride <= 0 || b < a) {
                rc = err_set(e, ERR_INVALID, "schedule", "'%.*s' is not a range START:STOP:STRIDE",
                             (int)(end - p), p);
                goto out;
            }
            for (long long s = a; s <= b; s += stride)
                if ((rc = push(&v, &cnt, &cap, s, e)) < 0)
                    goto out;
        }
        if (*end && !end[1]) { /* "1,2," - like "1,,2", an empty step */
            rc = err_set(e, ERR_INVALID, "schedule", "'%s' ends with a comma", spec);
            goto out;
        }
        p = *end ? end + 1 : end;
    }
    if (cnt > 1)
        qsort(v, (size_t)cnt, sizeof *v, cmp_ll);
    int u = 0;
    for (int i = 0; i < cnt; i++)
        if (i == 0 || v[i] != v[u - 1])
            v[u++] = v[i];
    cnt = u;
    if (!cnt) {
        rc = err_set(e, ERR_INVALID, "schedule", "no steps");
        goto out;
    }
out:
    if (rc < 0) {
        free(v);
        return rc;
    }
    *steps = v;
    *n = cnt;
    return 0;
}

int source_check(const char *source, struct err *e)
{
    if (!source || !*source)
        return err_set(e, ERR_INVALID, "source", "empty source");
    const char *first = strstr(source, "{step}");
    if (first && strstr(first + 1, "{step}"))
        return err_set(e, ERR_INVALID, source, "{step} may appear only once");
    if (strncmp(source, "file://", 7) == 0 || source[0] == '/' || source[0] == '.' ||
        strncmp(source, "http://", 7) == 0 || strncmp(source, "https://", 8) == 0 ||
        strncmp(source, "hf://", 5) == 0)
        return 0;
    return err_set(e, ERR_INVALID, source,
                   "unknown source: use file:///dir/step{step}, a path, http(s)://… or hf://ORG/NAME");
}

int source_checkpoint_url(const char *source, long long step, char *out, size_t n, struct err *e)
{
    int rc = source_check(source, e);
    if (rc < 0)
        return rc;
    const char *at = strstr(source, "{step}");
    int w;
    if (at)
        w = snprintf(out, n, "%.*s%lld%s", (int)(at - source), source, step, at + 6);
    else {
        size_t len = strlen(source);
        w = snprintf(out, n, "%s%sstep%lld", source, len && source[len - 1] == '/' ? "" : "/", step);
    }
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, source, "checkpoint URL too long");
    return 0;
}

int source_local_path(const char *url, char *out, size_t n, struct err *e)
{
    const char *p;
    if (strncmp(url, "file://", 7) == 0)
        p = url + 7;
    else if (url[0] == '/' || url[0] == '.')
        p = url;
    else
        return err_set(e, ERR_UNSUPPORTED, url, "not a local checkpoint (network sources are fetched first)");
    if (!*p)
        return err_set(e, ERR_INVALID, url, "empty path");
    int w = snprintf(out, n, "%s", p);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, url, "path too long");
    /* "dir/" and "dir" are the same checkpoint directory */
    size_t len = strlen(out);
    while (len > 1 && out[len - 1] == '/')
        out[--len] = '\0';
    return 0;
}
