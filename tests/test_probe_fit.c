/*
 * test_probe_fit - the linear probes of workers/battery/probe_fit.h.
 *
 *   reference  softmax (3 classes), binary and ridge fits against the
 *              float64 solutions of tests/reference/probe_ref.py
 *              (tests/golden/probe/): weights within 5e-4 * max(1, max|W|)
 *              (absolute), held-out accuracies, majority and shuffled
 *              baselines within one held-out row (1/n); ridge weights within
 *              1e-4 * max(1, max|w|), R^2 within 1e-5.
 *   planted    a class-dependent shift of 4 along one feature per class
 *              (4 classes, 32 features): held-out accuracy > 0.98, the
 *              shuffled-label probe below 0.45.  (Its held-out accuracy is
 *              chance only in expectation: with 4 clusters it predicts one
 *              class per cluster, so it has the spread of 4 draws.)  Labels
 *              drawn independently of the features: probe and shuffled
 *              probe within 0.06 of chance 0.25 (binomial sd at 1000
 *              held-out rows 0.014, so ~4.4 sd).  Binary, the sign of a
 *              planted direction u: > 0.98; shuffled within 0.2 of 0.5
 *              (a random direction's accuracy 1 - angle/pi has sd ~0.056
 *              in 32 dimensions).
 *   ridge      y = X w + N(0, 0.01^2): held-out R^2 > 0.999, shuffled R^2
 *              below 0.05.
 *   determinism two fits give bit-identical weights; errors for bad labels
 *              and sizes.
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

#include "workers/battery/probe_fit.h"
#include "common/rng.h"
#include "workers/model/npy.h"

#define GOLD "tests/golden/probe/"

static float *load(const char *name, int want_ndim, int *d0, int *d1)
{
    char path[256];
    snprintf(path, sizeof path, GOLD "%s.npy", name);
    float *data = NULL;
    int ndim = 0, shape[NPY_MAX_DIMS];
    struct err e;
    if (npy_read_f32(path, &data, &ndim, shape, &e) < 0)
        fail_msg("%s: %s", path, err_str(&e));
    assert_int_equal(ndim, want_ndim);
    *d0 = shape[0];
    if (d1)
        *d1 = ndim > 1 ? shape[1] : 1;
    return data;
}

static int *to_labels(const float *y, int n)
{
    int *out = malloc((size_t)n * sizeof *out);
    assert_non_null(out);
    for (int i = 0; i < n; i++)
        out[i] = (int)y[i];
    return out;
}

/* standardised copies, as probe_classify makes them */
static void standardise(const float *Xtr, int ntr, const float *Xte, int nte, int d, float **tr,
                        float **te)
{
    struct probe_scaler s;
    struct err e;
    assert_int_equal(probe_scaler_fit(&s, Xtr, ntr, d, &e), 0);
    *tr = malloc((size_t)ntr * d * sizeof **tr);
    *te = malloc((size_t)nte * d * sizeof **te);
    memcpy(*tr, Xtr, (size_t)ntr * d * sizeof **tr);
    memcpy(*te, Xte, (size_t)nte * d * sizeof **te);
    probe_scaler_apply(&s, *tr, ntr);
    probe_scaler_apply(&s, *te, nte);
    probe_scaler_free(&s);
}

