/* lens v3: the logit lens on the first sequences of the eval token set.
 *
 * Definition (nostalgebraist 2020, "interpreting GPT: the logit lens"; as
 * TransformerLens applies it with `cache.accumulated_resid(...,
 * apply_ln=True)` followed by the unembedding): the residual stream after
 * a layer is decoded as if it were the last one, through the model's own
 * final LayerNorm (weight and bias) and unembedding,
 *
 *     lens_l(x) = embed_out . ln_f(resid_l(x))
 *
 * where resid_l is blocks.l.hook_resid_post for l = 0 .. L-1, and, as
 * "layer -1", hook_embed (the token embedding, which is
 * blocks.0.hook_resid_pre in GPT-NeoX: it has no positional embedding).
 * At l = L-1 the lens is the model's own output.  Per lensed layer:
 *
 *   lens_loss       mean over every predicted token (b, t < T-1) of
 *                   -log softmax(lens_l)[x[t+1]], nats: the `loss` item's
 *                   definition on lensed logits
 *   lens_kl         mean over every position (b, t <= T-1) of
 *                   KL(P_final || P_lens) = sum_v p_final,v (log p_final,v -
 *                   log p_lens,v), nats; P_final is softmax of the model's
 *                   logits.  Computed as sum_v p_final,v (z_final,v -
 *                   z_lens,v) + lse(z_lens) - lse(z_final)
 *   lens_top1_agreement  fraction of positions (all b, t) whose lensed argmax
 *                   equals the final argmax (first index among equal maxima)
 *
 * Cost and memory.  The residual streams come from the eval set's shared
 * forward (evalpass.h), cached per batch of EVALPASS_SEQS sequences
 * (n_layers x tokens x C floats; the last layer is not cached: its lens is
 * the forward's own logits, which give lens_loss directly, lens_kl 0 and
 * agreement 1 exactly).  The other layers are decoded in chunks of tokens,
 * every layer of a chunk at once: the chunk is LayerNormed for each layer,
 * stacked into LENS_GEMM_ROWS (layer, token) rows, and multiplied by the
 * unembedding one tile of LENS_VOCAB_TILE vocabulary rows at a time; each
 * tile of logits is reduced while it is still in cache (a running maximum
 * and sum of exponentials, the argmax, the target's logit, and the KL's
 * sum against the final distribution's tile), so no (tokens x V) logits
 * are ever written per layer.  FLOPs: (n_layers - 1 + 1) unembeddings of
 * the eval set, i.e. one per lensed layer beyond the forward's own.
 * Sums are in double in a fixed order (batches, chunks, tiles, tokens), so
 * the same inputs give the same bits.
 *
 * Version 3 (from v2): the lens is taken on the first lens_seqs(B, T)
 * sequences of the eval set (battery.h: the fewest whole sequences
 * holding LENS_TOKENS = 2048 tokens, every sequence of a smaller set), not
 * on all of them: the unembeddings were most of the battery's work beside
 * the forward (13 of them for pythia-160m over 16 x 512 tokens).  The
 * definition per position is v2's; the means are over fewer positions, so
 * on a set larger than LENS_TOKENS the values move (the default 16 x 128
 * set is lensed whole, as before).  The rows equal v2's computed on an
 * eval set of only those sequences (tests/test_battery.c).
 *
 * Version 2 (from v1): the last layer is read from the forward's logits
 * rather than lensed again (its lens_kl is now exactly 0, agreement exactly
 * 1, lens_loss the `loss` item's tokens' mean), and the logsumexp runs
 * over vocabulary tiles with a running maximum: values move by float
 * rounding (~1e-7 nats), within the golden tolerance of 1e-5. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/battery/battery.h"
#include "workers/model/kernels.h"

#define LENS_LAYER_MEANING \
    "layer l: the residual stream after block l (blocks.l.hook_resid_post); -1: the " \
    "token embedding (hook_embed = blocks.0.hook_resid_pre); l = n_layers-1 is the " \
    "model's own output"

static const struct metric_def lens_metrics[] = {
    {"lens_loss", "nats", "logit lens: mean next-token cross-entropy of the final LayerNorm "
     "and unembedding applied to one layer's residual stream, over every predicted token of "
     "the eval set's first sequences (at least 2048 tokens)", LENS_LAYER_MEANING, "", ""},
    {"lens_kl", "nats", "logit lens: KL(final || lensed), the KL divergence of the lensed "
     "next-token distribution from the model's final one, sum_v p_final log(p_final / "
     "p_lens), averaged over every position of the eval set's first sequences (at least 2048 "
     "tokens)", LENS_LAYER_MEANING, "", ""},
    {"lens_top1_agreement", "fraction", "logit lens: fraction of the positions of the eval "
     "set's first sequences (at least 2048 tokens) whose lensed top-1 token equals the model's "
     "final top-1 token", LENS_LAYER_MEANING, "", ""},
};

/* The pass's part: the cached residual streams of the current batch and
 * the sums over every batch. */
