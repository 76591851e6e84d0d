/*
 * test_sgld - the SGLD estimator of the local learning coefficient
 * (workers/battery/sgld.h) on potentials whose coefficient is known.
 *
 *  - Regular: L(w) = 1/2 sum h_i w_i^2 in d = 10 dimensions (h_i from 0.5
 *    to 2), sampled at its minimum w* = 0 with nbeta 100, gamma 0,
 *    eps 2e-4, 8 chains of 1000 burn-in steps and 100000 draws: the
 *    learning coefficient of a non-degenerate minimum is d/2 = 5; the
 *    estimate is within 3 % of it (measured: 5.046, chains' standard
 *    deviation 0.065; the Euler step's own bias, 1/(1 - eps nbeta h/4)
 *    per coordinate, is +0.6 % here).
 *  - Singular: L(w) = sum w_i^4, d = 10: the real log canonical threshold
 *    of w^4 is 1/4 per coordinate (Watanabe 2009), so lambda = d/4 = 2.5;
 *    for this homogeneous potential nbeta E[L] = d/4 exactly at any
 *    temperature.  Same sampler settings: within 3 % (measured 2.513).
 *  - With a localisation gamma, the quadratic's estimate follows the
 *    closed form sum 1/2 nbeta h / (nbeta h + gamma) (within 3 %;
 *    measured 2.702 against 2.668).
 *  - Determinism: the same seed gives bit-identical traces, another seed
 *    a different trace; w holds w* again bit for bit afterwards.
 *  - Many noise blocks: a quadratic in d = 203939 dimensions (four
 *    blocks, the last of odd length) gives the Euler chain's exact
 *    stationary value sum 1/2 / (1 - eps nbeta h / 4) within 1 %, and the
 *    same bits with 1, 2 and 4 threads.
 *  - Divergence: a step size past the Euler stability limit
 *    (eps nbeta h > 4) stops every chain with a loss above
 *    init_loss + max_rise;
 *    ndiverged counts them, llc is NaN, the draws taken stay finite and
 *    w is restored.  One chain diverging out of several leaves the others'
 *    mean.
 *  - Minibatches: with n examples and batch m, each minibatch holds m
 *    valid indices and every permutation covers 0..n-1 exactly once.
 *  - Errors: each bad setting is ERR_INVALID naming it; a NaN in w* or a
 *    non-finite L(w*) is ERR_NUMERIC; a callback failing on its Nth call
 *    stops the estimate with that error, no result, w* restored.
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

#include "workers/battery/sgld.h"

#define D 10

/* The potentials.  ctx: which one, the curvatures, and fault injection. */
struct pot {
    int quartic;
    double h[D];
    long calls, fail_at; /* fail_at > 0: the fail_at-th call fails */
    int n;               /* examples (all alike; checked in idx) */
    long *seen;          /* (n) times each index appeared, or NULL */
    int nan_loss;        /* L(w*) is NaN */
};

static int pot_loss(void *ctx, const float *w, const int *idx, int m, double *loss, float *grad,
                    struct err *e)
{
    struct pot *p = ctx;
    if (++p->calls == p->fail_at)
        return err_set(e, ERR_IO, "pot", "injected failure at call %ld", p->calls);
    for (int k = 0; k < m; k++) {
        assert_true(idx[k] >= 0 && idx[k] < p->n);
        if (p->seen)
            p->seen[idx[k]]++;
    }
    double l = 0.0;
    for (int i = 0; i < D; i++) {
        double x = w[i];
        if (p->quartic) {
            l += x * x * x * x;
            if (grad)
                grad[i] = (float)(4.0 * x * x * x);
        } else {
            l += 0.5 * p->h[i] * x * x;
            if (grad)
                grad[i] = (float)(p->h[i] * x);
        }
    }
    *loss = p->nan_loss && !grad ? NAN : l;
    return 0;
}

static void pot_init(struct pot *p, int quartic)
{
    memset(p, 0, sizeof *p);
    p->quartic = quartic;
    p->n = 1;
    for (int i = 0; i < D; i++)
        p->h[i] = 0.5 + 1.5 * i / (D - 1);
}

static struct sgld_config base_config(void)
{
    return (struct sgld_config){.nbeta = 100, .gamma = 0, .epsilon = 2e-4, .chains = 8,
                                .draws = 100000, .burnin = 1000, .batch = 1,
                                .max_rise = INFINITY, .seed = 7};
}

static void run(struct sgld_result *r, const struct sgld_config *c, struct pot *p, float *w)
{
    struct err e;
    if (sgld_estimate(r, c, w, NULL, D, p->n, pot_loss, p, &e) < 0)
        fail_msg("%s", err_str(&e));
}

