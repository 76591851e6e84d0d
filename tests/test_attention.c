/*
 * test_attention - the fused and the materialised causal attention against
 * a direct computation in double, and against each other.
 *
 * Shapes span several blocks of ATT_BLOCK query rows and keys, with a last
 * block that is not full (T = 300 and T = 129), B = 2, NH = 3, HS = 16,
 * and q, k with scores of order 10 (peaky rows).  Tolerances (float32
 * against double):
 *   fused z, materialised pattern and z     max |d| <= 2e-6 (values O(1))
 *   lse                                     max |d| <= 2e-5 (values O(10))
 *   d/dq, d/dk, d/dv (metric sum(g * z))    max |d| <= 1e-5 * max |ref| + 1e-6
 * Fused against materialised: z within 2e-6, gradients within the same
 * tolerance.  Masking: -inf scores give exact zeros, a row of -inf gives a
 * zero row, and a pattern written above the diagonal reaches z.  The
 * fused kernel gives bit-identical results with 1 and 2 threads.
 * tests/attention_cores.sh runs this under several OPENBLAS_CORETYPE.
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

#include "workers/model/attention.h"
#include "workers/model/blas.h"
#include "workers/model/pool.h"

#define NH 3
#define HS 16
#define C (NH * HS)

static float *qkv_new(int B, int T, unsigned seed)
{
    float *x = malloc((size_t)B * T * 3 * C * sizeof(float));
    uint64_t s = seed;
    for (size_t i = 0; i < (size_t)B * T * 3 * C; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(s >> 11) / 9007199254740992.0 - 0.5;
        size_t part = (i / HS) % 3; /* q, k: larger, so some rows are peaky */
        x[i] = (float)(u * (part < 2 ? 5.0 : 2.0));
    }
    return x;
}

static float *scratch_new(void)
{
    return malloc((size_t)pool_threads() * attention_scratch_floats(512, HS) * sizeof(float));
}

/* Direct attention in double: p (B,NH,T,T), z (B,T,NH,HS), lse (B,NH,T);
 * with g (B,T,NH,HS) also dq, dk, dv of sum(g * z) in the qkv layout. */
static void reference(double *p, double *z, double *lse, double *dqkv, const float *qkv,
                      const float *g, int B, int T)
{
    const int ld = 3 * C;
    const double sc = 1.0 / sqrt((double)HS);
    if (dqkv)
        memset(dqkv, 0, (size_t)B * T * ld * sizeof(double));
    double *dp = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *base = qkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
            double *P = p + ((size_t)b * NH + h) * T * T;
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, s = 0.0;
                for (int j = 0; j < T; j++) {
                    double d = 0.0;
                    for (int c = 0; c < HS; c++)
                        d += (double)base[(size_t)i * ld + c] * base[(size_t)j * ld + HS + c];
                    P[(size_t)i * T + j] = j <= i ? d * sc : -INFINITY;
                    mx = fmax(mx, P[(size_t)i * T + j]);
                }
                for (int j = 0; j <= i; j++)
                    s += exp(P[(size_t)i * T + j] - mx);
                lse[((size_t)b * NH + h) * T + i] = mx + log(s);
                for (int j = 0; j < T; j++)
                    P[(size_t)i * T + j] = j <= i ? exp(P[(size_t)i * T + j] - mx) / s : 0.0;
                for (int c = 0; c < HS; c++) {
                    double a = 0.0;
                    for (int j = 0; j <= i; j++)
                        a += P[(size_t)i * T + j] * base[(size_t)j * ld + 2 * HS + c];
                    z[((size_t)b * T + i) * C + (size_t)h * HS + c] = a;
                }
                if (!dqkv)
                    continue;
                /* dz = g; dP_ij = g_i . v_j; dS = P (dP - sum P dP); dq = sc dS k ... */
                const float *gi = g + ((size_t)b * T + i) * C + (size_t)h * HS;
                double D = 0.0;
                for (int j = 0; j <= i; j++) {
                    double d = 0.0;
                    for (int c = 0; c < HS; c++)
                        d += (double)gi[c] * base[(size_t)j * ld + 2 * HS + c];
                    dp[j] = d;
                    D += P[(size_t)i * T + j] * d;
                }
                double *dbase = dqkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
                for (int j = 0; j <= i; j++) {
                    double pij = P[(size_t)i * T + j], ds = pij * (dp[j] - D) * sc;
                    for (int c = 0; c < HS; c++) {
                        dbase[(size_t)i * ld + c] += ds * base[(size_t)j * ld + HS + c];
                        dbase[(size_t)j * ld + HS + c] += ds * base[(size_t)i * ld + c];
                        dbase[(size_t)j * ld + 2 * HS + c] += pij * gi[c];
                    }
                }
            }
        }
    free(dp);
}

