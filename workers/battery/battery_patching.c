/* patching v1: exact activation patching on prompt pairs, and what the
 * patching items share (battery_patching.h).
 *
 * For each pair set (idx; 0 the built-in induction pairs, k the k-th
 * --pairs file) the clean and the corrupted prompts are run once, then one
 * component at a time is patched (patching.h): its activation in the run
 * of one prompt (the base) replaced by its value in the run of the other
 * (the source), the forward resumed at the patched layer.  Heimersheim &
 * Nanda 2024 ("How to use and interpret activation patching"): denoising
 * (base corrupted, source clean) asks whether a component suffices to
 * restore the behaviour, noising (base clean, source corrupted) whether it
 * is needed; Meng et al. 2022 patched the residual stream per (layer,
 * position), Wang et al. 2022 each head's output.
 *
 * The behaviour is the logit difference LD at the last position (the mean
 * logit of a pair's answers minus the mean of its wrong answers), averaged
 * over the set's pairs; every score is on the normalised scale
 *     (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)
 * (0 = the corrupted behaviour, 1 = the clean one) and is written beside
 * its two baselines, clean_logit_diff and corrupted_logit_diff, so that no
 * score is read without them: when the two are close the ratio is noise
 * (NaN when they are equal).
 *
 * Rows, idx = the pair set:
 *   clean_logit_diff, corrupted_logit_diff   the baselines (logits)
 *   resid_denoise, resid_noise   layer L, head = position t: the residual
 *                                stream entering block L at position t
 *   head_denoise, head_noise     layer L, head h: the head's slice of
 *                                blocks.L.attn.hook_z at every position
 *   head_denoise_poi, head_noise_poi   the same at the set's positions of
 *                                interest only
 * and the scores in ARTIFACTS/patching/set<k>.json for the items that read
 * them.  Cost (logged as forward-equivalents of the set's B prompts): one
 * forward of both prompts, then per direction a forward resumed at layer L
 * for each of the NL*T residual and 2*NL*NH head components, on average
 * about half of a full forward each. */
#include "workers/battery/battery_patching.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/path.h"
#include "common/rng.h"

static const char *const family_names[PATCH_FAM_COUNT] = {
    "head_denoise",     "head_noise",    "head_denoise_poi",
    "head_noise_poi",   "resid_denoise", "resid_noise",
};

const char *patch_family_name(enum patch_family f)
{
    return (unsigned)f < PATCH_FAM_COUNT ? family_names[f] : "?";
}

int patch_family_is_head(enum patch_family f) { return f <= PATCH_FAM_HEAD_NOISE_POI; }

size_t patch_family_len(const struct patch_scores *s, enum patch_family f)
{
    return (size_t)s->NL * (patch_family_is_head((enum patch_family)f) ? s->NH : s->T);
}

void patch_scores_free(struct patch_scores *s)
{
    for (int f = 0; f < PATCH_FAM_COUNT; f++) {
        free(s->v[f]);
        free(s->est[f]);
    }
    memset(s, 0, sizeof *s);
}

static int scores_alloc(struct patch_scores *s, struct err *e)
{
    for (int f = 0; f < PATCH_FAM_COUNT; f++) {
        size_t n = patch_family_len(s, (enum patch_family)f);
        if (!(s->v[f] = malloc((n ? n : 1) * sizeof *s->v[f]))) {
            patch_scores_free(s);
            return err_set(e, ERR_NOMEM, NULL, "out of memory for patching scores");
        }
        for (size_t i = 0; i < n; i++)
            s->v[f][i] = NAN;
    }
    return 0;
}

