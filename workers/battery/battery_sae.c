/* sae v1 and sae_relu v1: a sparse autoencoder per checkpoint, its quality
 * metrics, and the dictionary saved in SAELens's layout.
 *
 * Sites: the hooks of ctx.sae_sites (`ckpt-worker analyze --sae-site`,
 * the run's sae_sites option), by default blocks.{n_layers/2}.hook_resid_post
 * (the middle layer's residual stream).  A site is a d_model-wide hook of a
 * block: hook_resid_pre, hook_attn_out, hook_resid_mid (sequential-residual
 * models only), hook_mlp_out or hook_resid_post; at most one per layer,
 * since every row carries the site's layer in `layer` and nothing else
 * (sae_site_parse checks all of this before any work).  One dictionary is
 * trained per site, each as below, in the order given.  Activations are
 * harvested at the site from the eval set (at most SAE_HARVEST_BYTES of
 * them, whole sequences from the first): by the eval set's shared forward
 * (evalpass.h) for the sites that fit SAE_HARVEST_BYTES together (always
 * the first), by forwards of their own for the rest (BATTERY_LOSS_BATCH
 * sequences per forward, stopping after that layer).  Sequence b is held out when b % 5 == 4 (as `probes` splits);
 * the rest train.
 *
 * Training (sae.h): sae is TopK (Gao et al. 2024, k = SAE_K, AuxK 1/32,
 * k_aux d_in/2), sae_relu is ReLU + L1 (Bricken et al. 2023, coefficient
 * SAE_RELU_L1_ITEM * sqrt(d_model): the penalty grows as ||x|| ~ sqrt(d_model)
 * after normalisation, the squared error as d_model); d_sae =
 * SAE_EXPANSION * d_model; Adam at
 * lr = 2e-4 * sqrt(2^14 / d_sae) (Gao et al.'s scaling law for the rate),
 * SAE_TRAIN_BATCH tokens per step, SAE_TRAIN_TOKENS tokens in all (epochs
 * over the training activations, reshuffled every epoch), seeded by
 * --seed ^ SAE_SEED_SALT.  Inputs are scaled by s = sqrt(d_in) / mean ||x||
 * of the training tokens.  The metrics are computed with s folded into the
 * biases (sae_fold_scaling: codes in raw units, the trained codes / s); the
 * saved dictionary has s folded as SAELens folds it (sae_fold_saelens:
 * W_enc * s, W_dec / s, b_dec / s), so SAELens computes the trained codes
 * from raw activations, which are s times feature_mean_activation's units.
 *
 * Warm start: when --prev-artifacts DIR is given and DIR/<item>/<hook>/
 * holds a dictionary of the same architecture, d_in, d_sae (and k) with
 * its norm_scaling_factor s' in metadata.ckptd, it is the starting point,
 * as SAE-Track does to follow features through training: its weights
 * unfolded (W_enc / s', W_dec * s'), its biases those of the bias-folded
 * dictionary times this checkpoint's s (b_enc / s' * s, b_dec * s);
 * otherwise (no directory, other shapes, no s', or an unreadable
 * dictionary, which is logged) the start is cold.  Adam's moments always
 * start at zero.
 *
 * Metrics, all of the final (raw-space) dictionary:
 *   fvu                 held-out tokens: sum_t ||x_t - xhat_t||^2 /
 *                       sum_t ||x_t - mean(x)||^2, mean over the held-out
 *                       tokens (fraction of variance unexplained)
 *   explained_variance  1 - fvu
 *   l0                  held-out tokens: mean number of latents with z > 0
 *   dead_fraction       latents that did not fire on the last
 *                       min(SAE_DEAD_WINDOW, SAE_TRAIN_TOKENS) training
 *                       tokens (whole batches; the AuxK definition)
 *   dense_fraction      latents active on more than SAE_DENSE_DENSITY of the
 *                       eval tokens
 *   ce_clean, ce_spliced, ce_zero_ablated   held-out sequences: mean next-
 *                       token cross-entropy (nats, the `loss` item's
 *                       definition) of the model, of the model with the
 *                       site's activation replaced by the SAE's
 *                       reconstruction (a write hook), and with it zeroed
 *   loss_recovered      (ce_zero_ablated - ce_spliced) /
 *                       (ce_zero_ablated - ce_clean)
 *   kl_spliced          held-out positions: mean KL(clean || spliced) of the
 *                       next-token distributions, nats
 *   density_histogram   idx = bin of log10 feature density (eval tokens):
 *                       0 never active; 1 (0, 10^-5.5); b = 2..12
 *                       [10^((b-13)/2), 10^((b-12)/2)), b = 12 up to 1;
 *                       value = fraction of latents in the bin
 *   feature_density     idx = latent: fraction of eval tokens (train and
 *                       held-out) on which z > 0
 *   feature_mean_activation  idx = latent: mean z over those tokens (raw
 *                       units; 0 for a latent never active)
 *   warm_start          1 when the previous dictionary was the start, else 0
 *   train_loss          the training objective (normalised units), mean
 *                       over the last tenth of the steps
 *   norm_scaling_factor s
 *
 * Artifacts: ARTIFACTS/<item>/<hook>/{cfg.json, sae_weights.safetensors,
 * sparsity.safetensors} in SAELens 6's layout with the checkpoint's
 * provenance (sae_file.h).  They are written into a fresh
 * ARTIFACTS/<item>/.<hook>.tmp-XXXXXX directory once every number of the
 * site is computed; when every site is done the directories are renamed
 * into place (an earlier dictionary there is moved aside first and removed
 * after), so each is either whole or absent; a failing item leaves no file,
 * a failure in a later site removing the earlier sites' too.
 *
 * Cost: the harvesting forward, SAE_TRAIN_TOKENS tokens of training (about
 * 10 sgemm of 2 x batch x d_in x d_sae flops per step for TopK with dead
 * latents, 5 without, 6 for ReLU) and three forwards of the held-out
 * sequences, SAE_SPLICE_FLOATS logits at a time. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/path.h"
#include "workers/battery/battery.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"
#include "workers/model/kernels.h"

#define SAE_SEED_SALT 0x5341452d73656564ull /* "SAE-seed" */

