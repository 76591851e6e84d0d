/*
 * test_battery - the battery registry, the row writer and the status
 * file, the `loss` and
 * `weights` items, the default eval set and tokens_read_file.
 *
 * Numbers are checked against independent computations:
 *   weights  matrices set to closed forms (diagonal, rank-1 u v^T, stacked
 *            identities) whose Frobenius and spectral norms (relative
 *            tolerance 1e-9), effective and stable ranks (1e-9; 1e-5 for
 *            rank-deficient matrices, whose zero singular values come out
 *            near 1e-8 sigma_max from the Gram route) and per-head W_QK /
 *            W_OV norms are known.  total_norm against the sum of squares
 *            of the model's whole weight block.  On two golden fixtures,
 *            every row against tests/reference/weights_ref.py (numpy SVD
 *            in float64): relative 1e-9 (observed <= 6e-12).
 *   loss     against gptneox_forward + gptneox_loss on the full batch at
 *            once (the item runs it 8 sequences per forward);
 *            |diff| <= 1e-6 * max(1, |ref|).
 *   rng      splitmix64 against the first outputs of Vigna's reference
 *            code for seed 0.
 */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/lib/battery_golden.h"
#include "workers/battery/battery.h"
#include "workers/battery/probe_set.h"
#include "common/rng.h"
#include "workers/battery/rows.h"
#include "workers/model/gptneox.h"
#include "workers/text/tokens.h"

/* ---- parsing rows back ---- */

struct row {
    char item[32];
    int version;
    char metric[32];
    int layer, head, idx;
    double value;
};

/* Parse the COPY text of r into rows (caller frees); checks 7 fields. */
static struct row *parse_rows(const struct rows *r, size_t *n)
{
    struct row *out = calloc(r->n ? r->n : 1, sizeof *out);
    assert_non_null(out);
    size_t k = 0;
    const char *p = r->buf, *end = r->buf + r->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        char line[256], val[64];
        assert_true((size_t)(nl - p) < sizeof line);
        memcpy(line, p, (size_t)(nl - p));
        line[nl - p] = '\0';
        struct row *w = &out[k];
        int got = sscanf(line, "%31[^\t]\t%d\t%31[^\t]\t%d\t%d\t%d\t%63s", w->item, &w->version,
                         w->metric, &w->layer, &w->head, &w->idx, val);
        if (got != 7)
            fail_msg("row '%s' does not have 7 fields", line);
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

static const struct row *find_row(const struct row *rows, size_t n, const char *metric, int layer,
                                  int head, int idx)
{
    const struct row *hit = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(rows[i].metric, metric) == 0 && rows[i].layer == layer &&
            rows[i].head == head && rows[i].idx == idx) {
            if (hit)
                fail_msg("duplicate row %s %d %d %d", metric, layer, head, idx);
            hit = &rows[i];
        }
    return hit;
}

static void assert_rel(double got, double want, double tol, const char *what)
{
    if (!(fabs(got - want) <= tol * fmax(1e-300, fabs(want))))
        fail_msg("%s: got %.17g, expected %.17g (rel diff %g > %g)", what, got, want,
                 fabs(got - want) / fabs(want), tol);
}

/* ---- the registry ---- */

static int plain_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

static void test_registry(void **state)
{
    (void)state;
    assert_true(battery_count() >= 2);
    assert_null(battery_get(battery_count()));
    assert_null(battery_find("no_such_item"));
    for (size_t i = 0; i < battery_count(); i++) {
        const struct battery_item *it = battery_get(i);
        assert_non_null(it);
        if (!plain_name(it->name))
            fail_msg("item name '%s' is not [a-z0-9_]+", it->name);
        if (it->version <= 0)
            fail_msg("item %s: version %d", it->name, it->version);
        assert_ptr_equal(battery_find(it->name), it);
        for (size_t j = 0; j < i; j++)
            if (strcmp(battery_get(j)->name, it->name) == 0)
                fail_msg("item name %s twice", it->name);
        assert_non_null(it->run);
        assert_true(it->nmetrics > 0);
        assert_int_equal(it->needs & ~(BATTERY_NEEDS(BATTERY_NEED_COUNT) - 1), 0);
        for (size_t j = 0; j < it->nmetrics; j++) {
            const struct metric_def *md = &it->metrics[j];
            if (!plain_name(md->name))
                fail_msg("%s: metric name '%s' is not [a-z0-9_]+", it->name, md->name);
            if (!md->unit || !*md->unit || !md->description || !*md->description)
                fail_msg("%s.%s: no unit or description", it->name, md->name);
            if (!md->layer || !md->head || !md->idx)
                fail_msg("%s.%s: a NULL index meaning", it->name, md->name);
            assert_ptr_equal(battery_metric(it, md->name), md);
            for (size_t k = 0; k < j; k++)
                if (strcmp(it->metrics[k].name, md->name) == 0)
                    fail_msg("%s: metric %s twice", it->name, md->name);
        }
    }
    for (int k = 0; k < BATTERY_NEED_COUNT; k++)
        assert_non_null(battery_need_name((enum battery_need)k));
    assert_null(battery_need_name(BATTERY_NEED_COUNT));
    assert_non_null(battery_find("loss"));
    assert_non_null(battery_find("weights"));
}

/* An item that writes a metric it did not declare: the run wrapper must
 * refuse it and drop the rows. */
static const struct metric_def liar_metrics[] = {{"declared", "1", "d", "", "", ""}};
static int liar_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    (void)c;
    int rc = rows_add(out, "declared", -1, -1, -1, 1.0, e);
    return rc < 0 ? rc : rows_add(out, "undeclared", -1, -1, -1, 2.0, e);
}
static const struct battery_item liar = {
    .name = "liar", .version = 1, .metrics = liar_metrics, .nmetrics = 1, .run = liar_run};

