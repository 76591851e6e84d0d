/*
 * test_kernels - the element-wise kernels against libm and direct formulas.
 * Tolerances: exp relative 4e-7, erf absolute 3e-7, GELU absolute 1e-6
 * (relative to max(1,|x|)), softmax rows sum to 1 within 1e-6, LayerNorm
 * against a double-precision computation within 1e-5.
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

#include "workers/model/kernels.h"

static void test_exp(void **state)
{
    (void)state;
    enum { N = 200001 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++)
        x[i] = -87.0f + 175.0f * (float)i / (N - 1);
    vexp(y, x, N);
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        double ref = exp((double)x[i]);
        double rel = fabs(y[i] - ref) / ref;
        worst = rel > worst ? rel : worst;
    }
    printf("[ kernels ] exp max relative error %.2e\n", worst);
    assert_true(worst < 4e-7);
    free(x);
    free(y);
}

static void test_erf_gelu(void **state)
{
    (void)state;
    enum { N = 100001 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++)
        x[i] = -10.0f + 20.0f * (float)i / (N - 1);
    verf(y, x, N);
    double worst = 0.0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, fabs(y[i] - erf((double)x[i])));
    printf("[ kernels ] erf max absolute error %.2e\n", worst);
    assert_true(worst < 3e-7);
    memcpy(y, x, N * sizeof(float));
    gelu_forward(y, N);
    worst = 0.0;
    for (int i = 0; i < N; i++) {
        double v = x[i], ref = 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
        worst = fmax(worst, fabs(y[i] - ref) / fmax(1.0, fabs(v)));
    }
    printf("[ kernels ] gelu max error %.2e\n", worst);
    assert_true(worst < 1e-6);
    memcpy(y, x, N * sizeof(float));
    gelu_tanh_forward(y, N);
    worst = 0.0;
    for (int i = 0; i < N; i++) {
        double v = x[i];
        double ref = 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
        worst = fmax(worst, fabs(y[i] - ref) / fmax(1.0, fabs(v)));
    }
    assert_true(worst < 1e-6);
    free(x);
    free(y);
}

static void test_softmax_layernorm(void **state)
{
    (void)state;
    float row[37];
    for (int i = 0; i < 37; i++)
        row[i] = (float)sin(i * 1.7) * 30.0f;
    float ref[37];
    double mx = -1e30, s = 0.0;
    for (int i = 0; i < 37; i++)
        mx = fmax(mx, row[i]);
    for (int i = 0; i < 37; i++)
        s += exp(row[i] - mx);
    for (int i = 0; i < 37; i++)
        ref[i] = (float)(exp(row[i] - mx) / s);
    softmax_row(row, 37);
    double sum = 0.0;
    for (int i = 0; i < 37; i++) {
        assert_float_equal(row[i], ref[i], 1e-6);
        sum += row[i];
    }
    assert_float_equal(sum, 1.0, 1e-6);

    enum { N = 3, C = 50 };
    float x[N * C], w[C], b[C], out[N * C];
    for (int i = 0; i < N * C; i++)
        x[i] = (float)cos(i * 0.37) * 4.0f + 2.0f;
    for (int i = 0; i < C; i++) {
        w[i] = 1.0f + 0.01f * i;
        b[i] = -0.05f * i;
    }
    layernorm_forward(out, x, w, b, N, C, 1e-5f);
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int i = 0; i < C; i++)
            m += x[n * C + i];
        m /= C;
        for (int i = 0; i < C; i++)
            v += (x[n * C + i] - m) * (x[n * C + i] - m);
        v /= C;
        for (int i = 0; i < C; i++)
            assert_float_equal(out[n * C + i], (x[n * C + i] - m) / sqrt(v + 1e-5) * w[i] + b[i], 1e-5);
    }
}

static void test_crossentropy(void **state)
{
    (void)state;
    float logits[2 * 5] = {1, 2, 3, 4, 5, -1, 0, 1, 0, -1};
    int targets[2] = {4, -1};
    float losses[2];
    double mean = crossentropy_forward(losses, logits, targets, 2, 5);
    double s = 0;
    for (int i = 0; i < 5; i++)
        s += exp(logits[i] - 5.0);
    assert_float_equal(losses[0], log(s), 1e-6);
    assert_float_equal(losses[1], 0.0, 0);
    assert_float_equal(mean, log(s), 1e-6);
}


/* logsumexp_row and dot_diff_row against double loops; the argmax is the
 * first of two equal maxima. */
static void test_lse_dot_diff(void **state)
{
    (void)state;
    enum { n = 1031 }; /* not a multiple of 16 */
    static float x[n], a[n], b[n], p[n];
    uint32_t s = 12345;
    for (int i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((int)(s >> 8) % 20001 - 10000) / 1000.0f; /* [-10, 10] */
        a[i] = x[i] * 0.5f;
        b[i] = (float)(i % 13) - 6.0f;
        p[i] = (float)((i * 7) % 11) / 11.0f;
    }
    x[700] = 20.0f;
    x[900] = 20.0f;
    double mx = 20.0, se = 0.0, dd = 0.0;
    for (int i = 0; i < n; i++) {
        se += exp((double)x[i] - mx);
        dd += (double)p[i] * ((double)a[i] - b[i]);
    }
    int am = -1;
    double lse = logsumexp_row(x, n, &am);
    assert_int_equal(am, 700);
    assert_float_equal(lse, log(se) + mx, 1e-6 * fabs(log(se) + mx));
    assert_float_equal(logsumexp_row(x, n, NULL), lse, 0);
    double got = dot_diff_row(p, a, b, n);
    if (fabs(got - dd) > 1e-5 * fabs(dd))
        fail_msg("dot_diff_row %.9g, double loop %.9g", got, dd);
    assert_true(dot_diff_row(p, a, a, n) == 0.0); /* identical rows: exactly 0 */
    float one = -3.0f;
    assert_float_equal(logsumexp_row(&one, 1, &am), -3.0, 1e-7);
    assert_int_equal(am, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_erf_gelu),
        cmocka_unit_test(test_softmax_layernorm),
        cmocka_unit_test(test_crossentropy),
        cmocka_unit_test(test_lse_dot_diff),
    };
    return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
