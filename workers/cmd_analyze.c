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
#include <unistd.h>

#include "common/args.h"
#include "common/clock.h"
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
    "                           [--sae DIR]... [--model-name NAME] [--run NAME] [--step N]\n"
    "                           [--revision REV] [--status FILE] [--pairs FILE]...\n"
    "                           [--tokenizer FILE] [--full-sweep]\n"
    "\n"
    "Runs the battery items on the checkpoint and prints one row per measurement,\n"
    "in PostgreSQL COPY text format:\n"
    "  item<TAB>version<TAB>metric<TAB>layer<TAB>head<TAB>idx<TAB>value\n"
    "(-1 where an index does not apply; NaN, Infinity, -Infinity as float8 spells\n"
    "them).  An item's rows are printed only once it has fully succeeded; an item\n"
    "that fails costs only itself (and the items listed after it that depend on it).\n"
    "Exit status 0 when every item succeeded, 1 when one failed or the checkpoint or\n"
    "an input file could not be used, 2 on a usage error.  The same checkpoint,\n"
    "items and seed give byte-identical output.\n"
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
    "  --status FILE        write each item's outcome to FILE, one line per event:\n"
    "                       'started ITEM VERSION', 'done ITEM VERSION ROWS' once its\n"
    "                       rows are all on stdout, 'failed ITEM VERSION MESSAGE'\n"
    "                       (tab-separated, after a 'ckpt-worker-status 1' line;\n"
    "                       workers/battery/README.md)\n"
    "  --sae DIR            a fixed SAE dictionary for sae_fixed, repeatable: a SAELens\n"
    "                       directory (cfg.json, sae_weights.safetensors) or a sparsify\n"
    "                       hookpoint folder (cfg.json, sae.safetensors)\n"
    "  --model-name NAME    the model's TransformerLens name, recorded in SAE files\n"
    "                       (default: CKPT_DIR's parent's name when CKPT_DIR is stepN,\n"
    "                       else CKPT_DIR's name)\n"
    "  --run NAME           the run, recorded in SAE files\n"
    "  --step N             the checkpoint's training step (default: N of a CKPT_DIR\n"
    "                       named stepN), recorded as checkpoint_value in SAE files\n"
    "  --revision REV       a revision that is not a step, recorded instead\n"
    "  --pairs FILE         a prompt-pair set (JSON, see docs/patching.md), repeatable;\n"
    "                       the patching items write its rows with idx = its position in\n"
    "                       the --pairs list + 1 (idx 0: the built-in induction pairs)\n"
    "  --tokenizer FILE     a tokenizer.json for pair sets given as text\n"
    "  --full-sweep         this checkpoint is on the run's sparse skeleton: items with a\n"
    "                       sparse exact part run it in full (ablation ablates every head\n"
    "                       exactly, not only the top and a sample by its estimate)\n"
    "  --gate               load the checkpoint and the inputs, then wait for one byte on\n"
    "                       stdin before analysing (ckptd serve starts the next\n"
    "                       checkpoint's worker this way while the current one runs);\n"
    "                       end of input without a byte: exit 1, nothing analysed\n";

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

/* Is name "stepN"?  N into *step. */
static int step_dir_name(const char *name, long long *step)
{
    uint64_t v;
    if (strncmp(name, "step", 4) != 0 || parse_uint(name + 4, INT64_MAX, &v) < 0)
        return 0;
    *step = (long long)v;
    return 1;
}

/* What is not given of the provenance, from the checkpoint directory's
 * path: .../NAME/stepN gives model NAME and step N, .../NAME model NAME.
 * buf (n bytes) holds the model name when guessed. */
static void provenance_defaults(struct battery_provenance *p, const char *dir, char *buf, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        path[--len] = '\0';
    char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    long long step;
    int is_step = step_dir_name(base, &step);
    if (p->step < 0 && !p->revision && is_step)
        p->step = step;
    if (p->model_name)
        return;
    const char *name = base;
    if (is_step) {
        if (base == path) { /* "stepN" alone: the current directory's name */
            if (!getcwd(path, sizeof path))
                return;
            name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        } else {
            base[-1] = '\0';
            name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        }
    }
    if (name[0] && strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
        snprintf(buf, n, "%s", name);
        p->model_name = buf;
    }
}

