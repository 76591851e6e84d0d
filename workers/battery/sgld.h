/*
 * sgld.h - the local learning coefficient (LLC) of a loss at a point w*,
 * estimated by stochastic-gradient Langevin dynamics (SGLD), as Lau et al.
 * (2023, "Quantifying degeneracy in singular models via the learning
 * coefficient") define it and devinterp (Timaeus) computes it; Hoogland et
 * al. (2024, "The developmental landscape of in-context learning") read its
 * changes over training as developmental stages.
 *
 * The loss L is a mean over n examples; L_m is the same mean over a
 * minibatch of m of them.  Each chain starts at w*, and each step t,
 * on the next minibatch,
 *
 *     w <- w - (eps/2) * (gamma * (w - w*) + nbeta * grad L_m(w)) + N(0, eps)
 *
 * (gamma localises the posterior at w*, nbeta = n * beta is its inverse
 * temperature, eps the step size).  The first `burnin` steps are
 * discarded; L_m(w_t) at each of the next `draws` steps is the chain's
 * trace (the loss of the forward that also gives that step's gradient,
 * before the step, as devinterp records it).  Per chain
 *
 *     llc_chain = nbeta * (mean over draws of L_m(w_t) - L(w*))
 *
 * and the estimate is the mean over chains, with their sample standard
 * deviation (n - 1).  L(w*), init_loss, is the mean loss over all n
 * examples (devinterp's get_init_loss_full_batch; its default averages the
 * first `chains` minibatches instead, a noisier estimate of the same
 * number).  sgld_default_nbeta is devinterp's default_nbeta, m / ln m.
 *
 * A chain whose loss is non-finite or above init_loss + max_rise has
 * diverged: it
 * stops at that step, keeps the draws it took, has no llc_chain and is left
 * out of the mean and standard deviation; the result counts such chains.
 * Read the trace: a healthy one rises from init_loss over the burn-in and
 * then fluctuates about a level; one still climbing at the last draw
 * (eps too large or gamma too small for nbeta) or one that has not moved
 * (eps too small) gives a meaningless estimate.
 *
 * Randomness is splitmix64 (rng.h) only, so a result is a pure function of
 * the loss, w*, the configuration and the seed.  Chain c's two streams
 * start from k_c, the c-th output of a splitmix64 state seeded with
 * seed ^ SGLD_SALT:
 *   - noise: at step t (0-based, burn-in included) the d parameters are
 *     cut into blocks of SGLD_NOISE_BLOCK (the last may be shorter); block
 *     b's normals come from the state that is the first output of a
 *     splitmix64 state started at k_c + t * 2^32 + b, drawn in pairs by
 *     Marsaglia's polar form of the Box-Muller transform:
 *     u = (next >> 11) * 2^-52 - 1, v likewise, redrawn while
 *     q = u*u + v*v >= 1 or q == 0, then f = sqrt(-2 log(q) / q) and the
 *     pair (u f, v f), in double, rounded to float (a block of odd length
 *     drops its last pair's second value).  Blocks are independent, so
 *     they are drawn by `threads` threads at once and the numbers do not
 *     depend on how many;
 *   - minibatches: state k_c ^ SGLD_BATCH_SALT.  A permutation of 0..n-1 is
 *     drawn from the identity by Fisher-Yates (for i = n-1 down to 1, swap
 *     i with rng_below(i + 1)) and read m at a time; at its end the next
 *     one is drawn, so a minibatch may span two permutations.
 * init_loss takes the examples in order, m at a time (the last chunk may
 * be shorter), each chunk weighted by its size.
 *
 * The update is one pass over the parameters, per element in float:
 *     dw = gamma_f * (w - w*) + nbeta_f * g
 *     w  = (w - halfeps_f * dw) + sqrteps_f * z
 * with gamma_f = (float)gamma, nbeta_f = (float)nbeta,
 * halfeps_f = (float)(eps / 2), sqrteps_f = (float)sqrt(eps): one loop
 * per noise block rather than BLAS saxpy calls, because the noise must be
 * drawn element by element anyway and fusing reads w*, g and w once per
 * step instead of four times (the noise, not the arithmetic, is what the
 * pass costs: about half a forward+backward of pythia-14m on 256 tokens on
 * one core, which is why it is spread over threads).
 *
 *     struct sgld_config c = {.nbeta = sgld_default_nbeta(64), .gamma = 100,
 *                             .epsilon = 1e-4, .chains = 4, .draws = 100,
 *                             .burnin = 100, .batch = 64, .max_rise = INFINITY,
 *                             .seed = 0};
 *     struct sgld_result r;
 *     if (sgld_estimate(&r, &c, w, NULL, d, n, my_loss, my_ctx, &e) < 0) ...
 *     ... r.llc_mean, r.llc_std, r.trace[chain * r.draws + draw] ...
 *     sgld_result_free(&r);
 */
