/* ablation v4 and ablation_exact v1: what each head contributes to the
 * loss, measured by removing it, and what each component writes directly
 * into the correct logit.
 *
 * Token sets (idx of every metric): 0 = the first ablation_seqs(B, T)
 * sequences of the eval set (battery.h: the fewest whole sequences holding
 * ABLATION_EVAL_TOKENS = 1024 tokens, at most ABLATION_EVAL_SEQS = 4;
 * ablation_exact keeps v1's ABLATION_EVAL_SEQS), scored on every next-token prediction
 * (positions t = 0 .. T-2 predict t+1); 1 = the first ABLATION_REP_SEQS
 * random repeated sequences of battery_repeated_tokens (the `heads` item's,
 * same seed), scored on the predictions of R[1..L-1] in the second copy:
 * the induction loss of `heads`.  A set with fewer sequences uses them all.
 *
 * Ablation (Olsson et al. 2022, "In-context Learning and Induction Heads",
 * zero-ablating heads; Wang et al. 2022, "Interpretability in the Wild",
 * mean ablation): head h of layer l is removed by overwriting its slice
 * z[b, t, h, :] of blocks.l.attn.hook_z at every position with 0 (zero
 * ablation) or with its mean over every position of every sequence of the
 * same token set in the clean run (mean ablation).  The exact effect is the
 * scored mean loss of the ablated run minus the clean one (nats; positive =
 * the head helped): zero_ablation_delta, mean_ablation_delta.
 *
 * Attribution patching (Nanda 2023, "Attribution patching: activation
 * patching at industrial scale"; Kramár et al. 2024, "AtP*") estimates
 * every head's effect from one forward and one backward: with g the
 * gradient of the scored mean loss at hook_z of the clean run, replacing z
 * by z' changes the loss by about sum over positions of (z' - z) . g, so
 *     zero_ablation_estimate = - sum_{b,t} z[b,t,h] . g[b,t,h]
 *     mean_ablation_estimate = zmean[h] . sum_{b,t} g[b,t,h] - sum z . g
 * (the first-order term; AtP*'s QK fix concerns patching queries and keys,
 * not hook_z, and its GradDrop would cost a backward per layer).
 *
 * The estimate is first order: where the loss saturates (a confident,
 * correct prediction) its gradient vanishes, and a head that carries the
 * prediction can be estimated near 0 (on the hand-built induction circuit,
 * 7e-10 for an exact 5.5 nats); Kramár et al. call these false negatives.
 *
 * Version 3 (from v2): token set 0 is the first ablation_seqs(B, T)
 * sequences rather than the first ABLATION_EVAL_SEQS whatever their
 * length.  On pythia-70m with 16 x 512 eval tokens, 53% of v2's CPU time
 * was the unembedding of the ~2300 scored rows (2044 of set 0) for every
 * exact variant, 33% the variants' layer forwards and 13% the taped clean
 * run and its backward; all of them scale with set 0's sequences, so
 * 2 x 512 tokens (1022 scored rows) halve set 0's work.  The clean run, the
 * attribution estimates, the exact variants and the DLA all use the same
 * sequences, so estimate and exact stay comparable.  Sets of at most 256
 * tokens per sequence (the default 16 x 128 set) keep v2's 4 sequences and
 * v2's numbers; elsewhere the rows equal v2's computed on an eval set of
 * only those sequences (tests/test_heads.c).  The mean loss over 1022
 * predictions rather than 2044: the per-variant deltas carry about 1.4
 * times the sampling noise of v2's (independent positions).
 *
 * ablation v2 (and v3) runs the exact ablation only where it matters and where it
 * tells how good the estimate is: per token set and kind (zero, mean), the
 * ABLATION_TOP_K heads of largest |estimate| (ties: lower layer, then
 * head; a non-finite estimate counts as largest), the ABLATION_TOP_DLA
 * heads of largest |dla_head| not among them (heads writing the answer
 * directly, where saturation hides the effect from the gradient), and
 * ABLATION_SAMPLE heads drawn uniformly from the rest (splitmix64 from
 * --seed ^ ABLATION_SAMPLE_SALT, per set and kind); or every head when the
 * checkpoint is a full sweep (`analyze --full-sweep`, which ckptd passes
 * on a sparse skeleton of the run's checkpoints).  Rows: the estimate of
 * every head; for the heads ablated exactly, the exact delta, the error
 * (estimate - exact) and *_selection: 1 = among the top k by |estimate|,
 * 2 = the random sample, 3 = neither (a full sweep), 4 = among the largest
 * |dla_head|; per set *_sample_mae, the mean |error| over the random
 * sample (at a sweep over every head of code 3): the estimate's error on
 * the heads it was trusted with, measured at every checkpoint; at a sweep,
 * *_topk_recall, the share of the k heads of largest |exact| effect that
 * the estimate's top k holds.
 *
 * ablation_exact v1 (opt-in) is the same exact ablation of every head at
 * every checkpoint, with the rows ablation v1 wrote (the same numbers: v1
 * under its new name).
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
 * Cost.  The clean run of a set is one forward (ablation: taped, with the
 * backward of the scored loss from hook_z's gradients, activations only;
 * ablation_exact: without the unembedding), in groups of sequences whose
 * tape fits ABLATION_TAPE_BYTES; it caches each layer's hook_resid_pre, and
 * keeps hook_z and hook_mlp_out of the scored rows for the attributions.
 * An exact ablation of a head of layer l resumes at blocks.l.hook_resid_pre
 * from the cached residual (gptneox_forward_from), so only layers >= l are
 * recomputed, with the variants of a layer stacked along the batch up to
 * ABLATION_TOKENS tokens per forward; the unembedding runs only on the
 * scored rows (ABLATION_LOGIT_ROWS at a time).  The item logs how many
 * forward-equivalents (FLOPs over those of one full forward of both sets)
 * it ran.  Sums are in double, in a fixed order. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/rng.h"
#include "workers/battery/battery.h"
#include "workers/model/backward.h"
#include "workers/model/kernels.h"

#define ABLATION_LOGIT_ROWS 256 /* scored rows unembedded at once */
#define ABLATION_SAMPLE_SALT 0x41424c4154494f4eull /* "ABLATION" */