#define SAE_LAYER_MEANING                                                                   \
    "the site's layer: blocks.L.<hook> of the run's sae_sites option (one site per layer); "  \
    "by default blocks.L.hook_resid_post, L = n_layers / 2"

static const struct metric_def sae_metrics[] = {
    {"fvu", "fraction",
     "fraction of variance unexplained on held-out tokens: sum ||x - xhat||^2 / sum ||x - "
     "mean(x)||^2", SAE_LAYER_MEANING, "", ""},
    {"explained_variance", "fraction", "1 - fvu", SAE_LAYER_MEANING, "", ""},
    {"l0", "latents", "mean number of active latents (z > 0) per held-out token",
     SAE_LAYER_MEANING, "", ""},
    {"dead_fraction", "fraction",
     "fraction of latents that did not fire on the last 8192 training tokens",
     SAE_LAYER_MEANING, "", ""},
    {"dense_fraction", "fraction", "fraction of latents active on more than 10% of eval tokens",
     SAE_LAYER_MEANING, "", ""},
    {"ce_clean", "nats", "mean next-token cross-entropy of the held-out sequences",
     SAE_LAYER_MEANING, "", ""},
    {"ce_spliced", "nats",
     "mean next-token cross-entropy with the site's activation replaced by the SAE's "
     "reconstruction", SAE_LAYER_MEANING, "", ""},
    {"ce_zero_ablated", "nats", "mean next-token cross-entropy with the site's activation zeroed",
     SAE_LAYER_MEANING, "", ""},
    {"loss_recovered", "fraction",
     "(ce_zero_ablated - ce_spliced) / (ce_zero_ablated - ce_clean)", SAE_LAYER_MEANING, "", ""},
    {"kl_spliced", "nats",
     "mean KL(clean || spliced) of the next-token distributions over held-out positions",
     SAE_LAYER_MEANING, "", ""},
    {"density_histogram", "fraction",
     "fraction of latents whose log10 density on the eval tokens falls in the bin",
     SAE_LAYER_MEANING, "",
     "bin: 0 never active, 1 (0, 10^-5.5), b = 2..12 [10^((b-13)/2), 10^((b-12)/2)), 12 up to "
     "density 1"},
    {"feature_density", "fraction", "fraction of eval tokens on which the latent is active",
     SAE_LAYER_MEANING, "", "latent (feature) index"},
    {"feature_mean_activation", "activation",
     "mean activation of the latent over the eval tokens where it is active (0 if never)",
     SAE_LAYER_MEANING, "", "latent (feature) index"},
    {"warm_start", "flag",
     "1 if training started from the previous checkpoint's dictionary, 0 for a cold start",
     SAE_LAYER_MEANING, "", ""},
    {"train_loss", "loss",
     "training objective (normalised inputs) averaged over the last tenth of the steps",
     SAE_LAYER_MEANING, "", ""},
    {"norm_scaling_factor", "factor",
     "the inputs' scale in training: sqrt(d_model) / mean ||x|| of the training tokens",
     SAE_LAYER_MEANING, "", ""},
};

/* ---- harvesting ---- */

/* A site's activations of the eval set: whole sequences from the first,
 * within SAE_HARVEST_BYTES; sequence b % 5 == 4 held out. */
struct site_harvest {
    int B, nho_seq;      /* sequences harvested, of them held out */
    size_t ntr, nho;     /* tokens */
    size_t itr, iho;     /* filled so far */
    float *xtr, *xho;    /* (ntr, C), (nho, C) */
    int *tok_ho;         /* (nho) the held-out sequences' tokens */
};

static void site_harvest_free(struct site_harvest *h)
{
    free(h->xtr);
    free(h->xho);
    free(h->tok_ho);
    memset(h, 0, sizeof *h);
}