static void test_run_checks_metrics(void **state)
{
    (void)state;
    struct rows r;
    rows_init(&r);
    struct battery_ctx c = {0};
    struct err e;
    assert_int_equal(battery_run_item(&liar, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "undeclared"));
    assert_non_null(strstr(e.msg, "item liar v1"));
    assert_int_equal(r.len, 0);
    assert_int_equal(r.n, 0);
    /* an item needing eval tokens without any */
    assert_int_equal(battery_run_item(&battery_item_loss, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "eval tokens"));
    rows_free(&r);
    rows_free(NULL);
}

/* ---- the row writer ---- */

static void expect_format(double v, const char *want)
{
    char buf[ROWS_VALUE_MAX];
    rows_format_value(buf, sizeof buf, v);
    if (strcmp(buf, want) != 0)
        fail_msg("value formatted as '%s', expected '%s'", buf, want);
}

static void test_rows_format(void **state)
{
    (void)state;
    expect_format(NAN, "NaN");
    expect_format(-NAN, "NaN");
    expect_format(INFINITY, "Infinity");
    expect_format(-INFINITY, "-Infinity");
    expect_format(0.0, "0");
    expect_format(-0.0, "-0");
    expect_format(1.0, "1");
    expect_format(-2.5, "-2.5");
    expect_format(0.1, "0.10000000000000001");
    expect_format(1e300, "1.0000000000000001e+300");
    /* every finite value reads back as the same double, -0 included */
    double vals[] = {-0.0, DBL_MIN, DBL_MAX, -DBL_MAX, 4.9406564584124654e-324, 1.0 / 3.0,
                     M_PI, 4.891470732433455, 123456789.123456789};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        char buf[ROWS_VALUE_MAX];
        size_t n = rows_format_value(buf, sizeof buf, vals[i]);
        assert_int_equal(n, strlen(buf));
        double back = strtod(buf, NULL);
        if (memcmp(&back, &vals[i], sizeof back) != 0)
            fail_msg("%s does not read back as %.17g", buf, vals[i]);
    }
    uint64_t s = 7;
    for (int i = 0; i < 10000; i++) {
        uint64_t bits = rng_next(&s);
        double v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v))
            continue;
        char buf[ROWS_VALUE_MAX];
        rows_format_value(buf, sizeof buf, v);
        double back = strtod(buf, NULL);
        if (memcmp(&back, &v, sizeof v) != 0)
            fail_msg("%s does not read back as %a", buf, v);
    }
}