int patch_scores_init(struct patch_scores *s, int set, const struct pair_set *ps, int NL, int NH,
                      struct err *e)
{
    memset(s, 0, sizeof *s);
    s->set = set;
    s->NL = NL;
    s->NH = NH;
    s->T = ps->T;
    snprintf(s->name, sizeof s->name, "%s", ps->name);
    snprintf(s->digest, sizeof s->digest, "%s", ps->digest);
    s->ld_clean = s->ld_corrupted = NAN;
    return scores_alloc(s, e);
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

int patch_scores_write(const struct patch_scores *s, const char *dir, const char *item,
                       struct err *e)
{
    char path[4200], sub[4096];
    if ((size_t)snprintf(sub, sizeof sub, "%s/%s", dir, item) >= sizeof sub)
        return err_set(e, ERR_INVALID, dir, "artifact path too long");
    snprintf(path, sizeof path, "%s/set%d.json", sub, s->set);
    int rc = path_mkdir_p(sub, e);
    if (rc < 0)
        return rc;
    json_t *doc = json_pack("{s:i, s:s, s:s, s:i, s:i, s:i, s:o, s:o}", "set", s->set, "name",
                            s->name, "digest", s->digest, "n_layers", s->NL, "n_heads", s->NH,
                            "T", s->T, "ld_clean", num(s->ld_clean), "ld_corrupted",
                            num(s->ld_corrupted));
    for (int f = 0; doc && f < PATCH_FAM_COUNT; f++) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < patch_family_len(s, (enum patch_family)f); i++)
            if (json_array_append_new(a, num(s->v[f][i])) != 0) {
                json_decref(a);
                a = NULL;
            }
        if (!a || json_object_set_new(doc, family_names[f], a) != 0) {
            json_decref(doc);
            doc = NULL;
        }
    }
    for (int f = 0; doc && f < PATCH_FAM_COUNT; f++) {
        if (!s->est[f])
            continue;
        char key[64];
        snprintf(key, sizeof key, "estimate_%s", family_names[f]);
        json_t *a = json_array();
        for (size_t i = 0; a && i < patch_family_len(s, (enum patch_family)f); i++)
            if (json_array_append_new(a, num(s->est[f][i])) != 0) {
                json_decref(a);
                a = NULL;
            }
        if (!a || json_object_set_new(doc, key, a) != 0) {
            json_decref(doc);
            doc = NULL;
        }
    }
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17))
                     : NULL;
    json_decref(doc);
    if (!text)
        return err_set(e, ERR_NOMEM, path, "out of memory");
    rc = path_write_atomic(path, text, e);
    free(text);
    return rc;
}

int patch_scores_read(struct patch_scores *s, const char *dir, const char *item, int set,
                      struct err *e)
{
    memset(s, 0, sizeof *s);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/set%d.json", dir, item, set);
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(e, errno == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "cannot open: %s",
                       strerror(errno));
    json_t *doc = json_loadf(f, 0, &je);
    fclose(f);
    int rc = 0;
    if (!doc)
        return err_set(e, ERR_FORMAT, path, "not valid JSON: %s (line %d)", je.text, je.line);
    json_t *jn = json_object_get(doc, "name"), *jd = json_object_get(doc, "digest");
    s->set = (int)json_integer_value(json_object_get(doc, "set"));
    s->NL = (int)json_integer_value(json_object_get(doc, "n_layers"));
    s->NH = (int)json_integer_value(json_object_get(doc, "n_heads"));
    s->T = (int)json_integer_value(json_object_get(doc, "T"));
    if (!json_is_string(jn) || !json_is_string(jd) || s->set != set || s->NL <= 0 ||
        s->NH <= 0 || s->T <= 0 || s->NL > 100000 || s->NH > 100000 || s->T > 1000000) {
        rc = err_set(e, ERR_FORMAT, path, "not a patching score file");
        goto out;
    }
    snprintf(s->name, sizeof s->name, "%s", json_string_value(jn));
    snprintf(s->digest, sizeof s->digest, "%s", json_string_value(jd));
    json_t *jc = json_object_get(doc, "ld_clean"), *jk = json_object_get(doc, "ld_corrupted");
    s->ld_clean = json_is_number(jc) ? json_number_value(jc) : NAN;
    s->ld_corrupted = json_is_number(jk) ? json_number_value(jk) : NAN;
    if ((rc = scores_alloc(s, e)) < 0)
        goto out;
    for (int fam = 0; fam < PATCH_FAM_COUNT && rc == 0; fam++) {
        json_t *a = json_object_get(doc, family_names[fam]);
        if (!json_is_array(a) || json_array_size(a) != patch_family_len(s, (enum patch_family)fam)) {
            rc = err_set(e, ERR_FORMAT, path, "\"%s\" is not a list of %zu scores",
                         family_names[fam], patch_family_len(s, (enum patch_family)fam));
            break;
        }
        for (size_t i = 0; i < patch_family_len(s, (enum patch_family)fam); i++) {
            json_t *x = json_array_get(a, i);
            s->v[fam][i] = json_is_number(x) ? json_number_value(x) : NAN;
        }
    }
    for (int fam = 0; fam < PATCH_FAM_COUNT && rc == 0; fam++) {
        char key[64];
        snprintf(key, sizeof key, "estimate_%s", family_names[fam]);
        json_t *a = json_object_get(doc, key);
        size_t n = patch_family_len(s, (enum patch_family)fam);
        if (!a)
            continue; /* a v1 file: exact scores only */
        if (!json_is_array(a) || json_array_size(a) != n) {
            rc = err_set(e, ERR_FORMAT, path, "\"%s\" is not a list of %zu scores", key, n);
            break;
        }
        if (!(s->est[fam] = malloc((n ? n : 1) * sizeof *s->est[fam]))) {
            rc = err_set(e, ERR_NOMEM, path, "out of memory");
            break;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_array_get(a, i);
            s->est[fam][i] = json_is_number(x) ? json_number_value(x) : NAN;
        }
    }
out:
    json_decref(doc);
    if (rc < 0)
        patch_scores_free(s);
    return rc;
}