/* The command line. */
struct analyze_args {
    const char *dir, *items_arg, *eval_path, *task_arg, *artifacts, *prev_artifacts;
    const char *status_path;
    uint64_t seed, ctx_len, max_seqs;
    const char **probe_paths; /* (nprobe) */
    int nprobe;
    const char **sae_sites;   /* (nsae_sites) */
    int nsae_sites;
    const char **sae_dirs;    /* (nsae_dirs): --sae, the fixed dictionaries */
    int nsae_dirs;
    struct battery_provenance prov; /* recorded in SAE files */
    char model_guess[256];          /* prov.model_name when guessed from the path */
    const char **pair_paths;  /* (npairs) */
    int npairs;
    const char *tokenizer;    /* for pair sets given as text, or NULL */
    int full_sweep;           /* --full-sweep */
    int gate;                 /* --gate */
    const struct battery_item **items; /* (nitems), in the order asked for */
    size_t nitems;
};

static void args_free(struct analyze_args *a)
{
    free(a->probe_paths);
    free(a->sae_sites);
    free(a->sae_dirs);
    free(a->pair_paths);
    free(a->items);
}

/* A numeric option's value into *out; EXIT_USAGE after saying what is wrong. */
static int parse_number(const char *opt, const char *s, uint64_t max, int positive, uint64_t *out)
{
    if (parse_uint(s, max, out) < 0 || (positive && *out == 0)) {
        fprintf(stderr, "ckpt-worker analyze: %s needs a %s integer\n", opt,
                positive ? "positive" : "non-negative");
        return EXIT_USAGE;
    }
    return 0;
}

/* Fill a from argv.  0; -1 after --help (printed); EXIT_USAGE after
 * saying what is wrong.  a is filled as far as it got either way
 * (args_free it). */