static void test_rows_copy_text(void **state)
{
    (void)state;
    struct rows r;
    rows_init(&r);
    struct err e;
    assert_int_equal(rows_add(&r, "m", -1, -1, -1, 1.0, &e), ERR_INVALID); /* no begin */
    rows_begin(&r, "it\\em", 3);
    assert_int_equal(rows_add(&r, "plain", 2, -1, 7, -0.0, &e), 0);
    assert_int_equal(rows_add(&r, "a\tb\nc\\d\re\bf\fg\vh", -1, 4, -1, NAN, &e), 0);
    assert_int_equal(rows_add(&r, "x", -1, -1, -1, INFINITY, &e), 0);
    assert_int_equal(rows_add(&r, "\\.", -1, -1, -1, -INFINITY, &e), 0);
    const char *want = "it\\\\em\t3\tplain\t2\t-1\t7\t-0\n"
                       "it\\\\em\t3\ta\\tb\\nc\\\\d\\re\\bf\\fg\\vh\t-1\t4\t-1\tNaN\n"
                       "it\\\\em\t3\tx\t-1\t-1\t-1\tInfinity\n"
                       "it\\\\em\t3\t\\\\.\t-1\t-1\t-1\t-Infinity\n";
    assert_int_equal(r.n, 4);
    assert_int_equal(r.len, strlen(want));
    assert_memory_equal(r.buf, want, r.len);
    /* rejected rows leave the buffer as it was */
    size_t len = r.len;
    assert_int_equal(rows_add(&r, "m", -2, -1, -1, 1.0, &e), ERR_INVALID);
    assert_int_equal(rows_add(&r, "m", -1, -1, -3, 1.0, &e), ERR_INVALID);
    assert_int_equal(rows_add(&r, "", -1, -1, -1, 1.0, &e), ERR_INVALID);
    assert_int_equal(r.len, len);
    assert_int_equal(r.n, 4);
    /* rows_write gives the same bytes */
    char *mem = NULL;
    size_t msize = 0;
    FILE *f = open_memstream(&mem, &msize);
    assert_non_null(f);
    assert_int_equal(rows_write(&r, f, &e), 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(msize, strlen(want));
    assert_memory_equal(mem, want, msize);
    free(mem);
    /* begin drops the buffer; many rows grow it */
    rows_begin(&r, "big", 1);
    assert_int_equal(r.len, 0);
    for (int i = 0; i < 20000; i++)
        assert_int_equal(rows_add(&r, "v", -1, -1, i, i * 0.5, &e), 0);
    assert_int_equal(r.n, 20000);
    size_t n = 0;
    struct row *rows = parse_rows(&r, &n);
    for (int i = 0; i < 20000; i++) {
        assert_int_equal(rows[i].idx, i);
        assert_true(rows[i].value == i * 0.5);
        assert_string_equal(rows[i].item, "big");
    }
    free(rows);
    rows_free(&r);
}

/* The status file: one line per event, messages on one line. */
static void test_rows_status(void **state)
{
    (void)state;
    struct err e;
    struct rows_status st;
    char path[64];
    snprintf(path, sizeof path, "/tmp/ckptd-status-%d", (int)getpid());
    assert_int_equal(rows_status_open(&st, NULL, &e), 0); /* nowhere: no-ops */
    assert_int_equal(st.fd, -1);
    assert_int_equal(rows_status_done(&st, "loss", 2, 5, &e), 0);
    rows_status_close(&st);
    assert_int_equal(rows_status_open(&st, path, &e), 0);
    assert_int_equal(rows_status_started(&st, "loss", 2, &e), 0);
    assert_int_equal(rows_status_done(&st, "loss", 2, 129, &e), 0);
    assert_int_equal(rows_status_failed(&st, "task", 1, "item task v1: no\ttask.json\nhere\r", &e), 0);
    assert_int_equal(rows_status_failed(&st, "lens", 1, NULL, &e), 0);
    rows_status_close(&st);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    assert_string_equal(buf, "ckpt-worker-status\t1\nstarted\tloss\t2\ndone\tloss\t2\t129\n"
                             "failed\ttask\t1\titem task v1: no task.json here \n"
                             "failed\tlens\t1\tunknown error\n");
    /* a file that cannot be made: ERR_IO naming it */
    assert_int_equal(rows_status_open(&st, "/nonexistent/dir/status", &e), ERR_IO);
    assert_non_null(strstr(err_str(&e), "/nonexistent/dir/status"));
    unlink(path);
}

/* ---- rng and the default eval set ---- */

static void test_rng_and_eval_default(void **state)
{
    (void)state;
    uint64_t s = 0;
    assert_true(rng_next(&s) == 0xe220a8397b1dcdafull);
    assert_true(rng_next(&s) == 0x6e789e6aa1b965f4ull);
    assert_true(rng_next(&s) == 0x06c45d188009454full);
    s = 1;
    for (int i = 0; i < 100000; i++) {
        float x = rng_symmetric(&s);
        assert_true(x >= -1.0f && x < 1.0f);
        assert_true(rng_below(&s, 7) < 7);
    }
    /* rng_below is the documented multiply-shift */
    s = 5;
    uint64_t s2 = 5;
    assert_int_equal(rng_below(&s, 1000), (uint32_t)(((rng_next(&s2) >> 32) * 1000) >> 32));

    int *a = NULL, *b = NULL, B, T, B2, T2;
    struct err e;
    assert_int_equal(battery_eval_default(&a, &B, &T, 50, 2048, 0, &e), 0);
    assert_int_equal(B, BATTERY_EVAL_SEQS);
    assert_int_equal(T, BATTERY_EVAL_LEN);
    int seen[50] = {0};
    uint64_t st = 0;
    for (int i = 0; i < B * T; i++) {
        assert_true(a[i] >= 0 && a[i] < 50);
        assert_int_equal(a[i], (int)rng_below(&st, 50)); /* row-major from the seed */
        seen[a[i]] = 1;
    }
    for (int v = 0; v < 50; v++)
        assert_true(seen[v]);
    assert_int_equal(battery_eval_default(&b, &B2, &T2, 50, 2048, 0, &e), 0);
    assert_memory_equal(a, b, (size_t)B * T * sizeof *a);
    free(b);
    assert_int_equal(battery_eval_default(&b, &B2, &T2, 50, 2048, 1, &e), 0);
    assert_memory_not_equal(a, b, (size_t)B * T * sizeof *a);
    free(b);
    /* capped at max_position_embeddings */
    assert_int_equal(battery_eval_default(&b, &B2, &T2, 50, 40, 0, &e), 0);
    assert_int_equal(T2, 40);
    free(b);
    assert_int_equal(battery_eval_default(&b, &B2, &T2, 0, 40, 0, &e), ERR_INVALID);
    assert_null(b);
    free(a);
}

/* ---- weights ---- */

static struct gptneox *make_model(int tied, int V, int C, int L, int NH, int F, int maxpos)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, V, C, L, NH, F);
    cfg.tie_word_embeddings = tied;
    cfg.max_positions = maxpos;
    struct gptneox *m = NULL;
    struct err e;
    if (gptneox_create(&m, &cfg, &e) < 0)
        fail_msg("gptneox_create: %s", err_str(&e));
    gptneox_init_random(m, 42, 0.2f);
    return m;
}

/* a (M,N) = diag(d) in the top-left, zeros elsewhere */
static void set_diag(float *a, int M, int N, const float *d, int nd)
{
    memset(a, 0, (size_t)M * N * sizeof *a);
    for (int i = 0; i < nd; i++)
        a[(size_t)i * N + i] = d[i];
}

/* a (M,N) = u v^T with u_i = scale (i+1 - M/2), v_j = (j%3) - 0.5 + j/N.
 * Its only non-zero singular value is |u| |v|, which for rank 1 equals the
 * Frobenius norm; returned as computed from the stored float entries. */
static double set_rank1(float *a, int M, int N, double scale)
{
    double fro = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float x = (float)(scale * (i + 1 - M / 2.0) * ((j % 3) - 0.5 + (double)j / N));
            a[(size_t)i * N + j] = x;
            fro += (double)x * x;
        }
    return sqrt(fro);
}

static double sumsq_d(const float *d, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)d[i] * d[i];
    return s;
}

static void check_matrix(const struct row *rows, size_t n, int layer, int idx, double fro,
                         double spec, const char *what)
{
    const struct row *f = find_row(rows, n, "frobenius_norm", layer, -1, idx);
    const struct row *s = find_row(rows, n, "spectral_norm", layer, -1, idx);
    if (!f || !s)
        fail_msg("%s: missing rows", what);
    char buf[128];
    snprintf(buf, sizeof buf, "%s frobenius", what);
    assert_rel(f->value, fro, 1e-9, buf);
    snprintf(buf, sizeof buf, "%s spectral", what);
    assert_rel(s->value, spec, 1e-9, buf);
}

/* effective and stable rank of matrix (layer, idx) */
static void check_ranks(const struct row *rows, size_t n, int layer, int idx, double erank,
                        double srank, double tol, const char *what)
{
    const struct row *er = find_row(rows, n, "effective_rank", layer, -1, idx);
    const struct row *sr = find_row(rows, n, "stable_rank", layer, -1, idx);
    if (!er || !sr)
        fail_msg("%s: missing rank rows", what);
    char buf[128];
    snprintf(buf, sizeof buf, "%s effective rank", what);
    assert_rel(er->value, erank, tol, buf);
    snprintf(buf, sizeof buf, "%s stable rank", what);
    assert_rel(sr->value, srank, 1e-9, buf);
}

