#include "workers/model/backward.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/model/kernels.h"
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

#define TAPE_MAX_BUFS 32

struct bufs {
    float **ptr[TAPE_MAX_BUFS];
    size_t size[TAPE_MAX_BUFS];
    int n;
};

static void want(struct bufs *b, float **p, size_t size)
{
    b->ptr[b->n] = p;
    b->size[b->n] = size;
    b->n++;
}

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

int tape_prepare(struct gptneox_tape *t, const struct gptneox_config *c, int B, int T,
                 struct err *e)
{
    const size_t N = (size_t)B * T, C = (size_t)c->d_model, F = (size_t)c->d_mlp;
    const size_t V = (size_t)c->vocab_size, NH = (size_t)c->n_heads;
    const size_t half = (size_t)c->rotary_ndims / 2, L = (size_t)c->n_layers;
    if (t->nlayers != c->n_layers) {
        struct tape_layer *nl = calloc(L, sizeof *nl);
        if (!nl)
            return err_set(e, ERR_NOMEM, NULL, "out of memory for a training tape");
        free(t->layers);
        t->layers = nl;
        t->nlayers = c->n_layers;
    }
    const size_t per_layer = round16(N * C) * 4 + round16(N) * 4 + round16(3 * N * C) +
                             round16((size_t)B * NH * T * T) +
                             (c->parallel_residual ? 0 : round16(N * C)) + round16(N * F) * 2;
    struct bufs g = {.n = 0};
    want(&g, &t->x_fin, N * C);
    want(&g, &t->lnf, N * C);
    want(&g, &t->meanf, N);
    want(&g, &t->rstdf, N);
    want(&g, &t->logits, N * V);
    want(&g, &t->x, N * C);
    want(&g, &t->attn_out, N * C);
    want(&g, &t->mlp_out, N * C);
    want(&g, &t->cosv, (size_t)T * half);
    want(&g, &t->sinv, (size_t)T * half);
    want(&g, &t->dres, N * C);
    want(&g, &t->dbranch, N * C);
    want(&g, &t->dln1, N * C);
    want(&g, &t->dln2, N * C);
    want(&g, &t->dz, N * C);
    want(&g, &t->dqkv, 3 * N * C);
    want(&g, &t->dh, N * F);
    want(&g, &t->dP, (size_t)T * T);
    size_t total = L * per_layer;
    for (int i = 0; i < g.n; i++)
        total += round16(g.size[i]);
    if (total > t->cap) {
        void *p = NULL;
        free(t->mem);
        t->mem = NULL;
        t->cap = 0;
        if (posix_memalign(&p, 64, total * sizeof(float)) != 0)
            return err_set(e, ERR_NOMEM, NULL,
                           "cannot allocate %zu MiB of training activations for B=%d T=%d",
                           total * sizeof(float) >> 20, B, T);
        t->mem = p;
        t->cap = total;
    }
    size_t off = 0;
    for (int i = 0; i < g.n; i++) {
        *g.ptr[i] = t->mem + off;
        off += round16(g.size[i]);
    }
    for (size_t l = 0; l < L; l++) {
        struct tape_layer *y = &t->layers[l];
        float **pc[4] = {&y->x_in, &y->ln1, &y->z, &y->ln2};
        for (int i = 0; i < 4; i++) {
            *pc[i] = t->mem + off;
            off += round16(N * C);
        }
        float **pn[4] = {&y->mean1, &y->rstd1, &y->mean2, &y->rstd2};
        for (int i = 0; i < 4; i++) {
            *pn[i] = t->mem + off;
            off += round16(N);
        }
        y->qkv = t->mem + off;
        off += round16(3 * N * C);
        y->pattern = t->mem + off;
        off += round16((size_t)B * NH * T * T);
        y->x_mid = NULL;
        if (!c->parallel_residual) {
            y->x_mid = t->mem + off;
            off += round16(N * C);
        }
        y->hpre = t->mem + off;
        off += round16(N * F);
        y->h = t->mem + off;
        off += round16(N * F);
    }
    if ((size_t)B * T > t->tokens_cap) {
        int *tk = malloc((size_t)B * T * sizeof *tk);
        if (!tk)
            return err_set(e, ERR_NOMEM, NULL, "out of memory for a training tape");
        free(t->tokens);
        t->tokens = tk;
        t->tokens_cap = (size_t)B * T;
    }
    t->B = B;
    t->T = T;
    rotary_tables(t->cosv, t->sinv, T, c->rotary_ndims, c->rotary_base);
    return 0;
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

/* dh (n) *= GELU'(x (n)): exact erf or tanh form, vectorised in chunks. */
static void gelu_backward(float *dh, const float *x, size_t n, int tanh_form)
{
    enum { CH = 256 };
    float a[CH], b[CH];
    for (size_t i0 = 0; i0 < n; i0 += CH) {
        size_t m = n - i0 < CH ? n - i0 : CH;
        const float *xi = x + i0;
        float *d = dh + i0;
        if (!tanh_form) {
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
    struct gptneox *G;               /* parameter gradients, or NULL */
    const struct gptneox_hook *hooks; /* gradient hooks */
    size_t nh;
    struct err *e;
};

static int ghook(const struct bwd *w, enum hook_kind k, int layer, float *data)
{
    return hooks_call(w->m, w->hooks, w->nh, k, layer, data, w->tp->B, w->tp->T, 1, w->e);
}

/* The gradient at a branch output (hook_attn_out, hook_mlp_out) is the
 * residual's; a hook there gets its own copy, so what it writes changes
 * only that branch.  Returns the buffer to use, or NULL with *rc set. */
static const float *branch_grad(const struct bwd *w, enum hook_kind k, int l, int *rc)
{
    struct gptneox_tape *tp = w->tp;
    *rc = 0;
    if (!hooks_want(w->hooks, w->nh, k, l))
        return tp->dres;
    memcpy(tp->dbranch, tp->dres, (size_t)tp->B * tp->T * w->m->cfg.d_model * sizeof(float));
    if ((*rc = ghook(w, k, l, tp->dbranch)) < 0)
        return NULL;
    return tp->dbranch;
}

/* d (B,T,C): gradient at attention layer l's output; parameter gradients
 * accumulate into w->G, tp->dln1 (B,T,C) receives the gradient at ln1. */
static int attention_backward(const struct bwd *w, int l, const float *d)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct gptneox_layer *L = &w->m->layers[l];
    struct gptneox_layer *G = w->G ? &w->G->layers[l] : NULL;
    const struct tape_layer *y = &tp->layers[l];
    const int B = tp->B, T = tp->T, C = c->d_model, NH = c->n_heads, HS = c->d_head;
    const int N = B * T, ld = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    float *dpat = NULL; /* (B,NH,T,T) for a hook_pattern gradient hook */
    int rc = 0;
    if (G) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, C, N, 1.0f, d, C, y->z, C, 1.0f,
                    G->attn_w, C);
        colsum_add(G->attn_b, d, N, C);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, C, 1.0f, d, C, L->attn_w, C,
                0.0f, tp->dz, C);
    if ((rc = ghook(w, HOOK_ATTN_Z, l, tp->dz)) < 0)
        return rc;
    if (hooks_want(w->hooks, w->nh, HOOK_ATTN_PATTERN, l)) {
        /* d pattern = dz v^T over every key: a pattern entry above the
         * diagonal would also reach z, so its gradient is not zero */
        dpat = malloc((size_t)B * NH * T * T * sizeof(float));
        if (!dpat)
            return err_set(w->e, ERR_NOMEM, NULL, "cannot allocate the attention pattern gradient");
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f,
                            tp->dz + (size_t)b * T * C + (size_t)h * HS, C,
                            y->qkv + (size_t)b * T * ld + (size_t)h * 3 * HS + 2 * HS, ld, 0.0f,
                            dpat + ((size_t)b * NH + h) * T * T, T);
        if ((rc = ghook(w, HOOK_ATTN_PATTERN, l, dpat)) < 0)
            goto out;
    }
    memset(tp->dqkv, 0, (size_t)N * ld * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = y->qkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
            const float *k = q + HS, *v = q + 2 * HS;
            float *dq = tp->dqkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
            float *dk = dq + HS, *dv = dq + 2 * HS;
            const float *P = y->pattern + ((size_t)b * NH + h) * T * T;
            const float *dzh = tp->dz + (size_t)b * T * C + (size_t)h * HS;
            float *dP = dpat ? dpat + ((size_t)b * NH + h) * T * T : tp->dP;
            if (y->pattern_all) /* z read every key of a hooked pattern */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, P, T, dzh,
                            C, 0.0f, dv, ld);
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, R = r1 - r0;
                /* dP = dz v^T, dv += P^T dz, on the keys rows r0..r1 see */
                if (!dpat)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, r1, HS, 1.0f,
                                dzh + (size_t)r0 * C, C, v, ld, 0.0f, dP + (size_t)r0 * T, T);
                if (!y->pattern_all)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, HS, R, 1.0f,
                                P + (size_t)r0 * T, T, dzh + (size_t)r0 * C, C, 1.0f, dv, ld);
                /* softmax backward, with the score scale folded in */
                for (int i = r0; i < r1; i++) {
                    const float *pr = P + (size_t)i * T;
                    float *g = dP + (size_t)i * T;
                    float s = 0.0f;
                    for (int j = 0; j <= i; j++)
                        s += pr[j] * g[j];
                    for (int j = 0; j <= i; j++)
                        g[j] = scale * pr[j] * (g[j] - s);
                    for (int j = i + 1; j < r1; j++)
                        g[j] = 0.0f;
                }
                /* dq = dS k, dk += dS^T q */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, HS, r1, 1.0f,
                            dP + (size_t)r0 * T, T, k, ld, 0.0f, dq + (size_t)r0 * ld, ld);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, HS, R, 1.0f,
                            dP + (size_t)r0 * T, T, q + (size_t)r0 * ld, ld, 1.0f, dk, ld);
            }
        }
    rotary_backward(tp->dqkv, tp->cosv, tp->sinv, B, T, NH, HS, c->rotary_ndims);
    if (G) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, 3 * C, C, N, 1.0f, tp->dqkv, ld,
                    y->ln1, C, 1.0f, G->qkv_w, C);
        colsum_add(G->qkv_b, tp->dqkv, N, 3 * C);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, 3 * C, 1.0f, tp->dqkv, ld,
                L->qkv_w, C, 0.0f, tp->dln1, C);
