/*
 * battery_golden.h - test helpers for battery items: run an item, parse its
 * COPY rows back, and compare them with a golden JSON file written by a
 * reference script in tests/reference/ ({"rows": [[metric, layer, head,
 * idx, value], ...]}).  Header-only (static inline), for the cmocka
 * programs of the battery items; include after <cmocka.h>.
 */
#ifndef CKPTD_TESTS_BATTERY_GOLDEN_H
#define CKPTD_TESTS_BATTERY_GOLDEN_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"

struct grow {
    char metric[40];
    int layer, head, idx;
    double value;
};

/* The rows of r (COPY text) as an array the caller frees; *n rows.  Fails
 * the test on a malformed row or a row of another item. */
static inline struct grow *grows_parse(const struct rows *r, const char *item, size_t *n)
{
    struct grow *out = calloc(r->n ? r->n : 1, sizeof *out);
    assert_non_null(out);
    size_t k = 0;
    const char *p = r->buf, *end = r->buf + r->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        char line[256], it[40], val[64];
        int ver;
        assert_true((size_t)(nl - p) < sizeof line);
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        struct grow *w = &out[k];
        if (sscanf(line, "%39[^\t]\t%d\t%39[^\t]\t%d\t%d\t%d\t%63s", it, &ver, w->metric,
                   &w->layer, &w->head, &w->idx, val) != 7)
            fail_msg("row '%s' does not have 7 fields", line);
        assert_string_equal(it, item);
        char *e = NULL;
        w->value = strtod(val, &e);
        assert_true(*e == '\0');
        k++;
        p = nl + 1;
    }
    assert_int_equal(k, r->n);
    *n = k;
    return out;
}

/* Run `it` on c and parse its rows; fails the test if the item fails. */
static inline struct grow *grows_run(const struct battery_item *it, const struct battery_ctx *c,
                                     size_t *n)
{
    struct rows r;
    rows_init(&r);
    struct err e;
    if (battery_run_item(it, c, &r, &e) < 0)
        fail_msg("%s failed: %s", it->name, err_str(&e));
    struct grow *g = grows_parse(&r, it->name, n);
    rows_free(&r);
    return g;
}

/* The row (metric, layer, head, idx), or NULL; a duplicate fails the test. */
static inline const struct grow *grows_find(const struct grow *g, size_t n, const char *metric,
                                            int layer, int head, int idx)
{
    const struct grow *hit = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(g[i].metric, metric) == 0 && g[i].layer == layer && g[i].head == head &&
            g[i].idx == idx) {
            if (hit)
                fail_msg("duplicate row %s %d %d %d", metric, layer, head, idx);
            hit = &g[i];
        }
    return hit;
}

/* Tolerance of one metric: |got - want| <= abs + rel |want|. */
struct gtol {
    const char *metric; /* NULL ends the list; "*" matches every metric */
    double abs, rel;
};

/* Compare the rows with the golden file: the same set of rows, each value
 * within the tolerance of its metric (the first entry of tol naming it, or
 * "*").  Prints the largest absolute and relative deviation per metric (the
 * relative one over rows whose reference is not 0) and returns the largest
 * relative one. */
static inline double grows_compare_golden(const struct grow *g, size_t n, const char *path,
                                          const struct gtol *tol)
{
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc)
        fail_msg("%s: %s (line %d)", path, je.text, je.line);
    json_t *rows = json_object_get(doc, "rows");
    assert_true(json_is_array(rows));
    if (json_array_size(rows) != n)
        fail_msg("%s: %zu golden rows, the item wrote %zu", path, json_array_size(rows), n);
    enum { MAXM = 16 };
    char names[MAXM][40];
    double worst_abs[MAXM], worst_rel[MAXM], worst = 0.0;
    int nm = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(rows, i);
        const char *metric = json_string_value(json_array_get(r, 0));
        assert_non_null(metric);
        int layer = (int)json_integer_value(json_array_get(r, 1));
        int head = (int)json_integer_value(json_array_get(r, 2));
        int idx = (int)json_integer_value(json_array_get(r, 3));
        double want = json_number_value(json_array_get(r, 4));
        const struct grow *got = grows_find(g, n, metric, layer, head, idx);
        if (!got)
            fail_msg("%s: no row %s %d %d %d", path, metric, layer, head, idx);
        const struct gtol *t = tol;
        while (t->metric && strcmp(t->metric, metric) != 0 && strcmp(t->metric, "*") != 0)
            t++;
        if (!t->metric)
            fail_msg("no tolerance for %s", metric);
        double d = fabs(got->value - want), rel = want != 0.0 ? d / fabs(want) : 0.0;
        if (!(d <= t->abs + t->rel * fabs(want)))
            fail_msg("%s: %s %d %d %d = %.17g, reference %.17g (|diff| %.3g)", path, metric,
                     layer, head, idx, got->value, want, d);
        int k = 0;
        while (k < nm && strcmp(names[k], metric) != 0)
            k++;
        if (k == nm && nm < MAXM) {
            snprintf(names[nm], sizeof names[nm], "%s", metric);
            worst_abs[nm] = worst_rel[nm] = 0.0;
            nm++;
        }
        if (k < nm) {
            worst_abs[k] = fmax(worst_abs[k], d);
            worst_rel[k] = fmax(worst_rel[k], rel);
        }
        worst = fmax(worst, rel);
    }
    for (int k = 0; k < nm; k++)
        printf("%s: %-24s max |diff| %.3g, max rel %.3g\n", path, names[k], worst_abs[k],
               worst_rel[k]);
    json_decref(doc);
    return worst;
}

#endif
