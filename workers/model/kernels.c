#include "workers/model/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "workers/model/vmath.h"

void matmul_forward(float *out, const float *inp, const float *w, const float *b, int N,
                    int K, int M)
{
    float beta = 0.0f;
    if (b) {
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * M, b, (size_t)M * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.0f, inp, K, w, K,
                beta, out, M);
}

KERNEL_CLONES void layernorm_forward_stats(float *out, float *mean, float *rstd,
                                           const float *inp, const float *w, const float *b,
                                           int N, int C, float eps)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double s = 0.0;
        for (int i = 0; i < C; i++)
            s += x[i];
        float mu = (float)(s / C);
        double v = 0.0;
        for (int i = 0; i < C; i++) {
            float d = x[i] - mu;
            v += (double)d * d;
        }
        float rs = (float)(1.0 / sqrt(v / C + eps));
        if (mean)
            mean[n] = mu;
        if (rstd)
            rstd[n] = rs;
        for (int i = 0; i < C; i++)
            o[i] = (x[i] - mu) * rs * w[i] + b[i];
    }
}

KERNEL_CLONES void layernorm_scale(float *mean, float *scale, float *rstd, const float *inp,
                                   int N, int C, float eps)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        double s = 0.0;
        for (int i = 0; i < C; i++)
            s += x[i];
        float mu = (float)(s / C);
        double v = 0.0;
        for (int i = 0; i < C; i++) {
            float d = x[i] - mu;
            v += (double)d * d;
        }
        double sd = sqrt(v / C + eps);
        mean[n] = mu;
        scale[n] = (float)sd;
        if (rstd)
            rstd[n] = (float)(1.0 / sd);
    }
}

KERNEL_CLONES void layernorm_normalize(float *out, const float *inp, const float *mean,
                                       const float *scale, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        const float mu = mean[n], sc = scale[n];
        for (int i = 0; i < C; i++)
            o[i] = (x[i] - mu) / sc;
    }
}

KERNEL_CLONES void layernorm_affine(float *x, const float *w, const float *b, int N, int C)
{
    for (int n = 0; n < N; n++) {
        float *o = x + (size_t)n * C;
        for (int i = 0; i < C; i++)
            o[i] = o[i] * w[i] + b[i];
    }
}

void layernorm_forward(float *out, const float *inp, const float *w, const float *b, int N,
                       int C, float eps)
{
    layernorm_forward_stats(out, NULL, NULL, inp, w, b, N, C, eps);
}

KERNEL_CLONES void vexp(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = exp_approx(inp[i]);
}

KERNEL_CLONES void verf(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = erf_approx(inp[i]);
}

KERNEL_CLONES void gelu_forward(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erf_approx(x[i] * 0.70710678118654752f));
}

KERNEL_CLONES void gelu_tanh_forward(float *x, size_t n)
{
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float u = k * (v + 0.044715f * v * v * v);
        /* tanh(u) = 1 - 2 / (exp(2u) + 1) */
        float th = 1.0f - 2.0f / (exp_approx(2.0f * u) + 1.0f);
        x[i] = 0.5f * v * (1.0f + th);
    }
}

/* sum_i exp(x[i] - shift) with 8 independent partial sums, so the loop
 * vectorises without reassociation flags. */
KERNEL_CLONES static double sum_exp_shifted(const float *x, int n, float shift)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += exp_approx(x[i + j] - shift);
    double s = 0.0;
    for (; i < n; i++)
        s += exp_approx(x[i] - shift);
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

KERNEL_CLONES void softmax_row(float *x, int n)
{
    float mx = max_row(x, n);
    float acc[16] = {0};
    int i = exp_blocks16(x, n, mx, acc);
    float s = 0.0f;
    for (; i < n; i++) {
        x[i] = exp_approx(x[i] - mx);
        s += x[i];
    }
    for (int j = 0; j < 16; j++)
        s += acc[j];
    float inv = 1.0f / s;
    for (i = 0; i < n; i++)
        x[i] *= inv;
}

