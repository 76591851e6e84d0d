#include "workers/model/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "workers/model/pool.h"
#include "workers/model/vmath.h"

/* Blocks of sgemm_par start at multiples of this many rows (columns): a
 * multiple of every register tile OpenBLAS's kernels use, so each output
 * element falls in the same tile, and is summed in the same order, as in
 * one sgemm over the whole matrix. */
#define SGEMM_ALIGN 192

struct sgemm_job {
    int ta, tb, M, N, K, lda, ldb, ldc, by_rows, parts;
    float alpha, beta;
    const float *A, *B;
    float *C;
};

static void sgemm_task(void *vctx, int i, int tid)
{
    (void)tid;
    const struct sgemm_job *j = vctx;
    int lo, hi;
    if (j->by_rows) {
        pool_split(j->M, j->parts, i, SGEMM_ALIGN, &lo, &hi);
        if (lo < hi)
            cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans,
                        j->tb ? CblasTrans : CblasNoTrans, hi - lo, j->N, j->K, j->alpha,
                        j->A + (j->ta ? (size_t)lo : (size_t)lo * j->lda), j->lda, j->B, j->ldb,
                        j->beta, j->C + (size_t)lo * j->ldc, j->ldc);
    } else {
        pool_split(j->N, j->parts, i, SGEMM_ALIGN, &lo, &hi);
        if (lo < hi)
            cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans,
                        j->tb ? CblasTrans : CblasNoTrans, j->M, hi - lo, j->K, j->alpha, j->A,
                        j->lda, j->B + (j->tb ? (size_t)lo * j->ldb : (size_t)lo), j->ldb,
                        j->beta, j->C + lo, j->ldc);
    }
}

void sgemm_par(int transa, int transb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    const int th = pool_threads();
    const int by_rows = M >= N;
    const int len = by_rows ? M : N;
    /* one block per thread: equal work, and every block large */
    int parts = th < (len + SGEMM_ALIGN - 1) / SGEMM_ALIGN ? th
                                                           : (len + SGEMM_ALIGN - 1) / SGEMM_ALIGN;
    if ((double)M * N * K < 1e6)
        parts = 1; /* too small to share */
    struct sgemm_job j = {transa, transb, M, N, K, lda, ldb, ldc, by_rows, parts < 1 ? 1 : parts,
                          alpha, beta, A, B, C};
    pool_for(j.parts, sgemm_task, &j, 1);
}

struct bias_job {
    float *out;
    const float *b;
    int M;
};

static void bias_rows(const void *ctx, size_t lo, size_t hi)
{
    const struct bias_job *j = ctx;
    for (size_t n = lo; n < hi; n++)
        memcpy(j->out + n * j->M, j->b, (size_t)j->M * sizeof(float));
}

void matmul_forward(float *out, const float *inp, const float *w, const float *b, int N,
                    int K, int M)
{
    float beta = 0.0f;
    if (b) {
        struct bias_job j = {out, b, M};
        pool_rows((size_t)N, (size_t)M, bias_rows, &j);
        beta = 1.0f;
    }
    sgemm_par(0, 1, N, M, K, 1.0f, inp, K, w, K, beta, out, M);
}

struct ln_job {
    float *out, *mean, *rstd;
    const float *inp, *w, *b;
    int C;
    float eps;
};

/* Sum of x (n) and of (x - mu)^2: 16 float partial sums each (vectorised,
 * the order fixed by the code), added in double. */
static inline __attribute__((always_inline)) double row_sum(const float *x, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] += x[i + j];
    double s = 0.0;
    for (; i < n; i++)
        s += x[i];
    for (int j = 0; j < 16; j++)
        s += acc[j];
    return s;
}

static inline __attribute__((always_inline)) double row_sqdev(const float *x, int n, float mu)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            float d = x[i + j] - mu;
            acc[j] += d * d;
        }
    double s = 0.0;
    for (; i < n; i++) {
        float d = x[i] - mu;
        s += (double)d * d;
    }
    for (int j = 0; j < 16; j++)
        s += acc[j];
    return s;
}

