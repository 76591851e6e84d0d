#include "common/args.h"

#include <stdio.h>
#include <string.h>

void args_start(struct args *c, int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    memset(c, 0, sizeof *c);
    c->argc = argc;
    c->argv = argv;
    c->longopts = longopts;
    snprintf(c->shortopts, sizeof c->shortopts, "-:%s", shortopts);
    opterr = 0;
    optind = 0; /* glibc: a full reset, the new optstring's mode included */
}

int args_next(struct args *c)
{
    c->arg = NULL;
    c->opt = 0;
    if (c->rest) {
        if (optind >= c->argc)
            return ARGS_END;
        c->word = c->arg = c->argv[optind++];
        return ARGS_WORD;
    }
    /* "-" mode neither skips nor permutes: the word getopt looks at next
     * is argv[optind] (argv[1] on the first call), and it stays there while
     * a cluster of short options is being read */
    int at = optind > 0 ? optind : 1;
    c->word = at < c->argc ? c->argv[at] : NULL;
    int k = getopt_long(c->argc, c->argv, c->shortopts, c->longopts, NULL);
    if (k == -1) {
        if (optind < c->argc && at < c->argc && strcmp(c->argv[at], "--") == 0) {
            c->rest = 1; /* words after "--", all positional */
            return args_next(c);
        }
        return ARGS_END;
    }
    c->arg = optarg;
    if (k == ':')
        c->opt = optopt;
    return k == '?' ? ARGS_BAD : k == ':' ? ARGS_MISSING : k;
}

int args_index(const struct args *c)
{
    (void)c;
    return optind;
}
