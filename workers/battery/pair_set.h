/*
 * pair_set.h - prompt-pair datasets: clean and corrupted prompts of equal
 * length, the answer they should give and a wrong answer, for the patching
 * items (activation, attribution and path patching, circuit summary).
 *
 * The file is JSON (`ckpt-worker analyze --pairs FILE`, repeatable; the
 * full description with examples is docs/patching.md):
 *
 *   {"name": "ioi-abba",                      what the behaviour is
 *    "description": "...",                    optional, free text
 *    "positions": [4, -1],                    optional: positions of interest,
 *                                             0-based, negative from the end;
 *                                             default [-1] (the last)
 *    "pairs": [
 *      {"clean": [464, 3290, 318], "corrupted": [464, 1757, 318],
 *       "answer": 3290, "wrong": [1757, 40]},
 *      {"clean_text": "When Mary and John went to the store, John gave a drink to",
 *       "corrupted_text": "When Mary and John went to the store, Mary gave a drink to",
 *       "answer_text": " Mary", "wrong_text": " John"}
 *    ]}
 *
 * A pair gives its prompts as token ids ("clean", "corrupted") or as texts
 * ("clean_text", "corrupted_text") that the tokenizer of the run turns into
 * ids; its answers as ids ("answer", "wrong": one id or a non-empty list)
 * or as texts ("answer_text", "wrong_text": a string or a list of strings,
 * each exactly one token).  Every prompt of the set has the same length T
 * (the prompts of a pair are patched position by position, the pairs are
 * run as one batch and share the positions of interest).  The behaviour is
 * read at the last position: the logit difference of a pair is the mean
 * logit of its answers minus the mean logit of its wrong answers at
 * position T-1.  Answers and wrong answers are disjoint; clean and
 * corrupted differ somewhere.  No other keys are allowed (a typo is an
 * error, not an ignored field).
 *
 *     struct pair_set *ps = NULL;
 *     if (pair_set_load(&ps, "ioi.json", tok, &e) < 0) ...   // tok may be NULL
 *     if (pair_set_check(ps, &m->cfg, &e) < 0) ...           // vs the model
 *     pair_set_free(ps);
 */
#ifndef CKPTD_BATTERY_PAIR_SET_H
#define CKPTD_BATTERY_PAIR_SET_H

#include <stdint.h>

#include "common/err.h"
#include "workers/model/config.h"
#include "workers/text/tokenizer.h"

#define PAIR_SET_MAX_PAIRS 4096
#define PAIR_SET_MAX_ANSWERS 256 /* answers (or wrong answers) of one pair */
#define PAIR_SET_MAX_POSITIONS 64

/* A loaded set; everything owned by it. */
struct pair_set {
    char *path;             /* the file, for messages ("" for a built-in set) */
    char *name;
    char *description;      /* "" when absent */
    int B, T;               /* pairs, prompt length */
    int *clean, *corrupted; /* (B,T) */
    int *ans_off, *ans;     /* answers of pair b: ans[ans_off[b] .. ans_off[b+1]) */
    int *wrong_off, *wrong; /* wrong answers likewise */
    int npos;
    int *pos;               /* (npos) positions of interest, ascending, in [0, T) */
    char digest[17];        /* first 16 hex digits of the SHA-256 of the canonical
                               token form (pair_set_digest), to tell sets apart */
};

/* Read and validate `path`, tokenizing text fields with `tok` (may be NULL:
 * a set with texts is then an error saying how to tokenize it).  On failure
 * *out is NULL and e (ERR_NOTFOUND, ERR_IO, ERR_FORMAT, ERR_INVALID,
 * ERR_NOMEM) names the file and the pair / key at fault. */
int pair_set_load(struct pair_set **out, const char *path, struct tokenizer *tok,
                  struct err *e) CK_WUR;

/* Check against a model: ids in [0, vocab_size), T <= max_positions.
 * ERR_INVALID naming the file, pair and position. */
int pair_set_check(const struct pair_set *ps, const struct gptneox_config *cfg,
                   struct err *e) CK_WUR;

/* Write ps in the canonical token form (ids only, "positions" as
 * non-negative indices) to path, atomically.  ERR_IO / ERR_NOMEM. */
int pair_set_write(const struct pair_set *ps, const char *path, struct err *e) CK_WUR;

/* Build a set from arrays (copied): B pairs of length T, one answer and one
 * wrong answer per pair, npos positions (non-negative).  Validated as a
 * loaded set would be; ERR_FORMAT / ERR_NOMEM. */
int pair_set_from_arrays(struct pair_set **out, const char *name, const char *description,
                         int B, int T, const int *clean, const int *corrupted, const int *ans,
                         const int *wrong, const int *pos, int npos, struct err *e) CK_WUR;

/* The same with lists of answers: pair b's answers ans[ans_off[b] ..
 * ans_off[b+1]) (ans_off (B+1), ans_off[0] = 0), likewise the wrong ones. */
int pair_set_from_lists(struct pair_set **out, const char *name, const char *description, int B,
                        int T, const int *clean, const int *corrupted, const int *ans_off,
                        const int *ans, const int *wrong_off, const int *wrong, const int *pos,
                        int npos, struct err *e) CK_WUR;

/* Induction pairs (the built-in set of the patching items: PAIR_IND_PAIRS
 * pairs, len 0) for a model of vocabulary V and max_positions.  Clean:
 * [BOS, R, R[0..L-2]] with R of L distinct ids from [1, V), T = 2L; at the
 * last position (holding R[L-2]) an induction head finds R[L-2] in the
 * first copy and predicts what followed it, R[L-1]: the answer.
 * Corrupted: the same with the first copy's R[L-2] (position L-1)
 * replaced by Z, so the induction head finds no match; a head that copies
 * from a fixed offset still predicts R[L-1] in both, so only a mechanism
 * that matches content separates the two.  The wrong answer is W, a token
 * in neither prompt (Z and W are distinct ids from [1, V) outside R).
 * Positions of interest: L-1 (the corrupted token), L (the key the
 * induction head looks for) and T-1.  L = min(len or PAIR_IND_LEN,
 * max_positions/2, (V-1)/2), ids by rng_below from a splitmix64 state
 * seed ^ PAIR_IND_SALT, pair by pair: R, then Z, then W.
 * ERR_INVALID when L < 2 (V < 5 or max_positions < 4), ERR_NOMEM. */
#define PAIR_IND_PAIRS 8
#define PAIR_IND_LEN 16
#define PAIR_IND_BOS 0
#define PAIR_IND_SALT 0x50415443484e4744ull /* "PATCHNGD" */
int pair_set_induction(struct pair_set **out, int V, int max_positions, int npairs, int len,
                       uint64_t seed, struct err *e) CK_WUR;

void pair_set_free(struct pair_set *ps);

#endif
