/* sae_match v1: the SAE features of this checkpoint matched to the
 * previous checkpoint's, the links that feature lineages are built from.
 *
 * Input: the dictionaries the `sae` item wrote, one per site, in SAELens's
 * layout (ARTIFACTS/sae/<hook_name>/cfg.json and sae_weights.safetensors,
 * F32 W_dec [d_sae, d_in]), for this checkpoint (--artifacts) and for the
 * previous one of the run (--prev-artifacts, same site directory name).
 *
 * Definition.  A feature's direction is its decoder row, the vector it adds
 * to the activation; two features of different dictionaries are compared by
 * the cosine similarity of their decoder rows (as features of dictionaries
 * of different sizes are compared in Bricken et al. 2023, "Towards
 * Monosemanticity", sec. "Feature splitting", and features of SAEs along a
 * series of checkpoints in Xu et al. 2024, "Tracking the Feature Dynamics
 * in LLM Training", arXiv:2412.17626).  With C the current rows and P the
 * previous rows, each normalised to unit length (a zero row stays zero and
 * is similar to nothing), S = C P^T:
 *   best_prev(i)  = argmax_j S[i][j]          (ties: the lower index)
 *   best_next(j)  = argmax_i S[i][j]          (ties: the lower index)
 *   matched_prev(i) = j = best_prev(i) when best_next(j) = i and
 *                     S[i][j] >= SAE_MATCH_THRESHOLD (mutual nearest
 *                     neighbours), else -1: the feature is born here
 *   split_parent(i) = j = best_prev(i) when S[i][j] >= threshold but
 *                     best_next(j) != i: j's direction continues in
 *                     another feature and this one branched off it, else -1
 * Summary per site: features_matched (mutual pairs), features_born
 * (current features with matched_prev -1, split children included),
 * features_died (previous features no current feature is matched to).
 * Without a previous dictionary for the site (the first checkpoint, no
 * --prev-artifacts, or no such site there) every feature is born:
 * matched_prev, best_prev and split_parent are -1, match_similarity NaN.
 *
 * S is computed by sgemm in blocks of rows of C, SAE_MATCH_BLOCK_FLOATS
 * floats at a time, so memory does not grow with d_sae^2; best_next is
 * carried across blocks.  Rows are written with layer = the site's layer
 * (blocks.L of its hook name; hook_layer in a pre-6.0 cfg.json); two sites
 * of one layer are an error (their rows would collide). */
#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/model/safetensors.h"

#define SAE_HOOK_MAX 128

static const struct metric_def sae_match_metrics[] = {
    {"matched_prev", "index",
     "the previous checkpoint's feature this one is the mutual nearest neighbour of by decoder "
     "cosine similarity, with similarity >= 0.7; -1: born here",
     "the site's hook_layer", "", "feature of this checkpoint's dictionary"},
    {"match_similarity", "cosine",
     "cosine similarity of the feature's decoder row to its most similar previous decoder row "
     "(NaN without a previous dictionary)",
     "the site's hook_layer", "", "feature of this checkpoint's dictionary"},
    {"best_prev", "index",
     "the previous checkpoint's feature with the most similar decoder row, mutual or not; -1 "
     "without a previous dictionary",
     "the site's hook_layer", "", "feature of this checkpoint's dictionary"},
    {"split_parent", "index",
     "the previous feature this one split off: its most similar previous feature, similarity "
     ">= 0.7, whose own best match is another feature; -1 otherwise",
     "the site's hook_layer", "", "feature of this checkpoint's dictionary"},
    {"features_matched", "count", "features matched to a previous feature (mutual pairs)",
     "the site's hook_layer", "", ""},
    {"features_born", "count", "features with no previous match (split children included)",
     "the site's hook_layer", "", ""},
    {"features_died", "count", "previous features no feature of this checkpoint is matched to",
     "the site's hook_layer", "", ""},
};

/* One site's dictionary: its decoder rows, normalised. */
struct sae_dict {
    char hook[SAE_HOOK_MAX];
    int layer;
    int d_in, d_sae;
    float *dec; /* (d_sae, d_in) unit rows, or zero rows */
};

static void dict_free(struct sae_dict *d)
{
    free(d->dec);
    d->dec = NULL;
}

/* dir/site/cfg.json: d_in, d_sae and the hook name (= site): metadata's
 * in SAELens 6's dialect, the top level's before 6.0; the layer is the
 * top-level hook_layer when there is one (pre-6.0), else blocks.N's N
 * (hook_embed: -1). */
