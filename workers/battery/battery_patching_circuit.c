/* circuit v1: the heads that carry a behaviour at this checkpoint, and how
 * that set differs from the previous checkpoint's: the series in which
 * "the circuit forms" shows as a transition.
 *
 * Read, never computed here: the exact activation-patching scores this
 * checkpoint's `patching` job left in ARTIFACTS/patching/set<k>.json
 * (depends_on patching) and the previous checkpoint's in
 * PREV_ARTIFACTS/patching/ (the daemon passes --prev-artifacts once that
 * job is done there; see battery.h, depends_on).
 *
 * The circuit of pair set k is empty when the behaviour is absent, that
 * is when |LD_clean - LD_corrupted| < CIRCUIT_MIN_GAP logits (the ratios
 * are then noise); otherwise it holds every head whose importance
 * (patch_head_importance: the larger of |head_denoise| and |1 -
 * head_noise|, all positions) is at least CIRCUIT_THRESHOLD: a head that
 * alone restores, or alone removes, a fifth of the behaviour.
 *
 * Rows, idx = the pair set:
 *   circuit_gap       LD_clean - LD_corrupted (logits), the baselines' gap
 *   circuit_size      heads in the circuit
 *   circuit_member    layer, head: 1 in the circuit, 0 not
 * and when the previous checkpoint's scores of the same pair set (same
 * digest) and model shape are there:
 *   circuit_jaccard   |A and B| / |A or B| of this and the previous circuit
 *                     (1 when both are empty)
 *   circuit_added, circuit_removed   heads that joined, that left */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/battery/battery_patching.h"

static const char set_idx[] =
    "pair set: 0 the built-in induction pairs, k the k-th --pairs file";

static const struct metric_def circuit_metrics[] = {
    {"circuit_gap", "logits",
     "clean minus corrupted logit difference from the patching scores: below CIRCUIT_MIN_GAP "
     "(1 logit) the behaviour counts as absent and the circuit is empty", "", "", set_idx},
    {"circuit_size", "heads",
     "heads whose exact patching importance max(|head_denoise|, |1 - head_noise|) is at least "
     "CIRCUIT_THRESHOLD (0.2)", "", "", set_idx},
    {"circuit_member", "0/1", "1 if the head is in the circuit", "layer",
     "head index within the layer", set_idx},
    {"circuit_jaccard", "fraction",
     "Jaccard overlap with the previous checkpoint's circuit of the same pair set (1 when both "
     "are empty); absent without the previous checkpoint's scores", "", "", set_idx},
    {"circuit_added", "heads", "heads in this circuit and not in the previous checkpoint's", "",
     "", set_idx},
    {"circuit_removed", "heads", "heads in the previous checkpoint's circuit and not in this",
     "", "", set_idx},
};

/* The members of a score file's circuit into in (NL*NH of 0/1); the size. */
static int members(const struct patch_scores *s, unsigned char *in)
{
    const int n = s->NL * s->NH;
    double gap = s->ld_clean - s->ld_corrupted;
    int size = 0;
    for (int i = 0; i < n; i++) {
        in[i] = fabs(gap) >= CIRCUIT_MIN_GAP && patch_head_importance(s, i) >= CIRCUIT_THRESHOLD;
        size += in[i];
    }
    return size;
}

static int circuit_set(const struct battery_ctx *c, int k, unsigned char *cur,
                       unsigned char *prev, struct rows *out, struct err *e)
{
    struct patch_scores s = {0}, p = {0};
    int rc = patch_scores_read(&s, c->artifacts_dir, "patching", k, e);
    if (rc == ERR_NOTFOUND)
        return err_set(e, ERR_NOTFOUND, "circuit", "no patching scores of pair set %d in "
                       "%s/patching: run the patching item first on this checkpoint", k,
                       c->artifacts_dir);
    if (rc < 0)
        return rc;
    const int NH = s.NH, n = s.NL * s.NH;
    if (s.NL != c->model->cfg.n_layers || NH != c->model->cfg.n_heads) {
        rc = err_set(e, ERR_MISMATCH, "circuit", "the patching scores of pair set %d are of a "
                     "model of %d x %d heads, not this one's %d x %d", k, s.NL, NH,
                     c->model->cfg.n_layers, c->model->cfg.n_heads);
        goto out;
    }
    int size = members(&s, cur);
    if ((rc = rows_add(out, "circuit_gap", -1, -1, k, s.ld_clean - s.ld_corrupted, e)) < 0 ||
        (rc = rows_add(out, "circuit_size", -1, -1, k, size, e)) < 0)
        goto out;
    for (int i = 0; i < n; i++)
        if ((rc = rows_add(out, "circuit_member", i / NH, i % NH, k, cur[i], e)) < 0)
            goto out;
    if (!c->prev_artifacts_dir)
        goto out;
    struct err pe;
    int prc = patch_scores_read(&p, c->prev_artifacts_dir, "patching", k, &pe);
    if (prc < 0 || strcmp(p.digest, s.digest) != 0 || p.NL != s.NL || p.NH != s.NH) {
        log_info("circuit without the previous checkpoint", "set=%d reason=%s", k,
                 log_quote(prc < 0 ? err_str(&pe) : "its scores are of another pair set or model"));
        goto out;
    }
    members(&p, prev);
    int both = 0, either = 0, added = 0, removed = 0;
    for (int i = 0; i < n; i++) {
        both += cur[i] && prev[i];
        either += cur[i] || prev[i];
        added += cur[i] && !prev[i];
        removed += prev[i] && !cur[i];
    }
    if ((rc = rows_add(out, "circuit_jaccard", -1, -1, k,
                       either ? (double)both / either : 1.0, e)) < 0 ||
        (rc = rows_add(out, "circuit_added", -1, -1, k, added, e)) < 0 ||
        (rc = rows_add(out, "circuit_removed", -1, -1, k, removed, e)) < 0)
        goto out;
out:
    patch_scores_free(&p);
    patch_scores_free(&s);
    return rc;
}

static int circuit_run(const struct battery_ctx *c, struct rows *out, struct err *e)
{
    const size_t n = (size_t)c->model->cfg.n_layers * c->model->cfg.n_heads;
    unsigned char *cur = malloc(n), *prev = malloc(n);
    int rc = 0;
    if (!cur || !prev)
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory");
    for (int k = 0; rc == 0 && k <= c->npair_sets; k++)
        rc = circuit_set(c, k, cur, prev, out, e);
    free(prev);
    free(cur);
    return rc;
}

const struct battery_item battery_item_circuit = {
    .name = "circuit",
    .version = 2,
    .needs = BATTERY_NEEDS(BATTERY_NEED_PAIR_SETS) | BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS) |
             BATTERY_NEEDS(BATTERY_NEED_PREV_ARTIFACTS),
    .metrics = circuit_metrics,
    .nmetrics = sizeof circuit_metrics / sizeof *circuit_metrics,
    .run = circuit_run,
    .depends_on = "patching",
};
