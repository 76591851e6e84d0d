/* attribution v1: attribution patching (Nanda 2023, "Attribution Patching:
 * Activation Patching At Industrial Scale"; Syed et al. 2023), the
 * gradient-times-difference estimate of every component `patching`
 * measures exactly, from one forward and one backward of each prompt of a
 * pair set; and the estimate's error against the exact scores of this
 * checkpoint (ARTIFACTS/patching/, hence depends_on patching).
 *
 * For a component with activation a (a head's hook_z slice at every
 * position or at the positions of interest, or blocks.L.hook_resid_pre at
 * position t), patched from the source run into the base run:
 *     LD_patched ~ LD_base + sum (a_source - a_base) * d LD / d a |base
 * the gradient of the set's mean LD taken at the base run (patch_atp,
 * patching.h): denoising differentiates the corrupted run, noising the
 * clean one.  The estimates are on `patching`'s normalised scale.
 *
 * AtP* (Kramar et al. 2024) corrects two failures of this estimate; neither
 * is applied here, and the error rows measure what that costs:
 *   - the QK fix recomputes a patched query's or key's attention pattern
 *     exactly.  The components here are head outputs and the residual
 *     stream, whose own softmax is already exact in both runs; the
 *     saturation that does hurt them is in later heads' patterns (the
 *     hand-built induction circuit's previous-token head is estimated at
 *     ~0 because the induction head's pattern is saturated;
 *     tests/test_patching.c), and fixing it there means recomputing those
 *     patterns for every component, close to exact patching's cost;
 *   - GradDrop takes n_layers more backward passes per direction and
 *     yields unsigned magnitudes, not comparable with the signed exact
 *     scores this item is checked against.
 * `path_patching` ranks heads by the larger of the exact and the estimated
 * importance, so a head the estimate misses is still measured there.
 *
 * Rows, idx = the pair set:
 *   clean_logit_diff, corrupted_logit_diff   the baselines
 *   atp_head_denoise, atp_head_noise, atp_head_denoise_poi,
 *   atp_head_noise_poi, atp_resid_denoise, atp_resid_noise
 *                     the estimates, indexed as `patching`'s rows
 *   atp_error_mean_abs, atp_error_max_abs, atp_error_pearson
 *                     head = the family (0 head_denoise, 1 head_noise,
 *                     2 head_denoise_poi, 3 head_noise_poi, 4 resid_denoise,
 *                     5 resid_noise): mean and largest |estimate - exact|
 *                     and their Pearson correlation over the family's
 *                     components (components whose exact score is NaN left
 *                     out; Pearson only when both vary); written when this
 *                     checkpoint's `patching` scores of the same set are
 *                     there
 * and the estimates in ARTIFACTS/attribution/set<k>.json (for
 * path_patching).  Cost: per direction one forward and one backward
 * (without parameter gradients) of the set's prompts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "workers/battery/battery_patching.h"

static const char set_idx[] =
    "pair set: 0 the built-in induction pairs, k the k-th --pairs file";
static const char lay[] = "layer";
static const char hd[] = "head index within the layer";
static const char pos[] = "position in the prompt (this index is the position, not a head)";
static const char fam[] =
    "the family: 0 head_denoise, 1 head_noise, 2 head_denoise_poi, 3 head_noise_poi, "
    "4 resid_denoise, 5 resid_noise (this index is the family, not a head)";

static const struct metric_def atp_metrics[] = {
    {"clean_logit_diff", "logits", "the clean prompts' mean logit difference (baseline 1)", "",
     "", set_idx},
    {"corrupted_logit_diff", "logits",
     "the corrupted prompts' mean logit difference (baseline 0)", "", "", set_idx},
    {"atp_head_denoise", "normalised logit diff",
     "attribution estimate of head_denoise: the corrupted run's gradient times the clean minus "
     "corrupted hook_z of the head", lay, hd, set_idx},
    {"atp_head_noise", "normalised logit diff",
     "attribution estimate of head_noise (the clean run's gradient)", lay, hd, set_idx},
    {"atp_head_denoise_poi", "normalised logit diff",
     "attribution estimate of head_denoise_poi", lay, hd, set_idx},
    {"atp_head_noise_poi", "normalised logit diff", "attribution estimate of head_noise_poi",
     lay, hd, set_idx},
    {"atp_resid_denoise", "normalised logit diff", "attribution estimate of resid_denoise", lay,
     pos, set_idx},
    {"atp_resid_noise", "normalised logit diff", "attribution estimate of resid_noise", lay,
     pos, set_idx},
    {"atp_error_mean_abs", "normalised logit diff",
     "mean |estimate - exact patching score| over the family's components", "", fam, set_idx},
    {"atp_error_max_abs", "normalised logit diff",
     "largest |estimate - exact patching score| over the family's components", "", fam,
     set_idx},
    {"atp_error_pearson", "correlation",
     "Pearson correlation of the estimates with the exact scores over the family's components",
     "", fam, set_idx},
};

/* The error rows of every family against the exact scores. */
static int error_rows(const struct patch_scores *atp, const struct patch_scores *ex, int k,
                      struct rows *out, struct err *e)
{
    int rc = 0;
    for (int f = 0; f < PATCH_FAM_COUNT && rc == 0; f++) {
        size_t n = patch_family_len(atp, (enum patch_family)f), m = 0;
        double sum = 0, worst = 0, sa = 0, sx = 0;
        const double *a = atp->v[f], *x = ex->v[f];
        for (size_t i = 0; i < n; i++)
            if (isfinite(x[i]) && isfinite(a[i])) {
                double d = fabs(a[i] - x[i]);
                sum += d;
                worst = d > worst ? d : worst;
                sa += a[i];
                sx += x[i];
                m++;
            }
        if (m == 0)
            continue;
        double ma = sa / m, mx = sx / m, sab = 0, saa = 0, sxx = 0;
        for (size_t i = 0; i < n; i++)
            if (isfinite(x[i]) && isfinite(a[i])) {
                sab += (a[i] - ma) * (x[i] - mx);
                saa += (a[i] - ma) * (a[i] - ma);
                sxx += (x[i] - mx) * (x[i] - mx);
            }
        if ((rc = rows_add(out, "atp_error_mean_abs", -1, f, k, sum / m, e)) < 0 ||
            (rc = rows_add(out, "atp_error_max_abs", -1, f, k, worst, e)) < 0)
            break;
        if (saa > 0 && sxx > 0)
            rc = rows_add(out, "atp_error_pearson", -1, f, k, sab / sqrt(saa * sxx), e);
    }
    return rc;
}

