/*
 * probe_set.h - user probe datasets: labelled token sequences that the
 * `probes` item fits a linear probe on, beside its built-in tasks.
 *
 * The file is JSON (`ckpt-worker analyze --probe FILE`, repeatable):
 *
 *   {"name": "is_noun",                       what the probe detects
 *    "kind": "classification",                or "regression"
 *    "layers": [-1, 0, 3],                    optional: -1 is hook_embed,
 *                                             L blocks.L.hook_resid_post;
 *                                             default every one of them
 *    "sequences": [
 *      {"tokens": [464, 3290, 318], "labels": [null, "noun", "verb"]},
 *      {"tokens": [40, 588], "label": "noun"}   one label, probed at the
 *    ]}                                          last token
 *
 * Each sequence has "tokens" (non-negative ids, at least one) and either
 * "labels" (one per token, null where unlabelled) or "label" (the last
 * token's).  Classification labels are all strings, all integers or all
 * booleans (never mixed); classes are their distinct values in sorted
 * order.  Regression labels are numbers.  No other keys are allowed (a typo
 * is an error, not an ignored field).
 *
 * Sequence i is held out when i % 5 == 4 (a 20 % sequence-level split), so
 * a set needs at least 5 sequences and labelled positions on both sides.
 * Classification needs at least 2 classes and PROBE_SET_MIN_PER_CLASS
 * labelled positions of each class; regression PROBE_SET_MIN_EXAMPLES
 * labelled positions whose values are not all equal.  Token ids, sequence
 * lengths and layers are checked against the model by probe_set_check.
 *
 *     struct probe_set *ps = NULL;
 *     if (probe_set_load(&ps, "nouns.json", &e) < 0) ...   // format errors
 *     if (probe_set_check(ps, &m->cfg, &e) < 0) ...         // vs the model
 *     probe_set_free(ps);
 */
#ifndef CKPTD_BATTERY_PROBE_SET_H
#define CKPTD_BATTERY_PROBE_SET_H

#include "common/err.h"
#include "workers/model/config.h"

#define PROBE_SET_HOLDOUT_EVERY 5 /* sequence i is held out when i % 5 == 4 */
#define PROBE_SET_MIN_PER_CLASS 4
#define PROBE_SET_MIN_EXAMPLES 10

enum probe_kind {
    PROBE_KIND_CLASSIFICATION,
    PROBE_KIND_REGRESSION,
    PROBE_KIND_COUNT
};

/* A loaded set; everything owned by it. */
struct probe_set {
    char *path;                /* the file, for messages */
    char *name;
    enum probe_kind kind;
    int nseq;
    int *offsets;              /* (nseq+1): sequence i is tokens[offsets[i] .. offsets[i+1]) */
    int *tokens;
    int nlab;                  /* labelled positions, in file order */
    int *lab_seq, *lab_pos;    /* (nlab) sequence and position of each */
    int *lab_class;            /* (nlab) class index (classification), else NULL */
    float *lab_value;          /* (nlab) target (regression), else NULL */
    int nclasses;
    char **class_names;        /* (nclasses) the label values as text, sorted */
    int nlayers;               /* 0: every layer */
    int *layers;               /* (nlayers) -1 .. n_layers-1 */
};

/* Read and validate `path`.  On failure *out is NULL and e (ERR_NOTFOUND,
 * ERR_IO, ERR_FORMAT, ERR_NOMEM) names the file and the sequence /
 * position / key at fault. */
int probe_set_load(struct probe_set **out, const char *path, struct err *e) CK_WUR;

/* Check against a model: ids in [0, vocab_size), sequences no longer than
 * max_positions, layers in [-1, n_layers).  ERR_INVALID naming the file. */
int probe_set_check(const struct probe_set *ps, const struct gptneox_config *cfg,
                    struct err *e) CK_WUR;

/* 1 if labelled position k is in the held-out split. */
int probe_set_heldout(const struct probe_set *ps, int k);

void probe_set_free(struct probe_set *ps);

#endif