static int site_harvest_init(struct site_harvest *h, const struct battery_ctx *c, struct err *e)
{
    const int T = c->eval_T, C = c->model->cfg.d_model;
    memset(h, 0, sizeof *h);
    int B = c->eval_B;
    size_t cap = SAE_HARVEST_BYTES / ((size_t)T * C * sizeof(float));
    if ((size_t)B > cap)
        B = (int)cap;
    if (B < 5)
        return err_set(e, ERR_INVALID, c->eval_name,
                       "%d eval sequence(s) of %d tokens fit the harvest: at least 5 are needed "
                       "(sequence b %% 5 == 4 is held out)",
                       B, T);
    h->B = B;
    for (int b = 0; b < B; b++)
        h->nho_seq += b % 5 == 4;
    h->ntr = (size_t)(B - h->nho_seq) * T;
    h->nho = (size_t)h->nho_seq * T;
    h->xtr = malloc(h->ntr * C * sizeof *h->xtr);
    h->xho = malloc(h->nho * C * sizeof *h->xho);
    h->tok_ho = malloc(h->nho * sizeof *h->tok_ho);
    if (!h->xtr || !h->xho || !h->tok_ho) {
        site_harvest_free(h);
        return err_set(e, ERR_NOMEM, NULL, "out of memory for %zu activations of %d dims",
                       (size_t)B * T, C);
    }
    return 0;
}

/* The site's activation act (nb, T, C) of eval sequences b0 .. b0+nb-1,
 * tokens tok (nb, T): those within the harvest go to their split. */
static void site_harvest_add(struct site_harvest *h, const float *act, const int *tok, int b0,
                             int nb, int T, int C)
{
    for (int i = 0; i < nb && b0 + i < h->B; i++) {
        const float *src = act + (size_t)i * T * C;
        if ((b0 + i) % 5 == 4) {
            memcpy(h->xho + h->iho * C, src, (size_t)T * C * sizeof(float));
            memcpy(h->tok_ho + h->iho, tok + (size_t)i * T, (size_t)T * sizeof(int));
            h->iho += T;
        } else {
            memcpy(h->xtr + h->itr * C, src, (size_t)T * C * sizeof(float));
            h->itr += T;
        }
    }
}

/* The current batch as the harvest hooks see it. */
struct harvest_batch {
    const int *tokens;
    int b0, nb;
};

struct harvest_hook {
    struct site_harvest *h;
    const struct harvest_batch *batch;
};

static int harvest_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct harvest_hook *k = ctx;
    site_harvest_add(k->h, act->data, k->batch->tokens, k->batch->b0, k->batch->nb,
                     act->shape[1], act->shape[2]);
    return 0;
}

/* Harvest one site with forwards of its own (BATTERY_LOSS_BATCH sequences,
 * stopping after the site's layer). */
