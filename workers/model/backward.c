#include "workers/model/backward.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/model/attention.h"
#include "workers/model/kernels.h"
#include "workers/model/pool.h"
#include "workers/model/tape.h"

/* ---- parameters ---- */

static void put(struct gptneox_param *out, size_t cap, size_t *n, float *p, size_t count,
                int ndim, int d0, int d1, int decay, int layer, const char *name)
{
    if (p && out && *n < cap) {
        struct gptneox_param *q = &out[*n];
        if (layer >= 0)
            snprintf(q->name, sizeof q->name, "gpt_neox.layers.%d.%s", layer, name);
        else
            snprintf(q->name, sizeof q->name, "%s", name);
        q->data = p;
        q->n = count;
        q->ndim = ndim;
        q->shape[0] = d0;
        q->shape[1] = ndim == 2 ? d1 : 0;
        q->decay = decay;
    }
    if (p)
        (*n)++;
}

size_t gptneox_params(const struct gptneox *m, struct gptneox_param *out, size_t cap)
{
    const struct gptneox_config *c = &m->cfg;
    int V = c->vocab_size, C = c->d_model, F = c->d_mlp;
    size_t n = 0, sV = (size_t)V, sC = (size_t)C, sF = (size_t)F;
    put(out, cap, &n, m->embed, sV * sC, 2, V, C, 1, -1, "gpt_neox.embed_in.weight");
    for (int l = 0; l < c->n_layers; l++) {
        const struct gptneox_layer *L = &m->layers[l];
        put(out, cap, &n, L->ln1_w, sC, 1, C, 0, 0, l, "input_layernorm.weight");
        put(out, cap, &n, L->ln1_b, sC, 1, C, 0, 0, l, "input_layernorm.bias");
        put(out, cap, &n, L->qkv_w, 3 * sC * sC, 2, 3 * C, C, 1, l, "attention.query_key_value.weight");
        put(out, cap, &n, L->qkv_b, 3 * sC, 1, 3 * C, 0, 0, l, "attention.query_key_value.bias");
        put(out, cap, &n, L->attn_w, sC * sC, 2, C, C, 1, l, "attention.dense.weight");
        put(out, cap, &n, L->attn_b, sC, 1, C, 0, 0, l, "attention.dense.bias");
        put(out, cap, &n, L->ln2_w, sC, 1, C, 0, 0, l, "post_attention_layernorm.weight");
        put(out, cap, &n, L->ln2_b, sC, 1, C, 0, 0, l, "post_attention_layernorm.bias");
        put(out, cap, &n, L->fc_w, sF * sC, 2, F, C, 1, l, "mlp.dense_h_to_4h.weight");
        put(out, cap, &n, L->fc_b, sF, 1, F, 0, 0, l, "mlp.dense_h_to_4h.bias");
        put(out, cap, &n, L->proj_w, sC * sF, 2, C, F, 1, l, "mlp.dense_4h_to_h.weight");
        put(out, cap, &n, L->proj_b, sC, 1, C, 0, 0, l, "mlp.dense_4h_to_h.bias");
    }
    put(out, cap, &n, m->lnf_w, sC, 1, C, 0, 0, -1, "gpt_neox.final_layer_norm.weight");
    put(out, cap, &n, m->lnf_b, sC, 1, C, 0, 0, -1, "gpt_neox.final_layer_norm.bias");
    if (m->unembed != m->embed)
        put(out, cap, &n, m->unembed, sV * sC, 2, V, C, 1, -1, "embed_out.weight");
    return n;
}

int gptneox_grads_create(struct gptneox **out, const struct gptneox *m, struct err *e)
{
    int rc = gptneox_create(out, &m->cfg, e);
    if (rc < 0)
        return rc;
    memset((*out)->block, 0, (*out)->block_floats * sizeof(float));
    return 0;
}

/* ---- tape ---- */

int gptneox_tape_create(struct gptneox_tape **out, struct err *e)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for a training tape");
    return 0;
}

void gptneox_tape_free(struct gptneox_tape *t)
{
    if (!t)
        return;
    free(t->mem);
    free(t->layers);
    free(t->tokens);
    free(t);
}

const float *gptneox_tape_logits(const struct gptneox_tape *t)
{
    return t && t->has_logits ? t->logits : NULL;
}

void gptneox_next_token_targets(int *targets, const int *tokens, int B, int T)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            targets[(size_t)b * T + t] = t + 1 < T ? tokens[(size_t)b * T + t + 1] : -1;
}

/* ---- element-wise pieces ---- */

/* dx (N,C) += LayerNorm input gradient; dw (C), db (C) += weight and bias
 * gradients unless NULL; dy (N,C) output gradient, x (N,C) input,
 * mean/rstd (N), w (C). */