/* exp of the entropy of |d| / sum |d| */
static double erank_of(const float *d, int n)
{
    double s = 0, h = 0;
    for (int i = 0; i < n; i++)
        s += fabs(d[i]);
    for (int i = 0; i < n; i++)
        if (d[i] != 0)
            h -= fabs(d[i]) / s * log(fabs(d[i]) / s);
    return exp(h);
}

static struct row *run_item(const struct battery_item *it, const struct battery_ctx *c,
                            struct rows *r, size_t *n)
{
    struct err e;
    if (battery_run_item(it, c, r, &e) < 0)
        fail_msg("%s failed: %s", it->name, err_str(&e));
    return parse_rows(r, n);
}

static void test_weights_closed_form(void **state)
{
    (void)state;
    const int V = 16, C = 8, L = 2, NH = 1, F = 32;
    for (int tied = 0; tied <= 1; tied++) {
        struct gptneox *m = make_model(tied, V, C, L, NH, F, 64);
        /* layer 0: diagonal, rank-1, diagonal with the largest value not
         * first, rank-1; layer 1: stacked identities (all singular values
         * equal), rest random */
        const float d0[8] = {5, -3, 2, 1, 0.5f, 0.25f, 0.1f, 0};
        set_diag(m->layers[0].qkv_w, 3 * C, C, d0, 8);
        double r1 = set_rank1(m->layers[0].attn_w, C, C, 0.3);
        const float d2[8] = {1, 2, 3, 4, 1.5f, 7, -6.5f, 0.5f};
        set_diag(m->layers[0].fc_w, F, C, d2, 8);
        double r3 = set_rank1(m->layers[0].proj_w, C, F, 0.05);
        float *q1 = m->layers[1].qkv_w;
        memset(q1, 0, (size_t)3 * C * C * sizeof *q1);
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < C; i++)
                q1[(size_t)(k * C + i) * C + i] = 0.75f;
        double r4 = set_rank1(m->embed, V, C, 0.1);
        const float d5[8] = {0.5f, 0.25f, -2.5f, 1, 1, 1, 1, 1};
        if (!tied)
            set_diag(m->unembed, V, C, d5, 8);

        struct battery_ctx c = {.model = m};
        struct rows r;
        rows_init(&r);
        size_t n = 0;
        struct row *rows = run_item(&battery_item_weights, &c, &r, &n);
        assert_int_equal(n, 4 * (4 * L + (tied ? 1 : 2)) + 4 * NH * L + 1);
        for (size_t i = 0; i < n; i++) {
            assert_string_equal(rows[i].item, "weights");
            assert_int_equal(rows[i].version, battery_item_weights.version);
            assert_int_equal(rows[i].head, strncmp(rows[i].metric, "qk_", 3) == 0 ||
                                                   strncmp(rows[i].metric, "ov_", 3) == 0
                                               ? 0
                                               : -1);
        }
        check_matrix(rows, n, 0, 0, sqrt(sumsq_d(d0, 8)), 5.0, "diag qkv");
        check_matrix(rows, n, 0, 1, r1, r1, "rank-1 dense");
        check_matrix(rows, n, 0, 2, sqrt(sumsq_d(d2, 8)), 7.0, "diag fc");
        check_matrix(rows, n, 0, 3, r3, r3, "rank-1 proj");
        check_matrix(rows, n, 1, 0, 0.75 * sqrt(3.0 * C), 0.75 * sqrt(3.0), "stacked identities");
        check_ranks(rows, n, 0, 0, erank_of(d0, 8), sumsq_d(d0, 8) / 25.0, 1e-5, "diag qkv");
        check_ranks(rows, n, 0, 2, erank_of(d2, 8), sumsq_d(d2, 8) / 49.0, 1e-9, "diag fc");
        check_ranks(rows, n, 0, 1, 1.0, 1.0, 1e-5, "rank-1 dense");
        check_ranks(rows, n, 1, 0, C, C, 1e-9, "stacked identities");
        /* heads (NH 1, HS = C): layer 1 has Q = K = V = 0.75 I, so W_QK =
         * 0.5625 I; layer 0 has K = V = 0, so W_QK = W_OV = 0 */
        const struct row *qf = find_row(rows, n, "qk_frobenius_norm", 1, 0, -1);
        const struct row *qs = find_row(rows, n, "qk_spectral_norm", 1, 0, -1);
        assert_non_null(qf);
        assert_non_null(qs);
        assert_rel(qf->value, 0.5625 * sqrt((double)C), 1e-9, "W_QK frobenius");
        assert_rel(qs->value, 0.5625, 1e-9, "W_QK spectral");
        const char *hm[4] = {"qk_frobenius_norm", "qk_spectral_norm", "ov_frobenius_norm",
                             "ov_spectral_norm"};
        for (int k = 0; k < 4; k++) {
            const struct row *z = find_row(rows, n, hm[k], 0, 0, -1);
            assert_non_null(z);
            assert_true(z->value == 0.0);
        }
        check_matrix(rows, n, -1, 4, r4, r4, "rank-1 embed_in");
        if (!tied)
            check_matrix(rows, n, -1, 5, sqrt(sumsq_d(d5, 8)), 2.5, "diag embed_out");
        else
            assert_null(find_row(rows, n, "frobenius_norm", -1, -1, 5));
        /* random matrices: Frobenius exactly, spectral between the bounds */
        const float *mats[3] = {m->layers[1].attn_w, m->layers[1].fc_w, m->layers[1].proj_w};
        const int sizes[3] = {C * C, F * C, C * F};
        for (int k = 0; k < 3; k++) {
            const struct row *f = find_row(rows, n, "frobenius_norm", 1, -1, k + 1);
            const struct row *s = find_row(rows, n, "spectral_norm", 1, -1, k + 1);
            assert_non_null(f);
            assert_non_null(s);
            assert_rel(f->value, sqrt(sumsq_d(mats[k], sizes[k])), 1e-9, "random frobenius");
            assert_true(s->value <= f->value * (1 + 1e-6));
            assert_true(s->value >= f->value / sqrt((double)C) * (1 - 1e-6));
        }
        /* total: the whole weight block holds every parameter once */
        double tot = 0;
        for (size_t i = 0; i < m->block_floats; i++)
            tot += (double)m->block[i] * m->block[i];
        assert_int_equal(m->block_floats, gptneox_config_nparams(&m->cfg));
        const struct row *t = find_row(rows, n, "total_norm", -1, -1, -1);
        assert_non_null(t);
        assert_rel(t->value, sqrt(tot), 1e-12, "total_norm");
        free(rows);
        rows_free(&r);
        gptneox_free(m);
    }
}