struct lens_state {
    const struct gptneox *m;
    int NL, S;     /* layers; lensed slots from the cache (embed + layers 0..NL-2) = NL */
    int R;         /* tokens per chunk (S*R <= LENS_GEMM_ROWS, at least 1) */
    int nseq;      /* sequences lensed: the first lens_seqs(B, T) */
    size_t stride; /* floats of one slot of the cache: N*C of the current batch */
    float *resid;  /* (S, EVALPASS_SEQS*T, C): slot 0 hook_embed, s: blocks.(s-1).hook_resid_post */
    float *ln;     /* (S*R, C) */
    float *z;      /* (S*R, LENS_VOCAB_TILE) one tile of lensed logits */
    float *pf;     /* (R, LENS_VOCAB_TILE) the final distribution's tile */
    float *buf;    /* (LENS_VOCAB_TILE) scratch */
    double *lse_f; /* (R) */
    int *arg_f;    /* (R) */
    float *mx;     /* (S*R) running maximum of a lensed row */
    double *sum;   /* (S*R) running sum of exp(z - mx) */
    int *arg;      /* (S*R) */
    float *tgt;    /* (S*R) the target's lensed logit */
    double *dot;   /* (S*R) sum_v p_final,v (z_final,v - z_lens,v) */
    double *loss, *kl; /* (NL+1) per layer slot, layer = slot - 1 */
    long *agree;       /* (NL+1) */
};

static void lens_state_free(void *p)
{
    struct lens_state *s = p;
    if (!s)
        return;
    free(s->resid);
    free(s->ln);
    free(s->z);
    free(s->pf);
    free(s->buf);
    free(s->lse_f);
    free(s->arg_f);
    free(s->mx);
    free(s->sum);
    free(s->arg);
    free(s->tgt);
    free(s->dot);
    free(s->loss);
    free(s->kl);
    free(s->agree);
    free(s);
}

/* hook_embed -> slot 0, blocks.l.hook_resid_post -> slot l+1 (not the last). */
static int cache_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct lens_state *s = ctx;
    int slot = act->kind == HOOK_EMBED ? 0 : act->layer + 1;
    if (slot >= s->S)
        return 0;
    s->stride = act->n;
    memcpy(s->resid + (size_t)slot * s->stride, act->data, act->n * sizeof(float));
    return 0;
}

/* The reductions below are compiled for several instruction sets, the
 * best chosen at load time (as in model/kernels.c), and keep 16 partial
 * results so they vectorise without reassociation flags. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX512F__)
#define LENS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LENS_CLONES
#endif

LENS_CLONES static float tile_max(const float *z, int n)
{
    float acc[16];
    for (int q = 0; q < 16; q++)
        acc[q] = -INFINITY;
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int q = 0; q < 16; q++)
            acc[q] = z[j + q] > acc[q] ? z[j + q] : acc[q];
    float mx = -INFINITY;
    for (; j < n; j++)
        mx = z[j] > mx ? z[j] : mx;
    for (int q = 0; q < 16; q++)
        mx = acc[q] > mx ? acc[q] : mx;
    return mx;
}

/* buf (n) = z (n) - m */
LENS_CLONES static void tile_shift(float *buf, const float *z, int n, float m)
{
    for (int j = 0; j < n; j++)
        buf[j] = z[j] - m;
}

LENS_CLONES static double tile_sum(const float *x, int n)
{
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int q = 0; q < 16; q++)
            acc[q] += x[j + q];
    double sum = 0.0;
    for (; j < n; j++)
        sum += x[j];
    for (int q = 0; q < 16; q++)
        sum += acc[q];
    return sum;
}