int patch_sets_open(const struct battery_ctx *c, struct pair_set **builtin,
                    const struct pair_set **sets, int *n, struct err *e)
{
    const struct gptneox_config *cfg = &c->model->cfg;
    int rc = pair_set_induction(builtin, cfg->vocab_size, cfg->max_positions, PAIR_IND_PAIRS, 0,
                                c->seed, e);
    if (rc < 0)
        return err_wrap(e, "the built-in induction pairs");
    sets[0] = *builtin;
    for (int k = 0; k < c->npair_sets; k++)
        sets[k + 1] = c->pair_sets[k];
    *n = 1 + c->npair_sets;
    return 0;
}

int patch_each_set(const struct battery_ctx *c, struct rows *out,
                   int (*set_fn)(const struct battery_ctx *c, const struct pair_set *ps, int k,
                                 struct rows *out, struct err *e),
                   struct err *e)
{
    struct pair_set *builtin = NULL;
    const struct pair_set **sets = calloc((size_t)c->npair_sets + 1, sizeof *sets);
    int nsets = 0, rc;
    if (!sets)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    if ((rc = patch_sets_open(c, &builtin, sets, &nsets, e)) == 0)
        for (int k = 0; k < nsets && rc == 0; k++)
            if ((rc = set_fn(c, sets[k], k, out, e)) < 0)
                err_wrap(e, "pair set %s", sets[k]->name);
    pair_set_free(builtin);
    free(sets);
    return rc;
}

double patch_head_importance(const struct patch_scores *s, int i)
{
    double d = s->v[PATCH_FAM_HEAD_DENOISE][i], n = s->v[PATCH_FAM_HEAD_NOISE][i];
    if (!isfinite(d) && s->est[PATCH_FAM_HEAD_DENOISE])
        d = s->est[PATCH_FAM_HEAD_DENOISE][i];
    if (!isfinite(n) && s->est[PATCH_FAM_HEAD_NOISE])
        n = s->est[PATCH_FAM_HEAD_NOISE][i];
    double a = isfinite(d) ? fabs(d) : 0, b = isfinite(n) ? fabs(1 - n) : 0;
    return a > b ? a : b;
}

/* ---- the item ---- */

static const char set_idx[] =
    "pair set: 0 the built-in induction pairs, k the k-th --pairs file";
