#include "daemon/plan/runset.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The range "{A..B}" in s: its start and end (one past '}'), bounds and
 * width; 0 none, 1 found, -1 malformed. */
static int find_range(const char *s, const char **lo, const char **hi, long long *a, long long *b, int *width)
{
    for (const char *p = strchr(s, '{'); p; p = strchr(p + 1, '{')) {
        const char *dots = strstr(p, ".."), *close = strchr(p, '}');
        if (!close || !dots || dots > close)
            continue; /* {step} and other braces */
        char *end = NULL;
        errno = 0;
        *a = strtoll(p + 1, &end, 10);
        if (end != dots || p[1] < '0' || p[1] > '9' || errno)
            return -1;
        *b = strtoll(dots + 2, &end, 10);
        if (end != close || dots[2] < '0' || dots[2] > '9' || errno)
            return -1;
        *width = p[1] == '0' && dots - p - 1 > 1 ? (int)(dots - p - 1) : 0;
        *lo = p;
        *hi = close + 1;
        return 1;
    }
    return 0;
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

void runset_free(struct runset *r)
{
    free(r->source);
    free(r->name);
    r->source = NULL;
    r->name = NULL;
    r->n = 0;
}

int runset_expand(const char *source, struct runset *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    const char *lo = NULL, *hi = NULL;
    long long a = 0, b = 0;
    int width = 0, f = find_range(source, &lo, &hi, &a, &b, &width);
    if (f < 0)
        return err_set(e, ERR_INVALID, source, "a range in a source is {A..B} with decimal numbers A <= B");
    if (f == 0)
        return 0;
    const char *lo2, *hi2;
    long long a2, b2;
    int w2;
    if (find_range(hi, &lo2, &hi2, &a2, &b2, &w2) != 0)
        return err_set(e, ERR_INVALID, source, "one range per source");
    if (a > b || b - a >= RUNSET_MAX)
        return err_set(e, ERR_INVALID, source, "the range {%lld..%lld} must give 1 to %d values", a, b, RUNSET_MAX);
    /* the path component around the range names the runs */
    const char *scheme = strstr(source, "://"), *base = scheme ? scheme + 3 : source;
    const char *cs = lo, *ce = hi;
    while (cs > base && cs[-1] != '/')
        cs--;
    while (*ce && *ce != '/')
        ce++;
    int n = (int)(b - a + 1);
    out->source = calloc((size_t)n, sizeof *out->source);
    out->name = calloc((size_t)n, sizeof *out->name);
    if (!out->source || !out->name) {
        runset_free(out);
        return err_set(e, ERR_NOMEM, source, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        char v[32];
        snprintf(v, sizeof v, "%0*lld", width, a + i);
        int ns = snprintf(out->source[i], sizeof out->source[i], "%.*s%s%s", (int)(lo - source), source, v, hi);
        int nn = snprintf(out->name[i], sizeof out->name[i], "%.*s%s%.*s", (int)(lo - cs), cs, v, (int)(ce - hi), hi);
        if (ns < 0 || (size_t)ns >= sizeof out->source[i] || nn <= 0 || (size_t)nn >= sizeof out->name[i]) {
            runset_free(out);
            return err_set(e, ERR_INVALID, source, "a source or run name from this range is too long");
        }
        for (const char *c = out->name[i]; *c; c++)
            if (!name_char(*c)) {
                err_set(e, ERR_INVALID, source, "'%s' (the path component with the range) is not a run name",
                        out->name[i]);
                runset_free(out);
                return ERR_INVALID;
            }
    }
    out->n = n;
    return n;
}
