/* weights v2: norms, singular values and ranks of the weight matrices.
 *
 * Frobenius norm: sqrt of the sum of squares of the entries, summed in
 * double.  Total norm: the same over every parameter of the model (the
 * vector of all weights and biases; a tied embedding counted once), the
 * quantity weight decay shrinks (Nanda et al. 2023 track it for grokking).
 *
 * Singular values (v2; v1 estimated the largest by power iteration, 0.1-0.5 %
 * low on random matrices): for A (M, N) with K = min(M, N), the
 * eigenvalues of the (K, K) Gram matrix A^T A (M >= N) or A A^T (M < N),
 * formed in double by cblas_dsyrk over blocks of WEIGHTS_GRAM_ROWS rows
 * (or columns) converted to double, then LAPACK dsyevd (eigenvalues only;
 * OpenBLAS exports LAPACK), sigma_i = sqrt(max(lambda_i, 0)).  Why not an
 * SVD of A: on a 50304 x 768 embedding, dgesdd takes ~30 s and sgesdd ~25 s
 * against ~4 s for the double Gram route, and the Gram route in double
 * agrees with dgesdd to 3e-15 relative on random matrices, where sgesdd
 * is off by 5e-6.  The cost of squaring: a singular value far below the
 * largest has an absolute error near sqrt(eps_double) sigma_max ~ 1e-8
 * sigma_max, which no metric below is sensitive to.
 *   spectral_norm   sigma_max
 *   effective_rank  exp(H(p)), p_i = sigma_i / sum_j sigma_j, H the Shannon
 *                   entropy in nats (0 log 0 = 0) (Roy & Vetterli 2007, "The
 *                   effective rank: a measure of effective dimensionality");
 *                   between 1 and K; NaN for a zero matrix
 *   stable_rank     |A|_F^2 / sigma_max^2 (Rudelson & Vershynin 2007), between
 *                   1 and K; NaN for a zero matrix
 *
 * Per head h (the raw checkpoint weights: no LayerNorm folding, no biases,
 * unlike the composition item), in the column-vector convention:
 * query_key_value's rows are ordered head, then q/k/v, then head dim, so
 * Q_h, K_h, V_h are (HS, C) row blocks; attention.dense's columns h HS ..
 * (h+1) HS are O_h (C, HS); W_QK^h = Q_h^T K_h and W_OV^h = O_h V_h (C, C),
 * as in Elhage et al. 2021.  Their norms come from thin QR factorisations
 * (LAPACK dgeqrf, in double): Q_h^T = U R_Q, K_h^T = U' R_K gives W_QK =
 * U (R_Q R_K^T) U'^T, whose singular values are those of the (HS, HS)
 * matrix R_Q R_K^T (dgesdd); likewise W_OV = O_h V_h with O_h = U R_O, V_h^T
 * = U' R_V.  Rotary and the 1/sqrt(HS) attention scale are not applied. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"

/* LAPACK as OpenBLAS exports it (Fortran calling convention: everything
 * by reference, column-major, the lengths of character arguments last). */
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork,
             int *info, size_t jobz_len, size_t uplo_len);
void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
             const int *lwork, int *info);
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *iwork, int *info, size_t jobz_len);

#define MATRIX_IDX_MEANING                                                               \
    "matrix: 0 attention.query_key_value (3C x C), 1 attention.dense (C x C), "          \
    "2 mlp.dense_h_to_4h (F x C), 3 mlp.dense_4h_to_h (C x F) of layer L; with layer -1: " \
    "4 embed_in (V x C), 5 embed_out (V x C, absent when tied to embed_in)"
#define MATRIX_LAYER_MEANING "layer L, or -1 for the embeddings"