static void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                               const float *mean, const float *rstd, const float *w, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *g = dy + (size_t)n * C, *xi = x + (size_t)n * C;
        float *o = dx + (size_t)n * C;
        float mu = mean[n], rs = rstd[n];
        float s1 = 0.0f, s2 = 0.0f; /* mean of g*w and of g*w*xhat */
        for (int i = 0; i < C; i++) {
            float xh = (xi[i] - mu) * rs;
            float gw = g[i] * w[i];
            s1 += gw;
            s2 += gw * xh;
        }
        if (dw)
            for (int i = 0; i < C; i++) {
                float xh = (xi[i] - mu) * rs;
                dw[i] += g[i] * xh;
                db[i] += g[i];
            }
        s1 /= (float)C;
        s2 /= (float)C;
        for (int i = 0; i < C; i++) {
            float xh = (xi[i] - mu) * rs;
            o[i] += rs * (g[i] * w[i] - s1 - xh * s2);
        }
    }
}

static void add_inplace(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* db (M) += column sums of d (N,M). */
static void colsum_add(float *db, const float *d, int N, int M)
{
    if (!db)
        return;
    for (int n = 0; n < N; n++) {
        const float *r = d + (size_t)n * M;
        for (int j = 0; j < M; j++)
            db[j] += r[j];
    }
}

/* dh (n) *= GELU'(x (n)): exact erf or tanh form, vectorised in chunks,
 * blocks of them on the model's threads. */
struct gelu_bjob {
    float *dh;
    const float *x;
    int tanh_form;
};

static void gelu_backward_part(const void *ctx, size_t lo, size_t hi)
{
    const struct gelu_bjob *j = ctx;
    enum { CH = 256 };
    float a[CH], b[CH];
    for (size_t i0 = lo; i0 < hi; i0 += CH) {
        size_t m = hi - i0 < CH ? hi - i0 : CH;
        const float *xi = j->x + i0;
        float *d = j->dh + i0;
        if (!j->tanh_form) {
            for (size_t i = 0; i < m; i++) {
                a[i] = xi[i] * 0.70710678118654752f;
                b[i] = -0.5f * xi[i] * xi[i];
            }
            verf(a, a, m);
            vexp(b, b, m);
            for (size_t i = 0; i < m; i++)
                d[i] *= 0.5f * (1.0f + a[i]) + xi[i] * 0.3989422804014327f * b[i];
        } else {
            const float k = 0.7978845608028654f;
            for (size_t i = 0; i < m; i++) {
                float v = xi[i];
                a[i] = 2.0f * k * (v + 0.044715f * v * v * v);
            }
            vexp(a, a, m);
            for (size_t i = 0; i < m; i++) {
                float v = xi[i];
                float th = 1.0f - 2.0f / (a[i] + 1.0f);
                d[i] *= 0.5f * (1.0f + th) +
                        0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * 0.044715f * v * v);
            }
        }
    }
}

static void gelu_backward(float *dh, const float *x, size_t n, int tanh_form)
{
    struct gelu_bjob j = {dh, x, tanh_form};
    pool_rows(n, 1, gelu_backward_part, &j);
}

double gptneox_xent_dlogits(float *dlogits, const float *logits, const int *targets, int N,
                            int V)
{
    int count = 0;
    for (int n = 0; n < N; n++)
        count += targets[n] >= 0;
    if (count == 0)
        return NAN;
    const float scale = 1.0f / (float)count;
    double total = 0.0;
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * V;
        if (targets[n] < 0) {
            memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        if (d != logits + (size_t)n * V)
            memcpy(d, logits + (size_t)n * V, (size_t)V * sizeof(float));
        total += xent_grad_row(d, V, targets[n], scale);
    }
    return total / count;
}

/* ---- forward ---- */

static int check_targets(const struct gptneox_config *c, const int *targets, int B, int T,
                         struct err *e)
{
    if (B <= 0 || T <= 0 || (size_t)B * T > (1u << 24))
        return err_set(e, ERR_INVALID, NULL, "batch %d x %d tokens is not a valid size", B, T);
    int V = c->vocab_size, k = 0;
    for (size_t i = 0; i < (size_t)B * T; i++) {
        if (targets[i] >= V || targets[i] < -1)
            return err_set(e, ERR_INVALID, NULL,
                           "target %d at position %zu is neither -1 nor in [0, %d)", targets[i],
                           i, V);
        k += targets[i] >= 0;
    }
    if (k == 0)
        return err_set(e, ERR_INVALID, NULL, "no position has a target: the loss is undefined");
    return 0;
}

