/*
 * pair_gen.h - the prompt-pair sets ckptd ships (the JSON files in pairs/, written by
 * scripts/make-pairs through `ckpt-worker pairs make`), built with the run's
 * tokenizer so that every slot of a template is exactly one token and
 * every prompt of a set has the same length.  A candidate word that the
 * tokenizer does not keep as one token (or that would change the prompt's
 * length or merge with its neighbours) is left out, and the generator says
 * how many are left; fewer than the set needs is an error.
 *
 *   IOI (Wang et al. 2022, "Interpretability in the Wild"): the template
 *     "When{A} and{B} went to the{PLACE},{S2} gave a{OBJECT} to"
 *     with names (" Mary", one token each); half the pairs ABBA (A = the
 *     indirect object IO, B = S2 = the subject S), half BABA (A = S2 = S,
 *     B = IO).  Corrupted: S2 replaced by a third name C, so that neither
 *     name is the repeated one.  Answer IO, wrong answer S.  Positions of
 *     interest: A, B, S2 and the last token (" to": END).
 *   greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?"):
 *     "The{NOUN} lasted from the year 17YY to the year 17" with " 17" and
 *     "YY" two tokens; corrupted YY = 01.  Answers: every two-digit token
 *     greater than YY, wrong answers every one at most YY (the logit
 *     difference is the mean logit of the first minus that of the second).
 *     Positions of interest: YY and the last token.
 *   induction: pair_set_induction (pair_set.h) over the tokenizer's
 *     vocabulary.
 *
 *     struct pair_set *ps = NULL;
 *     if (pair_gen_ioi(&ps, tok, 32, 1, &e) < 0) ...
 *     if (pair_set_write(ps, "pairs/ioi.json", &e) < 0) ...
 *     pair_set_free(ps);
 */
#ifndef CKPTD_BATTERY_PAIR_GEN_H
#define CKPTD_BATTERY_PAIR_GEN_H

#include <stdint.h>

#include "common/err.h"
#include "workers/battery/pair_set.h"
#include "workers/text/tokenizer.h"

/* The candidate words of a template slot that tok keeps as one token
 * (each with its leading space), in list order, into ids/words (room for
 * `cap`); returns how many.  slot: "name", "place", "object", "noun". */
int pair_gen_words(struct tokenizer *tok, const char *slot, int *ids, const char **words, int cap);

/* An IOI set of npairs pairs (even; names, places and objects drawn with
 * rng_below from seed).  ERR_INVALID (too few single-token names, a
 * template that does not tokenize as planned), ERR_NOMEM. */
int pair_gen_ioi(struct pair_set **out, struct tokenizer *tok, int npairs, uint64_t seed,
                 struct err *e) CK_WUR;

/* A greater-than set of npairs pairs (YY from the two-digit tokens that
 * split off " 17", 02 .. 98; nouns drawn from seed).  Errors as
 * pair_gen_ioi. */
int pair_gen_greater_than(struct pair_set **out, struct tokenizer *tok, int npairs,
                          uint64_t seed, struct err *e) CK_WUR;

#endif