static int parse_args(int argc, char **argv, struct analyze_args *a)
{
    memset(a, 0, sizeof *a);
    a->probe_paths = calloc((size_t)argc, sizeof *a->probe_paths);
    a->sae_sites = calloc((size_t)argc, sizeof *a->sae_sites);
    a->sae_dirs = calloc((size_t)argc, sizeof *a->sae_dirs);
    a->pair_paths = calloc((size_t)argc, sizeof *a->pair_paths);
    a->items = calloc(battery_count(), sizeof *a->items);
    a->prov.step = -1;
    if (!a->probe_paths || !a->sae_sites || !a->sae_dirs || !a->pair_paths || !a->items) {
        fprintf(stderr, "ckpt-worker analyze: out of memory\n");
        return EXIT_USAGE;
    }
    enum { O_HELP = 256, O_ITEMS, O_EVAL_TOKENS, O_TASK, O_ARTIFACTS, O_PREV_ARTIFACTS, O_STATUS, O_PROBE,
           O_SAE_SITE, O_SAE, O_MODEL_NAME, O_RUN, O_REVISION, O_STEP, O_SEED, O_CTX, O_MAX_SEQS, O_PAIRS, O_TOKENIZER,
           O_FULL_SWEEP, O_GATE };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"items", required_argument, NULL, O_ITEMS},
        {"eval-tokens", required_argument, NULL, O_EVAL_TOKENS},
        {"task", required_argument, NULL, O_TASK},
        {"artifacts", required_argument, NULL, O_ARTIFACTS},
        {"prev-artifacts", required_argument, NULL, O_PREV_ARTIFACTS},
        {"status", required_argument, NULL, O_STATUS},
        {"probe", required_argument, NULL, O_PROBE},
        {"sae-site", required_argument, NULL, O_SAE_SITE},
        {"sae", required_argument, NULL, O_SAE},
        {"model-name", required_argument, NULL, O_MODEL_NAME},
        {"run", required_argument, NULL, O_RUN},
        {"revision", required_argument, NULL, O_REVISION},
        {"step", required_argument, NULL, O_STEP},
        {"seed", required_argument, NULL, O_SEED},
        {"ctx", required_argument, NULL, O_CTX},
        {"max-seqs", required_argument, NULL, O_MAX_SEQS},
        {"pairs", required_argument, NULL, O_PAIRS},
        {"tokenizer", required_argument, NULL, O_TOKENIZER},
        {"full-sweep", no_argument, NULL, O_FULL_SWEEP},
        {"gate", no_argument, NULL, O_GATE},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(analyze_usage, stdout);
            return -1;
        } else if (k == ARGS_WORD && !a->dir) {
            a->dir = c.arg;
        } else if (k == O_ITEMS) {
            a->items_arg = c.arg;
        } else if (k == O_EVAL_TOKENS) {
            a->eval_path = c.arg;
        } else if (k == O_TASK) {
            a->task_arg = c.arg;
        } else if (k == O_ARTIFACTS) {
            a->artifacts = c.arg;
        } else if (k == O_PREV_ARTIFACTS) {
            a->prev_artifacts = c.arg;
        } else if (k == O_STATUS) {
            a->status_path = c.arg;
        } else if (k == O_PROBE) {
            a->probe_paths[a->nprobe++] = c.arg;
        } else if (k == O_SAE_SITE) {
            a->sae_sites[a->nsae_sites++] = c.arg;
        } else if (k == O_SAE) {
            a->sae_dirs[a->nsae_dirs++] = c.arg;
        } else if (k == O_MODEL_NAME) {
            a->prov.model_name = c.arg;
        } else if (k == O_RUN) {
            a->prov.run = c.arg;
        } else if (k == O_REVISION) {
            a->prov.revision = c.arg;
        } else if (k == O_STEP) {
            uint64_t st;
            if (parse_number("--step", c.arg, INT64_MAX, 0, &st))
                return EXIT_USAGE;
            a->prov.step = (long long)st;
        } else if (k == O_PAIRS) {
            a->pair_paths[a->npairs++] = c.arg;
        } else if (k == O_TOKENIZER) {
            a->tokenizer = c.arg;
        } else if (k == O_FULL_SWEEP) {
            a->full_sweep = 1;
        } else if (k == O_GATE) {
            a->gate = 1;
        } else if (k == O_SEED) {
            if (parse_number("--seed", c.arg, UINT64_MAX, 0, &a->seed))
                return EXIT_USAGE;
        } else if (k == O_CTX) {
            if (parse_number("--ctx", c.arg, INT32_MAX, 1, &a->ctx_len))
                return EXIT_USAGE;
        } else if (k == O_MAX_SEQS) {
            if (parse_number("--max-seqs", c.arg, INT32_MAX, 1, &a->max_seqs))
                return EXIT_USAGE;
        } else {
            fprintf(stderr, "ckpt-worker analyze: unexpected argument '%s'\n%s", c.word, analyze_usage);
            return EXIT_USAGE;
        }
    }
    if (!a->dir || !a->items_arg) {
        fputs(analyze_usage, stderr);
        return EXIT_USAGE;
    }
    char *list = strdup(a->items_arg);
    int rc = list && parse_items(list, a->items, &a->nitems) == 0 ? 0 : EXIT_USAGE;
    if (!list)
        fprintf(stderr, "ckpt-worker analyze: out of memory\n");
    free(list);
    return rc;
}

/* What the items read, loaded once before any runs. */
struct analyze_inputs {
    struct gptneox *model;
    int *tokens;                   /* the eval set (bctx.eval_B, bctx.eval_T) */
    char eval_name[64];
    char *task_found;              /* task.json found next to the checkpoint */
    struct probe_set **probe_sets; /* (nprobe) */
    int nprobe;
    struct pair_set **pair_sets;   /* (npairs) */
    int npairs;
    struct battery_ctx bctx;       /* borrows all of the above */
};

static void inputs_free(struct analyze_inputs *in)
{
    evalpass_free(in->bctx.pass);
    free(in->task_found);
    free(in->tokens);
    gptneox_free(in->model);
    for (int k = 0; in->probe_sets && k < in->nprobe; k++)
        probe_set_free(in->probe_sets[k]);
    free(in->probe_sets);
    for (int k = 0; in->pair_sets && k < in->npairs; k++)
        pair_set_free(in->pair_sets[k]);
    free(in->pair_sets);
    memset(in, 0, sizeof *in);
}