static void check_classifier_case(const char *name, int K, uint64_t seed)
{
    char buf[64];
    int ntr, nte, d, d2, kk, one, ns;
    snprintf(buf, sizeof buf, "%s_Xtr", name);
    float *Xtr = load(buf, 2, &ntr, &d);
    snprintf(buf, sizeof buf, "%s_Xte", name);
    float *Xte = load(buf, 2, &nte, &d2);
    assert_int_equal(d, d2);
    snprintf(buf, sizeof buf, "%s_ytr", name);
    float *ytrf = load(buf, 1, &one, NULL);
    assert_int_equal(one, ntr);
    snprintf(buf, sizeof buf, "%s_yte", name);
    float *ytef = load(buf, 1, &one, NULL);
    assert_int_equal(one, nte);
    snprintf(buf, sizeof buf, "%s_W", name);
    float *Wr = load(buf, 2, &kk, &d2);
    assert_int_equal(kk, K);
    assert_int_equal(d2, d);
    snprintf(buf, sizeof buf, "%s_b", name);
    float *br = load(buf, 1, &one, NULL);
    snprintf(buf, sizeof buf, "%s_scores", name);
    float *sc = load(buf, 1, &ns, NULL);
    assert_int_equal(ns, 3);
    int *ytr = to_labels(ytrf, ntr), *yte = to_labels(ytef, nte);

    float *tr, *te;
    standardise(Xtr, ntr, Xte, nte, d, &tr, &te);
    struct probe_logreg m;
    struct err e;
    assert_int_equal(probe_logreg_fit(&m, tr, ytr, ntr, d, K, PROBE_LOGREG_LAMBDA, &e), 0);
    double wmax = 0, dw = 0;
    for (int i = 0; i < K * d; i++) {
        wmax = fmax(wmax, fabs(Wr[i]));
        dw = fmax(dw, fabs(m.W[i] - Wr[i]));
    }
    for (int k = 0; k < K; k++)
        dw = fmax(dw, fabs(m.b[k] - br[k]));
    printf("%s: %d L-BFGS steps (converged %d), max |W - W_ref| %.3g (max |W_ref| %.3f)\n", name,
           m.iters, m.converged, dw, wmax);
    if (dw > 5e-4 * fmax(1.0, wmax))
        fail_msg("%s: weights differ from the reference by %g", name, dw);
    assert_true(m.converged);
    probe_logreg_free(&m);

    struct probe_result r;
    assert_int_equal(probe_classify(Xtr, ytr, ntr, Xte, yte, nte, d, K, seed, &r, &e), 0);
    printf("%s: held-out acc %.4f (ref %.4f), majority %.4f (ref %.4f), shuffled %.4f (ref %.4f)\n",
           name, r.score, sc[0], r.majority, sc[1], r.shuffled, sc[2]);
    assert_true(fabs(r.score - sc[0]) <= 1.0 / nte + 1e-6);
    assert_true(fabs(r.majority - sc[1]) <= 1e-6);
    assert_true(fabs(r.shuffled - sc[2]) <= 1.0 / nte + 1e-6);
    free(tr);
    free(te);
    free(Xtr);
    free(Xte);
    free(ytrf);
    free(ytef);
    free(Wr);
    free(br);
    free(sc);
    free(ytr);
    free(yte);
}

static void test_reference_softmax(void **state)
{
    (void)state;
    check_classifier_case("softmax3", 3, 11); /* seeds as SEEDS in probe_ref.py */
    check_classifier_case("binary", 2, 12);
}

static void test_reference_ridge(void **state)
{
    (void)state;
    int ntr, nte, d, d2, one;
    float *Xtr = load("ridge_Xtr", 2, &ntr, &d), *Xte = load("ridge_Xte", 2, &nte, &d2);
    float *ytr = load("ridge_ytr", 1, &one, NULL), *yte = load("ridge_yte", 1, &one, NULL);
    float *wr = load("ridge_w", 1, &one, NULL), *br = load("ridge_b", 1, &one, NULL);
    float *sc = load("ridge_scores", 1, &one, NULL);
    float *tr, *te;
    standardise(Xtr, ntr, Xte, nte, d, &tr, &te);
    struct probe_ridge m;
    struct err e;
    assert_int_equal(probe_ridge_fit(&m, tr, ytr, ntr, d, PROBE_RIDGE_LAMBDA, &e), 0);
    double wmax = 0, dw = 0;
    for (int j = 0; j < d; j++) {
        wmax = fmax(wmax, fabs(wr[j]));
        dw = fmax(dw, fabs(m.w[j] - wr[j]));
    }
    printf("ridge: max |w - w_ref| %.3g (max |w_ref| %.3f), b %.6f (ref %.6f)\n", dw, wmax, m.b,
           br[0]);
    assert_true(dw <= 1e-4 * fmax(1.0, wmax));
    assert_true(fabs(m.b - br[0]) <= 1e-5 * fmax(1.0, fabs(br[0])));
    probe_ridge_free(&m);
    struct probe_result r;
    assert_int_equal(probe_regress(Xtr, ytr, ntr, Xte, yte, nte, d, 13, &r, &e), 0);
    printf("ridge: held-out R2 %.6f (ref %.6f), shuffled %.6f (ref %.6f)\n", r.score, sc[0],
           r.shuffled, sc[1]);
    assert_true(fabs(r.score - sc[0]) <= 1e-5);
    assert_true(fabs(r.shuffled - sc[1]) <= 1e-5);
    assert_true(isnan(r.majority));
    free(tr);
    free(te);
    free(Xtr);
    free(Xte);
    free(ytr);
    free(yte);
    free(wr);
    free(br);
    free(sc);
}

