/*
 * tape.h - private to the model (gptneox.c, backward.c): the activations a
 * taped forward keeps for the backward pass, and the shared hook caller.
 *
 * gptneox.c owns the forward; with a tape it writes every activation the
 * backward reads into the tape's per-layer buffers instead of the model's
 * reusable arena, after the hooks at that point have run (so the backward
 * sees what the rest of the forward used).  backward.c owns the tape's
 * memory and the backward pass.  Nothing outside workers/model/ includes
 * this file; the public contract is backward.h.
 */
#ifndef CKPTD_TAPE_H
#define CKPTD_TAPE_H

#include <stddef.h>

#include "common/err.h"
#include "workers/model/gptneox.h"

/* One layer's saved activations.  N = B*T. */
struct tape_layer {
    float *x_in;          /* (B,T,C) residual entering the layer, after hook_resid_pre */
    float *ln1;           /* (B,T,C) input LayerNorm output (weight and bias applied) */
    float *mean1, *rstd1; /* (B,T) its statistics */
    float *qkv;           /* (B,T,NH,3,HS) after rotary */
    float *pattern;       /* (B,NH,T,T) attention probabilities, after hook_pattern */
    int pattern_all;      /* a hook saw the pattern: z used every key, not the causal ones */
    float *z;             /* (B,T,NH,HS) */
    float *x_mid;         /* (B,T,C) sequential residual: x_in + attn_out; else NULL */
    float *ln2;           /* (B,T,C) MLP LayerNorm output */
    float *mean2, *rstd2; /* (B,T) */
    float *hpre;          /* (B,T,F) MLP pre-activation */
    float *h;             /* (B,T,F) GELU output, after mlp.hook_post */
};

struct gptneox_tape {
    size_t cap;           /* floats allocated at mem */
    float *mem;
    int B, T, nlayers;    /* of the last taped forward */
    int has_logits;       /* logits hold the last forward's logits */
    int forward_done;     /* a taped forward ran to the logits */
    int *tokens;          /* (B,T) its tokens */
    size_t tokens_cap;
    struct tape_layer *layers; /* (nlayers) */
    float *x_fin;         /* (B,T,C) residual entering the final LayerNorm */
    float *lnf;           /* (B,T,C) final LayerNorm output */
    float *meanf, *rstdf; /* (B,T) */
    float *logits;        /* (B,T,V); the backward may overwrite it with d/dlogits */
    /* forward scratch */
    float *x;             /* (B,T,C) the running residual stream */
    float *attn_out;      /* (B,T,C) */
    float *mlp_out;       /* (B,T,C) */
    float *cosv, *sinv;   /* (T,RD/2) rotary tables */
    /* backward scratch */
    float *dres;          /* (B,T,C) gradient of the residual stream */
    float *dbranch;       /* (B,T,C) gradient at a branch output (attn_out, mlp_out) */
    float *dln1, *dln2;   /* (B,T,C) gradients at the LayerNorm outputs */
    float *dz;            /* (B,T,NH,HS) */
    float *dqkv;          /* (B,T,NH,3,HS) */
    float *dh;            /* (B,T,F) */
    float *dP;            /* (T,T) one (batch, head)'s pattern gradient */
};

/* Size the tape for (B,T) of config c and point every buffer into it (the
 * memory grows, never shrinks).  Errors: ERR_NOMEM, the tape unchanged. */
int tape_prepare(struct gptneox_tape *t, const struct gptneox_config *c, int B, int T,
                 struct err *e) CK_WUR;

/* gptneox_forward with the tape filled (gptneox.c).  The model's own arena
 * and logits are not touched; the logits go to t->logits. */
int gptneox_forward_taped(struct gptneox *m, struct gptneox_tape *t, const int *tokens, int B,
                          int T, const struct gptneox_hook *hooks, size_t nhooks,
                          struct err *e) CK_WUR;

/* Call every hook of hooks[0..nh) registered for (kind, layer) on data,
 * shaped as gptneox_hook_shape says for (B,T); `grad` is copied into
 * hook_act.grad.  Returns 0 or the first hook's error. */
int hooks_call(const struct gptneox *m, const struct gptneox_hook *hooks, size_t nh,
               enum hook_kind k, int layer, float *data, int B, int T, int grad,
               struct err *e) CK_WUR;

/* 1 if some hook of hooks[0..nh) is registered for (kind, layer). */
int hooks_want(const struct gptneox_hook *hooks, size_t nh, enum hook_kind k, int layer);

#endif