static double maxdiff_fd(const float *a, const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static double maxabs_d(const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(b[i]));
    return m;
}

/* The materialised backward of every (batch, head) into dqkv (zeroed). */
static void mat_backward(float *dqkv, const float *g, const float *pat, const float *qkv, int B,
                         int T)
{
    const int ld = 3 * C;
    float *dp = malloc((size_t)T * T * sizeof(float));
    memset(dqkv, 0, (size_t)B * T * ld * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const size_t o = ((size_t)b * NH + h) * T * T;
            const float *gh = g + (size_t)b * T * C + (size_t)h * HS;
            const float *qh = qkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
            float *dh = dqkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
            attention_dpattern_head(dp, gh, C, qh, T, NH, HS);
            attention_backward_pattern_head(dh + 2 * HS, dp, pat + o, pat + o, gh, C, T, NH, HS);
            attention_backward_scores_head(dh, dp, qh, T, NH, HS);
        }
    free(dp);
}

static void check_shape(int B, int T)
{
    const size_t nz = (size_t)B * T * C, nq = 3 * nz, np = (size_t)B * NH * T * T;
    float *qkv = qkv_new(B, T, (unsigned)T), *g = qkv_new(B, T, 7u + (unsigned)T);
    float *z = malloc(nz * sizeof(float)), *zm = malloc(nz * sizeof(float));
    float *lse = malloc((size_t)B * NH * T * sizeof(float)), *pat = malloc(np * sizeof(float));
    float *dq = malloc(nq * sizeof(float)), *dqm = malloc(nq * sizeof(float));
    float *scr = scratch_new();
    double *rp = malloc(np * sizeof(double)), *rz = malloc(nz * sizeof(double));
    double *rl = malloc((size_t)B * NH * T * sizeof(double)), *rd = malloc(nq * sizeof(double));
    for (size_t i = 0; i < nz; i++) /* g: the gradient at z, from the q part of a draw */
        g[i] = g[(i / HS) * 3 * HS + i % HS];
    reference(rp, rz, rl, rd, qkv, g, B, T);

    attention_forward(z, lse, qkv, scr, B, T, NH, HS);
    attention_scores(pat, qkv, B, T, NH, HS);
    attention_softmax(pat, pat, B, NH, T);
    attention_z_pattern(zm, pat, qkv, B, T, NH, HS);
    double dz = maxdiff_fd(z, rz, nz), dl = maxdiff_fd(lse, rl, (size_t)B * NH * T);
    double dp = maxdiff_fd(pat, rp, np), dzm = maxdiff_fd(zm, rz, nz);
    double zz = 0.0;
    for (size_t i = 0; i < nz; i++)
        zz = fmax(zz, fabs((double)z[i] - zm[i]));

    attention_backward(dq, g, z, lse, qkv, scr, B, T, NH, HS);
    mat_backward(dqm, g, pat, qkv, B, T);
    double gmax = maxabs_d(rd, nq), dg = maxdiff_fd(dq, rd, nq), dgm = maxdiff_fd(dqm, rd, nq);
    printf("[ attention ] B=%d T=%d: fused z %.2e lse %.2e grads %.2e; materialised pattern %.2e z %.2e"
           " grads %.2e (max |g| %.2f); fused vs materialised z %.2e\n",
           B, T, dz, dl, dg, dp, dzm, dgm, gmax, zz);
    assert_true(dz <= 2e-6 && dzm <= 2e-6 && dp <= 2e-6 && zz <= 2e-6);
    assert_true(dl <= 2e-5);
    assert_true(dg <= 1e-5 * gmax + 1e-6 && dgm <= 1e-5 * gmax + 1e-6);
    /* the fused and materialised gradients agree with each other too */
    for (size_t i = 0; i < nq; i++)
        assert_true(fabs((double)dq[i] - dqm[i]) <= 2e-5 * gmax + 2e-6);

    /* the same with two threads, bit for bit */
    int th = pool_threads();
    blas_set_threads(2);
    float *z2 = malloc(nz * sizeof(float)), *dq2 = malloc(nq * sizeof(float)),
          *l2 = malloc((size_t)B * NH * T * sizeof(float)), *scr2 = scratch_new();
    attention_forward(z2, l2, qkv, scr2, B, T, NH, HS);
    attention_backward(dq2, g, z2, l2, qkv, scr2, B, T, NH, HS);
    assert_memory_equal(z, z2, nz * sizeof(float));
    assert_memory_equal(lse, l2, (size_t)B * NH * T * sizeof(float));
    assert_memory_equal(dq, dq2, nq * sizeof(float));
    blas_set_threads(th);
    free(z2);
    free(dq2);
    free(l2);
    free(scr2);

    free(qkv);
    free(g);
    free(z);
    free(zm);
    free(lse);
    free(pat);
    free(dq);
    free(dqm);
    free(scr);
    free(rp);
    free(rz);
    free(rl);
    free(rd);
}