int gptneox_tape_forward(struct gptneox *m, struct gptneox_tape *tape, const int *tokens, int B,
                         int T, const struct gptneox_hook *hooks, size_t nhooks, struct err *e)
{
    if (B <= 0 || T <= 0 || (size_t)B * T > (1u << 24))
        return err_set(e, ERR_INVALID, NULL, "batch %d x %d tokens is not a valid size", B, T);
    return gptneox_forward_taped(m, tape, tokens, B, T, hooks, nhooks, e);
}

float *gptneox_tape_dlogits(struct gptneox_tape *t)
{
    return t && t->has_logits ? t->logits : NULL;
}

int gptneox_train_forward(struct gptneox *m, struct gptneox_tape *tape, const int *tokens,
                          const int *targets, int B, int T, double *loss, struct err *e)
{
    int rc;
    tape->has_logits = 0;
    if ((rc = check_targets(&m->cfg, targets, B, T, e)) < 0)
        return rc;
    if ((rc = gptneox_tape_forward(m, tape, tokens, B, T, NULL, 0, e)) < 0)
        return rc;
    float tmp;
    double total = 0.0;
    int count = 0;
    const int V = m->cfg.vocab_size;
    for (size_t n = 0; n < (size_t)B * T; n++)
        if (targets[n] >= 0) {
            crossentropy_forward(&tmp, tape->logits + n * V, &targets[n], 1, V);
            total += tmp;
            count++;
        }
    *loss = total / count;
    return 0;
}

/* ---- backward ---- */

/* What one backward pass works with. */
struct bwd {
    const struct gptneox *m;
    struct gptneox_tape *tp;
    struct gptneox *G;                /* parameter gradients, or NULL */
    const struct gptneox_hook *hooks; /* gradient hooks */
    size_t nh;
    struct err *e;
};

static int ghook(const struct bwd *w, enum hook_kind k, int layer, float *data)
{
    return hooks_call(w->m, w->hooks, w->nh, k, layer, data, w->tp->B, w->tp->T, 1, w->e);
}

static int gwant(const struct bwd *w, enum hook_kind k, int layer)
{
    return hooks_want(w->hooks, w->nh, k, layer);
}

/* The gradient at a branch output (hook_attn_out, hook_mlp_out) is the
 * residual's; a hook there gets its own copy, so what it writes changes
 * only that branch.  Returns the buffer to use, or NULL with *rc set. */
static const float *branch_grad(const struct bwd *w, enum hook_kind k, int l, int *rc)
{
    struct gptneox_tape *tp = w->tp;
    *rc = 0;
    if (!gwant(w, k, l))
        return tp->dres;
    memcpy(tp->dbranch, tp->dres, (size_t)tp->B * tp->T * w->m->cfg.d_model * sizeof(float));
    if ((*rc = ghook(w, k, l, tp->dbranch)) < 0)
        return NULL;
    return tp->dbranch;
}

/* A LayerNorm point of the backward (see ln_forward in gptneox.c). */
struct ln_bpoint {
    enum hook_kind kscale, knorm;
    int layer, heads;
};

/* dx (R,C) += d/d input of a LayerNorm from dy (R,C) = d/d output (dy is
 * used as scratch); dw, db (C) += its parameter gradients unless NULL.
 * x (R,C) its input, mean/rstd (R) its statistics; scale (R) and nrm (R,C)
 * the values after a forward hook_scale / hook_normalized (NULL when not
 * hooked).  With hooks at the point (forward or gradient) the gradient
 * goes through normalized and scale as TransformerLens computes them:
 * dn = dy w [hook_normalized], dscale = -sum dn xc / scale^2 [hook_scale],
 * dxc = dn / scale + dscale xc / (C scale0), dx = dxc - mean(dxc). */
