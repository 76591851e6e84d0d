/*
 * adamw.h - the AdamW optimiser (Loshchilov & Hutter 2019, "Decoupled Weight
 * Decay Regularization"), computed as torch.optim.AdamW computes it.
 *
 * Per step t (from 1), for each parameter p with gradient g:
 *     p <- p * (1 - lr * wd)                      (decoupled weight decay)
 *     m <- beta1 m + (1 - beta1) g
 *     v <- beta2 v + (1 - beta2) g^2
 *     p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * Weight decay applies to the matrices and embeddings only: biases and
 * LayerNorm weights and biases are not decayed (gptneox_param.decay).
 *
 *     struct adamw *opt = NULL;
 *     struct adamw_config ac = {1e-3, 0.9, 0.98, 1e-8, 1.0};
 *     if (adamw_create(&opt, m, &ac, &e) < 0) ...
 *     ... gptneox_forward_backward(m, g, ...) ...
 *     adamw_step(opt, m, g, lr_now);
 *     adamw_free(opt);
 */
#ifndef CKPTD_ADAMW_H
#define CKPTD_ADAMW_H

#include <stddef.h>

#include "common/err.h"
#include "workers/model/gptneox.h"

struct adamw_config {
    double lr;            /* the base rate; adamw_step takes the current one */
    double beta1, beta2;
    double eps;
    double weight_decay;
};

struct adamw; /* opaque: moments of every parameter and the step count */

/* An optimiser for model m (moments zero, step 0). Errors: ERR_NOMEM,
 * ERR_INVALID for a rate, beta or eps out of range or a read-only model
 * (gptneox_require_writable). */
int adamw_create(struct adamw **out, const struct gptneox *m, const struct adamw_config *cfg,
                 struct err *e) CK_WUR;
void adamw_free(struct adamw *opt);

/* One step on every parameter of m (the model the optimiser was created
 * for) with the gradients in g (its gradient model, backward.h), at
 * learning rate lr.  Allocates nothing. */
void adamw_step(struct adamw *opt, struct gptneox *m, const struct gptneox *g, double lr);

/* Steps taken so far. */
long adamw_steps(const struct adamw *opt);

/* One tensor: p, g, m, v (n); t is the step number after this one (>= 1),
 * wd the weight decay for this tensor (0 for none). */
void adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double wd,
                  const struct adamw_config *c, long t);

#endif