static int atp_set(const struct battery_ctx *c, const struct pair_set *ps, int k,
                   struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const int NL = m->cfg.n_layers, NH = m->cfg.n_heads;
    struct patch_base pb = {0};
    struct patch_scores s = {0}, ex = {0};
    double *resid = NULL, *head = NULL, *poi = NULL;
    double f0 = m->forward_flop, t0 = mono_now();
    int rc;
    if ((rc = patch_base_run(&pb, m, ps, PATCH_BASE_GRADS, e)) < 0 ||
        (rc = patch_scores_init(&s, k, ps, NL, NH, e)) < 0)
        goto out;
    resid = malloc((size_t)NL * ps->T * sizeof *resid);
    head = malloc((size_t)NL * NH * sizeof *head);
    poi = malloc((size_t)NL * NH * sizeof *poi);
    if (!resid || !head || !poi) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
        goto out;
    }
    s.ld_clean = pb.ld[0];
    s.ld_corrupted = pb.ld[1];
    for (int d = 0; d < PATCH_DIR_COUNT; d++) {
        if ((rc = patch_atp(&pb, (enum patch_dir)d, resid, head, poi, e)) < 0)
            goto out;
        const double *src[3] = {head, poi, resid};
        const int fams[3] = {PATCH_FAM_HEAD_DENOISE + d, PATCH_FAM_HEAD_DENOISE_POI + d,
                             PATCH_FAM_RESID_DENOISE + d};
        for (int j = 0; j < 3; j++)
            for (size_t i = 0; i < patch_family_len(&s, (enum patch_family)fams[j]); i++)
                s.v[fams[j]][i] = patch_normalise(&pb, src[j][i]);
    }
    log_info("attribution cost",
             "set=%d name=%s pairs=%d T=%d forward_equivalents=%.1f backward_passes=2 seconds=%.3f",
             k, log_quote(ps->name), ps->B, ps->T, (m->forward_flop - f0) / patch_forward_unit(&pb),
             mono_now() - t0);
    if ((rc = rows_add(out, "clean_logit_diff", -1, -1, k, pb.ld[0], e)) < 0 ||
        (rc = rows_add(out, "corrupted_logit_diff", -1, -1, k, pb.ld[1], e)) < 0 ||
        (rc = patch_scores_emit(&s, "atp_", out, e)) < 0)
        goto out;
    struct err xe;
    int xrc = patch_scores_read(&ex, c->artifacts_dir, "patching", k, &xe);
    if (xrc == 0 && strcmp(ex.digest, ps->digest) == 0 && ex.NL == NL && ex.NH == NH &&
        ex.T == ps->T)
        rc = error_rows(&s, &ex, k, out, e);
    else
        log_warn("attribution without its error", "set=%d reason=%s", k,
                 log_quote(xrc < 0 ? err_str(&xe) : "the patching scores are of another set"));
    if (rc == 0)
        rc = patch_scores_write(&s, c->artifacts_dir, "attribution", e);
out:
    free(poi);
    free(head);
    free(resid);
    patch_scores_free(&ex);
    patch_scores_free(&s);
    patch_base_free(&pb);
    return rc;
}

static int atp_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    return patch_each_set(c, out, atp_set, e);
}

const struct battery_item battery_item_attribution = {
    .name = "attribution",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_PAIR_SETS) | BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS),
    .metrics = atp_metrics,
    .nmetrics = sizeof atp_metrics / sizeof *atp_metrics,
    .run = atp_run,
    .depends_on = "patching",
};
