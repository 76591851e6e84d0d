/* ckpt-worker forward: run the model on token sequences, print losses, and
 * optionally dump logits and cached hook activations as .npy files. */
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/args.h"
#include "common/log.h"
#include "common/path.h"
#include "workers/cli.h"
#include "workers/model/gptneox.h"
#include "workers/model/npy.h"
#include "workers/text/tokens.h"

static const char forward_usage[] =
    "usage: ckpt-worker forward CKPT_DIR --tokens FILE.json [--npy OUTDIR] [--cache HOOK,...]\n"
    "\n"
    "FILE.json is a JSON list of equal-length lists of token ids.  Prints one line\n"
    "per sequence: 'seq <i> loss <mean next-token loss>', then the overall mean.\n"
    "  --npy OUTDIR      write OUTDIR/logits.npy (float32 [B,T,V]) and one\n"
    "                    OUTDIR/<hook name>.npy per cached hook\n"
    "  --cache HOOK,...  hook names to cache (needs --npy); shell-style globs\n"
    "                    such as 'blocks.*.hook_resid_post' are allowed.  Names\n"
    "                    (TransformerLens's, from_pretrained_no_processing):\n"
    "                    hook_embed, ln_final.hook_scale, ln_final.hook_normalized,\n"
    "                    and blocks.L. followed by: hook_resid_pre, ln1.hook_scale,\n"
    "                    ln1.hook_normalized, attn.hook_q, attn.hook_k, attn.hook_v,\n"
    "                    attn.hook_rot_q, attn.hook_rot_k, attn.hook_attn_scores,\n"
    "                    attn.hook_pattern, attn.hook_z, attn.hook_result,\n"
    "                    hook_attn_out, hook_resid_mid (sequential residual only),\n"
    "                    hook_mlp_in, ln2.hook_scale, ln2.hook_normalized,\n"
    "                    mlp.hook_pre, mlp.hook_post, hook_mlp_out, hook_resid_post;\n"
    "                    hook_attn_in only by its exact name (it gives that layer's\n"
    "                    ln1 a head axis, as use_attn_in does).  docs/hooks.md\n"
    "                    has shapes and conventions.\n";

struct cached {
    char name[64];
    enum hook_kind kind;
    int layer;
    float *data;
    int ndim, shape[4];
};

static int cache_hook(void *ctx, struct hook_act *act, struct err *e)
{
    struct cached *c = ctx;
    free(c->data);
    c->data = malloc(act->n * sizeof(float));
    if (!c->data)
        return err_set(e, ERR_NOMEM, act->name, "cannot cache activation");
    memcpy(c->data, act->data, act->n * sizeof(float));
    c->ndim = act->ndim;
    memcpy(c->shape, act->shape, sizeof c->shape);
    return 0;
}

/* Add every hook name of the model that matches `pattern`; 0 matches is an error. */
static int add_matches(const struct gptneox_config *cfg, const char *pattern,
                       struct cached **list, size_t *n, size_t *cap, struct err *e)
{
    int matched = 0;
    for (int k = 0; k < HOOK_KIND_COUNT; k++) {
        if (k == HOOK_RESID_MID && cfg->parallel_residual)
            continue;
        int nl = hook_kind_per_layer((enum hook_kind)k) ? cfg->n_layers : 1;
        for (int l = 0; l < nl; l++) {
            int layer = hook_kind_per_layer((enum hook_kind)k) ? l : -1;
            char name[64];
            if (hook_name(name, sizeof name, (enum hook_kind)k, layer) < 0 ||
                fnmatch(pattern, name, 0) != 0)
                continue;
            /* a glob never switches a layer to one LayerNorm per head */
            if (k == HOOK_ATTN_IN && strcmp(pattern, name) != 0)
                continue;
            matched = 1;
            int dup = 0;
            for (size_t i = 0; i < *n; i++)
                dup |= strcmp((*list)[i].name, name) == 0;
            if (dup)
                continue;
            if (*n == *cap) {
                size_t nc = *cap ? *cap * 2 : 16;
                struct cached *p = realloc(*list, nc * sizeof *p);
                if (!p)
                    return err_set(e, ERR_NOMEM, NULL, "out of memory");
                *list = p;
                *cap = nc;
            }
            struct cached *c = &(*list)[(*n)++];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "%s", name);
            c->kind = (enum hook_kind)k;
            c->layer = layer;
        }
    }
    if (!matched)
        return err_set(e, ERR_NOTFOUND, pattern, "no hook point of this model matches");
    return 0;
}

