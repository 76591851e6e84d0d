/*
 * tape.h - private to the model (gptneox.c, backward.c): the activations a
 * taped forward keeps for the backward pass, and the shared hook callers.
 *
 * gptneox.c owns the forward and the tape's layout: with a tape it writes
 * every activation the backward reads into the tape's per-layer buffers
 * instead of the model's reusable arena, after the hooks at that point
 * have run (so the backward sees what the rest of the forward used).  What
 * a layer keeps depends on which of its hook points are hooked (its plan):
 * the fused attention keeps each row's log-sum-exp, the materialised one
 * (scores or pattern hooked) the pattern.  backward.c creates and frees
 * tapes and runs the backward pass.  Nothing outside workers/model/
 * includes this file; the public contract is backward.h.
 */
#ifndef CKPTD_TAPE_H
#define CKPTD_TAPE_H

#include <stddef.h>

#include "common/err.h"
#include "workers/model/gptneox.h"

/* A layer's plan: which of its hook points are hooked. */
enum {
    LP_ATTN_IN = 1 << 0,  /* hook_attn_in: ln1 and qkv per head */
    LP_LN1 = 1 << 1,      /* ln1.hook_scale or ln1.hook_normalized */
    LP_QKV = 1 << 2,      /* attn.hook_q/k/v or hook_rot_q/k: a gather buffer */
    LP_MAT = 1 << 3,      /* scores or pattern: the materialised attention */
    LP_PAT = 1 << 4,      /* attn.hook_pattern itself */
    LP_Z = 1 << 5,        /* attn.hook_z */
    LP_RESULT = 1 << 6,   /* attn.hook_result: per-head output */
    LP_MLP_IN = 1 << 7,   /* hook_mlp_in */
    LP_LN2 = 1 << 8,      /* ln2 hooks */
    LP_POST = 1 << 9,     /* mlp.hook_post */
};

/* The plan of layer l for these hooks (forward or gradient hooks). */
unsigned gptneox_layer_plan(const struct gptneox_hook *hooks, size_t nh, int l);

/* One layer's saved activations, each after the hooks at its point ran.
 * N = B*T; R = N, or N*NH when hook_attn_in is hooked (one row per head).
 * Buffers a plan does not need are NULL (psoft and zraw then alias). */
struct tape_layer {
    unsigned plan;
    float *x_in;          /* (B,T,C) residual entering the layer, after hook_resid_pre */
    float *ain;           /* (B,T,NH,C) hook_attn_in; NULL unless hooked */
    float *ln1;           /* (R,C) input LayerNorm output (weight and bias applied) */
    float *mean1, *rstd1; /* (R) its statistics, before hook_scale */
    float *scale1;        /* (R) ln1.hook_scale after the hook; NULL unless LN1 hooked */
    float *ln1n;          /* (R,C) ln1.hook_normalized after the hook; NULL likewise */
    float *qkv;           /* (B,T,NH,3,HS) after rotary and the q/k/v hooks */
    float *lse;           /* (B,NH,T) fused attention: each row's log-sum-exp */
    float *pattern;       /* (B,NH,T,T) materialised: the pattern z read (after hook_pattern) */
    float *psoft;         /* (B,NH,T,T) the softmax's output before hook_pattern (== pattern
                           * unless hooked) */
    float *z;             /* (B,T,NH,HS) after hook_z */
    float *zraw;          /* (B,T,NH,HS) fused attention's z before hook_z (== z unless
                           * hooked) */
    float *x_mid;         /* (B,T,C) sequential residual: after hook_resid_mid; else NULL */
    float *mlp_in;        /* (B,T,C) hook_mlp_in after the hook; NULL unless hooked */
    float *ln2;           /* (B,T,C) MLP LayerNorm output */
    float *mean2, *rstd2; /* (B,T) */
    float *scale2, *ln2n; /* as scale1, ln1n for ln2 */
    float *hpre;          /* (B,T,F) MLP pre-activation, after mlp.hook_pre */
    float *h;             /* (B,T,F) GELU output after mlp.hook_post; NULL unless hooked
                           * (then the backward recomputes it) */
};

struct gptneox_tape {
    size_t cap;           /* floats allocated at mem */
    float *mem;
    int B, T, nlayers;    /* of the last taped forward */
    int has_logits;       /* logits hold the last forward's logits */
    int forward_done;     /* a taped forward ran to the logits */
    int lnf_hooked;       /* the ln_final hooks were hooked */
    int *tokens;          /* (B,T) its tokens */
    size_t tokens_cap;
    struct tape_layer *layers; /* (nlayers) */
    float *x_fin;         /* (B,T,C) residual entering the final LayerNorm */
    float *lnf;           /* (B,T,C) final LayerNorm output */
    float *meanf, *rstdf; /* (B,T) */
    float *scalef, *lnfn; /* (B,T), (B,T,C): ln_final hooks' values; NULL unless hooked */
    float *logits;        /* (B,T,V); the backward may overwrite it with d/dlogits */
    /* forward scratch */
    float *x;             /* (B,T,C) the running residual stream */
    float *attn_out;      /* (B,T,C) */
    float *mlp_out;       /* (B,T,C) */
    float *hbuf;          /* (B,T,NH,C) or (B,T,NH,HS): hook re-layouts */
    float *cosv, *sinv;   /* (T,RD/2) rotary tables */
    float *att;           /* (threads, attention_scratch_floats) */
    /* backward scratch */
    float *dres;          /* (B,T,C) gradient of the residual stream */
    float *dbranch;       /* (B,T,C) gradient at a branch output (attn_out, mlp_out) */
    float *dln1;          /* (R,C) gradient at ln1's output */
    int dln1_heads;       /* dln1 has room for R = B*T*NH rows */
    float *dln2;          /* (B,T,C) gradient at ln2's output */
    float *dz;            /* (B,T,NH,HS) */
    float *dqkv;          /* (B,T,NH,3,HS) */
    float *dh;            /* (B,T,F) */
    float *hre;           /* (B,T,F) GELU output recomputed (or the forward's scratch) */
    float *dP;            /* (T,T) one (batch, head)'s pattern gradient */
};

/* gptneox_forward with the tape filled (gptneox.c).  The model's own arena
 * and logits are not touched; the logits go to t->logits. */
int gptneox_forward_taped(struct gptneox *m, struct gptneox_tape *t, const int *tokens, int B,
                          int T, const struct gptneox_hook *hooks, size_t nhooks,
                          struct err *e) CK_WUR;

/* 1 if some hook of hooks[0..nh) is registered for (kind, layer). */
int hooks_want(const struct gptneox_hook *hooks, size_t nh, enum hook_kind k, int layer);

/* Call every hook of hooks[0..nh) registered for (kind, layer) on data,
 * shaped as gptneox_hook_shape says for (B,T) (hooks_call) or as given
 * (hooks_call_shaped); `grad` goes to hook_act.grad.  Returns 0 or the
 * first hook's error. */
int hooks_call(const struct gptneox *m, const struct gptneox_hook *hooks, size_t nh,
               enum hook_kind k, int layer, float *data, int B, int T, int grad,
               struct err *e) CK_WUR;
int hooks_call_shaped(const struct gptneox *m, const struct gptneox_hook *hooks, size_t nh,
                      enum hook_kind k, int layer, float *data, int ndim, const int *shape,
                      int grad, struct err *e) CK_WUR;

/* Shape of a LayerNorm hook (scale: [..,1]; else [..,C]) with or without
 * the head axis of hook_attn_in. */
void hooks_ln_shape(const struct gptneox_config *c, int B, int T, int heads, int scale,
                    int *ndim, int shape[4]);

#endif