static unsigned items_needs(const struct analyze_args *a)
{
    unsigned needs = 0;
    for (size_t i = 0; i < a->nitems; i++)
        needs |= a->items[i]->needs;
    return needs;
}

/* Probe sets are checked before any item runs: a bad file prints no rows. */
static int load_probe_sets(const struct analyze_args *a, struct analyze_inputs *in, struct err *e)
{
    in->probe_sets = calloc((size_t)a->nprobe + 1, sizeof *in->probe_sets);
    if (!in->probe_sets)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    in->nprobe = a->nprobe;
    for (int k = 0; k < a->nprobe; k++)
        if (probe_set_load(&in->probe_sets[k], a->probe_paths[k], e) < 0 ||
            probe_set_check(in->probe_sets[k], &in->model->cfg, e) < 0)
            return e ? e->code : ERR_INVALID;
    if (a->nprobe && !(items_needs(a) & BATTERY_NEEDS(BATTERY_NEED_PROBE_SETS)))
        log_warn("probe sets unused", "count=%d reason=\"no item listed reads them\"", a->nprobe);
    in->bctx.probe_sets = (const struct probe_set *const *)in->probe_sets;
    in->bctx.nprobe_sets = a->nprobe;
    return 0;
}

/* Pair sets likewise (texts tokenized with --tokenizer): a bad file prints
 * no rows. */
static int load_pair_sets(const struct analyze_args *a, struct analyze_inputs *in, struct err *e)
{
    struct tokenizer *tok = NULL;
    int rc = 0;
    in->pair_sets = calloc((size_t)a->npairs + 1, sizeof *in->pair_sets);
    if (!in->pair_sets)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    in->npairs = a->npairs;
    if (a->tokenizer && a->npairs && tokenizer_load(&tok, a->tokenizer, e) < 0)
        return e ? e->code : ERR_INVALID;
    for (int k = 0; k < a->npairs && rc == 0; k++)
        if (pair_set_load(&in->pair_sets[k], a->pair_paths[k], tok, e) < 0 ||
            pair_set_check(in->pair_sets[k], &in->model->cfg, e) < 0)
            rc = e ? e->code : ERR_INVALID;
    tokenizer_free(tok);
    if (rc < 0)
        return rc;
    if (a->npairs && !(items_needs(a) & BATTERY_NEEDS(BATTERY_NEED_PAIR_SETS)))
        log_warn("pair sets unused", "count=%d reason=\"no item listed reads them\"", a->npairs);
    in->bctx.pair_sets = (const struct pair_set *const *)in->pair_sets;
    in->bctx.npair_sets = a->npairs;
    return 0;
}

/* The SAE sites too, when an item trains SAEs: a bad one prints no rows. */
static int check_sae_sites(const struct analyze_args *a, struct analyze_inputs *in, struct err *e)
{
    int uses_sites = 0;
    for (size_t i = 0; i < a->nitems; i++)
        uses_sites |= a->items[i] == &battery_item_sae || a->items[i] == &battery_item_sae_relu;
    if (a->nsae_sites && !uses_sites)
        log_warn("SAE sites unused", "count=%d reason=\"no item listed trains an SAE\"",
                 a->nsae_sites);
    if (!a->nsae_sites || !uses_sites)
        return 0;
    struct sae_site sites[SAE_SITES_MAX];
    if (sae_sites_resolve(&in->model->cfg, a->sae_sites, a->nsae_sites, sites, e) < 0)
        return e ? e->code : ERR_INVALID;
    in->bctx.sae_sites = a->sae_sites;
    in->bctx.nsae_sites = a->nsae_sites;
    return 0;
}

/* The fixed dictionaries of sae_fixed, and where the checkpoint comes
 * from (recorded in the SAE files items write). */
