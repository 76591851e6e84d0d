/* Linear probes: standardisation, L2 softmax regression by L-BFGS, ridge by
 * Cholesky, scores and baselines.  See probe_fit.h for the objectives.
 *
 * L-BFGS is Nocedal & Wright, "Numerical Optimization" (2006), algorithm
 * 7.4 (two-loop recursion) and 7.5, with a backtracking line search on the
 * Armijo condition (c1 = 1e-4, halving, first trial step 1; on the first
 * iteration 1/|g|_2 when the gradient is longer than 1).  A pair (s, y) is
 * kept only when s.y > 1e-10 |s| |y|, so the implicit Hessian stays
 * positive definite. */
#include "workers/battery/probe_fit.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"

/* LAPACK (exported by libopenblas); the trailing length is gfortran's hidden
 * CHARACTER length argument. */
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info, size_t uplo_len);
void spotrs_(const char *uplo, const int *n, const int *nrhs, const float *a, const int *lda,
             float *b, const int *ldb, int *info, size_t uplo_len);

/* ---- standardisation ---- */

int probe_scaler_fit(struct probe_scaler *s, const float *X, int n, int d, struct err *e)
{
    memset(s, 0, sizeof *s);
    if (n < 1 || d < 1)
        return err_set(e, ERR_INVALID, NULL, "standardising %d rows of %d features", n, d);
    double *sum = calloc((size_t)d, sizeof *sum), *sq = calloc((size_t)d, sizeof *sq);
    s->mean = malloc((size_t)d * sizeof *s->mean);
    s->inv_std = malloc((size_t)d * sizeof *s->inv_std);
    if (!sum || !sq || !s->mean || !s->inv_std) {
        free(sum);
        free(sq);
        probe_scaler_free(s);
        return err_set(e, ERR_NOMEM, NULL, "out of memory standardising %d features", d);
    }
    s->d = d;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            sum[j] += X[(size_t)i * d + j];
    for (int j = 0; j < d; j++)
        sum[j] /= n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double c = X[(size_t)i * d + j] - sum[j];
            sq[j] += c * c;
        }
    for (int j = 0; j < d; j++) {
        double sd = sqrt(sq[j] / n);
        s->mean[j] = (float)sum[j];
        s->inv_std[j] = sd > 0 ? (float)(1.0 / sd) : 1.0f;
    }
    free(sum);
    free(sq);
    return 0;
}

void probe_scaler_apply(const struct probe_scaler *s, float *X, int n)
{
    for (int i = 0; i < n; i++) {
        float *x = X + (size_t)i * s->d;
        for (int j = 0; j < s->d; j++)
            x[j] = (x[j] - s->mean[j]) * s->inv_std[j];
    }
}

void probe_scaler_free(struct probe_scaler *s)
{
    if (!s)
        return;
    free(s->mean);
    free(s->inv_std);
    memset(s, 0, sizeof *s);
}

/* ---- softmax regression ---- */

struct lr_work {
    const float *X;
    const int *y;
    int n, d, K;
    double lambda;
    float *Wf; /* (K,d) */
    float *Z;  /* (n,K) logits, then dloss/dlogits */
    float *GW; /* (K,d) */
};

