/* ckpt-worker inspect: what a checkpoint directory holds and whether the
 * model can be built from it. */
#include <stdio.h>
#include <string.h>

#include "common/args.h"
#include "common/log.h"
#include "workers/cli.h"
#include "workers/model/checkpoint.h"
#include "workers/model/config.h"
#include "workers/model/gptneox.h"
#include "workers/model/safetensors.h"

static const char inspect_usage[] =
    "usage: ckpt-worker inspect CKPT_DIR\n"
    "\n"
    "Prints the config summary, a table of tensors (name, dtype, shape), the\n"
    "parameter count, and every problem found: tensors missing or of the wrong\n"
    "shape for the config, unsupported dtypes, non-finite values, tensors the\n"
    "model does not use.  Exit status 0 when the model loads, 1 otherwise.\n";

int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == 'h') {
            fputs(inspect_usage, stdout);
            return 0;
        } else if (k != ARGS_WORD || dir) {
            fprintf(stderr, "ckpt-worker inspect: unexpected argument '%s'\n%s", c.word, inspect_usage);
            return EXIT_USAGE;
        }
        dir = c.arg;
    }
    if (!dir) {
        fputs(inspect_usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    struct gptneox_config cfg;
    struct st_set *st = NULL;
    struct gptneox *m = NULL;
    int problems = 0, have_cfg = 0;
    char path[4096];

    printf("checkpoint: %s\n", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (gptneox_config_load(&cfg, path, &e) < 0) {
        printf("config: ERROR %s\n", err_str(&e));
        problems++;
    } else {
        have_cfg = 1;
        printf("config: vocab %d, d_model %d, layers %d, heads %d (head size %d), d_mlp %d\n",
               cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_mlp);
        printf("        rotary %g of head dims (%d) base %g, %s residual, layer_norm_eps %g, act %s%s%s\n",
               cfg.rotary_pct, cfg.rotary_ndims, cfg.rotary_base,
               cfg.parallel_residual ? "parallel" : "sequential", cfg.layer_norm_eps,
               cfg.act == ACT_GELU ? "gelu" : "gelu_tanh",
               cfg.tie_word_embeddings ? ", tied embeddings" : "",
               cfg.torch_dtype[0] ? "" : "");
        printf("        parameters implied by config: %zu\n", gptneox_config_nparams(&cfg));
    }
    if (checkpoint_open(&st, dir, &e) < 0) {
        printf("tensors: ERROR %s\n", err_str(&e));
        return EXIT_INPUT;
    }
    size_t n = st_set_count(st), params = 0, unused = 0;
    printf("files: %zu (%zu bytes, %s)\n", st_set_nfiles(st), st_set_bytes(st),
           checkpoint_format(dir) == CHECKPOINT_TORCHZIP ? "PyTorch zip" : "safetensors");
    printf("%-64s %-5s %s\n", "tensor", "dtype", "shape");
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = st_set_get(st, i);
        char shape[128];
        size_t o = 0;
        o += (size_t)snprintf(shape + o, sizeof shape - o, "[");
        for (int d = 0; d < t->ndim && o < sizeof shape; d++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%lld", d ? ", " : "",
                                  (long long)t->shape[d]);
        if (o < sizeof shape)
            snprintf(shape + o, sizeof shape - o, "]");
        int role = have_cfg ? gptneox_tensor_role(&cfg, t->name) : 1;
        printf("%-64s %-5s %s%s\n", t->name, st_dtype_name(t->dtype), shape,
               role == 2 ? "  (ignored: old export)" : role == 0 ? "  (unused)" : "");
        if (role == 1)
            params += t->nelem;
        else
            unused++;
    }
    printf("parameters: %zu in %zu tensors used by the model\n", params, n - unused);
    if (unused)
        printf("note: %zu tensors are not used by the model and are ignored\n", unused);
    st_set_free(st);
    if (have_cfg) {
        if (gptneox_load(&m, dir, 0, &e) < 0) {
            printf("problem: %s\n", err_str(&e));
            problems++;
        }
        gptneox_free(m);
    }
    printf("problems: %d\n", problems);
    return problems ? EXIT_INPUT : 0;
}