static int read_cfg(const char *dir, const char *site, struct sae_dict *d, struct err *e)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/cfg.json", dir, site);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, path,
                       "no SAE config (cfg.json with d_in, d_sae, hook_name): %s",
                       strerror(errno));
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!cfg)
        return err_set(e, ERR_FORMAT, path, "cannot read the SAE config: %s (line %d)", je.text,
                       je.line);
    int rc = 0, blk = -1, has_blk = sscanf(site, "blocks.%d.", &blk) == 1;
    json_t *din = json_object_get(cfg, "d_in"), *dsae = json_object_get(cfg, "d_sae");
    json_t *hook = json_object_get(cfg, "hook_name"), *layer = json_object_get(cfg, "hook_layer");
    if (!hook)
        hook = json_object_get(json_object_get(cfg, "metadata"), "hook_name");
    if (!json_is_object(cfg))
        rc = err_set(e, ERR_FORMAT, path, "the SAE config is not a JSON object");
    else if (!json_is_integer(din) || json_integer_value(din) <= 0 ||
             json_integer_value(din) > (1 << 20) || !json_is_integer(dsae) ||
             json_integer_value(dsae) <= 0 || json_integer_value(dsae) > (1 << 24))
        rc = err_set(e, ERR_FORMAT, path, "\"d_in\" and \"d_sae\" must be positive integers");
    else if (!json_is_string(hook) || strcmp(json_string_value(hook), site) != 0)
        rc = err_set(e, ERR_MISMATCH, path,
                     "the hook name (metadata.hook_name, or hook_name before SAELens 6) must be "
                     "a string equal to the site's directory name '%s'",
                     site);
    else if (layer && (!json_is_integer(layer) || json_integer_value(layer) < -1 ||
                       json_integer_value(layer) > 32767))
        rc = err_set(e, ERR_FORMAT, path, "\"hook_layer\" must be an integer from -1 to 32767");
    else if (!layer && !has_blk && strcmp(site, "hook_embed") != 0)
        rc = err_set(e, ERR_FORMAT, path, "no layer: the hook %s is not blocks.N.<hook>", site);
    if (rc == 0 && layer && has_blk && blk != json_integer_value(layer))
        rc = err_set(e, ERR_MISMATCH, path, "\"hook_layer\" %lld contradicts hook_name %s",
                     (long long)json_integer_value(layer), site);
    if (rc == 0) {
        snprintf(d->hook, sizeof d->hook, "%s", site);
        d->layer = layer ? (int)json_integer_value(layer) : has_blk ? blk : -1;
        d->d_in = (int)json_integer_value(din);
        d->d_sae = (int)json_integer_value(dsae);
    }
    json_decref(cfg);
    return rc;
}

/* Load dir/site: its config, then W_dec from sae_weights.safetensors,
 * checked against it and normalised row by row.  On error d->dec is NULL. */
static int load_dict(const char *dir, const char *site, struct sae_dict *d, struct err *e)
{
    d->dec = NULL;
    int rc = read_cfg(dir, site, d, e);
    if (rc < 0)
        return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/sae_weights.safetensors", dir, site);
    struct st_file *st = NULL;
    if ((rc = st_open(&st, path, e)) < 0)
        return rc;
    const struct st_tensor *t = st_find(st, "W_dec");
    const int N = d->d_sae, D = d->d_in;
    if (!t)
        rc = err_set(e, ERR_NOTFOUND, path, "no tensor W_dec (the SAE's decoder, [d_sae, d_in])");
    else if (t->dtype != ST_F32)
        rc = err_set(e, ERR_UNSUPPORTED, path, "W_dec is %s; F32 is expected",
                     st_dtype_name(t->dtype));
    else if (t->ndim != 2 || t->shape[0] != N || t->shape[1] != D)
        rc = err_set(e, ERR_MISMATCH, path,
                     "W_dec has shape %s[%lld, %lld]; cfg.json says [d_sae %d, d_in %d]",
                     t->ndim == 2 ? "" : "not 2-D: ", t->ndim > 0 ? (long long)t->shape[0] : 0LL,
                     t->ndim > 1 ? (long long)t->shape[1] : 0LL, N, D);
    else if (!(d->dec = malloc((size_t)N * D * sizeof *d->dec)))
        rc = err_set(e, ERR_NOMEM, path, "out of memory for W_dec");
    if (rc == 0) {
        memcpy(d->dec, t->data, (size_t)N * D * sizeof *d->dec); /* data may be unaligned */
        for (int i = 0; i < N && rc == 0; i++) {
            float *row = d->dec + (size_t)i * D;
            double ss = 0.0;
            for (int k = 0; k < D; k++) {
                if (!isfinite(row[k])) {
                    rc = err_set(e, ERR_NUMERIC, path, "W_dec row %d holds %g", i, (double)row[k]);
                    break;
                }
                ss += (double)row[k] * row[k];
            }
            double inv = ss > 0.0 ? 1.0 / sqrt(ss) : 0.0;
            for (int k = 0; k < D; k++)
                row[k] = (float)(row[k] * inv);
        }
    }
    st_free(st);
    if (rc < 0)
        dict_free(d);
    return rc;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The site directories under dir, sorted (*names is the caller's to free
 * with free_names).  A missing dir is ERR_NOTFOUND. */
static int list_sites(const char *dir, char ***names, int *n, struct err *e)
{
    *names = NULL;
    *n = 0;
    DIR *dp = opendir(dir);
    if (!dp)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, dir, "cannot open: %s",
                       strerror(errno));
    char **v = calloc(SAE_SITES_MAX, sizeof *v);
    int rc = v ? 0 : err_set(e, ERR_NOMEM, dir, "out of memory");
    struct dirent *de;
    while (rc == 0 && (de = readdir(dp))) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096 + 256];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        if (strlen(de->d_name) >= SAE_HOOK_MAX)
            rc = err_set(e, ERR_FORMAT, path, "site name longer than %d characters", SAE_HOOK_MAX - 1);
        else if (*n == SAE_SITES_MAX)
            rc = err_set(e, ERR_UNSUPPORTED, dir, "more than %d SAE sites", SAE_SITES_MAX);
        else if (!(v[*n] = strdup(de->d_name)))
            rc = err_set(e, ERR_NOMEM, dir, "out of memory");
        else
            (*n)++;
    }
    closedir(dp);
    if (rc < 0) {
        for (int i = 0; v && i < *n; i++)
            free(v[i]);
        free(v);
        *n = 0;
        return rc;
    }
    qsort(v, (size_t)*n, sizeof *v, cmp_name);
    *names = v;
    return 0;
}