int cmd_forward(int argc, char **argv)
{
    const char *dir = NULL, *tok_path = NULL, *npy_dir = NULL, *cache_arg = NULL;
    enum { O_HELP = 256, O_TOKENS, O_NPY, O_CACHE };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"npy", required_argument, NULL, O_NPY},
        {"cache", required_argument, NULL, O_CACHE},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(forward_usage, stdout);
            return 0;
        } else if (k == O_TOKENS) {
            tok_path = c.arg;
        } else if (k == O_NPY) {
            npy_dir = c.arg;
        } else if (k == O_CACHE) {
            cache_arg = c.arg;
        } else if (k == ARGS_WORD && !dir) {
            dir = c.arg;
        } else {
            fprintf(stderr, "ckpt-worker forward: unexpected argument '%s'\n%s", c.word, forward_usage);
            return EXIT_USAGE;
        }
    }
    if (!dir || !tok_path) {
        fputs(forward_usage, stderr);
        return EXIT_USAGE;
    }
    if (cache_arg && !npy_dir) {
        fprintf(stderr, "ckpt-worker forward: --cache needs --npy OUTDIR\n");
        return EXIT_USAGE;
    }
    struct err e;
    err_clear(&e);
    struct gptneox *m = NULL;
    int *tokens = NULL, B = 0, T = 0, status = EXIT_INPUT;
    struct cached *cache = NULL;
    struct gptneox_hook *hooks = NULL;
    float *per_seq = NULL;
    size_t ncache = 0, cap = 0;
    char *patterns = NULL;

    if (tokens_read_json(tok_path, &tokens, &B, &T, &e) < 0)
        goto fail;
    if (gptneox_load(&m, dir, 0, &e) < 0)
        goto fail;
    if (cache_arg) {
        patterns = strdup(cache_arg);
        if (!patterns) {
            err_set(&e, ERR_NOMEM, NULL, "out of memory");
            goto fail;
        }
        char *save = NULL;
        for (char *p = strtok_r(patterns, ",", &save); p; p = strtok_r(NULL, ",", &save))
            if (add_matches(&m->cfg, p, &cache, &ncache, &cap, &e) < 0)
                goto fail;
        hooks = calloc(ncache ? ncache : 1, sizeof *hooks);
        if (!hooks) {
            err_set(&e, ERR_NOMEM, NULL, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < ncache; i++)
            hooks[i] = (struct gptneox_hook){cache[i].kind, cache[i].layer, cache_hook, &cache[i]};
    }
    if (gptneox_forward(m, tokens, B, T, hooks, ncache, &e) < 0)
        goto fail;
    per_seq = calloc((size_t)B, sizeof *per_seq);
    if (!per_seq) {
        err_set(&e, ERR_NOMEM, NULL, "out of memory");
        goto fail;
    }
    double mean = T > 1 ? gptneox_loss(m, tokens, B, T, NULL, per_seq) : NAN;
    for (int b = 0; b < B; b++)
        printf("seq %d loss %.6f\n", b, T > 1 ? (double)per_seq[b] : NAN);
    printf("mean loss %.6f\n", mean);
    if (npy_dir) {
        if (path_mkdir_p(npy_dir, &e) < 0)
            goto fail;
        char path[4200];
        int shape[3] = {B, T, m->cfg.vocab_size};
        snprintf(path, sizeof path, "%s/logits.npy", npy_dir);
        if (npy_write_f32(path, gptneox_logits(m), 3, shape, &e) < 0)
            goto fail;
        for (size_t i = 0; i < ncache; i++) {
            snprintf(path, sizeof path, "%s/%s.npy", npy_dir, cache[i].name);
            if (npy_write_f32(path, cache[i].data, cache[i].ndim, cache[i].shape, &e) < 0)
                goto fail;
        }
    }
    status = 0;
    goto out;
fail:
    log_err("forward failed", &e);
out:
    for (size_t i = 0; i < ncache; i++)
        free(cache[i].data);
    free(cache);
    free(hooks);
    free(patterns);
    free(per_seq);
    free(tokens);
    gptneox_free(m);
    return status;
}