static const struct metric_def weights_metrics[] = {
    {"frobenius_norm", "dimensionless", "Frobenius norm of a weight matrix: sqrt of the sum of "
     "its squared entries", MATRIX_LAYER_MEANING, "", MATRIX_IDX_MEANING},
    {"spectral_norm", "dimensionless", "largest singular value of a weight matrix (LAPACK "
     "eigenvalues of its Gram matrix in double)", MATRIX_LAYER_MEANING, "", MATRIX_IDX_MEANING},
    {"effective_rank", "dimensionless", "effective rank (Roy & Vetterli 2007): exp of the "
     "entropy of the singular values normalised to sum 1; NaN for a zero matrix",
     MATRIX_LAYER_MEANING, "", MATRIX_IDX_MEANING},
    {"stable_rank", "dimensionless", "stable rank: squared Frobenius norm over squared "
     "spectral norm; NaN for a zero matrix", MATRIX_LAYER_MEANING, "", MATRIX_IDX_MEANING},
    {"qk_frobenius_norm", "dimensionless", "Frobenius norm of a head's W_QK = W_Q^T W_K "
     "(d_model x d_model, raw weights: no LayerNorm folding, rotary or 1/sqrt(d_head))",
     "layer L", "head h", ""},
    {"qk_spectral_norm", "dimensionless", "largest singular value of a head's W_QK = "
     "W_Q^T W_K (raw weights)", "layer L", "head h", ""},
    {"ov_frobenius_norm", "dimensionless", "Frobenius norm of a head's W_OV = W_O W_V "
     "(d_model x d_model, raw weights: no LayerNorm folding)", "layer L", "head h", ""},
    {"ov_spectral_norm", "dimensionless", "largest singular value of a head's W_OV = "
     "W_O W_V (raw weights)", "layer L", "head h", ""},
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

/* Scratch shared by every matrix, sized for the largest. */
struct wscratch {
    double *gram;  /* (K, K) */
    double *block; /* WEIGHTS_GRAM_ROWS * max(M, N) */
    double *eig;   /* (K) */
    double *work;
    int *iwork;
    int lwork, liwork;
};

/* Eigenvalues (ascending) of the symmetric (K, K) g, whose lower triangle
 * in column-major order (the upper one row-major) is set.  g is destroyed. */
static int sym_eigenvalues(struct wscratch *w, double *g, int K, double *eig, struct err *e)
{
    int info = 0, lwork = -1, liwork = -1, iq = 0;
    double wq = 0.0;
    dsyevd_("N", "L", &K, g, &K, eig, &wq, &lwork, &iq, &liwork, &info, 1, 1);
    if (info != 0)
        return err_set(e, ERR_NUMERIC, NULL, "LAPACK dsyevd workspace query failed (info %d)", info);
    if ((int)wq > w->lwork || iq > w->liwork) {
        double *nw = realloc(w->work, (size_t)wq * sizeof *nw);
        if (!nw)
            return err_set(e, ERR_NOMEM, NULL, "out of memory for the eigenvalue workspace");
        w->work = nw;
        w->lwork = (int)wq;
        int *ni = realloc(w->iwork, (size_t)(iq > 1 ? iq : 1) * sizeof *ni);
        if (!ni)
            return err_set(e, ERR_NOMEM, NULL, "out of memory for the eigenvalue workspace");
        w->iwork = ni;
        w->liwork = iq > 1 ? iq : 1;
    }
    dsyevd_("N", "L", &K, g, &K, eig, w->work, &w->lwork, w->iwork, &w->liwork, &info, 1, 1);
    if (info != 0)
        return err_set(e, ERR_NUMERIC, NULL, "LAPACK dsyevd did not converge (info %d)", info);
    return 0;
}

/* Singular values of a (M, N) row-major, descending, into w->eig (K =
 * min(M, N) of them), through the Gram matrix in double. */
static int singular_values(struct wscratch *w, const float *a, int M, int N, struct err *e)
{
    const int K = M < N ? M : N;
    memset(w->gram, 0, (size_t)K * K * sizeof *w->gram);
    if (M >= N) { /* gram (N, N) += block^T block over row blocks (r, N) */
        for (int r0 = 0; r0 < M; r0 += WEIGHTS_GRAM_ROWS) {
            const int r = M - r0 < WEIGHTS_GRAM_ROWS ? M - r0 : WEIGHTS_GRAM_ROWS;
            const float *src = a + (size_t)r0 * N;
            for (size_t i = 0; i < (size_t)r * N; i++)
                w->block[i] = src[i];
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, N, r, 1.0, w->block, N, 1.0,
                        w->gram, N);
        }
    } else { /* gram (M, M) += block block^T over column blocks (M, c) */
        for (int c0 = 0; c0 < N; c0 += WEIGHTS_GRAM_ROWS) {
            const int c = N - c0 < WEIGHTS_GRAM_ROWS ? N - c0 : WEIGHTS_GRAM_ROWS;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < c; j++)
                    w->block[(size_t)i * c + j] = a[(size_t)i * N + c0 + j];
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, M, c, 1.0, w->block, c, 1.0,
                        w->gram, M);
        }
    }
    int rc = sym_eigenvalues(w, w->gram, K, w->eig, e);
    if (rc < 0)
        return rc;
    for (int i = 0; i < K / 2; i++) { /* ascending -> descending */
        double t = w->eig[i];
        w->eig[i] = w->eig[K - 1 - i];
        w->eig[K - 1 - i] = t;
    }
    for (int i = 0; i < K; i++)
        w->eig[i] = w->eig[i] > 0.0 ? sqrt(w->eig[i]) : 0.0;
    return 0;
}

/* exp of the entropy of sigma / sum(sigma); NaN when every sigma is 0. */
static double effective_rank(const double *sigma, int K)
{
    double sum = 0.0, h = 0.0;
    for (int i = 0; i < K; i++)
        sum += sigma[i];
    if (!(sum > 0.0))
        return NAN;
    for (int i = 0; i < K; i++)
        if (sigma[i] > 0.0) {
            double p = sigma[i] / sum;
            h -= p * log(p);
        }
    return exp(h);
}

