/*
 * test_adamw - AdamW against torch.optim.AdamW.
 *
 * tests/golden/grad/adamw.safetensors (tests/reference/grad_ref.py) holds a
 * (16,8) matrix with weight decay 0.5 and an (8) bias without, five steps
 * of gradients (the bias gradient of step 3 is zero) and the values torch
 * produced after each step (lr 0.01, betas 0.9/0.98, eps 1e-8).
 * Tolerance: |p - p_ref| <= 1e-6 * max(1, |p_ref|) after every step.
 *
 * On a model: with zero gradients, the first step scales every matrix and
 * embedding by exactly (1 - lr*wd) and leaves biases and LayerNorm
 * parameters unchanged (decay is not applied to them).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workers/model/backward.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"
#include "workers/train/adamw.h"

static float *get(const struct st_file *f, const char *name, size_t n)
{
    const struct st_tensor *t = st_find(f, name);
    if (!t)
        fail_msg("golden lacks %s", name);
    assert_int_equal(t->nelem, n);
    float *p = malloc(n * sizeof(float));
    assert_int_equal(tensor_to_f32(p, t->data, t->dtype, n), 0);
    return p;
}

static double meta(const struct st_file *f, const char *key)
{
    const char *v = st_metadata(f, key);
    assert_non_null(v);
    return atof(v);
}

static void test_against_torch(void **s)
{
    (void)s;
    struct err e;
    struct st_file *f = NULL;
    assert_int_equal(st_open(&f, "tests/golden/grad/adamw.safetensors", &e), 0);
    struct adamw_config c = {meta(f, "lr"), meta(f, "beta1"), meta(f, "beta2"), meta(f, "eps"),
                             meta(f, "weight_decay")};
    int steps = (int)meta(f, "steps");
    assert_true(steps >= 3);
    float *w = get(f, "init.w", 128), *b = get(f, "init.b", 8);
    float mw[128] = {0}, vw[128] = {0}, mb[8] = {0}, vb[8] = {0};
    double worst = 0.0;
    for (int t = 1; t <= steps; t++) {
        char name[32];
        snprintf(name, sizeof name, "grad%d.w", t);
        float *gw = get(f, name, 128);
        snprintf(name, sizeof name, "grad%d.b", t);
        float *gb = get(f, name, 8);
        adamw_update(w, gw, mw, vw, 128, c.lr, c.weight_decay, &c, t);
        adamw_update(b, gb, mb, vb, 8, c.lr, 0.0, &c, t);
        snprintf(name, sizeof name, "step%d.w", t);
        float *rw = get(f, name, 128);
        snprintf(name, sizeof name, "step%d.b", t);
        float *rb = get(f, name, 8);
        for (int i = 0; i < 128; i++) {
            double d = fabs((double)w[i] - rw[i]) / fmax(1.0, fabs(rw[i]));
            worst = fmax(worst, d);
            assert_true(d <= 1e-6);
        }
        for (int i = 0; i < 8; i++) {
            double d = fabs((double)b[i] - rb[i]) / fmax(1.0, fabs(rb[i]));
            worst = fmax(worst, d);
            assert_true(d <= 1e-6);
        }
        free(gw);
        free(gb);
        free(rw);
        free(rb);
    }
    printf("[ adamw ] %d steps vs torch.optim.AdamW: max rel diff %.2e\n", steps, worst);
    free(w);
    free(b);
    st_free(f);
}

static void test_decay_only_matrices(void **s)
{
    (void)s;
    struct gptneox_config cfg;
    gptneox_config_default(&cfg, 20, 16, 2, 2, 32);
    struct err e;
    struct gptneox *m = NULL, *g = NULL, *before = NULL;
    struct adamw *opt = NULL;
    assert_int_equal(gptneox_create(&m, &cfg, &e), 0);
    assert_int_equal(gptneox_create(&before, &cfg, &e), 0);
    gptneox_init_random(m, 3, 0.1f);
    gptneox_init_random(before, 3, 0.1f);
    assert_int_equal(gptneox_grads_create(&g, m, &e), 0);
    struct adamw_config c = {0.1, 0.9, 0.98, 1e-8, 0.5};
    assert_int_equal(adamw_create(&opt, m, &c, &e), 0);
    adamw_step(opt, m, g, 0.1);
    assert_int_equal(adamw_steps(opt), 1);
    struct gptneox_param p[64], q[64];
    size_t np = gptneox_params(m, p, 64);
    assert_int_equal(gptneox_params(before, q, 64), np);
    int decayed = 0, kept = 0;
    for (size_t i = 0; i < np; i++) {
        for (size_t j = 0; j < p[i].n; j++) {
            float want = p[i].decay ? q[i].data[j] * (float)(1.0 - 0.1 * 0.5) : q[i].data[j];
            if (p[i].data[j] != want)
                fail_msg("%s[%zu]: %g, want %g", p[i].name, j, (double)p[i].data[j], (double)want);
        }
        if (p[i].decay) {
            decayed++;
            assert_true(strstr(p[i].name, "weight") && !strstr(p[i].name, "norm"));
        } else {
            kept++;
        }
    }
    assert_int_equal(decayed, 2 + 2 * 4); /* embed_in, embed_out, 4 matrices per layer */
    assert_int_equal(kept, 2 * 8 + 2);
    struct adamw_config bad = {0.1, 1.0, 0.98, 1e-8, 0.5};
    struct adamw *o2 = NULL;
    assert_int_equal(adamw_create(&o2, m, &bad, &e), ERR_INVALID);
    assert_null(o2);
    adamw_free(NULL);
    adamw_free(opt);
    gptneox_free(g);
    gptneox_free(m);
    gptneox_free(before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_torch),
        cmocka_unit_test(test_decay_only_matrices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
