/*
 * gptneox.h - the GPT-NeoX (Pythia) model: weights, an instrumented forward
 * pass, and hook points named as in TransformerLens.
 *
 * The forward pass computes exactly what HuggingFace's GPTNeoXForCausalLM
 * computes: fused query_key_value (rows ordered head, then q/k/v, then head
 * dim), rotary embedding on the first rotary_ndims dims of each head
 * (rotate-half), causal softmax attention scaled by 1/sqrt(HS), exact-erf
 * GELU MLP, parallel or sequential residual, final LayerNorm and an untied
 * unembedding.  Weights stored as F32, F16 or BF16 are computed in F32.
 *
 * Memory: the weights live in one block (aligned F32 tensors of a read-only
 * load point straight into the mapped file instead), the activations of a
 * forward in one arena that is kept and reused by the next forward of the
 * same or smaller size.
 *
 * Hooks: at each hook point the forward calls every registered hook for it
 * with a mutable view of the activation.  A hook may copy it (a cache) or
 * overwrite it in place (ablation, patching, splicing an SAE reconstruction):
 * the rest of the forward then uses the new values.
 *
 *     struct gptneox *m = NULL;
 *     if (gptneox_load(&m, "step1000", 0, &e) < 0) ...
 *     struct gptneox_hook h = {HOOK_ATTN_PATTERN, 3, my_fn, my_ctx};
 *     if (gptneox_forward(m, tokens, B, T, &h, 1, &e) < 0) ...
 *     const float *logits = gptneox_logits(m);   // (B,T,V), until next forward
 *     gptneox_free(m);
 *
 * Activation patching without recomputing the layers before the patch:
 * cache blocks.L.hook_resid_pre of the corrupted run and the clean run's
 * z, then resume at layer L with a hook that writes the clean z of one
 * head (blocks < L are not run again):
 *
 *     struct gptneox_hook keep = {HOOK_RESID_PRE, L, copy_fn, resid_corrupt};
 *     if (gptneox_forward(m, corrupt, B, T, &keep, 1, &e) < 0) ...
 *     struct gptneox_hook patch = {HOOK_ATTN_Z, L, put_head_fn, &clean_z_head};
 *     if (gptneox_forward_from(m, L, resid_corrupt, B, T, &patch, 1, 0, &e) < 0) ...
 *     metric(gptneox_logits(m));
 *
 * Gradients at the hook points (attribution patching) are in backward.h.
 */
#ifndef CKPTD_GPTNEOX_H
#define CKPTD_GPTNEOX_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "workers/model/config.h"
#include "workers/model/safetensors.h"

/* Hook points, named and shaped as TransformerLens's (HookedTransformer of
 * a GPT-NeoX, from_pretrained_no_processing; docs/hooks.md has the table of
 * conventions).  Per-layer kinds are named blocks.L.<suffix>; a hook point
 * a model does not have (hook_resid_mid of a parallel-residual model) is
 * never called. */
enum hook_kind {
    HOOK_EMBED,          /* hook_embed                      (B,T,C) */
    HOOK_RESID_PRE,      /* blocks.L.hook_resid_pre         (B,T,C) */
    HOOK_ATTN_PATTERN,   /* blocks.L.attn.hook_pattern      (B,NH,T,T) */
    HOOK_ATTN_Z,         /* blocks.L.attn.hook_z            (B,T,NH,HS) */
    HOOK_ATTN_OUT,       /* blocks.L.hook_attn_out          (B,T,C), with the dense bias */
    HOOK_RESID_MID,      /* blocks.L.hook_resid_mid         (B,T,C), sequential residual only */
    HOOK_MLP_POST,       /* blocks.L.mlp.hook_post          (B,T,F) */
    HOOK_MLP_OUT,        /* blocks.L.hook_mlp_out           (B,T,C) */
    HOOK_RESID_POST,     /* blocks.L.hook_resid_post        (B,T,C) */
    HOOK_LN_FINAL,       /* ln_final.hook_normalized        (B,T,C), before weight and bias */
    HOOK_ATTN_Q,         /* blocks.L.attn.hook_q            (B,T,NH,HS), before rotary */
    HOOK_ATTN_K,         /* blocks.L.attn.hook_k            (B,T,NH,HS), before rotary */
    HOOK_ATTN_V,         /* blocks.L.attn.hook_v            (B,T,NH,HS) */
    HOOK_ROT_Q,          /* blocks.L.attn.hook_rot_q        (B,T,NH,HS), after rotary */
    HOOK_ROT_K,          /* blocks.L.attn.hook_rot_k        (B,T,NH,HS), after rotary */
    HOOK_ATTN_SCORES,    /* blocks.L.attn.hook_attn_scores  (B,NH,T,T), /sqrt(HS), -inf masked */
    HOOK_MLP_PRE,        /* blocks.L.mlp.hook_pre           (B,T,F) */
    HOOK_LN1_SCALE,      /* blocks.L.ln1.hook_scale         (B,T,1); (B,T,NH,1) with hook_attn_in */
    HOOK_LN1_NORMALIZED, /* blocks.L.ln1.hook_normalized    (B,T,C); (B,T,NH,C) with hook_attn_in */
    HOOK_LN2_SCALE,      /* blocks.L.ln2.hook_scale         (B,T,1) */
    HOOK_LN2_NORMALIZED, /* blocks.L.ln2.hook_normalized    (B,T,C) */
    HOOK_LN_FINAL_SCALE, /* ln_final.hook_scale             (B,T,1) */
    HOOK_ATTN_RESULT,    /* blocks.L.attn.hook_result       (B,T,NH,C), per head, no bias */
    HOOK_ATTN_IN,        /* blocks.L.hook_attn_in           (B,T,NH,C) */
    HOOK_MLP_IN,         /* blocks.L.hook_mlp_in            (B,T,C) */
    HOOK_KIND_COUNT
};