static int add_matrix(struct rows *out, struct wscratch *w, const float *a, int M, int N,
                      int layer, int idx, struct err *e)
{
    const double fro2 = sumsq(a, (size_t)M * N);
    int rc = singular_values(w, a, M, N, e);
    if (rc < 0)
        return err_wrap(e, "matrix %d of layer %d (%d x %d)", idx, layer, M, N);
    const int K = M < N ? M : N;
    const double smax = w->eig[0];
    if ((rc = rows_add(out, "frobenius_norm", layer, -1, idx, sqrt(fro2), e)) < 0 ||
        (rc = rows_add(out, "spectral_norm", layer, -1, idx, smax, e)) < 0 ||
        (rc = rows_add(out, "effective_rank", layer, -1, idx, effective_rank(w->eig, K), e)) < 0)
        return rc;
    return rows_add(out, "stable_rank", layer, -1, idx, smax > 0.0 ? fro2 / (smax * smax) : NAN,
                    e);
}

/* ---- per head ---- */

/* Scratch for the per-head factorisations. */
struct hscratch {
    double *a[2]; /* (C, HS) column-major each, then R in its top HS rows */
    double *tau, *work, *prod, *sv, *swork;
    int *iwork;
    int lwork, lswork;
};

/* R (upper triangle of the top HS x HS of a, column-major with lda C) of
 * the thin QR of a (C, HS). */
static int qr_inplace(struct hscratch *h, double *a, int C, int HS, struct err *e)
{
    int info = 0;
    dgeqrf_(&C, &HS, a, &C, h->tau, h->work, &h->lwork, &info);
    if (info != 0)
        return err_set(e, ERR_NUMERIC, NULL, "LAPACK dgeqrf failed (info %d)", info);
    return 0;
}

/* Singular values (descending, into h->sv) of R1 R2^T, R1 and R2 the R
 * factors held in h->a[0], h->a[1]. */
static int r_product_sv(struct hscratch *h, int C, int HS, struct err *e)
{
    /* prod (HS, HS) column-major = R1 R2^T; R below the diagonal is zero */
    for (int j = 0; j < HS; j++)
        for (int i = 0; i < HS; i++) {
            double s = 0.0;
            for (int k = i > j ? i : j; k < HS; k++)
                s += h->a[0][i + (size_t)k * C] * h->a[1][j + (size_t)k * C];
            h->prod[i + (size_t)j * HS] = s;
        }
    int info = 0;
    dgesdd_("N", &HS, &HS, h->prod, &HS, h->sv, NULL, &HS, NULL, &HS, h->swork, &h->lswork,
            h->iwork, &info, 1);
    if (info != 0)
        return err_set(e, ERR_NUMERIC, NULL, "LAPACK dgesdd did not converge (info %d)", info);
    return 0;
}

static int add_head_rows(struct rows *out, struct hscratch *h, int HS, const char *fro_name,
                         const char *spec_name, int layer, int head, struct err *e)
{
    double f = 0.0;
    for (int i = 0; i < HS; i++)
        f += h->sv[i] * h->sv[i];
    int rc = rows_add(out, fro_name, layer, head, -1, sqrt(f), e);
    return rc < 0 ? rc : rows_add(out, spec_name, layer, head, -1, h->sv[0], e);
}

/* W_QK and W_OV norms of every head of layer l. */
static int add_heads(struct rows *out, struct hscratch *h, const struct gptneox *m, int l,
                     struct err *e)
{
    const int C = m->cfg.d_model, NH = m->cfg.n_heads, HS = m->cfg.d_head;
    const struct gptneox_layer *L = &m->layers[l];
    int rc = 0;
    for (int hd = 0; hd < NH && rc == 0; hd++) {
        /* a row block (HS, C) of query_key_value, row-major, is its
         * transpose (C, HS) column-major: a straight copy */
        const float *q = L->qkv_w + (size_t)(3 * hd + 0) * HS * C;
        const float *k = L->qkv_w + (size_t)(3 * hd + 1) * HS * C;
        const float *v = L->qkv_w + (size_t)(3 * hd + 2) * HS * C;
        for (size_t i = 0; i < (size_t)HS * C; i++) {
            h->a[0][i] = q[i];
            h->a[1][i] = k[i];
        }
        if ((rc = qr_inplace(h, h->a[0], C, HS, e)) < 0 ||
            (rc = qr_inplace(h, h->a[1], C, HS, e)) < 0 || (rc = r_product_sv(h, C, HS, e)) < 0 ||
            (rc = add_head_rows(out, h, HS, "qk_frobenius_norm", "qk_spectral_norm", l, hd, e)) < 0)
            break;
        /* O_h (C, HS): columns of attention.dense, column-major */
        for (int j = 0; j < HS; j++)
            for (int i = 0; i < C; i++)
                h->a[0][i + (size_t)j * C] = L->attn_w[(size_t)i * C + (size_t)hd * HS + j];
        for (size_t i = 0; i < (size_t)HS * C; i++)
            h->a[1][i] = v[i];
        if ((rc = qr_inplace(h, h->a[0], C, HS, e)) < 0 ||
            (rc = qr_inplace(h, h->a[1], C, HS, e)) < 0 || (rc = r_product_sv(h, C, HS, e)) < 0 ||
            (rc = add_head_rows(out, h, HS, "ov_frobenius_norm", "ov_spectral_norm", l, hd, e)) < 0)
            break;
    }
    return rc;
}