static const char lay[] = "layer";
static const char hd[] = "head index within the layer";
static const char pos[] = "position in the prompt (this index is the position, not a head)";
static const char fam[] =
    "the family: 0 head_denoise, 1 head_noise, 2 head_denoise_poi, 3 head_noise_poi, "
    "4 resid_denoise, 5 resid_noise (this index is the family, not a head)";
#define SEL_DESC                                                                                \
    "why the component was patched exactly: 1 among the PATCH_TOP_K (5) of largest estimated " \
    "effect, 2 the random sample of the others, 3 neither (a full sweep patches every "        \
    "component), 4 a residual position identical in both runs (exact without a forward)"
#define FAMILY_METRICS(F, IDX, WHAT)                                                           \
    {F, "normalised logit diff", WHAT " (exact; every component on a full sweep, else the "    \
     "selected ones)", lay, IDX, set_idx},                                                     \
    {F "_estimate", "normalised logit diff", "attribution estimate of " F " (the base run's "   \
     "gradient times the activation difference; the attribution item's atp_" F ")", lay, IDX,  \
     set_idx},                                                                                 \
    {F "_error", "normalised logit diff", F "_estimate minus " F ", where exact", lay, IDX,     \
     set_idx},                                                                                 \
    {F "_selection", "code", SEL_DESC, lay, IDX, set_idx}

static const struct metric_def patching_metrics[] = {
    {"clean_logit_diff", "logits",
     "mean over the pairs of the answers' mean logit minus the wrong answers' at the last "
     "position of the clean prompt (the baseline 1 of every score)", "", "", set_idx},
    {"corrupted_logit_diff", "logits",
     "the same on the corrupted prompt (the baseline 0 of every score)", "", "", set_idx},
    FAMILY_METRICS("resid_denoise", pos,
                   "(LD - corrupted) / (clean - corrupted) of the corrupted run with the residual "
                   "stream entering the block at one position taken from the clean run"),
    FAMILY_METRICS("resid_noise", pos,
                   "the same for the clean run with the residual stream at one position taken "
                   "from the corrupted run (1 = no effect)"),
    FAMILY_METRICS("head_denoise", hd,
                   "the corrupted run with the head's hook_z at every position taken from the "
                   "clean run"),
    FAMILY_METRICS("head_noise", hd,
                   "the clean run with the head's hook_z at every position taken from the "
                   "corrupted run"),
    FAMILY_METRICS("head_denoise_poi", hd,
                   "head_denoise patching only the set's positions of interest"),
    FAMILY_METRICS("head_noise_poi", hd, "head_noise patching only the set's positions of interest"),
    {"sample_mae", "normalised logit diff",
     "mean |estimate - exact| over the family's random sample (a full sweep: over every "
     "component not in the top k, positions identical in both runs left out)", "", fam, set_idx},
    {"topk_recall", "fraction",
     "full sweeps only: share of the family's PATCH_TOP_K components of largest exact effect "
     "among the k of largest estimated effect", "", fam, set_idx},
};

/* The size of a component's effect on the normalised scale: |v| for a
 * denoising score (0 = no effect), |1 - v| for a noising one; +inf when
 * not finite, so that an unknown estimate is checked exactly. */
static double effect(enum patch_family f, double v)
{
    if (!isfinite(v))
        return INFINITY;
    return f % 2 == 0 ? fabs(v) : fabs(1 - v);
}

struct ranked {
    double key;
    int i;
};

static int cmp_ranked(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    if (a->key != b->key)
        return a->key < b->key ? 1 : -1; /* larger first */
    return (a->i > b->i) - (a->i < b->i);
}

/* The components of family f into order by decreasing effect of v, those
 * with skip[i] left out; their number. */
static size_t rank_components(enum patch_family f, const double *v, const signed char *skip,
                              size_t n, struct ranked *order)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!skip[i])
            order[m++] = (struct ranked){effect(f, v[i]), (int)i};
    qsort(order, m, sizeof *order, cmp_ranked);
    return m;
}

