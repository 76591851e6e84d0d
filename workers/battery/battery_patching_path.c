/* path_patching v1: how much of a head's effect goes through another head
 * (Wang et al. 2022, "Interpretability in the Wild", section 3.1; Goldowsky-
 * Dill et al. 2023, "Localizing Model Behavior with Path Patching"), on the
 * few heads the exact and the attribution patching of this checkpoint
 * found (ARTIFACTS/patching/ and ARTIFACTS/attribution/, hence
 * depends_on attribution, which depends on patching).
 *
 * The components: the PATH_TOP_K heads of largest importance, the larger
 * of patch_head_importance over the exact and the estimated scores (ties:
 * the lower flat index); every one of them is a sender, and a receiver of
 * every sender in an earlier layer.  Path patching from sender s to
 * receiver r (patch_path, patching.h): the base run resumed at s's layer
 * with s's hook_z from the source and every other head frozen at its base
 * value (MLPs recomputed), r's hook_z recorded there; then the base run with
 * only r's hook_z replaced by the recorded one.  The direct path from s to
 * the logits: s's output change added to the final residual, nothing else
 * recomputed.  Scores are normalised like `patching`'s ((LD -
 * corrupted) / (clean - corrupted)), denoising (base corrupted) and noising
 * (base clean).
 *
 * Rows, with n = n_layers * n_heads and k the pair set:
 *   clean_logit_diff, corrupted_logit_diff   idx k: the baselines
 *   path_component    layer, head, idx k: a head picked, value its rank (0
 *                     the most important); the limit, PATH_TOP_K heads
 *   path_denoise, path_noise   layer, head = the receiver (-1, -1: the
 *                     logits, the direct path), idx = k * n + the sender's
 *                     flat index L*n_heads + h
 * Cost: one forward of both prompts; per direction and per sender layer a
 * forward resumed there, and per receiver layer one resumed there, with
 * the variants stacked (at most K senders + K*(K-1)/2 pairs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "workers/battery/battery_patching.h"

static const char set_idx[] =
    "pair set: 0 the built-in induction pairs, k the k-th --pairs file";
static const char path_idx[] =
    "k * n_layers * n_heads + the sender's layer * n_heads + head, k the pair set";

static const struct metric_def path_metrics[] = {
    {"clean_logit_diff", "logits", "the clean prompts' mean logit difference (baseline 1)", "",
     "", set_idx},
    {"corrupted_logit_diff", "logits",
     "the corrupted prompts' mean logit difference (baseline 0)", "", "", set_idx},
    {"path_component", "rank",
     "a head path patching measured: one of the PATH_TOP_K most important by exact or "
     "attribution patching (0 = the most important)", "layer", "head index within the layer",
     set_idx},
    {"path_denoise", "normalised logit diff",
     "the corrupted run with the sender's clean output reaching only the receiver (or, layer and "
     "head -1, only the logits directly)", "the receiver's layer (-1: the logits)",
     "the receiver head (-1: the logits)", path_idx},
    {"path_noise", "normalised logit diff",
     "the clean run with the sender's corrupted output reaching only the receiver (or, layer "
     "and head -1, only the logits directly; 1 = no effect)",
     "the receiver's layer (-1: the logits)", "the receiver head (-1: the logits)", path_idx},
};

/* Read one score file of set k and check it is of this set. */
static int read_scores(struct patch_scores *s, const struct battery_ctx *c, const char *item,
                       int k, const struct pair_set *ps, struct err *e)
{
    int rc = patch_scores_read(s, c->artifacts_dir, item, k, e);
    if (rc == ERR_NOTFOUND)
        return err_set(e, ERR_NOTFOUND, item, "no scores of pair set %d (%s) in %s/%s: run the "
                       "%s item first on this checkpoint", k, ps->name, c->artifacts_dir, item,
                       item);
    if (rc < 0)
        return rc;
    if (strcmp(s->digest, ps->digest) != 0 || s->NL != c->model->cfg.n_layers ||
        s->NH != c->model->cfg.n_heads) {
        patch_scores_free(s);
        return err_set(e, ERR_MISMATCH, item, "the %s scores of pair set %d are of another set "
                       "or model (digest %s, this set %s): run %s again", item, k, s->digest,
                       ps->digest, item);
    }
    return 0;
}

