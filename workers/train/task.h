/*
 * task.h - the built-in toy tasks of `ckpt-worker train`: their data, the
 * batches a training step sees, their metrics, and task.json.
 *
 * modular-addition (Power et al. 2022, "Grokking"; the format of Nanda et
 * al. 2023, "Progress measures for grokking via mechanistic
 * interpretability"): the sequence `a b =` (tokens a, b in [0, p), `=` is
 * token p; vocabulary p+1, T = 3) and the loss only at the `=` position,
 * whose target is (a + b) mod p.  All p^2 pairs are shuffled with the split
 * seed and the first floor(train_frac * p^2) are the training set; the rest
 * is the test set.  Training is full-batch.  Metrics: loss and accuracy
 * (argmax) on the training and on the test pairs.
 *
 * induction: sequences of T uniform random tokens in which a span of S
 * tokens (span_min <= S <= span_max, by default T/8 and T/4) starting at a
 * is copied to start d >= a + S (S = T/2 makes the sequence two copies of
 * a random half).
 * The loss counts every next-token position.  Each step draws a fresh batch
 * from (seed, step); the metrics use a fixed held-out batch: "train" is the
 * loss and accuracy over every position, "test" the in-context loss and
 * accuracy on the copied span's predictable positions (d .. d+S-2, which
 * predict tokens d+1 .. d+S-1): where induction heads (Olsson et al. 2022)
 * make their difference.
 *
 *     struct task *t = NULL;
 *     if (task_create(&t, &tc, &e) < 0) ...
 *     task_batch(t, step, &tok, &tgt, &B);      // borrowed until the next call
 *     task_eval(t, model, &metrics, &e);
 *     task_free(t);
 */
#ifndef CKPTD_TASK_H
#define CKPTD_TASK_H

#include <stdint.h>

#include <jansson.h>

#include "common/err.h"
#include "workers/model/gptneox.h"

enum task_kind {
    TASK_MODADD,     /* "modular-addition" */
    TASK_INDUCTION,  /* "induction" */
    TASK_KIND_COUNT
};

struct task_config {
    enum task_kind kind;
    uint64_t seed;      /* split (modular addition) and batch stream (induction) */
    int p;              /* modular addition: the modulus, 2..1000 */
    double train_frac;  /* modular addition: (0, 1) */
    int vocab;          /* induction: token ids [0, vocab) */
    int seq_len;        /* induction: T, 8..1024 */
    int batch;          /* induction: sequences per step */
    int span_min, span_max; /* induction: S range, 2 <= min <= max <= T/2;
                               0: the defaults max(2, T/8), max(min, T/4) */
};

struct task_metrics {
    double train_loss, train_acc, test_loss, test_acc;
};

struct task; /* opaque */

/* "modular-addition" or "induction" -> kind; -1 when unknown. */
int task_kind_parse(const char *name);
const char *task_kind_name(enum task_kind k);

/* Build the task's data. Errors: ERR_INVALID naming the bad setting, ERR_NOMEM. */
int task_create(struct task **out, const struct task_config *c, struct err *e) CK_WUR;
void task_free(struct task *t);

/* Vocabulary size and sequence length the model must have. */
int task_vocab(const struct task *t);
int task_seq_len(const struct task *t);

/* The batch of training step `step`: tokens and targets (B,T), -1 where a
 * position has no target.  Borrowed until the next call or task_free. */
void task_batch(struct task *t, long step, const int **tokens, const int **targets, int *B);

/* Evaluate m (forward only). Errors: the forward's. */
int task_eval(struct task *t, struct gptneox *m, struct task_metrics *out, struct err *e) CK_WUR;

/* Names of the four metrics in train_log.jsonl, in task_metrics order. */
const char *const *task_metric_names(const struct task *t);

/* Rebuild the task a run's task.json (task_write_json) describes: the
 * kind and the settings that define its data (seed, p and train_frac, or
 * vocab, seq_len and batch), checked against what the file records
 * (vocab_size, seq_len; for modular addition n_train, n_test and every
 * train pair, so a file whose split this code would not reproduce is
 * refused).  Errors: ERR_IO (unreadable), ERR_INVALID naming the file and
 * the missing or inconsistent field, ERR_NOMEM.  *out is NULL on error. */
int task_load_json(struct task **out, const char *path, struct err *e) CK_WUR;

/* The settings the task was built from; borrowed. */
const struct task_config *task_get_config(const struct task *t);

/* Modular addition: all p^2 pairs (a, b) in split order, (npairs, 2), the
 * first ntrain the training set.  Borrowed.  Other tasks: NULL, 0, 0. */
const int *task_modadd_pairs(const struct task *t, int *ntrain, int *npairs);

/* Write the task's description (JSON object, see README) to `path`
 * atomically; `extra` (may be NULL) is a jansson object whose keys are
 * added.  Errors: ERR_IO. */
int task_write_json(const struct task *t, const char *path, json_t *extra,
                    struct err *e) CK_WUR;

#endif
