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

#include "common/err.h"
#include "workers/battery/evalpass.h"
#include "workers/battery/pair_set.h"
#include "workers/battery/probe_set.h"
#include "workers/battery/rows.h"
#include "workers/model/gptneox.h"

/* What an item needs besides the checkpoint; bits of battery_item.needs. */
enum battery_need {
    BATTERY_NEED_EVAL_TOKENS, /* "eval_tokens": ctx.eval_tokens (--eval-tokens or generated) */
    BATTERY_NEED_PROBE_SETS,  /* "probe_sets": reads ctx.probe_sets (--probe) when given;
                                 optional, the item runs without them */
    BATTERY_NEED_TASK,        /* "task": ctx.task_path, a toy run's task.json (--task, or
                                 found next to the checkpoint) */
    BATTERY_NEED_ARTIFACTS,   /* "artifacts": writes files under ctx.artifacts_dir
                                 (--artifacts DIR), in ARTIFACTS_DIR/<item>/...; the item
                                 fails without it */
    BATTERY_NEED_PREV_ARTIFACTS, /* "prev_artifacts": reads the previous checkpoint's
                                 artifacts from ctx.prev_artifacts_dir (--prev-artifacts
                                 DIR) when given; see battery_item.depends_on */
    BATTERY_NEED_TASK_OPTIONAL, /* "task_optional": reads ctx.task_path when a toy run's
                                 task.json is found; the item runs without it */
    BATTERY_NEED_SAE_DICTS,   /* "sae_dicts": reads ctx.sae_fixed_dirs (--sae DIR); the item
                                 fails without one */
    BATTERY_NEED_PAIR_SETS,   /* "pair_sets": reads ctx.pair_sets (--pairs) when given;
                                 optional, the item has a built-in set */
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

/* Where the checkpoint comes from, written into the files items leave
 * (an SAE's cfg.json metadata, sae_file.h).  Strings borrowed; NULL when
 * unknown. */
struct battery_provenance {
    const char *model_name; /* TransformerLens's name of the model ("pythia-70m-deduped") */
    const char *run;        /* the ckptd run */
    long long step;         /* the checkpoint's training step, or -1 */
    const char *revision;   /* a revision that is not "stepN", or NULL */
};

/* The inputs of a run.  Everything is borrowed for the duration of the run. */
struct battery_ctx {
    struct gptneox *model;  /* forward passes reuse (and overwrite) its arena */
    const int *eval_tokens; /* (eval_B, eval_T); NULL unless an item needs them */
    int eval_B, eval_T;
    const char *eval_name;  /* where the eval tokens came from, for errors */
    uint64_t seed;          /* --seed */
    /* user probe datasets (--probe, in order; probe_set.h), or NULL/0 */
    const struct probe_set *const *probe_sets;
    int nprobe_sets;
    const char *task_path;  /* a toy run's task.json, or NULL */
    /* This checkpoint's artifact directory (--artifacts; an item writes below
     * artifacts_dir/<item>/), and the previous checkpoint's of the same run
     * (--prev-artifacts), or NULL. */
    const char *artifacts_dir;
    const char *prev_artifacts_dir;
    /* SAE sites (--sae-site, hook names, in order), or NULL/0: the default
     * (sae_sites_resolve) */
    const char *const *sae_sites;
    int nsae_sites;
    /* The eval set's shared forward (evalpass.h), or NULL: an item that
     * reads it then runs a pass of its own (battery_run_item). */
    struct evalpass *pass;
    /* --full-sweep: this checkpoint is on the run's sparse skeleton, where
     * items with a sparse exact part run it in full (ablation: every
     * head ablated exactly). */
    int full_sweep;
    /* the checkpoint's provenance, or NULL (unknown) */
    const struct battery_provenance *provenance;
    /* fixed dictionaries for sae_fixed (--sae DIR, in order), or NULL/0 */
    const char *const *sae_fixed_dirs;
    int nsae_fixed;
    /* prompt-pair sets (--pairs, in order; pair_set.h), or NULL/0 */
    const struct pair_set *const *pair_sets;
    int npair_sets;
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
    /* The item whose artifacts this one reads, or NULL: its job on the same
     * checkpoint, and (with BATTERY_NEED_PREV_ARTIFACTS) on the previous
     * checkpoint of the run, must be done before this item's job runs. */
    const char *depends_on;
    /* 1: left out of a run's default battery (ckptd add-run without
     * --items); it runs when named.  "opt_in" in `battery --json`. */
    int opt_in;
    /* The item's part of the eval set's shared forward, or NULL: adds a
     * consumer named after the item to the pass (evalpass_add); run then
     * takes the consumer's state from ctx->pass (evalpass_state).  Called
     * with ctx->pass being that pass. */
    int (*attach)(const struct battery_ctx *ctx, struct evalpass *p, struct err *e);
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
 * Fails with ERR_INVALID when the item needs eval tokens or task metadata
 * and ctx has none.
 * On error `e` is prefixed with the item name and `out` must not be
 * written. */
int battery_run_item(const struct battery_item *it, const struct battery_ctx *ctx,
                     struct rows *out, struct err *e) CK_WUR;

/* The shared eval forward for the items (n of them) that read it: when
 * ctx has eval tokens and one of them has an attach function, a pass is
 * created into ctx->pass and every such item whose needs are met attaches
 * to it (an item whose attach fails is left out and will run a pass of
 * its own, reporting the same error then).  ctx->pass stays NULL when no
 * item reads it.  The pass runs when the first of them runs, or at
 * evalpass_run; the caller frees it with evalpass_free.  Errors: ERR_NOMEM. */
int battery_pass_prepare(struct battery_ctx *ctx, const struct battery_item *const *items,
                         size_t n, struct err *e) CK_WUR;

/* Check ctx's eval set for an item that runs the model on it: sequences of
 * at least 2 tokens, no longer than max_position_embeddings, every id in
 * [0, vocab_size).  ERR_INVALID naming the eval set (and the sequence and
 * position of a bad id). */
int battery_check_eval(const struct battery_ctx *c, struct err *e) CK_WUR;

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

/* loss v2 (needs eval_tokens): next-token cross-entropy on the eval set,
 * computed BATTERY_LOSS_BATCH sequences per forward.
 *   loss         layer -1 head -1 idx -1   mean over every predicted token
 *   loss_by_pos  layer -1 head -1 idx t    mean over sequences of the loss of
 *                                          predicting token t+1 from 0..t
 *   icl_score    idx -1   loss of token index 500 - loss of token index 50
 *                         (loss_by_pos 499 - 49), when T >= 501
 *   icl_score_scaled  idx hi = T-1: loss of token index hi - loss of token
 *                         index floor(hi/10), when T >= 11
 * (a token's loss is the loss of predicting it; Olsson et al. 2022).
 * Errors: sequences shorter than 2 or longer than max_position_embeddings,
 * ids outside the vocabulary (ERR_INVALID). */
#define BATTERY_LOSS_BATCH 8
#define LOSS_ICL_LATE 500 /* token indices of Olsson et al.'s ICL score */
#define LOSS_ICL_EARLY 50
extern const struct battery_item battery_item_loss;

/* weights v2: norms, singular values and ranks of the weight matrices, no
 * inputs.
 *   frobenius_norm, spectral_norm, effective_rank, stable_rank  per matrix:
 *       layer L, idx 0 query_key_value, 1 attention.dense,
 *       2 mlp.dense_h_to_4h, 3 mlp.dense_4h_to_h; layer -1, idx 4 embed_in,
 *       5 embed_out (absent when tied)
 *   qk_frobenius_norm, qk_spectral_norm, ov_frobenius_norm, ov_spectral_norm
 *       layer L, head h: W_QK = W_Q^T W_K and W_OV = W_O W_V of the head
 *   total_norm  layer -1 idx -1: sqrt of the sum of squares of every parameter
 * Singular values are the square roots of the eigenvalues (LAPACK dsyevd)
 * of the Gram matrix formed in double, WEIGHTS_GRAM_ROWS rows at a time;
 * see battery_weights.c. */
#define WEIGHTS_GRAM_ROWS 256
extern const struct battery_item battery_item_weights;

/* integrity v1: a fingerprint of the weights, no inputs, one pass over
 * them (battery_integrity.c has the definition; the daemon compares the
 * fingerprints of a run's checkpoints, daemon/detect/integrity.h).
 *   sketch         layer -1 head -1 idx k: count sketch of every parameter,
 *                  INTEGRITY_K buckets
 *   tensor_sketch  layer L (or -1) head = the tensor's slot, idx k: count
 *                  sketch of one tensor, INTEGRITY_TENSOR_K buckets
 *   tensor_norm    layer, head as above, idx -1: the tensor's L2 norm
 *   param_norm     -1 -1 -1: the L2 norm of every parameter */
#define INTEGRITY_K 256            /* buckets of the whole-model sketch (a power of 2) */
#define INTEGRITY_TENSOR_K 64      /* buckets of a tensor's sketch (a power of 2) */
#define INTEGRITY_LAYER_TENSORS 12 /* tensor slots of a layer */
#define INTEGRITY_SALT 0x494e544547524954ull /* "INTEGRIT": xor'ed into every name hash */
extern const struct battery_item battery_item_integrity;

/* The sketch's hash state for a tensor name: FNV-1a 64 of its bytes xor
 * INTEGRITY_SALT (exposed for tests). */
uint64_t integrity_name_hash(const char *name);

/* Add x (n) to the whole-model sketch (INTEGRITY_K) and to the tensor's
 * own sketch (INTEGRITY_TENSOR_K, the caller zeroes it); *sumsq gets the
 * sum of squares of x. */
void integrity_sketch_add(const float *x, size_t n, const char *name, double *whole, double *own,
                          double *sumsq);

/* probes v1 (needs eval_tokens, probe_sets): linear probes (probe_fit.h) per
 * layer, on hook_embed (layer -1) and blocks.L.hook_resid_post (layer L),
 * fitted on a train split of the sequences and scored on the held-out split
 * (sequence b held out when b % 5 == 4).  Built-in tasks on the eval set:
 *   prev_token_acc       softmax probe for the previous token's identity
 *                        among the PROBES_TOP_K most frequent tokens of the
 *                        train sequences (other positions dropped)
 *   seen_before_acc      binary: the current token occurred earlier in the
 *                        sequence
 *   position_r2          ridge regression of the position t, held-out R^2
 * each with *_shuffled_* (the probe fitted on shuffled train labels) and,
 * for classifiers, *_majority_acc (layer -1: the train majority class on the
 * held-out split).  User sets (ctx.probe_sets) write user_acc,
 * user_majority_acc, user_shuffled_acc or user_r2, user_shuffled_r2 with idx
 * = the set's position in ctx.probe_sets.  Positions are t >= 1, capped at
 * PROBES_MAX_TRAIN + PROBES_MAX_HELDOUT per task (a seeded sample); a task
 * with fewer than PROBES_MIN_TRAIN train or PROBES_MIN_HELDOUT held-out
 * positions, or one train class, writes no rows.  Errors: fewer than 5
 * eval sequences, sequences longer than max_position_embeddings or ids
 * outside the vocabulary (ERR_INVALID). */
#define PROBES_TOP_K 16
#define PROBES_MAX_TRAIN 4096
#define PROBES_MAX_HELDOUT 1024
#define PROBES_MIN_TRAIN 16
#define PROBES_MIN_HELDOUT 4
#define PROBES_HARVEST_BYTES ((size_t)256 << 20) /* activations held at once */
extern const struct battery_item battery_item_probes;

/* The built-in labels of one eval sequence tok (T), exposed for tests:
 * prev[t] = index in top (K) of tok[t-1], or -1 (and for t = 0);
 * seen[t] = 1 if tok[t] is in tok[0..t-1], else 0. */
void probes_labels(const int *tok, int T, const int *top, int K, int *prev, int *seen);

/* The K most frequent ids of tok (n) in [0, V), by count then lower id;
 * only ids that occur.  Returns how many were found (<= K), or ERR_NOMEM. */
int probes_top_tokens(const int *tok, size_t n, int V, int K, int *top);

/* lens v3 (needs eval_tokens): the logit lens, the final LayerNorm and the
 * unembedding applied to each layer's residual stream, on the first
 * lens_seqs(B, T) sequences of the eval set: the fewest whole sequences
 * holding LENS_TOKENS tokens (all of them when the set is smaller).
 *   lens_loss, lens_kl, lens_top1_agreement   layer l: after block l
 *       (blocks.l.hook_resid_post), -1: the embedding (hook_embed)
 * The residual streams come from the eval set's shared forward
 * (evalpass.h); the last layer is the forward's own logits.  Lensed logits
 * are computed LENS_GEMM_ROWS (layer, token) rows per sgemm, one tile of
 * LENS_VOCAB_TILE vocabulary entries at a time, and reduced in cache.  See
 * battery_lens.c. */
#define LENS_GEMM_ROWS 512
#define LENS_VOCAB_TILE 2048
#define LENS_TOKENS 2048
static inline int lens_seqs(int B, int T)
{
    int n = (LENS_TOKENS + T - 1) / T;
    return n < B ? n : B;
}
extern const struct battery_item battery_item_lens;

/* composition v1: Q-, K- and V-composition scores between every pair of
 * heads in different layers (Elhage et al. 2021), LayerNorm folded.
 *   q_composition, k_composition, v_composition   layer L2, head h2 (the
 *       reading head), idx L1 * n_heads + h1 (the writing head, L1 < L2)
 *   q_composition_baseline, k_composition_baseline, v_composition_baseline
 *       the mean score of the same computation on COMPOSITION_DRAWS
 *       random Gaussian layer pairs of the model's shapes (fixed seed)
 * See battery_composition.c. */
#define COMPOSITION_DRAWS 2
extern const struct battery_item battery_item_composition;
/* heads v1 (needs eval_tokens): attention-head scores after Olsson et al.
 * 2022 and TransformerLens's head detectors, on the random repeated
 * sequences (battery_repeated_tokens, from --seed) with R of length L:
 *   induction_score        layer L head H  mean attention i -> i-L+1 over the
 *                                          queries i of the second copy
 *   prev_token_score       layer L head H  mean attention i -> i-1, i >= 1
 *   duplicate_token_score  layer L head H  mean attention i -> i-L over the
 *                                          queries of the second copy
 *   attention_entropy      layer L head H  mean entropy (nats) of the pattern
 *                                          rows of the eval set's first
 *                                          lens_seqs(B, T) sequences (v2),
 *                                          queries t >= 1
 *   induction_loss, first_copy_loss, induction_loss_drop   layer -1 head -1
 *                          next-token loss on R[1..L-1] of the second and the
 *                          first copy, and first minus second
 * See battery_heads.c for the exact definitions. */
#define HEADS_BATCH 8 /* eval sequences per forward */
extern const struct battery_item battery_item_heads;

/* ablation v4 (needs eval_tokens): per head, the effect on the loss of
 * zero- and mean-ablating its hook_z slice, estimated for every head by
 * attribution patching (one forward and one backward) and computed
 * exactly for the ABLATION_TOP_K heads of largest |estimate|, the
 * ABLATION_TOP_DLA of largest |dla_head| and a random sample of
 * ABLATION_SAMPLE others (per token set and kind; every head when
 * ctx.full_sweep), with the error of the estimate where both exist;
 * and direct logit attribution of heads, MLPs, the embedding and the
 * biases; on two token sets, idx 0 the first ablation_seqs(B, T) eval
 * sequences (every next-token prediction: the fewest whole sequences
 * holding ABLATION_EVAL_TOKENS tokens, at most ABLATION_EVAL_SEQS, all of
 * a smaller set; v2 took ABLATION_EVAL_SEQS whatever T) and idx 1 the first
 * ABLATION_REP_SEQS repeated sequences (predictions of R[1..L-1] in the
 * second copy, the induction loss).  Ablated forwards resume at the
 * ablated layer (gptneox_forward_from) with variants stacked along the
 * batch, up to ABLATION_TOKENS tokens per forward; the clean run is taped
 * in groups of sequences whose tape fits ABLATION_TAPE_BYTES.
 * ablation_exact v1 (opt-in): every head exactly at every checkpoint, the
 * rows of ablation v1 (on the first ABLATION_EVAL_SEQS eval sequences, as
 * v1).  See battery_ablation.c for the definitions. */
#define ABLATION_EVAL_SEQS 4
#define ABLATION_EVAL_TOKENS 1024
static inline int ablation_seqs(int B, int T)
{
    int n = (ABLATION_EVAL_TOKENS + T - 1) / T;
    n = n < ABLATION_EVAL_SEQS ? n : ABLATION_EVAL_SEQS;
    return n < B ? n : B;
}
#define ABLATION_REP_SEQS 4
#define ABLATION_TOKENS 1024
#define ABLATION_TOP_K 5
#define ABLATION_TOP_DLA 1
#define ABLATION_SAMPLE 3
#define ABLATION_TAPE_BYTES ((size_t)768 << 20)
extern const struct battery_item battery_item_ablation_exact;
extern const struct battery_item battery_item_ablation;

/* task v1 (needs task): a toy training run's metrics recomputed from the
 * checkpoint and its task.json (task_load_json, task_eval: the values
 * train_log.jsonl records), and for modular addition the progress measures
 * of Nanda et al. 2023:
 *   train_loss, train_acc, test_loss, test_acc   (modular addition) or
 *   loss, acc, icl_loss, icl_acc                 (induction), idx -1
 *   embed_fourier_norm   idx k: norm of W_E[0:p]'s projection on the
 *                        Fourier basis of frequency k, 0 .. floor(p/2)
 *   key_frequency        idx k, for the TASK_KEY_FREQS largest (k >= 1):
 *                        its share of the non-constant squared norm
 *   fourier_key_fraction the key frequencies' total share (sparsity)
 *   answer_loss, restricted_loss, excluded_loss   train-set losses over the
 *                        p answer tokens of the logits, of their projection
 *                        on the key frequencies of a+b (plus the constant),
 *                        and of the logits with those removed
 *   weight_norm          sqrt of the sum of squares of every parameter
 * Definitions in battery_task.c.  Errors: task.json unreadable or
 * inconsistent, a checkpoint of another vocabulary (ERR_INVALID). */
#define TASK_KEY_FREQS 5
extern const struct battery_item battery_item_task;

/* llc v1 (needs eval_tokens, task_optional; opt-in): the local learning
 * coefficient at the checkpoint's weights by SGLD (sgld.h; Lau et al. 2023,
 * devinterp; Hoogland et al. 2024), on a toy run's training data when
 * ctx.task_path is set (LLC_TASK_SEQS sequences for induction), else on the
 * eval set; minibatches of max(1, LLC_BATCH_TOKENS / T) sequences.
 *   init_loss            loss at the checkpoint over the whole data set
 *   trace_loss           layer chain, idx draw: the minibatch loss (trace)
 *   llc_chain            layer chain: nbeta * (mean trace - init_loss)
 *   llc, llc_std         mean and sample std over the healthy chains
 *   chains_diverged      chains stopped (non-finite loss, or a rise above
 *                        LLC_MAX_RISE_LOGV * ln V); chain_diverged_step
 *                        (layer chain) the step each stopped at
 * Samples a writable copy: ctx.model is not written.  Seeded by ctx.seed.
 * Errors: a non-finite weight (ERR_NUMERIC naming the tensor), a bad eval
 * set or task.json (ERR_INVALID).  See battery_llc.c. */
#define LLC_NBETA 100.0      /* nbeta (0: devinterp's default m / ln m) */
#define LLC_GAMMA 1e5        /* localisation */
#define LLC_EPSILON 1e-6     /* step size */
#define LLC_CHAINS 4
#define LLC_DRAWS 100
#define LLC_BURNIN 100
#define LLC_BATCH_TOKENS 256 /* minibatch size in tokens (whole sequences) */
#define LLC_TASK_SEQS 256    /* induction runs: sequences of the data set */
#define LLC_MAX_RISE_LOGV 10.0
extern const struct battery_item battery_item_llc;

/* The item's hyperparameters (llc_default_params: the LLC_* values), and
 * the item run with others (tests, benchmarks). */
struct llc_params {
    double nbeta; /* 0: sgld_default_nbeta of the minibatch size */
    double gamma, epsilon;
    int chains, draws, burnin, batch_tokens;
};
extern const struct llc_params llc_default_params;
int battery_llc_run(const struct battery_ctx *ctx, const struct llc_params *p, struct rows *out,
                    struct err *e) CK_WUR;

/* Modular-addition Fourier helpers, exposed for tests.  Frequencies are
 * k = 0 .. floor(p/2) (modadd_nfreqs(p) of them). */
int modadd_nfreqs(int p);
/* norms (nfreqs) of embed's rows 0..p-1 (row-major, C columns) on the
 * orthonormal Fourier basis.  Errors: ERR_NOMEM. */
int modadd_fourier_norms(const float *embed, int p, int C, double *norms, struct err *e) CK_WUR;
/* The K largest non-constant frequencies by norm (ties: lower k) into keys,
 * largest first; returns how many (min(K, nfreqs - 1)). */
int modadd_key_freqs(const double *norms, int p, int K, int *keys);
/* The restricted/excluded projection: add the p answer logits of every
 * pair (a, b) of the grid exactly once, finish, then take per-pair losses
 * (scratch: 3p doubles; losses in nats, softmax over the p answers). */
struct modadd_proj;
int modadd_proj_create(struct modadd_proj **out, int p, const int *keys, int nkeys,
                       struct err *e) CK_WUR;
void modadd_proj_add(struct modadd_proj *q, int a, int b, const float *logits);
void modadd_proj_finish(struct modadd_proj *q);
void modadd_proj_loss(const struct modadd_proj *q, int a, int b, const float *logits,
                      double *scratch, double *full, double *restricted, double *excluded);
void modadd_proj_free(struct modadd_proj *q);

/* sae v1 and sae_relu v1 (need eval_tokens, artifacts, prev_artifacts): a
 * sparse autoencoder (sae.h) trained on blocks.{n_layers/2}.hook_resid_post
 * of the eval set, TopK (sae) or ReLU + L1 (sae_relu), its metrics, and the
 * dictionary in SAELens's layout under ARTIFACTS/<item>/<hook>/, one per
 * site (ctx.sae_sites); warm start from PREV_ARTIFACTS/<item>/<hook>/ when
 * it matches.  Rows (layer = the
 * site's layer): fvu, explained_variance, l0, dead_fraction,
 * dense_fraction, ce_clean, ce_spliced, ce_zero_ablated, loss_recovered,
 * kl_spliced, density_histogram (idx bin), feature_density and
 * feature_mean_activation (idx latent), warm_start, train_loss,
 * norm_scaling_factor.  Definitions in battery_sae.c. */
#define SAE_EXPANSION 4          /* d_sae = SAE_EXPANSION * d_model */
#define SAE_K 32                 /* TopK's k */
#define SAE_RELU_L1_ITEM 0.25    /* sae_relu's L1 coefficient / sqrt(d_model) */
#define SAE_TRAIN_TOKENS 65536L  /* training tokens (epochs over the train split) */
#define SAE_TRAIN_BATCH 256      /* tokens per Adam step */
#define SAE_DENSE_DENSITY 0.1    /* dense: active on more than this fraction */
#define SAE_DENSITY_BINS 13      /* density_histogram bins */
#define SAE_HARVEST_BYTES ((size_t)256 << 20) /* activations harvested, at most */
#define SAE_SPLICE_FLOATS ((size_t)16 << 20)  /* clean logits kept for the KL */
extern const struct battery_item battery_item_sae;
extern const struct battery_item battery_item_sae_relu;

#define SAE_SITES_MAX 64          /* sites of one item (one per layer) */

/* An SAE site: a d_model-wide hook of a block. */
struct sae_site {
    enum hook_kind kind; /* HOOK_RESID_PRE, _ATTN_OUT, _RESID_MID, _MLP_OUT, _RESID_POST */
    int layer;
    char name[64];       /* blocks.L.hook_... */
};
/* Is (kind, layer) an SAE site of a model of cfg?  0, or ERR_INVALID saying
 * why (another hook kind, a layer out of range, hook_resid_mid in a
 * parallel-residual model, which has none). */
int sae_site_check(const struct gptneox_config *cfg, enum hook_kind kind, int layer,
                   struct err *e) CK_WUR;
/* The sites named (n of them, hook names), checked, into out (room for
 * SAE_SITES_MAX); with n = 0 the default, blocks.{n_layers/2}.hook_resid_post.
 * Returns the number of sites, or ERR_INVALID: a name that is not a hook,
 * not a site (sae_site_check), a second site of one layer, more than
 * SAE_SITES_MAX. */
int sae_sites_resolve(const struct gptneox_config *cfg, const char *const *names, int n,
                      struct sae_site *out, struct err *e) CK_WUR;

/* The width of one token's activation at (kind, layer) when an SAE can be
 * spliced there, else 0: d_model for hook_embed (layer -1), hook_resid_pre,
 * hook_attn_out, hook_mlp_out, hook_resid_post and hook_resid_mid (a
 * sequential-residual model's only); n_heads * d_head for attn.hook_z (its
 * heads side by side, SAELens's hook_z reshape); d_mlp for mlp.hook_post. */
int sae_splice_width(const struct gptneox_config *cfg, enum hook_kind kind, int layer);

/* The splice metrics of an SAE s (raw activations) at (kind, layer), a hook
 * of width s->d_in (sae_splice_width), on tokens (B,T): mean next-token
 * cross-entropy clean, with the activation replaced by s's reconstruction
 * (a write hook), and zeroed; mean KL(clean || spliced) over positions; and
 * loss_recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean).
 * Errors: ERR_INVALID (not a splice hook, d_in or sizes), ERR_NOMEM, the
 * forward's. */
struct sae;
struct sae_splice {
    double ce_clean, ce_spliced, ce_zero, kl_spliced, loss_recovered;
};
int sae_splice_eval(struct gptneox *m, const struct sae *s, enum hook_kind kind, int layer,
                    const int *tokens, int B, int T, struct sae_splice *out,
                    struct err *e) CK_WUR;
/* Warm start: when PREV/<item>/<hook>/ holds a dictionary (sae_load) of
 * s's architecture, d_in, d_sae and k, copy it into s, biases multiplied by
 * `scale` (the training normalisation), and return 1; else leave s alone,
 * log why, and return 0. */
int sae_warm_start(struct sae *s, const char *prev_artifacts_dir, const char *item,
                   const char *hook, double scale);
/* density_histogram's bin of a density in [0, 1]. */
int sae_density_bin(double density);
/* sae_match v1 (needs artifacts, prev_artifacts; depends on sae): each SAE
 * feature of this checkpoint (ARTIFACTS/sae/<hook_name>/, SAELens layout)
 * matched to the previous checkpoint's (PREV/sae/<hook_name>/) by the
 * cosine similarity of decoder rows, mutual nearest neighbours at or above
 * SAE_MATCH_THRESHOLD; per feature (layer = the site's hook_layer, idx =
 * feature) matched_prev, match_similarity, best_prev, split_parent; per
 * site features_matched, features_born, features_died.  Definitions in
 * battery_sae_match.c. */
#define SAE_MATCH_THRESHOLD 0.7
#define SAE_MATCH_BLOCK_FLOATS ((size_t)1 << 22) /* similarity floats per sgemm block */
extern const struct battery_item battery_item_sae_match;

/* The matching itself, exposed for tests: cur (n, d) and prev (m, d) unit
 * decoder rows; per current feature matched (-1: born), best_prev,
 * split_parent (-1: none) and sim (cosine to best_prev); *n_died the
 * previous features nothing is matched to.  ERR_NOMEM. */
int sae_match_dicts(const float *cur, int n, const float *prev, int m, int d, double threshold,
                    int *matched, int *best_prev, int *split_parent, float *sim, int *n_died,
                    struct err *e) CK_WUR;

/* sae_fixed v1 (needs eval_tokens, sae_dicts; opt-in): fixed dictionaries
 * (ctx.sae_fixed_dirs, any format sae_file.h reads, e.g. a released SAE of
 * the final model) applied at their hooks at every checkpoint, so each
 * feature's density can be followed back through training ("when was this
 * feature born").  Rows: layer = the hook's layer (-1 for hook_embed), head
 * = the dictionary's position in the list; per feature (idx)
 * feature_density and feature_mean_activation (the units the file
 * computes); per dictionary fvu, explained_variance, l0,
 * inactive_fraction, density_histogram (idx bin), ce_clean, ce_spliced,
 * ce_zero_ablated, loss_recovered, kl_spliced.  Definitions in
 * battery_sae_fixed.c. */
#define SAE_FIXED_MAX 16 /* dictionaries of one run */
extern const struct battery_item battery_item_sae_fixed;
/* patching v1, attribution v1, path_patching v1, circuit v1: activation,
 * attribution and path patching on prompt pairs and the circuit they
 * outline, per pair set (idx 0 the built-in induction pairs, k the k-th
 * --pairs set).  battery_patching.h has what they share; the metrics are
 * defined in battery_patching.c, battery_patching_atp.c,
 * battery_patching_path.c and battery_patching_circuit.c. */
extern const struct battery_item battery_item_patching;
extern const struct battery_item battery_item_attribution;
extern const struct battery_item battery_item_path_patching;
extern const struct battery_item battery_item_circuit;

#endif
