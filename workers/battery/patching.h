/*
 * patching.h - exact activation patching and path patching on prompt pairs
 * (pair_set.h): the engine under the `patching`, `attribution`,
 * `path_patching` and `circuit` battery items.
 *
 * A pair set is run twice, clean and corrupted; each run's residual stream
 * entering every block (blocks.L.hook_resid_pre), each block's head outputs
 * (blocks.L.attn.hook_z) and the final residual are kept.  The behaviour is
 * the logit difference LD of a pair at the last position (the mean logit of
 * its answers minus that of its wrong answers: the final LayerNorm and the
 * answer rows of the unembedding, nothing else); a set's LD is the mean
 * over its pairs.  A patched run replaces one component's activation in the
 * run of one prompt (the base) by its value in the run of the other (the
 * source) and resumes the forward at the patched layer
 * (gptneox_forward_from): one forward of the layers from there on per
 * component, several components stacked along the batch (PATCH_TOKENS
 * tokens per forward).
 *
 * Directions (Heimersheim & Nanda 2024, "How to use and interpret
 * activation patching"):
 *   PATCH_DENOISE  base corrupted, source clean: is the component enough
 *                  to bring the behaviour back?
 *   PATCH_NOISE    base clean, source corrupted: is it needed?
 * Both are reported on one scale, the normalised logit difference
 *     (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)
 * 0 = the corrupted run's behaviour, 1 = the clean run's (so a denoising
 * score near 1 and a noising score near 0 both mark an important
 * component).  NaN when the clean and corrupted LDs are equal.
 *
 * Path patching (Wang et al. 2022, "Interpretability in the Wild";
 * Goldowsky-Dill et al. 2023, "Localizing Model Behavior with Path
 * Patching"): the effect of a sender head through a receiver head only.
 * The base run is resumed at the sender's layer with the sender's hook_z
 * from the source and every other head's hook_z frozen to its base value
 * (MLPs recomputed, as in Wang et al.); the receiver's hook_z as computed
 * there (its input carries the sender's change) is recorded, and a second
 * base run, resumed at the receiver's layer, gets only that recorded value.
 * The direct path to the logits adds the sender's output change
 * (z_source - z_base) W_O to the base run's final residual, nothing else.
 *
 *     struct patch_base pb;
 *     if (patch_base_run(&pb, m, ps, &e) < 0) ...
 *     double ld[NL * NH];
 *     if (patch_heads(&pb, PATCH_DENOISE, NULL, ld, &e) < 0) ...
 *     double score = patch_normalise(&pb, ld[l * NH + h]);
 *     patch_base_free(&pb);
 */
#ifndef CKPTD_BATTERY_PATCHING_H
#define CKPTD_BATTERY_PATCHING_H

#include "common/err.h"
#include "workers/battery/pair_set.h"
#include "workers/model/gptneox.h"

#define PATCH_TOKENS 2048 /* tokens per stacked forward (at least one variant) */

enum patch_dir {
    PATCH_DENOISE, /* base corrupted, source clean */
    PATCH_NOISE,   /* base clean, source corrupted */
    PATCH_DIR_COUNT
};

/* The cached clean (run 0) and corrupted (run 1) runs of one pair set. */
struct patch_base {
    struct gptneox *m;          /* borrowed; its activation arena is reused */
    const struct pair_set *ps;  /* borrowed */
    int B, T, N, NL, NH, HS, C; /* N = B*T rows */
    float *resid[2];            /* (NL+1, N, C) hook_resid_pre of each block; [NL] the
                                   final residual (the last hook_resid_post) */
    float *z[2];                /* (NL, N, C) hook_z, head h at columns h*HS .. */
    float *gresid[2], *gz[2];   /* with PATCH_BASE_GRADS: d LD / d resid and d LD / d z of
                                   each run, shaped as resid[r] (first NL) and z[r];
                                   else NULL */
    float *dir;                 /* (B, C) mean W_U[answers] - mean W_U[wrong] per pair */
    double *ld_pair[2];         /* (B) LD of each pair in each run */
    double ld[2];               /* the set's mean LD: [0] clean, [1] corrupted */
    double flop;                /* forward FLOPs spent so far (patch_* add theirs) */
    /* private scratch */
    float *stack;               /* (max variants * N, C) */
    double *out_ld;             /* (max variants * B) */
    int max_var;
};