static const char set_idx[] =
    "token set: 0 the first eval sequences (every prediction), 1 the first repeated "
    "sequences (second-copy predictions: the induction loss)";
static const char lay[] = "layer";
static const char hd[] = "head index within the layer";

#define DLA_METRICS                                                                           \
    {"dla_head", "logits",                                                                    \
     "direct logit attribution of the head's output (z W_O, no bias) to the correct token "  \
     "minus the mean logit, through the clean final LayerNorm scale",                        \
     lay, hd, set_idx},                                                                       \
    {"dla_attn_bias", "logits", "direct logit attribution of the layer's attention.dense bias", \
     lay, "", set_idx},                                                                       \
    {"dla_mlp", "logits", "direct logit attribution of the layer's hook_mlp_out", lay, "",     \
     set_idx},                                                                                \
    {"dla_embed", "logits", "direct logit attribution of the token embedding", "", "",         \
     set_idx},                                                                                \
    {"dla_final_bias", "logits", "the final LayerNorm bias's share: b . (W_U[y] - mean W_U)", \
     "", "", set_idx},                                                                        \
    {"logit_diff", "logits",                                                                  \
     "mean of the correct token's logit minus the mean logit; the dla_* terms sum to it", "", \
     "", set_idx}

static const struct metric_def ablation_metrics[] = {
    {"clean_loss", "nats", "mean next-token loss of the scored positions of the token set", "",
     "", set_idx},
    {"zero_ablation_estimate", "nats",
     "attribution patching estimate of zero_ablation_delta: -sum over positions of z . dloss/dz "
     "at the head's hook_z, from one backward",
     lay, hd, set_idx},
    {"mean_ablation_estimate", "nats",
     "attribution patching estimate of mean_ablation_delta: sum over positions of "
     "(mean z - z) . dloss/dz at the head's hook_z",
     lay, hd, set_idx},
    {"zero_ablation_delta", "nats",
     "exact: loss with the head's hook_z set to zero at every position, minus the clean loss; "
     "only for the heads ablated exactly (see zero_ablation_selection)",
     lay, hd, set_idx},
    {"mean_ablation_delta", "nats",
     "exact: loss with the head's hook_z set to its mean over the token set, minus the clean "
     "loss; only for the heads ablated exactly (see mean_ablation_selection)",
     lay, hd, set_idx},
    {"zero_ablation_error", "nats",
     "zero_ablation_estimate - zero_ablation_delta, for the heads ablated exactly", lay, hd,
     set_idx},
    {"mean_ablation_error", "nats",
     "mean_ablation_estimate - mean_ablation_delta, for the heads ablated exactly", lay, hd,
     set_idx},
    {"zero_ablation_selection", "code",
     "why the head was zero-ablated exactly: 1 among the top k by |estimate|, 2 the random "
     "sample of the others, 3 neither (a full sweep ablates every head), 4 among the heads "
     "of largest |dla_head|",
     lay, hd, set_idx},
    {"mean_ablation_selection", "code",
     "why the head was mean-ablated exactly: 1 among the top k by |estimate|, 2 the random "
     "sample of the others, 3 neither (a full sweep ablates every head), 4 among the heads "
     "of largest |dla_head|",
     lay, hd, set_idx},
    {"zero_ablation_sample_mae", "nats",
     "mean |zero_ablation_error| over the random sample of heads (at a full sweep: every head "
     "outside the top k and the largest-DLA heads)",
     "", "", set_idx},
    {"mean_ablation_sample_mae", "nats",
     "mean |mean_ablation_error| over the random sample of heads (at a full sweep: every head "
     "outside the top k and the largest-DLA heads)",
     "", "", set_idx},
    {"zero_ablation_topk_recall", "fraction",
     "full sweeps only: share of the k heads of largest |zero_ablation_delta| among the k of "
     "largest |zero_ablation_estimate|",
     "", "", set_idx},
    {"mean_ablation_topk_recall", "fraction",
     "full sweeps only: share of the k heads of largest |mean_ablation_delta| among the k of "
     "largest |mean_ablation_estimate|",
     "", "", set_idx},
    DLA_METRICS,
};

