/* sae_fixed v1: fixed SAE dictionaries followed through training.
 *
 * A released dictionary (a SAELens 6 or pre-6.0 directory, or a sparsify
 * hookpoint folder; sae_file.h) is usually trained on the final model.
 * Applied unchanged at its hook at every checkpoint of a run, its features'
 * densities trace when each direction appears in the model's activations:
 * a feature is "born" at the first step its density rises above a
 * threshold (the views of schema/008_sae_fixed.sql).  The dictionaries are
 * ctx.sae_fixed_dirs (`analyze --sae DIR`, repeatable; the run's
 * "sae_fixed" option under ckptd), at most SAE_FIXED_MAX.
 *
 * Each dictionary's hook is its files' (metadata.hook_name, or sparsify's
 * folder name), one of the hooks sae_splice_width accepts, and its d_in
 * must be that hook's width (attn.hook_z: the heads side by side, as
 * SAELens's hook_z reshape flattens them).  All are checked before any
 * forward; an error names the directory.  A dictionary whose
 * metadata.model_name differs from the run's is used with a warning.
 *
 * Definitions, on every token of the eval set (no split: nothing is
 * trained), with z the codes the dictionary computes from the raw
 * activation x (the units SAELens reports for the same files):
 *   feature_density          idx i: fraction of tokens with z_i > 0
 *   feature_mean_activation  idx i: mean z_i over those tokens (0 if none)
 *   fvu                      sum_t ||x_t - xhat_t||^2 / sum_t ||x_t - mean(x)||^2
 *   explained_variance       1 - fvu
 *   l0                       mean number of latents with z > 0 per token
 *   inactive_fraction        fraction of latents never active
 *   density_histogram        idx bin of log10 density (sae_density_bin,
 *                            the `sae` item's bins), value the fraction of
 *                            latents
 *   ce_clean, ce_spliced, ce_zero_ablated, loss_recovered, kl_spliced
 *                            sae_splice_eval on every eval sequence: the
 *                            model as it is, with x replaced by the
 *                            reconstruction, with x zeroed
 * Rows: layer = the hook's layer (-1 for hook_embed), head = the
 * dictionary's position in the list (0-based), so two dictionaries of one
 * layer (a residual-stream and an MLP-output one, or two widths at one
 * hook) stay apart.
 *
 * Cost: one forward of the eval set up to the deepest hook, every
 * dictionary encoding and decoding its activations inside its read hook
 * (SAE_RECON_ROWS rows per sgemm, in one scratch sized for the widest
 * dictionary: the hooks run one at a time), then three forwards of the
 * eval set per dictionary for the splice.  The variance is accumulated about the first
 * token (shifted sums in double), so nothing is kept across batches but
 * the per-latent counts and sums. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"

#define FIXED_LAYER_MEANING "the dictionary's hook: blocks.L.<hook>, -1 for hook_embed"
#define FIXED_HEAD_MEANING "the dictionary's position in the --sae list (0-based)"

static const struct metric_def fixed_metrics[] = {
    {"feature_density", "fraction", "fraction of eval tokens on which the fixed feature is active",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, "feature of the fixed dictionary"},
    {"feature_mean_activation", "activation",
     "mean activation of the fixed feature over the eval tokens where it is active, in the "
     "units the dictionary's files compute (0 if never active)",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, "feature of the fixed dictionary"},
    {"fvu", "fraction",
     "fraction of variance unexplained by the fixed dictionary on the eval tokens: sum ||x - "
     "xhat||^2 / sum ||x - mean(x)||^2",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
    {"explained_variance", "fraction", "1 - fvu", FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
    {"l0", "latents", "mean number of active latents (z > 0) per eval token", FIXED_LAYER_MEANING,
     FIXED_HEAD_MEANING, ""},
    {"inactive_fraction", "fraction", "fraction of latents never active on the eval tokens",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
    {"density_histogram", "fraction",
     "fraction of latents whose log10 density on the eval tokens falls in the bin",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING,
     "bin: 0 never active, 1 (0, 10^-5.5), b = 2..12 [10^((b-13)/2), 10^((b-12)/2)), 12 up to "
     "density 1"},
    {"ce_clean", "nats", "mean next-token cross-entropy of the eval sequences",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
    {"ce_spliced", "nats",
     "mean next-token cross-entropy with the hook's activation replaced by the fixed "
     "dictionary's reconstruction",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
    {"ce_zero_ablated", "nats", "mean next-token cross-entropy with the hook's activation zeroed",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
    {"loss_recovered", "fraction",
     "(ce_zero_ablated - ce_spliced) / (ce_zero_ablated - ce_clean)", FIXED_LAYER_MEANING,
     FIXED_HEAD_MEANING, ""},
    {"kl_spliced", "nats",
     "mean KL(clean || spliced) of the next-token distributions over eval positions",
     FIXED_LAYER_MEANING, FIXED_HEAD_MEANING, ""},
};

/* One dictionary, its hook and the statistics its read hook gathers. */
struct fixed_dict {
    const char *dir;
    struct sae *s;
    struct sae_info info;
    enum hook_kind kind;
    int layer;
    long *count;        /* (S) tokens with z_i > 0 */
    double *sum;        /* (S) sum of z_i over them */
    double active;      /* sum over tokens of the active latents */
    double se;          /* sum ||x - xhat||^2 */
    double *shift;      /* (D) the first token's x: sums are taken about it */
    double *sx;         /* (D) sum of x - shift */
    double sxx;         /* sum ||x - shift||^2 */
    size_t n;           /* tokens seen */
    float *xc, *z, *xh; /* scratch shared by all: (R, D), (R, S), (R, D) of the widest */
};

