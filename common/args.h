/*
 * args.h - getopt_long for the commands of both binaries.
 *
 * Every command of `ckptd` and `ckpt-worker` reads its argv with
 * getopt_long through this wrapper, which fixes the conventions they
 * share: options and positional words may come in any order and are
 * handed back in argv order (getopt's "-" mode, nothing permuted), so a
 * command meets the first wrong word first; "--" ends the options; the
 * library prints nothing, and when a word is refused args_next says which
 * one (c.word) so the command prints its own message and picks its exit
 * status.  Long options take "--name VALUE" or "--name=VALUE", and an
 * unambiguous prefix of a name is that name (getopt_long's rule).
 *
 *     static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
 *                                          {NULL, 0, NULL, 0}};
 *     struct args c;
 *     args_start(&c, argc, argv, "", opts);        // argv[0] is the command
 *     for (int k; (k = args_next(&c)) != ARGS_END;) {
 *         if (k == 'o')
 *             out = c.arg;
 *         else if (k == ARGS_WORD && !run)
 *             run = c.arg;
 *         else                                     // ARGS_BAD, ARGS_MISSING, a second RUN
 *             return fprintf(stderr, "report: unexpected argument '%s'\n", c.word), 2;
 *     }
 *
 * getopt keeps its state in globals: one parse at a time, in one thread.
 */
#ifndef CKPTD_ARGS_H
#define CKPTD_ARGS_H

#include <getopt.h>

/* What args_next returns besides an option's val. */
enum args_result {
    ARGS_END = -1,      /* no words left */
    ARGS_WORD = 1,      /* a positional word: c.arg */
    ARGS_BAD = '?',     /* an unknown option, or an argument given to a flag: c.word */
    ARGS_MISSING = ':', /* an option without its required value: c.word, c.opt its val */
};

struct args {
    int argc;
    char **argv;
    const struct option *longopts;
    char shortopts[64];  /* "-:" and the caller's short options */
    const char *arg;     /* the option's value, or the positional word; NULL for a flag */
    const char *word;    /* the argv word that held the option or word just returned */
    int opt;             /* with ARGS_MISSING: the val of the option missing its value */
    int rest;            /* past "--": the remaining words are positional */
};

/* Start parsing argv[1 .. argc-1] (argv[0] is the program or the command's
 * name).  shortopts lists short options as getopt does ("h", "o:"); ""
 * for none.  longopts ends with an all-zero entry; its flag fields must be
 * NULL.  Both are borrowed for the parse. */
void args_start(struct args *c, int argc, char **argv, const char *shortopts,
               const struct option *longopts);

/* The next option's val (c.arg its value), ARGS_WORD, ARGS_BAD,
 * ARGS_MISSING, or ARGS_END. */
int args_next(struct args *c);

/* The index in argv of the first word not yet returned (after a ARGS_WORD,
 * that word is argv[args_index(c) - 1]): where a command's own argv starts
 * when the global options end at the command's name. */
int args_index(const struct args *c);

#endif