/* The activation a hook sees. `data` is writable; shape as TransformerLens. */
struct hook_act {
    enum hook_kind kind;
    int layer;          /* -1 for hook_embed and the ln_final hooks */
    const char *name;   /* full hook name, borrowed for the call */
    float *data;
    int ndim;
    int shape[4];
    size_t n;           /* number of elements */
    int grad;           /* 0: the activation (forward); 1: d metric / d activation
                         * (a gradient hook of gptneox_backward, backward.h) */
};

/* A hook returns 0, or a negative code (filling e) to abort the forward. */
typedef int (*gptneox_hook_fn)(void *ctx, struct hook_act *act, struct err *e);

struct gptneox_hook {
    enum hook_kind kind;
    int layer;            /* a layer, or -1: every layer (or the global point) */
    gptneox_hook_fn fn;
    void *ctx;
};

struct gptneox_layer {
    float *ln1_w, *ln1_b;   /* input_layernorm (C) */
    float *qkv_w, *qkv_b;   /* attention.query_key_value (3C,C), (3C) or NULL */
    float *attn_w, *attn_b; /* attention.dense (C,C), (C) or NULL */
    float *ln2_w, *ln2_b;   /* post_attention_layernorm (C) */
    float *fc_w, *fc_b;     /* mlp.dense_h_to_4h (F,C), (F) */
    float *proj_w, *proj_b; /* mlp.dense_4h_to_h (C,F), (C) */
};

struct gptneox_acts; /* private: the activation arena */

struct gptneox {
    struct gptneox_config cfg;
    float *embed;                 /* gpt_neox.embed_in (V,C) */
    struct gptneox_layer *layers; /* (L) */
    float *lnf_w, *lnf_b;         /* gpt_neox.final_layer_norm (C) */
    float *unembed;               /* embed_out (V,C); == embed when tied */
    /* Weights are read-only when they point into a mapped file; load with
     * GPTNEOX_LOAD_WRITABLE (or create) to own writable copies. */
    int writable;
    /* Floating-point operations of the forward work done on this model so
     * far (each layer and the unembedding as they run, counted as
     * gptneox_forward_flops does): lets callers report what their forwards
     * cost.  Never reset by the model. */
    double forward_flop;
    /* private */
    float *block;
    size_t block_floats;
    struct st_set *st;
    struct gptneox_acts *acts;
};

/* Load flags. */
#define GPTNEOX_LOAD_WRITABLE 1u /* copy every tensor into the weight block */

/* Load the checkpoint directory `dir` (config.json + safetensors, single or
 * sharded).  Every tensor the model uses must be present with the shape the
 * config implies and a F32/F16/BF16 dtype; each must be finite.  Other
 * tensors are ignored.  On failure *out is NULL and `e` names the file and
 * tensor (expected vs actual shape, dtype, first non-finite index). */
int gptneox_load(struct gptneox **out, const char *dir, unsigned flags,
                 struct err *e) CK_WUR;

/* A model with every weight zero (LayerNorm weights one), writable. */
int gptneox_create(struct gptneox **out, const struct gptneox_config *cfg,
                   struct err *e) CK_WUR;

/* Fill the weights with a seeded random init: N(0, std) for matrices and
 * embeddings, small random biases, LayerNorm weights 1 + N(0, std/10).
 * Returns 0, or ERR_INVALID for a read-only model (nothing is written). */
int gptneox_init_random(struct gptneox *m, uint64_t seed, float std);

