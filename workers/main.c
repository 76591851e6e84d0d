/*
 * ckpt-worker - analyse one checkpoint: checkpoint directory in, results out.
 * It never talks to the database or the network (see workers/README.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/log.h"
#include "common/version.h"
#include "workers/cli.h"
#include "workers/model/blas.h"

static const char usage[] =
    "usage: ckpt-worker [--threads N] [--log-level LEVEL] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  inspect CKPT_DIR            config summary, tensor table, parameter count, problems\n"
    "  forward CKPT_DIR --tokens FILE.json [--npy OUTDIR] [--cache HOOK,...]\n"
    "                              run the model, print the mean loss of each sequence\n"
    "  init CKPT_DIR [--preset NAME] [--seed N] [--std X] [--dtype f32|f16|bf16]\n"
    "                              write a randomly initialised checkpoint\n"
    "  battery [--json]            the battery items, versions and the metrics each writes\n"
    "  analyze CKPT_DIR --items ITEM,... [--eval-tokens FILE] [--ctx N] [--seed N]\n"
    "                              run battery items, print rows as PostgreSQL COPY text\n"
    "  tokenize --tokenizer FILE [--in FILE|-] [--text STRING] [--out FILE.u16|.u32|.npy|.json]\n"
    "                              text to token ids (HuggingFace tokenizer.json)\n"
    "  detokenize --tokenizer FILE [--in IDS_FILE|-]\n"
    "                              token ids to text\n"
    "  train --task modular-addition|induction --out DIR [--steps N] ...\n"
    "                              train a toy GPT-NeoX, write its checkpoint series\n"
    "  sae DIR [--json] [--encode FILE.npy --out OUTDIR]\n"
    "                              read an SAE dictionary (SAELens, sparsify): what it is,\n"
    "                              its codes and reconstructions of activations\n"
    "  pairs check FILE | make induction|ioi|greater-than --out FILE\n"
    "                              check a prompt-pair set, or make a shipped one\n"
    "\n"
    "options:\n"
    "  --threads N        BLAS threads (default: OpenBLAS's, i.e. OPENBLAS_NUM_THREADS or all cores)\n"
    "  --log-level LEVEL  debug|info|warn|error (default: info, or CKPTD_LOG)\n"
    "  --help, --version\n"
    "\n"
    "OPENBLAS_CORETYPE is chosen from the CPU's features unless set (CKPTD_BLAS_AUTO=0 disables).\n"
    "Exit status: 0 ok, 1 input could not be processed, 2 usage error.\n"
    "'ckpt-worker COMMAND --help' describes a command.\n";

int main(int argc, char **argv)
{
    blas_prepare(argv);
    log_set_component("worker");
    int i = 0, threads = 0; /* i: the command's index in argv */
    enum { O_VERSION = 256, O_THREADS, O_LOG_LEVEL };
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, O_VERSION},
        {"threads", required_argument, NULL, O_THREADS},
        {"log-level", required_argument, NULL, O_LOG_LEVEL},
        {NULL, 0, NULL, 0},
    };
    struct args cl;
    args_start(&cl, argc, argv, "h", opts);
    for (int k; !i && (k = args_next(&cl)) != ARGS_END;) {
        if (k == 'h') {
            fputs(usage, stdout);
            return 0;
        } else if (k == O_VERSION) {
            printf("ckpt-worker %s\n", CKPTD_VERSION);
            return 0;
        } else if (k == O_THREADS) {
            threads = atoi(cl.arg);
            if (threads <= 0) {
                fprintf(stderr, "ckpt-worker: --threads needs a positive number\n");
                return EXIT_USAGE;
            }
        } else if (k == O_LOG_LEVEL) {
            int l = log_level_parse(cl.arg);
            if (l < 0) {
                fprintf(stderr, "ckpt-worker: unknown log level '%s'\n", cl.arg);
                return EXIT_USAGE;
            }
            log_set_level((enum log_level)l);
        } else if (k == ARGS_WORD) {
            i = args_index(&cl) - 1;
        } else {
            fprintf(stderr, "ckpt-worker: unknown option '%s'\n%s", cl.word, usage);
            return EXIT_USAGE;
        }
    }
    if (!i) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    blas_set_threads(threads);
    log_debug("blas ready", "core=%s threads=%d", blas_corename(), blas_threads());
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"inspect", cmd_inspect},
        {"forward", cmd_forward},
        {"init", cmd_init},
        {"battery", cmd_battery},
        {"analyze", cmd_analyze},
        {"tokenize", cmd_tokenize},
        {"detokenize", cmd_detokenize},
        {"train", cmd_train},
        {"sae", cmd_sae},
        {"pairs", cmd_pairs},
    };
    for (size_t c = 0; c < sizeof cmds / sizeof *cmds; c++)
        if (strcmp(argv[i], cmds[c].name) == 0)
            return cmds[c].fn(argc - i, argv + i);
    fprintf(stderr, "ckpt-worker: unknown command '%s'\n%s", argv[i], usage);
    return EXIT_USAGE;
}