/* A zero matrix has norms 0 and undefined (NaN) ranks. */
static void test_weights_zero(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 16, 8, 1, 1, 32);
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0); /* all zero but LayerNorm weights */
    struct battery_ctx c = {.model = m};
    struct rows r;
    rows_init(&r);
    size_t n = 0;
    struct row *rows = run_item(&battery_item_weights, &c, &r, &n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(rows[i].metric, "total_norm") == 0)
            continue;
        if (strstr(rows[i].metric, "_rank")) /* undefined for a zero matrix */
            assert_true(isnan(rows[i].value));
        else
            assert_true(rows[i].value == 0.0);
    }
    /* LayerNorm weights are 1: (2 per layer + final) * C ones */
    assert_rel(find_row(rows, n, "total_norm", -1, -1, -1)->value, sqrt(3.0 * 8), 1e-12,
               "zero-model total");
    free(rows);
    rows_free(&r);
    gptneox_free(m);
}

/* Every row of weights on two golden fixtures against numpy's SVD. */
static void test_weights_golden(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    const struct gtol tol[] = {{"*", 0, 1e-9}, {NULL, 0, 0}};
    for (int f = 0; f < 2; f++) {
        char dir[128], golden[160];
        snprintf(dir, sizeof dir, "tests/golden/%s", fixtures[f]);
        snprintf(golden, sizeof golden, "tests/golden/battery/weights_%s.json", fixtures[f]);
        struct gptneox *m = NULL;
        struct err e;
        if (gptneox_load(&m, dir, 0, &e) < 0)
            fail_msg("%s", err_str(&e));
        struct battery_ctx c = {.model = m};
        size_t n = 0;
        struct grow *g = grows_run(&battery_item_weights, &c, &n);
        grows_compare_golden(g, n, golden, tol);
        free(g);
        gptneox_free(m);
    }
}

/* ---- loss ---- */

static void fill_tokens(int *tok, size_t n, int V, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        tok[i] = (int)rng_below(&seed, (uint32_t)V);
}

static void test_loss_matches_direct(void **state)
{
    (void)state;
    struct gptneox *m = make_model(0, 50, 32, 2, 4, 64, 16);
    const int V = 50;
    /* B = 11: one full batch of 8 and a partial one; T = max positions */
    const int shapes[2][2] = {{11, 16}, {3, 2}};
    for (int sh = 0; sh < 2; sh++) {
        const int B = shapes[sh][0], T = shapes[sh][1];
        int *tok = malloc((size_t)B * T * sizeof *tok);
        float *per_tok = malloc((size_t)B * (T - 1) * sizeof *per_tok);
        fill_tokens(tok, (size_t)B * T, V, 99);
        struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                                .eval_name = "test"};
        struct rows r;
        rows_init(&r);
        size_t n = 0;
        struct row *rows = run_item(&battery_item_loss, &c, &r, &n);

        struct err e;
        assert_int_equal(gptneox_forward(m, tok, B, T, NULL, 0, &e), 0);
        double ref = gptneox_loss(m, tok, B, T, per_tok, NULL);
        assert_int_equal(n, 1 + (size_t)(T - 1) + (T >= 11)); /* + icl_score_scaled */
        assert_string_equal(rows[0].metric, "loss");
        assert_int_equal(rows[0].layer, -1);
        assert_int_equal(rows[0].head, -1);
        assert_int_equal(rows[0].idx, -1);
        double maxd = fabs(rows[0].value - ref);
        if (maxd > 1e-6 * fmax(1.0, fabs(ref)))
            fail_msg("loss %.9g, direct %.9g", rows[0].value, ref);
        for (int t = 0; t + 1 < T; t++) {
            const struct row *p = &rows[1 + t];
            assert_string_equal(p->metric, "loss_by_pos");
            assert_int_equal(p->idx, t);
            assert_int_equal(p->layer, -1);
            double want = 0;
            for (int b = 0; b < B; b++)
                want += per_tok[(size_t)b * (T - 1) + t];
            want /= B;
            double d = fabs(p->value - want);
            maxd = fmax(maxd, d);
            if (d > 1e-6 * fmax(1.0, fabs(want)))
                fail_msg("loss_by_pos %d: %.9g, direct %.9g", t, p->value, want);
        }
        printf("loss B=%d T=%d: %.6f, maxdiff to the direct computation %.3g\n", B, T, ref, maxd);
        free(rows);
        rows_free(&r);
        free(per_tok);
        free(tok);
    }
    gptneox_free(m);
}

/* A model whose per-position losses are set by the data: zero blocks (the
 * residual passes through), embed[v] = e_v, unembed[w] = 2 e_{w-1 mod V},
 * so it predicts v+1 after v with loss ~3e-5 and anything else with loss
 * ~14.  Sequences are random up to token index 99 and count up by one from
 * there: early positions are hard, late ones easy. */