/* sel (n) of family f of set k: 4 the positions identical in both runs
 * (already marked), 1 the top k by estimated effect, then 2 a random
 * sample of the rest or, on a full sweep, 3 all of the rest. */
static int choose(enum patch_family f, const double *est, signed char *sel, size_t n, int k,
                  int sweep, uint64_t seed, struct err *e)
{
    struct ranked *order = malloc((n ? n : 1) * sizeof *order);
    if (!order)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    size_t m = rank_components(f, est, sel, n, order);
    size_t top = m < PATCH_TOP_K ? m : PATCH_TOP_K;
    for (size_t i = 0; i < m; i++)
        sel[order[i].i] = i < top ? 1 : sweep ? 3 : 0;
    if (!sweep) {
        /* PATCH_SAMPLE of the m - top others, uniformly (partial Fisher-Yates) */
        uint64_t st = seed ^ PATCH_SAMPLE_SALT ^ ((uint64_t)k * PATCH_FAM_COUNT + (uint64_t)f);
        size_t rest = m - top, want = PATCH_SAMPLE < rest ? PATCH_SAMPLE : rest;
        for (size_t i = 0; i < want; i++) {
            size_t j = i + rng_below(&st, (uint32_t)(rest - i));
            struct ranked t = order[top + i];
            order[top + i] = order[top + j];
            order[top + j] = t;
            sel[order[top + i].i] = 2;
        }
    }
    free(order);
    return 0;
}

/* The attribution estimates of every family of set k into s->est (on the
 * normalised scale of the gradient run's own baselines, as `attribution`
 * computes them). */
static int estimates(struct gptneox *m, const struct pair_set *ps, struct patch_scores *s,
                     struct err *e)
{
    const int NL = m->cfg.n_layers, NH = m->cfg.n_heads;
    struct patch_base pg = {0};
    double *resid = malloc((size_t)NL * ps->T * sizeof *resid);
    double *head = malloc((size_t)NL * NH * sizeof *head);
    double *poi = malloc((size_t)NL * NH * sizeof *poi);
    int rc = 0;
    for (int f = 0; f < PATCH_FAM_COUNT && rc == 0; f++) {
        size_t n = patch_family_len(s, (enum patch_family)f);
        if (!(s->est[f] = malloc((n ? n : 1) * sizeof *s->est[f])))
            rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
    }
    if (rc == 0 && (!resid || !head || !poi))
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
    if (rc == 0)
        rc = patch_base_run(&pg, m, ps, PATCH_BASE_GRADS, e);
    for (int d = 0; d < PATCH_DIR_COUNT && rc == 0; d++) {
        if ((rc = patch_atp(&pg, (enum patch_dir)d, resid, head, poi, e)) < 0)
            break;
        const double *src[3] = {head, poi, resid};
        const int fams[3] = {PATCH_FAM_HEAD_DENOISE + d, PATCH_FAM_HEAD_DENOISE_POI + d,
                             PATCH_FAM_RESID_DENOISE + d};
        for (int j = 0; j < 3; j++)
            for (size_t i = 0; i < patch_family_len(s, (enum patch_family)fams[j]); i++)
                s->est[fams[j]][i] = patch_normalise(&pg, src[j][i]);
    }
    patch_base_free(&pg);
    free(poi);
    free(head);
    free(resid);
    return rc;
}

/* Exact scores of family f at the components with sel != 0 (every one
 * when sel is NULL). */
static int exact_family(struct patch_base *pb, struct patch_scores *s, enum patch_family f,
                        const signed char *sel, unsigned char *want, double *ld, struct err *e)
{
    size_t n = patch_family_len(s, f);
    enum patch_dir dir = (f % 2 == 0) ? PATCH_DENOISE : PATCH_NOISE;
    for (size_t i = 0; i < n; i++)
        want[i] = !sel || sel[i] != 0;
    int rc = (f == PATCH_FAM_RESID_DENOISE || f == PATCH_FAM_RESID_NOISE)
                 ? patch_resid_some(pb, dir, want, ld, e)
                 : patch_heads_some(pb, dir, f >= PATCH_FAM_HEAD_DENOISE_POI, want, ld, e);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (want[i] || (sel && sel[i] == 4))
            s->v[f][i] = patch_normalise(pb, ld[i]);
    return rc;
}