static const struct metric_def exact_metrics[] = {
    {"clean_loss", "nats", "mean next-token loss of the scored positions of the token set", "",
     "", set_idx},
    {"zero_ablation_delta", "nats",
     "loss with the head's hook_z set to zero at every position, minus the clean loss", lay, hd,
     set_idx},
    {"mean_ablation_delta", "nats",
     "loss with the head's hook_z set to its mean over the token set, minus the clean loss",
     lay, hd, set_idx},
    DLA_METRICS,
};

/* One token set and what its clean run left. */
struct abl_set {
    const int *tok;
    int B, T, N;      /* N = B*T rows */
    int *rows, nrows; /* scored rows (b*T + t) and their targets */
    int *targets;
    int *tgt_full;    /* (N) the target of a scored row, -1 elsewhere */
    float *res;       /* (NL, N, C) blocks.l.hook_resid_pre of the clean run */
    float *zmean;     /* (NL, C) mean of hook_z over the N rows */
    double *zsum;     /* (NL, C) its sum, in row order */
    double clean, logit_diff, final_bias;
    double *dla_head; /* (NL, NH) sums over scored rows, then means */
    double *dla_mlp, *dla_bias; /* (NL) */
    double dla_embed;
    double *zg;       /* (NL, NH) sum over rows of z . g (g = d loss / d z) */
    double *gsum;     /* (NL, C) sum over rows of g */
    double *est;      /* (NL, 2, NH) estimates: zero, then mean */
    double *delta;    /* (NL, 2, NH) exact ablated - clean; NAN where not run */
    signed char *sel; /* (NL, 2, NH) 0 not exact, 1 top k, 2 sample, 3 sweep */
};

struct abl {
    struct gptneox *m;
    int NL, NH, HS, C, V;
    int atp;          /* ablation v4: taped clean run and the backward */
    float *xs;        /* (max nrows, C) gathered rows */
    float *logits;    /* (ABLATION_LOGIT_ROWS, V) */
    float *losses;    /* (ABLATION_LOGIT_ROWS) */
    float *g;         /* (max nrows, C) directions mapped through W_O */
    float *ubar;      /* (C) mean unembedding row */
    double flops;     /* work done, for the log */
    struct gptneox_tape *tape;
    /* the clean run's group of sequences */
    struct abl_set *s;
    int s0, nb;       /* sequences s0 .. s0+nb-1 */
    int r0, nr;       /* their scored rows r0 .. r0+nr-1 */
    float *zc;        /* (NL, nb*T, C) hook_z of the group */
    float *mlp;       /* (NL, nr, C) hook_mlp_out of the scored rows */
    float *dir;       /* (nr, C) w * u / sigma, centred: the DLA directions */
    double zg_scale;  /* d (set mean) / d (group sum): 1 / nrows */
    /* the running ablated forward */
    int layer;
    const int *vh;    /* (nv) variants of the forward: kind * NH + head */
    int nv;
};

/* Mean scored loss of set s from the final residual of its scored rows,
 * gathered in a->xs (nrows, C; overwritten); with diff non-NULL also the
 * mean of logit_y - mean logit.  The final LayerNorm and the unembedding
 * run on the scored rows only, ABLATION_LOGIT_ROWS at a time. */
static double scored_loss_rows(struct abl *a, const struct abl_set *s, double *diff)
{
    const struct gptneox *m = a->m;
    const int C = a->C, V = a->V;
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

/* The same from the whole residual x (N,C) of set s (the last
 * hook_resid_post of a forward). */
static double scored_loss(struct abl *a, const struct abl_set *s, const float *x, double *diff)
{
    const int C = a->C;
    for (int r = 0; r < s->nrows; r++)
        memcpy(a->xs + (size_t)r * C, x + (size_t)s->rows[r] * C, (size_t)C * sizeof(float));
    return scored_loss_rows(a, s, diff);
}

/* ---- the clean run ---- */

/* Forward hooks of a group: resid_pre into the set's cache, z into the
 * group's (and its column sums), mlp_out and the last resid_post of the
 * scored rows. */
static int clean_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    const int C = a->C, l = act->layer;
    const size_t NC = (size_t)s->N * C, GC = (size_t)a->nb * s->T * C;
    const size_t off = (size_t)a->s0 * s->T * C;
    if (act->kind == HOOK_RESID_PRE) {
        memcpy(s->res + (size_t)l * NC + off, act->data, GC * sizeof(float));
    } else if (act->kind == HOOK_ATTN_Z) {
        memcpy(a->zc + (size_t)l * GC, act->data, GC * sizeof(float));
        double *zs = s->zsum + (size_t)l * C;
        for (int n = 0; n < a->nb * s->T; n++)
            for (int c = 0; c < C; c++)
                zs[c] += act->data[(size_t)n * C + c];
    } else {
        /* hook_mlp_out of layer l (the group's scored rows), or the last
         * hook_resid_post (the set's, gathered group by group) */
        float *dst = act->kind == HOOK_MLP_OUT ? a->mlp + (size_t)l * a->nr * C : a->xs + (size_t)a->r0 * C;
        const int base = a->s0 * s->T;
        for (int r = 0; r < a->nr; r++)
            memcpy(dst + (size_t)r * C, act->data + (size_t)(s->rows[a->r0 + r] - base) * C,
                   (size_t)C * sizeof(float));
    }
    return 0;
}