static void test_loss_icl_score(void **state)
{
    (void)state;
    const int V = 40, C = 48, B = 3, TMAX = 501;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, V, C, 1, 3, 64);
    cfg.max_positions = 512;
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    for (int v = 0; v < V; v++) {
        m->embed[(size_t)v * C + v] = 1.0f;
        m->unembed[(size_t)v * C + (v + V - 1) % V] = 2.0f;
    }
    int *tok = malloc((size_t)B * TMAX * sizeof *tok);
    uint64_t s = 5;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < TMAX; t++)
            tok[b * TMAX + t] = t < 100 ? (int)rng_below(&s, V) : (tok[b * TMAX + t - 1] + 1) % V;
    /* T = 501, 128, 11 (prefixes, packed), 10 */
    const int Ts[4] = {501, 128, 11, 10};
    for (int k = 0; k < 4; k++) {
        const int T = Ts[k];
        int *tk = malloc((size_t)B * T * sizeof *tk);
        for (int b = 0; b < B; b++)
            memcpy(tk + b * T, tok + b * TMAX, (size_t)T * sizeof *tk);
        struct battery_ctx c = {.model = m, .eval_tokens = tk, .eval_B = B, .eval_T = T,
                                .eval_name = "test"};
        struct rows r;
        rows_init(&r);
        size_t n = 0;
        struct row *rows = run_item(&battery_item_loss, &c, &r, &n);
        const struct row *icl = find_row(rows, n, "icl_score", -1, -1, -1);
        const struct row *sc = find_row(rows, n, "icl_score_scaled", -1, -1, T - 1);
        if (T >= 501) {
            assert_non_null(icl);
            double want = find_row(rows, n, "loss_by_pos", -1, -1, 499)->value -
                          find_row(rows, n, "loss_by_pos", -1, -1, 49)->value;
            printf("T=%d: icl_score %.6f (loss_by_pos 499 - 49: %.6f)\n", T, icl->value, want);
            assert_true(fabs(icl->value - want) <= 1e-12);
            assert_true(icl->value < -5.0); /* ~0 minus ~14 */
        } else {
            assert_null(icl);
        }
        if (T >= 11) {
            assert_non_null(sc);
            int hi = T - 1, lo = hi / 10;
            double want = find_row(rows, n, "loss_by_pos", -1, -1, hi - 1)->value -
                          find_row(rows, n, "loss_by_pos", -1, -1, lo - 1)->value;
            printf("T=%d: icl_score_scaled (idx %d, vs token %d) %.6f\n", T, hi, lo, sc->value);
            assert_true(fabs(sc->value - want) <= 1e-12);
            if (T >= 501)
                assert_true(sc->value == icl->value); /* hi 500, lo 50 */
            else if (T >= 101)
                assert_true(sc->value < -5.0);
            else
                assert_true(fabs(sc->value) < 8.0); /* both random: same loss level */
        } else {
            for (size_t i = 0; i < n; i++)
                assert_null(strstr(rows[i].metric, "icl"));
        }
        free(rows);
        rows_free(&r);
        free(tk);
    }
    free(tok);
    gptneox_free(m);
}

static void expect_loss_error(struct gptneox *m, const int *tok, int B, int T, const char *needle)
{
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                            .eval_name = "evalfile"};
    struct rows r;
    rows_init(&r);
    struct err e;
    err_clear(&e);
    assert_int_equal(battery_run_item(&battery_item_loss, &c, &r, &e), ERR_INVALID);
    if (!strstr(err_str(&e), needle))
        fail_msg("error '%s' lacks '%s'", err_str(&e), needle);
    assert_non_null(strstr(err_str(&e), "evalfile"));
    assert_int_equal(r.len, 0);
    rows_free(&r);
}

static void test_loss_errors(void **state)
{
    (void)state;
    struct gptneox *m = make_model(0, 50, 32, 1, 4, 64, 16);
    int tok[2 * 17];
    fill_tokens(tok, 34, 50, 1);
    expect_loss_error(m, tok, 2, 17, "max_position_embeddings 16");
    expect_loss_error(m, tok, 2, 1, "at least 2");
    tok[1 * 5 + 3] = 50;
    expect_loss_error(m, tok, 2, 5, "token 50 (sequence 1, position 3) is outside");
    tok[1 * 5 + 3] = -1;
    expect_loss_error(m, tok, 2, 5, "outside the vocabulary");
    gptneox_free(m);
}

/* ---- probes ---- */

static void test_probes_labels(void **state)
{
    (void)state;
    const int tok[8] = {5, 3, 5, 7, 3, 3, 9, 5};
    int top[4];
    assert_int_equal(probes_top_tokens(tok, 8, 10, 4, top), 4);
    assert_int_equal(top[0], 3); /* 3 and 5 occur 3 times: the lower id first */
    assert_int_equal(top[1], 5);
    assert_int_equal(top[2], 7);
    assert_int_equal(top[3], 9);
    assert_int_equal(probes_top_tokens(tok, 8, 10, 16, top), 4); /* only ids that occur */
    const int top2[2] = {3, 5};
    int prev[8], seen[8];
    probes_labels(tok, 8, top2, 2, prev, seen);
    const int want_prev[8] = {-1, 1, 0, 1, -1, 0, 0, -1};
    const int want_seen[8] = {0, 0, 1, 0, 1, 1, 0, 1};
    assert_memory_equal(prev, want_prev, sizeof prev);
    assert_memory_equal(seen, want_seen, sizeof seen);
}

