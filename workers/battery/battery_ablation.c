/* ablation v1: what each head contributes to the loss, measured by removing
 * it, and what each component writes directly into the correct logit.
 *
 * Token sets (idx of every metric): 0 = the first ABLATION_EVAL_SEQS
 * sequences of the eval set, scored on every next-token prediction
 * (positions t = 0 .. T-2 predict t+1); 1 = the first ABLATION_REP_SEQS
 * random repeated sequences of battery_repeated_tokens (the `heads` item's,
 * same seed), scored on the predictions of R[1..L-1] in the second copy:
 * the induction loss of `heads`.  A set with fewer sequences uses them all.
 *
 * Ablation (Olsson et al. 2022, "In-context Learning and Induction Heads",
 * zero-ablating heads; Wang et al. 2022, "Interpretability in the Wild",
 * mean ablation): head h of layer l is removed by overwriting its slice
 * z[b, t, h, :] of blocks.l.attn.hook_z at every position with 0
 * (zero_ablation_delta) or with its mean over every position of every
 * sequence of the same token set in the clean run (mean_ablation_delta).
 * The value is the scored mean loss of the ablated run minus the clean one
 * (nats; positive = the head helped).
 *
 * Direct logit attribution (Elhage et al. 2021, "A Mathematical Framework
 * for Transformer Circuits"; TransformerLens `logit_attrs` with the final
 * LayerNorm's scale of the clean run).  At a scored position with residual
 * x (the clean run's last hook_resid_post), correct next token y, final
 * LayerNorm weight w and bias b, sigma = sqrt(var(x) + eps) and
 * u = W_U[y] - mean_v W_U[v] (the unembedding row of y minus the mean row):
 *     logit_y - mean_v logit_v = LN(x) . u
 *         = sum over components c of  (c - mean(c)) / sigma . (w * u)  +  b . u
 * where x is the sum of its components: the embedding, each head's output
 * z[h] W_O[:, h]^T (its share of attention.dense, without the bias), each
 * attention.dense bias, each hook_mlp_out (the MLP with its output bias).
 * mean(c) is c's mean over d_model (LayerNorm centres x, so each component
 * is centred).  The metrics are each term's mean over the scored positions:
 *   dla_head (l, h), dla_attn_bias (l), dla_mlp (l), dla_embed,
 *   dla_final_bias (b . u), and logit_diff, the mean of logit_y - mean logit
 *   from the logits themselves; the terms sum to logit_diff up to float
 *   rounding (tests/test_heads.c checks it).
 *
 * Cost.  The clean run of a set is two forwards without the unembedding
 * (one caches each layer's hook_resid_pre and the means of hook_z, the
 * other adds up the attributions once sigma is known).  Ablating a head of
 * layer l resumes at blocks.l.hook_resid_pre from the cached residual
 * (gptneox_forward_from), so only layers >= l are recomputed, with the
 * 2 x n_heads variants of a layer stacked along the batch up to
 * ABLATION_TOKENS tokens per forward; the unembedding runs only on the
 * scored rows (ABLATION_LOGIT_ROWS at a time).  The item logs how many
 * forward-equivalents (FLOPs over those of one full forward of both sets)
 * it ran.  Sums are in double, in a fixed order. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/model/kernels.h"

#define ABLATION_LOGIT_ROWS 256 /* scored rows unembedded at once */

static const char set_idx[] =
    "token set: 0 the first eval sequences (every prediction), 1 the first repeated "
    "sequences (second-copy predictions: the induction loss)";
static const char lay[] = "layer";
static const char hd[] = "head index within the layer";