/* Objective at theta = [W (K,d), b (K)]; its gradient into grad. */
static double lr_eval(struct lr_work *w, const double *theta, double *grad)
{
    const int n = w->n, d = w->d, K = w->K;
    const size_t KD = (size_t)K * d;
    double reg = 0.0;
    for (size_t i = 0; i < KD; i++) {
        w->Wf[i] = (float)theta[i];
        reg += theta[i] * theta[i];
    }
    const double *b = theta + KD;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, K, d, 1.0f, w->X, d, w->Wf, d, 0.0f,
                w->Z, K);
    double loss = 0.0;
    double *gb = grad + KD;
    for (int k = 0; k < K; k++)
        gb[k] = 0.0;
    for (int i = 0; i < n; i++) {
        float *z = w->Z + (size_t)i * K;
        double mx = -INFINITY;
        for (int k = 0; k < K; k++)
            mx = fmax(mx, z[k] + b[k]);
        double se = 0.0;
        for (int k = 0; k < K; k++)
            se += exp(z[k] + b[k] - mx);
        double lse = mx + log(se);
        loss += lse - (z[w->y[i]] + b[w->y[i]]);
        for (int k = 0; k < K; k++) {
            double g = (exp(z[k] + b[k] - lse) - (k == w->y[i])) / n;
            z[k] = (float)g;
            gb[k] += g;
        }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, d, n, 1.0f, w->Z, K, w->X, d, 0.0f,
                w->GW, d);
    for (size_t i = 0; i < KD; i++)
        grad[i] = w->GW[i] + w->lambda * theta[i];
    return loss / n + 0.5 * w->lambda * reg;
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static double max_abs(const double *a, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

int probe_logreg_fit(struct probe_logreg *m, const float *X, const int *y, int n, int d, int K,
                     double lambda, struct err *e)
{
    memset(m, 0, sizeof *m);
    if (n < 1 || d < 1 || K < 2 || !(lambda >= 0))
        return err_set(e, ERR_INVALID, NULL, "softmax probe on %d rows, %d features, %d classes",
                       n, d, K);
    for (int i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= K)
            return err_set(e, ERR_INVALID, NULL, "train label %d of row %d is outside [0, %d)",
                           y[i], i, K);
    const int M = PROBE_LBFGS_MEMORY;
    const size_t P = (size_t)K * d + K;
    struct lr_work w = {.X = X, .y = y, .n = n, .d = d, .K = K, .lambda = lambda};
    double *buf = calloc(P * (5 + 2 * (size_t)M), sizeof *buf);
    double rho[PROBE_LBFGS_MEMORY], alpha[PROBE_LBFGS_MEMORY];
    w.Wf = malloc((size_t)K * d * sizeof *w.Wf);
    w.Z = malloc((size_t)n * K * sizeof *w.Z);
    w.GW = malloc((size_t)K * d * sizeof *w.GW);
    m->W = malloc((size_t)K * d * sizeof *m->W);
    m->b = malloc((size_t)K * sizeof *m->b);
    int rc = 0;
    if (!buf || !w.Wf || !w.Z || !w.GW || !m->W || !m->b) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for a softmax probe (%d x %d, %d classes)",
                     n, d, K);
        goto out;
    }
    double *x = buf, *g = x + P, *xn = g + P, *gn = xn + P, *dir = gn + P;
    double *S = dir + P, *Y = S + (size_t)M * P;
    int have = 0, head = 0; /* pairs stored; next slot */
    double f = lr_eval(&w, x, g);
    int it = 0;
    for (; it < PROBE_LBFGS_MAX_ITERS; it++) {
        if (max_abs(g, P) <= PROBE_LBFGS_TOL) {
            m->converged = 1;
            break;
        }
        /* two-loop recursion: dir = -H g */
        for (size_t i = 0; i < P; i++)
            dir[i] = -g[i];
        for (int j = 0; j < have; j++) {
            int s = (head - 1 - j + M) % M;
            alpha[s] = rho[s] * dot(S + (size_t)s * P, dir, P);
            for (size_t i = 0; i < P; i++)
                dir[i] -= alpha[s] * Y[(size_t)s * P + i];
        }
        if (have) {
            int s = (head - 1 + M) % M;
            const double *ys = Y + (size_t)s * P;
            double gamma = dot(S + (size_t)s * P, ys, P) / dot(ys, ys, P);
            for (size_t i = 0; i < P; i++)
                dir[i] *= gamma;
        }
        for (int j = have - 1; j >= 0; j--) {
            int s = (head - 1 - j + M) % M;
            double beta = rho[s] * dot(Y + (size_t)s * P, dir, P);
            for (size_t i = 0; i < P; i++)
                dir[i] += (alpha[s] - beta) * S[(size_t)s * P + i];
        }
        double slope = dot(g, dir, P);
        if (!(slope < 0)) { /* not a descent direction: restart from -g */
            have = 0;
            for (size_t i = 0; i < P; i++)
                dir[i] = -g[i];
            slope = dot(g, dir, P);
        }
        double step = 1.0;
        if (!have) {
            double gn2 = sqrt(dot(g, g, P));
            if (gn2 > 1.0)
                step = 1.0 / gn2;
        }
        double fn = 0.0;
        int ok = 0;
        for (int tries = 0; tries < 40; tries++, step *= 0.5) {
            for (size_t i = 0; i < P; i++)
                xn[i] = x[i] + step * dir[i];
            fn = lr_eval(&w, xn, gn);
            if (fn <= f + 1e-4 * step * slope) {
                ok = 1;
                break;
            }
        }
        if (!ok)
            break; /* no decrease left at float precision */
        double *s = S + (size_t)head * P, *yv = Y + (size_t)head * P;
        for (size_t i = 0; i < P; i++) {
            s[i] = xn[i] - x[i];
            yv[i] = gn[i] - g[i];
        }
        double sy = dot(s, yv, P);
        if (sy > 1e-10 * sqrt(dot(s, s, P) * dot(yv, yv, P))) {
            rho[head] = 1.0 / sy;
            head = (head + 1) % M;
            if (have < M)
                have++;
        }
        memcpy(x, xn, P * sizeof *x);
        memcpy(g, gn, P * sizeof *g);
        f = fn;
    }
    m->d = d;
    m->K = K;
    m->iters = it;
    m->loss = f;
    double bmean = 0.0;
    for (int k = 0; k < K; k++)
        bmean += x[(size_t)K * d + k];
    bmean /= K;
    for (size_t i = 0; i < (size_t)K * d; i++)
        m->W[i] = (float)x[i];
    for (int k = 0; k < K; k++)
        m->b[k] = (float)(x[(size_t)K * d + k] - bmean);