/* patching v2's rows of family f: the estimate of every component, the
 * exact score, error and selection of the exact ones, the sample's mean
 * error and, on a sweep, the top k's recall. */
static int emit_family(const struct patch_scores *s, enum patch_family f, const signed char *sel,
                       int sweep, struct rows *out, struct err *e)
{
    const char *name = family_names[f];
    char m_est[64], m_err[64], m_sel[64];
    snprintf(m_est, sizeof m_est, "%s_estimate", name);
    snprintf(m_err, sizeof m_err, "%s_error", name);
    snprintf(m_sel, sizeof m_sel, "%s_selection", name);
    const int w = patch_family_is_head(f) ? s->NH : s->T;
    const size_t n = patch_family_len(s, f);
    double mae = 0;
    int nmae = 0, rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int l = (int)(i / (size_t)w), j = (int)(i % (size_t)w);
        if ((rc = rows_add(out, m_est, l, j, s->set, s->est[f][i], e)) < 0 || !sel[i])
            continue;
        double err = s->est[f][i] - s->v[f][i];
        if ((rc = rows_add(out, name, l, j, s->set, s->v[f][i], e)) < 0 ||
            (rc = rows_add(out, m_err, l, j, s->set, err, e)) < 0 ||
            (rc = rows_add(out, m_sel, l, j, s->set, sel[i], e)) < 0)
            break;
        if ((sel[i] == 2 || sel[i] == 3) && isfinite(err)) {
            mae += fabs(err);
            nmae++;
        }
    }
    if (rc == 0 && nmae)
        rc = rows_add(out, "sample_mae", -1, (int)f, s->set, mae / nmae, e);
    if (rc == 0 && sweep) {
        struct ranked *order = malloc((n ? n : 1) * sizeof *order);
        signed char *skip = malloc(n ? n : 1);
        if (!order || !skip) {
            free(order);
            free(skip);
            return err_set(e, ERR_NOMEM, NULL, "out of memory");
        }
        for (size_t i = 0; i < n; i++)
            skip[i] = sel[i] == 4;
        size_t m = rank_components(f, s->v[f], skip, n, order);
        size_t k = m < PATCH_TOP_K ? m : PATCH_TOP_K;
        int hit = 0;
        for (size_t i = 0; i < k; i++)
            hit += sel[order[i].i] == 1;
        free(skip);
        free(order);
        if (k)
            rc = rows_add(out, "topk_recall", -1, (int)f, s->set, (double)hit / (double)k, e);
    }
    return rc;
}

int patch_scores_emit(const struct patch_scores *s, const char *prefix, struct rows *out,
                      struct err *e)
{
    char metric[64];
    int rc = 0;
    for (int f = 0; f < PATCH_FAM_COUNT && rc == 0; f++) {
        snprintf(metric, sizeof metric, "%s%s", prefix, family_names[f]);
        int head = patch_family_is_head((enum patch_family)f), w = head ? s->NH : s->T;
        for (int l = 0; l < s->NL && rc == 0; l++)
            for (int j = 0; j < w && rc == 0; j++)
                rc = rows_add(out, metric, l, j, s->set, s->v[f][(size_t)l * w + j], e);
    }
    return rc;
}