static const struct metric_def ablation_metrics[] = {
    {"clean_loss", "nats", "mean next-token loss of the scored positions of the token set", "",
     "", set_idx},
    {"zero_ablation_delta", "nats",
     "loss with the head's hook_z set to zero at every position, minus the clean loss", lay, hd,
     set_idx},
    {"mean_ablation_delta", "nats",
     "loss with the head's hook_z set to its mean over the token set, minus the clean loss",
     lay, hd, set_idx},
    {"dla_head", "logits",
     "direct logit attribution of the head's output (z W_O, no bias) to the correct token "
     "minus the mean logit, through the clean final LayerNorm scale",
     lay, hd, set_idx},
    {"dla_attn_bias", "logits", "direct logit attribution of the layer's attention.dense bias",
     lay, "", set_idx},
    {"dla_mlp", "logits", "direct logit attribution of the layer's hook_mlp_out", lay, "",
     set_idx},
    {"dla_embed", "logits", "direct logit attribution of the token embedding", "", "", set_idx},
    {"dla_final_bias", "logits", "the final LayerNorm bias's share: b . (W_U[y] - mean W_U)", "",
     "", set_idx},
    {"logit_diff", "logits",
     "mean of the correct token's logit minus the mean logit; the dla_* terms sum to it", "", "",
     set_idx},
};

/* One token set and what its clean run left. */
struct abl_set {
    const int *tok;
    int B, T, N;      /* N = B*T rows */
    int *rows, nrows; /* scored rows (b*T + t) and their targets */
    int *targets;
    float *res;       /* (NL, N, C) blocks.l.hook_resid_pre of the clean run */
    float *zmean;     /* (NL, C) mean of hook_z over the N rows */
    float *dir;       /* (nrows, C) w * u / sigma, centred: the DLA directions */
    double clean, logit_diff, final_bias;
    double *dla_head; /* (NL, NH) sums over scored rows */
    double *dla_mlp, *dla_bias; /* (NL) */
    double dla_embed;
    double *delta;    /* (NL, 2, NH): zero, then mean ablation, ablated - clean */
};

struct abl {
    struct gptneox *m;
    int NL, NH, HS, C, V;
    float *xs;       /* (max nrows, C) gathered rows */
    float *logits;   /* (ABLATION_LOGIT_ROWS, V) */
    float *losses;   /* (ABLATION_LOGIT_ROWS) */
    float *g;        /* (max nrows, C) directions mapped through W_O */
    float *ubar;     /* (C) mean unembedding row */
    double *zsum;    /* (C) column sums of hook_z */
    double flops;    /* work done, for the log */
    /* the running forward */
    struct abl_set *s;
    int layer, v0, nv; /* ablated layer and variants v0 .. v0+nv-1 */
    float *last_x;     /* clean pass 1: where the final residual goes */
};

/* Mean scored loss of the rows of the residual x (N,C) of set s (the last
 * hook_resid_post); with diff non-NULL also the mean of logit_y - mean
 * logit.  The final LayerNorm and the unembedding run on the scored rows
 * only, ABLATION_LOGIT_ROWS at a time. */
static double scored_loss(struct abl *a, const struct abl_set *s, const float *x, double *diff)
{
    const struct gptneox *m = a->m;
    const int C = a->C, V = a->V;
    for (int r = 0; r < s->nrows; r++)
        memcpy(a->xs + (size_t)r * C, x + (size_t)s->rows[r] * C, (size_t)C * sizeof(float));
    layernorm_forward(a->xs, a->xs, m->lnf_w, m->lnf_b, s->nrows, C, (float)m->cfg.layer_norm_eps);
    double loss = 0, d = 0;
    for (int r0 = 0; r0 < s->nrows; r0 += ABLATION_LOGIT_ROWS) {
        int n = s->nrows - r0 < ABLATION_LOGIT_ROWS ? s->nrows - r0 : ABLATION_LOGIT_ROWS;
        matmul_forward(a->logits, a->xs + (size_t)r0 * C, m->unembed, NULL, n, C, V);
        crossentropy_forward(a->losses, a->logits, s->targets + r0, n, V);
        for (int r = 0; r < n; r++) {
            loss += a->losses[r];
            if (diff) {
                const float *lg = a->logits + (size_t)r * V;
                double sum = 0;
                for (int v = 0; v < V; v++)
                    sum += lg[v];
                d += lg[s->targets[r0 + r]] - sum / V;
            }
        }
    }
    a->flops += 2.0 * s->nrows * C * V;
    if (diff)
        *diff = d / s->nrows;
    return loss / s->nrows;
}