static void free_names(char **v, int n)
{
    for (int i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

int sae_match_dicts(const float *cur, int n, const float *prev, int m, int d, double threshold,
                    int *matched, int *best_prev, int *split_parent, float *sim, int *n_died,
                    struct err *e)
{
    /* cur (n, d) and prev (m, d) unit rows; outputs (n) */
    size_t block = SAE_MATCH_BLOCK_FLOATS / (size_t)m;
    block = block < 1 ? 1 : block > (size_t)n ? (size_t)n : block;
    float *S = malloc(block * (size_t)m * sizeof *S);
    float *next_sim = malloc((size_t)m * sizeof *next_sim);
    int *next = malloc((size_t)m * sizeof *next);
    char *used = calloc((size_t)m, 1);
    int rc = 0;
    if (!S || !next_sim || !next || !used) {
        rc = err_set(e, ERR_NOMEM, "sae_match", "out of memory for a %zu x %d similarity block",
                     block, m);
        goto out;
    }
    for (int j = 0; j < m; j++) {
        next_sim[j] = -INFINITY;
        next[j] = -1;
    }
    for (int i0 = 0; i0 < n; i0 += (int)block) {
        int bn = n - i0 < (int)block ? n - i0 : (int)block;
        // S (bn, m) = cur[i0 : i0+bn] (bn, d) . prev^T (d, m)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bn, m, d, 1.0f,
                    cur + (size_t)i0 * d, d, prev, d, 0.0f, S, m);
        for (int r = 0; r < bn; r++) {
            const float *row = S + (size_t)r * m;
            int i = i0 + r, bj = 0;
            for (int j = 1; j < m; j++)
                if (row[j] > row[bj])
                    bj = j;
            best_prev[i] = bj;
            sim[i] = row[bj];
            for (int j = 0; j < m; j++) /* rows in order: strict > keeps the lower i */
                if (row[j] > next_sim[j]) {
                    next_sim[j] = row[j];
                    next[j] = i;
                }
        }
    }
    int died = m;
    for (int i = 0; i < n; i++) {
        int j = best_prev[i], close = (double)sim[i] >= threshold;
        matched[i] = close && next[j] == i ? j : -1;
        split_parent[i] = close && next[j] != i ? j : -1;
        if (matched[i] >= 0 && !used[j]) {
            used[j] = 1;
            died--;
        }
    }
    *n_died = died;
out:
    free(used);
    free(next);
    free(next_sim);
    free(S);
    return rc;
}

/* The rows of one site against its previous dictionary (prev NULL: none). */
static int match_site(const struct sae_dict *cur, const struct sae_dict *prev, struct rows *out,
                      struct err *e)
{
    const int n = cur->d_sae, L = cur->layer;
    int *matched = malloc((size_t)n * sizeof *matched);
    int *best = malloc((size_t)n * sizeof *best);
    int *split = malloc((size_t)n * sizeof *split);
    float *sim = malloc((size_t)n * sizeof *sim);
    int rc = 0, died = 0;
    if (!matched || !best || !split || !sim) {
        rc = err_set(e, ERR_NOMEM, cur->hook, "out of memory");
        goto out;
    }
    if (prev) {
        if ((rc = sae_match_dicts(cur->dec, n, prev->dec, prev->d_sae, cur->d_in,
                                  SAE_MATCH_THRESHOLD, matched, best, split, sim, &died, e)) < 0)
            goto out;
    } else {
        for (int i = 0; i < n; i++) {
            matched[i] = best[i] = split[i] = -1;
            sim[i] = NAN;
        }
    }
    int nmatched = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        nmatched += matched[i] >= 0;
        if ((rc = rows_add(out, "matched_prev", L, -1, i, matched[i], e)) < 0 ||
            (rc = rows_add(out, "match_similarity", L, -1, i, sim[i], e)) < 0 ||
            (rc = rows_add(out, "best_prev", L, -1, i, best[i], e)) < 0 ||
            (rc = rows_add(out, "split_parent", L, -1, i, split[i], e)) < 0)
            goto out;
    }
    if ((rc = rows_add(out, "features_matched", L, -1, -1, nmatched, e)) < 0 ||
        (rc = rows_add(out, "features_born", L, -1, -1, n - nmatched, e)) < 0 ||
        (rc = rows_add(out, "features_died", L, -1, -1, died, e)) < 0)
        goto out;
    log_debug("sae_match site", "site=%s layer=%d d_sae=%d prev_d_sae=%d matched=%d born=%d died=%d",
              cur->hook, L, n, prev ? prev->d_sae : 0, nmatched, n - nmatched, died);
out:
    free(sim);
    free(split);
    free(best);
    free(matched);
    return rc;
}

