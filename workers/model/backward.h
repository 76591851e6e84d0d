/*
 * backward.h - gradients of the GPT-NeoX next-token loss, for training.
 *
 * A training forward keeps every activation the backward pass needs on a
 * tape (one arena per tape, grown to the largest (B,T) seen): each layer's
 * input, LayerNorm outputs and statistics, fused qkv after rotary, attention
 * pattern, z, the MLP pre-activation and GELU output.  It runs the same
 * kernels (kernels.h) in the same order as gptneox_forward, so its logits
 * and loss are those of the inference forward; it has no hooks.
 *
 * The loss is the mean cross-entropy over the positions that have a target:
 * targets (B,T) holds the id to predict at each position, or -1 where the
 * position does not count (a loss mask).  gptneox_next_token_targets fills
 * the ordinary next-token targets.
 *
 * The backward pass computes d loss / d every parameter into a gradient
 * model: a struct gptneox with the same config whose weight block holds
 * gradients instead of weights (grads->layers[l].qkv_w is the gradient of
 * m->layers[l].qkv_w, and so on).  Every matrix product is one cblas_sgemm
 * over all B*T rows; attention is differentiated per (batch, head) with
 * sgemm on blocks of query rows against the keys they may see, as the
 * forward computes it.
 *
 *     struct gptneox *g = NULL;
 *     struct gptneox_tape *tape = NULL;
 *     if (gptneox_grads_create(&g, m, &e) < 0 || gptneox_tape_create(&tape, &e) < 0) ...
 *     gptneox_next_token_targets(targets, tokens, B, T);
 *     double loss;
 *     if (gptneox_forward_backward(m, g, tape, tokens, targets, B, T, &loss, &e) < 0) ...
 *     // g->embed, g->layers[0].qkv_w, ... now hold the gradients
 *     gptneox_tape_free(tape);
 *     gptneox_free(g);
 */
#ifndef CKPTD_BACKWARD_H
#define CKPTD_BACKWARD_H

#include <stddef.h>

#include "common/err.h"
#include "workers/model/gptneox.h"

struct gptneox_tape; /* opaque: the saved activations and backward scratch */

/* One parameter tensor of a model, borrowed from it. */
struct gptneox_param {
    char name[96];  /* HuggingFace name, "gpt_neox.layers.0.attention.dense.weight" */
    float *data;
    size_t n;
    int ndim;
    int shape[2];
    int decay;      /* 1 for matrices and embeddings, 0 for biases and LayerNorm */
};

/* The model's parameter tensors in checkpoint order (embed_in, each layer's
 * tensors, final LayerNorm, embed_out unless tied).  Fills up to `cap`
 * entries of `out` (out may be NULL) and returns the total count.  The same
 * call on a gradient model lists the matching gradients in the same order. */
size_t gptneox_params(const struct gptneox *m, struct gptneox_param *out, size_t cap);

/* A gradient model for m: same config, every value zero, writable.  Caller
 * frees it with gptneox_free.  Errors: ERR_NOMEM. */
int gptneox_grads_create(struct gptneox **out, const struct gptneox *m, struct err *e) CK_WUR;

/* An empty tape; memory is allocated by the first forward.  Errors: ERR_NOMEM. */
int gptneox_tape_create(struct gptneox_tape **out, struct err *e) CK_WUR;
void gptneox_tape_free(struct gptneox_tape *t);

/* targets (B,T) = tokens shifted left by one; the last position of each
 * sequence gets -1 (no target). */
void gptneox_next_token_targets(int *targets, const int *tokens, int B, int T);

/* Training forward: run m on tokens (B,T), keep the activations on the tape
 * and set *loss to the mean cross-entropy over positions with targets >= 0.
 * Logits (B,T,V) are then readable with gptneox_tape_logits until the next
 * call on this tape.  Errors: ERR_INVALID (bad sizes, a token or target
 * outside the vocabulary, no position with a target), ERR_NOMEM; the model
 * is never changed. */
int gptneox_train_forward(struct gptneox *m, struct gptneox_tape *tape, const int *tokens,
                          const int *targets, int B, int T, double *loss,
                          struct err *e) CK_WUR;

/* Logits (B,T,V) of the tape's last training forward; borrowed, NULL when
 * the tape holds none (none yet, or a backward has consumed them). */
const float *gptneox_tape_logits(const struct gptneox_tape *t);

/* gptneox_train_forward, then the backward pass: every value of grads is
 * overwritten with d loss / d parameter.  grads must come from
 * gptneox_grads_create for a model of the same config.  Errors as
 * gptneox_train_forward, plus ERR_MISMATCH for a gradient model of another
 * config; on error the gradients are unspecified. */
int gptneox_forward_backward(struct gptneox *m, struct gptneox *grads,
                             struct gptneox_tape *tape, const int *tokens, const int *targets,
                             int B, int T, double *loss, struct err *e) CK_WUR;

/* Floating-point operations of one forward plus backward at (B,T) (matrix
 * products only, 2*M*N*K each), for benchmarks. */
double gptneox_train_flops(const struct gptneox_config *cfg, int B, int T);

#endif