/* ---- the clean run ---- */

/* pass 1: cache each layer's resid_pre, sum hook_z, keep the final residual */
static int clean1_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    const size_t NC = (size_t)s->N * a->C;
    if (act->kind == HOOK_RESID_PRE) {
        memcpy(s->res + (size_t)act->layer * NC, act->data, NC * sizeof(float));
    } else if (act->kind == HOOK_ATTN_Z) {
        float *zm = s->zmean + (size_t)act->layer * a->C;
        memset(a->zsum, 0, (size_t)a->C * sizeof *a->zsum);
        for (int n = 0; n < s->N; n++)
            for (int c = 0; c < a->C; c++)
                a->zsum[c] += act->data[(size_t)n * a->C + c];
        for (int c = 0; c < a->C; c++)
            zm[c] = (float)(a->zsum[c] / s->N);
    } else if (act->kind == HOOK_RESID_POST) {
        memcpy(a->last_x, act->data, NC * sizeof(float));
    }
    return 0;
}

/* pass 2: direct logit attribution of the heads (hook_z) and MLPs */
static int clean2_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    const int C = a->C, l = act->layer;
    if (act->kind == HOOK_ATTN_Z) {
        /* g = dir @ W_O: row r of g, sliced by head, dotted with z[h] is
         * the head's term (attention.dense is (C_out, C_in) row-major) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->nrows, C, C, 1.0f, s->dir, C,
                    a->m->layers[l].attn_w, C, 0.0f, a->g, C);
        a->flops += 2.0 * s->nrows * C * C;
        for (int h = 0; h < a->NH; h++) {
            double sum = 0;
            for (int r = 0; r < s->nrows; r++) {
                const float *z = act->data + (size_t)s->rows[r] * C + (size_t)h * a->HS;
                const float *g = a->g + (size_t)r * C + (size_t)h * a->HS;
                float dot = 0;
                for (int k = 0; k < a->HS; k++)
                    dot += z[k] * g[k];
                sum += dot;
            }
            s->dla_head[(size_t)l * a->NH + h] = sum / s->nrows;
        }
    } else if (act->kind == HOOK_MLP_OUT) {
        double sum = 0;
        for (int r = 0; r < s->nrows; r++) {
            const float *x = act->data + (size_t)s->rows[r] * C, *d = s->dir + (size_t)r * C;
            double dot = 0;
            for (int c = 0; c < C; c++)
                dot += (double)x[c] * d[c];
            sum += dot;
        }
        s->dla_mlp[l] = sum / s->nrows;
    }
    return 0;
}

/* Forward FLOPs of layers from..NL-1 on (B,T), without the unembedding. */
static double layer_flops(const struct gptneox_config *cfg, int B, int T, int from)
{
    double all = gptneox_forward_flops(cfg, B, T) - 2.0 * B * T * cfg->d_model * cfg->vocab_size;
    return all * (cfg->n_layers - from) / cfg->n_layers;
}

static int clean_run(struct abl *a, struct abl_set *s, struct err *e)
{
    struct gptneox *m = a->m;
    const int C = a->C, NL = a->NL;
    const float *lnf_w = m->lnf_w;
    int rc;
    a->s = s;
    a->last_x = a->g; /* reused: large enough for (N, C) (see ablation_run) */
    struct gptneox_hook h1[3] = {{HOOK_RESID_PRE, -1, clean1_hook, a},
                                 {HOOK_ATTN_Z, -1, clean1_hook, a},
                                 {HOOK_RESID_POST, NL - 1, clean1_hook, a}};
    if ((rc = gptneox_forward_until(m, s->tok, s->B, s->T, h1, 3, NL - 1, e)) < 0)
        return rc;
    a->flops += layer_flops(&m->cfg, s->B, s->T, 0);
    s->clean = scored_loss(a, s, a->last_x, &s->logit_diff);
    /* the directions: w * (W_U[y] - ubar) / sigma, centred over d_model */
    double fb = 0, emb = 0;
    for (int r = 0; r < s->nrows; r++) {
        const float *x = a->last_x + (size_t)s->rows[r] * C;
        const float *u = m->unembed + (size_t)s->targets[r] * C;
        float *d = s->dir + (size_t)r * C;
        double mean = 0, var = 0, dm = 0;
        for (int c = 0; c < C; c++)
            mean += x[c];
        mean /= C;
        for (int c = 0; c < C; c++)
            var += (x[c] - mean) * (x[c] - mean);
        double inv = 1.0 / sqrt(var / C + m->cfg.layer_norm_eps);
        for (int c = 0; c < C; c++) {
            double uc = (double)u[c] - a->ubar[c];
            fb += (double)m->lnf_b[c] * uc;
            d[c] = (float)(lnf_w[c] * uc * inv);
            dm += d[c];
        }
        dm /= C;
        for (int c = 0; c < C; c++)
            d[c] = (float)(d[c] - dm);
        /* the embedding: blocks.0.hook_resid_pre */
        const float *x0 = s->res + (size_t)s->rows[r] * C;
        double dot = 0;
        for (int c = 0; c < C; c++)
            dot += (double)x0[c] * d[c];
        emb += dot;
    }
    s->final_bias = fb / s->nrows;
    s->dla_embed = emb / s->nrows;
    for (int l = 0; l < NL; l++) {
        const float *b = m->layers[l].attn_b;
        double sum = 0;
        for (int r = 0; b && r < s->nrows; r++) {
            const float *d = s->dir + (size_t)r * C;
            double dot = 0;
            for (int c = 0; c < C; c++)
                dot += (double)b[c] * d[c];
            sum += dot;
        }
        s->dla_bias[l] = sum / s->nrows;
    }
    struct gptneox_hook h2[2] = {{HOOK_ATTN_Z, -1, clean2_hook, a},
                                 {HOOK_MLP_OUT, -1, clean2_hook, a}};
    if ((rc = gptneox_forward_until(m, s->tok, s->B, s->T, h2, 2, NL - 1, e)) < 0)
        return rc;
    a->flops += layer_flops(&m->cfg, s->B, s->T, 0);
    return 0;
}

/* ---- ablated runs ---- */

/* hook_z of the ablated layer: copy k of the stacked batch is variant
 * v0+k, kind (v / NH: 0 zero, 1 mean) of head v % NH. */
static int ablate_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    const int HS = a->HS, C = a->C;
    for (int k = 0; k < a->nv; k++) {
        int v = a->v0 + k, h = v % a->NH, mean = v / a->NH;
        const float *zm = s->zmean + (size_t)a->layer * C + (size_t)h * HS;
        for (int n = 0; n < s->N; n++) {
            float *z = act->data + ((size_t)k * s->N + n) * C + (size_t)h * HS;
            if (mean)
                memcpy(z, zm, (size_t)HS * sizeof(float));
            else
                memset(z, 0, (size_t)HS * sizeof(float));
        }
    }
    return 0;
}