static int set_sae_fixed(const struct analyze_args *a, struct analyze_inputs *in, struct err *e)
{
    if (a->nsae_dirs > SAE_FIXED_MAX)
        return err_set(e, ERR_INVALID, NULL, "%d --sae dictionaries: at most %d", a->nsae_dirs,
                       SAE_FIXED_MAX);
    if (a->nsae_dirs && !(items_needs(a) & BATTERY_NEEDS(BATTERY_NEED_SAE_DICTS)))
        log_warn("SAE dictionaries unused", "count=%d reason=\"no item listed reads them\"",
                 a->nsae_dirs);
    in->bctx.sae_fixed_dirs = a->sae_dirs;
    in->bctx.nsae_fixed = a->nsae_dirs;
    in->bctx.provenance = &a->prov;
    return 0;
}

/* The eval set: --eval-tokens, else the generated one. */
static int load_eval_tokens(const struct analyze_args *a, struct analyze_inputs *in, struct err *e)
{
    const struct gptneox_config *cfg = &in->model->cfg;
    int B = 0, T = 0;
    if (a->eval_path) {
        int ctx = a->ctx_len ? (int)a->ctx_len
                  : cfg->max_positions < BATTERY_EVAL_LEN ? cfg->max_positions : BATTERY_EVAL_LEN;
        if (tokens_read_file(a->eval_path, ctx, &in->tokens, &B, &T, e) < 0)
            return e ? e->code : ERR_INVALID;
        if (a->max_seqs && (uint64_t)B > a->max_seqs)
            B = (int)a->max_seqs; /* the first rows of the (B,T) block */
        in->bctx.eval_name = a->eval_path;
    } else {
        if (battery_eval_default(&in->tokens, &B, &T, cfg->vocab_size, cfg->max_positions, a->seed,
                                 e) < 0)
            return e ? e->code : ERR_INVALID;
        snprintf(in->eval_name, sizeof in->eval_name, "generated eval set (seed %" PRIu64 ")",
                 a->seed);
        in->bctx.eval_name = in->eval_name;
    }
    in->bctx.eval_tokens = in->tokens;
    in->bctx.eval_B = B;
    in->bctx.eval_T = T;
    log_debug("eval tokens", "source=%s sequences=%d length=%d", log_quote(in->bctx.eval_name), B,
              T);
    return 0;
}

/* The model and everything the listed items read from the command line.
 * A failure here fails every item (inputs_free what was loaded). */
static int load_inputs(const struct analyze_args *a, struct analyze_inputs *in, struct err *e)
{
    memset(in, 0, sizeof *in);
    in->bctx.seed = a->seed;
    in->bctx.full_sweep = a->full_sweep;
    in->bctx.artifacts_dir = a->artifacts;
    in->bctx.prev_artifacts_dir = a->prev_artifacts;
    unsigned needs = items_needs(a);
    double load0 = now_seconds();
    if (gptneox_load(&in->model, a->dir, 0, e) < 0)
        return e ? e->code : ERR_INVALID;
    log_info("checkpoint loaded", "seconds=%.3f", now_seconds() - load0);
    in->bctx.model = in->model;
    int rc = load_probe_sets(a, in, e);
    if (rc == 0)
        rc = load_pair_sets(a, in, e);
    if (rc == 0)
        rc = check_sae_sites(a, in, e);
    if (rc == 0)
        rc = set_sae_fixed(a, in, e);
    if (rc == 0 && (needs & (BATTERY_NEEDS(BATTERY_NEED_TASK) |
                             BATTERY_NEEDS(BATTERY_NEED_TASK_OPTIONAL)))) {
        in->bctx.task_path = a->task_arg ? a->task_arg : (in->task_found = find_task_json(a->dir));
        if (in->bctx.task_path)
            log_debug("task metadata", "file=%s", log_quote(in->bctx.task_path));
    }
    if (rc == 0 && (needs & BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS)))
        rc = load_eval_tokens(a, in, e);
    return rc;
}

/* One forward of the eval set for every item that reads it, run now.  When
 * it cannot be set up, each such item runs a pass of its own (and reports
 * its own error); a failed forward is reported by every item that reads
 * it. */
