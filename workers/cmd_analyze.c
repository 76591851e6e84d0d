/* ckpt-worker analyze: run battery items on one checkpoint and print their
 * rows as PostgreSQL COPY text (workers/battery/rows.h), the worker's
 * output contract with the daemon. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/cli.h"
#include "workers/model/gptneox.h"
#include "workers/text/tokenizer.h"
#include "workers/text/tokens.h"

static const char analyze_usage[] =
    "usage: ckpt-worker analyze CKPT_DIR --items ITEM,... [--eval-tokens FILE] [--ctx N] [--seed N]\n"
    "                           [--max-seqs N] [--probe FILE]... [--task FILE]\n"
    "                           [--artifacts DIR] [--prev-artifacts DIR] [--sae-site HOOK]...\n"
    "                           [--pairs FILE]... [--tokenizer FILE]\n"
    "\n"
    "Runs the battery items on the checkpoint and prints one row per measurement,\n"
    "in PostgreSQL COPY text format:\n"
    "  item<TAB>version<TAB>metric<TAB>layer<TAB>head<TAB>idx<TAB>value\n"
    "(-1 where an index does not apply; NaN, Infinity, -Infinity as float8 spells\n"
    "them).  An item's rows are printed only once it has fully succeeded.  The same\n"
    "checkpoint, items and seed give byte-identical output.\n"
    "  --items ITEM,...     items to run, in this order ('ckpt-worker battery' lists them)\n"
    "  --eval-tokens FILE   eval token set: .json (list of equal-length lists of ids),\n"
    "                       .u16/.bin (little-endian uint16) or .u32 (uint32) streams\n"
    "  --ctx N              sequence length for .u16/.u32/.bin streams (default 128, or\n"
    "                       max_position_embeddings if smaller); a trailing partial\n"
    "                       sequence is dropped\n"
    "  --max-seqs N         use only the first N sequences of --eval-tokens (a fixed\n"
    "                       slice of a long eval text; default: all)\n"
    "  --seed N             seed of the generated eval set (default 0): without\n"
    "                       --eval-tokens, 16 sequences of 128 ids (capped at\n"
    "                       max_position_embeddings), uniform from splitmix64;\n"
    "                       it also seeds the random repeated sequences (heads,\n"
    "                       ablation)\n"
    "  --probe FILE         a user probe dataset (JSON, see README.md), repeatable; the\n"
    "                       `probes` item writes its rows with idx = its position in\n"
    "                       the --probe list (0-based), logged as `probe set idx=..`\n"
    "  --task FILE          a toy run's task.json for the `task` item (default: task.json\n"
    "                       in CKPT_DIR, else in its parent directory); `llc` samples on\n"
    "                       its training data when there is one\n"
    "  --artifacts DIR      where items that write files (sae) put them, below DIR/<item>/\n"
    "  --prev-artifacts DIR the previous checkpoint's artifact directory, for items that\n"
    "                       read it (sae warm start, sae_match)\n"
    "  --sae-site HOOK      a site for sae and sae_relu, repeatable, one per layer:\n"
    "                       blocks.L.hook_resid_pre, hook_attn_out, hook_resid_mid\n"
    "                       (sequential-residual models), hook_mlp_out or\n"
    "                       hook_resid_post (default: blocks.{n_layers/2}.hook_resid_post)\n"
    "  --pairs FILE         a prompt-pair set (JSON, see docs/patching.md), repeatable;\n"
    "                       the patching items write its rows with idx = its position in\n"
    "                       the --pairs list + 1 (idx 0: the built-in induction pairs)\n"
    "  --tokenizer FILE     a tokenizer.json for pair sets given as text\n";

/* Parse a non-negative decimal integer up to `max`; -1 if it is not one. */
static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    if (!s[0] || s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

static void print_known_items(FILE *f)
{
    fputs("known items:", f);
    for (size_t i = 0; i < battery_count(); i++)
        fprintf(f, "%s %s", i ? "," : "", battery_get(i)->name);
    fputc('\n', f);
}

/* Split the --items list into `items` (at most battery_count()); 0, or -1
 * after printing what is wrong. */
static int parse_items(char *list, const struct battery_item **items, size_t *n)
{
    *n = 0;
    for (char *p = list;; p++) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        const struct battery_item *it = battery_find(p);
        if (!*p) {
            fprintf(stderr, "ckpt-worker analyze: empty item name in --items\n");
            return -1;
        }
        if (!it) {
            fprintf(stderr, "ckpt-worker analyze: unknown item '%s'; ", p);
            print_known_items(stderr);
            return -1;
        }
        for (size_t i = 0; i < *n; i++)
            if (items[i] == it) {
                fprintf(stderr, "ckpt-worker analyze: item '%s' listed twice\n", p);
                return -1;
            }
        items[(*n)++] = it;
        if (!comma)
            return 0;
        p = comma;
    }
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A toy run's task.json for checkpoint directory dir: dir/task.json, else
 * dir/../task.json (`ckpt-worker train` writes OUT/task.json beside the
 * OUT/stepN directories).  Caller frees; NULL when neither exists. */
static char *find_task_json(const char *dir)
{
    const char *rel[2] = {"task.json", "../task.json"};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(dir) + strlen(rel[i]) + 2;
        char *path = malloc(n);
        if (!path)
            return NULL;
        snprintf(path, n, "%s/%s", dir, rel[i]);
        FILE *f = fopen(path, "r");
        if (f) {
            fclose(f);
            return path;
        }
        free(path);
    }
    return NULL;
}