KERNEL_CLONES static void ln_rows(const void *ctx, size_t lo, size_t hi)
{
    const struct ln_job *j = ctx;
    float *out = j->out, *mean = j->mean, *rstd = j->rstd;
    const float *inp = j->inp, *w = j->w, *b = j->b;
    const int C = j->C;
    const float eps = j->eps;
    for (size_t n = lo; n < hi; n++) {
        const float *x = inp + n * C;
        float *o = out + n * C;
        float mu = (float)(row_sum(x, C) / C);
        float rs = (float)(1.0 / sqrt(row_sqdev(x, C, mu) / C + eps));
        if (mean)
            mean[n] = mu;
        if (rstd)
            rstd[n] = rs;
        for (int i = 0; i < C; i++)
            o[i] = (x[i] - mu) * rs * w[i] + b[i];
    }
}

void layernorm_forward_stats(float *out, float *mean, float *rstd, const float *inp,
                             const float *w, const float *b, int N, int C, float eps)
{
    struct ln_job j = {out, mean, rstd, inp, w, b, C, eps};
    pool_rows((size_t)N, (size_t)C, ln_rows, &j);
}

KERNEL_CLONES void layernorm_scale(float *mean, float *scale, float *rstd, const float *inp,
                                   int N, int C, float eps)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float mu = (float)(row_sum(x, C) / C);
        double sd = sqrt(row_sqdev(x, C, mu) / C + eps);
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

struct add_job {
    float *x;
    const float *y, *z;
};

KERNEL_CLONES static void gelu_part(const void *ctx, size_t lo, size_t hi)
{
    float *x = (float *)(uintptr_t)ctx;
    for (size_t i = lo; i < hi; i++)
        x[i] = 0.5f * x[i] * (1.0f + erf_approx(x[i] * 0.70710678118654752f));
}

void gelu_forward(float *x, size_t n) { pool_rows(n, 1, gelu_part, x); }

KERNEL_CLONES static void gelu_tanh_part(const void *ctx, size_t lo, size_t hi)
{
    float *x = (float *)(uintptr_t)ctx;
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (size_t i = lo; i < hi; i++) {
        float v = x[i];
        float u = k * (v + 0.044715f * v * v * v);
        /* tanh(u) = 1 - 2 / (exp(2u) + 1) */
        float th = 1.0f - 2.0f / (exp_approx(2.0f * u) + 1.0f);
        x[i] = 0.5f * v * (1.0f + th);
    }
}

void gelu_tanh_forward(float *x, size_t n) { pool_rows(n, 1, gelu_tanh_part, x); }

KERNEL_CLONES static void add_part(const void *ctx, size_t lo, size_t hi)
{
    const struct add_job *j = ctx;
    float *x = j->x;
    const float *y = j->y, *z = j->z;
    if (z)
        for (size_t i = lo; i < hi; i++)
            x[i] = (x[i] + y[i]) + z[i];
    else
        for (size_t i = lo; i < hi; i++)
            x[i] += y[i];
}

void vadd(float *x, const float *y, const float *z, size_t n)
{
    struct add_job j = {x, y, z};
    pool_rows(n, 1, add_part, &j);
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
struct rot_job {
    float *qkv;
    const float *cosv, *sinv;
    int T, NH, HS, rd;
    float dir;
};

/* Rotate each (x_i, x_{i+half}) pair of q and k of rows [lo, hi) of the
 * B*T positions by the position's angle times dir (+1 or -1): dir -1 is
 * the inverse rotation, which is the transpose, so it maps the rotated
 * vectors' gradients to the inputs'. */
static void rot_rows(const void *ctx, size_t lo, size_t hi)
{
    const struct rot_job *j = ctx;
    const int half = j->rd / 2, NH = j->NH, HS = j->HS;
    for (size_t n = lo; n < hi; n++) {
        const size_t t = n % (size_t)j->T;
        const float *c = j->cosv + t * half;
        const float *s = j->sinv + t * half;
        for (int h = 0; h < NH; h++)
            for (int which = 0; which < 2; which++) { /* q, then k */
                float *v = j->qkv + (n * NH + h) * 3 * HS + (size_t)which * HS;
                for (int i = 0; i < half; i++) {
                    float x1 = v[i], x2 = v[i + half], si = j->dir * s[i];
                    v[i] = x1 * c[i] - x2 * si;
                    v[i + half] = x2 * c[i] + x1 * si;
                }
            }
    }
}

static void rotary_apply(float *qkv, const float *cosv, const float *sinv, int B, int T, int NH,
                         int HS, int rd, float dir)
{
    if (rd / 2 == 0)
        return;
    struct rot_job j = {qkv, cosv, sinv, T, NH, HS, rd, dir};
    pool_rows((size_t)B * T, (size_t)NH * rd, rot_rows, &j);
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