/* ---- synthetic data ---- */

static float gauss(uint64_t *s)
{
    /* Box-Muller from two uniforms in (0, 1] */
    double u1 = ((rng_next(s) >> 11) + 1) * 0x1.0p-53, u2 = (rng_next(s) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2 * M_PI * u2));
}

static void test_planted(void **state)
{
    (void)state;
    const int ntr = 2000, nte = 1000, d = 32, K = 4;
    float *X = malloc((size_t)(ntr + nte) * d * sizeof *X);
    int *y = malloc((size_t)(ntr + nte) * sizeof *y);
    uint64_t s = 1234;
    for (int i = 0; i < ntr + nte; i++) {
        y[i] = (int)rng_below(&s, K);
        for (int j = 0; j < d; j++)
            X[(size_t)i * d + j] = gauss(&s) + 1.0f + 0.5f * j; /* offsets: standardising matters */
        X[(size_t)i * d + 3 + 5 * y[i]] += 4.0f;
    }
    struct probe_result r;
    struct err e;
    assert_int_equal(probe_classify(X, y, ntr, X + (size_t)ntr * d, y + ntr, nte, d, K, 7, &r, &e),
                     0);
    printf("planted 4-class: held-out acc %.4f, majority %.4f, shuffled %.4f (%d / %d steps)\n",
           r.score, r.majority, r.shuffled, r.iters, r.shuffled_iters);
    assert_true(r.score > 0.98);
    assert_true(r.shuffled < 0.45);
    assert_true(fabs(r.majority - 0.25) <= 0.06);

    /* labels independent of the features: probe and shuffled probe at chance */
    int *yr = malloc((size_t)(ntr + nte) * sizeof *yr);
    uint64_t s2 = 77;
    for (int i = 0; i < ntr + nte; i++)
        yr[i] = (int)rng_below(&s2, K);
    assert_int_equal(
        probe_classify(X, yr, ntr, X + (size_t)ntr * d, yr + ntr, nte, d, K, 8, &r, &e), 0);
    printf("random labels 4-class: held-out acc %.4f, majority %.4f, shuffled %.4f\n", r.score,
           r.majority, r.shuffled);
    assert_true(fabs(r.score - 0.25) <= 0.06);
    assert_true(fabs(r.shuffled - 0.25) <= 0.06);
    free(yr);

    /* binary: the sign of a planted direction u */
    float u[32];
    for (int j = 0; j < d; j++)
        u[j] = gauss(&s);
    for (int i = 0; i < ntr + nte; i++) {
        double p = 0;
        for (int j = 0; j < d; j++)
            p += (X[(size_t)i * d + j] - 1.0f - 0.5f * j) * u[j];
        y[i] = p > 0;
    }
    assert_int_equal(probe_classify(X, y, ntr, X + (size_t)ntr * d, y + ntr, nte, d, 2, 7, &r, &e),
                     0);
    printf("planted binary: held-out acc %.4f, majority %.4f, shuffled %.4f\n", r.score,
           r.majority, r.shuffled);
    assert_true(r.score > 0.98);
    assert_true(fabs(r.shuffled - 0.5) <= 0.2);

    /* determinism: two fits, the same bits */
    struct probe_logreg a, b;
    assert_int_equal(probe_logreg_fit(&a, X, y, ntr, d, 2, PROBE_LOGREG_LAMBDA, &e), 0);
    assert_int_equal(probe_logreg_fit(&b, X, y, ntr, d, 2, PROBE_LOGREG_LAMBDA, &e), 0);
    assert_memory_equal(a.W, b.W, (size_t)2 * d * sizeof *a.W);
    assert_memory_equal(a.b, b.b, 2 * sizeof *a.b);
    probe_logreg_free(&a);
    probe_logreg_free(&b);

    /* errors */
    y[5] = 2;
    assert_int_equal(probe_logreg_fit(&a, X, y, ntr, d, 2, PROBE_LOGREG_LAMBDA, &e), ERR_INVALID);
    assert_non_null(strstr(e.msg, "label 2 of row 5"));
    assert_null(a.W);
    assert_int_equal(probe_classify(X, y, 0, X, y, 1, d, 2, 7, &r, &e), ERR_INVALID);
    assert_int_equal(probe_logreg_fit(&a, X, y, ntr, d, 1, PROBE_LOGREG_LAMBDA, &e), ERR_INVALID);
    free(X);
    free(y);
}