#ifndef CKPTD_BATTERY_SGLD_H
#define CKPTD_BATTERY_SGLD_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define SGLD_SALT 0x53474c44534c4c43ull       /* "SGLDSLLC" */
#define SGLD_BATCH_SALT 0x4d494e4942415443ull /* "MINIBATC" */
#define SGLD_NOISE_BLOCK 65536                /* parameters per noise stream */

struct sgld_config {
    double nbeta;    /* n * beta, the inverse temperature (> 0) */
    double gamma;    /* localisation strength (>= 0) */
    double epsilon;  /* step size (> 0) */
    int chains;      /* independent chains, each from w* (>= 1) */
    int draws;       /* draws per chain after the burn-in (>= 1) */
    int burnin;      /* steps per chain before the first draw (>= 0) */
    int batch;       /* m, examples per minibatch (1 .. n) */
    double max_rise; /* a loss above init_loss + max_rise stops its chain
                        (INFINITY: only non-finite losses do; > 0) */
    uint64_t seed;
    int threads;     /* threads drawing the noise and updating w (<= 1: the
                        calling thread only); the result does not depend on it */
};

/* The loss at w: the mean over the m examples idx[0..m-1] (each in
 * [0, n)), into *loss, and its gradient (d floats) into grad unless grad
 * is NULL.  w and grad are the vectors given to sgld_estimate (the same
 * pointers, so a model whose weights and gradients live there may use them
 * in place).  Returns 0 or a negative code with e filled; the estimate
 * then stops with that error. */
typedef int (*sgld_loss_fn)(void *ctx, const float *w, const int *idx, int m, double *loss,
                            float *grad, struct err *e);

struct sgld_result {
    int chains, draws;
    double init_loss;     /* L(w*), the mean over all n examples */
    double *trace;        /* (chains, draws): L_m(w_t) at each draw; NaN for the
                             draws a diverged chain did not take */
    int *ndraws;          /* (chains): draws taken (draws, unless diverged) */
    long *diverged_step;  /* (chains): -1, or the step (0-based, burn-in
                             included) whose loss stopped the chain */
    double *llc_chain;    /* (chains): nbeta * (mean trace - init_loss); NaN
                             for a diverged chain */
    int ndiverged;        /* chains that diverged */
    double llc_mean;      /* over the chains that did not diverge; NaN if none */
    double llc_std;       /* their sample standard deviation; NaN if fewer than 2 */
};

/* devinterp's default inverse temperature for minibatches of m examples:
 * m / ln m, and 1 for m <= 1. */
double sgld_default_nbeta(int m);

/* Estimate the LLC of fn at w (d floats, holding w* on entry) over n
 * examples.  w is the chains' working vector: on return, success or not,
 * it holds w* again, bit for bit.  grad (d floats) is where fn writes
 * gradients, or NULL to have it allocated here.  *out is filled on success
 * (free it with sgld_result_free) and zeroed on error.  Errors:
 * ERR_INVALID for a setting out of range (named), ERR_NUMERIC when w* or
 * L(w*) is not finite, ERR_NOMEM, or fn's own error. */
int sgld_estimate(struct sgld_result *out, const struct sgld_config *c, float *w, float *grad,
                  size_t d, int n, sgld_loss_fn fn, void *ctx, struct err *e) CK_WUR;

/* Release a result's arrays; accepts a zeroed result. */
void sgld_result_free(struct sgld_result *r);

#endif
