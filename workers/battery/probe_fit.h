/*
 * probe_fit.h - linear probes: L2-regularised softmax regression and ridge
 * regression on standardised features, fitted deterministically, with the
 * baselines a probe is read against.
 *
 * A probe (Alain & Bengio 2016, "Understanding intermediate layers using
 * linear classifier probes") is a linear model fitted on activations of a
 * train split and scored on a held-out split.  Its score means little alone
 * (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control
 * Tasks"), so every fit comes with two baselines: the held-out accuracy of
 * the train split's majority class, and the held-out score of the same
 * probe fitted on the train labels shuffled (seeded permutation).
 *
 * Features are standardised with the mean and population standard
 * deviation (divide by n) of the train split; a constant feature (std 0)
 * is only centred.  The objectives, with n train rows x_i (standardised):
 *
 *   softmax:  (1/n) sum_i -log softmax(W x_i + b)[y_i] + (lambda/2) |W|_F^2
 *             (bias unpenalised), minimised by L-BFGS in double precision
 *             (PROBE_LBFGS_MEMORY pairs, backtracking Armijo line search)
 *             from W = 0, b = 0, for at most PROBE_LBFGS_MAX_ITERS steps,
 *             stopping when max |gradient| <= PROBE_LBFGS_TOL.  Logits and
 *             gradients are sgemm products in float.  softmax is invariant
 *             to adding a constant to every b_k, so b is reported centred
 *             (sum_k b_k = 0).  K = 2 is binary logistic regression.
 *   ridge:    (1/n) sum_i (w.x_i + b - y_i)^2 + lambda |w|^2, solved by the
 *             normal equations (X^T X + n lambda I) w = X^T (y - mean y),
 *             b = mean y: the Gram matrix by ssyrk, Cholesky by LAPACK
 *             spotrf/spotrs.
 *
 * Everything is a pure function of the inputs and the seed: sums run in a
 * fixed order and the only randomness is the shuffle (rng.h).  As with
 * every sgemm user, results may move in the last float bits between BLAS
 * thread counts.
 *
 *     struct probe_result r;
 *     if (probe_classify(Xtr, ytr, ntr, Xte, yte, nte, d, K, seed, &r, &e) < 0) ...
 *     printf("acc %.3f  majority %.3f  shuffled %.3f\n", r.score, r.majority, r.shuffled);
 */
#ifndef CKPTD_BATTERY_PROBE_FIT_H
#define CKPTD_BATTERY_PROBE_FIT_H

#include <stdint.h>

#include "common/err.h"

#define PROBE_LOGREG_LAMBDA 1e-3 /* L2 strength of the softmax probe */
#define PROBE_RIDGE_LAMBDA 1e-3  /* L2 strength of the ridge probe */
#define PROBE_LBFGS_MAX_ITERS 200
#define PROBE_LBFGS_TOL 1e-5     /* on max |gradient| of the mean objective */
#define PROBE_LBFGS_MEMORY 10

/* ---- standardisation ---- */

/* Column means and 1/std of X (n,d) (n > 0); owned, free with
 * probe_scaler_free. */
struct probe_scaler {
    int d;
    float *mean, *inv_std;
};

/* Fit on X (n,d).  ERR_NOMEM or ERR_INVALID (n or d < 1); s is then empty. */
int probe_scaler_fit(struct probe_scaler *s, const float *X, int n, int d, struct err *e) CK_WUR;

/* X (n, s->d) <- (X - mean) * inv_std, in place. */
void probe_scaler_apply(const struct probe_scaler *s, float *X, int n);

void probe_scaler_free(struct probe_scaler *s);

/* ---- softmax (logistic) regression ---- */

struct probe_logreg {
    int d, K;
    float *W;      /* (K,d) */
    float *b;      /* (K), centred */
    int iters;     /* L-BFGS steps taken */
    int converged; /* 1 when the gradient tolerance was reached */
    double loss;   /* final objective */
};

/* Fit on standardised X (n,d), labels y (n) in [0, K), K >= 2, lambda >= 0.
 * ERR_INVALID (sizes, a label out of range), ERR_NOMEM; m is then empty.
 * Release with probe_logreg_free. */
int probe_logreg_fit(struct probe_logreg *m, const float *X, const int *y, int n, int d, int K,
                     double lambda, struct err *e) CK_WUR;

/* pred (n) <- argmax_k (W x + b)_k for X (n,d) (lowest k on ties). */
int probe_logreg_predict(const struct probe_logreg *m, const float *X, int n, int *pred,
                         struct err *e) CK_WUR;

void probe_logreg_free(struct probe_logreg *m);

/* ---- ridge regression ---- */

struct probe_ridge {
    int d;
    float *w; /* (d) */
    double b;
};

/* Fit on standardised X (n,d), targets y (n), lambda > 0.  ERR_INVALID,
 * ERR_NOMEM, ERR_NUMERIC (Cholesky failed); m is then empty. */
int probe_ridge_fit(struct probe_ridge *m, const float *X, const float *y, int n, int d,
                    double lambda, struct err *e) CK_WUR;

/* out (n) <- X w + b for X (n,d). */
void probe_ridge_predict(const struct probe_ridge *m, const float *X, int n, float *out);

void probe_ridge_free(struct probe_ridge *m);

/* ---- scores and baselines ---- */

/* Fraction of i with pred[i] == y[i]; NaN for n = 0. */
double probe_accuracy(const int *pred, const int *y, int n);

/* 1 - sum (y - pred)^2 / sum (y - mean y)^2 over the n rows (the mean of
 * these y); NaN when n = 0 or the y are all equal. */
double probe_r2(const float *pred, const float *y, int n);

/* The most frequent label of y (n) in [0, K); the lowest on ties. */
int probe_majority(const int *y, int n, int K);

/* Fisher-Yates shuffle of y (n) with splitmix64 from `seed` (rng.h):
 * for i = n-1 down to 1, swap y[i] and y[rng_below(i+1)]. */
void probe_shuffle_int(int *y, int n, uint64_t seed);
void probe_shuffle_float(float *y, int n, uint64_t seed);

/* ---- a probe with its baselines ---- */

struct probe_result {
    double score;    /* held-out accuracy, or R^2 for regression */
    double majority; /* held-out accuracy of the train majority class (NaN for regression) */
    double shuffled; /* held-out score of the probe fitted on shuffled train labels */
    int iters, shuffled_iters; /* L-BFGS steps (0 for ridge) */
    int converged, shuffled_converged;
};

/* Standardise copies of Xtr (ntr,d) and Xte (nte,d) with the train split's
 * statistics, fit the softmax probe (PROBE_LOGREG_LAMBDA) on labels ytr in
 * [0,K), score it on yte, and compute both baselines (shuffle from `seed`).
 * Held-out labels outside [0,K) count as misses.  The inputs are not
 * modified.  ERR_INVALID, ERR_NOMEM. */
int probe_classify(const float *Xtr, const int *ytr, int ntr, const float *Xte, const int *yte,
                   int nte, int d, int K, uint64_t seed, struct probe_result *r,
                   struct err *e) CK_WUR;

/* The same for ridge (PROBE_RIDGE_LAMBDA): score and shuffled are held-out
 * R^2; majority is NaN. */
int probe_regress(const float *Xtr, const float *ytr, int ntr, const float *Xte, const float *yte,
                  int nte, int d, uint64_t seed, struct probe_result *r, struct err *e) CK_WUR;

#endif
