/*
 * sae.h - sparse autoencoders: the dictionary, its forward, and its two
 * trainers.
 *
 * A sparse autoencoder (SAE) rewrites an activation x (d_in) as a sparse,
 * non-negative code z (d_sae) over a dictionary of directions:
 *
 *     pre  = (x - b_dec) W_enc + b_enc           W_enc (d_in, d_sae)
 *     z    = act(pre)                            TopK, ReLU or JumpReLU
 *     xhat = z W_dec + b_dec                     W_dec (d_sae, d_in)
 *
 * with act = ReLU of the k largest pre-activations, all others 0 (TopK, Gao
 * et al. 2024, "Scaling and evaluating sparse autoencoders"), ReLU (the L1
 * autoencoder of Bricken et al. 2023, "Towards Monosemanticity"), or
 * JumpReLU, ReLU(pre) where pre > threshold_i and 0 elsewhere (Rajamanoharan
 * et al. 2024, "Jumping Ahead"; Gemma Scope's).  These are SAELens 6's
 * "topk", "standard" and "jumprelu" architectures; apply_b_dec = 0 drops the
 * "- b_dec" of the input (SAELens's apply_b_dec_to_input false).  Ties in
 * TopK go to the lower index.  The files (sae_file.h) read and write them.
 *
 * Training (sae_trainer_*) works on normalised activations, x scaled by
 * s = sqrt(d_in) / mean ||x|| (SAELens's "expected_average_only_in"
 * factor, computed by the caller on the training tokens), with Adam
 * (train/adamw.h's arithmetic, no weight decay) on
 *
 *     mse  = 1/n sum_t ||x_t - xhat_t||^2                      (both)
 *     TopK:  loss = mse + aux_coeff * 1/n sum_t ||e_t - W_dec^T z_aux,t||^2
 *            e = x - xhat (no gradient through it), z_aux = ReLU of the
 *            k_aux largest pre-activations among dead latents (AuxK of Gao
 *            et al., aux_coeff 1/32, k_aux d_in/2 capped at the number dead;
 *            a latent is dead when it has not fired on the last dead_window
 *            training tokens)
 *     ReLU:  loss = mse + l1_coeff * 1/n sum_t sum_i z_ti ||W_dec,i||
 *            (Bricken et al.'s L1; the rows are unit norm, so it is their
 *            plain ||z||_1)
 *
 * After each gradient the component of every decoder row's gradient along
 * that row is removed, and after each Adam step every row is rescaled to
 * unit norm (both papers).  Cold start: W_dec rows are Gaussian directions
 * from splitmix64 (rng.h) and Box-Muller, W_enc = W_dec^T, b_enc = 0, b_dec =
 * the mean of the training activations (Gao et al. use the geometric median).
 *
 * A trained dictionary is moved back to raw activations in one of two ways.
 * sae_fold_saelens is SAELens's fold_activation_norm_scaling_factor:
 * W_enc times s, W_dec and b_dec divided by s, so the codes of raw x are
 * exactly those of x_norm = s x (what SAELens computes from a file so
 * folded; the files are written this way).  sae_fold_scaling divides the
 * biases by s instead: TopK and ReLU are positively homogeneous, so the same
 * unit-norm W_enc and W_dec then give the codes divided by s (the units of
 * the `sae` item's stored metrics).
 *
 * Every matrix product is one cblas_sgemm over a whole batch.  Results are a
 * pure function of the inputs, the seed and the BLAS thread count.
 *
 *     struct sae *s = NULL;
 *     if (sae_create(&s, SAE_TOPK, C, 4 * C, 32, &e) < 0) ...
 *     struct sae_train_config tc;
 *     sae_train_config_default(&tc, SAE_TOPK);
 *     sae_init_cold(s, x_norm, n, tc.seed);
 *     struct sae_trainer *tr = NULL;
 *     if (sae_trainer_create(&tr, s, &tc, &e) < 0) ...
 *     for (...) if (sae_trainer_step(tr, batch, nb, &st, &e) < 0) ...
 *     sae_fold_saelens(s, scale);        // then sae_save (sae_file.h)
 *     sae_trainer_free(tr);
 *     sae_free(s);
 */
#ifndef CKPTD_SAE_H
#define CKPTD_SAE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

enum sae_arch {
    SAE_TOPK,     /* SAELens "topk" */
    SAE_RELU,     /* SAELens "standard" (ReLU) */
    SAE_JUMPRELU, /* SAELens "jumprelu" */
    SAE_ARCH_COUNT
};

