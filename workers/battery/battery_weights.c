/* weights v1: norms of the weight matrices.
 *
 * Frobenius norm: sqrt of the sum of squares of the entries, summed in
 * double.  Total norm: the same over every parameter of the model (the
 * vector of all weights and biases; a tied embedding counted once), the
 * quantity weight decay shrinks (Nanda et al. 2023 track it for grokking).
 *
 * Spectral norm (largest singular value): power iteration on A^T A
 * (Golub & Van Loan, "Matrix Computations", 4th ed., sec. 7.3.1; as
 * torch.nn.utils.spectral_norm, Miyato et al. 2018).  For A (M,N):
 *   v0: N entries rng_symmetric from splitmix64 seeded with
 *       WEIGHTS_SEED ^ (layer+1) << 8 ^ idx, normalised — fixed, independent
 *       of --seed, so the series does not depend on the eval seed
 *   repeat up to WEIGHTS_POWER_ITERS times:
 *       u = A v / |A v|           (cblas_sgemv, no transpose)
 *       w = A^T u                 (cblas_sgemv, transpose)
 *       sigma = |w|               (= |A^T A v| / |A v| <= sigma_max)
 *       stop when |sigma - sigma_prev| < WEIGHTS_POWER_TOL * sigma
 *       v = w / sigma
 * The estimate increases monotonically to the largest singular value; the
 * error after k steps falls like (sigma_2 / sigma_1)^(2k).  Exact for
 * separated spectra (diagonal and rank-1 cases agree within 1e-5 in
 * tests/test_battery.c); on randomly initialised matrices, whose top
 * singular values lie within a fraction of a percent of each other, 100
 * steps leave it 0.1-0.5 % low (measured against numpy's SVD on
 * tests/golden/f32_parallel_rot025).  Norms of the vectors are computed in
 * double; a zero matrix gives 0. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "battery.h"
#include "rng.h"

#define WEIGHTS_SEED 0x77656967687473ull /* "weights" */

#define MATRIX_IDX_MEANING                                                               \
    "matrix: 0 attention.query_key_value (3C x C), 1 attention.dense (C x C), "          \
    "2 mlp.dense_h_to_4h (F x C), 3 mlp.dense_4h_to_h (C x F) of layer L; with layer -1: " \
    "4 embed_in (V x C), 5 embed_out (V x C, absent when tied to embed_in)"

static const struct metric_def weights_metrics[] = {
    {"frobenius_norm", "dimensionless", "Frobenius norm of a weight matrix: sqrt of the sum of "
     "its squared entries", "layer L, or -1 for the embeddings", "", MATRIX_IDX_MEANING},
    {"spectral_norm", "dimensionless", "largest singular value of a weight matrix, by power "
     "iteration (at most 100 steps, stopping at 1e-6 relative change)",
     "layer L, or -1 for the embeddings", "", MATRIX_IDX_MEANING},
    {"total_norm", "dimensionless", "sqrt of the sum of squares of every parameter of the "
     "model (weights, biases, LayerNorms, embeddings; a tied embedding once)", "", "", ""},
};

static double sumsq(const float *x, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return s;
}

/* Largest singular value of a (M,N) row-major.  v (N), u (M), w (N) are
 * scratch. */
static double spectral_norm(const float *a, int M, int N, uint64_t seed, float *v, float *u,
                            float *w)
{
    uint64_t s = seed;
    for (int j = 0; j < N; j++)
        v[j] = rng_symmetric(&s);
    double nv = sqrt(sumsq(v, (size_t)N));
    if (nv == 0.0)
        return 0.0;
    for (int j = 0; j < N; j++)
        v[j] = (float)(v[j] / nv);
    double sigma = 0.0, prev = 0.0;
    for (int it = 0; it < WEIGHTS_POWER_ITERS; it++) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, M, N, 1.0f, a, N, v, 1, 0.0f, u, 1);
        double nu = sqrt(sumsq(u, (size_t)M));
        if (nu == 0.0 || !isfinite(nu))
            return nu; /* A v = 0: A is zero (v is generic); or overflow */
        for (int i = 0; i < M; i++)
            u[i] = (float)(u[i] / nu);
        cblas_sgemv(CblasRowMajor, CblasTrans, M, N, 1.0f, a, N, u, 1, 0.0f, w, 1);
        sigma = sqrt(sumsq(w, (size_t)N));
        if (sigma == 0.0 || !isfinite(sigma))
            return sigma;
        if (it > 0 && fabs(sigma - prev) < WEIGHTS_POWER_TOL * sigma)
            break;
        for (int j = 0; j < N; j++)
            v[j] = (float)(w[j] / sigma);
        prev = sigma;
    }
    return sigma;
}