static void fixed_free(struct fixed_dict *d)
{
    sae_free(d->s);
    free(d->count);
    free(d->sum);
    free(d->shift);
    free(d->sx);
    memset(d, 0, sizeof *d);
}

/* Read hook: encode and decode the activation, accumulate. */
static int stats_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct fixed_dict *d = ctx;
    const struct sae *s = d->s;
    const int D = s->d_in, S = s->d_sae;
    const size_t rows = act->n / (size_t)D;
    for (size_t r0 = 0; r0 < rows; r0 += SAE_RECON_ROWS) {
        const int m = (int)(rows - r0 < SAE_RECON_ROWS ? rows - r0 : SAE_RECON_ROWS);
        const float *x = act->data + r0 * D;
        sae_encode_pre(s, d->z, d->xc, x, m);
        sae_activate(s, d->z, d->z, m);
        sae_decode(s, d->xh, d->z, m);
        for (int t = 0; t < m; t++) {
            const float *zt = d->z + (size_t)t * S;
            for (int i = 0; i < S; i++)
                if (zt[i] > 0.0f) {
                    d->count[i]++;
                    d->sum[i] += zt[i];
                    d->active += 1.0;
                }
        }
        if (d->n == 0 && r0 == 0)
            for (int j = 0; j < D; j++)
                d->shift[j] = x[j];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < D; j++) {
                const double xv = x[(size_t)t * D + j];
                const double r = (double)d->xh[(size_t)t * D + j] - xv, c = xv - d->shift[j];
                d->se += r * r;
                d->sx[j] += c;
                d->sxx += c * c;
            }
    }
    d->n += rows;
    return 0;
}

/* Load dictionary k and check it against the model. */
static int fixed_open(struct fixed_dict *d, const char *dir, const struct gptneox_config *cfg,
                      const char *run_model, struct err *e)
{
    memset(d, 0, sizeof *d);
    d->dir = dir;
    int rc = sae_load(&d->s, dir, &d->info, e);
    if (rc < 0)
        return rc;
    if (!d->info.hook_name[0])
        return err_set(e, ERR_FORMAT, dir,
                       "the dictionary names no hook (metadata.hook_name in cfg.json)");
    if (hook_parse(d->info.hook_name, &d->kind, &d->layer) < 0)
        return err_set(e, ERR_UNSUPPORTED, dir, "hook %s is not one of the model's hook points",
                       d->info.hook_name);
    if (d->kind == HOOK_EMBED)
        d->layer = -1;
    const int width = sae_splice_width(cfg, d->kind, d->layer);
    if (width <= 0)
        return err_set(e, ERR_UNSUPPORTED, dir,
                       "hook %s: not a per-token activation of this model a dictionary is "
                       "applied at (hook_embed, blocks.L.hook_resid_pre, hook_attn_out, "
                       "hook_resid_mid, hook_mlp_out, hook_resid_post, attn.hook_z, "
                       "mlp.hook_post; the layer within the model's %d)",
                       d->info.hook_name, cfg->n_layers);
    if (d->s->d_in != width)
        return err_set(e, ERR_MISMATCH, dir, "d_in %d, but %s is %d wide in this model",
                       d->s->d_in, d->info.hook_name, width);
    if (run_model && d->info.model_name[0] && strcmp(run_model, d->info.model_name) != 0)
        log_warn("sae_fixed dictionary of another model",
                 "dir=%s dictionary_model=%s run_model=%s", log_quote(dir),
                 log_quote(d->info.model_name), log_quote(run_model));
    const size_t D = (size_t)d->s->d_in, S = (size_t)d->s->d_sae;
    d->count = calloc(S, sizeof *d->count);
    d->sum = calloc(S, sizeof *d->sum);
    d->shift = calloc(D, sizeof *d->shift);
    d->sx = calloc(D, sizeof *d->sx);
    if (!d->count || !d->sum || !d->shift || !d->sx)
        return err_set(e, ERR_NOMEM, dir, "out of memory for a %zu x %zu dictionary's statistics",
                       D, S);
    return 0;
}