/* SAELens's architecture name of an arch ("topk", "standard", "jumprelu"),
 * or NULL. */
const char *sae_arch_name(enum sae_arch a);

struct sae {
    enum sae_arch arch;
    int d_in, d_sae;
    int k;           /* TopK's k (1 <= k <= d_sae); 0 for the others */
    int apply_b_dec; /* 1 (sae_create's): encode x - b_dec; 0: encode x */
    float *W_enc;    /* (d_in, d_sae) */
    float *W_dec;    /* (d_sae, d_in); unit-norm rows while training */
    float *b_enc;    /* (d_sae) */
    float *b_dec;    /* (d_in) */
    float *threshold; /* (d_sae) JumpReLU's thresholds; NULL for the others */
    float *block;    /* private: the tensors live here, threshold last */
};

/* ---- the dictionary ---- */

/* An SAE with every weight zero and apply_b_dec 1.  Errors: ERR_INVALID
 * (sizes, k out of [1, d_sae] for TopK), ERR_NOMEM.  Caller frees with
 * sae_free. */
int sae_create(struct sae **out, enum sae_arch arch, int d_in, int d_sae, int k,
               struct err *e) CK_WUR;
void sae_free(struct sae *s);

/* A copy of s (caller frees), or NULL when out of memory. */
struct sae *sae_clone(const struct sae *s);

/* Cold start: W_dec rows N(0, 1) directions from splitmix64 state `seed`
 * (Box-Muller) scaled to unit norm, W_enc = W_dec^T, b_enc = 0, b_dec = the
 * mean of x (n, d_in) (0 when n is 0). */
void sae_init_cold(struct sae *s, const float *x, size_t n, uint64_t seed);

/* Forward on n rows of x (n, d_in), through sgemm:
 *   pre (n, d_sae)  = (x - b_dec) W_enc + b_enc;  xc (n, d_in) gets x - b_dec
 *                     (x itself when apply_b_dec is 0)
 *   z   (n, d_sae)  = act(pre)  (z may equal pre)
 *   xhat (n, d_in)  = z W_dec + b_dec */
void sae_encode_pre(const struct sae *s, float *pre, float *xc, const float *x, int n);
void sae_activate(const struct sae *s, float *z, const float *pre, int n);
void sae_decode(const struct sae *s, float *xhat, const float *z, int n);

/* xhat (n, d_in) = decode(encode(x)), SAE_RECON_ROWS rows at a time (xhat
 * may equal x).  z (n, d_sae) gets the codes when non-NULL.  ERR_NOMEM. */
#define SAE_RECON_ROWS 1024
int sae_reconstruct(const struct sae *s, float *xhat, float *z, const float *x, size_t n,
                    struct err *e) CK_WUR;

/* Move a dictionary trained on x * scale to raw x: b_enc and b_dec divided
 * by scale (see the header comment); W_enc and W_dec unchanged. */
void sae_fold_scaling(struct sae *s, double scale);
/* The inverse: b_enc and b_dec multiplied by scale. */
void sae_unfold_scaling(struct sae *s, double scale);

/* SAELens's fold of the normalisation factor (SAE.fold_activation_norm_
 * scaling_factor): W_enc multiplied by scale, W_dec and b_dec divided by it;
 * b_enc and the thresholds unchanged.  The folded dictionary's codes of x
 * are the unfolded one's of x * scale; its reconstruction is in x's units. */
void sae_fold_saelens(struct sae *s, double scale);
/* The inverse: W_enc divided by scale, W_dec and b_dec multiplied by it. */
void sae_unfold_saelens(struct sae *s, double scale);

/* SAELens's fold_W_dec_norm (what a TopK file with
 * rescale_acts_by_decoder_norm computes): with n_i = ||W_dec row i||, row i
 * divided by n_i, W_enc column i, b_enc_i and threshold_i multiplied by it.
 * A zero row is left alone and its latent silenced (column and bias 0, as
 * SAELens's pre * 0). */
void sae_fold_decoder_norm(struct sae *s);

/* SAELens's normalisation factor of x (n, d_in): sqrt(d_in) / mean_t ||x_t||
 * (double sums).  ERR_NUMERIC when a value is not finite or every row is 0,
 * naming the first bad row. */
int sae_norm_scale(const float *x, size_t n, int d_in, double *scale, struct err *e) CK_WUR;

/* ---- training ---- */

