/* lens v1: the logit lens on the eval token set.
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
 *                   z_lens,v) + lse(z_lens) - lse(z_final), so identical
 *                   logits give exactly 0 (rounding can leave a value a few
 *                   ulp below 0 otherwise)
 *   lens_top1_agreement  fraction of positions (all b, t) whose lensed argmax
 *                   equals the final argmax (first index among equal maxima)
 *
 * Cost and memory: the eval set is run LENS_BATCH_TOKENS tokens at a time
 * (whole sequences, at least one); each forward caches every layer's
 * residual stream ((L+1) x tokens x C floats).  The lensed logits are then
 * computed LENS_GEMM_ROWS (layer, token) rows per sgemm: a chunk of tokens
 * is LayerNormed for every layer, stacked, and multiplied by the
 * unembedding in one cblas_sgemm, so the (V x C) unembedding is streamed
 * once per chunk, not once per layer.  Sums are in double in a fixed order
 * (batches, chunks, tokens), so the same inputs give the same bits. */
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
     "the eval set", LENS_LAYER_MEANING, "", ""},
    {"lens_kl", "nats", "logit lens: KL(final || lensed), the KL divergence of the lensed "
     "next-token distribution from the model's final one, sum_v p_final log(p_final / "
     "p_lens), averaged over every position of the eval set", LENS_LAYER_MEANING, "", ""},
    {"lens_top1_agreement", "fraction", "logit lens: fraction of eval positions whose lensed "
     "top-1 token equals the model's final top-1 token", LENS_LAYER_MEANING, "", ""},
};

/* Caches every hooked residual stream of one forward: slot 0 hook_embed,
 * slot l+1 blocks.l.hook_resid_post; each (N,C). */
struct lens_cache {
    float *resid; /* (L+1, N, C) */
    size_t stride; /* N*C */
};

static int cache_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct lens_cache *c = ctx;
    int slot = act->kind == HOOK_EMBED ? 0 : act->layer + 1;
    memcpy(c->resid + (size_t)slot * c->stride, act->data, act->n * sizeof(float));
    return 0;
}

static int check_eval(const struct battery_ctx *c, struct err *e)
{
    return battery_check_eval(c, e);
}

static int lens_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const struct gptneox_config *cfg = &m->cfg;
    const int B = c->eval_B, T = c->eval_T, V = cfg->vocab_size, C = cfg->d_model;
    const int NL = cfg->n_layers, S = NL + 1; /* lensed slots: embed + every layer */
    const float eps = (float)cfg->layer_norm_eps;
    int rc = check_eval(c, e);
    if (rc < 0)
        return rc;

    const int nb_max = T >= LENS_BATCH_TOKENS ? 1 : LENS_BATCH_TOKENS / T;
    const int nb_alloc = nb_max < B ? nb_max : B;
    const size_t Nmax = (size_t)nb_alloc * T;
    int R = LENS_GEMM_ROWS / S; /* tokens per sgemm chunk */
    R = R < 1 ? 1 : R;
    R = (size_t)R > Nmax ? (int)Nmax : R;

    struct lens_cache cache = {.resid = NULL, .stride = Nmax * C};
    float *ln = NULL, *z = NULL, *pf = NULL;
    double *lse_f = NULL, *loss = NULL, *kl = NULL;
    long *agree = NULL;
    int *arg_f = NULL;
    cache.resid = malloc((size_t)S * Nmax * C * sizeof(float));
    ln = malloc((size_t)S * R * C * sizeof *ln);
    z = malloc((size_t)S * R * V * sizeof *z);
    pf = malloc((size_t)R * V * sizeof *pf);
    lse_f = malloc((size_t)R * sizeof *lse_f);
    arg_f = malloc((size_t)R * sizeof *arg_f);
    loss = calloc((size_t)S, sizeof *loss);
    kl = calloc((size_t)S, sizeof *kl);
    agree = calloc((size_t)S, sizeof *agree);
    if (!cache.resid || !ln || !z || !pf || !lse_f || !arg_f || !loss || !kl || !agree) {
        rc = err_set(e, ERR_NOMEM, NULL,
                     "out of memory for the lens buffers (%d layers, %zu tokens, %d rows of %d "
                     "logits)",
                     S, Nmax, S * R, V);
        goto out;
    }
    const struct gptneox_hook hooks[2] = {{HOOK_EMBED, -1, cache_hook, &cache},
                                          {HOOK_RESID_POST, -1, cache_hook, &cache}};
    for (int b0 = 0; b0 < B; b0 += nb_max) {
        const int nb = B - b0 < nb_max ? B - b0 : nb_max;
        const int N = nb * T;
        const int *tok = c->eval_tokens + (size_t)b0 * T;
        cache.stride = (size_t)N * C;
        if ((rc = gptneox_forward(m, tok, nb, T, hooks, 2, e)) < 0)
            goto out;
        const float *logits = gptneox_logits(m);
        for (int n0 = 0; n0 < N; n0 += R) {
            const int r = N - n0 < R ? N - n0 : R;
            /* the final distribution of these tokens */
            for (int i = 0; i < r; i++) {
                const float *zf = logits + (size_t)(n0 + i) * V;
                float *p = pf + (size_t)i * V;
                lse_f[i] = logsumexp_row(zf, V, &arg_f[i]);
                const float shift = (float)lse_f[i];
                for (int v = 0; v < V; v++)
                    p[v] = zf[v] - shift;
                vexp(p, p, (size_t)V);
            }
            /* every slot's lensed logits in one sgemm: rows (slot, token) */
            for (int s = 0; s < S; s++)
                layernorm_forward(ln + (size_t)s * r * C,
                                  cache.resid + (size_t)s * cache.stride + (size_t)n0 * C,
                                  m->lnf_w, m->lnf_b, r, C, eps);
            matmul_forward(z, ln, m->unembed, NULL, S * r, C, V);
            for (int s = 0; s < S; s++)
                for (int i = 0; i < r; i++) {
                    const int n = n0 + i, t = n % T;
                    const float *zl = z + ((size_t)s * r + i) * V;
                    const float *zf = logits + (size_t)n * V;
                    int arg_l;
                    double lse_l = logsumexp_row(zl, V, &arg_l);
                    if (t + 1 < T)
                        loss[s] += lse_l - zl[tok[n + 1]];
                    kl[s] += dot_diff_row(pf + (size_t)i * V, zf, zl, V) + lse_l - lse_f[i];
                    agree[s] += arg_l == arg_f[i];
                }
        }
    }
    const double npred = (double)B * (T - 1), npos = (double)B * T;
    for (int s = 0; s < S && rc == 0; s++)
        if ((rc = rows_add(out, "lens_loss", s - 1, -1, -1, loss[s] / npred, e)) < 0 ||
            (rc = rows_add(out, "lens_kl", s - 1, -1, -1, kl[s] / npos, e)) < 0 ||
            (rc = rows_add(out, "lens_top1_agreement", s - 1, -1, -1, (double)agree[s] / npos,
                           e)) < 0)
            break;
out:
    free(agree);
    free(kl);
    free(loss);
    free(arg_f);
    free(lse_f);
    free(pf);
    free(z);
    free(ln);
    free(cache.resid);
    return rc;
}

const struct battery_item battery_item_lens = {
    .name = "lens",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS),
    .metrics = lens_metrics,
    .nmetrics = sizeof lens_metrics / sizeof *lens_metrics,
    .run = lens_run,
};