static int ln_backward(const struct bwd *w, const struct ln_bpoint *pt, float *dx, float *dw,
                       float *db, float *dy, const float *x, const float *mean,
                       const float *rstd, const float *scale, const float *nrm,
                       const float *wt, int R, int C)
{
    const struct gptneox_tape *tp = w->tp;
    if (!scale && !gwant(w, pt->kscale, pt->layer) && !gwant(w, pt->knorm, pt->layer)) {
        layernorm_backward(dx, dw, db, dy, x, mean, rstd, wt, R, C);
        return 0;
    }
    float *ds = malloc((size_t)R * sizeof(float));
    int rc = 0, ndim, shape[4];
    if (!ds)
        return err_set(w->e, ERR_NOMEM, NULL, "out of memory for a LayerNorm gradient");
    for (int n = 0; n < R; n++) {
        float *g = dy + (size_t)n * C;
        const float *xi = x + (size_t)n * C;
        const float mu = mean[n], rs = rstd[n];
        if (dw)
            for (int i = 0; i < C; i++) {
                float nv = nrm ? nrm[(size_t)n * C + i] : (xi[i] - mu) * rs;
                dw[i] += g[i] * nv;
                db[i] += g[i];
            }
        for (int i = 0; i < C; i++)
            g[i] *= wt[i];
    }
    hooks_ln_shape(&w->m->cfg, tp->B, tp->T, pt->heads, 0, &ndim, shape);
    if ((rc = hooks_call_shaped(w->m, w->hooks, w->nh, pt->knorm, pt->layer, dy, ndim, shape, 1,
                                w->e)) < 0)
        goto out;
    for (int n = 0; n < R; n++) {
        const float *g = dy + (size_t)n * C, *xi = x + (size_t)n * C;
        const float mu = mean[n], s = scale ? scale[n] : 1.0f / rstd[n];
        float acc = 0.0f;
        for (int i = 0; i < C; i++)
            acc += g[i] * (xi[i] - mu);
        ds[n] = -acc / (s * s);
    }
    hooks_ln_shape(&w->m->cfg, tp->B, tp->T, pt->heads, 1, &ndim, shape);
    if ((rc = hooks_call_shaped(w->m, w->hooks, w->nh, pt->kscale, pt->layer, ds, ndim, shape, 1,
                                w->e)) < 0)
        goto out;
    for (int n = 0; n < R; n++) {
        float *g = dy + (size_t)n * C;
        const float *xi = x + (size_t)n * C;
        const float mu = mean[n], rs = rstd[n], s = scale ? scale[n] : 1.0f / rs;
        const float k = ds[n] * rs / (float)C;
        float m = 0.0f;
        for (int i = 0; i < C; i++) {
            g[i] = g[i] / s + k * (xi[i] - mu);
            m += g[i];
        }
        m /= (float)C;
        float *o = dx + (size_t)n * C;
        for (int i = 0; i < C; i++)
            o[i] += g[i] - m;
    }
out:
    free(ds);
    return rc;
}

/* Gradient hooks on one part of dqkv: gather, call, scatter. */
static int dqkv_hook(const struct bwd *w, enum hook_kind k, int l, int which)
{
    if (!gwant(w, k, l))
        return 0;
    const int NH = w->m->cfg.n_heads, HS = w->m->cfg.d_head, N = w->tp->B * w->tp->T;
    float *buf = malloc((size_t)N * NH * HS * sizeof(float));
    if (!buf)
        return err_set(w->e, ERR_NOMEM, NULL, "out of memory for a q/k/v gradient");
    for (size_t r = 0; r < (size_t)N * NH; r++)
        memcpy(buf + r * HS, w->tp->dqkv + r * 3 * HS + (size_t)which * HS,
               (size_t)HS * sizeof(float));
    int rc = ghook(w, k, l, buf);
    if (rc == 0)
        for (size_t r = 0; r < (size_t)N * NH; r++)
            memcpy(w->tp->dqkv + r * 3 * HS + (size_t)which * HS, buf + r * HS,
                   (size_t)HS * sizeof(float));
    free(buf);
    return rc;
}

/* The materialised attention backward (a pattern or scores hook, forward
 * or gradient): d/d pattern over every key, d/d scores, then dq, dk, dv. */