/* the last hook_resid_post: the scored loss of every copy */
static int loss_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    for (int k = 0; k < a->nv; k++) {
        int v = a->v0 + k, h = v % a->NH, mean = v / a->NH;
        double loss = scored_loss(a, s, act->data + (size_t)k * s->N * a->C, NULL);
        s->delta[((size_t)a->layer * 2 + mean) * a->NH + h] = loss - s->clean;
    }
    return 0;
}

static int ablate_set(struct abl *a, struct abl_set *s, float *stack, struct err *e)
{
    const size_t NC = (size_t)s->N * a->C;
    const int nvar = 2 * a->NH;
    int per = ABLATION_TOKENS / s->N;
    per = per < 1 ? 1 : per > nvar ? nvar : per;
    struct gptneox_hook h[2] = {{HOOK_ATTN_Z, 0, ablate_hook, a},
                                {HOOK_RESID_POST, a->NL - 1, loss_hook, a}};
    a->s = s;
    for (int l = 0; l < a->NL; l++) {
        h[0].layer = l;
        a->layer = l;
        for (int v0 = 0; v0 < nvar; v0 += per) {
            a->v0 = v0;
            a->nv = nvar - v0 < per ? nvar - v0 : per;
            for (int k = 0; k < a->nv; k++)
                memcpy(stack + k * NC, s->res + l * NC, NC * sizeof(float));
            int rc = gptneox_forward_from(a->m, l, stack, a->nv * s->B, s->T, h, 2,
                                          GPTNEOX_FWD_NO_LOGITS, e);
            if (rc < 0)
                return rc;
            a->flops += layer_flops(&a->m->cfg, a->nv * s->B, s->T, l);
        }
    }
    return 0;
}

