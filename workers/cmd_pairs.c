/* ckpt-worker pairs: check a prompt-pair set (and write its token form),
 * or make one of the shipped sets (workers/battery/pair_gen.h). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/battery/pair_gen.h"
#include "workers/battery/pair_set.h"
#include "workers/cli.h"
#include "workers/text/tokenizer.h"

static const char pairs_usage[] =
    "usage: ckpt-worker pairs check FILE [--tokenizer FILE] [--out FILE]\n"
    "       ckpt-worker pairs make induction|ioi|greater-than --out FILE\n"
    "                              [--tokenizer FILE] [--pairs N] [--seed N] [--len L]\n"
    "\n"
    "check: validate a prompt-pair set (docs/patching.md) and print its name, pairs,\n"
    "length, positions of interest and digest; texts are tokenized with --tokenizer\n"
    "(and the first pair is printed decoded); --out writes the set's token form, the\n"
    "file ckptd add-run --pairs stores.  Exit 1 naming what is wrong.\n"
    "make: write one of the shipped sets (scripts/make-pairs makes them all):\n"
    "  induction      [BOS, R, R[0..L-2]] with the first copy corrupted, ids from\n"
    "                 the tokenizer's vocabulary (--len L, default 16)\n"
    "  ioi            IOI templates with single-token names (Wang et al. 2022)\n"
    "  greater-than   'The war lasted from the year 17YY to the year 17' (Hanna et al.)\n"
    "--tokenizer defaults to var/data/20B_tokenizer.json; --pairs (default 32) and\n"
    "--seed (default 1) choose the pairs.\n";

static int parse_int(const char *s, long min, long max, long *out)
{
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static void print_ids(const struct tokenizer *tok, const int *ids, int n)
{
    char *text = NULL;
    size_t len = 0;
    if (tokenizer_decode(tok, ids, (size_t)n, &text, &len, NULL) == 0)
        printf("%s", text);
    free(text);
}

static void summary(const struct pair_set *ps, const struct tokenizer *tok)
{
    printf("%s: %d pairs of %d tokens, positions", ps->name, ps->B, ps->T);
    for (int k = 0; k < ps->npos; k++)
        printf("%s%d", k ? "," : " ", ps->pos[k]);
    printf(", digest %s\n", ps->digest);
    if (!tok)
        return;
    printf("pair 0 clean:     \"");
    print_ids(tok, ps->clean, ps->T);
    printf("\"\npair 0 corrupted: \"");
    print_ids(tok, ps->corrupted, ps->T);
    printf("\"\npair 0 answer:    \"");
    print_ids(tok, ps->ans, 1);
    printf("\"%s, wrong \"", ps->ans_off[1] > 1 ? " (first of several)" : "");
    print_ids(tok, ps->wrong, 1);
    printf("\"%s\n", ps->wrong_off[1] > 1 ? " (first of several)" : "");
}

int cmd_pairs(int argc, char **argv)
{
    const char *action = NULL, *arg = NULL, *tok_path = NULL, *out_path = NULL;
    long npairs = 32, seed = 1, len = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            fputs(pairs_usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
            tok_path = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out_path = argv[++i];
        } else if (strcmp(argv[i], "--pairs") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, PAIR_SET_MAX_PAIRS, &npairs) < 0) {
                fprintf(stderr, "ckpt-worker pairs: --pairs needs 1 to %d\n", PAIR_SET_MAX_PAIRS);
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 0, INT32_MAX, &seed) < 0) {
                fprintf(stderr, "ckpt-worker pairs: --seed needs a non-negative integer\n");
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--len") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 2, 4096, &len) < 0) {
                fprintf(stderr, "ckpt-worker pairs: --len needs 2 to 4096\n");
                return EXIT_USAGE;
            }
        } else if (argv[i][0] != '-' && !action) {
            action = argv[i];
        } else if (argv[i][0] != '-' && !arg) {
            arg = argv[i];
        } else {
            fprintf(stderr, "ckpt-worker pairs: unexpected argument '%s'\n%s", argv[i],
                    pairs_usage);
            return EXIT_USAGE;
        }
    }
    int make = action && strcmp(action, "make") == 0;
    int check = action && strcmp(action, "check") == 0;
    if (!arg || (!make && !check) || (make && !out_path) ||
        (make && strcmp(arg, "induction") && strcmp(arg, "ioi") && strcmp(arg, "greater-than"))) {
        fputs(pairs_usage, stderr);
        return EXIT_USAGE;
    }
    if (make && !tok_path)
        tok_path = "var/data/20B_tokenizer.json";
    struct err e;
    err_clear(&e);
    struct tokenizer *tok = NULL;
    struct pair_set *ps = NULL;
    int rc = 0;
    if (tok_path && (rc = tokenizer_load(&tok, tok_path, &e)) < 0)
        goto out;
    if (check) {
        rc = pair_set_load(&ps, arg, tok, &e);
    } else if (strcmp(arg, "induction") == 0) {
        int V = tokenizer_vocab_size(tok);
        rc = pair_set_induction(&ps, V, 1 << 20, (int)npairs, (int)len, (uint64_t)seed, &e);
    } else if (strcmp(arg, "ioi") == 0) {
        rc = pair_gen_ioi(&ps, tok, (int)npairs, (uint64_t)seed, &e);
    } else {
        rc = pair_gen_greater_than(&ps, tok, (int)npairs, (uint64_t)seed, &e);
    }
    if (rc == 0 && out_path)
        rc = pair_set_write(ps, out_path, &e);
    if (rc == 0)
        summary(ps, tok);
out:
    if (rc < 0)
        log_err(make ? "cannot make the pair set" : "bad pair set", &e);
    pair_set_free(ps);
    tokenizer_free(tok);
    return rc < 0 ? (rc == ERR_INVALID && make ? EXIT_USAGE : EXIT_INPUT) : 0;
}