/* Workspaces of the per-head LAPACK calls (queried once). */
static int hscratch_init(struct hscratch *h, int C, int HS, struct err *e)
{
    memset(h, 0, sizeof *h);
    h->a[0] = malloc((size_t)C * HS * sizeof(double));
    h->a[1] = malloc((size_t)C * HS * sizeof(double));
    h->tau = malloc((size_t)HS * sizeof(double));
    h->prod = malloc((size_t)HS * HS * sizeof(double));
    h->sv = malloc((size_t)HS * sizeof(double));
    h->iwork = malloc((size_t)8 * HS * sizeof(int));
    if (!h->a[0] || !h->a[1] || !h->tau || !h->prod || !h->sv || !h->iwork)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the per-head factorisations");
    int info = 0, q = -1;
    double wq = 0.0, ws = 0.0;
    dgeqrf_(&C, &HS, h->a[0], &C, h->tau, &wq, &q, &info);
    if (info == 0)
        dgesdd_("N", &HS, &HS, h->prod, &HS, h->sv, NULL, &HS, NULL, &HS, &ws, &q, h->iwork,
                &info, 1);
    if (info != 0)
        return err_set(e, ERR_NUMERIC, NULL, "LAPACK workspace query failed (info %d)", info);
    h->lwork = (int)wq > 1 ? (int)wq : 1;
    h->lswork = (int)ws > 1 ? (int)ws : 1;
    h->work = malloc((size_t)h->lwork * sizeof(double));
    h->swork = malloc((size_t)h->lswork * sizeof(double));
    if (!h->work || !h->swork)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the per-head factorisations");
    return 0;
}

static void hscratch_free(struct hscratch *h)
{
    free(h->swork);
    free(h->work);
    free(h->iwork);
    free(h->sv);
    free(h->prod);
    free(h->tau);
    free(h->a[1]);
    free(h->a[0]);
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
    int big = V > 3 * C ? V : 3 * C; /* longest side */
    big = big > F ? big : F;
    int K = C; /* largest min(M, N): every matrix has a side C */
    struct wscratch w = {0};
    struct hscratch h;
    int rc = hscratch_init(&h, C, c->d_head, e);
    if (rc < 0)
        goto out;
    w.gram = malloc((size_t)K * K * sizeof *w.gram);
    w.block = malloc((size_t)WEIGHTS_GRAM_ROWS * big * sizeof *w.block);
    w.eig = malloc((size_t)K * sizeof *w.eig);
    if (!w.gram || !w.block || !w.eig) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for a (%d x %d) Gram matrix", K, K);
        goto out;
    }
    for (int l = 0; l < c->n_layers; l++) {
        const struct gptneox_layer *L = &m->layers[l];
        if ((rc = add_matrix(out, &w, L->qkv_w, 3 * C, C, l, 0, e)) < 0 ||
            (rc = add_matrix(out, &w, L->attn_w, C, C, l, 1, e)) < 0 ||
            (rc = add_matrix(out, &w, L->fc_w, F, C, l, 2, e)) < 0 ||
            (rc = add_matrix(out, &w, L->proj_w, C, F, l, 3, e)) < 0 ||
            (rc = add_heads(out, &h, m, l, e)) < 0)
            goto out;
    }
    if ((rc = add_matrix(out, &w, m->embed, V, C, -1, 4, e)) < 0)
        goto out;
    if (!c->tie_word_embeddings && (rc = add_matrix(out, &w, m->unembed, V, C, -1, 5, e)) < 0)
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
    free(w.work);
    free(w.iwork);
    free(w.eig);
    free(w.block);
    free(w.gram);
    hscratch_free(&h);
    return rc;
}

const struct battery_item battery_item_weights = {
    .name = "weights",
    .version = 2,
    .needs = 0,
    .metrics = weights_metrics,
    .nmetrics = sizeof weights_metrics / sizeof *weights_metrics,
    .run = weights_run,
};