/* Reduce one tile (n values from vocabulary index v0) of lensed row k: the
 * running maximum (its first index: a later tile replaces it only when
 * strictly larger), the sum of exp(z - max) rescaled when the maximum
 * moves, the target's logit when it is in the tile, and sum p_f (z_f - z)
 * against the final distribution's tile pf and logits zf. */
static void tile_row(struct lens_state *s, int k, const float *z, int n, int v0, int target,
                     const float *pf, const float *zf)
{
    const float tmax = tile_max(z, n);
    if (tmax > s->mx[k]) {
        int j = 0;
        while (j < n - 1 && !(z[j] == tmax))
            j++;
        s->sum[k] *= exp((double)s->mx[k] - tmax);
        s->mx[k] = tmax;
        s->arg[k] = v0 + j;
    }
    tile_shift(s->buf, z, n, s->mx[k]);
    vexp(s->buf, s->buf, (size_t)n);
    s->sum[k] += tile_sum(s->buf, n);
    if (target >= v0 && target < v0 + n)
        s->tgt[k] = z[target - v0];
    s->dot[k] += dot_diff_row(pf, zf, z, n);
}

/* After each batch's forward: every lensed layer of every token. */
static int lens_batch(void *state, const struct evalpass_batch *b, struct err *e)
{
    (void)e;
    struct lens_state *s = state;
    const struct gptneox *m = s->m;
    if (b->b0 >= s->nseq)
        return 0; /* beyond the lensed sequences */
    const int nb = b->nb < s->nseq - b->b0 ? b->nb : s->nseq - b->b0;
    const int T = b->T, N = nb * T, C = m->cfg.d_model, V = m->cfg.vocab_size;
    const int S = s->S, NL = s->NL;
    const float eps = (float)m->cfg.layer_norm_eps;
    const int *tok = b->tokens;
    for (int n0 = 0; n0 < N; n0 += s->R) {
        const int r = N - n0 < s->R ? N - n0 : s->R;
        /* the final distribution: the last layer's lens is the model */
        for (int i = 0; i < r; i++) {
            const int n = n0 + i, t = n % T;
            const float *zf = b->logits + (size_t)n * V;
            s->lse_f[i] = logsumexp_row(zf, V, &s->arg_f[i]);
            if (t + 1 < T)
                s->loss[NL] += s->lse_f[i] - zf[tok[n + 1]];
            s->agree[NL]++;
        }
        for (int sl = 0; sl < S; sl++)
            layernorm_forward(s->ln + (size_t)sl * r * C,
                              s->resid + (size_t)sl * s->stride + (size_t)n0 * C, m->lnf_w,
                              m->lnf_b, r, C, eps);
        for (int k = 0; k < S * r; k++) {
            s->mx[k] = -INFINITY;
            s->sum[k] = 0.0;
            s->arg[k] = 0;
            s->tgt[k] = 0.0f;
            s->dot[k] = 0.0;
        }
        for (int v0 = 0; v0 < V; v0 += LENS_VOCAB_TILE) {
            const int vt = V - v0 < LENS_VOCAB_TILE ? V - v0 : LENS_VOCAB_TILE;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S * r, vt, C, 1.0f, s->ln, C,
                        m->unembed + (size_t)v0 * C, C, 0.0f, s->z, vt);
            for (int i = 0; i < r; i++) {
                const float *zf = b->logits + (size_t)(n0 + i) * V + v0;
                float *p = s->pf + (size_t)i * vt;
                tile_shift(p, zf, vt, (float)s->lse_f[i]);
                vexp(p, p, (size_t)vt);
            }
            for (int sl = 0; sl < S; sl++)
                for (int i = 0; i < r; i++) {
                    const int n = n0 + i, t = n % T;
                    tile_row(s, sl * r + i, s->z + ((size_t)sl * r + i) * vt, vt, v0,
                             t + 1 < T ? tok[n + 1] : -1, s->pf + (size_t)i * vt,
                             b->logits + (size_t)n * V + v0);
                }
        }
        for (int sl = 0; sl < S; sl++)
            for (int i = 0; i < r; i++) {
                const int k = sl * r + i, n = n0 + i, t = n % T;
                const double lse_l = s->mx[k] + log(s->sum[k]);
                if (t + 1 < T)
                    s->loss[sl] += lse_l - s->tgt[k];
                s->kl[sl] += s->dot[k] + lse_l - s->lse_f[i];
                s->agree[sl] += s->arg[k] == s->arg_f[i];
            }
    }
    return 0;
}