/* ---- known answers ---- */

static void test_quadratic_is_d_over_2(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 0);
    float w[D] = {0};
    struct sgld_config c = base_config();
    struct sgld_result r;
    run(&r, &c, &p, w);
    print_message("quadratic d=%d: llc %.4f (theory %.1f) std over chains %.4f init %.3g\n", D,
                  r.llc_mean, D / 2.0, r.llc_std, r.init_loss);
    assert_int_equal(r.ndiverged, 0);
    assert_true(r.init_loss == 0.0);
    assert_true(fabs(r.llc_mean - D / 2.0) <= 0.03 * D / 2.0);
    assert_true(r.llc_std > 0 && r.llc_std < 0.05 * D / 2.0);
    for (int ch = 0; ch < c.chains; ch++)
        assert_int_equal(r.ndraws[ch], c.draws);
    sgld_result_free(&r);
}

static void test_quartic_is_d_over_4(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 1);
    float w[D] = {0};
    struct sgld_config c = base_config();
    struct sgld_result r;
    run(&r, &c, &p, w);
    print_message("quartic d=%d: llc %.4f (theory %.2f) std over chains %.4f\n", D, r.llc_mean,
                  D / 4.0, r.llc_std);
    assert_int_equal(r.ndiverged, 0);
    assert_true(fabs(r.llc_mean - D / 4.0) <= 0.03 * D / 4.0);
    sgld_result_free(&r);
}

static void test_localised_quadratic(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 0);
    float w[D] = {0};
    struct sgld_config c = base_config();
    c.gamma = 100; /* as strong as the loss's pull at h = 1 */
    struct sgld_result r;
    run(&r, &c, &p, w);
    double want = 0.0;
    for (int i = 0; i < D; i++)
        want += 0.5 * c.nbeta * p.h[i] / (c.nbeta * p.h[i] + c.gamma);
    print_message("localised quadratic: llc %.4f, closed form %.4f\n", r.llc_mean, want);
    assert_true(fabs(r.llc_mean - want) <= 0.03 * want);
    assert_true(r.llc_mean < 0.8 * D / 2.0); /* gamma visibly shrinks it */
    sgld_result_free(&r);
}

/* ---- determinism, restoring w ---- */

static void test_deterministic_and_restores_w(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 0);
    float w[D], w_saved[D];
    for (int i = 0; i < D; i++)
        w[i] = w_saved[i] = 0.01f * (float)(i - 3);
    struct sgld_config c = base_config();
    c.draws = 300;
    c.burnin = 20;
    struct sgld_result a, b, x;
    run(&a, &c, &p, w);
    assert_memory_equal(w, w_saved, sizeof w);
    run(&b, &c, &p, w);
    assert_memory_equal(w, w_saved, sizeof w);
    assert_memory_equal(a.trace, b.trace, sizeof(double) * c.chains * c.draws);
    assert_memory_equal(&a.llc_mean, &b.llc_mean, sizeof(double));
    /* chains differ from each other, and another seed differs */
    assert_true(memcmp(a.trace, a.trace + c.draws, sizeof(double) * c.draws) != 0);
    c.seed = 8;
    run(&x, &c, &p, w);
    assert_true(memcmp(a.trace, x.trace, sizeof(double) * c.chains * c.draws) != 0);
    sgld_result_free(&a);
    sgld_result_free(&b);
    sgld_result_free(&x);
}

/* ---- many noise blocks, threads ---- */

/* L = 1/2 sum h_i w_i^2 over a big d; grad written where sgld_estimate says */
struct bigq {
    size_t d;
    float *grad_seen; /* the grad pointer the callback was given */
};

static double big_h(size_t i)
{
    return 0.5 + (double)(i % 7) / 4.0; /* 0.5 .. 2 */
}

static int bigq_loss(void *ctx, const float *w, const int *idx, int m, double *loss,
                     float *grad, struct err *e)
{
    struct bigq *q = ctx;
    (void)idx;
    (void)m;
    (void)e;
    double l = 0.0;
    for (size_t i = 0; i < q->d; i++) {
        l += 0.5 * big_h(i) * (double)w[i] * w[i];
        if (grad)
            grad[i] = (float)(big_h(i) * w[i]);
    }
    if (grad)
        q->grad_seen = grad;
    *loss = l;
    return 0;
}

/* The Euler chain w <- w - (eps/2) P w + sqrt(eps) z on a Gaussian of
 * precision P = nbeta h has stationary variance 1 / (P (1 - eps P / 4)),
 * so nbeta E[L] = sum 1/2 / (1 - eps nbeta h / 4) exactly: with d = 203939
 * (four noise blocks, the last of odd length) the estimate is within 1 %
 * of that, for 1, 2 and 4 threads alike, and the three traces are equal
 * bit for bit.  A caller's gradient vector is the one the callback gets. */