static int attention_backward_mat(const struct bwd *w, int l)
{
    struct gptneox_tape *tp = w->tp;
    const struct tape_layer *y = &tp->layers[l];
    const int B = tp->B, T = tp->T, NH = w->m->cfg.n_heads, HS = w->m->cfg.d_head;
    const int C = NH * HS, ld = 3 * C;
    const size_t TT = (size_t)T * T;
    float *dpat = NULL, *pre = NULL;
    const float *p_used = y->pattern, *p_soft = y->psoft;
    int rc = 0;
    dpat = malloc((size_t)B * NH * TT * sizeof(float));
    if (!dpat)
        return err_set(w->e, ERR_NOMEM, NULL, "cannot allocate the attention pattern gradient");
    if (!p_used) { /* the forward was fused: the pattern again */
        if (!(pre = malloc((size_t)B * NH * TT * sizeof(float)))) {
            rc = err_set(w->e, ERR_NOMEM, NULL, "cannot allocate the attention pattern");
            goto out;
        }
        attention_scores(pre, y->qkv, B, T, NH, HS);
        attention_softmax(pre, pre, B, NH, T);
        p_used = p_soft = pre;
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            attention_dpattern_head(dpat + ((size_t)b * NH + h) * TT,
                                    tp->dz + (size_t)b * T * C + (size_t)h * HS, C,
                                    y->qkv + (size_t)b * T * ld + (size_t)h * 3 * HS, T, NH, HS);
    if ((rc = ghook(w, HOOK_ATTN_PATTERN, l, dpat)) < 0)
        goto out;
    memset(tp->dqkv, 0, (size_t)B * T * ld * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t o = ((size_t)b * NH + h) * TT;
            attention_backward_pattern_head(
                tp->dqkv + (size_t)b * T * ld + (size_t)h * 3 * HS + 2 * HS, dpat + o,
                p_used + o, p_soft + o, tp->dz + (size_t)b * T * C + (size_t)h * HS, C, T, NH,
                HS);
        }
    if ((rc = ghook(w, HOOK_ATTN_SCORES, l, dpat)) < 0)
        goto out;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            attention_backward_scores_head(tp->dqkv + (size_t)b * T * ld + (size_t)h * 3 * HS,
                                           dpat + ((size_t)b * NH + h) * TT,
                                           y->qkv + (size_t)b * T * ld + (size_t)h * 3 * HS, T,
                                           NH, HS);
out:
    free(pre);
    free(dpat);
    return rc;
}

/* d (B,T,C): gradient at attention layer l's output; parameter gradients
 * accumulate into w->G; the gradient at ln1's output goes to dln1:
 * (B,T,C), or (B,T,NH,C) with `heads` (one LayerNorm per head). */
static int attention_backward_layer(const struct bwd *w, int l, const float *d, int heads,
                                    float *dln1)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct gptneox_layer *L = &w->m->layers[l];
    struct gptneox_layer *G = w->G ? &w->G->layers[l] : NULL;
    const struct tape_layer *y = &tp->layers[l];
    const int B = tp->B, T = tp->T, C = c->d_model, NH = c->n_heads, HS = c->d_head;
    const int N = B * T, ld = 3 * C;
    int rc = 0;
    if (G)
        colsum_add(G->attn_b, d, N, C);
    if (gwant(w, HOOK_ATTN_RESULT, l)) {
        /* d result[:, h] = d attn_out for every head; each goes back
         * through its own slice of W_O */
        float *dr = malloc((size_t)N * NH * C * sizeof(float));
        if (!dr)
            return err_set(w->e, ERR_NOMEM, NULL, "out of memory for the result gradient");
        for (int n = 0; n < N; n++)
            for (int h = 0; h < NH; h++)
                memcpy(dr + ((size_t)n * NH + h) * C, d + (size_t)n * C,
                       (size_t)C * sizeof(float));
        if ((rc = ghook(w, HOOK_ATTN_RESULT, l, dr)) < 0) {
            free(dr);
            return rc;
        }
        for (int h = 0; h < NH; h++) {
            if (G)
                sgemm_par(1, 0, C, HS, N, 1.0f, dr + (size_t)h * C, NH * C, y->z + (size_t)h * HS,
                          C, 1.0f, G->attn_w + (size_t)h * HS, C);
            sgemm_par(0, 0, N, HS, C, 1.0f, dr + (size_t)h * C, NH * C, L->attn_w + (size_t)h * HS,
                      C, 0.0f, tp->dz + (size_t)h * HS, C);
        }
        free(dr);
    } else {
        if (G)
            sgemm_par(1, 0, C, C, N, 1.0f, d, C, y->z, C, 1.0f, G->attn_w, C);
        sgemm_par(0, 0, N, C, C, 1.0f, d, C, L->attn_w, C, 0.0f, tp->dz, C);
    }
    if ((rc = ghook(w, HOOK_ATTN_Z, l, tp->dz)) < 0)
        return rc;
    if ((y->plan & LP_MAT) || gwant(w, HOOK_ATTN_PATTERN, l) || gwant(w, HOOK_ATTN_SCORES, l)) {
        if ((rc = attention_backward_mat(w, l)) < 0)
            return rc;
    } else {
        attention_backward(tp->dqkv, tp->dz, y->zraw, y->lse, y->qkv, tp->att, B, T, NH, HS);
    }
    if ((rc = dqkv_hook(w, HOOK_ROT_Q, l, 0)) < 0 || (rc = dqkv_hook(w, HOOK_ROT_K, l, 1)) < 0)
        return rc;
    rotary_backward(tp->dqkv, tp->cosv, tp->sinv, B, T, NH, HS, c->rotary_ndims);
    if ((rc = dqkv_hook(w, HOOK_ATTN_Q, l, 0)) < 0 || (rc = dqkv_hook(w, HOOK_ATTN_K, l, 1)) < 0 ||
        (rc = dqkv_hook(w, HOOK_ATTN_V, l, 2)) < 0)
        return rc;
    if (!heads) {
        if (G) {
            sgemm_par(1, 0, 3 * C, C, N, 1.0f, tp->dqkv, ld, y->ln1, C, 1.0f, G->qkv_w, C);
            colsum_add(G->qkv_b, tp->dqkv, N, 3 * C);
        }
        sgemm_par(0, 0, N, C, 3 * C, 1.0f, tp->dqkv, ld, L->qkv_w, C, 0.0f, dln1, C);
        return 0;
    }
    /* per head: head h's q, k, v came from its own ln1 row */
    const int lnh = (y->plan & LP_ATTN_IN) != 0; /* ln1 was per head in the forward */
    for (int h = 0; h < NH; h++) {
        const float *dq = tp->dqkv + (size_t)h * 3 * HS;
        const float *wq = L->qkv_w + (size_t)h * 3 * HS * C;
        if (G) {
            sgemm_par(1, 0, 3 * HS, C, N, 1.0f, dq, ld, lnh ? y->ln1 + (size_t)h * C : y->ln1,
                      lnh ? NH * C : C, 1.0f, G->qkv_w + (size_t)h * 3 * HS * C, C);
            if (G->qkv_b)
                for (int n = 0; n < N; n++)
                    for (int j = 0; j < 3 * HS; j++)
                        G->qkv_b[(size_t)h * 3 * HS + j] += dq[(size_t)n * ld + j];
        }
        sgemm_par(0, 0, N, C, 3 * HS, 1.0f, dq, ld, wq, C, 0.0f, dln1 + (size_t)h * C, NH * C);
    }
    return 0;
}