static int lens_attach(const struct battery_ctx *c, struct evalpass *p, struct err *e)
{
    const struct gptneox_config *cfg = &c->model->cfg;
    int rc = battery_check_eval(c, e);
    if (rc < 0)
        return rc;
    const int T = c->eval_T, C = cfg->d_model, NL = cfg->n_layers, S = NL;
    const int nb = c->eval_B < EVALPASS_SEQS ? c->eval_B : EVALPASS_SEQS;
    const size_t Nmax = (size_t)nb * T;
    int R = LENS_GEMM_ROWS / S;
    R = R < 1 ? 1 : R;
    R = (size_t)R > Nmax ? (int)Nmax : R;
    const size_t rows = (size_t)S * R, VT = LENS_VOCAB_TILE;
    struct lens_state *s = calloc(1, sizeof *s);
    if (!s)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    s->m = c->model;
    s->NL = NL;
    s->S = S;
    s->R = R;
    s->nseq = lens_seqs(c->eval_B, T);
    s->resid = malloc((size_t)S * Nmax * C * sizeof *s->resid);
    s->ln = malloc(rows * C * sizeof *s->ln);
    s->z = malloc(rows * VT * sizeof *s->z);
    s->pf = malloc((size_t)R * VT * sizeof *s->pf);
    s->buf = malloc(VT * sizeof *s->buf);
    s->lse_f = malloc((size_t)R * sizeof *s->lse_f);
    s->arg_f = malloc((size_t)R * sizeof *s->arg_f);
    s->mx = malloc(rows * sizeof *s->mx);
    s->sum = malloc(rows * sizeof *s->sum);
    s->arg = malloc(rows * sizeof *s->arg);
    s->tgt = malloc(rows * sizeof *s->tgt);
    s->dot = malloc(rows * sizeof *s->dot);
    s->loss = calloc((size_t)NL + 1, sizeof *s->loss);
    s->kl = calloc((size_t)NL + 1, sizeof *s->kl);
    s->agree = calloc((size_t)NL + 1, sizeof *s->agree);
    if (!s->resid || !s->ln || !s->z || !s->pf || !s->buf || !s->lse_f || !s->arg_f || !s->mx ||
        !s->sum || !s->arg || !s->tgt || !s->dot || !s->loss || !s->kl || !s->agree) {
        lens_state_free(s);
        return err_set(e, ERR_NOMEM, NULL,
                       "out of memory for the lens buffers (%d layers, %zu tokens, %zu rows of "
                       "%zu logits)",
                       S, Nmax, rows, VT);
    }
    const struct gptneox_hook hooks[2] = {{HOOK_EMBED, -1, cache_hook, s},
                                          {HOOK_RESID_POST, -1, cache_hook, s}};
    struct evalpass_consumer k = {.name = "lens", .hooks = hooks, .nhooks = 2,
                                  .needs_logits = 1, .done = lens_batch, .state = s,
                                  .state_free = lens_state_free};
    return evalpass_add(p, &k, e);
}

static int lens_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    const struct lens_state *s = evalpass_state(c->pass, "lens", e);
    if (!s)
        return e ? e->code : ERR_INVALID;
    const int B = s->nseq, T = c->eval_T;
    const double npred = (double)B * (T - 1), npos = (double)B * T;
    int rc = 0;
    for (int sl = 0; sl <= s->NL && rc == 0; sl++)
        if ((rc = rows_add(out, "lens_loss", sl - 1, -1, -1, s->loss[sl] / npred, e)) < 0 ||
            (rc = rows_add(out, "lens_kl", sl - 1, -1, -1, s->kl[sl] / npos, e)) < 0 ||
            (rc = rows_add(out, "lens_top1_agreement", sl - 1, -1, -1,
                           (double)s->agree[sl] / npos, e)) < 0)
            break;
    return rc;
}

const struct battery_item battery_item_lens = {
    .name = "lens",
    .version = 3,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = lens_metrics,
    .nmetrics = sizeof lens_metrics / sizeof *lens_metrics,
    .run = lens_run,
    .attach = lens_attach,
};