/* ---- the item ---- */

static int emit_set(const struct abl *a, const struct abl_set *s, int idx, struct rows *out,
                    struct err *e)
{
    int rc;
    if ((rc = rows_add(out, "clean_loss", -1, -1, idx, s->clean, e)) < 0)
        return rc;
    for (int l = 0; l < a->NL; l++)
        for (int h = 0; h < a->NH; h++) {
            const double *d = s->delta + (size_t)l * 2 * a->NH;
            if ((rc = rows_add(out, "zero_ablation_delta", l, h, idx, d[h], e)) < 0 ||
                (rc = rows_add(out, "mean_ablation_delta", l, h, idx, d[a->NH + h], e)) < 0 ||
                (rc = rows_add(out, "dla_head", l, h, idx, s->dla_head[(size_t)l * a->NH + h],
                               e)) < 0)
                return rc;
        }
    for (int l = 0; l < a->NL; l++)
        if ((rc = rows_add(out, "dla_attn_bias", l, -1, idx, s->dla_bias[l], e)) < 0 ||
            (rc = rows_add(out, "dla_mlp", l, -1, idx, s->dla_mlp[l], e)) < 0)
            return rc;
    if ((rc = rows_add(out, "dla_embed", -1, -1, idx, s->dla_embed, e)) < 0 ||
        (rc = rows_add(out, "dla_final_bias", -1, -1, idx, s->final_bias, e)) < 0 ||
        (rc = rows_add(out, "logit_diff", -1, -1, idx, s->logit_diff, e)) < 0)
        return rc;
    return 0;
}

static void set_free(struct abl_set *s)
{
    free(s->rows);
    free(s->targets);
    free(s->res);
    free(s->zmean);
    free(s->dir);
    free(s->dla_head);
    free(s->dla_mlp);
    free(s->dla_bias);
    free(s->delta);
}

static int set_alloc(struct abl_set *s, const struct abl *a)
{
    size_t NC = (size_t)s->N * a->C, nlh = (size_t)a->NL * a->NH;
    s->rows = malloc((size_t)s->N * sizeof *s->rows);
    s->targets = malloc((size_t)s->N * sizeof *s->targets);
    s->res = malloc((size_t)a->NL * NC * sizeof *s->res);
    s->zmean = malloc((size_t)a->NL * a->C * sizeof *s->zmean);
    s->dir = malloc(NC * sizeof *s->dir);
    s->dla_head = calloc(nlh, sizeof *s->dla_head);
    s->dla_mlp = calloc((size_t)a->NL, sizeof *s->dla_mlp);
    s->dla_bias = calloc((size_t)a->NL, sizeof *s->dla_bias);
    s->delta = calloc(2 * nlh, sizeof *s->delta);
    return s->rows && s->targets && s->res && s->zmean && s->dir && s->dla_head && s->dla_mlp &&
                   s->dla_bias && s->delta
               ? 0
               : ERR_NOMEM;
}

/* Scored rows: every prediction (rep_L 0) or the second copy's R[1..L-1]. */
static void set_rows(struct abl_set *s, int rep_L)
{
    s->nrows = 0;
    for (int b = 0; b < s->B; b++)
        for (int t = 0; t + 1 < s->T; t++) {
            int j2 = t - rep_L; /* row L+j predicts R[j] of the second copy */
            if (rep_L && !(j2 >= 1 && j2 <= rep_L - 1))
                continue;
            s->rows[s->nrows] = b * s->T + t;
            s->targets[s->nrows++] = s->tok[(size_t)b * s->T + t + 1];
        }
}