/* A probe set written to a file: labels lab[token] per position (t >= 1). */
static struct probe_set *write_probe_set(const char *dir, const int *tok, int B, int T,
                                         const int *lab)
{
    char path[128];
    snprintf(path, sizeof path, "%s/planted.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "{\"name\": \"planted\", \"kind\": \"classification\", \"sequences\": [");
    for (int b = 0; b < B; b++) {
        fprintf(f, "%s{\"tokens\": [", b ? ", " : "");
        for (int t = 0; t < T; t++)
            fprintf(f, "%s%d", t ? ", " : "", tok[b * T + t]);
        fprintf(f, "], \"labels\": [null");
        for (int t = 1; t < T; t++)
            fprintf(f, ", \"%s\"", lab[tok[b * T + t]] ? "yes" : "no");
        fprintf(f, "]}");
    }
    fprintf(f, "]}\n");
    assert_int_equal(fclose(f), 0);
    struct probe_set *ps = NULL;
    struct err e;
    if (probe_set_load(&ps, path, &e) < 0)
        fail_msg("%s", err_str(&e));
    return ps;
}

/* A random-init model whose embeddings carry a per-token label along one
 * residual direction (e_0, +-3): the user probe reads it at every site
 * (> 0.98) and the shuffled-label probe is near chance; without the planted
 * direction (random labels of 200 tokens in 32 dimensions are not linearly
 * separable) the probe stays well below. */
static void test_probes_planted_direction(void **state)
{
    (void)state;
    const int V = 200, C = 32, L = 2, B = 40, T = 24;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/ckptd-test-probes-XXXXXX");
    assert_non_null(mkdtemp(dir));
    int lab[200], *tok = malloc((size_t)B * T * sizeof *tok);
    uint64_t s = 31;
    for (int v = 0; v < V; v++)
        lab[v] = (int)rng_below(&s, 2);
    fill_tokens(tok, (size_t)B * T, V, 8);
    struct probe_set *ps = write_probe_set(dir, tok, B, T, lab);
    const struct probe_set *sets[1] = {ps};
    double acc_planted[3] = {0}, acc_plain = 0;
    for (int planted = 1; planted >= 0; planted--) {
        struct gptneox *m = make_model(0, V, C, L, 4, 64, 64);
        gptneox_init_random(m, 5, 0.02f);
        uint64_t g = 17;
        for (int v = 0; v < V; v++) {
            for (int j = 0; j < C; j++)
                m->embed[(size_t)v * C + j] = rng_symmetric(&g);
            if (planted)
                m->embed[(size_t)v * C] = lab[v] ? 3.0f : -3.0f;
        }
        struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T,
                                .eval_name = "test", .probe_sets = sets, .nprobe_sets = 1};
        struct rows r, r2;
        rows_init(&r);
        rows_init(&r2);
        size_t n = 0;
        struct row *rows = run_item(&battery_item_probes, &c, &r, &n);
        if (planted) { /* the same inputs give the same bytes */
            struct err e;
            assert_int_equal(battery_run_item(&battery_item_probes, &c, &r2, &e), 0);
            assert_int_equal(r.len, r2.len);
            assert_memory_equal(r.buf, r2.buf, r.len);
        }
        const struct row *maj = find_row(rows, n, "user_majority_acc", -1, -1, 0);
        assert_non_null(maj);
        for (int layer = -1; layer < L; layer++) {
            const struct row *a = find_row(rows, n, "user_acc", layer, -1, 0);
            const struct row *sh = find_row(rows, n, "user_shuffled_acc", layer, -1, 0);
            assert_non_null(a);
            assert_non_null(sh);
            /* the built-in tasks are there too */
            assert_non_null(find_row(rows, n, "seen_before_acc", layer, -1, -1));
            assert_non_null(find_row(rows, n, "position_r2", layer, -1, -1));
            printf("%s layer %d: user_acc %.4f shuffled %.4f majority %.4f\n",
                   planted ? "planted" : "plain", layer, a->value, sh->value, maj->value);
            if (planted) {
                acc_planted[layer + 1] = a->value;
                assert_true(a->value > 0.98);
                assert_true(fabs(sh->value - 0.5) <= 0.2);
            } else if (layer == -1) {
                acc_plain = a->value;
            }
        }
        free(rows);
        rows_free(&r);
        rows_free(&r2);
        gptneox_free(m);
    }
    assert_true(acc_plain < 0.9);
    assert_true(acc_planted[0] - acc_plain > 0.1);
    probe_set_free(ps);
    free(tok);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_probes_errors(void **state)
{
    (void)state;
    struct gptneox *m = make_model(0, 50, 32, 1, 4, 64, 16);
    int tok[5 * 8];
    fill_tokens(tok, 40, 50, 3);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = 4, .eval_T = 8,
                            .eval_name = "evalfile"};
    struct rows r;
    rows_init(&r);
    struct err e;
    assert_int_equal(battery_run_item(&battery_item_probes, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(err_str(&e), "4 sequences: probes need at least 5"));
    c.eval_B = 5;
    tok[13] = 50;
    assert_int_equal(battery_run_item(&battery_item_probes, &c, &r, &e), ERR_INVALID);
    assert_non_null(strstr(err_str(&e), "token 50 (sequence 1, position 5) is outside"));
    assert_int_equal(r.len, 0);
    rows_free(&r);
    gptneox_free(m);
}

/* ---- determinism ---- */

static void test_rows_deterministic(void **state)
{
    (void)state;
    struct gptneox *m = make_model(0, 64, 32, 2, 4, 64, 64);
    int *tok = NULL, B, T;
    struct err e;
    assert_int_equal(battery_eval_default(&tok, &B, &T, 64, 64, 3, &e), 0);
    struct battery_ctx c = {.model = m, .eval_tokens = tok, .eval_B = B, .eval_T = T, .seed = 3};
    char *out[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    for (int run = 0; run < 2; run++) {
        FILE *f = open_memstream(&out[run], &len[run]);
        assert_non_null(f);
        struct rows r;
        rows_init(&r);
        for (size_t i = 0; i < battery_count(); i++) {
            if (battery_get(i)->needs & BATTERY_NEEDS(BATTERY_NEED_TASK))
                continue; /* a toy run's item: test_battery_task */
            if (battery_get(i)->needs & (BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS) |
                                         BATTERY_NEEDS(BATTERY_NEED_SAE_DICTS)))
                continue; /* reads or writes files: its own test (test_battery_<item>) */
            if (battery_run_item(battery_get(i), &c, &r, &e) < 0)
                fail_msg("%s", err_str(&e));
            assert_int_equal(rows_write(&r, f, &e), 0);
        }
        rows_free(&r);
        /* a forward of another shape in between must not matter */
        assert_int_equal(gptneox_forward(m, tok, 1, 5, NULL, 0, &e), 0);
        assert_int_equal(fclose(f), 0);
    }
    assert_true(len[0] > 0);
    assert_int_equal(len[0], len[1]);
    assert_memory_equal(out[0], out[1], len[0]);
    free(out[0]);
    free(out[1]);
    free(tok);
    gptneox_free(m);
}

/* ---- tokens_read_file ---- */

static char tmpdir[64];

static const char *write_tmp(const char *name, const void *data, size_t n)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n)
        assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void expect_tokens_error(const char *path, int ctx, int code, const char *needle)
{
    int *tok = (int *)1, B = -5, T = -5;
    struct err e;
    err_clear(&e);
    assert_int_equal(tokens_read_file(path, ctx, &tok, &B, &T, &e), code);
    assert_null(tok);
    if (!strstr(err_str(&e), needle))
        fail_msg("%s: error '%s' lacks '%s'", path, err_str(&e), needle);
}