static void run_eval_pass(const struct analyze_args *a, struct analyze_inputs *in)
{
    struct err e;
    err_clear(&e);
    if (battery_pass_prepare(&in->bctx, a->items, a->nitems, &e) < 0) {
        log_err("eval pass not shared", &e);
        evalpass_free(in->bctx.pass);
        in->bctx.pass = NULL;
        return;
    }
    if (!in->bctx.pass)
        return;
    double t0 = now_seconds(), c0 = cpu_now(), fs, fc, ff;
    int nc, nf;
    if (evalpass_run(in->bctx.pass, &e) < 0)
        log_err("eval pass failed", &e); /* its items report it */
    evalpass_totals(in->bctx.pass, &fs, &fc, &ff, &nc, &nf);
    log_info("eval pass done", "consumers=%d forwards=%d seconds=%.3f cpu_seconds=%.3f "
             "forward_seconds=%.3f forward_cpu_seconds=%.3f forward_flop=%.4g", nc, nf,
             now_seconds() - t0, cpu_now() - c0, fs, fc, ff);
}

/* A status line that could not be written: logged once; the run goes on
 * (its rows are still printed) but cannot end with status 0. */
static void status_check(int rc, const struct err *e, int *status_ok)
{
    if (rc < 0 && *status_ok) {
        log_err("status file not written", e);
        *status_ok = 0;
    }
}

/* Report items[from..n) failed: "item NAME vN not run: <why>". */
static void fail_items(const struct analyze_args *a, size_t from, const char *why,
                       struct rows_status *st, int *status_ok)
{
    struct err se;
    char msg[ERR_MSG_MAX + ERR_CTX_MAX + 64];
    for (size_t i = from; i < a->nitems; i++) {
        snprintf(msg, sizeof msg, "item %s v%d not run: %s", a->items[i]->name,
                 a->items[i]->version, why);
        status_check(rows_status_failed(st, a->items[i]->name, a->items[i]->version, msg, &se),
                     &se, status_ok);
    }
}

/* The item that `it` depends on failed earlier in this run: its index
 * among a->items[0..i), or -1. */
static int failed_dependency(const struct analyze_args *a, size_t i, const unsigned char *failed)
{
    const char *dep = a->items[i]->depends_on;
    for (size_t k = 0; dep && k < i; k++)
        if (failed[k] && strcmp(a->items[k]->name, dep) == 0)
            return (int)k;
    return -1;
}

/* Rows of a finished item onto stdout, flushed before its `done` line. */
static int write_rows(const struct rows *r, struct err *e)
{
    if (rows_write(r, stdout, e) < 0)
        return e ? e->code : ERR_IO;
    if (fflush(stdout) != 0 || ferror(stdout))
        return err_set(e, ERR_IO, "stdout", "write failed: %s", strerror(errno));
    return 0;
}

static void report_failed(const struct battery_item *it, const struct err *e,
                          struct rows_status *st, int *status_ok)
{
    struct err se;
    log_err("item failed", e);
    status_check(rows_status_failed(st, it->name, it->version, err_str(e), &se), &se, status_ok);
}

/* Run one item and report it.  0 done; ERR_IO when stdout could not be
 * written (nothing more can be); another negative code when the item
 * failed (e says why). */
static int run_item(const struct battery_item *it, const struct analyze_inputs *in, struct rows *r,
                    struct rows_status *st, int *status_ok, struct err *e)
{
    struct err se;
    double t0 = now_seconds(), c0 = cpu_now(), f0 = in->model->forward_flop, pass_cpu;
    status_check(rows_status_started(st, it->name, it->version, &se), &se, status_ok);
    int rc = battery_run_item(it, &in->bctx, r, e);
    int wrote = rc == 0 ? write_rows(r, e) : 0;
    if (rc < 0 || wrote < 0) {
        report_failed(it, e, st, status_ok);
        return wrote < 0 ? ERR_IO : rc;
    }
    status_check(rows_status_done(st, it->name, it->version, r->n, &se), &se, status_ok);
    /* the item's share of the shared eval pass counts as its own */
    double in_pass = evalpass_own_seconds(in->bctx.pass, it->name, &pass_cpu);
    log_info("item done", "item=%s version=%d rows=%zu seconds=%.3f cpu_seconds=%.3f "
             "pass_seconds=%.3f forward_flop=%.4g", it->name, it->version, r->n,
             now_seconds() - t0 + in_pass, cpu_now() - c0 + pass_cpu, in_pass,
             in->model->forward_flop - f0);
    return 0;
}