out:
    free(buf);
    free(w.Wf);
    free(w.Z);
    free(w.GW);
    if (rc < 0)
        probe_logreg_free(m);
    return rc;
}

int probe_logreg_predict(const struct probe_logreg *m, const float *X, int n, int *pred,
                         struct err *e)
{
    if (n < 1)
        return 0;
    const int K = m->K;
    float *Z = malloc((size_t)n * K * sizeof *Z);
    if (!Z)
        return err_set(e, ERR_NOMEM, NULL, "out of memory predicting %d rows", n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, K, m->d, 1.0f, X, m->d, m->W, m->d,
                0.0f, Z, K);
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int k = 1; k < K; k++)
            if (Z[(size_t)i * K + k] + m->b[k] > Z[(size_t)i * K + best] + m->b[best])
                best = k;
        pred[i] = best;
    }
    free(Z);
    return 0;
}

void probe_logreg_free(struct probe_logreg *m)
{
    if (!m)
        return;
    free(m->W);
    free(m->b);
    memset(m, 0, sizeof *m);
}

/* ---- ridge ---- */

int probe_ridge_fit(struct probe_ridge *m, const float *X, const float *y, int n, int d,
                    double lambda, struct err *e)
{
    memset(m, 0, sizeof *m);
    if (n < 1 || d < 1 || !(lambda > 0))
        return err_set(e, ERR_INVALID, NULL, "ridge probe on %d rows, %d features, lambda %g", n,
                       d, lambda);
    float *G = malloc((size_t)d * d * sizeof *G);
    float *yc = malloc((size_t)n * sizeof *yc);
    m->w = malloc((size_t)d * sizeof *m->w);
    int rc = 0;
    if (!G || !yc || !m->w) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for a ridge probe (%d features)", d);
        goto out;
    }
    double ym = 0.0;
    for (int i = 0; i < n; i++)
        ym += y[i];
    ym /= n;
    for (int i = 0; i < n; i++)
        yc[i] = (float)(y[i] - ym);
    /* row-major upper triangle of X^T X = column-major lower triangle */
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, d, n, 1.0f, X, d, 0.0f, G, d);
    for (int j = 0; j < d; j++)
        G[(size_t)j * d + j] += (float)(n * lambda);
    cblas_sgemv(CblasRowMajor, CblasTrans, n, d, 1.0f, X, d, yc, 1, 0.0f, m->w, 1);
    int info = 0, one = 1;
    spotrf_("L", &d, G, &d, &info, 1);
    if (info == 0)
        spotrs_("L", &d, &one, G, &d, m->w, &d, &info, 1);
    if (info != 0) {
        rc = err_set(e, ERR_NUMERIC, NULL,
                     "ridge normal equations: Cholesky failed (LAPACK info %d) on %d features",
                     info, d);
        goto out;
    }
    m->d = d;
    m->b = ym;