/* The LayerNorm before the attention: dres += its input gradient from
 * dln1 (the gradient at its output), through hook_attn_in when `heads`. */
static int ln1_backward(const struct bwd *w, int l, int heads, float *dln1)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct gptneox_layer *L = &w->m->layers[l];
    struct gptneox_layer *G = w->G ? &w->G->layers[l] : NULL;
    const struct tape_layer *y = &tp->layers[l];
    const int N = tp->B * tp->T, C = c->d_model, NH = c->n_heads;
    const struct ln_bpoint pt = {HOOK_LN1_SCALE, HOOK_LN1_NORMALIZED, l, heads};
    if (!heads)
        return ln_backward(w, &pt, tp->dres, G ? G->ln1_w : NULL, G ? G->ln1_b : NULL, dln1,
                           y->x_in, y->mean1, y->rstd1, y->scale1, y->ln1n, L->ln1_w, N, C);
    /* one row per (position, head): the forward's own, or the shared
     * LayerNorm's repeated when only the gradient hook asks for heads */
    const size_t R = (size_t)N * NH;
    float *dain = calloc(R * C, sizeof(float)), *rep = NULL, *mrep = NULL;
    const float *x = y->ain, *mean = y->mean1, *rstd = y->rstd1;
    int rc = 0;
    if (!dain)
        return err_set(w->e, ERR_NOMEM, NULL, "out of memory for the attention input gradient");
    if (!(y->plan & LP_ATTN_IN)) {
        rep = malloc(R * C * sizeof(float));
        mrep = malloc(2 * R * sizeof(float));
        if (!rep || !mrep) {
            rc = err_set(w->e, ERR_NOMEM, NULL, "out of memory for the attention input gradient");
            goto out;
        }
        for (size_t r = 0; r < R; r++) {
            memcpy(rep + r * C, y->x_in + (r / NH) * C, (size_t)C * sizeof(float));
            mrep[r] = y->mean1[r / NH];
            mrep[R + r] = y->rstd1[r / NH];
        }
        x = rep;
        mean = mrep;
        rstd = mrep + R;
    }
    if ((rc = ln_backward(w, &pt, dain, G ? G->ln1_w : NULL, G ? G->ln1_b : NULL, dln1, x,
                          mean, rstd, (y->plan & LP_ATTN_IN) ? y->scale1 : NULL,
                          (y->plan & LP_ATTN_IN) ? y->ln1n : NULL, L->ln1_w, (int)R, C)) < 0)
        goto out;
    if ((rc = ghook(w, HOOK_ATTN_IN, l, dain)) < 0)
        goto out;
    for (size_t r = 0; r < R; r++)
        add_inplace(tp->dres + (r / NH) * C, dain + r * C, (size_t)C);
out:
    free(mrep);
    free(rep);
    free(dain);
    return rc;
}

/* The LayerNorm before the MLP: dres += its input gradient from tp->dln2
 * (through hook_mlp_in when hooked); x its input in the forward. */