static void test_ridge_planted(void **state)
{
    (void)state;
    const int ntr = 1500, nte = 500, d = 24;
    float *X = malloc((size_t)(ntr + nte) * d * sizeof *X);
    float *y = malloc((size_t)(ntr + nte) * sizeof *y);
    float w[24];
    uint64_t s = 99;
    for (int j = 0; j < d; j++)
        w[j] = gauss(&s);
    for (int i = 0; i < ntr + nte; i++) {
        double t = 3.0;
        for (int j = 0; j < d; j++) {
            X[(size_t)i * d + j] = gauss(&s) * (1.0f + j * 0.2f) - 2.0f;
            t += X[(size_t)i * d + j] * w[j];
        }
        y[i] = (float)(t + 0.01 * gauss(&s));
    }
    struct probe_result r;
    struct err e;
    assert_int_equal(probe_regress(X, y, ntr, X + (size_t)ntr * d, y + ntr, nte, d, 5, &r, &e), 0);
    printf("planted ridge: held-out R2 %.7f, shuffled %.4f\n", r.score, r.shuffled);
    assert_true(r.score > 0.999);
    assert_true(r.shuffled < 0.05);
    struct probe_ridge m;
    assert_int_equal(probe_ridge_fit(&m, X, y, ntr, d, 0.0, &e), ERR_INVALID);
    free(X);
    free(y);
}

static void test_small_helpers(void **state)
{
    (void)state;
    const int y[6] = {2, 0, 2, 1, 0, 1};
    assert_int_equal(probe_majority(y, 6, 3), 0); /* ties: the lowest */
    assert_int_equal(probe_majority(y, 3, 3), 2);
    const int p[6] = {2, 0, 1, 1, 0, 0};
    assert_true(probe_accuracy(p, y, 6) == 4.0 / 6);
    assert_true(isnan(probe_accuracy(p, y, 0)));
    const float t[4] = {1, 2, 3, 4}, q[4] = {1, 2, 3, 5};
    assert_true(fabs(probe_r2(q, t, 4) - (1.0 - 1.0 / 5.0)) < 1e-12);
    const float c[3] = {2, 2, 2};
    assert_true(isnan(probe_r2(q, c, 3)));
    /* the shuffle is a permutation, fixed by the seed */
    int a[50], b[50], seen[50] = {0};
    for (int i = 0; i < 50; i++)
        a[i] = b[i] = i;
    probe_shuffle_int(a, 50, 3);
    probe_shuffle_int(b, 50, 3);
    assert_memory_equal(a, b, sizeof a);
    for (int i = 0; i < 50; i++)
        seen[a[i]]++;
    for (int i = 0; i < 50; i++)
        assert_int_equal(seen[i], 1);
    int moved = 0;
    for (int i = 0; i < 50; i++)
        moved += a[i] != i;
    assert_true(moved > 40);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_softmax),
        cmocka_unit_test(test_reference_ridge),
        cmocka_unit_test(test_planted),
        cmocka_unit_test(test_ridge_planted),
        cmocka_unit_test(test_small_helpers),
    };
    return cmocka_run_group_tests_name("probe_fit", tests, NULL, NULL);
}