/* Gradient hook at hook_z: z . g and the sums of g, per head. */
static int grad_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    const int C = a->C, HS = a->HS, NH = a->NH, l = act->layer;
    const int G = a->nb * s->T;
    const float *z = a->zc + (size_t)l * G * C, *g = act->data;
    double *gs = s->gsum + (size_t)l * C;
    for (int h = 0; h < NH; h++) {
        double zg = 0;
        for (int n = 0; n < G; n++) {
            const float *zr = z + (size_t)n * C + (size_t)h * HS;
            const float *gr = g + (size_t)n * C + (size_t)h * HS;
            float dot = 0;
            for (int k = 0; k < HS; k++)
                dot += zr[k] * gr[k];
            zg += dot;
        }
        s->zg[(size_t)l * NH + h] += zg;
    }
    for (int n = 0; n < G; n++)
        for (int c = 0; c < C; c++)
            gs[c] += g[(size_t)n * C + c];
    return 0;
}

/* Forward FLOPs of layers from..NL-1 on (B,T), without the unembedding. */
static double layer_flops(const struct gptneox_config *cfg, int B, int T, int from)
{
    double all = gptneox_forward_flops(cfg, B, T) - 2.0 * B * T * cfg->d_model * cfg->vocab_size;
    return all * (cfg->n_layers - from) / cfg->n_layers;
}

/* The group's direct logit attribution: directions from the final residual
 * of its scored rows (a->xs from row a->r0), then every component's share. */
