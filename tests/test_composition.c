/*
 * test_composition - the battery item `composition` (Elhage et al. 2021
 * composition scores, LayerNorm folded).
 *
 *   golden       on two golden fixtures, every score and the three random
 *                baselines against tests/reference/composition_ref.py
 *                (numpy, float64, explicit d_model x d_model products in
 *                TransformerLens's row-vector convention; the baselines
 *                from the same splitmix64/Box-Muller draws): |diff| <= 1e-6
 *                (observed ~1e-8; the item multiplies in float).
 *   constructed  heads built from orthonormal Walsh-Hadamard rows (all
 *                orthogonal to (1,..,1), so centring leaves them alone) and
 *                a non-trivial LayerNorm weight undone in the reading rows:
 *                W_OV of the writer is the projector U U^T onto two
 *                directions, and the reader's maps are chosen so that the
 *                scores are 1/sqrt(2), 0, or closed forms |U^T x| /
 *                (sqrt(2) |x|) computed here in double; a zero writer head
 *                gives NaN.  |diff| <= 1e-6.  Biases (set non-zero) must
 *                not matter.
 *   baseline     depends on the shapes only (two different models of one
 *                shape give the same bits) and lies near 1/sqrt(d_model-1).
 *   determinism  the same inputs twice give the same bytes.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/lib/battery_golden.h"
#include "workers/battery/battery.h"
#include "workers/model/gptneox.h"

static void test_composition_golden(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    const struct gtol tol[] = {{"*", 1e-6, 0}, {NULL, 0, 0}};
    for (int f = 0; f < 2; f++) {
        char dir[128], golden[160];
        snprintf(dir, sizeof dir, "tests/golden/%s", fixtures[f]);
        snprintf(golden, sizeof golden, "tests/golden/battery/composition_%s.json", fixtures[f]);
        struct gptneox *m = NULL;
        struct err e;
        if (gptneox_load(&m, dir, 0, &e) < 0)
            fail_msg("%s", err_str(&e));
        struct battery_ctx c = {.model = m};
        size_t n = 0;
        struct grow *g = grows_run(&battery_item_composition, &c, &n);
        const int NL = m->cfg.n_layers, NH = m->cfg.n_heads;
        assert_int_equal(n, (size_t)3 * NL * (NL - 1) / 2 * NH * NH + 3);
        grows_compare_golden(g, n, golden, tol);
        free(g);
        gptneox_free(m);
    }
}

enum { C = 16, NH = 2, HS = 8 };

/* Walsh-Hadamard row k, normalised: orthonormal, orthogonal to ones for k > 0 */
static double hada(int k, int j)
{
    return (__builtin_popcount((unsigned)(k & j)) & 1 ? -1.0 : 1.0) / 4.0;
}

/* query_key_value row (head h, t 0 q / 1 k / 2 v, dim d) */
static float *qkv_row(struct gptneox *m, int l, int h, int t, int d)
{
    return m->layers[l].qkv_w + ((size_t)(3 * h + t) * HS + d) * C;
}

/* attention.dense column (head h, dim d) := x */
static void set_o_col(struct gptneox *m, int l, int h, int d, const double *x)
{
    for (int i = 0; i < C; i++)
        m->layers[l].attn_w[(size_t)i * C + h * HS + d] = (float)x[i];
}

static void set_row(float *row, const double *x, const float *w)
{
    for (int j = 0; j < C; j++)
        row[j] = (float)(x[j] / (w ? w[j] : 1.0));
}

/* P (w * x): the folded, centred reading direction */
static void fold(double *out, const double *x, const float *w)
{
    double s = 0;
    for (int j = 0; j < C; j++)
        s += out[j] = x[j] * w[j];
    for (int j = 0; j < C; j++)
        out[j] -= s / C;
}

static double norm(const double *x)
{
    double s = 0;
    for (int j = 0; j < C; j++)
        s += x[j] * x[j];
    return sqrt(s);
}

/* |U^T x| / (sqrt(2) |x|), U = [u1 u2] */
static double proj_ratio(const double *x, const double *u1, const double *u2)
{
    double a = 0, b = 0;
    for (int j = 0; j < C; j++) {
        a += u1[j] * x[j];
        b += u2[j] * x[j];
    }
    return sqrt(a * a + b * b) / (sqrt(2.0) * norm(x));
}

static void expect_score(const struct grow *g, size_t n, const char *metric, int h2, int h1,
                         double want)
{
    const struct grow *r = grows_find(g, n, metric, 1, h2, 0 * NH + h1);
    if (!r)
        fail_msg("no %s row for heads (1,%d) <- (0,%d)", metric, h2, h1);
    if (isnan(want) ? !isnan(r->value) : !(fabs(r->value - want) <= 1e-6))
        fail_msg("%s (1,%d) <- (0,%d): %.9g, expected %.9g", metric, h2, h1, r->value, want);
}

