/*
 * backward.h - gradients of GPT-NeoX: of the training loss with respect to
 * the parameters, and of any scalar function of the logits with respect to
 * the activations at the hook points (attribution patching).
 *
 * A taped forward (gptneox_tape_forward) is gptneox_forward that also keeps
 * every activation the backward pass needs on a tape (one arena per tape,
 * grown to the largest (B,T) seen): each layer's input, LayerNorm outputs
 * and statistics, fused qkv after rotary, attention pattern, z, the MLP
 * pre-activation and GELU output.  It is the same code as gptneox_forward,
 * with the same hooks, so its logits are gptneox_forward's bit for bit.
 *
 * The backward pass (gptneox_backward) starts from a caller's d metric /
 * d logits (B,T,V) for whatever scalar metric of the logits the caller
 * has (a loss, a logit difference at some positions); gptneox_xent_dlogits
 * makes the one of the mean next-token loss.  On its way back it calls
 * gradient hooks: struct gptneox_hook entries like the forward's, whose
 * hook_act carries grad = 1 and data = d metric / d activation, shaped as
 * the activation (TransformerLens names and shapes, gptneox.h).  A
 * gradient hook may copy the gradient (a gradient cache) or overwrite it:
 * what it leaves is what flows further back (zero it to cut a path).  The
 * gradient at a branch output (hook_attn_out, hook_mlp_out) is handed to
 * its hook as a copy, so writing it changes that branch only.
 *
 * Parameter gradients are optional: with grads NULL the weight-gradient
 * products are skipped (about half the backward's work).  With a gradient
 * model (gptneox_grads_create) every value of it is overwritten with
 * d metric / d parameter: grads->layers[l].qkv_w is the gradient of
 * m->layers[l].qkv_w, and so on.
 *
 * Every matrix product is one cblas_sgemm over all B*T rows; attention is
 * differentiated per (batch, head) with sgemm on blocks of query rows
 * against the keys they may see, as the forward computes it.
 *
 * Hook points are treated as the identity: the backward differentiates the
 * model's own function and evaluates each derivative at the activations
 * the forward used, after its forward hooks ran.  With hooks that only read
 * this is exactly the gradient of the metric.  A forward hook that wrote
 * (a patch) moves the point at which the layers after it are
 * differentiated, as torch does for x + (x_patched - x).detach().
 *
 * The backward leaves the tape unchanged (unless dlogits is the tape's own
 * buffer, gptneox_tape_dlogits), so several metrics may be differentiated
 * after one taped forward.
 *
 * Attribution patching (Nanda 2023): the effect of replacing a head's z by
 * z' is estimated as sum (z' - z) * d metric / d z, for every head at once:
 *
 *     struct gptneox_tape *tape = NULL;
 *     if (gptneox_tape_create(&tape, &e) < 0) ...
 *     struct gptneox_hook zc = {HOOK_ATTN_Z, -1, cache_fn, &clean_z};   // forward cache
 *     if (gptneox_tape_forward(m, tape, tokens, B, T, &zc, 1, &e) < 0) ...
 *     float *d = gptneox_tape_dlogits(tape);      // logits, (B,T,V), writable
 *     my_metric_grad(d, B, T, V);                 // d metric / d logits, in place
 *     struct gptneox_hook gz = {HOOK_ATTN_Z, -1, cache_fn, &grad_z};   // gradient cache
 *     if (gptneox_backward(m, tape, d, &gz, 1, NULL, &e) < 0) ...
 *     // grad_z[l] (B,T,NH,HS): d metric / d blocks.l.attn.hook_z
 *     gptneox_tape_free(tape);
 *
 * Training:
 *
 *     struct gptneox *g = NULL;
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

/* Taped forward: gptneox_forward on tokens (B,T) with hooks, keeping on
 * the tape what gptneox_backward needs.  The logits (B,T,V) are readable
 * with gptneox_tape_logits until the next forward on this tape; the
 * model's own logits (gptneox_logits) are not changed.  Errors as
 * gptneox_forward (ERR_INVALID, ERR_NOMEM, a hook's error); the tape then
 * holds no forward. */
int gptneox_tape_forward(struct gptneox *m, struct gptneox_tape *tape, const int *tokens, int B,
                         int T, const struct gptneox_hook *hooks, size_t nhooks,
                         struct err *e) CK_WUR;

/* Logits (B,T,V) of the tape's last forward; borrowed, NULL when the tape
 * holds none (none yet, or gptneox_forward_backward made them gradients). */
const float *gptneox_tape_logits(const struct gptneox_tape *t);

/* The same buffer, writable: a caller may overwrite the logits with
 * d metric / d logits and pass it to gptneox_backward (no second (B,T,V)
 * buffer).  NULL as gptneox_tape_logits. */
float *gptneox_tape_dlogits(struct gptneox_tape *t);

/* dlogits (N,V) = d loss / d logits (N,V) of the mean cross-entropy over
 * the rows with targets[n] >= 0 (others get 0); dlogits may equal logits
 * (in place).  Returns the loss (natural log), NAN when no row has a
 * target (dlogits is then left as it was). */
double gptneox_xent_dlogits(float *dlogits, const float *logits, const int *targets, int N,
                            int V);

/* The backward pass of the tape's last taped forward of m, from dlogits
 * (B,T,V) = d metric / d logits, calling the gradient hooks hooks[0..nhooks)
 * (kinds and layers as forward hooks; hook_act.grad = 1) from
 * ln_final.hook_normalized back to hook_embed.  grads: NULL, or a gradient
 * model of m (gptneox_grads_create) whose every value is overwritten with
 * d metric / d parameter.  Errors: ERR_INVALID (the tape holds no forward
 * of m, dlogits NULL), ERR_MISMATCH (grads of another config), ERR_NOMEM,
 * or a hook's error (the pass stops there; grads are then unspecified).
 * The tape is unchanged: another backward may follow. */
int gptneox_backward(struct gptneox *m, struct gptneox_tape *tape, const float *dlogits,
                     const struct gptneox_hook *hooks, size_t nhooks, struct gptneox *grads,
                     struct err *e) CK_WUR;

/* Training forward: a taped forward without hooks; *loss = the mean
 * cross-entropy over positions with targets >= 0.  Errors: ERR_INVALID (bad
 * sizes, a token or target outside the vocabulary, no position with a
 * target), ERR_NOMEM; the model is never changed. */
int gptneox_train_forward(struct gptneox *m, struct gptneox_tape *tape, const int *tokens,
                          const int *targets, int B, int T, double *loss,
                          struct err *e) CK_WUR;

/* gptneox_train_forward, then gptneox_backward of the loss into grads (the
 * tape's logits become d loss / d logits).  grads must come from
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
