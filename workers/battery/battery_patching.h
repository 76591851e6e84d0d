/*
 * battery_patching.h - what the patching items (`patching`, `attribution`,
 * `path_patching`, `circuit`; battery_patching*.c) share: their pair sets,
 * the component families they score, and the score files they leave for
 * each other and for the next checkpoint.
 *
 * Pair sets (the idx of every row): 0 is the built-in induction set
 * (pair_set_induction from --seed, PAIR_IND_PAIRS pairs), k >= 1 the k-th
 * --pairs file (ctx.pair_sets[k-1]).
 *
 * Components, in families (patching.h gives the two directions and the
 * normalised scale):
 *   head_denoise, head_noise            head (L, h)'s hook_z at every position
 *   head_denoise_poi, head_noise_poi    ... at the set's positions of interest
 *   resid_denoise, resid_noise          blocks.L.hook_resid_pre at position t
 *
 * Score files: ARTIFACTS/<item>/set<k>.json, one per pair set,
 *   {"set": k, "name": ..., "digest": ..., "n_layers": NL, "n_heads": NH,
 *    "T": T, "positions": [...], "ld_clean": x, "ld_corrupted": y,
 *    "head_denoise": [NL*NH values, layer-major], ..., "resid_noise": [NL*T],
 *    "estimate_head_denoise": [...], ... (patching v2: the attribution
 *    estimates of every component)}
 * with null for NaN (patching v2: also where no exact score was taken).  `patching` writes the exact scores, `attribution` its
 * estimates; `attribution` reads the exact ones for its error,
 * `path_patching` both to pick its components, `circuit` the exact ones of
 * this and of the previous checkpoint.
 *
 *     struct patch_scores s;
 *     if (patch_scores_read(&s, ctx->artifacts_dir, "patching", 0, &e) < 0) ...
 *     double v = s.v[PATCH_FAM_HEAD_DENOISE][l * s.NH + h];
 *     patch_scores_free(&s);
 */
#ifndef CKPTD_BATTERY_PATCHING_ITEMS_H
#define CKPTD_BATTERY_PATCHING_ITEMS_H

#include "workers/battery/battery.h"
#include "workers/battery/pair_set.h"
#include "workers/battery/patching.h"

enum patch_family {
    PATCH_FAM_HEAD_DENOISE,
    PATCH_FAM_HEAD_NOISE,
    PATCH_FAM_HEAD_DENOISE_POI,
    PATCH_FAM_HEAD_NOISE_POI,
    PATCH_FAM_RESID_DENOISE,
    PATCH_FAM_RESID_NOISE,
    PATCH_FAM_COUNT
};

/* "head_denoise", ...: the family's name (its metric in `patching`). */
const char *patch_family_name(enum patch_family f);
/* 1 for the head families (values NL*NH), 0 for resid (NL*T). */
int patch_family_is_head(enum patch_family f);

struct patch_scores {
    int set, NL, NH, T;
    char name[128];
    char digest[17];
    double ld_clean, ld_corrupted;
    double *v[PATCH_FAM_COUNT]; /* normalised scores; NaN where unknown */
    /* patching v2's attribution estimates of every component (the file's
     * "estimate_<family>" lists), or NULL where the file has none */
    double *est[PATCH_FAM_COUNT];
};

/* Values of family f: NL*NH or NL*T. */
size_t patch_family_len(const struct patch_scores *s, enum patch_family f);

/* Rows <prefix><family> of every family: layer L, head = the head (head
 * families) or the position (resid), idx = the set.  ERR_NOMEM. */
int patch_scores_emit(const struct patch_scores *s, const char *prefix, struct rows *out,
                      struct err *e) CK_WUR;

/* Empty scores for a set (every value NaN).  ERR_NOMEM. */
int patch_scores_init(struct patch_scores *s, int set, const struct pair_set *ps, int NL, int NH,
                      struct err *e) CK_WUR;
void patch_scores_free(struct patch_scores *s);

/* DIR/<item>/set<k>.json, written atomically (directories made).
 * ERR_IO / ERR_NOMEM. */
int patch_scores_write(const struct patch_scores *s, const char *dir, const char *item,
                       struct err *e) CK_WUR;

/* Read DIR/<item>/set<k>.json into s.  ERR_NOTFOUND when the file is not
 * there, ERR_FORMAT when it is not a score file; s is then empty. */
int patch_scores_read(struct patch_scores *s, const char *dir, const char *item, int set,
                      struct err *e) CK_WUR;

/* The pair sets of a run: *n of them, set k in sets[k] (sets[0] the
 * built-in induction set, owned by *builtin, which the caller frees with
 * pair_set_free).  sets has room for 1 + ctx->npair_sets.  Errors: the
 * built-in set's (ERR_INVALID for a model too small for it), ERR_NOMEM. */
int patch_sets_open(const struct battery_ctx *c, struct pair_set **builtin,
                    const struct pair_set **sets, int *n, struct err *e) CK_WUR;

/* Run set_fn on every pair set of the run (patch_sets_open's order, set
 * k as its index), stopping at the first error, which names the set. */
int patch_each_set(const struct battery_ctx *c, struct rows *out,
                   int (*set_fn)(const struct battery_ctx *c, const struct pair_set *ps, int k,
                                 struct rows *out, struct err *e),
                   struct err *e) CK_WUR;

/* The importance of head i in a score file: the largest of |denoise| and
 * |1 - noise| (all positions), each the exact score where there is one,
 * else the file's estimate (patching v2 off the sweep checkpoints); NaN
 * values count as 0. */
double patch_head_importance(const struct patch_scores *s, int i);

/* path_patching: heads picked as senders and receivers; circuit: the
 * importance a head needs to be a member, and the clean-corrupted gap
 * (logits) below which the behaviour counts as absent (empty circuit). */
#define PATH_TOP_K 6

/* patching v2 off the sweep checkpoints: per pair set and family, the
 * PATCH_TOP_K components of largest estimated effect and PATCH_SAMPLE
 * drawn uniformly from the rest (splitmix64 from --seed xor the salt, the
 * set and the family) are patched exactly. */
#define PATCH_TOP_K 5
#define PATCH_SAMPLE 3
#define PATCH_SAMPLE_SALT 0x5041544348534d50ull /* "PATCHSMP" */
#define CIRCUIT_THRESHOLD 0.2
#define CIRCUIT_MIN_GAP 1.0

#endif