out:
    free(G);
    free(yc);
    if (rc < 0)
        probe_ridge_free(m);
    return rc;
}

void probe_ridge_predict(const struct probe_ridge *m, const float *X, int n, float *out)
{
    if (n < 1)
        return;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, m->d, 1.0f, X, m->d, m->w, 1, 0.0f, out, 1);
    for (int i = 0; i < n; i++)
        out[i] = (float)(out[i] + m->b);
}

void probe_ridge_free(struct probe_ridge *m)
{
    if (!m)
        return;
    free(m->w);
    memset(m, 0, sizeof *m);
}

/* ---- scores and baselines ---- */

double probe_accuracy(const int *pred, const int *y, int n)
{
    if (n < 1)
        return NAN;
    int hit = 0;
    for (int i = 0; i < n; i++)
        hit += pred[i] == y[i];
    return (double)hit / n;
}

double probe_r2(const float *pred, const float *y, int n)
{
    if (n < 1)
        return NAN;
    double ym = 0.0;
    for (int i = 0; i < n; i++)
        ym += y[i];
    ym /= n;
    double res = 0.0, tot = 0.0;
    for (int i = 0; i < n; i++) {
        res += ((double)y[i] - pred[i]) * ((double)y[i] - pred[i]);
        tot += (y[i] - ym) * (y[i] - ym);
    }
    return tot > 0 ? 1.0 - res / tot : NAN;
}

int probe_majority(const int *y, int n, int K)
{
    int best = 0, bestc = -1;
    for (int k = 0; k < K; k++) {
        int c = 0;
        for (int i = 0; i < n; i++)
            c += y[i] == k;
        if (c > bestc) {
            best = k;
            bestc = c;
        }
    }
    return best;
}

void probe_shuffle_int(int *y, int n, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(&s, (uint32_t)i + 1);
        int t = y[i];
        y[i] = y[j];
        y[j] = t;
    }
}

void probe_shuffle_float(float *y, int n, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(&s, (uint32_t)i + 1);
        float t = y[i];
        y[i] = y[j];
        y[j] = t;
    }
}

/* ---- a probe with its baselines ---- */

/* Standardised copies of the two splits (caller frees *tr and *te). */
static int standardised(const float *Xtr, int ntr, const float *Xte, int nte, int d, float **tr,
                        float **te, struct err *e)
{
    struct probe_scaler sc;
    *tr = malloc((size_t)ntr * d * sizeof **tr);
    *te = malloc(((size_t)nte * d + 1) * sizeof **te);
    if (!*tr || !*te) {
        free(*tr);
        free(*te);
        *tr = *te = NULL;
        return err_set(e, ERR_NOMEM, NULL, "out of memory copying %d + %d rows of %d features",
                       ntr, nte, d);
    }
    int rc = probe_scaler_fit(&sc, Xtr, ntr, d, e);
    if (rc < 0) {
        free(*tr);
        free(*te);
        *tr = *te = NULL;
        return rc;
    }
    memcpy(*tr, Xtr, (size_t)ntr * d * sizeof **tr);
    memcpy(*te, Xte, (size_t)nte * d * sizeof **te);
    probe_scaler_apply(&sc, *tr, ntr);
    probe_scaler_apply(&sc, *te, nte);
    probe_scaler_free(&sc);
    return 0;
}

