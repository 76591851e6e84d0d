/*
 * ckptd - the scheduler daemon: runs, checkpoints, jobs, workers, results.
 * See README.md for the commands and daemon/README.md for the design.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/args.h"
#include "common/atomic_file.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/path.h"
#include "common/version.h"
#include "daemon/base/db.h"
#include "daemon/base/migrate.h"
#include "daemon/detect/detect.h"
#include "daemon/detect/family.h"
#include "daemon/detect/integrity.h"
#include "daemon/fetch/cache.h"
#include "daemon/fetch/fetch.h"
#include "daemon/fetch/stage.h"
#include "daemon/ops/config.h"
#include "daemon/ops/serve.h"
#include "daemon/plan/plan.h"
#include "daemon/plan/cost.h"
#include "daemon/plan/evalset.h"
#include "daemon/plan/forecast.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/runset.h"
#include "daemon/plan/source.h"
#include "daemon/read/export.h"
#include "daemon/read/family_report.h"
#include "daemon/read/report.h"
#include "daemon/read/status.h"
#include "daemon/work/policy.h"
#include "daemon/work/queue.h"
#include "daemon/work/supervise.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

static const char usage[] =
    "usage: ckptd [--config FILE] [--db CONNINFO] [--log-level LEVEL] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  migrate                      create or upgrade the database schema\n"
    "  add-run NAME --source URL --schedule pythia|refs|LIST [--items ITEM,...]\n"
    "          [--eval-tokens FILE | --eval-text FILE [--tokenizer FILE]]\n"
    "          [--ctx N] [--eval-seqs N] [--probe FILE]...\n"
    "          [--seed N] [--max-attempts N] [--sae-warm-start] [--sae-site HOOK]...\n"
    "          [--sae DIR]... [--model-name NAME]\n"
    "          [--pairs FILE]... [--sweep-every K] [--family NAME] [--policy order|adaptive]\n"
    "                               register a run and enqueue its jobs (idempotent);\n"
    "                               a source with a range, hf://ORG/NAME-seed{1..9},\n"
    "                               adds one run per value (names derived) to --family\n"
    "  add-family NAME RUN...       group runs that differ by seed into a family\n"
    "  serve [--workers N] [--until-idle] [--node NAME]\n"
    "        [--metrics HOST:PORT [--metrics-allow-remote]]\n"
    "                               claim and analyse checkpoints until stopped;\n"
    "                               /metrics and /healthz on HOST:PORT (loopback\n"
    "                               unless --metrics-allow-remote)\n"
    "  status [RUN]                 progress, failing jobs, what each node is doing\n"
    "  plan RUN [--model-config FILE] [--nodes N] [--workers N] [--gflops R] [--json]\n"
    "  plan --model-config FILE [--items ITEM,...] [--schedule S | --steps N]\n"
    "       [--eval-tokens FILE] [--eval-seqs N] [--ctx N] [--sae-sites N]\n"
    "       [--sweep-every K] [--nodes N] [--workers N] [--gflops R] [--json]\n"
    "                               projected seconds per item, per checkpoint and per\n"
    "                               series (daemon/plan/cost.h), of a run or before one\n"
    "  retry RUN|JOB_ID             re-queue dead jobs of a run, or one job\n"
    "  fetch SOURCE --step N [--to DIR]\n"
    "                               fetch one checkpoint into the cache (and DIR)\n"
    "  report RUN [--out DIR]       write DIR/index.html (default ./report-RUN): charts of the run\n"
    "  report --family NAME [--out DIR]\n"
    "                               the family's bands and every member's transitions\n"
    "  transitions RUN [--metric NAME] [--min-score X] [--kind transition|spike]\n"
    "                  [--method NAME|all] [--json]\n"
    "                               a run's transitions and spikes by peak step, grouped\n"
    "  transitions --family NAME [--metric NAME] [--min-score X] [--json]\n"
    "                               the family's transitions (found in how many members,\n"
    "                               their peaks' spread) and its outlier members\n"
    "  detect RUN | --family NAME   find the transitions of every series of a run (of\n"
    "                               every member) again; analyse the family\n"
    "  integrity RUN [--json]       judge a run's checkpoints against its trajectory again;\n"
    "                               print each one's distances and verdict\n"
    "  export RUN [--metric NAME]... [--item ITEM]... [--format csv|jsonl|npy] [--out PATH]\n"
    "                               a run's series as files (docs/data-out.md)\n"
    "\n"
    "The database is --db (a libpq conninfo or URI), the config's \"database\",\n"
    "or libpq's environment (PGHOST, PGPORT, PGUSER, PGDATABASE, ...).\n"
    "Exit status: 0 ok, 1 failure, 2 usage error.\n";

static struct db *open_db(const struct daemon_config *cfg)
{
    struct err e;
    struct db *db = db_new(cfg->database);
    if (!db)
        return NULL;
    db_set_timeouts(db, cfg->db_statement_timeout_s, cfg->db_idle_in_transaction_timeout_s);
    if (db_connect_wait(db, 5.0, &e) < 0) {
        log_err("cannot connect to the database", &e);
        db_free(db);
        return NULL;
    }
    return db;
}

/* A command without options: between min and max (0 or 1) words, the
 * word into *word; -1 on an option or a word too many or too few. */
static int only_words(int argc, char **argv, const char **word, int min, int max)
{
    static const struct option none[] = {{NULL, 0, NULL, 0}};
    struct args c;
    int n = 0;
    args_start(&c, argc, argv, "", none);
    for (int k; (k = args_next(&c)) != ARGS_END; n++) {
        if (k != ARGS_WORD || n >= max)
            return -1;
        *word = c.arg;
    }
    return n < min ? -1 : 0;
}