static int add_matrix(struct rows *out, const float *a, int M, int N, int layer, int idx,
                      float *v, float *u, float *w, struct err *e)
{
    int rc = rows_add(out, "frobenius_norm", layer, -1, idx, sqrt(sumsq(a, (size_t)M * N)), e);
    if (rc < 0)
        return rc;
    uint64_t seed = WEIGHTS_SEED ^ ((uint64_t)(layer + 1) << 8) ^ (uint64_t)idx;
    return rows_add(out, "spectral_norm", layer, -1, idx, spectral_norm(a, M, N, seed, v, u, w), e);
}

/* Add the squares of x (n) to *s and n to *count; x may be NULL (absent bias). */
static void acc(double *s, size_t *count, const float *x, size_t n)
{
    if (!x)
        return;
    *s += sumsq(x, n);
    *count += n;
}

/* Sum of squares of every parameter, in the checkpoint's tensor order;
 * *count gets how many there are. */
static double total_sumsq(const struct gptneox *m, size_t *count)
{
    const struct gptneox_config *c = &m->cfg;
    const size_t C = (size_t)c->d_model, F = (size_t)c->d_mlp, V = (size_t)c->vocab_size;
    double s = 0.0;
    *count = 0;
    acc(&s, count, m->embed, V * C);
    for (int l = 0; l < c->n_layers; l++) {
        const struct gptneox_layer *L = &m->layers[l];
        acc(&s, count, L->ln1_w, C);
        acc(&s, count, L->ln1_b, C);
        acc(&s, count, L->qkv_w, 3 * C * C);
        acc(&s, count, L->qkv_b, 3 * C);
        acc(&s, count, L->attn_w, C * C);
        acc(&s, count, L->attn_b, C);
        acc(&s, count, L->ln2_w, C);
        acc(&s, count, L->ln2_b, C);
        acc(&s, count, L->fc_w, F * C);
        acc(&s, count, L->fc_b, F);
        acc(&s, count, L->proj_w, C * F);
        acc(&s, count, L->proj_b, C);
    }
    acc(&s, count, m->lnf_w, C);
    acc(&s, count, m->lnf_b, C);
    if (!c->tie_word_embeddings)
        acc(&s, count, m->unembed, V * C);
    return s;
}

static int weights_run(const struct battery_ctx *ctx, struct rows *out, struct err *e)
{
    const struct gptneox *m = ctx->model;
    const struct gptneox_config *c = &m->cfg;
    const int C = c->d_model, F = c->d_mlp, V = c->vocab_size;
    int big = V > 3 * C ? V : 3 * C;
    big = big > F ? big : F;
    int rc = 0;
    float *v = malloc((size_t)big * sizeof *v), *u = malloc((size_t)big * sizeof *u),
          *w = malloc((size_t)big * sizeof *w);
    if (!v || !u || !w) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const struct gptneox_layer *L = &m->layers[l];
        if ((rc = add_matrix(out, L->qkv_w, 3 * C, C, l, 0, v, u, w, e)) < 0 ||
            (rc = add_matrix(out, L->attn_w, C, C, l, 1, v, u, w, e)) < 0 ||
            (rc = add_matrix(out, L->fc_w, F, C, l, 2, v, u, w, e)) < 0 ||
            (rc = add_matrix(out, L->proj_w, C, F, l, 3, v, u, w, e)) < 0)
            goto out;
    }
    if ((rc = add_matrix(out, m->embed, V, C, -1, 4, v, u, w, e)) < 0)
        goto out;
    if (!c->tie_word_embeddings && (rc = add_matrix(out, m->unembed, V, C, -1, 5, v, u, w, e)) < 0)
        goto out;
    size_t count = 0;
    double ss = total_sumsq(m, &count);
    if (count != gptneox_config_nparams(c)) {
        rc = err_set(e, ERR_MISMATCH, NULL, "counted %zu parameters, the config implies %zu", count,
                     gptneox_config_nparams(c));
        goto out;
    }
    rc = rows_add(out, "total_norm", -1, -1, -1, sqrt(ss), e);
out:
    free(w);
    free(u);
    free(v);
    return rc;
}

const struct battery_item battery_item_weights = {
    .name = "weights",
    .version = 1,
    .needs = 0,
    .metrics = weights_metrics,
    .nmetrics = sizeof weights_metrics / sizeof *weights_metrics,
    .run = weights_run,
};