static int ln2_backward(const struct bwd *w, int l, const float *x)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct gptneox_layer *L = &w->m->layers[l];
    struct gptneox_layer *G = w->G ? &w->G->layers[l] : NULL;
    const struct tape_layer *y = &tp->layers[l];
    const int N = tp->B * tp->T, C = c->d_model;
    const size_t NC = (size_t)N * C;
    const struct ln_bpoint pt = {HOOK_LN2_SCALE, HOOK_LN2_NORMALIZED, l, 0};
    if (y->mlp_in)
        x = y->mlp_in;
    if (!gwant(w, HOOK_MLP_IN, l))
        return ln_backward(w, &pt, tp->dres, G ? G->ln2_w : NULL, G ? G->ln2_b : NULL, tp->dln2,
                           x, y->mean2, y->rstd2, y->scale2, y->ln2n, L->ln2_w, N, C);
    memset(tp->dbranch, 0, NC * sizeof(float));
    int rc = ln_backward(w, &pt, tp->dbranch, G ? G->ln2_w : NULL, G ? G->ln2_b : NULL,
                         tp->dln2, x, y->mean2, y->rstd2, y->scale2, y->ln2n, L->ln2_w, N, C);
    if (rc < 0 || (rc = ghook(w, HOOK_MLP_IN, l, tp->dbranch)) < 0)
        return rc;
    add_inplace(tp->dres, tp->dbranch, NC);
    return 0;
}

/* d (B,T,C): gradient at MLP layer l's output; tp->dln2 (B,T,C) receives
 * the gradient at ln2's output. */
static int mlp_backward(const struct bwd *w, int l, const float *d)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct gptneox_layer *L = &w->m->layers[l];
    struct gptneox_layer *G = w->G ? &w->G->layers[l] : NULL;
    const struct tape_layer *y = &tp->layers[l];
    const int N = tp->B * tp->T, C = c->d_model, F = c->d_mlp;
    int rc;
    if (G) {
        const float *h = y->h;
        if (!h) { /* not kept: the GELU again, as the forward computed it */
            memcpy(tp->hre, y->hpre, (size_t)N * F * sizeof(float));
            if (c->act == ACT_GELU)
                gelu_forward(tp->hre, (size_t)N * F);
            else
                gelu_tanh_forward(tp->hre, (size_t)N * F);
            h = tp->hre;
        }
        sgemm_par(1, 0, C, F, N, 1.0f, d, C, h, F, 1.0f, G->proj_w, F);
        colsum_add(G->proj_b, d, N, C);
    }
    sgemm_par(0, 0, N, F, C, 1.0f, d, C, L->proj_w, F, 0.0f, tp->dh, F);
    if ((rc = ghook(w, HOOK_MLP_POST, l, tp->dh)) < 0)
        return rc;
    gelu_backward(tp->dh, y->hpre, (size_t)N * F, c->act != ACT_GELU);
    if ((rc = ghook(w, HOOK_MLP_PRE, l, tp->dh)) < 0)
        return rc;
    if (G) {
        sgemm_par(1, 0, F, C, N, 1.0f, tp->dh, F, y->ln2, C, 1.0f, G->fc_w, C);
        colsum_add(G->fc_b, tp->dh, N, F);
    }
    sgemm_par(0, 0, N, C, F, 1.0f, tp->dh, F, L->fc_w, C, 0.0f, tp->dln2, C);
    return 0;
}

/* Layer l backward: tp->dres holds d/d hook_resid_post on entry and
 * d/d hook_resid_pre on return. */
static int layer_backward(const struct bwd *w, int l)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct tape_layer *y = &tp->layers[l];
    const int heads = (y->plan & LP_ATTN_IN) || gwant(w, HOOK_ATTN_IN, l);
    float *dln1 = tp->dln1, *own = NULL;
    const float *d;
    int rc;
    if (heads && !tp->dln1_heads) { /* the forward kept room for one row per position */
        own = malloc((size_t)tp->B * tp->T * c->n_heads * c->d_model * sizeof(float));
        if (!own)
            return err_set(w->e, ERR_NOMEM, NULL, "out of memory for the ln1 gradient");
        dln1 = own;
    }
    if ((rc = ghook(w, HOOK_RESID_POST, l, tp->dres)) < 0)
        goto out;
    if (!(d = branch_grad(w, HOOK_MLP_OUT, l, &rc)))
        goto out;
    if ((rc = mlp_backward(w, l, d)) < 0)
        goto out;
    if (c->parallel_residual) {
        /* x_out = x_in + attn(ln1(x_in)) + mlp(ln2(x_in)) */
        if (!(d = branch_grad(w, HOOK_ATTN_OUT, l, &rc)))
            goto out;
        if ((rc = attention_backward_layer(w, l, d, heads, dln1)) < 0)
            goto out;
        if ((rc = ln2_backward(w, l, y->x_in)) < 0)
            goto out;
    } else {
        /* x_mid = x_in + attn(ln1(x_in)); x_out = x_mid + mlp(ln2(x_mid)) */
        if ((rc = ln2_backward(w, l, y->x_mid)) < 0)
            goto out;
        if ((rc = ghook(w, HOOK_RESID_MID, l, tp->dres)) < 0)
            goto out;
        if (!(d = branch_grad(w, HOOK_ATTN_OUT, l, &rc)))
            goto out;
        if ((rc = attention_backward_layer(w, l, d, heads, dln1)) < 0)
            goto out;
    }
    if ((rc = ln1_backward(w, l, heads, dln1)) < 0)
        goto out;
    rc = ghook(w, HOOK_RESID_PRE, l, tp->dres);