static void test_against_double(void **state)
{
    (void)state;
    check_shape(2, 300);
    check_shape(1, 129);
    check_shape(2, 7);
}

/* Masked scores: exact zeros where -inf, a zero row where all are, and a
 * pattern written above the diagonal reaches z. */
static void test_masking(void **state)
{
    (void)state;
    const int B = 1, T = 150;
    const size_t np = (size_t)B * NH * T * T, nz = (size_t)B * T * C;
    float *qkv = qkv_new(B, T, 3), *s = malloc(np * sizeof(float)), *z = malloc(nz * sizeof(float));
    attention_scores(s, qkv, B, T, NH, HS);
    for (int i = 0; i < T; i++) /* causal mask as TransformerLens: -inf above the diagonal */
        for (int j = 0; j < T; j++)
            assert_true((j > i) == (s[(size_t)i * T + j] == -INFINITY));
    s[(size_t)10 * T + 3] = -INFINITY; /* a hook masks one more key */
    for (int j = 0; j < T; j++)        /* and a whole row */
        s[(size_t)20 * T + j] = -INFINITY;
    attention_softmax(s, s, B, NH, T);
    assert_true(s[(size_t)10 * T + 3] == 0.0f);
    double sum = 0.0;
    for (int j = 0; j < T; j++)
        sum += s[(size_t)10 * T + j];
    assert_true(fabs(sum - 1.0) < 1e-6);
    for (int j = 0; j < T; j++)
        assert_true(s[(size_t)20 * T + j] == 0.0f);
    /* row 5 attends to key 140 only (beyond its block of rows): z = v[140] */
    for (int j = 0; j < T; j++)
        s[(size_t)5 * T + j] = j == 140 ? 1.0f : 0.0f;
    attention_z_pattern(z, s, qkv, B, T, NH, HS);
    for (int c = 0; c < HS; c++)
        assert_true(z[(size_t)5 * C + c] == qkv[(size_t)140 * 3 * C + 2 * HS + c]);
    for (int c = 0; c < HS; c++) /* the masked row's z is zero */
        assert_true(z[(size_t)20 * C + c] == 0.0f);
    free(qkv);
    free(s);
    free(z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_double),
        cmocka_unit_test(test_masking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