out:
    free(dpat);
    return rc;
}

/* d (B,T,C): gradient at MLP layer l's output; tp->dln2 (B,T,C) receives
 * the gradient at ln2. */
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
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, F, N, 1.0f, d, C, y->h, F, 1.0f,
                    G->proj_w, F);
        colsum_add(G->proj_b, d, N, C);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, F, C, 1.0f, d, C, L->proj_w, F,
                0.0f, tp->dh, F);
    if ((rc = ghook(w, HOOK_MLP_POST, l, tp->dh)) < 0)
        return rc;
    gelu_backward(tp->dh, y->hpre, (size_t)N * F, c->act != ACT_GELU);
    if (G) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, F, C, N, 1.0f, tp->dh, F, y->ln2, C,
                    1.0f, G->fc_w, C);
        colsum_add(G->fc_b, tp->dh, N, F);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, F, 1.0f, tp->dh, F, L->fc_w, C,
                0.0f, tp->dln2, C);
    return 0;
}

/* Layer l backward: tp->dres holds d/d hook_resid_post on entry and
 * d/d hook_resid_pre on return. */
static int layer_backward(const struct bwd *w, int l)
{
    struct gptneox_tape *tp = w->tp;
    const struct gptneox_config *c = &w->m->cfg;
    const struct gptneox_layer *L = &w->m->layers[l];
    struct gptneox_layer *G = w->G ? &w->G->layers[l] : NULL;
    const struct tape_layer *y = &tp->layers[l];
    const int N = tp->B * tp->T, C = c->d_model;
    const float *d;
    int rc;
    if ((rc = ghook(w, HOOK_RESID_POST, l, tp->dres)) < 0)
        return rc;
    if (!(d = branch_grad(w, HOOK_MLP_OUT, l, &rc)))
        return rc;
    if ((rc = mlp_backward(w, l, d)) < 0)
        return rc;
    if (c->parallel_residual) {
        /* x_out = x_in + attn(ln1(x_in)) + mlp(ln2(x_in)) */
        if (!(d = branch_grad(w, HOOK_ATTN_OUT, l, &rc)))
            return rc;
        if ((rc = attention_backward(w, l, d)) < 0)
            return rc;
        layernorm_backward(tp->dres, G ? G->ln2_w : NULL, G ? G->ln2_b : NULL, tp->dln2,
                           y->x_in, y->mean2, y->rstd2, L->ln2_w, N, C);
    } else {
        /* x_mid = x_in + attn(ln1(x_in)); x_out = x_mid + mlp(ln2(x_mid)) */
        layernorm_backward(tp->dres, G ? G->ln2_w : NULL, G ? G->ln2_b : NULL, tp->dln2,
                           y->x_mid, y->mean2, y->rstd2, L->ln2_w, N, C);
        if ((rc = ghook(w, HOOK_RESID_MID, l, tp->dres)) < 0)
            return rc;
        if (!(d = branch_grad(w, HOOK_ATTN_OUT, l, &rc)))
            return rc;
        if ((rc = attention_backward(w, l, d)) < 0)
            return rc;
    }
    layernorm_backward(tp->dres, G ? G->ln1_w : NULL, G ? G->ln1_b : NULL, tp->dln1, y->x_in,
                       y->mean1, y->rstd1, L->ln1_w, N, C);
    return ghook(w, HOOK_RESID_PRE, l, tp->dres);
}

static int same_config(const struct gptneox_config *a, const struct gptneox_config *b)
{
    return a->vocab_size == b->vocab_size && a->d_model == b->d_model &&
           a->n_layers == b->n_layers && a->n_heads == b->n_heads && a->d_mlp == b->d_mlp &&
           a->tie_word_embeddings == b->tie_word_embeddings &&
           a->attention_bias == b->attention_bias;
}

int gptneox_backward(struct gptneox *m, struct gptneox_tape *tp, const float *dlogits, const struct gptneox_hook *hooks, size_t nhooks,
                     struct gptneox *grads, struct err *e)
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
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, N, 1.0f, dlogits, V, tp->lnf,
                    C, 1.0f, grads->unembed, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, V, 1.0f, dlogits, V, m->unembed,
                C, 0.0f, tp->dln1, C);
    if ((rc = ghook(&w, HOOK_LN_FINAL, -1, tp->dln1)) < 0)
        return rc;
    memset(tp->dres, 0, NC * sizeof(float));
    layernorm_backward(tp->dres, grads ? grads->lnf_w : NULL, grads ? grads->lnf_b : NULL,
                       tp->dln1, tp->x_fin, tp->meanf, tp->rstdf, m->lnf_w, N, C);
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