int probe_classify(const float *Xtr, const int *ytr, int ntr, const float *Xte, const int *yte,
                   int nte, int d, int K, uint64_t seed, struct probe_result *r, struct err *e)
{
    memset(r, 0, sizeof *r);
    r->score = r->majority = r->shuffled = NAN;
    if (ntr < 1 || nte < 1)
        return err_set(e, ERR_INVALID, NULL, "a probe needs train and held-out rows (%d, %d)",
                       ntr, nte);
    float *tr = NULL, *te = NULL;
    int *pred = malloc((size_t)nte * sizeof *pred), *ysh = malloc((size_t)ntr * sizeof *ysh);
    struct probe_logreg m;
    memset(&m, 0, sizeof m);
    int rc = 0;
    if (!pred || !ysh) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for probe labels");
        goto out;
    }
    if ((rc = standardised(Xtr, ntr, Xte, nte, d, &tr, &te, e)) < 0)
        goto out;
    if ((rc = probe_logreg_fit(&m, tr, ytr, ntr, d, K, PROBE_LOGREG_LAMBDA, e)) < 0 ||
        (rc = probe_logreg_predict(&m, te, nte, pred, e)) < 0)
        goto out;
    r->score = probe_accuracy(pred, yte, nte);
    r->iters = m.iters;
    r->converged = m.converged;
    probe_logreg_free(&m);
    int maj = probe_majority(ytr, ntr, K);
    for (int i = 0; i < nte; i++)
        pred[i] = maj;
    r->majority = probe_accuracy(pred, yte, nte);
    memcpy(ysh, ytr, (size_t)ntr * sizeof *ysh);
    probe_shuffle_int(ysh, ntr, seed);
    if ((rc = probe_logreg_fit(&m, tr, ysh, ntr, d, K, PROBE_LOGREG_LAMBDA, e)) < 0 ||
        (rc = probe_logreg_predict(&m, te, nte, pred, e)) < 0)
        goto out;
    r->shuffled = probe_accuracy(pred, yte, nte);
    r->shuffled_iters = m.iters;
    r->shuffled_converged = m.converged;
out:
    probe_logreg_free(&m);
    free(tr);
    free(te);
    free(pred);
    free(ysh);
    return rc;
}

int probe_regress(const float *Xtr, const float *ytr, int ntr, const float *Xte, const float *yte,
                  int nte, int d, uint64_t seed, struct probe_result *r, struct err *e)
{
    memset(r, 0, sizeof *r);
    r->score = r->majority = r->shuffled = NAN;
    if (ntr < 1 || nte < 1)
        return err_set(e, ERR_INVALID, NULL, "a probe needs train and held-out rows (%d, %d)",
                       ntr, nte);
    float *tr = NULL, *te = NULL;
    float *pred = malloc((size_t)nte * sizeof *pred), *ysh = malloc((size_t)ntr * sizeof *ysh);
    struct probe_ridge m;
    memset(&m, 0, sizeof m);
    int rc = 0;
    if (!pred || !ysh) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for probe targets");
        goto out;
    }
    if ((rc = standardised(Xtr, ntr, Xte, nte, d, &tr, &te, e)) < 0)
        goto out;
    if ((rc = probe_ridge_fit(&m, tr, ytr, ntr, d, PROBE_RIDGE_LAMBDA, e)) < 0)
        goto out;
    probe_ridge_predict(&m, te, nte, pred);
    r->score = probe_r2(pred, yte, nte);
    probe_ridge_free(&m);
    memcpy(ysh, ytr, (size_t)ntr * sizeof *ysh);
    probe_shuffle_float(ysh, ntr, seed);
    if ((rc = probe_ridge_fit(&m, tr, ysh, ntr, d, PROBE_RIDGE_LAMBDA, e)) < 0)
        goto out;
    probe_ridge_predict(&m, te, nte, pred);
    r->shuffled = probe_r2(pred, yte, nte);
    r->converged = r->shuffled_converged = 1;
out:
    probe_ridge_free(&m);
    free(tr);
    free(te);
    free(pred);
    free(ysh);
    return rc;
}