static void test_many_blocks_any_threads(void **s)
{
    (void)s;
    const size_t d = 3 * (size_t)SGLD_NOISE_BLOCK + 7331;
    float *w = calloc(d, sizeof *w), *grad = malloc(d * sizeof *grad);
    assert_non_null(w);
    assert_non_null(grad);
    struct bigq q = {.d = d};
    struct sgld_config c = {.nbeta = 100, .gamma = 0, .epsilon = 2e-3, .chains = 1,
                            .draws = 200, .burnin = 100, .batch = 1, .max_rise = INFINITY,
                            .seed = 11, .threads = 1};
    double want = 0.0;
    for (size_t i = 0; i < d; i++)
        want += 0.5 / (1.0 - c.epsilon * c.nbeta * big_h(i) / 4.0);
    struct sgld_result r[3];
    int threads[3] = {1, 2, 4};
    struct err e;
    for (int k = 0; k < 3; k++) {
        c.threads = threads[k];
        if (sgld_estimate(&r[k], &c, w, k == 2 ? grad : NULL, d, 1, bigq_loss, &q, &e) < 0)
            fail_msg("%s", err_str(&e));
        if (k == 2)
            assert_ptr_equal(q.grad_seen, grad);
        else
            assert_ptr_not_equal(q.grad_seen, grad);
    }
    print_message("d=%zu: llc %.1f, Euler chain's exact %.1f (d/2 = %.1f)\n", d, r[0].llc_mean,
                  want, d / 2.0);
    assert_true(fabs(r[0].llc_mean - want) <= 0.01 * want);
    for (int k = 1; k < 3; k++)
        assert_memory_equal(r[0].trace, r[k].trace, sizeof(double) * c.draws);
    for (size_t i = 0; i < d; i++)
        assert_true(w[i] == 0.0f);
    for (int k = 0; k < 3; k++)
        sgld_result_free(&r[k]);
    free(w);
    free(grad);
}

/* ---- divergence ---- */

static void test_divergence_stops_chains(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 0);
    float w[D] = {0}, zero[D] = {0};
    struct sgld_config c = base_config();
    c.epsilon = 0.05; /* eps * nbeta * h = 2.5 .. 10: unstable for h > 0.8 */
    c.draws = 200;
    c.burnin = 10;
    c.max_rise = 1e6;
    struct sgld_result r;
    run(&r, &c, &p, w);
    assert_memory_equal(w, zero, sizeof w);
    assert_int_equal(r.ndiverged, c.chains);
    assert_true(isnan(r.llc_mean) && isnan(r.llc_std));
    for (int ch = 0; ch < c.chains; ch++) {
        assert_true(r.diverged_step[ch] >= 0 && r.diverged_step[ch] < c.burnin + c.draws);
        assert_true(isnan(r.llc_chain[ch]));
        assert_true(r.ndraws[ch] < c.draws);
        for (int t = 0; t < c.draws; t++) {
            double v = r.trace[(size_t)ch * c.draws + t];
            if (t < r.ndraws[ch])
                assert_true(isfinite(v) && v <= c.max_rise); /* init_loss 0 */
            else
                assert_true(isnan(v));
        }
    }
    sgld_result_free(&r);

    /* a bound one healthy chain stays under and others cross: found
     * by making the bound tight enough that some, not all, chains cross */
    c = base_config();
    c.draws = 2000;
    c.burnin = 200;
    c.chains = 8;
    run(&r, &c, &p, w);
    double lo = INFINITY, hi = 0;
    for (int ch = 0; ch < c.chains; ch++) { /* the chains' largest losses */
        double mx = 0;
        for (int t = 0; t < c.draws; t++)
            mx = fmax(mx, r.trace[(size_t)ch * c.draws + t]);
        lo = fmin(lo, mx);
        hi = fmax(hi, mx);
    }
    sgld_result_free(&r);
    assert_true(lo < hi);
    c.max_rise = (lo + hi) / 2;
    run(&r, &c, &p, w);
    assert_true(r.ndiverged > 0 && r.ndiverged < c.chains);
    double sum = 0;
    int ok = 0;
    for (int ch = 0; ch < c.chains; ch++)
        if (r.diverged_step[ch] < 0) {
            assert_true(isfinite(r.llc_chain[ch]));
            sum += r.llc_chain[ch];
            ok++;
        } else {
            assert_true(isnan(r.llc_chain[ch]));
        }
    assert_int_equal(ok, c.chains - r.ndiverged);
    assert_true(fabs(r.llc_mean - sum / ok) <= 1e-12 * fabs(sum / ok));
    sgld_result_free(&r);
}