static void test_composition_constructed(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 16, C, 2, NH, 32);
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0); /* zeros, LayerNorm weights 1 */
    /* biases everywhere: no score may depend on them */
    for (int l = 0; l < 2; l++) {
        for (int i = 0; i < 3 * C; i++)
            m->layers[l].qkv_b[i] = 0.1f * (float)(i % 5);
        for (int i = 0; i < C; i++) {
            m->layers[l].attn_b[i] = -0.2f * (float)(i % 3);
            m->layers[l].ln1_b[i] = 0.05f * (float)i;
        }
    }
    double u[6][C], a[C], b[C], cc[C];
    for (int k = 1; k < 6; k++)
        for (int j = 0; j < C; j++)
            u[k][j] = hada(k, j);
    for (int j = 0; j < C; j++) {
        a[j] = sin(j + 1.0);
        b[j] = cos(2.0 * j) + 0.3;
        cc[j] = (j * j) % 7 - 3.0;
    }
    float *w1 = m->layers[1].ln1_w;
    for (int j = 0; j < C; j++)
        w1[j] = 1.0f + (float)j / 16.0f;
    /* layer 0, head 0: O V = u1 u1^T + u2 u2^T; head 1 stays zero */
    set_row(qkv_row(m, 0, 0, 2, 0), u[1], NULL);
    set_row(qkv_row(m, 0, 0, 2, 1), u[2], NULL);
    set_o_col(m, 0, 0, 0, u[1]);
    set_o_col(m, 0, 0, 1, u[2]);
    /* layer 1, head 0: folded Q rows u1, u2; K rows u3, u4; V row u1; O u5 */
    set_row(qkv_row(m, 1, 0, 0, 0), u[1], w1);
    set_row(qkv_row(m, 1, 0, 0, 1), u[2], w1);
    set_row(qkv_row(m, 1, 0, 1, 0), u[3], w1);
    set_row(qkv_row(m, 1, 0, 1, 1), u[4], w1);
    set_row(qkv_row(m, 1, 0, 2, 0), u[1], w1);
    set_o_col(m, 1, 0, 0, u[5]);
    /* layer 1, head 1: generic query a, key folded to u1, value b, output c */
    set_row(qkv_row(m, 1, 1, 0, 0), a, NULL);
    set_row(qkv_row(m, 1, 1, 1, 0), u[1], w1);
    set_row(qkv_row(m, 1, 1, 2, 0), b, NULL);
    set_o_col(m, 1, 1, 0, cc);

    struct battery_ctx c = {.model = m};
    size_t n = 0;
    struct grow *g = grows_run(&battery_item_composition, &c, &n);
    assert_int_equal(n, 3 * NH * NH + 3);
    const double r2 = 1.0 / sqrt(2.0);
    expect_score(g, n, "q_composition", 0, 0, r2); /* U^T U W^T = U W^T */
    expect_score(g, n, "k_composition", 0, 0, 0.0); /* keys read u3, u4 only */
    expect_score(g, n, "v_composition", 0, 0, r2);
    double fa[C], fb[C];
    for (int j = 0; j < C; j++) {
        double af = a[j], bf = b[j];
        a[j] = (float)af; /* the stored float entries */
        b[j] = (float)bf;
    }
    fold(fa, a, w1);
    fold(fb, b, w1);
    expect_score(g, n, "q_composition", 1, 0, proj_ratio(fa, u[1], u[2]));
    expect_score(g, n, "k_composition", 1, 0, r2);
    expect_score(g, n, "v_composition", 1, 0, proj_ratio(fb, u[1], u[2]));
    for (int h2 = 0; h2 < NH; h2++) {
        expect_score(g, n, "q_composition", h2, 1, NAN);
        expect_score(g, n, "k_composition", h2, 1, NAN);
        expect_score(g, n, "v_composition", h2, 1, NAN);
    }
    printf("constructed: q(1,1<-0,0) = %.9f, v(1,1<-0,0) = %.9f\n",
           grows_find(g, n, "q_composition", 1, 1, 0)->value,
           grows_find(g, n, "v_composition", 1, 1, 0)->value);

    /* the baseline depends on the shapes only, and is near 1/sqrt(C-1) */
    struct gptneox *m2 = NULL;
    assert_int_equal(gptneox_create(&m2, &cfg, &e), 0);
    gptneox_init_random(m2, 5, 0.1f);
    struct battery_ctx c2 = {.model = m2};
    size_t n2 = 0;
    struct grow *g2 = grows_run(&battery_item_composition, &c2, &n2);
    const char *bl[3] = {"q_composition_baseline", "k_composition_baseline",
                         "v_composition_baseline"};
    for (int t = 0; t < 3; t++) {
        const struct grow *x = grows_find(g, n, bl[t], -1, -1, -1);
        const struct grow *y = grows_find(g2, n2, bl[t], -1, -1, -1);
        assert_non_null(x);
        assert_non_null(y);
        assert_true(x->value == y->value);
        printf("%s %.6f, 1/sqrt(C-1) %.6f\n", bl[t], x->value, 1.0 / sqrt(C - 1.0));
        assert_true(fabs(x->value * sqrt(C - 1.0) - 1.0) < 0.15);
    }
    free(g2);
    free(g);
    gptneox_free(m2);
    gptneox_free(m);
}

static void test_composition_deterministic(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 32, 32, 3, 4, 64);
    struct gptneox *m = NULL;
    struct err e;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    gptneox_init_random(m, 9, 0.2f);
    struct battery_ctx c = {.model = m};
    struct rows r[2];
    for (int k = 0; k < 2; k++) {
        rows_init(&r[k]);
        assert_int_equal(battery_run_item(&battery_item_composition, &c, &r[k], &e), 0);
    }
    assert_int_equal(r[0].n, 3 * 3 * 16 + 3);
    assert_int_equal(r[0].len, r[1].len);
    assert_memory_equal(r[0].buf, r[1].buf, r[0].len);
    rows_free(&r[0]);
    rows_free(&r[1]);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_composition_golden),
        cmocka_unit_test(test_composition_constructed),
        cmocka_unit_test(test_composition_deterministic),
    };
    return cmocka_run_group_tests_name("composition", tests, NULL, NULL);
}