static void test_tokens_read_file(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ckptd-test-battery-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    int *tok = NULL, B = 0, T = 0;
    struct err e;

    /* .u16: 10 ids little-endian, ctx 4 -> 2 sequences, the last 2 dropped */
    const unsigned char u16[20] = {1, 0, 2, 0, 0xff, 0xff, 0x34, 0x12, 0, 1,
                                   5, 0, 6, 0,  7,    0,    8,    0,    9, 0};
    const int want16[8] = {1, 2, 65535, 0x1234, 256, 5, 6, 7};
    for (int k = 0; k < 2; k++) {
        const char *p = write_tmp(k ? "a.bin" : "a.u16", u16, sizeof u16);
        assert_int_equal(tokens_read_file(p, 4, &tok, &B, &T, &e), 0);
        assert_int_equal(B, 2);
        assert_int_equal(T, 4);
        assert_memory_equal(tok, want16, sizeof want16);
        free(tok);
    }
    /* exactly one sequence */
    assert_int_equal(tokens_read_file(write_tmp("b.u16", u16, 8), 4, &tok, &B, &T, &e), 0);
    assert_int_equal(B, 1);
    free(tok);

    /* .u32 */
    const unsigned char u32[12] = {0x70, 0x11, 0x01, 0, 3, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f};
    const int want32[3] = {70000, 3, 0x7fffffff};
    assert_int_equal(tokens_read_file(write_tmp("c.u32", u32, 12), 3, &tok, &B, &T, &e), 0);
    assert_int_equal(B, 1);
    assert_int_equal(T, 3);
    assert_memory_equal(tok, want32, sizeof want32);
    free(tok);
    const unsigned char big[8] = {1, 0, 0, 0, 0, 0, 0, 0x80};
    expect_tokens_error(write_tmp("big.u32", big, 8), 2, ERR_FORMAT, "not below 2^31");

    /* .json: the context length does not apply */
    const char *js = "[[1, 2, 3], [4, 5, 6]]";
    assert_int_equal(tokens_read_file(write_tmp("d.json", js, strlen(js)), 128, &tok, &B, &T, &e), 0);
    assert_int_equal(B, 2);
    assert_int_equal(T, 3);
    assert_int_equal(tok[5], 6);
    free(tok);
    const char *ragged = "[[1, 2, 3], [4, 5]]";
    expect_tokens_error(write_tmp("r.json", ragged, strlen(ragged)), 4, ERR_FORMAT, "sequence 1");

    /* errors */
    expect_tokens_error(write_tmp("empty.u16", "", 0), 4, ERR_FORMAT, "empty");
    expect_tokens_error(write_tmp("odd.u16", u16, 3), 1, ERR_FORMAT, "3 bytes is not a whole number of 2-byte");
    expect_tokens_error(write_tmp("odd.u32", u32, 6), 1, ERR_FORMAT, "6 bytes is not a whole number of 4-byte");
    expect_tokens_error(write_tmp("short.u16", u16, 6), 4, ERR_FORMAT, "3 token ids: fewer than one sequence of 4");
    expect_tokens_error(write_tmp("e.u16", u16, 8), 0, ERR_INVALID, "context length 0");
    expect_tokens_error(write_tmp("e.txt", u16, 8), 4, ERR_UNSUPPORTED, "unknown token file type");
    char missing[128];
    snprintf(missing, sizeof missing, "%s/missing.u16", tmpdir);
    expect_tokens_error(missing, 4, ERR_NOTFOUND, "missing.u16");
    expect_tokens_error(tmpdir, 4, ERR_UNSUPPORTED, "unknown token file type");

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_run_checks_metrics),
        cmocka_unit_test(test_rows_format),
        cmocka_unit_test(test_rows_copy_text),
        cmocka_unit_test(test_rows_status),
        cmocka_unit_test(test_rng_and_eval_default),
        cmocka_unit_test(test_weights_closed_form),
        cmocka_unit_test(test_weights_zero),
        cmocka_unit_test(test_weights_golden),
        cmocka_unit_test(test_loss_matches_direct),
        cmocka_unit_test(test_loss_icl_score),
        cmocka_unit_test(test_loss_errors),
        cmocka_unit_test(test_probes_labels),
        cmocka_unit_test(test_probes_planted_direction),
        cmocka_unit_test(test_probes_errors),
        cmocka_unit_test(test_rows_deterministic),
        cmocka_unit_test(test_tokens_read_file),
    };
    return cmocka_run_group_tests_name("battery", tests, NULL, NULL);
}