out:
    free(own);
    return rc;
}

static int same_config(const struct gptneox_config *a, const struct gptneox_config *b)
{
    return a->vocab_size == b->vocab_size && a->d_model == b->d_model &&
           a->n_layers == b->n_layers && a->n_heads == b->n_heads && a->d_mlp == b->d_mlp &&
           a->tie_word_embeddings == b->tie_word_embeddings &&
           a->attention_bias == b->attention_bias;
}

int gptneox_backward(struct gptneox *m, struct gptneox_tape *tp, const float *dlogits,
                     const struct gptneox_hook *hooks, size_t nhooks, struct gptneox *grads,
                     struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    if (grads && (!same_config(c, &grads->cfg) || !grads->writable))
        return err_set(e, ERR_MISMATCH, NULL,
                       "the gradient model was not made by gptneox_grads_create for this model");
    if (!tp->layers || tp->nlayers != c->n_layers || tp->B <= 0 || !tp->forward_done)
        return err_set(e, ERR_INVALID, NULL, "the tape holds no forward of this model");
    if (!dlogits)
        return err_set(e, ERR_INVALID, NULL, "no logits gradient for the backward");
    const int *tokens = tp->tokens;
    const int B = tp->B, T = tp->T, N = B * T, C = c->d_model, V = c->vocab_size;
    const size_t NC = (size_t)N * C;
    struct bwd w = {m, tp, grads, hooks, nhooks, e};
    int rc;
    if (grads)
        memset(grads->block, 0, grads->block_floats * sizeof(float));
    /* unembedding and final LayerNorm */
    if (grads)
        sgemm_par(1, 0, V, C, N, 1.0f, dlogits, V, tp->lnf, C, 1.0f, grads->unembed, C);
    sgemm_par(0, 0, N, C, V, 1.0f, dlogits, V, m->unembed, C, 0.0f, tp->dln1, C);
    memset(tp->dres, 0, NC * sizeof(float));
    const struct ln_bpoint pf = {HOOK_LN_FINAL_SCALE, HOOK_LN_FINAL, -1, 0};
    if ((rc = ln_backward(&w, &pf, tp->dres, grads ? grads->lnf_w : NULL,
                          grads ? grads->lnf_b : NULL, tp->dln1, tp->x_fin, tp->meanf, tp->rstdf,
                          tp->scalef, tp->lnfn, m->lnf_w, N, C)) < 0)
        return rc;
    for (int l = c->n_layers - 1; l >= 0; l--)
        if ((rc = layer_backward(&w, l)) < 0)
            return rc;
    if ((rc = ghook(&w, HOOK_EMBED, -1, tp->dres)) < 0)
        return rc;
    if (grads)
        for (int n = 0; n < N; n++)
            add_inplace(grads->embed + (size_t)tokens[n] * C, tp->dres + (size_t)n * C,
                        (size_t)C);
    return 0;
}

int gptneox_forward_backward(struct gptneox *m, struct gptneox *grads, struct gptneox_tape *tp,
                             const int *tokens, const int *targets, int B, int T, double *loss,
                             struct err *e)
{
    const struct gptneox_config *c = &m->cfg;
    if (!same_config(c, &grads->cfg) || !grads->writable)
        return err_set(e, ERR_MISMATCH, NULL,
                       "the gradient model was not made by gptneox_grads_create for this model");
    int rc;
    if ((rc = check_targets(c, targets, B, T, e)) < 0)
        return rc;
    if ((rc = gptneox_tape_forward(m, tp, tokens, B, T, NULL, 0, e)) < 0)
        return rc;
    tp->has_logits = 0; /* the logits become their gradient */
    *loss = gptneox_xent_dlogits(tp->logits, tp->logits, targets, B * T, c->vocab_size);
    return gptneox_backward(m, tp, tp->logits, NULL, 0, grads, e);
}

double gptneox_train_flops(const struct gptneox_config *c, int B, int T)
{
    /* the backward does two products of each forward size (input and
     * weight gradients; attention: dP and dv, dq and dk) */
    return 3.0 * gptneox_forward_flops(c, B, T);
}