/* 0 if m's weights may be written (gptneox_create, GPTNEOX_LOAD_WRITABLE);
 * else ERR_INVALID with a message saying so, `what` naming what the caller
 * wanted to do ("train it").  Every function that writes weights checks
 * this first: a read-only load maps the checkpoint file read-only, and a
 * write there would crash the process. */
int gptneox_require_writable(const struct gptneox *m, const char *what, struct err *e) CK_WUR;

void gptneox_free(struct gptneox *m);

/* Write the model as a HuggingFace checkpoint directory (created if needed):
 * config.json and model.safetensors with weights as `dtype` (ST_F32, ST_F16
 * or ST_BF16).  Files are replaced atomically; on failure what was there
 * before is untouched. */
int gptneox_save(const struct gptneox *m, const char *dir, enum st_dtype dtype,
                 struct err *e) CK_WUR;

/* Run the model on tokens (B,T) (ids in [0, V)), calling hooks. On success
 * the logits are available through gptneox_logits until the next forward.
 * Errors: ERR_INVALID for bad tokens or sizes, ERR_NOMEM, or a hook's own
 * error (the forward stops there). */
int gptneox_forward(struct gptneox *m, const int *tokens, int B, int T,
                    const struct gptneox_hook *hooks, size_t nhooks,
                    struct err *e) CK_WUR;

/* Like gptneox_forward, but stop after blocks.<last_layer>.hook_resid_post:
 * no final LayerNorm and no logits (harvesting activations is cheaper). */
int gptneox_forward_until(struct gptneox *m, const int *tokens, int B, int T,
                          const struct gptneox_hook *hooks, size_t nhooks,
                          int last_layer, struct err *e) CK_WUR;

/* Resume a forward at blocks.<layer>.hook_resid_pre from a residual stream
 * `resid` (B,T,C) cached earlier (0 <= layer <= n_layers; n_layers means
 * "after the last block": only the final LayerNorm and the logits).  Runs
 * layers layer.. n_layers-1 exactly as gptneox_forward would, calling the
 * hooks from blocks.<layer>.hook_resid_pre on (hook_embed is not called),
 * then the logits unless flags has GPTNEOX_FWD_NO_LOGITS.  With the same
 * (B,T) and residual the logits are bit-identical to the full forward's.
 * `resid` is copied; it may be reused at once.  Errors as gptneox_forward,
 * and ERR_INVALID for a layer out of range or a NULL resid. */
#define GPTNEOX_FWD_NO_LOGITS 1u
int gptneox_forward_from(struct gptneox *m, int layer, const float *resid, int B, int T,
                         const struct gptneox_hook *hooks, size_t nhooks, unsigned flags,
                         struct err *e) CK_WUR;

/* Logits (B,T,V) of the last full forward; borrowed, NULL before one. */
const float *gptneox_logits(const struct gptneox *m);

/* Next-token losses of the last full forward on `tokens` (B,T):
 * out (B,T-1) gets -log p(tokens[b,t+1] | ..t) (may be NULL); per_seq (B)
 * gets each sequence's mean (may be NULL).  Returns the overall mean, or
 * NAN when no full forward has run. */
double gptneox_loss(const struct gptneox *m, const int *tokens, int B, int T,
                    float *out, float *per_seq);

/* ---- hook names ---- */

/* Suffix of a kind ("attn.hook_pattern") and whether it is per layer. */
const char *hook_kind_suffix(enum hook_kind k);
int hook_kind_per_layer(enum hook_kind k);

/* Full name into buf ("blocks.3.attn.hook_pattern"). Returns 0 or ERR_INVALID. */
int hook_name(char *buf, size_t n, enum hook_kind k, int layer);

/* Parse a full name. Returns 0, or ERR_NOTFOUND when it names no hook point. */
int hook_parse(const char *name, enum hook_kind *k, int *layer);

/* Shape of a hook's activation for this model at (B,T); returns ndim.
 * (ln1's hooks at a layer whose hook_attn_in is hooked have a head axis:
 * the act a hook sees says so.) */
int gptneox_hook_shape(const struct gptneox_config *cfg, enum hook_kind k, int B,
                       int T, int shape[4]);

/* 1 if `name` is a tensor the model reads, 2 if it is a known tensor of old
 * exports that is ignored (attention.bias, attention.masked_bias,
 * rotary_emb.inv_freq), 0 otherwise. */
int gptneox_tensor_role(const struct gptneox_config *cfg, const char *name);

/* Floating-point operations of one forward at (B,T), counting 2*M*N*K per
 * matrix product (attention: the causal part actually computed, in blocks). */
double gptneox_forward_flops(const struct gptneox_config *cfg, int B, int T);

#endif