/* ---- minibatches ---- */

static void test_minibatches_cover_the_data(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 0);
    p.n = 13;
    long seen[13] = {0};
    p.seen = seen;
    float w[D] = {0};
    struct sgld_config c = base_config();
    c.chains = 1;
    c.batch = 4;
    c.burnin = 0;
    c.draws = 13 * 5; /* 13 * 5 * 4 = 20 permutations of 13 */
    struct sgld_result r;
    run(&r, &c, &p, w);
    /* init_loss saw each example once; the chain 20 times each */
    for (int i = 0; i < 13; i++)
        assert_int_equal(seen[i], 1 + 20);
    assert_int_equal(p.calls, 4 + c.draws); /* ceil(13/4) init chunks */
    sgld_result_free(&r);
}

/* ---- errors ---- */

static void expect_invalid(struct sgld_config c, int n, const char *needle)
{
    struct pot p;
    pot_init(&p, 0);
    p.n = n;
    float w[D] = {0};
    struct sgld_result r;
    struct err e;
    err_clear(&e);
    assert_int_equal(sgld_estimate(&r, &c, w, NULL, D, n, pot_loss, &p, &e), ERR_INVALID);
    if (!strstr(e.msg, needle))
        fail_msg("message '%s' lacks '%s'", e.msg, needle);
    assert_null(r.trace);
    assert_int_equal(p.calls, 0);
}

static void test_bad_settings(void **s)
{
    (void)s;
    struct sgld_config c = base_config();
    c.nbeta = 0;
    expect_invalid(c, 1, "nbeta");
    c = base_config();
    c.gamma = -1;
    expect_invalid(c, 1, "gamma");
    c = base_config();
    c.epsilon = NAN;
    expect_invalid(c, 1, "epsilon");
    c = base_config();
    c.chains = 0;
    expect_invalid(c, 1, "chains");
    c = base_config();
    c.max_rise = 0;
    expect_invalid(c, 1, "max_rise");
    c = base_config();
    c.burnin = -1;
    expect_invalid(c, 1, "burn-in");
    c = base_config();
    c.batch = 5;
    expect_invalid(c, 4, "minibatch of 5");
    c = base_config();
    expect_invalid(c, 0, "no examples");
}

static void test_numeric_errors_and_faults(void **s)
{
    (void)s;
    struct pot p;
    pot_init(&p, 0);
    float w[D] = {0}, saved[D];
    struct sgld_config c = base_config();
    c.draws = 50;
    c.burnin = 5;
    struct sgld_result r;
    struct err e;
    w[3] = NAN;
    assert_int_equal(sgld_estimate(&r, &c, w, NULL, D, 1, pot_loss, &p, &e), ERR_NUMERIC);
    assert_non_null(strstr(e.msg, "parameter 3"));
    w[3] = 0;
    p.nan_loss = 1;
    assert_int_equal(sgld_estimate(&r, &c, w, NULL, D, 1, pot_loss, &p, &e), ERR_NUMERIC);
    assert_non_null(strstr(e.msg, "loss at w*"));
    p.nan_loss = 0;
    for (int i = 0; i < D; i++)
        w[i] = saved[i] = 0.1f * (float)i;
    p.calls = 0;
    p.fail_at = 100; /* inside the second chain */
    assert_int_equal(sgld_estimate(&r, &c, w, NULL, D, 1, pot_loss, &p, &e), ERR_IO);
    assert_non_null(strstr(e.msg, "injected failure at call 100"));
    assert_null(r.trace);
    assert_memory_equal(w, saved, sizeof w);
    sgld_result_free(&r); /* a zeroed result is fine */
    sgld_result_free(NULL);
}

static void test_default_nbeta(void **s)
{
    (void)s;
    assert_true(fabs(sgld_default_nbeta(64) - 64 / log(64.0)) < 1e-12);
    assert_true(sgld_default_nbeta(1) == 1.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quadratic_is_d_over_2),
        cmocka_unit_test(test_quartic_is_d_over_4),
        cmocka_unit_test(test_localised_quadratic),
        cmocka_unit_test(test_deterministic_and_restores_w),
        cmocka_unit_test(test_many_blocks_any_threads),
        cmocka_unit_test(test_divergence_stops_chains),
        cmocka_unit_test(test_minibatches_cover_the_data),
        cmocka_unit_test(test_bad_settings),
        cmocka_unit_test(test_numeric_errors_and_faults),
        cmocka_unit_test(test_default_nbeta),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