/* Run the clean and corrupted prompts of ps (checked against the model
 * with pair_set_check) and keep what the patched runs start from: one
 * forward of both prompts stacked.  With PATCH_BASE_GRADS, each prompt's
 * run is a taped forward followed by a backward from d LD / d logits (no
 * parameter gradients), keeping the gradients at every hook_resid_pre and
 * hook_z as well: one forward and one backward per run.  On failure pb
 * holds nothing (patch_base_free is still safe).  Errors: ERR_INVALID (the
 * set does not fit the model), ERR_NOMEM, the forward's and backward's. */
#define PATCH_BASE_GRADS 1u
int patch_base_run(struct patch_base *pb, struct gptneox *m, const struct pair_set *ps,
                   unsigned flags, struct err *e) CK_WUR;

void patch_base_free(struct patch_base *pb);

/* (ld - LD_corrupted) / (LD_clean - LD_corrupted); NaN when they are equal. */
double patch_normalise(const struct patch_base *pb, double ld);

/* The LD of a row x (C) of the final residual for pair b: the final
 * LayerNorm, then the pair's answer direction. */
double patch_ld_row(const struct patch_base *pb, const float *x, int b);

/* Residual stream: out (NL, T) gets the set's LD with blocks.L.hook_resid_pre
 * at position t (of every pair) taken from the source run. */
int patch_resid(struct patch_base *pb, enum patch_dir dir, double *out, struct err *e) CK_WUR;

/* Heads: out (NL, NH) gets the set's LD with head h's slice of
 * blocks.L.attn.hook_z taken from the source run at every position
 * (poi_only 0) or at the set's positions of interest only (1). */
int patch_heads(struct patch_base *pb, enum patch_dir dir, int poi_only, double *out,
                struct err *e) CK_WUR;

/* The same for some components only: want (NL, T) or (NL, NH) of 0/1, or
 * NULL for every one; out entries of components not wanted are left as
 * they are, except that patch_resid_some writes every position whose
 * residual is the same in both runs (patch_resid_same: the base run's LD,
 * exact without a forward).  A component's value is patch_resid's or
 * patch_heads' for it up to float rounding: it is stacked with other
 * variants than there, and some OpenBLAS kernels round the rows of a
 * matrix's edge tile differently (measured: identical on the SkylakeX,
 * Sandybridge and Prescott kernels but for 4e-8, up to 2.3e-5 of the
 * normalised scale on Haswell's, tests/test_patching.c). */
int patch_resid_some(struct patch_base *pb, enum patch_dir dir, const unsigned char *want,
                     double *out, struct err *e) CK_WUR;
int patch_heads_some(struct patch_base *pb, enum patch_dir dir, int poi_only,
                     const unsigned char *want, double *out, struct err *e) CK_WUR;

/* 1 when blocks.l.hook_resid_pre at position t is bit-identical in the
 * clean and corrupted runs for every pair (patching it changes nothing). */
int patch_resid_same(const struct patch_base *pb, int l, int t);

/* Path patching from each sender (flat head index L*NH + h) to each
 * receiver (flat index, a later layer than the sender's: other pairs get
 * NaN) and to the logits directly: out (nsend, nrecv + 1), the last column
 * the direct path.  All positions.  Errors: ERR_INVALID for an index out of
 * range, ERR_NOMEM, the forward's. */
int patch_path(struct patch_base *pb, enum patch_dir dir, const int *senders, int nsend,
               const int *receivers, int nrecv, double *out, struct err *e) CK_WUR;

/* Attribution patching (Nanda 2023, "Attribution Patching"; Syed et al.
 * 2023): the first-order estimate of each patched LD from the base run's
 * gradient, LD_base + sum over the component's entries of
 * (a_source - a_base) * d LD / d a at the base run, for every component at
 * once: resid (NL, T) as patch_resid, head and head_poi (NL, NH) as
 * patch_heads (any may be NULL).  Needs a base run with PATCH_BASE_GRADS
 * (ERR_INVALID otherwise).  Sums in double. */
int patch_atp(const struct patch_base *pb, enum patch_dir dir, double *resid, double *head,
              double *head_poi, struct err *e) CK_WUR;

/* Forward FLOPs of one full forward of the set's B prompts (the unit of
 * the cost the items log: forward-equivalents). */
double patch_forward_unit(const struct patch_base *pb);

#endif