/* Every item in order, each on its own: one failing costs only itself and
 * the later items that depend on it.  Returns the number that failed. */
static size_t run_items(const struct analyze_args *a, const struct analyze_inputs *in,
                        struct rows_status *st, int *status_ok)
{
    unsigned char *failed = calloc(a->nitems + 1, 1);
    if (!failed) {
        fail_items(a, 0, "out of memory", st, status_ok);
        return a->nitems;
    }
    size_t nfailed = 0;
    struct rows r;
    rows_init(&r);
    for (size_t i = 0; i < a->nitems; i++) {
        const struct battery_item *it = a->items[i];
        struct err e;
        err_clear(&e);
        int rc, dep = failed_dependency(a, i, failed);
        if (dep >= 0) {
            rc = err_set(&e, ERR_INVALID, NULL, "item %s v%d not run: depends on %s, which failed",
                         it->name, it->version, a->items[dep]->name);
            report_failed(it, &e, st, status_ok);
        } else {
            rc = run_item(it, in, &r, st, status_ok, &e);
        }
        if (rc == 0)
            continue;
        failed[i] = 1;
        nfailed++;
        if (rc == ERR_IO && dep < 0) { /* stdout is gone: the rest cannot print either */
            fail_items(a, i + 1, err_str(&e), st, status_ok);
            nfailed += a->nitems - i - 1;
            break;
        }
    }
    rows_free(&r);
    free(failed);
    return nfailed;
}

/* --gate: one byte on stdin says begin (ckptd counts the worker's seconds
 * and its deadline from sending it); *waited is the seconds spent waiting. */
static int wait_gate(double *waited, struct err *e)
{
    char b;
    ssize_t n;
    double t0 = now_seconds();
    while ((n = read(0, &b, 1)) < 0 && errno == EINTR)
        ;
    *waited = now_seconds() - t0;
    if (n != 1)
        return err_set(e, ERR_INVALID, "stdin", "the gate closed without a start (%s)",
                       n == 0 ? "end of input" : strerror(errno));
    log_debug("gate opened", "waited_s=%.3f", *waited);
    return 0;
}

int cmd_analyze(int argc, char **argv)
{
    struct analyze_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0) {
        args_free(&a);
        return rc < 0 ? 0 : rc;
    }
    const double start = now_seconds(), cpu0 = cpu_now();
    /* A closed stdout is a write error (exit 1), not a silent SIGPIPE death. */
    signal(SIGPIPE, SIG_IGN);
    struct err e;
    err_clear(&e);
    struct rows_status st;
    struct analyze_inputs in;
    int status_ok = 1;
    memset(&in, 0, sizeof in);
    if (rows_status_open(&st, a.status_path, &e) < 0) {
        log_err("analyze failed", &e);
        args_free(&a);
        return EXIT_INPUT;
    }
    size_t nfailed = a.nitems;
    double gate_s = 0; /* not counted in the seconds logged at the end */
    provenance_defaults(&a.prov, a.dir, a.model_guess, sizeof a.model_guess);
    if (load_inputs(&a, &in, &e) < 0) {
        log_err("analyze failed", &e);
        fail_items(&a, 0, err_str(&e), &st, &status_ok);
    } else if (a.gate && wait_gate(&gate_s, &e) < 0) {
        log_err("analyze not started", &e);
        fail_items(&a, 0, err_str(&e), &st, &status_ok);
    } else {
        run_eval_pass(&a, &in);
        nfailed = run_items(&a, &in, &st, &status_ok);
    }
    if (nfailed)
        log_error("analyze failed", "items_failed=%zu items=%zu", nfailed, a.nitems);
    else
        log_info("analyze done", "items=%zu seconds=%.3f cpu_seconds=%.3f gate_wait_s=%.3f", a.nitems,
                 now_seconds() - start - gate_s, cpu_now() - cpu0, gate_s);
    rows_status_close(&st);
    inputs_free(&in);
    args_free(&a);
    return nfailed == 0 && status_ok ? 0 : EXIT_INPUT;
}