KERNEL_CLONES double xent_grad_row(float *l, int V, int target, float scale)
{
    const float mx = max_row(l, V);
    const float lt = l[target] - mx;
    float acc[16] = {0};
    int i = exp_blocks16(l, V, mx, acc);
    double s = 0.0;
    for (; i < V; i++) {
        l[i] = exp_approx(l[i] - mx);
        s += l[i];
    }
    for (int j = 0; j < 16; j++)
        s += acc[j];
    const float k = (float)(scale / s);
    for (i = 0; i < V; i++)
        l[i] *= k;
    l[target] -= scale;
    return log(s) - lt;
}

void rotary_tables(float *cosv, float *sinv, int T, int rd, double base)
{
    int half = rd / 2;
    for (int i = 0; i < half; i++) {
        /* inv_freq in float32, as torch computes base ** (2i/rd) in float */
        float expo = (float)(2 * i) / (float)rd;
        float inv_freq = 1.0f / (float)pow(base, (double)expo);
        for (int t = 0; t < T; t++) {
            float ang = (float)t * inv_freq;
            cosv[(size_t)t * half + i] = (float)cos((double)ang);
            sinv[(size_t)t * half + i] = (float)sin((double)ang);
        }
    }
}

/* Rotate each (x_i, x_{i+half}) pair of q and k by the position's angle
 * times dir (+1 or -1): dir -1 is the inverse rotation, which is the
 * transpose, so it maps the rotated vectors' gradients to the inputs'. */
static void rotary_apply(float *qkv, const float *cosv, const float *sinv, int B, int T, int NH,
                         int HS, int rd, float dir)
{
    int half = rd / 2;
    if (half == 0)
        return;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *c = cosv + (size_t)t * half;
            const float *s = sinv + (size_t)t * half;
            for (int h = 0; h < NH; h++)
                for (int which = 0; which < 2; which++) { /* q, then k */
                    float *v = qkv + (((size_t)b * T + t) * NH + h) * 3 * HS + (size_t)which * HS;
                    for (int i = 0; i < half; i++) {
                        float x1 = v[i], x2 = v[i + half], si = dir * s[i];
                        v[i] = x1 * c[i] - x2 * si;
                        v[i + half] = x2 * c[i] + x1 * si;
                    }
                }
        }
}

void rotary_forward(float *qkv, const float *cosv, const float *sinv, int B, int T,
                    int NH, int HS, int rd)
{
    rotary_apply(qkv, cosv, sinv, B, T, NH, HS, rd, 1.0f);
}

void rotary_backward(float *dqkv, const float *cosv, const float *sinv, int B, int T, int NH,
                     int HS, int rd)
{
    rotary_apply(dqkv, cosv, sinv, B, T, NH, HS, rd, -1.0f);
}

double crossentropy_forward(float *losses, const float *logits, const int *targets, int N,
                            int V)
{
    double total = 0.0;
    int counted = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) {
            losses[n] = 0.0f;
            continue;
        }
        const float *l = logits + (size_t)n * V;
        float mx = max_row(l, V);
        double loss = log(sum_exp_shifted(l, V, mx)) + mx - l[targets[n]];
        losses[n] = (float)loss;
        total += loss;
        counted++;
    }
    return counted ? total / counted : 0.0;
}

double logsumexp_row(const float *x, int n, int *argmax)
{
    float mx = max_row(x, n);
    if (argmax) {
        int i = 0;
        while (i < n - 1 && !(x[i] == mx))
            i++;
        *argmax = i;
    }
    return log(sum_exp_shifted(x, n, mx)) + mx;
}

KERNEL_CLONES double dot_diff_row(const float *p, const float *a, const float *b, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] += p[i + j] * (a[i + j] - b[i + j]);
    double s = 0.0;
    for (; i < n; i++)
        s += (double)p[i] * (a[i] - b[i]);
    for (int j = 0; j < 16; j++)
        s += acc[j];
    return s;
}