static int sae_match_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    char dir[4096], pdir[4096];
    snprintf(dir, sizeof dir, "%s/sae", c->artifacts_dir);
    if (c->prev_artifacts_dir)
        snprintf(pdir, sizeof pdir, "%s/sae", c->prev_artifacts_dir);
    char **sites = NULL;
    int nsites = 0, rc = list_sites(dir, &sites, &nsites, e);
    if (rc == ERR_NOTFOUND || (rc == 0 && nsites == 0)) {
        free_names(sites, nsites);
        return err_set(e, ERR_NOTFOUND, dir,
                       "no SAE dictionaries: sae_match reads the sae item's output for this "
                       "checkpoint (ARTIFACTS/sae/<hook_name>/), run sae first");
    }
    if (rc < 0)
        return rc;
    int *layers = malloc((size_t)nsites * sizeof *layers);
    if (!layers)
        rc = err_set(e, ERR_NOMEM, dir, "out of memory");
    /* every config first: a bad site or two sites of one layer fail before any work */
    for (int s = 0; rc == 0 && s < nsites; s++) {
        struct sae_dict d = {0};
        if ((rc = read_cfg(dir, sites[s], &d, e)) < 0)
            break;
        layers[s] = d.layer;
        for (int k = 0; k < s && rc == 0; k++)
            if (layers[k] == d.layer)
                rc = err_set(e, ERR_UNSUPPORTED, dir,
                             "sites %s and %s both have hook_layer %d: rows are keyed by layer",
                             sites[k], sites[s], d.layer);
    }
    for (int s = 0; rc == 0 && s < nsites; s++) {
        struct sae_dict cur = {0}, prev = {0};
        int have_prev = 0;
        if ((rc = load_dict(dir, sites[s], &cur, e)) < 0)
            break;
        if (c->prev_artifacts_dir) {
            char pcfg[4400];
            struct stat sb;
            snprintf(pcfg, sizeof pcfg, "%s/%s", pdir, sites[s]);
            if (stat(pcfg, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                if ((rc = load_dict(pdir, sites[s], &prev, e)) < 0) {
                    err_wrap(e, "previous checkpoint's dictionary");
                    dict_free(&cur);
                    break;
                }
                have_prev = 1;
                if (prev.d_in != cur.d_in)
                    rc = err_set(e, ERR_MISMATCH, sites[s],
                                 "d_in %d here but %d in the previous checkpoint's dictionary (%s)",
                                 cur.d_in, prev.d_in, pdir);
            } else {
                log_info("sae_match: no previous dictionary for this site; every feature is born",
                         "site=%s prev=%s", sites[s], log_quote(pdir));
            }
        }
        if (rc == 0)
            rc = match_site(&cur, have_prev ? &prev : NULL, out, e);
        dict_free(&prev);
        dict_free(&cur);
    }
    free(layers);
    free_names(sites, nsites);
    return rc;
}

const struct battery_item battery_item_sae_match = {
    .name = "sae_match",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS) | BATTERY_NEEDS(BATTERY_NEED_PREV_ARTIFACTS),
    .metrics = sae_match_metrics,
    .nmetrics = sizeof sae_match_metrics / sizeof *sae_match_metrics,
    .run = sae_match_run,
    .depends_on = "sae",
};