int cmd_analyze(int argc, char **argv)
{
    const char *dir = NULL, *items_arg = NULL, *eval_path = NULL, *task_arg = NULL;
    const char *artifacts = NULL, *prev_artifacts = NULL;
    uint64_t seed = 0, ctx_len = 0, max_seqs = 0;
    const char **probe_paths = calloc((size_t)argc, sizeof *probe_paths);
    const char **sae_sites = calloc((size_t)argc, sizeof *sae_sites);
    const char **pair_paths = calloc((size_t)argc, sizeof *pair_paths), *tok_path = NULL;
    int nprobe = 0, nsae_sites = 0, npairs = 0;
    if (!probe_paths || !sae_sites || !pair_paths) {
        fprintf(stderr, "ckpt-worker analyze: out of memory\n");
        free(probe_paths);
        free(sae_sites);
        free(pair_paths);
        return EXIT_INPUT;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            fputs(analyze_usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--items") == 0 && i + 1 < argc) {
            items_arg = argv[++i];
        } else if (strcmp(argv[i], "--eval-tokens") == 0 && i + 1 < argc) {
            eval_path = argv[++i];
        } else if (strcmp(argv[i], "--task") == 0 && i + 1 < argc) {
            task_arg = argv[++i];
        } else if (strcmp(argv[i], "--artifacts") == 0 && i + 1 < argc) {
            artifacts = argv[++i];
        } else if (strcmp(argv[i], "--prev-artifacts") == 0 && i + 1 < argc) {
            prev_artifacts = argv[++i];
        } else if (strcmp(argv[i], "--probe") == 0 && i + 1 < argc) {
            probe_paths[nprobe++] = argv[++i];
        } else if (strcmp(argv[i], "--sae-site") == 0 && i + 1 < argc) {
            sae_sites[nsae_sites++] = argv[++i];
        } else if (strcmp(argv[i], "--pairs") == 0 && i + 1 < argc) {
            pair_paths[npairs++] = argv[++i];
        } else if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
            tok_path = argv[++i];
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            if (parse_uint(argv[++i], UINT64_MAX, &seed) < 0) {
                fprintf(stderr, "ckpt-worker analyze: --seed needs a non-negative integer\n");
                free(probe_paths);
                free(sae_sites);
                free(pair_paths);
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc) {
            if (parse_uint(argv[++i], INT32_MAX, &ctx_len) < 0 || ctx_len == 0) {
                fprintf(stderr, "ckpt-worker analyze: --ctx needs a positive integer\n");
                free(probe_paths);
                free(sae_sites);
                free(pair_paths);
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--max-seqs") == 0 && i + 1 < argc) {
            if (parse_uint(argv[++i], INT32_MAX, &max_seqs) < 0 || max_seqs == 0) {
                fprintf(stderr, "ckpt-worker analyze: --max-seqs needs a positive integer\n");
                free(probe_paths);
                free(sae_sites);
                free(pair_paths);
                return EXIT_USAGE;
            }
        } else if (argv[i][0] != '-' && !dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "ckpt-worker analyze: unexpected argument '%s'\n%s", argv[i],
                    analyze_usage);
            free(probe_paths);
            free(sae_sites);
            free(pair_paths);
            return EXIT_USAGE;
        }
    }
    if (!dir || !items_arg) {
        fputs(analyze_usage, stderr);
        free(probe_paths);
        free(sae_sites);
        free(pair_paths);
        return EXIT_USAGE;
    }
    const struct battery_item **items = calloc(battery_count(), sizeof *items);
    char *list = strdup(items_arg);
    size_t nitems = 0;
    if (!items || !list || parse_items(list, items, &nitems) < 0) {
        free(list);
        free(items);
        free(probe_paths);
        free(sae_sites);
        free(pair_paths);
        return EXIT_USAGE;
    }
    free(list);

    /* A closed stdout is a write error (exit 1), not a silent SIGPIPE death. */
    signal(SIGPIPE, SIG_IGN);
    struct err e;
    err_clear(&e);
    struct gptneox *m = NULL;
    int *tokens = NULL, B = 0, T = 0, status = EXIT_INPUT;
    char eval_name[64], *task_found = NULL;
    struct battery_ctx bctx = {.seed = seed};
    struct rows r;
    rows_init(&r);
    unsigned needs = 0;
    for (size_t i = 0; i < nitems; i++)
        needs |= items[i]->needs;

    struct probe_set **probe_sets = calloc((size_t)nprobe + 1, sizeof *probe_sets);
    struct pair_set **pair_sets = calloc((size_t)npairs + 1, sizeof *pair_sets);
    struct tokenizer *tok = NULL;
    if (!probe_sets || !pair_sets) {
        err_set(&e, ERR_NOMEM, NULL, "out of memory");
        goto fail;
    }
    if (gptneox_load(&m, dir, 0, &e) < 0)
        goto fail;
    bctx.model = m;
    /* probe sets are checked before any item runs: a bad file prints no rows */
    for (int k = 0; k < nprobe; k++)
        if (probe_set_load(&probe_sets[k], probe_paths[k], &e) < 0 ||
            probe_set_check(probe_sets[k], &m->cfg, &e) < 0)
            goto fail;
    if (nprobe && !(needs & BATTERY_NEEDS(BATTERY_NEED_PROBE_SETS)))
        log_warn("probe sets unused", "count=%d reason=\"no item listed reads them\"", nprobe);
    bctx.probe_sets = (const struct probe_set *const *)probe_sets;
    bctx.nprobe_sets = nprobe;
    /* pair sets likewise: a bad file prints no rows */
    if (tok_path && npairs && tokenizer_load(&tok, tok_path, &e) < 0)
        goto fail;
    for (int k = 0; k < npairs; k++)
        if (pair_set_load(&pair_sets[k], pair_paths[k], tok, &e) < 0 ||
            pair_set_check(pair_sets[k], &m->cfg, &e) < 0)
            goto fail;
    if (npairs && !(needs & BATTERY_NEEDS(BATTERY_NEED_PAIR_SETS)))
        log_warn("pair sets unused", "count=%d reason=\"no item listed reads them\"", npairs);
    bctx.pair_sets = (const struct pair_set *const *)pair_sets;
    bctx.npair_sets = npairs;
    bctx.artifacts_dir = artifacts;
    bctx.prev_artifacts_dir = prev_artifacts;
    /* the sites too, when an item trains SAEs: a bad one prints no rows */
    int uses_sites = 0;
    for (size_t i = 0; i < nitems; i++)
        uses_sites |= items[i] == &battery_item_sae || items[i] == &battery_item_sae_relu;
    if (nsae_sites && !uses_sites)
        log_warn("SAE sites unused", "count=%d reason=\"no item listed trains an SAE\"",
                 nsae_sites);
    if (nsae_sites && uses_sites) {
        struct sae_site sites[SAE_SITES_MAX];
        if (sae_sites_resolve(&m->cfg, sae_sites, nsae_sites, sites, &e) < 0)
            goto fail;
        bctx.sae_sites = sae_sites;
        bctx.nsae_sites = nsae_sites;
    }
    if (needs & (BATTERY_NEEDS(BATTERY_NEED_TASK) | BATTERY_NEEDS(BATTERY_NEED_TASK_OPTIONAL))) {
        bctx.task_path = task_arg ? task_arg : (task_found = find_task_json(dir));
        if (bctx.task_path)
            log_debug("task metadata", "file=%s", log_quote(bctx.task_path));
    }
    if (needs & BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS)) {
        if (eval_path) {
            int ctx = ctx_len ? (int)ctx_len
                      : m->cfg.max_positions < BATTERY_EVAL_LEN ? m->cfg.max_positions
                                                                : BATTERY_EVAL_LEN;
            if (tokens_read_file(eval_path, ctx, &tokens, &B, &T, &e) < 0)
                goto fail;
            if (max_seqs && (uint64_t)B > max_seqs)
                B = (int)max_seqs; /* the first rows of the (B,T) block */
            bctx.eval_name = eval_path;
        } else {
            if (battery_eval_default(&tokens, &B, &T, m->cfg.vocab_size, m->cfg.max_positions,
                                     seed, &e) < 0)
                goto fail;
            snprintf(eval_name, sizeof eval_name, "generated eval set (seed %" PRIu64 ")", seed);
            bctx.eval_name = eval_name;
        }
        bctx.eval_tokens = tokens;
        bctx.eval_B = B;
        bctx.eval_T = T;
        log_debug("eval tokens", "source=%s sequences=%d length=%d", log_quote(bctx.eval_name),
                  B, T);
    }
    for (size_t i = 0; i < nitems; i++) {
        double t0 = now_seconds(), f0 = m->forward_flop;
        if (battery_run_item(items[i], &bctx, &r, &e) < 0 || rows_write(&r, stdout, &e) < 0)
            goto fail;
        log_info("item done", "item=%s version=%d rows=%zu seconds=%.3f forward_flop=%.4g",
                 items[i]->name, items[i]->version, r.n, now_seconds() - t0,
                 m->forward_flop - f0);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        err_set(&e, ERR_IO, "stdout", "write failed: %s", strerror(errno));
        goto fail;
    }
    status = 0;
    goto out;
fail:
    log_err("analyze failed", &e);
out:
    rows_free(&r);
    free(task_found);
    free(tokens);
    gptneox_free(m);
    free(items);
    for (int k = 0; probe_sets && k < nprobe; k++)
        probe_set_free(probe_sets[k]);
    free(probe_sets);
    for (int k = 0; pair_sets && k < npairs; k++)
        pair_set_free(pair_sets[k]);
    free(pair_sets);
    tokenizer_free(tok);
    free(pair_paths);
    free(probe_paths);
    free(sae_sites);
    return status;
}
