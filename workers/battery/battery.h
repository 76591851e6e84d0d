/*
 * battery.h - the battery: the fixed, versioned list of measurements
 * `ckpt-worker analyze` can take of one checkpoint.
 *
 * An item is a named family of metrics computed together (`loss`,
 * `weights`, ...): its version, what it needs besides the weights (an eval
 * token set, ...), the metrics it writes — each with a unit, a description
 * and what its layer/head/idx indices mean — and the function that computes
 * them.  The metric definitions are the dictionary the daemon stores in the
 * `metrics` table (`ckpt-worker battery --json`).
 *
 * Versioning rule: whenever an item's numbers would change for the same
 * checkpoint (a different definition, eval set, iteration count, a fixed
 * bug), its version goes up by one.  Old series keep their version, so a
 * time series never mixes two definitions.
 *
 *     const struct battery_item *it = battery_find("loss");
 *     struct battery_ctx ctx = {.model = m, .eval_tokens = tok, .eval_B = B,
 *                               .eval_T = T, .eval_name = path, .seed = 0};
 *     struct rows r;
 *     rows_init(&r);
 *     if (battery_run_item(it, &ctx, &r, &e) < 0) ...   // nothing buffered is valid
 *     if (rows_write(&r, stdout, &e) < 0) ...
 *     rows_free(&r);
 *
 * Items run in the order asked for; each is a pure function of the
 * checkpoint, its inputs and the seed, so the same inputs give the same
 * bytes.  See README.md in this folder for the design note.
 */
#ifndef CKPTD_BATTERY_H
#define CKPTD_BATTERY_H

#include <stddef.h>
#include <stdint.h>

#include "../../common/err.h"
#include "../model/gptneox.h"
#include "rows.h"

/* What an item needs besides the checkpoint; bits of battery_item.needs. */
enum battery_need {
    BATTERY_NEED_EVAL_TOKENS, /* "eval_tokens": ctx.eval_tokens (--eval-tokens or generated) */
    BATTERY_NEED_COUNT
};
#define BATTERY_NEEDS(k) (1u << (k))

/* One metric an item writes.  layer/head/idx say what each index means for
 * this metric, or "" when the index does not apply (it is always -1). */
struct metric_def {
    const char *name;
    const char *unit;
    const char *description;
    const char *layer;
    const char *head;
    const char *idx;
};

/* The inputs of a run.  Everything is borrowed for the duration of the run. */
struct battery_ctx {
    struct gptneox *model;  /* forward passes reuse (and overwrite) its arena */
    const int *eval_tokens; /* (eval_B, eval_T); NULL unless an item needs them */
    int eval_B, eval_T;
    const char *eval_name;  /* where the eval tokens came from, for errors */
    uint64_t seed;          /* --seed */
};

/* Compute the item's rows into `out` (rows_begin already called).  Returns
 * 0 or a negative code with `e` filled; the rows are then garbage. */
typedef int (*battery_run_fn)(const struct battery_ctx *ctx, struct rows *out,
                              struct err *e);

struct battery_item {
    const char *name;
    int version;                      /* > 0; see the versioning rule above */
    unsigned needs;                   /* BATTERY_NEEDS(BATTERY_NEED_...) bits */
    const struct metric_def *metrics; /* every metric the item writes */
    size_t nmetrics;
    battery_run_fn run;
};

/* ---- the registry ---- */

/* Number of items, and item i (0 <= i < count) in registry order. Borrowed,
 * static. */
size_t battery_count(void);
const struct battery_item *battery_get(size_t i);

/* The item called `name`, or NULL. */
const struct battery_item *battery_find(const char *name);

/* The metric of `it` called `name`, or NULL. */
const struct metric_def *battery_metric(const struct battery_item *it, const char *name);

/* Name of a need ("eval_tokens"), or NULL for a value out of range. */
const char *battery_need_name(enum battery_need k);

/* ---- running ---- */

/* rows_begin(out, it->name, it->version), run the item, then check that
 * every row names one of its declared metrics (ERR_INVALID otherwise).
 * Fails with ERR_INVALID when the item needs eval tokens and ctx has none.
 * On error `e` is prefixed with the item name and `out` must not be
 * written. */
int battery_run_item(const struct battery_item *it, const struct battery_ctx *ctx,
                     struct rows *out, struct err *e) CK_WUR;

/* ---- the default eval set ---- */

#define BATTERY_EVAL_SEQS 16 /* sequences of the generated eval set */
#define BATTERY_EVAL_LEN 128 /* their length, capped at max_position_embeddings */

/* The eval set used when none is given: BATTERY_EVAL_SEQS sequences of
 * T = min(BATTERY_EVAL_LEN, max_positions) ids, uniform in [0, V), drawn
 * row-major with rng_below from a splitmix64 state starting at `seed`
 * (rng.h).  *tokens (B*T) is the caller's to free; ERR_NOMEM or
 * ERR_INVALID (V or max_positions not positive) on failure. */