static int patching_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const struct gptneox_config *cfg = &m->cfg;
    const int sweep = c->full_sweep;
    struct pair_set *builtin = NULL;
    const struct pair_set **sets = calloc((size_t)c->npair_sets + 1, sizeof *sets);
    struct patch_base pb = {0};
    struct patch_scores s = {0};
    double *ld = NULL;
    signed char *sel[PATCH_FAM_COUNT] = {0};
    unsigned char *want = NULL;
    const char *cur = NULL; /* the set being measured, for errors */
    int nsets = 0, rc;
    if (!sets)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    if ((rc = patch_sets_open(c, &builtin, sets, &nsets, e)) < 0)
        goto out;
    for (int k = 0; k < nsets; k++) {
        const struct pair_set *ps = sets[k];
        double f0 = m->forward_flop, t0 = mono_now();
        cur = ps->name;
        if ((rc = patch_scores_init(&s, k, ps, cfg->n_layers, cfg->n_heads, e)) < 0 ||
            (rc = estimates(m, ps, &s, e)) < 0)
            goto out;
        double fe = m->forward_flop;
        if ((rc = patch_base_run(&pb, m, ps, 0, e)) < 0)
            goto out;
        size_t nld = (size_t)cfg->n_layers * (ps->T > cfg->n_heads ? ps->T : cfg->n_heads);
        free(ld);
        free(want);
        ld = malloc(nld * sizeof *ld);
        want = malloc(nld);
        for (int f = 0; f < PATCH_FAM_COUNT; f++) {
            free(sel[f]);
            sel[f] = calloc(nld, 1);
        }
        if (!ld || !want || !sel[0] || !sel[1] || !sel[2] || !sel[3] || !sel[4] || !sel[5]) {
            rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
            goto out;
        }
        s.ld_clean = pb.ld[0];
        s.ld_corrupted = pb.ld[1];
        int exact = 0;
        for (int f = 0; f < PATCH_FAM_COUNT; f++) {
            enum patch_family fm = (enum patch_family)f;
            size_t n = patch_family_len(&s, fm);
            if (!patch_family_is_head(fm))
                for (size_t i = 0; i < n; i++)
                    sel[f][i] = patch_resid_same(&pb, (int)(i / (size_t)ps->T),
                                                 (int)(i % (size_t)ps->T)) ? 4 : 0;
            if ((rc = choose(fm, s.est[f], sel[f], n, k, sweep, c->seed, e)) < 0 ||
                (rc = exact_family(&pb, &s, fm, sel[f], want, ld, e)) < 0)
                goto out;
            for (size_t i = 0; i < n; i++)
                exact += sel[f][i] != 0 && sel[f][i] != 4;
        }
        log_info("patching cost",
                 "set=%d name=%s pairs=%d T=%d components=%d exact=%d forward_equivalents=%.1f "
                 "estimate_forward_equivalents=%.1f seconds=%.3f%s",
                 k, log_quote(ps->name), ps->B, ps->T,
                 2 * cfg->n_layers * (ps->T + 2 * cfg->n_heads), exact,
                 (m->forward_flop - f0) / patch_forward_unit(&pb),
                 (fe - f0) / patch_forward_unit(&pb), mono_now() - t0,
                 sweep ? " full_sweep=1" : "");
        if ((rc = rows_add(out, "clean_logit_diff", -1, -1, k, s.ld_clean, e)) < 0 ||
            (rc = rows_add(out, "corrupted_logit_diff", -1, -1, k, s.ld_corrupted, e)) < 0)
            goto out;
        for (int f = 0; f < PATCH_FAM_COUNT; f++)
            if ((rc = emit_family(&s, (enum patch_family)f, sel[f], sweep, out, e)) < 0)
                goto out;
        if ((rc = patch_scores_write(&s, c->artifacts_dir, "patching", e)) < 0)
            goto out;
        patch_scores_free(&s);
        patch_base_free(&pb);
    }
out:
    if (rc < 0 && cur)
        err_wrap(e, "pair set %s", cur);
    for (int f = 0; f < PATCH_FAM_COUNT; f++)
        free(sel[f]);
    free(want);
    free(ld);
    patch_scores_free(&s);
    patch_base_free(&pb);
    pair_set_free(builtin);
    free(sets);
    return rc;
}

const struct battery_item battery_item_patching = {
    .name = "patching",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_PAIR_SETS) | BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS),
    .metrics = patching_metrics,
    .nmetrics = sizeof patching_metrics / sizeof *patching_metrics,
    .run = patching_run,
};