static int ablation_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const struct gptneox_config *cfg = &m->cfg;
    const int C = cfg->d_model, V = cfg->vocab_size;
    int rc0 = battery_check_eval(c, e);
    if (rc0 < 0)
        return rc0;
    struct abl a = {.m = m, .NL = cfg->n_layers, .NH = cfg->n_heads, .HS = cfg->d_head,
                    .C = C, .V = V};
    struct abl_set sets[2] = {{0}, {0}};
    int *rep = NULL, RB, RT, L, rc;
    float *stack = NULL;
    if ((rc = battery_repeated_tokens(&rep, &RB, &RT, &L, V, cfg->max_positions, c->seed, e)) < 0)
        return rc;
    sets[0].tok = c->eval_tokens;
    sets[0].B = c->eval_B < ABLATION_EVAL_SEQS ? c->eval_B : ABLATION_EVAL_SEQS;
    sets[0].T = c->eval_T;
    sets[1].tok = rep;
    sets[1].B = RB < ABLATION_REP_SEQS ? RB : ABLATION_REP_SEQS;
    sets[1].T = RT;
    size_t maxN = 0, maxstack = 0;
    for (int i = 0; i < 2; i++) {
        struct abl_set *s = &sets[i];
        s->N = s->B * s->T;
        if ((rc = set_alloc(s, &a)) < 0) {
            rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the ablation token sets");
            goto out;
        }
        set_rows(s, i == 1 ? L : 0);
        int per = ABLATION_TOKENS / s->N;
        per = per < 1 ? 1 : per > 2 * a.NH ? 2 * a.NH : per;
        maxN = (size_t)s->N > maxN ? (size_t)s->N : maxN;
        maxstack = (size_t)per * s->N > maxstack ? (size_t)per * s->N : maxstack;
    }
    a.xs = malloc(maxN * C * sizeof *a.xs);
    a.g = malloc(maxN * C * sizeof *a.g); /* also the final residual of clean pass 1 */
    a.logits = malloc((size_t)ABLATION_LOGIT_ROWS * V * sizeof *a.logits);
    a.losses = malloc(ABLATION_LOGIT_ROWS * sizeof *a.losses);
    a.ubar = malloc((size_t)C * sizeof *a.ubar);
    a.zsum = malloc((size_t)C * sizeof *a.zsum);
    stack = malloc(maxstack * C * sizeof *stack);
    if (!a.xs || !a.g || !a.logits || !a.losses || !a.ubar || !a.zsum || !stack) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the ablation buffers");
        goto out;
    }
    for (int ch = 0; ch < C; ch++) {
        double sum = 0;
        for (int v = 0; v < V; v++)
            sum += m->unembed[(size_t)v * C + ch];
        a.ubar[ch] = (float)(sum / V);
    }
    double unit = 0;
    for (int i = 0; i < 2; i++) {
        unit += gptneox_forward_flops(cfg, sets[i].B, sets[i].T);
        if ((rc = clean_run(&a, &sets[i], e)) < 0 || (rc = ablate_set(&a, &sets[i], stack, e)) < 0)
            goto out;
    }
    log_info("ablation cost", "forward_equivalents=%.1f eval_seqs=%d repeated_seqs=%d",
             a.flops / unit, sets[0].B, sets[1].B);
    for (int i = 0; i < 2; i++)
        if ((rc = emit_set(&a, &sets[i], i, out, e)) < 0)
            goto out;
out:
    free(stack);
    free(a.zsum);
    free(a.ubar);
    free(a.losses);
    free(a.logits);
    free(a.g);
    free(a.xs);
    set_free(&sets[1]);
    set_free(&sets[0]);
    free(rep);
    return rc;
}

const struct battery_item battery_item_ablation = {
    .name = "ablation",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = ablation_metrics,
    .nmetrics = sizeof ablation_metrics / sizeof *ablation_metrics,
    .run = ablation_run,
};