int battery_eval_default(int **tokens, int *B, int *T, int V, int max_positions,
                         uint64_t seed, struct err *e) CK_WUR;

/* ---- random repeated sequences ---- */

#define BATTERY_REP_SEQS 8  /* sequences */
#define BATTERY_REP_LEN 64  /* L, the length of R, capped at (max_positions-1)/2 */
#define BATTERY_REP_BOS 0   /* the first token of every sequence */
#define BATTERY_REP_SALT 0x5245504541544544ull /* "REPEATED": seed ^ salt starts the state */

/* The random repeated sequences of Olsson et al. 2022 ("In-context Learning
 * and Induction Heads"): BATTERY_REP_SEQS sequences [BOS, R, R], R of
 * L = min(BATTERY_REP_LEN, (max_positions-1)/2, V-1) distinct ids drawn
 * uniformly from [1, V) (no BOS inside R, no id twice, so each query of
 * the second copy has exactly one induction target), T = 2L+1; position
 * 1+j holds R[j] and 1+L+j its repeat.  The ids come from rng_below,
 * sequence by sequence, redrawing BOS and repeats, from a splitmix64 state
 * starting at seed ^ BATTERY_REP_SALT (a different stream from the eval
 * set's).  *tokens (B*T) is the caller's to free; ERR_INVALID when V < 3 or
 * max_positions < 5, ERR_NOMEM. */
int battery_repeated_tokens(int **tokens, int *B, int *T, int *L, int V, int max_positions,
                            uint64_t seed, struct err *e) CK_WUR;

/* ---- the items ---- */

/* loss v1 (needs eval_tokens): next-token cross-entropy on the eval set,
 * computed BATTERY_LOSS_BATCH sequences per forward.
 *   loss         layer -1 head -1 idx -1   mean over every predicted token
 *   loss_by_pos  layer -1 head -1 idx t    mean over sequences of the loss of
 *                                          predicting token t+1 from 0..t
 * Errors: sequences shorter than 2 or longer than max_position_embeddings,
 * ids outside the vocabulary (ERR_INVALID). */
#define BATTERY_LOSS_BATCH 8
extern const struct battery_item battery_item_loss;

/* weights v1: norms of the weight matrices, no inputs.
 *   frobenius_norm, spectral_norm  per matrix: layer L, idx 0 query_key_value,
 *       1 attention.dense, 2 mlp.dense_h_to_4h, 3 mlp.dense_4h_to_h;
 *       layer -1, idx 4 embed_in, 5 embed_out (absent when tied)
 *   total_norm  layer -1 idx -1: sqrt of the sum of squares of every parameter
 * The spectral norm is a power iteration (WEIGHTS_POWER_ITERS at most,
 * stopping when the estimate changes by less than WEIGHTS_POWER_TOL
 * relative), see battery_weights.c. */
#define WEIGHTS_POWER_ITERS 100
#define WEIGHTS_POWER_TOL 1e-6
extern const struct battery_item battery_item_weights;

/* heads v1 (needs eval_tokens): attention-head scores after Olsson et al.
 * 2022 and TransformerLens's head detectors, on the random repeated
 * sequences (battery_repeated_tokens, from --seed) with R of length L:
 *   induction_score        layer L head H  mean attention i -> i-L+1 over the
 *                                          queries i of the second copy
 *   prev_token_score       layer L head H  mean attention i -> i-1, i >= 1
 *   duplicate_token_score  layer L head H  mean attention i -> i-L over the
 *                                          queries of the second copy
 *   attention_entropy      layer L head H  mean entropy (nats) of the pattern
 *                                          rows of the eval set, queries t >= 1
 *   induction_loss, first_copy_loss, induction_loss_drop   layer -1 head -1
 *                          next-token loss on R[1..L-1] of the second and the
 *                          first copy, and first minus second
 * See battery_heads.c for the exact definitions. */
#define HEADS_BATCH 8 /* eval sequences per forward */
extern const struct battery_item battery_item_heads;

/* ablation v1 (needs eval_tokens): per head, the effect on the loss of
 * zero- and mean-ablating its hook_z slice, and direct logit attribution
 * of heads, MLPs, the embedding and the biases; on two token sets, idx 0
 * the first ABLATION_EVAL_SEQS eval sequences (every next-token
 * prediction) and idx 1 the first ABLATION_REP_SEQS repeated sequences
 * (predictions of R[1..L-1] in the second copy, the induction loss).
 * Ablated forwards resume at the ablated layer (gptneox_forward_from) with
 * variants stacked along the batch, up to ABLATION_TOKENS tokens per
 * forward.  See battery_ablation.c for the definitions. */
#define ABLATION_EVAL_SEQS 4
#define ABLATION_REP_SEQS 4
#define ABLATION_TOKENS 1024
extern const struct battery_item battery_item_ablation;

#endif