static int fixed_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const int B = c->eval_B, T = c->eval_T, nd = c->nsae_fixed;
    struct fixed_dict dicts[SAE_FIXED_MAX];
    struct gptneox_hook hooks[SAE_FIXED_MAX];
    int opened = 0, rc = battery_check_eval(c, e);
    float *xc = NULL, *zb = NULL, *xh = NULL; /* the hooks run one at a time: one scratch */
    memset(dicts, 0, sizeof dicts);
    if (rc < 0)
        return rc;
    if (nd > SAE_FIXED_MAX)
        return err_set(e, ERR_INVALID, NULL, "%d dictionaries: at most %d", nd, SAE_FIXED_MAX);
    const char *run_model = c->provenance ? c->provenance->model_name : NULL;
    int last = 0;
    for (; opened < nd; opened++) {
        struct fixed_dict *d = &dicts[opened];
        if ((rc = fixed_open(d, c->sae_fixed_dirs[opened], &m->cfg, run_model, e)) < 0) {
            opened++;
            goto out;
        }
        hooks[opened] = (struct gptneox_hook){d->kind, d->layer, stats_hook, d};
        last = d->layer > last ? d->layer : last;
    }
    size_t maxD = 1, maxS = 1;
    for (int k = 0; k < nd; k++) {
        maxD = (size_t)dicts[k].s->d_in > maxD ? (size_t)dicts[k].s->d_in : maxD;
        maxS = (size_t)dicts[k].s->d_sae > maxS ? (size_t)dicts[k].s->d_sae : maxS;
    }
    xc = malloc(SAE_RECON_ROWS * maxD * sizeof *xc);
    zb = malloc(SAE_RECON_ROWS * maxS * sizeof *zb);
    xh = malloc(SAE_RECON_ROWS * maxD * sizeof *xh);
    if (!xc || !zb || !xh) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for %d rows of %zu latents",
                     SAE_RECON_ROWS, maxS);
        goto out;
    }
    for (int k = 0; k < nd; k++) {
        dicts[k].xc = xc;
        dicts[k].z = zb;
        dicts[k].xh = xh;
    }
    /* one forward of the eval set up to the deepest hook, every dictionary
     * reading its hook */
    for (int b0 = 0; b0 < B; b0 += BATTERY_LOSS_BATCH) {
        const int nb = B - b0 < BATTERY_LOSS_BATCH ? B - b0 : BATTERY_LOSS_BATCH;
        if ((rc = gptneox_forward_until(m, c->eval_tokens + (size_t)b0 * T, nb, T, hooks,
                                        (size_t)nd, last, e)) < 0)
            goto out;
    }
    for (int k = 0; k < nd; k++) {
        struct fixed_dict *d = &dicts[k];
        const int S = d->s->d_sae, D = d->s->d_in, L = d->layer;
        const double ntok = (double)d->n;
        double var = d->sxx;
        for (int j = 0; j < D; j++)
            var -= d->sx[j] * d->sx[j] / ntok;
        const double fvu = d->se / var;
        struct sae_splice sp;
        if ((rc = sae_splice_eval(m, d->s, d->kind, L, c->eval_tokens, B, T, &sp, e)) < 0) {
            err_wrap(e, "%s", d->dir);
            goto out;
        }
        double hist[SAE_DENSITY_BINS] = {0};
        int inactive = 0;
        for (int i = 0; i < S; i++) {
            hist[sae_density_bin(d->count[i] / ntok)] += 1.0 / S;
            inactive += d->count[i] == 0;
        }
#define ADD(name, idx, v) \
    if ((rc = rows_add(out, name, L, k, idx, v, e)) < 0) goto out
        for (int i = 0; i < S; i++)
            ADD("feature_density", i, d->count[i] / ntok);
        for (int i = 0; i < S; i++)
            ADD("feature_mean_activation", i, d->count[i] ? d->sum[i] / d->count[i] : 0.0);
        ADD("fvu", -1, fvu);
        ADD("explained_variance", -1, 1.0 - fvu);
        ADD("l0", -1, d->active / ntok);
        ADD("inactive_fraction", -1, (double)inactive / S);
        for (int b = 0; b < SAE_DENSITY_BINS; b++)
            ADD("density_histogram", b, hist[b]);
        ADD("ce_clean", -1, sp.ce_clean);
        ADD("ce_spliced", -1, sp.ce_spliced);
        ADD("ce_zero_ablated", -1, sp.ce_zero);
        ADD("loss_recovered", -1, sp.loss_recovered);
        ADD("kl_spliced", -1, sp.kl_spliced);
#undef ADD
        log_info("sae_fixed dictionary done",
                 "dictionary=%d dir=%s format=%s hook=%s fvu=%.4f l0=%.2f loss_recovered=%.4f "
                 "inactive=%d",
                 k, log_quote(d->dir), sae_format_name(d->info.format), d->info.hook_name, fvu,
                 d->active / ntok, sp.loss_recovered, inactive);
    }
out:
    for (int k = 0; k < opened; k++)
        fixed_free(&dicts[k]);
    free(xc);
    free(zb);
    free(xh);
    return rc;
}

const struct battery_item battery_item_sae_fixed = {
    .name = "sae_fixed",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS) | BATTERY_NEEDS(BATTERY_NEED_SAE_DICTS),
    .metrics = fixed_metrics,
    .nmetrics = sizeof fixed_metrics / sizeof *fixed_metrics,
    .run = fixed_run,
    .depends_on = NULL,
    .opt_in = 1,
};