/* The K most important heads into top (ranked), from both score files. */
static int pick_heads(const struct patch_scores *exact, const struct patch_scores *atp, int *top)
{
    const int n = exact->NL * exact->NH, K = n < PATH_TOP_K ? n : PATH_TOP_K;
    for (int k = 0; k < K; k++) {
        int best = -1;
        double bv = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int j = 0; j < k && !taken; j++)
                taken = top[j] == i;
            double a = patch_head_importance(exact, i), b = patch_head_importance(atp, i);
            double v = a > b ? a : b;
            if (!taken && v > bv) {
                bv = v;
                best = i;
            }
        }
        top[k] = best;
    }
    return K;
}

static int path_set(const struct battery_ctx *c, const struct pair_set *ps, int k,
                    struct rows *out, struct err *e)
{
    struct gptneox *m = c->model;
    const int NH = m->cfg.n_heads, n = m->cfg.n_layers * NH;
    struct patch_scores exact = {0}, atp = {0};
    struct patch_base pb = {0};
    int top[PATH_TOP_K], rc;
    double res[PATH_TOP_K * (PATH_TOP_K + 1)];
    const char *names[PATCH_DIR_COUNT] = {"path_denoise", "path_noise"};
    if ((rc = read_scores(&exact, c, "patching", k, ps, e)) < 0 ||
        (rc = read_scores(&atp, c, "attribution", k, ps, e)) < 0)
        goto out;
    int K = pick_heads(&exact, &atp, top);
    double f0 = m->forward_flop, t0 = mono_now();
    if ((rc = patch_base_run(&pb, m, ps, 0, e)) < 0)
        goto out;
    if ((rc = rows_add(out, "clean_logit_diff", -1, -1, k, pb.ld[0], e)) < 0 ||
        (rc = rows_add(out, "corrupted_logit_diff", -1, -1, k, pb.ld[1], e)) < 0)
        goto out;
    for (int i = 0; i < K; i++)
        if ((rc = rows_add(out, "path_component", top[i] / NH, top[i] % NH, k, i, e)) < 0)
            goto out;
    int npaths = 0;
    for (int d = 0; d < PATCH_DIR_COUNT; d++) {
        if ((rc = patch_path(&pb, (enum patch_dir)d, top, K, top, K, res, e)) < 0)
            goto out;
        for (int s = 0; s < K; s++)
            for (int r = 0; r <= K; r++) {
                double v = res[s * (K + 1) + r];
                int direct = r == K;
                if (!direct && top[r] / NH <= top[s] / NH)
                    continue; /* not a path: the receiver is not in a later layer */
                rc = rows_add(out, names[d], direct ? -1 : top[r] / NH, direct ? -1 : top[r] % NH,
                              k * n + top[s], patch_normalise(&pb, v), e);
                npaths++;
                if (rc < 0)
                    goto out;
            }
    }
    log_info("path patching cost",
             "set=%d name=%s pairs=%d T=%d heads=%d components=%d forward_equivalents=%.1f "
             "seconds=%.3f", k, log_quote(ps->name), ps->B, ps->T, K, npaths,
             (m->forward_flop - f0) / patch_forward_unit(&pb),
             mono_now() - t0);
out:
    patch_base_free(&pb);
    patch_scores_free(&atp);
    patch_scores_free(&exact);
    return rc;
}

static int path_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    return patch_each_set(c, out, path_set, e);
}

const struct battery_item battery_item_path_patching = {
    .name = "path_patching",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_PAIR_SETS) | BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS),
    .metrics = path_metrics,
    .nmetrics = sizeof path_metrics / sizeof *path_metrics,
    .run = path_run,
    .depends_on = "attribution",
};