struct sae_train_config {
    double lr, beta1, beta2, eps; /* Adam */
    double aux_coeff;             /* TopK: AuxK coefficient (Gao et al.: 1/32) */
    int k_aux;                    /* TopK: dead latents in AuxK; 0: d_in / 2 */
    double l1_coeff;              /* ReLU: L1 coefficient */
    long dead_window;             /* tokens without firing that make a latent dead */
    int batch;                    /* tokens per step: the most sae_trainer_step takes */
    uint64_t seed;
};

/* Defaults for an arch: Adam lr 4e-4, betas 0.9/0.999, eps 1e-8; TopK
 * aux_coeff 1/32, k_aux d_in/2; ReLU l1_coeff SAE_RELU_L1; dead_window
 * SAE_DEAD_WINDOW; batch 1024; seed 0. */
#define SAE_RELU_L1 5e-2
#define SAE_DEAD_WINDOW 8192
void sae_train_config_default(struct sae_train_config *c, enum sae_arch arch);

/* Loss terms of one step (normalised units). */
struct sae_step_stats {
    double loss;  /* the objective */
    double mse;   /* 1/n sum ||x - xhat||^2 */
    double aux;   /* TopK: the AuxK term before aux_coeff (0 when none dead) */
    double l1;    /* ReLU: 1/n sum z ||W_dec,i||, before l1_coeff */
    double l0;    /* mean active latents per token */
    int ndead;    /* dead latents at the start of the step */
};

/* The gradients of one batch, the trainer's scratch (borrowed). */
struct sae_grads {
    float *W_enc, *W_dec, *b_enc, *b_dec; /* shapes as struct sae */
};

struct sae_trainer; /* opaque: Adam moments, firing counters, batch buffers */

/* A trainer of s (borrowed; it must outlive the trainer and is updated in
 * place).  Errors: ERR_INVALID (config out of range), ERR_UNSUPPORTED (a
 * JumpReLU dictionary or apply_b_dec 0: only TopK and ReLU with b_dec
 * applied are trained), ERR_NOMEM. */
int sae_trainer_create(struct sae_trainer **out, struct sae *s, const struct sae_train_config *c,
                       struct err *e) CK_WUR;
void sae_trainer_free(struct sae_trainer *tr);

/* Loss and gradients of x (n, d_in), 1 <= n <= batch, with `dead` (d_sae
 * flags, 1 = dead; NULL = none) as the AuxK mask; nothing is updated.
 * The gradients stay in the trainer until the next call (sae_trainer_grads).
 * ERR_NUMERIC when the loss is not finite (a NaN input, a diverged step),
 * ERR_INVALID for n out of range. */
int sae_trainer_grad(struct sae_trainer *tr, const float *x, int n, const unsigned char *dead,
                     struct sae_step_stats *st, struct err *e) CK_WUR;
const struct sae_grads *sae_trainer_grads(const struct sae_trainer *tr);

/* Apply the gradients of the last sae_trainer_grad: remove each decoder
 * row's gradient component along the row, one Adam step, rows back to
 * unit norm. */
void sae_trainer_apply(struct sae_trainer *tr);

/* One training step: the dead mask from the firing counters, grad, apply,
 * then the counters advanced by this batch. */
int sae_trainer_step(struct sae_trainer *tr, const float *x, int n, struct sae_step_stats *st,
                     struct err *e) CK_WUR;

/* Train on x (n, d_in) for `tokens` tokens: epochs over the rows, each in
 * an order drawn by Fisher-Yates from splitmix64 (state seed ^
 * SAE_SHUFFLE_SALT, continued from epoch to epoch), `batch` rows per step
 * (a batch may span two epochs; the last one of the budget may be
 * shorter).  *tail (may be NULL) gets the mean stats of the last tenth of
 * the steps (at least one).  Errors as sae_trainer_step, ERR_NOMEM,
 * ERR_INVALID when n is 0. */
#define SAE_SHUFFLE_SALT 0x5341455368756666ull /* "SAEShuff" */
int sae_train(struct sae_trainer *tr, const float *x, size_t n, long tokens,
              struct sae_step_stats *tail, struct err *e) CK_WUR;

/* Latents that have not fired in the last min(dead_window, tokens trained)
 * training tokens, into dead (d_sae flags); returns how many. */
int sae_trainer_dead(const struct sae_trainer *tr, unsigned char *dead);

/* Tokens trained so far. */
long sae_trainer_tokens(const struct sae_trainer *tr);

#endif
