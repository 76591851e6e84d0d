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

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/cli.h"
#include "workers/model/gptneox.h"
#include "workers/text/tokens.h"

static const char analyze_usage[] =
    "usage: ckpt-worker analyze CKPT_DIR --items ITEM,... [--eval-tokens FILE] [--ctx N] [--seed N]\n"
    "                           [--max-seqs N] [--probe FILE]... [--task FILE]\n"
    "                           [--artifacts DIR] [--prev-artifacts DIR] [--sae-site HOOK]...\n"
    "                           [--sae DIR]... [--model-name NAME] [--run NAME] [--step N]\n"
    "                           [--revision REV] [--status FILE]\n"
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
    "  --revision REV       a revision that is not a step, recorded instead\n";

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
    const struct battery_item **items; /* (nitems), in the order asked for */
    size_t nitems;
};

static void args_free(struct analyze_args *a)
{
    free(a->probe_paths);
    free(a->sae_sites);
    free(a->sae_dirs);
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
    a->items = calloc(battery_count(), sizeof *a->items);
    a->prov.step = -1;
    if (!a->probe_paths || !a->sae_sites || !a->sae_dirs || !a->items) {
        fprintf(stderr, "ckpt-worker analyze: out of memory\n");
        return EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(arg, "--help") == 0) {
            fputs(analyze_usage, stdout);
            return -1;
        } else if (arg[0] != '-' && !a->dir) {
            a->dir = arg;
            continue;
        } else if (!val) {
            rc = EXIT_USAGE;
        } else if (strcmp(arg, "--items") == 0) {
            a->items_arg = val;
        } else if (strcmp(arg, "--eval-tokens") == 0) {
            a->eval_path = val;
        } else if (strcmp(arg, "--task") == 0) {
            a->task_arg = val;
        } else if (strcmp(arg, "--artifacts") == 0) {
            a->artifacts = val;
        } else if (strcmp(arg, "--prev-artifacts") == 0) {
            a->prev_artifacts = val;
        } else if (strcmp(arg, "--status") == 0) {
            a->status_path = val;
        } else if (strcmp(arg, "--probe") == 0) {
            a->probe_paths[a->nprobe++] = val;
        } else if (strcmp(arg, "--sae-site") == 0) {
            a->sae_sites[a->nsae_sites++] = val;
        } else if (strcmp(arg, "--sae") == 0) {
            a->sae_dirs[a->nsae_dirs++] = val;
        } else if (strcmp(arg, "--model-name") == 0) {
            a->prov.model_name = val;
        } else if (strcmp(arg, "--run") == 0) {
            a->prov.run = val;
        } else if (strcmp(arg, "--revision") == 0) {
            a->prov.revision = val;
        } else if (strcmp(arg, "--step") == 0) {
            uint64_t st;
            if (parse_number(arg, val, INT64_MAX, 0, &st))
                return EXIT_USAGE;
            a->prov.step = (long long)st;
        } else if (strcmp(arg, "--seed") == 0) {
            if (parse_number(arg, val, UINT64_MAX, 0, &a->seed))
                return EXIT_USAGE;
        } else if (strcmp(arg, "--ctx") == 0) {
            if (parse_number(arg, val, INT32_MAX, 1, &a->ctx_len))
                return EXIT_USAGE;
        } else if (strcmp(arg, "--max-seqs") == 0) {
            if (parse_number(arg, val, INT32_MAX, 1, &a->max_seqs))
                return EXIT_USAGE;
        } else {
            rc = EXIT_USAGE;
        }
        if (rc) {
            fprintf(stderr, "ckpt-worker analyze: unexpected argument '%s'\n%s", arg, analyze_usage);
            return rc;
        }
        i++;
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
    struct battery_ctx bctx;       /* borrows all of the above */
};

static void inputs_free(struct analyze_inputs *in)
{
    free(in->task_found);
    free(in->tokens);
    gptneox_free(in->model);
    for (int k = 0; in->probe_sets && k < in->nprobe; k++)
        probe_set_free(in->probe_sets[k]);
    free(in->probe_sets);
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
    in->bctx.artifacts_dir = a->artifacts;
    in->bctx.prev_artifacts_dir = a->prev_artifacts;
    unsigned needs = items_needs(a);
    if (gptneox_load(&in->model, a->dir, 0, e) < 0)
        return e ? e->code : ERR_INVALID;
    in->bctx.model = in->model;
    int rc = load_probe_sets(a, in, e);
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
    double t0 = now_seconds(), f0 = in->model->forward_flop;
    status_check(rows_status_started(st, it->name, it->version, &se), &se, status_ok);
    int rc = battery_run_item(it, &in->bctx, r, e);
    int wrote = rc == 0 ? write_rows(r, e) : 0;
    if (rc < 0 || wrote < 0) {
        report_failed(it, e, st, status_ok);
        return wrote < 0 ? ERR_IO : rc;
    }
    status_check(rows_status_done(st, it->name, it->version, r->n, &se), &se, status_ok);
    log_info("item done", "item=%s version=%d rows=%zu seconds=%.3f forward_flop=%.4g", it->name,
             it->version, r->n, now_seconds() - t0, in->model->forward_flop - f0);
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

int cmd_analyze(int argc, char **argv)
{
    struct analyze_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0) {
        args_free(&a);
        return rc < 0 ? 0 : rc;
    }
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
    provenance_defaults(&a.prov, a.dir, a.model_guess, sizeof a.model_guess);
    if (load_inputs(&a, &in, &e) < 0) {
        log_err("analyze failed", &e);
        fail_items(&a, 0, err_str(&e), &st, &status_ok);
    } else {
        nfailed = run_items(&a, &in, &st, &status_ok);
    }
    if (nfailed)
        log_error("analyze failed", "items_failed=%zu items=%zu", nfailed, a.nitems);
    rows_status_close(&st);
    inputs_free(&in);
    args_free(&a);
    return nfailed == 0 && status_ok ? 0 : EXIT_INPUT;
}
