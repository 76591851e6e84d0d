/*
 * test_battery_integrity.c - the `integrity` item: its count sketches
 * against tests/reference/integrity_ref.py (numpy), and the properties the
 * daemon relies on: a sketch is a pure, linear function of the weights, so
 * equal weights give equal sketches and sketch distances stand for weight
 * distances (within the spread the header states).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/battery_golden.h"
#include "workers/battery/battery.h"
#include "common/rng.h"
#include "workers/model/gptneox.h"

/* Every row on two golden fixtures; the sums differ from numpy's by their
 * order only: |diff| <= 1e-12 * param_norm (26 and 31 here). */
static void test_integrity_golden(void **state)
{
    (void)state;
    const char *fixtures[2] = {"f32_parallel_rot025", "f32_sequential_rot100"};
    const struct gtol tol[] = {{"*", 3e-11, 1e-12}, {NULL, 0, 0}};
    for (int f = 0; f < 2; f++) {
        char dir[128], golden[160];
        snprintf(dir, sizeof dir, "tests/golden/%s", fixtures[f]);
        snprintf(golden, sizeof golden, "tests/golden/battery/integrity_%s.json", fixtures[f]);
        struct gptneox *m = NULL;
        struct err e;
        if (gptneox_load(&m, dir, 0, &e) < 0)
            fail_msg("%s", err_str(&e));
        struct battery_ctx c = {.model = m};
        size_t n = 0;
        struct grow *g = grows_run(&battery_item_integrity, &c, &n);
        grows_compare_golden(g, n, golden, tol);
        free(g);
        gptneox_free(m);
    }
}

/* The whole-model sketch of a model. */
static void whole_sketch(struct gptneox *m, double *out)
{
    struct battery_ctx c = {.model = m};
    size_t n = 0;
    struct grow *g = grows_run(&battery_item_integrity, &c, &n);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(g[i].metric, "sketch") == 0) {
            assert_true(g[i].idx >= 0 && g[i].idx < INTEGRITY_K);
            out[g[i].idx] = g[i].value;
            seen++;
        }
    assert_int_equal(seen, INTEGRITY_K);
    free(g);
}

static struct gptneox *random_model(uint64_t seed)
{
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 64, 32, 2, 4, 64);
    cfg.max_positions = 16;
    struct err e;
    assert_int_equal(gptneox_config_check(&cfg, "test", &e), 0);
    struct gptneox *m = NULL;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    gptneox_init_random(m, seed, 0.02f);
    return m;
}

/* Equal weights: equal sketches, bit for bit; different weights: not. */
static void test_integrity_deterministic(void **state)
{
    (void)state;
    struct gptneox *a = random_model(1), *b = random_model(1), *c = random_model(2);
    double sa[INTEGRITY_K], sb[INTEGRITY_K], sc[INTEGRITY_K];
    whole_sketch(a, sa);
    whole_sketch(b, sb);
    whole_sketch(c, sc);
    assert_memory_equal(sa, sb, sizeof sa);
    assert_memory_not_equal(sa, sc, sizeof sa);
    gptneox_free(a);
    gptneox_free(b);
    gptneox_free(c);
}

/* Linear: the sketch of a model whose weights moved by d differs from the
 * first's by the sketch of d, and |S d|^2 / |d|^2 scatters around 1 with
 * the spread sqrt(2/K) of a count sketch: over 40 random directions the
 * mean is within 5 % of 1 (4 standard errors: 0.088 / sqrt(40) = 1.4 %)
 * and no ratio is off by more than 45 % (5 standard deviations). */
static void test_integrity_distances(void **state)
{
    (void)state;
    struct gptneox *a = random_model(3), *b = random_model(3);
    double sa[INTEGRITY_K], sb[INTEGRITY_K];
    whole_sketch(a, sa);
    const size_t C = 32;
    double mean = 0.0, worst = 0.0;
    const int trials = 40;
    for (int t = 0; t < trials; t++) {
        uint64_t s = 1000 + (uint64_t)t;
        double d2 = 0.0;
        /* move every element of a few tensors, by different amounts */
        float *tensors[3] = {b->layers[0].qkv_w, b->layers[1].fc_w, b->embed};
        const float *orig[3] = {a->layers[0].qkv_w, a->layers[1].fc_w, a->embed};
        const size_t len[3] = {3 * C * C, 64 * C, 64 * C};
        for (int k = 0; k < 3; k++)
            for (size_t i = 0; i < len[k]; i++) {
                float x = orig[k][i] + 0.01f * (float)(k + 1) * rng_symmetric(&s);
                double d = (double)x - orig[k][i];
                tensors[k][i] = x;
                d2 += d * d;
            }
        whole_sketch(b, sb);
        double s2 = 0.0;
        for (int k = 0; k < INTEGRITY_K; k++)
            s2 += (sb[k] - sa[k]) * (sb[k] - sa[k]);
        double ratio = s2 / d2;
        mean += ratio / trials;
        worst = fmax(worst, fabs(ratio - 1.0));
    }
    print_message("|S d|^2 / |d|^2: mean %.4f over %d directions, worst |ratio - 1| %.3f\n", mean, trials,
                  worst);
    assert_true(fabs(mean - 1.0) < 0.05);
    assert_true(worst < 0.45);
    gptneox_free(a);
    gptneox_free(b);
}

/* A tied embedding is one tensor: sketched and counted once. */
static void test_integrity_tied(void **state)
{
    (void)state;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 64, 32, 1, 4, 64);
    cfg.max_positions = 16;
    cfg.tie_word_embeddings = 1;
    struct err e;
    assert_int_equal(gptneox_config_check(&cfg, "test", &e), 0);
    struct gptneox *m = NULL;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    gptneox_init_random(m, 7, 0.02f);
    struct battery_ctx c = {.model = m};
    size_t n = 0;
    struct grow *g = grows_run(&battery_item_integrity, &c, &n);
    assert_null(grows_find(g, n, "tensor_norm", -1, 3, -1)); /* no embed_out */
    assert_non_null(grows_find(g, n, "tensor_norm", -1, 0, -1));
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(g[i].metric, "tensor_norm") == 0)
            ss += g[i].value * g[i].value;
    const struct grow *p = grows_find(g, n, "param_norm", -1, -1, -1);
    assert_non_null(p);
    assert_true(fabs(sqrt(ss) - p->value) <= 1e-12 * p->value);
    free(g);
    gptneox_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integrity_golden),
        cmocka_unit_test(test_integrity_deterministic),
        cmocka_unit_test(test_integrity_distances),
        cmocka_unit_test(test_integrity_tied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