static void group_dla(struct abl *a)
{
    struct gptneox *m = a->m;
    struct abl_set *s = a->s;
    const int C = a->C, NL = a->NL, NH = a->NH, HS = a->HS;
    const int G = a->nb * s->T, base = a->s0 * s->T;
    for (int r = 0; r < a->nr; r++) {
        const int row = s->rows[a->r0 + r];
        const float *x = a->xs + (size_t)(a->r0 + r) * C;
        const float *u = m->unembed + (size_t)s->targets[a->r0 + r] * C;
        float *d = a->dir + (size_t)r * C;
        double mean = 0, var = 0, dm = 0;
        for (int c = 0; c < C; c++)
            mean += x[c];
        mean /= C;
        for (int c = 0; c < C; c++)
            var += (x[c] - mean) * (x[c] - mean);
        double inv = 1.0 / sqrt(var / C + m->cfg.layer_norm_eps);
        for (int c = 0; c < C; c++) {
            double uc = (double)u[c] - a->ubar[c];
            s->final_bias += (double)m->lnf_b[c] * uc;
            d[c] = (float)(m->lnf_w[c] * uc * inv);
            dm += d[c];
        }
        dm /= C;
        for (int c = 0; c < C; c++)
            d[c] = (float)(d[c] - dm);
        /* the embedding: blocks.0.hook_resid_pre */
        const float *x0 = s->res + (size_t)row * C;
        double dot = 0;
        for (int c = 0; c < C; c++)
            dot += (double)x0[c] * d[c];
        s->dla_embed += dot;
    }
    for (int l = 0; l < NL; l++) {
        const float *b = m->layers[l].attn_b;
        for (int r = 0; b && r < a->nr; r++) {
            const float *d = a->dir + (size_t)r * C;
            double dot = 0;
            for (int c = 0; c < C; c++)
                dot += (double)b[c] * d[c];
            s->dla_bias[l] += dot;
        }
        /* heads: g = dir @ W_O; row r of g, sliced by head, dotted with z[h]
         * is the head's term (attention.dense is (C_out, C_in) row-major) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, a->nr, C, C, 1.0f, a->dir, C,
                    m->layers[l].attn_w, C, 0.0f, a->g, C);
        a->flops += 2.0 * a->nr * C * C;
        const float *z = a->zc + (size_t)l * G * C;
        for (int h = 0; h < NH; h++) {
            double sum = 0;
            for (int r = 0; r < a->nr; r++) {
                const float *zr = z + (size_t)(s->rows[a->r0 + r] - base) * C + (size_t)h * HS;
                const float *gr = a->g + (size_t)r * C + (size_t)h * HS;
                float dot = 0;
                for (int k = 0; k < HS; k++)
                    dot += zr[k] * gr[k];
                sum += dot;
            }
            s->dla_head[(size_t)l * NH + h] += sum;
        }
        const float *mo = a->mlp + (size_t)l * a->nr * C;
        double sum = 0;
        for (int r = 0; r < a->nr; r++) {
            const float *x = mo + (size_t)r * C, *d = a->dir + (size_t)r * C;
            double dot = 0;
            for (int c = 0; c < C; c++)
                dot += (double)x[c] * d[c];
            sum += dot;
        }
        s->dla_mlp[l] += sum;
    }
}

/* From the tape's logits, d (set's mean scored loss) / d logits and the
 * backward to hook_z. */
static int group_atp(struct abl *a, struct err *e)
{
    struct abl_set *s = a->s;
    const int V = a->V, G = a->nb * s->T, base = a->s0 * s->T;
    float *lg = gptneox_tape_dlogits(a->tape);
    /* the mean over the group's scored rows, rescaled to the set's mean */
    const int *tgt = s->tgt_full + base;
    if (isnan(gptneox_xent_dlogits(lg, lg, tgt, G, V)))
        return 0; /* no scored row in the group */
    const float w = (float)a->nr / (float)s->nrows;
    for (size_t i = 0; i < (size_t)G * V; i++)
        lg[i] *= w;
    struct gptneox_hook gh = {HOOK_ATTN_Z, -1, grad_hook, a};
    int rc = gptneox_backward(a->m, a->tape, lg, &gh, 1, NULL, e);
    a->flops += gptneox_forward_flops(&a->m->cfg, a->nb, s->T);
    return rc;
}

/* Sequences per group of the clean run: the taped forward's memory. */
static int group_seqs(const struct abl *a, const struct abl_set *s)
{
    if (!a->atp)
        return s->B;
    const double T = s->T, C = a->C, F = a->m->cfg.d_mlp;
    const double per = 4.0 * (T * (a->NL * (8 * C + 2 * F + 4) + 4 * C + a->V) +
                              (double)a->NL * a->NH * T * T);
    int nb = (int)(ABLATION_TAPE_BYTES / per);
    return nb < 1 ? 1 : nb > s->B ? s->B : nb;
}

static int clean_run(struct abl *a, struct abl_set *s, struct err *e)
{
    struct gptneox *m = a->m;
    const int C = a->C, NL = a->NL;
    int rc = 0;
    a->s = s;
    const int per = group_seqs(a, s);
    a->zc = malloc((size_t)NL * per * s->T * C * sizeof *a->zc);
    a->mlp = malloc((size_t)NL * s->nrows * C * sizeof *a->mlp);
    a->dir = malloc((size_t)s->nrows * C * sizeof *a->dir);
    if (!a->zc || !a->mlp || !a->dir)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the clean run's caches");
    struct gptneox_hook h[4] = {{HOOK_RESID_PRE, -1, clean_hook, a},
                                {HOOK_ATTN_Z, -1, clean_hook, a},
                                {HOOK_MLP_OUT, -1, clean_hook, a},
                                {HOOK_RESID_POST, NL - 1, clean_hook, a}};
    a->r0 = 0;
    for (a->s0 = 0; a->s0 < s->B; a->s0 += a->nb) {
        a->nb = s->B - a->s0 < per ? s->B - a->s0 : per;
        const int end = (a->s0 + a->nb) * s->T;
        a->nr = 0;
        while (a->r0 + a->nr < s->nrows && s->rows[a->r0 + a->nr] < end)
            a->nr++;
        const int *tok = s->tok + (size_t)a->s0 * s->T;
        if (a->atp) {
            if ((rc = gptneox_tape_forward(m, a->tape, tok, a->nb, s->T, h, 4, e)) < 0)
                return rc;
            a->flops += gptneox_forward_flops(&m->cfg, a->nb, s->T);
        } else {
            if ((rc = gptneox_forward_until(m, tok, a->nb, s->T, h, 4, NL - 1, e)) < 0)
                return rc;
            a->flops += layer_flops(&m->cfg, a->nb, s->T, 0);
        }
        group_dla(a);
        if (a->atp && (rc = group_atp(a, e)) < 0)
            return rc;
        a->r0 += a->nr;
    }
    for (int l = 0; l < NL; l++)
        for (int c = 0; c < C; c++)
            s->zmean[(size_t)l * C + c] = (float)(s->zsum[(size_t)l * C + c] / s->N);
    const double n = s->nrows;
    s->final_bias /= n;
    s->dla_embed /= n;
    for (int l = 0; l < NL; l++) {
        s->dla_bias[l] /= n;
        s->dla_mlp[l] /= n;
        for (int hh = 0; hh < a->NH; hh++)
            s->dla_head[(size_t)l * a->NH + hh] /= n;
    }
    /* a->xs holds every scored row's final residual: the clean loss as the
     * ablated runs compute theirs (the same products, so an exact delta is
     * the same whichever item computes it, on any kernels) */
    s->clean = scored_loss_rows(a, s, &s->logit_diff);
    if (a->atp) {
        for (int l = 0; l < NL; l++)
            for (int hh = 0; hh < a->NH; hh++) {
                const size_t k = (size_t)l * a->NH + hh;
                const float *zm = s->zmean + (size_t)l * C + (size_t)hh * a->HS;
                const double *gs = s->gsum + (size_t)l * C + (size_t)hh * a->HS;
                double mg = 0;
                for (int q = 0; q < a->HS; q++)
                    mg += zm[q] * gs[q];
                s->est[((size_t)l * 2 + 0) * a->NH + hh] = -s->zg[k];
                s->est[((size_t)l * 2 + 1) * a->NH + hh] = mg - s->zg[k];
            }
    }
    free(a->zc);
    free(a->mlp);
    free(a->dir);
    a->zc = a->mlp = a->dir = NULL;
    return 0;
}

/* ---- ablated runs ---- */

/* hook_z of the ablated layer: copy k of the stacked batch is variant
 * vh[k] = kind * NH + head (kind 0 zero, 1 mean). */
static int ablate_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct abl *a = ctx;
    struct abl_set *s = a->s;
    const int HS = a->HS, C = a->C;
    for (int k = 0; k < a->nv; k++) {
        int h = a->vh[k] % a->NH, mean = a->vh[k] / a->NH;
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
        int h = a->vh[k] % a->NH, mean = a->vh[k] / a->NH;
        double loss = scored_loss(a, s, act->data + (size_t)k * s->N * a->C, NULL);
        s->delta[((size_t)a->layer * 2 + mean) * a->NH + h] = loss - s->clean;
    }
    return 0;
}

/* Run the exact ablation of every variant with sel != 0, layer by layer,
 * stacked up to ABLATION_TOKENS tokens per forward. */
static int ablate_set(struct abl *a, struct abl_set *s, float *stack, struct err *e)
{
    const size_t NC = (size_t)s->N * a->C;
    const int nvar = 2 * a->NH;
    int per = ABLATION_TOKENS / s->N;
    per = per < 1 ? 1 : per > nvar ? nvar : per;
    int *vh = malloc((size_t)nvar * sizeof *vh);
    if (!vh)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    struct gptneox_hook h[2] = {{HOOK_ATTN_Z, 0, ablate_hook, a},
                                {HOOK_RESID_POST, a->NL - 1, loss_hook, a}};
    a->s = s;
    for (int l = 0; l < a->NL; l++) {
        int n = 0;
        for (int v = 0; v < nvar; v++)
            if (s->sel[(size_t)l * nvar + v])
                vh[n++] = v;
        h[0].layer = l;
        a->layer = l;
        for (int v0 = 0; v0 < n; v0 += per) {
            a->vh = vh + v0;
            a->nv = n - v0 < per ? n - v0 : per;
            for (int k = 0; k < a->nv; k++)
                memcpy(stack + k * NC, s->res + l * NC, NC * sizeof(float));
            int rc = gptneox_forward_from(a->m, l, stack, a->nv * s->B, s->T, h, 2,
                                          GPTNEOX_FWD_NO_LOGITS, e);
            if (rc < 0) {
                free(vh);
                return rc;
            }
            a->flops += layer_flops(&a->m->cfg, a->nv * s->B, s->T, l);
        }
    }
    free(vh);
    return 0;
}

/* ---- choosing the heads to ablate exactly ---- */

struct ranked {
    double key; /* |estimate|, +inf when not finite */
    int head;   /* l * NH + h */
};

static int cmp_ranked(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    if (a->key != b->key)
        return a->key < b->key ? 1 : -1; /* larger first */
    return (a->head > b->head) - (a->head < b->head);
}

/* order (NL*NH) = heads by decreasing |v[head]| (v strided: head l*NH+h at
 * v[(l*2 + kind)*NH + h]). */
static void rank_heads(const double *v, int kind, int NL, int NH, struct ranked *order)
{
    for (int l = 0; l < NL; l++)
        for (int h = 0; h < NH; h++) {
            double x = v[((size_t)l * 2 + kind) * NH + h];
            order[l * NH + h] = (struct ranked){isfinite(x) ? fabs(x) : INFINITY, l * NH + h};
        }
    qsort(order, (size_t)NL * NH, sizeof *order, cmp_ranked);
}

/* sel for one kind of one set: top k, a random sample of the rest, or all. */
static int choose(struct abl *a, struct abl_set *s, int idx, int kind, int sweep, uint64_t seed,
                  struct err *e)
{
    const int NL = a->NL, NH = a->NH, n = NL * NH;
    const int k = ABLATION_TOP_K < n ? ABLATION_TOP_K : n;
    struct ranked *order = malloc((size_t)n * sizeof *order);
    if (!order)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    rank_heads(s->est, kind, NL, NH, order);
#define SEL(head) s->sel[((size_t)((head) / NH) * 2 + kind) * NH + (head) % NH]
    for (int i = 0; i < n; i++)
        SEL(order[i].head) = i < k ? 1 : sweep ? 3 : 0;
    /* the heads of largest direct effect on the correct logit: where the
     * loss saturates its gradient vanishes and the estimate misses them */
    for (int i = 0; i < n; i++)
        order[i] = (struct ranked){isfinite(s->dla_head[i]) ? fabs(s->dla_head[i]) : INFINITY, i};
    qsort(order, (size_t)n, sizeof *order, cmp_ranked);
    for (int i = 0, got = 0; i < n && got < ABLATION_TOP_DLA; i++)
        if (SEL(order[i].head) != 1) {
            SEL(order[i].head) = 4;
            got++;
        }
    rank_heads(s->est, kind, NL, NH, order);
    if (!sweep) {
        /* ABLATION_SAMPLE of the n - k others, uniformly (partial Fisher-Yates) */
        uint64_t st = seed ^ ABLATION_SAMPLE_SALT ^ (uint64_t)(idx * 2 + kind);
        int rest = 0;
        for (int i = k; i < n; i++) /* the heads not chosen yet, in rank order */
            if (!SEL(order[i].head))
                order[k + rest++] = order[i];
        int want = ABLATION_SAMPLE < rest ? ABLATION_SAMPLE : rest;
        for (int i = 0; i < want; i++) {
            int j = i + (int)rng_below(&st, (uint32_t)(rest - i));
            struct ranked t = order[k + i];
            order[k + i] = order[k + j];
            order[k + j] = t;
            SEL(order[k + i].head) = 2;
        }
    }
#undef SEL
    free(order);
    return 0;
}

/* ---- rows ---- */

static int emit_dla(const struct abl *a, const struct abl_set *s, int idx, struct rows *out,
                    struct err *e)
{
    int rc;
    for (int l = 0; l < a->NL; l++)
        for (int h = 0; h < a->NH; h++)
            if ((rc = rows_add(out, "dla_head", l, h, idx, s->dla_head[(size_t)l * a->NH + h], e)) < 0)
                return rc;
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

/* ablation_exact v1's rows, in v1's order. */
static int emit_exact(const struct abl *a, const struct abl_set *s, int idx, struct rows *out,
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

/* ablation v4's rows (v2's). */
static int emit_atp(const struct abl *a, const struct abl_set *s, int idx, int sweep,
                    struct rows *out, struct err *e)
{
    static const char *const est_m[2] = {"zero_ablation_estimate", "mean_ablation_estimate"};
    static const char *const del_m[2] = {"zero_ablation_delta", "mean_ablation_delta"};
    static const char *const err_m[2] = {"zero_ablation_error", "mean_ablation_error"};
    static const char *const sel_m[2] = {"zero_ablation_selection", "mean_ablation_selection"};
    static const char *const mae_m[2] = {"zero_ablation_sample_mae", "mean_ablation_sample_mae"};
    static const char *const rec_m[2] = {"zero_ablation_topk_recall", "mean_ablation_topk_recall"};
    const int NL = a->NL, NH = a->NH, n = NL * NH;
    int rc;
    if ((rc = rows_add(out, "clean_loss", -1, -1, idx, s->clean, e)) < 0)
        return rc;
    for (int kind = 0; kind < 2; kind++) {
        double mae = 0;
        int nmae = 0;
        for (int l = 0; l < NL; l++)
            for (int h = 0; h < NH; h++) {
                const size_t q = ((size_t)l * 2 + kind) * NH + h;
                if ((rc = rows_add(out, est_m[kind], l, h, idx, s->est[q], e)) < 0)
                    return rc;
                if (!s->sel[q])
                    continue;
                const double err = s->est[q] - s->delta[q];
                if ((rc = rows_add(out, del_m[kind], l, h, idx, s->delta[q], e)) < 0 ||
                    (rc = rows_add(out, err_m[kind], l, h, idx, err, e)) < 0 ||
                    (rc = rows_add(out, sel_m[kind], l, h, idx, s->sel[q], e)) < 0)
                    return rc;
                if (s->sel[q] == 2 || s->sel[q] == 3) {
                    mae += fabs(err);
                    nmae++;
                }
            }
        if (nmae && (rc = rows_add(out, mae_m[kind], -1, -1, idx, mae / nmae, e)) < 0)
            return rc;
        if (sweep) {
            const int k = ABLATION_TOP_K < n ? ABLATION_TOP_K : n;
            struct ranked *order = malloc((size_t)n * sizeof *order);
            if (!order)
                return err_set(e, ERR_NOMEM, NULL, "out of memory");
            rank_heads(s->delta, kind, NL, NH, order);
            int hit = 0;
            for (int i = 0; i < k; i++) {
                const int hh = order[i].head;
                hit += s->sel[((size_t)(hh / NH) * 2 + kind) * NH + hh % NH] == 1;
            }
            free(order);
            if ((rc = rows_add(out, rec_m[kind], -1, -1, idx, (double)hit / k, e)) < 0)
                return rc;
        }
    }
    return emit_dla(a, s, idx, out, e);
}

/* ---- the items ---- */

static void set_free(struct abl_set *s)
{
    free(s->rows);
    free(s->targets);
    free(s->tgt_full);
    free(s->res);
    free(s->zmean);
    free(s->zsum);
    free(s->dla_head);
    free(s->dla_mlp);
    free(s->dla_bias);
    free(s->zg);
    free(s->gsum);
    free(s->est);
    free(s->delta);
    free(s->sel);
}

static int set_alloc(struct abl_set *s, const struct abl *a)
{
    size_t NC = (size_t)s->N * a->C, nlh = (size_t)a->NL * a->NH;
    s->rows = malloc((size_t)s->N * sizeof *s->rows);
    s->targets = malloc((size_t)s->N * sizeof *s->targets);
    s->tgt_full = malloc((size_t)s->N * sizeof *s->tgt_full);
    s->res = malloc((size_t)a->NL * NC * sizeof *s->res);
    s->zmean = malloc((size_t)a->NL * a->C * sizeof *s->zmean);
    s->zsum = calloc((size_t)a->NL * a->C, sizeof *s->zsum);
    s->dla_head = calloc(nlh, sizeof *s->dla_head);
    s->dla_mlp = calloc((size_t)a->NL, sizeof *s->dla_mlp);
    s->dla_bias = calloc((size_t)a->NL, sizeof *s->dla_bias);
    s->zg = calloc(nlh, sizeof *s->zg);
    s->gsum = calloc((size_t)a->NL * a->C, sizeof *s->gsum);
    s->est = calloc(2 * nlh, sizeof *s->est);
    s->delta = malloc(2 * nlh * sizeof *s->delta);
    s->sel = calloc(2 * nlh, sizeof *s->sel);
    if (!(s->rows && s->targets && s->tgt_full && s->res && s->zmean && s->zsum && s->dla_head &&
          s->dla_mlp && s->dla_bias && s->zg && s->gsum && s->est && s->delta && s->sel))
        return ERR_NOMEM;
    for (size_t i = 0; i < 2 * nlh; i++)
        s->delta[i] = NAN;
    return 0;
}

/* Scored rows: every prediction (rep_L 0) or the second copy's R[1..L-1]. */
static void set_rows(struct abl_set *s, int rep_L)
{
    s->nrows = 0;
    for (int n = 0; n < s->N; n++)
        s->tgt_full[n] = -1;
    for (int b = 0; b < s->B; b++)
        for (int t = 0; t + 1 < s->T; t++) {
            int j2 = t - rep_L; /* row L+j predicts R[j] of the second copy */
            if (rep_L && !(j2 >= 1 && j2 <= rep_L - 1))
                continue;
            s->rows[s->nrows] = b * s->T + t;
            s->targets[s->nrows++] = s->tgt_full[b * s->T + t] = s->tok[(size_t)b * s->T + t + 1];
        }
}

/* Both items: atp 1 is ablation v4, 0 ablation_exact v1. */
static int ablation_common(const struct battery_ctx *c, int atp, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const struct gptneox_config *cfg = &m->cfg;
    const int C = cfg->d_model, V = cfg->vocab_size;
    int rc0 = battery_check_eval(c, e);
    if (rc0 < 0)
        return rc0;
    struct abl a = {.m = m, .NL = cfg->n_layers, .NH = cfg->n_heads, .HS = cfg->d_head,
                    .C = C, .V = V, .atp = atp};
    struct abl_set sets[2] = {{0}, {0}};
    int *rep = NULL, RB, RT, L, rc;
    float *stack = NULL;
    const int sweep = atp && c->full_sweep;
    if ((rc = battery_repeated_tokens(&rep, &RB, &RT, &L, V, cfg->max_positions, c->seed, e)) < 0)
        return rc;
    sets[0].tok = c->eval_tokens;
    sets[0].B = atp ? ablation_seqs(c->eval_B, c->eval_T)
                    : c->eval_B < ABLATION_EVAL_SEQS ? c->eval_B : ABLATION_EVAL_SEQS;
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
    a.g = malloc(maxN * C * sizeof *a.g);
    a.logits = malloc((size_t)ABLATION_LOGIT_ROWS * V * sizeof *a.logits);
    a.losses = malloc(ABLATION_LOGIT_ROWS * sizeof *a.losses);
    a.ubar = malloc((size_t)C * sizeof *a.ubar);
    stack = malloc(maxstack * C * sizeof *stack);
    if (!a.xs || !a.g || !a.logits || !a.losses || !a.ubar || !stack) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for the ablation buffers");
        goto out;
    }
    if (atp && (rc = gptneox_tape_create(&a.tape, e)) < 0)
        goto out;
    for (int ch = 0; ch < C; ch++) {
        double sum = 0;
        for (int v = 0; v < V; v++)
            sum += m->unembed[(size_t)v * C + ch];
        a.ubar[ch] = (float)(sum / V);
    }
    double unit = 0;
    int exact = 0;
    for (int i = 0; i < 2; i++) {
        struct abl_set *s = &sets[i];
        unit += gptneox_forward_flops(cfg, s->B, s->T);
        if ((rc = clean_run(&a, s, e)) < 0)
            goto out;
        if (atp) {
            for (int kind = 0; kind < 2; kind++)
                if ((rc = choose(&a, s, i, kind, sweep, c->seed, e)) < 0)
                    goto out;
        } else {
            memset(s->sel, 1, (size_t)2 * a.NL * a.NH);
        }
        for (size_t q = 0; q < (size_t)2 * a.NL * a.NH; q++)
            exact += s->sel[q] != 0;
        if ((rc = ablate_set(&a, s, stack, e)) < 0)
            goto out;
    }
    log_info("ablation cost", "forward_equivalents=%.1f eval_seqs=%d repeated_seqs=%d "
             "exact_variants=%d of %d%s", a.flops / unit, sets[0].B, sets[1].B, exact,
             4 * a.NL * a.NH, sweep ? " full_sweep=1" : "");
    for (int i = 0; i < 2; i++)
        if ((rc = atp ? emit_atp(&a, &sets[i], i, sweep, out, e)
                      : emit_exact(&a, &sets[i], i, out, e)) < 0)
            goto out;
out:
    gptneox_tape_free(a.tape);
    free(stack);
    free(a.zc);
    free(a.mlp);
    free(a.dir);
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

static int ablation_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    return ablation_common(c, 1, out, e);
}

static int ablation_exact_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    return ablation_common(c, 0, out, e);
}

const struct battery_item battery_item_ablation = {
    .name = "ablation",
    .version = 4,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = ablation_metrics,
    .nmetrics = sizeof ablation_metrics / sizeof *ablation_metrics,
    .run = ablation_run,
};

const struct battery_item battery_item_ablation_exact = {
    .name = "ablation_exact",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = exact_metrics,
    .nmetrics = sizeof exact_metrics / sizeof *exact_metrics,
    .run = ablation_exact_run,
    .opt_in = 1,
};
