/*
 * runset.h - several runs from one source pattern: a brace range in the
 * source names the members of a family.
 *
 * EleutherAI's PolyPythias are one repository per seed,
 * `EleutherAI/pythia-160m-seed1` … `-seed9`; `ckptd add-run --family F
 * --source 'hf://EleutherAI/pythia-160m-seed{1..9}'` adds them together.
 * A range is `{A..B}` with decimal A <= B (leading zeros in A set a
 * width: `{01..09}`), at most RUNSET_MAX values, once in the source; `{step}`
 * stays the step placeholder.  Each value gives a source and a run name:
 * the path component that held the range, with the value in its place
 * (`pythia-160m-seed1`; `file:///runs/seed{1..3}/step{step}` gives `seed1`),
 * which must be a valid run name (letters, digits, `. _ / -`).
 *
 *     struct runset rs;
 *     int n = runset_expand("hf://EleutherAI/pythia-160m-seed{1..9}", &rs, &e);
 *     // n = 9: rs.source[0] "hf://EleutherAI/pythia-160m-seed1", rs.name[0] "pythia-160m-seed1"
 *     runset_free(&rs);
 */
#ifndef CKPTD_RUNSET_H
#define CKPTD_RUNSET_H

#include "common/err.h"

#define RUNSET_MAX 1000

struct runset {
    int n;
    char (*source)[2048]; /* (n) */
    char (*name)[256];    /* (n) */
};

/* Expand source's range into out: the number of runs (>= 1), 0 when the
 * source has no range (out empty), or ERR_INVALID (a malformed or empty
 * range, two ranges, too many values, a derived name that is not a run
 * name, a source too long), ERR_NOMEM.  runset_free(out) in every case. */
int runset_expand(const char *source, struct runset *out, struct err *e) CK_WUR;

void runset_free(struct runset *r);

#endif