static int cmd_migrate(struct daemon_config *cfg)
{
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int applied = 0, rc = migrate_apply(db, &applied, &e);
    if (rc < 0)
        log_err("migration failed", &e);
    else
        printf("schema at version %d (%d migration%s applied)\n",
               migrations[migrations_count - 1].version, applied, applied == 1 ? "" : "s");
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int source_is_hf(const char *source) { return strncmp(source, "hf://", 5) == 0; }

/* The steps of the hub's branches of source (a `refs` schedule). */
static int discover_steps(struct daemon_config *cfg, const char *source, long long **refs, int *nrefs,
                          struct err *e)
{
    struct fetch_opts fo;
    daemon_config_fetch_opts(cfg, &fo);
    struct fetcher *f = fetcher_new(&fo, e);
    int rc = f ? stage_discover_steps(f, source, daemon_offline(), refs, nrefs, e) : ERR_NET;
    fetcher_free(f);
    return rc;
}

/* add-run's arguments into p; EXIT_USAGE after saying what is wrong.
 * name and source, when not NULL, stand for NAME and --source (one run of
 * a source with a range). */
static int add_run_args(struct plan *p, int argc, char **argv, const char *name, const char *source)
{
    enum { O_SOURCE = 256, O_SCHEDULE, O_ITEMS, O_EVAL_TOKENS, O_SEED, O_MAX_ATTEMPTS, O_EVAL_TEXT,
           O_TOKENIZER, O_CTX, O_EVAL_SEQS, O_SAE_WARM_START, O_SAE_SITE, O_PROBE, O_SAE, O_MODEL_NAME, O_PAIRS,
           O_SWEEP_EVERY, O_FAMILY, O_POLICY };
    static const struct option opts[] = {
        {"source", required_argument, NULL, O_SOURCE},
        {"schedule", required_argument, NULL, O_SCHEDULE},
        {"items", required_argument, NULL, O_ITEMS},
        {"eval-tokens", required_argument, NULL, O_EVAL_TOKENS},
        {"seed", required_argument, NULL, O_SEED},
        {"max-attempts", required_argument, NULL, O_MAX_ATTEMPTS},
        {"eval-text", required_argument, NULL, O_EVAL_TEXT},
        {"tokenizer", required_argument, NULL, O_TOKENIZER},
        {"ctx", required_argument, NULL, O_CTX},
        {"eval-seqs", required_argument, NULL, O_EVAL_SEQS},
        {"sae-warm-start", no_argument, NULL, O_SAE_WARM_START},
        {"sae-site", required_argument, NULL, O_SAE_SITE},
        {"probe", required_argument, NULL, O_PROBE},
        {"sae", required_argument, NULL, O_SAE},
        {"model-name", required_argument, NULL, O_MODEL_NAME},
        {"pairs", required_argument, NULL, O_PAIRS},
        {"sweep-every", required_argument, NULL, O_SWEEP_EVERY},
        {"family", required_argument, NULL, O_FAMILY},
        {"policy", required_argument, NULL, O_POLICY},
        {NULL, 0, NULL, 0},
    };
    struct err e;
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        int rc = 0;
        if (k == O_SOURCE)
            p->source = c.arg;
        else if (k == O_SCHEDULE)
            p->schedule = c.arg;
        else if (k == O_ITEMS)
            p->items_arg = c.arg;
        else if (k == O_EVAL_TOKENS)
            p->eval_tokens = c.arg;
        else if (k == O_SEED)
            p->seed = atoll(c.arg);
        else if (k == O_MAX_ATTEMPTS)
            p->max_attempts = atoi(c.arg);
        else if (k == O_EVAL_TEXT)
            p->eval_text = c.arg;
        else if (k == O_TOKENIZER)
            p->tokenizer = c.arg;
        else if (k == O_CTX)
            p->ctx = atoll(c.arg);
        else if (k == O_EVAL_SEQS)
            p->eval_seqs = atoll(c.arg);
        else if (k == O_SAE_WARM_START)
            p->sae_warm_start = 1;
        else if (k == O_SAE_SITE)
            rc = plan_add_sae_site(p, c.arg, &e);
        else if (k == O_PROBE)
            rc = plan_add_probe(p, c.arg, &e);
        else if (k == O_SAE)
            rc = plan_add_sae_dict(p, c.arg, &e);
        else if (k == O_MODEL_NAME)
            p->model_name = c.arg;
        else if (k == O_PAIRS)
            rc = plan_add_pairs(p, c.arg, &e);
        else if (k == O_SWEEP_EVERY)
            p->sweep_every = atoll(c.arg);
        else if (k == O_FAMILY)
            p->family = c.arg;
        else if (k == O_POLICY)
            p->policy = c.arg;
        else if (k == ARGS_WORD && !p->name)
            p->name = c.arg;
        else {
            fprintf(stderr, "ckptd add-run: unexpected argument '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
        if (rc < 0) {
            fprintf(stderr, "ckptd add-run: %s\n", e.msg);
            return EXIT_USAGE;
        }
    }
    if (name)
        p->name = name;
    if (source)
        p->source = source;
    if (plan_check_args(p, &e) < 0) {
        fprintf(stderr, "ckptd add-run: %s\n%s", e.msg, usage);
        return EXIT_USAGE;
    }
    return 0;
}

/* What the run is: its steps, items and eval set; 0 or the exit status
 * after saying what is wrong.  reg gets the worker's battery. */
static int add_run_plan(struct daemon_config *cfg, struct plan *p, struct registry *reg)
{
    struct err e;
    long long *refs = NULL;
    int nrefs = 0, rc;
    if (plan_check_source(p, &e) < 0) {
        log_err("bad run", &e);
        return EXIT_USAGE;
    }
    const int from_refs = plan_needs_refs(p);
    rc = from_refs ? discover_steps(cfg, p->source, &refs, &nrefs, &e) : 0;
    if (rc == 0)
        rc = plan_set_steps(p, refs, nrefs, &e);
    free(refs);
    if (rc < 0 && from_refs) {
        log_err("cannot discover the run's steps", &e);
        return rc == ERR_INVALID && !source_is_hf(p->source) ? EXIT_USAGE : EXIT_FAIL;
    }
    if (rc < 0) {
        log_err("bad run", &e);
        return EXIT_USAGE;
    }
    char worker[1024];
    supervise_worker_path(cfg->worker_path, worker, sizeof worker);
    if (registry_from_worker(reg, worker, &e) < 0) {
        log_err("cannot read the battery from the worker", &e);
        return EXIT_FAIL;
    }
    if (plan_choose_items(p, reg, &e) < 0) {
        fprintf(stderr, "ckptd add-run: %s\n", e.msg);
        return EXIT_USAGE;
    }
    if ((rc = plan_check_sae_dicts(p, worker, &e)) < 0) {
        log_err("bad SAE dictionary", &e);
        return rc == ERR_INVALID ? EXIT_USAGE : EXIT_FAIL;
    }
    /* pair sets: checked, tokenized and pinned before anything is stored */
    if ((rc = plan_prepare_pairs(p, worker, &e)) < 0) {
        log_err("cannot use the pair set", &e);
        return rc == ERR_CHILD ? EXIT_USAGE : EXIT_FAIL;
    }
    if ((rc = plan_tokenize_eval(p, worker, &e)) < 0) {
        log_err("cannot tokenize the eval text", &e);
        return rc == ERR_CHILD ? EXIT_FAIL : EXIT_USAGE;
    }
    if (plan_find_eval(p, &e) < 0) {
        fprintf(stderr, "ckptd add-run: %s\n", e.msg);
        return EXIT_USAGE;
    }
    return 0;
}

/* One run of add-run: NAME and --source from argv, or name and source
 * given (a source with a range); then its family and its policy. */
static int add_run_one(struct daemon_config *cfg, int argc, char **argv, const char *name, const char *source)
{
    struct err e;
    struct plan p;
    struct registry reg;
    struct db *db = NULL;
    char *options = NULL;
    struct queue_item items[PLAN_MAX_ITEMS];
    memset(&reg, 0, sizeof reg);
    plan_init(&p);
    int status = add_run_args(&p, argc, argv, name, source);
    if (status == 0)
        status = add_run_plan(cfg, &p, &reg);
    if (status != 0)
        goto out;
    status = EXIT_FAIL;
    if (!(options = plan_options_json(&p)))
        goto out;
    if (strlen(options) >= CLAIM_OPTIONS_MAX) { /* a worker's claim carries them */
        fprintf(stderr, "ckptd add-run: the run's options take %zu bytes, more than %d\n", strlen(options),
                CLAIM_OPTIONS_MAX - 1);
        status = EXIT_USAGE;
        goto out;
    }
    if (!(db = open_db(cfg)))
        goto out;
    if (migrate_check(db, &e) < 0 || registry_sync(&reg, db, &e) < 0) {
        log_err("database not ready", &e);
        goto out;
    }
    for (int i = 0; i < p.nitems; i++)
        items[i] = (struct queue_item){p.items[i].name, p.items[i].version};
    long nc = 0, nj = 0;
    if (queue_add_run(db, p.name, p.source, p.schedule, p.steps, p.nsteps, items, p.nitems, options,
                      p.max_attempts, &nc, &nj, &e) < 0) {
        log_err("cannot add run", &e);
        goto out;
    }
    printf("run %s: %d steps, %d items; added %ld checkpoints and %ld jobs\n", p.name, p.nsteps, p.nitems,
           nc, nj);
    int nf = 0;
    if (p.family && family_add(db, p.family, &p.name, 1, &nf, &e) < 0) {
        log_err("cannot add the run to its family", &e);
        goto out;
    }
    if (p.family)
        printf("family %s: %s %s\n", p.family, p.name, nf ? "added" : "already a member");
    /* the claim order: a new run's jobs follow its policy; re-adding
     * without --policy keeps the run's */
    if (p.policy || nj > 0) {
        const char *pn[1] = {p.name};
        PGresult *pr = p.policy ? NULL : db_exec(db, "SELECT policy FROM runs WHERE name = $1", 1, pn, &e);
        const char *pol = p.policy ? p.policy : pr && PQntuples(pr) == 1 ? PQgetvalue(pr, 0, 0) : "order";
        int prc = policy_apply(db, p.name, pol, &e);
        PQclear(pr);
        if (prc < 0) {
            log_err("cannot set the run's policy", &e);
            goto out;
        }
        if (p.policy)
            printf("policy %s\n", p.policy);
    }
    status = 0;
out:
    free(options);
    registry_free(&reg);
    plan_free(&p);
    db_free(db);
    return status;
}

/* add-run: one run, or with a source holding a range every run of it,
 * named from the source and added to --family.  The arguments are
 * checked before any run is added; a later failure leaves the runs added
 * so far (the same command again adds the rest: re-adding changes
 * nothing). */
static int cmd_add_run(struct daemon_config *cfg, int argc, char **argv)
{
    struct err e;
    struct plan p;
    plan_init(&p);
    int status = add_run_args(&p, argc, argv, NULL, NULL);
    int n = status == 0 ? plan_source_runs(&p, &e) : 0;
    if (status != 0 || n == 0) {
        plan_free(&p);
        return status != 0 ? status : add_run_one(cfg, argc, argv, NULL, NULL);
    }
    struct runset rs;
    n = runset_expand(p.source, &rs, &e);
    plan_free(&p);
    for (int k = 0; k < n && status == 0; k++) {
        status = add_run_one(cfg, argc, argv, rs.name[k], rs.source[k]);
        if (status != 0)
            fprintf(stderr, "ckptd add-run: stopped at %s (%d of %d runs added)\n", rs.name[k], k, n);
    }
    runset_free(&rs);
    return n < 0 ? EXIT_USAGE : status;
}

static int cmd_add_family(struct daemon_config *cfg, int argc, char **argv)
{
    static const struct option none[] = {{NULL, 0, NULL, 0}};
    const char **words = calloc((size_t)argc + 1, sizeof *words);
    int nwords = 0;
    if (!words)
        return EXIT_FAIL;
    struct args c;
    args_start(&c, argc, argv, "", none);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k != ARGS_WORD) {
            fprintf(stderr, "ckptd add-family: unexpected argument '%s'\n%s", c.word, usage);
            free(words);
            return EXIT_USAGE;
        }
        words[nwords++] = c.arg;
    }
    if (nwords < 2) {
        fprintf(stderr, "ckptd add-family: need NAME and at least one RUN\n%s", usage);
        free(words);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db) {
        free(words);
        return EXIT_FAIL;
    }
    int added = 0, rc = migrate_check(db, &e);
    if (rc == 0)
        rc = family_add(db, words[0], words + 1, nwords - 1, &added, &e);
    if (rc == ERR_NOTFOUND || rc == ERR_INVALID)
        fprintf(stderr, "ckptd add-family: %s\n", err_str(&e));
    else if (rc < 0)
        log_err("cannot add the family", &e);
    else
        printf("family %s: %d run%s added, %d already members\n", words[0], added, added == 1 ? "" : "s",
               nwords - 1 - added);
    db_free(db);
    free(words);
    return rc == ERR_INVALID ? EXIT_USAGE : rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_serve(struct daemon_config *cfg, const char *config_path, int argc, char **argv)
{
    int until_idle = 0;
    enum { O_WORKERS = 256, O_UNTIL_IDLE, O_NODE, O_METRICS, O_METRICS_ALLOW_REMOTE };
    static const struct option opts[] = {
        {"workers", required_argument, NULL, O_WORKERS},
        {"until-idle", no_argument, NULL, O_UNTIL_IDLE},
        {"node", required_argument, NULL, O_NODE},
        {"metrics", required_argument, NULL, O_METRICS},
        {"metrics-allow-remote", no_argument, NULL, O_METRICS_ALLOW_REMOTE},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_WORKERS)
            cfg->workers = atoi(c.arg);
        else if (k == O_UNTIL_IDLE)
            until_idle = 1;
        else if (k == O_NODE)
            snprintf(cfg->node, sizeof cfg->node, "%s", c.arg);
        else if (k == O_METRICS)
            snprintf(cfg->metrics_listen, sizeof cfg->metrics_listen, "%s", c.arg);
        else if (k == O_METRICS_ALLOW_REMOTE)
            cfg->metrics_allow_remote = 1;
        else {
            fprintf(stderr, "ckptd serve: unexpected argument '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
    }
    struct err e;
    if (daemon_config_check(cfg, &e) < 0) {
        log_err("bad settings", &e);
        return EXIT_USAGE;
    }
    struct serve_opts o = {cfg, config_path, until_idle};
    return serve_run(&o) == 0 ? 0 : EXIT_FAIL;
}

static int cmd_status(struct daemon_config *cfg, int argc, char **argv)
{
    const char *run = NULL;
    if (only_words(argc, argv, &run, 0, 1) < 0) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = status_print(db, run, stdout, &e);
    if (rc < 0)
        log_err("status failed", &e);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

/* plan's command line. */
struct plan_args {
    const char *run, *model, *items_arg, *schedule, *eval;
    int nodes, workers, json, steps;
    double gflops;
    long long seqs;
    struct cost_run set;
};

/* plan's arguments into a; EXIT_USAGE after saying what is wrong. */
static int plan_args(struct plan_args *a, int argc, char **argv)
{
    enum { O_JSON = 256, O_MODEL_CONFIG, O_ITEMS, O_SCHEDULE, O_EVAL_TOKENS, O_STEPS, O_EVAL_SEQS,
           O_CTX, O_SAE_SITES, O_SWEEP_EVERY, O_NODES, O_WORKERS, O_GFLOPS };
    static const struct option opts[] = {
        {"json", no_argument, NULL, O_JSON},
        {"model-config", required_argument, NULL, O_MODEL_CONFIG},
        {"items", required_argument, NULL, O_ITEMS},
        {"schedule", required_argument, NULL, O_SCHEDULE},
        {"eval-tokens", required_argument, NULL, O_EVAL_TOKENS},
        {"steps", required_argument, NULL, O_STEPS},
        {"eval-seqs", required_argument, NULL, O_EVAL_SEQS},
        {"ctx", required_argument, NULL, O_CTX},
        {"sae-sites", required_argument, NULL, O_SAE_SITES},
        {"sweep-every", required_argument, NULL, O_SWEEP_EVERY},
        {"nodes", required_argument, NULL, O_NODES},
        {"workers", required_argument, NULL, O_WORKERS},
        {"gflops", required_argument, NULL, O_GFLOPS},
        {NULL, 0, NULL, 0},
    };
    *a = (struct plan_args){.schedule = "pythia", .nodes = 1, .workers = 1,
                            .gflops = cost_reference_gflops(), .set = COST_RUN_DEFAULT};
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_JSON)
            a->json = 1;
        else if (k == ARGS_WORD && !a->run)
            a->run = c.arg;
        else if (k == O_MODEL_CONFIG)
            a->model = c.arg;
        else if (k == O_ITEMS)
            a->items_arg = c.arg;
        else if (k == O_SCHEDULE)
            a->schedule = c.arg;
        else if (k == O_EVAL_TOKENS)
            a->eval = c.arg;
        else if (k == O_STEPS)
            a->steps = atoi(c.arg);
        else if (k == O_EVAL_SEQS)
            a->seqs = atoll(c.arg);
        else if (k == O_CTX)
            a->set.ctx = atoi(c.arg);
        else if (k == O_SAE_SITES)
            a->set.sae_sites = atoi(c.arg);
        else if (k == O_SWEEP_EVERY)
            a->set.sweep_every = atoi(c.arg);
        else if (k == O_NODES)
            a->nodes = atoi(c.arg);
        else if (k == O_WORKERS)
            a->workers = atoi(c.arg);
        else if (k == O_GFLOPS)
            a->gflops = atof(c.arg);
        else {
            fprintf(stderr, "ckptd plan: unexpected argument '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
    }
    if ((!a->run && !a->model) || a->nodes < 1 || a->workers < 1 || !(a->gflops > 0) ||
        a->steps < 0 || a->set.ctx < 1 || a->set.sae_sites < 1 || a->set.sweep_every < 0 ||
        a->seqs < 0) {
        fprintf(stderr, "ckptd plan: need RUN or --model-config; --nodes, --workers, --gflops, "
                        "--ctx and --sae-sites are positive\n%s", usage);
        return EXIT_USAGE;
    }
    return 0;
}

/* A run's forecast from the database into f, its shape set from config
 * first when given; 0 or the exit status after saying what is wrong. */
static int plan_of_run(struct db *db, const struct plan_args *a, const char *config,
                       struct forecast *f)
{
    struct err e;
    if (forecast_load(db, a->run, f, &e) < 0 ||
        (config && (forecast_set_model(db, f->run_id, config, &e) < 0 ||
                    forecast_load(db, a->run, f, &e) < 0))) {
        log_err("cannot plan the run", &e);
        return EXIT_FAIL;
    }
    if (!f->has_shape) {
        fprintf(stderr, "ckptd plan: the shape of %s's model is not known yet: give "
                        "--model-config FILE (a checkpoint's config.json), or let a node "
                        "stage one of its checkpoints\n", a->run);
        return EXIT_FAIL;
    }
    return 0;
}

/* A forecast before a run exists: the items named (or the default battery,
 * as add-run picks it, from the worker), the schedule's checkpoints and the
 * eval set's size; 0 or the exit status after saying what is wrong. */
static int plan_offline(struct daemon_config *cfg, const struct plan_args *a, const char *config,
                        struct forecast *f)
{
    struct err e;
    struct plan p;
    struct registry reg;
    struct cost_run set = a->set;
    const char *names[FORECAST_ITEMS];
    int n = 0, steps = a->steps, status = EXIT_USAGE;
    char *items_copy = NULL;
    memset(&reg, 0, sizeof reg);
    plan_init(&p);
    if (a->items_arg) {
        if (!(items_copy = strdup(a->items_arg))) {
            status = EXIT_FAIL;
            goto out;
        }
        char *save = NULL;
        for (char *it = strtok_r(items_copy, ",", &save); it && n < FORECAST_ITEMS;
             it = strtok_r(NULL, ",", &save))
            names[n++] = it;
    } else {
        char worker[1024];
        supervise_worker_path(cfg->worker_path, worker, sizeof worker);
        if (registry_from_worker(&reg, worker, &e) < 0) {
            log_err("cannot read the battery from the worker (name --items)", &e);
            status = EXIT_FAIL;
            goto out;
        }
        if (plan_choose_items(&p, &reg, &e) < 0) {
            fprintf(stderr, "ckptd plan: %s\n", e.msg);
            goto out;
        }
        for (int i = 0; i < p.nitems && n < FORECAST_ITEMS; i++)
            names[n++] = p.items[i].name;
    }
    if (!steps) {
        long long *st = NULL;
        if (schedule_parse(a->schedule, &st, &steps, &e) < 0) {
            log_err("bad schedule", &e);
            goto out;
        }
        free(st);
    }
    if (a->eval) { /* the worker's ctx default is the run's here */
        json_t *opt = json_pack("{s:s, s:i, s:I}", "eval_tokens", a->eval, "ctx", set.ctx,
                                "eval_seqs", (json_int_t)a->seqs);
        char *text = opt ? json_dumps(opt, JSON_COMPACT) : NULL;
        struct cost_run from;
        int rc = text ? forecast_run_settings(text, &from, &e)
                      : err_set(&e, ERR_NOMEM, NULL, "out of memory");
        free(text);
        json_decref(opt);
        if (rc < 0) {
            log_err("cannot read the eval tokens", &e);
            goto out;
        }
        set.eval_seqs = from.eval_seqs;
    } else if (a->seqs) {
        set.eval_seqs = (int)a->seqs;
    }
    if (forecast_offline(f, "(plan)", config, names, n, &set, steps, &e) < 0) {
        log_err("cannot plan", &e);
        goto out;
    }
    status = 0;
out:
    free(items_copy);
    registry_free(&reg);
    plan_free(&p);
    return status;
}

static int cmd_plan(struct daemon_config *cfg, int argc, char **argv)
{
    struct plan_args a;
    int status = plan_args(&a, argc, argv);
    if (status != 0)
        return status;
    struct err e;
    struct forecast f;
    struct db *db = NULL;
    char *config = a.model ? forecast_read_file(a.model, &e) : NULL;
    if (a.model && !config) {
        log_err("cannot read the model config", &e);
        return EXIT_USAGE;
    }
    if (a.run)
        status = (db = open_db(cfg)) ? plan_of_run(db, &a, config, &f) : EXIT_FAIL;
    else
        status = plan_offline(cfg, &a, config, &f);
    if (status == 0)
        forecast_print(&f, a.nodes, a.workers, a.gflops, a.json, stdout);
    free(config);
    db_free(db);
    return status;
}

static int cmd_retry(struct daemon_config *cfg, int argc, char **argv)
{
    const char *what = NULL;
    if (only_words(argc, argv, &what, 1, 1) < 0) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int n = queue_retry(db, what, &e);
    if (n < 0)
        log_err("retry failed", &e);
    else
        printf("%d job%s re-queued\n", n, n == 1 ? "" : "s");
    db_free(db);
    return n < 0 ? EXIT_FAIL : 0;
}

/* Put a cached file at dest: a hard link, else a copy. */
static int place_copy(const char *src, const char *dest, struct err *e)
{
    char real[PATH_MAX];
    if (!realpath(src, real)) /* the snapshot's symlink: link its blob */
        return err_set(e, ERR_IO, src, "not in the cache");
    if (atomic_file_link(real, dest, 0, NULL) == 0)
        return 0;
    struct atomic_file af;
    FILE *in = fopen(real, "rb");
    if (!in)
        return err_set(e, ERR_IO, real, "cannot open: %s", strerror(errno));
    int rc = atomic_file_open(&af, dest, e);
    char buf[1 << 16];
    size_t n;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, af.f) != n)
            rc = err_set(e, ERR_IO, dest, "cannot copy from the cache: %s", strerror(errno));
    if (rc == 0 && ferror(in))
        rc = err_set(e, ERR_IO, real, "cannot read: %s", strerror(errno));
    fclose(in);
    if (rc == 0)
        return atomic_file_commit(&af, e);
    atomic_file_abort(&af);
    return rc;
}

/* fetch's arguments; EXIT_USAGE after saying what is wrong. */
static int fetch_args(int argc, char **argv, const char **source, long long *step, const char **to)
{
    enum { O_STEP = 256, O_TO };
    static const struct option opts[] = {
        {"step", required_argument, NULL, O_STEP},
        {"to", required_argument, NULL, O_TO},
        {NULL, 0, NULL, 0},
    };
    struct args cl;
    *source = *to = NULL;
    *step = -1;
    args_start(&cl, argc, argv, "", opts);
    for (int k; (k = args_next(&cl)) != ARGS_END;) {
        if (k == O_STEP) {
            char *end;
            *step = strtoll(cl.arg, &end, 10);
            if (*end || end == cl.arg || *step < 0)
                *step = -2;
        } else if (k == O_TO)
            *to = cl.arg;
        else if (k == ARGS_WORD && !*source)
            *source = cl.arg;
        else {
            fprintf(stderr, "ckptd fetch: unexpected argument '%s'\n%s", cl.word, usage);
            return EXIT_USAGE;
        }
    }
    if (!*source || *step < 0) {
        fprintf(stderr, "ckptd fetch: need SOURCE and --step N (a step number)\n%s", usage);
        return EXIT_USAGE;
    }
    return 0;
}

/* Run the transfers until the stage is done (1) or failed (<0), logging
 * the progress every 5 s. */
static int fetch_wait(struct fetcher *f, struct stage *st, struct err *e)
{
    int rc;
    double last_log = mono_now();
    while ((rc = stage_poll(st, e)) == 0) {
        fetcher_run(f, NULL, 0, 500);
        if (mono_now() - last_log >= 5) {
            long long done, total;
            double rate;
            stage_progress(st, &done, &total, &rate);
            log_info("download progress", "bytes=%lld total=%lld bytes_per_s=%.0f eta_s=%.0f", done, total, rate,
                     rate > 0 && total >= 0 ? (double)(total - done) / rate : -1.0);
            last_log = mono_now();
        }
    }
    return rc;
}

/* The staged file `name` at DIR/name, its folders made. */
static int fetch_place(const struct stage *st, const char *dir, const char *name, struct err *e)
{
    char src[4200], dest[4200];
    snprintf(src, sizeof src, "%s/%s", stage_dir(st), name);
    snprintf(dest, sizeof dest, "%s/%s", dir, name);
    char *slash = strrchr(dest, '/');
    *slash = '\0';
    int rc = path_mkdir_p(dest, e);
    *slash = '/';
    return rc < 0 ? rc : place_copy(src, dest, e);
}

static int cmd_fetch(struct daemon_config *cfg, int argc, char **argv)
{
    const char *source, *to;
    long long step;
    int status = fetch_args(argc, argv, &source, &step, &to), rc;
    if (status != 0)
        return status;
    struct err e;
    err_clear(&e);
    if (source_check(source, &e) < 0) {
        log_err("bad source", &e);
        return EXIT_USAGE;
    }
    struct fetch_opts fo;
    daemon_config_fetch_opts(cfg, &fo);
    struct fetcher *f = NULL;
    struct cache *c = NULL;
    struct stage *st = NULL;
    status = EXIT_FAIL;
    if (!(f = fetcher_new(&fo, &e)) ||
        !(c = cache_open(cfg->cache_dir, (long long)(cfg->cache_budget_gb * (1LL << 30)), &e)) ||
        !(st = stage_new(f, c, source, step, daemon_offline(), &e))) {
        log_err("fetch failed", &e);
        goto out;
    }
    if (!cfg->hf_cache_write)
        stage_set_hf_cache(st, NULL);
    double t0 = mono_now();
    rc = fetch_wait(f, st, &e);
    double secs = mono_now() - t0;
    if (rc < 0 || (to && path_mkdir_p(to, &e) < 0)) {
        fprintf(stderr, "ckptd fetch: %s\n", err_str(&e));
        goto out;
    }
    const struct hub_files *fs = stage_files(st);
    long long total = 0, down = stage_downloaded(st);
    for (int i = 0; i < fs->n; i++) {
        printf("%-40s %14lld  %s\n", fs->f[i].name, fs->f[i].size, fs->f[i].sha256);
        total += fs->f[i].size;
        if (to && fetch_place(st, to, fs->f[i].name, &e) < 0) {
            fprintf(stderr, "ckptd fetch: %s\n", err_str(&e));
            goto out;
        }
    }
    printf("%d files, %lld bytes in %s; downloaded %lld bytes in %.3f s (%.1f MB/s)\n", fs->n, total,
           to ? to : stage_dir(st), down, secs, secs > 0 ? down / secs / 1e6 : 0.0);
    status = 0;
out:
    stage_free(st);
    cache_close(c);
    fetcher_free(f);
    return status;
}

/* report --family NAME [--out DIR] */
static int report_family(struct daemon_config *cfg, const char *family, const char *out)
{
    char dir[PATH_MAX];
    if (out)
        snprintf(dir, sizeof dir, "%s", out);
    else
        report_family_default_dir(dir, sizeof dir, family);
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    struct report_stats st;
    double t0 = mono_now();
    int rc = migrate_check(db, &e);
    if (rc == 0)
        rc = report_family_write(db, family, dir, &st, &e);
    if (rc == ERR_NOTFOUND)
        fprintf(stderr, "ckptd report: %s\n", e.msg);
    else if (rc < 0)
        log_err("report failed", &e);
    else
        printf("wrote %s/index.html: %lld bytes, %d band charts (%d points), %d member transitions in %.2f s\n", dir,
               st.bytes, st.line_charts, st.points, st.transitions, mono_now() - t0);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_report(struct daemon_config *cfg, int argc, char **argv)
{
    const char *run = NULL, *out = NULL, *family = NULL;
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"family", required_argument, NULL, 'f'},
                                         {NULL, 0, NULL, 0}};
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == 'o')
            out = c.arg;
        else if (k == 'f' && !family && !run)
            family = c.arg;
        else if (k == ARGS_WORD && !run && !family)
            run = c.arg;
        else {
            fprintf(stderr, "ckptd report: unexpected argument '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
    }
    if (!run == !family || (out && !out[0])) {
        fprintf(stderr, "ckptd report: need RUN or --family NAME (and a directory after --out)\n%s", usage);
        return EXIT_USAGE;
    }
    if (family)
        return report_family(cfg, family, out);
    char dir[PATH_MAX];
    if (out)
        snprintf(dir, sizeof dir, "%s", out);
    else
        report_default_dir(dir, sizeof dir, run);
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = migrate_check(db, &e);
    struct report_stats st;
    double t0 = mono_now();
    if (rc == 0)
        rc = report_write(db, run, dir, &st, &e);
    if (rc == ERR_NOTFOUND)
        fprintf(stderr, "ckptd report: %s\n", e.msg);
    else if (rc < 0)
        log_err("report failed", &e);
    else
        printf("wrote %s/index.html: %lld bytes, %d line charts (%d points), %d profiles, %d heatmaps "
               "(%ld cells), %d lineages, %d transitions%s in %.2f s\n", dir, st.bytes, st.line_charts, st.points,
               st.profiles, st.heatmaps, st.cells, st.lineages, st.transitions, st.empty ? "; no data yet" : "",
               mono_now() - t0);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_transitions(struct daemon_config *cfg, int argc, char **argv)
{
    struct detect_list_opts o = {NULL, 0, 0, NULL, NULL};
    const char *run = NULL, *family = NULL;
    enum { O_METRIC = 256, O_MIN_SCORE, O_JSON, O_METHOD, O_KIND, O_FAMILY };
    static const struct option opts[] = {
        {"metric", required_argument, NULL, O_METRIC},
        {"min-score", required_argument, NULL, O_MIN_SCORE},
        {"json", no_argument, NULL, O_JSON},
        {"method", required_argument, NULL, O_METHOD},
        {"kind", required_argument, NULL, O_KIND},
        {"family", required_argument, NULL, O_FAMILY},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        char *end = NULL;
        if (k == O_METRIC)
            o.metric = c.arg;
        else if (k == O_MIN_SCORE && (o.min_score = strtod(c.arg, &end), end != c.arg && !*end))
            ;
        else if (k == O_JSON)
            o.json = 1;
        else if (k == O_METHOD)
            o.method = c.arg;
        else if (k == O_KIND && (strcmp(c.arg, "transition") == 0 || strcmp(c.arg, "spike") == 0))
            o.kind = c.arg;
        else if (k == O_FAMILY && !family)
            family = c.arg;
        else if (k == ARGS_WORD && !run)
            run = c.arg;
        else {
            fprintf(stderr, "ckptd transitions: unexpected argument '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
    }
    if (!run == !family) {
        fprintf(stderr, "ckptd transitions: need RUN or --family NAME\n%s", usage);
        return EXIT_USAGE;
    }
    if (family && (o.method || o.kind)) { /* the family's rows are the current method's transitions */
        fprintf(stderr, "ckptd transitions: --method and --kind are for a run, not --family\n%s", usage);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = family ? family_list(db, family, &o, stdout, &e) : detect_list(db, run, &o, stdout, &e);
    if (rc < 0)
        log_err("cannot list transitions", &e);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

/* detect --family NAME: every member's transitions again, then the family's. */
static int detect_family(struct db *db, const char *family)
{
    struct err e;
    long long *ids = NULL;
    int n = 0, rc = migrate_check(db, &e);
    if (rc == 0)
        rc = family_member_ids(db, family, &ids, &n, &e);
    for (int i = 0; rc == 0 && i < n; i++) {
        struct detect_stats st;
        rc = detect_run(db, ids[i], NULL, NULL, 0, &st, &e);
    }
    struct family_stats fs;
    if (rc == 0)
        rc = family_analyse_named(db, family, &fs, &e);
    free(ids);
    if (rc == ERR_NOTFOUND)
        fprintf(stderr, "ckptd detect: %s\n", e.msg);
    else if (rc < 0)
        log_err("family analysis failed", &e);
    else
        printf("family %s: %d members, %d clusters of transitions, %d the family's, %d outliers (%.3f s)\n", family,
               fs.members, fs.clusters, fs.family_transitions, fs.outliers, fs.seconds);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_detect(struct daemon_config *cfg, int argc, char **argv)
{
    const char *run = NULL, *family = NULL;
    static const struct option opts[] = {{"family", required_argument, NULL, 'f'}, {NULL, 0, NULL, 0}};
    struct args c;
    int bad = 0;
    args_start(&c, argc, argv, "", opts);
    for (int k; !bad && (k = args_next(&c)) != ARGS_END;) {
        if (k == 'f' && !family)
            family = c.arg;
        else if (k == ARGS_WORD && !run)
            run = c.arg;
        else
            bad = 1;
    }
    if (bad || !run == !family) {
        fprintf(stderr, "ckptd detect: need RUN or --family NAME\n%s", usage);
        return EXIT_USAGE;
    }
    if (family) {
        struct db *db = open_db(cfg);
        if (!db)
            return EXIT_FAIL;
        int rc = detect_family(db, family);
        db_free(db);
        return rc;
    }
    struct err e;
    struct detect_stats st;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = migrate_check(db, &e);
    if (rc == 0)
        rc = detect_run_named(db, run, &st, &e);
    if (rc < 0)
        log_err("transition detection failed", &e);
    else
        printf("run %s: %ld series, %ld points, %ld transitions, %ld spikes (%.3f s)\n", run, st.series,
               st.points, st.transitions, st.spikes, st.read_s + st.write_s);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_integrity(struct daemon_config *cfg, int argc, char **argv)
{
    const char *run = NULL;
    int json = 0;
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == 'j')
            json = 1;
        else if (k == ARGS_WORD && !run)
            run = c.arg;
        else {
            fprintf(stderr, "ckptd integrity: unexpected argument '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
    }
    if (!run) {
        fprintf(stderr, "ckptd integrity: need RUN\n%s", usage);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = migrate_check(db, &e);
    if (rc == 0)
        rc = integrity_print(db, run, json, stdout, &e);
    if (rc == ERR_NOTFOUND)
        fprintf(stderr, "ckptd integrity: %s\n", e.msg);
    else if (rc < 0)
        log_err("integrity check failed", &e);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

int main(int argc, char **argv)
{
    struct daemon_config cfg;
    daemon_config_defaults(&cfg);
    log_set_component("ckptd");
    const char *config_path = NULL, *dbarg = NULL;
    enum { O_VERSION = 256, O_CONFIG, O_DB, O_LOG_LEVEL };
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, O_VERSION},
        {"config", required_argument, NULL, O_CONFIG},
        {"db", required_argument, NULL, O_DB},
        {"log-level", required_argument, NULL, O_LOG_LEVEL},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    int i = 0; /* the command's index in argv */
    args_start(&c, argc, argv, "h", opts);
    for (int k; !i && (k = args_next(&c)) != ARGS_END;) {
        if (k == 'h') {
            fputs(usage, stdout);
            return 0;
        } else if (k == O_VERSION) {
            printf("ckptd %s\n", CKPTD_VERSION);
            return 0;
        } else if (k == O_CONFIG) {
            config_path = c.arg;
        } else if (k == O_DB) {
            dbarg = c.arg;
        } else if (k == O_LOG_LEVEL) {
            int l = log_level_parse(c.arg);
            if (l < 0) {
                fprintf(stderr, "ckptd: unknown log level '%s'\n", c.arg);
                return EXIT_USAGE;
            }
            log_set_level((enum log_level)l);
        } else if (k == ARGS_WORD) {
            i = args_index(&c) - 1;
        } else {
            fprintf(stderr, "ckptd: unknown option '%s'\n%s", c.word, usage);
            return EXIT_USAGE;
        }
    }
    if (!i) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    if (config_path && daemon_config_load(&cfg, config_path, &e) < 0) {
        log_err("bad config", &e);
        return EXIT_USAGE;
    }
    if (dbarg)
        snprintf(cfg.database, sizeof cfg.database, "%s", dbarg);
    const char *cmd = argv[i];
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(&cfg);
    if (strcmp(cmd, "add-run") == 0)
        return cmd_add_run(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "add-family") == 0)
        return cmd_add_family(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(&cfg, config_path, sub_argc, sub_argv);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "plan") == 0)
        return cmd_plan(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "retry") == 0)
        return cmd_retry(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "fetch") == 0)
        return cmd_fetch(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "report") == 0)
        return cmd_report(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "transitions") == 0)
        return cmd_transitions(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "detect") == 0)
        return cmd_detect(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "integrity") == 0)
        return cmd_integrity(&cfg, sub_argc, sub_argv);
    if (strcmp(cmd, "export") == 0)
        return export_main(cfg.database, cfg.db_statement_timeout_s, cfg.db_idle_in_transaction_timeout_s,
                           sub_argc, sub_argv);
    fprintf(stderr, "ckptd: unknown command '%s'\n%s", cmd, usage);
    return EXIT_USAGE;
}