static int site_harvest_run(struct site_harvest *h, const struct battery_ctx *c,
                            const struct sae_site *site, struct err *e)
{
    struct harvest_batch hb = {0};
    struct harvest_hook k = {h, &hb};
    struct gptneox_hook hk = {site->kind, site->layer, harvest_hook, &k};
    const int T = c->eval_T;
    for (int b0 = 0; b0 < h->B; b0 += BATTERY_LOSS_BATCH) {
        hb.nb = h->B - b0 < BATTERY_LOSS_BATCH ? h->B - b0 : BATTERY_LOSS_BATCH;
        hb.b0 = b0;
        hb.tokens = c->eval_tokens + (size_t)b0 * T;
        int rc = gptneox_forward_until(c->model, hb.tokens, hb.nb, T, &hk, 1, site->layer, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The eval pass's part: the sites whose harvests fit SAE_HARVEST_BYTES
 * together (at least the first), harvested by the shared forward. */
struct sae_pass {
    struct sae_site sites[EVALPASS_HOOKS];
    struct site_harvest hv[EVALPASS_HOOKS];
    struct harvest_hook hk[EVALPASS_HOOKS];
    struct harvest_batch batch;
    int n;
};

static void sae_pass_free(void *p)
{
    struct sae_pass *s = p;
    for (int i = 0; s && i < s->n; i++)
        site_harvest_free(&s->hv[i]);
    free(s);
}

static int sae_pass_start(void *state, const struct evalpass_batch *b, struct err *e)
{
    (void)e;
    struct sae_pass *s = state;
    s->batch = (struct harvest_batch){b->tokens, b->b0, b->nb};
    return 0;
}

static int sae_attach_item(const struct battery_ctx *c, struct evalpass *p, const char *item,
                           struct err *e)
{
    struct sae_site sites[SAE_SITES_MAX];
    int rc = battery_check_eval(c, e);
    if (rc < 0)
        return rc;
    const int n = sae_sites_resolve(&c->model->cfg, c->sae_sites, c->nsae_sites, sites, e);
    if (n < 0)
        return n;
    struct sae_pass *s = calloc(1, sizeof *s);
    if (!s)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    struct gptneox_hook hooks[EVALPASS_HOOKS];
    size_t bytes = 0;
    int last = 0;
    for (int i = 0; i < n && s->n < EVALPASS_HOOKS; i++) {
        struct site_harvest *h = &s->hv[s->n];
        if ((rc = site_harvest_init(h, c, e)) < 0) {
            sae_pass_free(s);
            return rc;
        }
        size_t sz = (h->ntr + h->nho) * c->model->cfg.d_model * sizeof(float);
        if (s->n > 0 && bytes + sz > SAE_HARVEST_BYTES) {
            site_harvest_free(h);
            break; /* the rest harvest on their own */
        }
        bytes += sz;
        s->sites[s->n] = sites[i];
        s->hk[s->n] = (struct harvest_hook){h, &s->batch};
        hooks[s->n] = (struct gptneox_hook){sites[i].kind, sites[i].layer, harvest_hook, &s->hk[s->n]};
        last = sites[i].layer > last ? sites[i].layer : last;
        s->n++;
    }
    struct evalpass_consumer k = {.name = item, .hooks = hooks, .nhooks = (size_t)s->n,
                                  .last_layer = last, .start = sae_pass_start, .state = s,
                                  .state_free = sae_pass_free};
    return evalpass_add(p, &k, e);
}

/* ---- splicing ---- */

struct splice_hook {
    const struct sae *s; /* NULL: zero the activation */
};

static int splice_fn(void *ctx, struct hook_act *act, struct err *e)
{
    struct splice_hook *h = ctx;
    if (!h->s) {
        memset(act->data, 0, act->n * sizeof(float));
        return 0;
    }
    return sae_reconstruct(h->s, act->data, NULL, act->data, act->n / (size_t)h->s->d_in, e);
}

/* ---- sites ---- */

int sae_site_check(const struct gptneox_config *cfg, enum hook_kind kind, int layer,
                   struct err *e)
{
    char name[64];
    if (hook_name(name, sizeof name, kind, layer < 0 ? 0 : layer) < 0)
        snprintf(name, sizeof name, "hook kind %d", (int)kind);
    if (kind != HOOK_RESID_PRE && kind != HOOK_ATTN_OUT && kind != HOOK_RESID_MID &&
        kind != HOOK_MLP_OUT && kind != HOOK_RESID_POST)
        return err_set(e, ERR_INVALID, name,
                       "not an SAE site: a site is blocks.L.hook_resid_pre, hook_attn_out, "
                       "hook_resid_mid, hook_mlp_out or hook_resid_post");
    if (layer < 0 || layer >= cfg->n_layers)
        return err_set(e, ERR_INVALID, name, "layer %d is outside the model's %d layers", layer,
                       cfg->n_layers);
    if (kind == HOOK_RESID_MID && cfg->parallel_residual)
        return err_set(e, ERR_INVALID, name,
                       "the model adds attention and MLP in parallel (use_parallel_residual): "
                       "it has no hook_resid_mid");
    return 0;
}

int sae_splice_width(const struct gptneox_config *cfg, enum hook_kind kind, int layer)
{
    if (kind == HOOK_EMBED)
        return layer == -1 ? cfg->d_model : 0;
    if (layer < 0 || layer >= cfg->n_layers)
        return 0;
    switch (kind) {
    case HOOK_RESID_PRE:
    case HOOK_ATTN_OUT:
    case HOOK_MLP_OUT:
    case HOOK_RESID_POST:
        return cfg->d_model;
    case HOOK_RESID_MID:
        return cfg->parallel_residual ? 0 : cfg->d_model;
    case HOOK_ATTN_Z:
        return cfg->n_heads * cfg->d_head;
    case HOOK_MLP_POST:
        return cfg->d_mlp;
    default:
        return 0;
    }
}

int sae_sites_resolve(const struct gptneox_config *cfg, const char *const *names, int n,
                      struct sae_site *out, struct err *e)
{
    if (n <= 0) {
        out[0].kind = HOOK_RESID_POST;
        out[0].layer = cfg->n_layers / 2;
        if (hook_name(out[0].name, sizeof out[0].name, HOOK_RESID_POST, out[0].layer) < 0)
            return err_set(e, ERR_INVALID, NULL, "no hook name for layer %d", out[0].layer);
        return 1;
    }
    if (n > SAE_SITES_MAX)
        return err_set(e, ERR_INVALID, NULL, "%d SAE sites: at most %d", n, SAE_SITES_MAX);
    for (int i = 0; i < n; i++) {
        struct sae_site *st = &out[i];
        int rc;
        if (hook_parse(names[i], &st->kind, &st->layer) < 0)
            return err_set(e, ERR_INVALID, names[i], "not a hook name (blocks.L.hook_resid_post, ...)");
        if ((rc = sae_site_check(cfg, st->kind, st->layer, e)) < 0)
            return rc;
        if (hook_name(st->name, sizeof st->name, st->kind, st->layer) < 0)
            return err_set(e, ERR_INVALID, names[i], "no hook name");
        for (int k = 0; k < i; k++)
            if (out[k].layer == st->layer)
                return err_set(e, ERR_INVALID, names[i],
                               "%s is of the same layer: one SAE site per layer, since rows are "
                               "keyed by layer",
                               out[k].name);
    }
    return n;
}

int sae_splice_eval(struct gptneox *m, const struct sae *s, enum hook_kind kind, int layer,
                    const int *tokens, int B, int T, struct sae_splice *out, struct err *e)
{
    const int V = m->cfg.vocab_size;
    memset(out, 0, sizeof *out);
    int rc = 0, width = sae_splice_width(&m->cfg, kind, layer);
    char name[64];
    if (hook_name(name, sizeof name, kind, layer < 0 ? 0 : layer) < 0)
        snprintf(name, sizeof name, "hook kind %d", (int)kind);
    if (width <= 0)
        return err_set(e, ERR_INVALID, name,
                       "not a hook an SAE is spliced at (a per-token activation of this model)");
    if (s->d_in != width || B < 1 || T < 2)
        return err_set(e, ERR_INVALID, "sae splice",
                       "d_in %d (the hook's width %d), %d x %d tokens out of range", s->d_in,
                       width, B, T);
    size_t per = (size_t)T * V;
    int G = (int)(SAE_SPLICE_FLOATS / per);
    G = G < 1 ? 1 : G > B ? B : G;
    float *clean = malloc((size_t)G * per * sizeof *clean);
    float *p = malloc((size_t)V * sizeof *p);
    if (!clean || !p) {
        free(clean);
        free(p);
        return err_set(e, ERR_NOMEM, "sae splice", "out of memory for %d x %d x %d logits", G, T,
                       V);
    }
    struct splice_hook sh = {s}, zh = {NULL};
    struct gptneox_hook hs = {kind, layer, splice_fn, &sh};
    struct gptneox_hook hz = {kind, layer, splice_fn, &zh};
    double ce[3] = {0, 0, 0}, kl = 0.0;
    for (int b0 = 0; b0 < B && rc == 0; b0 += G) {
        const int g = B - b0 < G ? B - b0 : G;
        const int *tok = tokens + (size_t)b0 * T;
        const double w = (double)g * (T - 1);
        if ((rc = gptneox_forward(m, tok, g, T, NULL, 0, e)) < 0)
            break;
        ce[0] += gptneox_loss(m, tok, g, T, NULL, NULL) * w;
        memcpy(clean, gptneox_logits(m), (size_t)g * per * sizeof *clean);
        if ((rc = gptneox_forward(m, tok, g, T, &hs, 1, e)) < 0)
            break;
        ce[1] += gptneox_loss(m, tok, g, T, NULL, NULL) * w;
        const float *spl = gptneox_logits(m);
        for (size_t r = 0; r < (size_t)g * T; r++) {
            const float *zc = clean + r * V, *zs = spl + r * V;
            double lc = logsumexp_row(zc, V, NULL), ls = logsumexp_row(zs, V, NULL);
            const float shift = (float)lc;
            for (int v = 0; v < V; v++)
                p[v] = zc[v] - shift;
            vexp(p, p, (size_t)V);
            kl += dot_diff_row(p, zc, zs, V) + ls - lc;
        }
        if ((rc = gptneox_forward(m, tok, g, T, &hz, 1, e)) < 0)
            break;
        ce[2] += gptneox_loss(m, tok, g, T, NULL, NULL) * w;
    }
    free(clean);
    free(p);
    if (rc < 0)
        return rc;
    const double npred = (double)B * (T - 1);
    out->ce_clean = ce[0] / npred;
    out->ce_spliced = ce[1] / npred;
    out->ce_zero = ce[2] / npred;
    out->kl_spliced = kl / ((double)B * T);
    out->loss_recovered = (out->ce_zero - out->ce_spliced) / (out->ce_zero - out->ce_clean);
    return 0;
}

/* ---- latent statistics ---- */

int sae_density_bin(double density)
{
    if (!(density > 0.0))
        return 0;
    int b = (int)floor(2.0 * log10(density)) + 13;
    return b < 1 ? 1 : b > SAE_DENSITY_BINS - 1 ? SAE_DENSITY_BINS - 1 : b;
}

/* count (S) and sum (S) of z > 0 over x (n, C), chunked; optionally the
 * held-out error sums.  ERR_NOMEM. */
static int latent_stats(const struct sae *s, const float *x, size_t n, long *count, double *sum,
                        double *sq_err, double *l0, struct err *e)
{
    const int C = s->d_in, S = s->d_sae;
    size_t R = SAE_RECON_ROWS;
    float *xc = malloc(R * C * sizeof *xc), *z = malloc(R * S * sizeof *z),
          *xh = malloc(R * C * sizeof *xh);
    if (!xc || !z || !xh) {
        free(xc);
        free(z);
        free(xh);
        return err_set(e, ERR_NOMEM, "sae", "out of memory for %zu rows of latents", R);
    }
    double se = 0.0, act = 0.0;
    for (size_t r0 = 0; r0 < n; r0 += R) {
        int m = (int)(n - r0 < R ? n - r0 : R);
        sae_encode_pre(s, z, xc, x + r0 * C, m);
        sae_activate(s, z, z, m);
        for (int t = 0; t < m; t++)
            for (int i = 0; i < S; i++) {
                float v = z[(size_t)t * S + i];
                if (v > 0.0f) {
                    if (count)
                        count[i]++;
                    if (sum)
                        sum[i] += v;
                    act += 1.0;
                }
            }
        if (sq_err) {
            sae_decode(s, xh, z, m);
            for (size_t i = 0; i < (size_t)m * C; i++) {
                double d = (double)xh[i] - x[r0 * C + i];
                se += d * d;
            }
        }
    }
    if (sq_err)
        *sq_err = se;
    if (l0)
        *l0 = n ? act / (double)n : 0.0;
    free(xc);
    free(z);
    free(xh);
    return 0;
}

/* ---- artifacts ---- */

/* Remove directory dir and the plain files in it. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char path[4096];
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path)
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* Move the staged directory tmp to final, replacing what is there. */
static int commit_dir(const char *tmp, const char *final, const char *parent, const char *hook,
                      struct err *e)
{
    struct stat sb;
    char old[4096] = "";
    if (stat(final, &sb) == 0) {
        if (snprintf(old, sizeof old, "%s/.%s.old-XXXXXX", parent, hook) >= (int)sizeof old ||
            !mkdtemp(old))
            return err_set(e, ERR_IO, final, "cannot make room for the new dictionary: %s",
                           strerror(errno));
        if (rename(final, old) != 0) { /* mkdtemp made an empty directory: renamed over */
            int er = errno;
            rmdir(old);
            return err_set(e, ERR_IO, final, "cannot move the old dictionary aside: %s",
                           strerror(er));
        }
    }
    if (rename(tmp, final) != 0) {
        int er = errno;
        if (old[0])
            rename(old, final);
        return err_set(e, ERR_IO, final, "cannot rename %s into place: %s", tmp, strerror(er));
    }
    if (old[0])
        remove_dir(old);
    return 0;
}

/* ---- warm start ---- */

int sae_warm_start(struct sae *s, const char *prev_artifacts_dir, const char *item,
                   const char *hook, double scale)
{
    char pdir[4096];
    struct stat sb;
    struct err pe;
    struct sae_info info;
    struct sae *prev = NULL;
    int warm = 0;
    snprintf(pdir, sizeof pdir, "%s/%s/%s", prev_artifacts_dir, item, hook);
    if (stat(pdir, &sb) != 0) {
        log_info("sae cold start", "reason=\"no previous dictionary\" dir=%s", log_quote(pdir));
    } else if (sae_load(&prev, pdir, &info, &pe) < 0) {
        log_warn("sae cold start", "reason=\"previous dictionary unreadable\" error=%s",
                 log_quote(err_str(&pe)));
    } else if (prev->arch != s->arch || prev->d_in != s->d_in || prev->d_sae != s->d_sae ||
               prev->k != s->k || !prev->apply_b_dec) {
        log_warn("sae cold start",
                 "reason=\"previous dictionary has other shapes\" dir=%s architecture=%s d_in=%d "
                 "d_sae=%d k=%d",
                 log_quote(pdir), sae_arch_name(prev->arch), prev->d_in, prev->d_sae, prev->k);
    } else if (!(info.norm_scaling_factor > 0.0) || !isfinite(info.norm_scaling_factor)) {
        log_warn("sae cold start",
                 "reason=\"previous dictionary records no metadata.ckptd.norm_scaling_factor\" "
                 "dir=%s",
                 log_quote(pdir));
    } else {
        /* the weights as trained; the biases of the bias-folded dictionary
         * (b_enc / s', b_dec as stored) moved to this checkpoint's scale */
        const double sp = info.norm_scaling_factor;
        const size_t CS = (size_t)s->d_in * s->d_sae;
        for (size_t i = 0; i < CS; i++)
            s->W_enc[i] = (float)(prev->W_enc[i] / sp);
        for (size_t i = 0; i < CS; i++)
            s->W_dec[i] = (float)(prev->W_dec[i] * sp);
        for (int i = 0; i < s->d_sae; i++)
            s->b_enc[i] = (float)((float)(prev->b_enc[i] / sp) * scale);
        for (int j = 0; j < s->d_in; j++)
            s->b_dec[j] = (float)(prev->b_dec[j] * scale);
        warm = 1;
        log_info("sae warm start", "dir=%s", log_quote(pdir));
    }
    sae_free(prev);
    return warm;
}

/* ---- the item ---- */

struct sae_item_def {
    const char *name;
    int version; /* the item's (battery_item.version), recorded in the files */
    enum sae_arch arch;
};

/* One site: its rows into out, its dictionary staged in *staged (a fresh
 * directory beside *final, both malloc'd; the caller renames or removes). */
static int sae_run_site(const struct battery_ctx *c, struct rows *out, struct err *e,
                        const struct sae_item_def *def, const struct sae_site *site,
                        const struct site_harvest *pre, char **staged, char **finalp)
{
    struct gptneox *m = c->model;
    const struct gptneox_config *cfg = &m->cfg;
    const int T = c->eval_T, C = cfg->d_model, S = SAE_EXPANSION * cfg->d_model;
    const int L = site->layer;
    const char *hook = site->name;
    int rc = 0, staged_ok = 0;
    struct site_harvest own = {0};
    float *xn = NULL, *logsp = NULL;
    long *count = NULL;
    double *sum = NULL;
    unsigned char *dead = NULL;
    struct sae *s = NULL, *saved = NULL;
    struct sae_trainer *tr = NULL;
    char *art = NULL, *stage = NULL, *final = NULL;
    /* harvest: from the eval pass, or here */
    if (!pre) {
        if ((rc = site_harvest_init(&own, c, e)) < 0 ||
            (rc = site_harvest_run(&own, c, site, e)) < 0)
            goto out;
        pre = &own;
    }
    const int nho_seq = pre->nho_seq;
    const size_t ntr = pre->ntr, nho = pre->nho;
    const float *xtr = pre->xtr, *xho = pre->xho;
    const int *tok_ho = pre->tok_ho;
    xn = malloc(ntr * C * sizeof *xn);
    count = calloc((size_t)S, sizeof *count);
    sum = calloc((size_t)S, sizeof *sum);
    logsp = malloc((size_t)S * sizeof *logsp);
    dead = calloc((size_t)S, 1);
    if (!xn || !count || !sum || !logsp || !dead) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for %zu activations of %d dims",
                     ntr + nho, C);
        goto out;
    }

    double scale;
    if ((rc = sae_norm_scale(xtr, ntr, C, &scale, e)) < 0 ||
        (rc = sae_norm_scale(xho, nho, C, &(double){0}, e)) < 0) {
        err_wrap(e, "activations at %s", hook);
        goto out;
    }
    for (size_t i = 0; i < ntr * C; i++)
        xn[i] = (float)(xtr[i] * scale);

    /* the start: the previous checkpoint's dictionary, or cold */
    if ((rc = sae_create(&s, def->arch, C, S, SAE_K, e)) < 0)
        goto out;
    const uint64_t seed = c->seed ^ SAE_SEED_SALT;
    const int warm = c->prev_artifacts_dir
                         ? sae_warm_start(s, c->prev_artifacts_dir, def->name, hook, scale)
                         : 0;
    if (!warm)
        sae_init_cold(s, xn, ntr, seed);

    /* train */
    struct sae_train_config tc;
    sae_train_config_default(&tc, def->arch);
    tc.lr = 2e-4 * sqrt(16384.0 / S);
    tc.batch = SAE_TRAIN_BATCH;
    tc.seed = seed;
    if (def->arch == SAE_RELU)
        tc.l1_coeff = SAE_RELU_L1_ITEM * sqrt((double)C);
    struct sae_step_stats tail = {0};
    if ((rc = sae_trainer_create(&tr, s, &tc, e)) < 0 ||
        (rc = sae_train(tr, xn, ntr, SAE_TRAIN_TOKENS, &tail, e)) < 0) {
        err_wrap(e, "training the SAE at %s", hook);
        goto out;
    }
    const int ndead = sae_trainer_dead(tr, dead);
    /* the file's dictionary: s folded as SAELens folds it */
    if (!(saved = sae_clone(s))) {
        rc = err_set(e, ERR_NOMEM, hook, "out of memory for the dictionary");
        goto out;
    }
    sae_fold_saelens(saved, scale);
    sae_fold_scaling(s, scale);
    for (size_t i = 0; i < (size_t)2 * C * S + S + C; i++)
        if (!isfinite(s->block[i]) || !isfinite(saved->block[i])) {
            rc = err_set(e, ERR_NUMERIC, hook, "the trained dictionary holds a non-finite value");
            goto out;
        }

    /* held-out reconstruction */
    double se = 0.0, l0 = 0.0, var = 0.0;
    if ((rc = latent_stats(s, xho, nho, count, sum, &se, &l0, e)) < 0 ||
        (rc = latent_stats(s, xtr, ntr, count, sum, NULL, NULL, e)) < 0)
        goto out;
    for (int j = 0; j < C; j++) {
        double mu = 0.0;
        for (size_t t = 0; t < nho; t++)
            mu += xho[t * C + j];
        mu /= (double)nho;
        for (size_t t = 0; t < nho; t++) {
            double d = xho[t * C + j] - mu;
            var += d * d;
        }
    }
    const double fvu = se / var;
    struct sae_splice sp;
    if ((rc = sae_splice_eval(m, s, site->kind, L, tok_ho, nho_seq, T, &sp, e)) < 0)
        goto out;

    /* rows */
    const double ntok = (double)(ntr + nho);
    double hist[SAE_DENSITY_BINS] = {0};
    int ndense = 0;
    for (int i = 0; i < S; i++) {
        double dens = count[i] / ntok;
        hist[sae_density_bin(dens)] += 1.0 / S;
        ndense += dens > SAE_DENSE_DENSITY;
        logsp[i] = (float)log10(dens + 1e-10);
    }
#define ADD(name, idx, v) \
    if ((rc = rows_add(out, name, L, -1, idx, v, e)) < 0) goto out
    ADD("fvu", -1, fvu);
    ADD("explained_variance", -1, 1.0 - fvu);
    ADD("l0", -1, l0);
    ADD("dead_fraction", -1, (double)ndead / S);
    ADD("dense_fraction", -1, (double)ndense / S);
    ADD("ce_clean", -1, sp.ce_clean);
    ADD("ce_spliced", -1, sp.ce_spliced);
    ADD("ce_zero_ablated", -1, sp.ce_zero);
    ADD("loss_recovered", -1, sp.loss_recovered);
    ADD("kl_spliced", -1, sp.kl_spliced);
    for (int b = 0; b < SAE_DENSITY_BINS; b++)
        ADD("density_histogram", b, hist[b]);
    for (int i = 0; i < S; i++)
        ADD("feature_density", i, count[i] / ntok);
    for (int i = 0; i < S; i++)
        ADD("feature_mean_activation", i, count[i] ? sum[i] / count[i] : 0.0);
    ADD("warm_start", -1, warm);
    ADD("train_loss", -1, tail.loss);
    ADD("norm_scaling_factor", -1, scale);
#undef ADD

    /* artifacts: staged, then renamed into place */
    size_t na = strlen(c->artifacts_dir) + strlen(def->name) + strlen(hook) + 64;
    art = malloc(na);
    stage = malloc(na);
    final = malloc(na);
    if (!art || !stage || !final) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    snprintf(art, na, "%s/%s", c->artifacts_dir, def->name);
    snprintf(stage, na, "%s/.%s.tmp-XXXXXX", art, hook);
    snprintf(final, na, "%s/%s", art, hook);
    if ((rc = path_mkdir_p(art, e)) < 0)
        goto out;
    if (!mkdtemp(stage) || chmod(stage, 0755) != 0) {
        rc = err_set(e, ERR_IO, art, "cannot create a staging directory: %s", strerror(errno));
        goto out;
    }
    const struct battery_provenance *pv = c->provenance;
    struct sae_meta meta = {
        .model_name = pv ? pv->model_name : NULL,
        .hook_name = hook,
        .context_size = T,
        .dataset_path = c->eval_name,
        .step = pv ? pv->step : -1,
        .revision = pv ? pv->revision : NULL,
        .run = pv ? pv->run : NULL,
        .item = def->name,
        .item_version = def->version,
        .norm_scaling_factor = scale,
        .train_tokens = sae_trainer_tokens(tr),
        .seed = seed,
        .warm_start = warm,
    };
    if ((rc = sae_save(saved, stage, &meta, logsp, e)) < 0) {
        remove_dir(stage);
        goto out;
    }
    log_info("sae site done", "item=%s site=%s warm_start=%d fvu=%.4f l0=%.1f "
             "loss_recovered=%.4f dead=%d dir=%s",
             def->name, hook, warm, fvu, l0, sp.loss_recovered, ndead, log_quote(final));
    *staged = stage;
    *finalp = final;
    staged_ok = 1;
out:
    if (!staged_ok) {
        free(final);
        free(stage);
    }
    free(art);
    sae_trainer_free(tr);
    sae_free(saved);
    sae_free(s);
    free(dead);
    free(logsp);
    free(sum);
    free(count);
    free(xn);
    site_harvest_free(&own);
    return rc;
}

/* Every site (sae_sites_resolve) in turn; the dictionaries are renamed into
 * place once all are staged, and a failure leaves none of them. */
static int sae_run(const struct battery_ctx *c, struct rows *out, struct err *e,
                   const struct sae_item_def *def)
{
    struct sae_site sites[SAE_SITES_MAX];
    char *staged[SAE_SITES_MAX] = {0}, *final[SAE_SITES_MAX] = {0};
    const struct sae_pass *pass = evalpass_state(c->pass, def->name, e);
    if (!pass)
        return e ? e->code : ERR_INVALID;
    int rc = 0;
    const int n = sae_sites_resolve(&c->model->cfg, c->sae_sites, c->nsae_sites, sites, e);
    if (n < 0)
        return n;
    int done = 0, committed = 0;
    for (; done < n; done++)
        if ((rc = sae_run_site(c, out, e, def, &sites[done], done < pass->n ? &pass->hv[done] : NULL,
                               &staged[done], &final[done])) < 0)
            break;
    if (rc == 0) {
        char art[4096];
        snprintf(art, sizeof art, "%s/%s", c->artifacts_dir, def->name);
        for (; committed < n; committed++)
            if ((rc = commit_dir(staged[committed], final[committed], art,
                                 sites[committed].name, e)) < 0)
                break;
    }
    for (int i = 0; i < done; i++) {
        if (rc < 0)
            remove_dir(i < committed ? final[i] : staged[i]);
        free(staged[i]);
        free(final[i]);
    }
    return rc;
}

#define SAE_VERSION 1
#define SAE_RELU_VERSION 1
static const struct sae_item_def def_topk = {"sae", SAE_VERSION, SAE_TOPK};
static const struct sae_item_def def_relu = {"sae_relu", SAE_RELU_VERSION, SAE_RELU};

static int sae_run_topk(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    return sae_run(c, out, e, &def_topk);
}

static int sae_run_relu(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    return sae_run(c, out, e, &def_relu);
}

static int sae_attach_topk(const struct battery_ctx *c, struct evalpass *p, struct err *e)
{
    return sae_attach_item(c, p, def_topk.name, e);
}

static int sae_attach_relu(const struct battery_ctx *c, struct evalpass *p, struct err *e)
{
    return sae_attach_item(c, p, def_relu.name, e);
}

#define SAE_NEEDS                                                                  \
    (BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS) | BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS) | \
     BATTERY_NEEDS(BATTERY_NEED_PREV_ARTIFACTS))

const struct battery_item battery_item_sae = {
    .name = "sae",
    .version = SAE_VERSION,
    .needs = SAE_NEEDS,
    .metrics = sae_metrics,
    .nmetrics = sizeof sae_metrics / sizeof *sae_metrics,
    .run = sae_run_topk,
    .depends_on = NULL,
    .attach = sae_attach_topk,
};

const struct battery_item battery_item_sae_relu = {
    .name = "sae_relu",
    .version = SAE_RELU_VERSION,
    .needs = SAE_NEEDS,
    .metrics = sae_metrics,
    .nmetrics = sizeof sae_metrics / sizeof *sae_metrics,
    .run = sae_run_relu,
    .depends_on = NULL,
    .opt_in = 1,
    .attach = sae_attach_relu,
};
