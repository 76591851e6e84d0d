/*
 * ckptd - the scheduler daemon: runs, checkpoints, jobs, workers, results.
 * See README.md for the commands and daemon/README.md for the design.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
#include "daemon/plan/evalset.h"
#include "daemon/plan/registry.h"
#include "daemon/plan/runset.h"
#include "daemon/plan/sae_opts.h"
#include "daemon/plan/source.h"
#include "daemon/read/family_report.h"
#include "daemon/read/report.h"
#include "daemon/read/status.h"
#include "daemon/work/policy.h"
#include "daemon/work/queue.h"
#include "daemon/work/supervise.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define ADD_RUN_MAX_PROBES 16 /* --probe files of one run (serve's argv has room for them) */
#define ADD_RUN_MAX_SAE_SITES 16 /* --sae-site hooks of one run (likewise) */
#define ADD_RUN_MAX_SAE_DICTS 16 /* --sae dictionaries (the worker's SAE_FIXED_MAX) */

static const char usage[] =
    "usage: ckptd [--config FILE] [--db CONNINFO] [--log-level LEVEL] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  migrate                      create or upgrade the database schema\n"
    "  add-run NAME --source URL --schedule pythia|refs|LIST [--items ITEM,...]\n"
    "          [--eval-tokens FILE | --eval-text FILE [--tokenizer FILE]]\n"
    "          [--ctx N] [--eval-seqs N] [--probe FILE]...\n"
    "          [--seed N] [--max-attempts N] [--sae-warm-start] [--sae-site HOOK]...\n"
    "          [--sae DIR]... [--model-name NAME] [--family NAME] [--policy order|adaptive]\n"
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
    "  retry RUN|JOB_ID             re-queue dead jobs of a run, or one job\n"
    "  fetch SOURCE --step N [--to DIR]\n"
    "                               fetch one checkpoint into the cache (and DIR)\n"
    "  report RUN [--out DIR]       write DIR/index.html (default ./report-RUN): charts of the run\n"
    "  report --family NAME [--out DIR]\n"
    "                               the family's bands and every member's transitions\n"
    "  transitions RUN [--metric NAME] [--min-score X] [--json]\n"
    "                               a run's transitions by peak step, grouped\n"
    "  transitions --family NAME [--metric NAME] [--json]\n"
    "                               the family's transitions (found in how many members,\n"
    "                               their peaks' spread) and its outlier members\n"
    "  detect RUN | --family NAME   find the transitions of every series of a run (of\n"
    "                               every member) again; analyse the family\n"
    "  integrity RUN [--json]       judge a run's checkpoints against its trajectory again;\n"
    "                               print each one's distances and verdict\n"
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

/* Is name an SAE site's hook, blocks.L.hook_{resid_pre,attn_out,resid_mid,
 * mlp_out,resid_post}?  Its layer into *layer.  (The worker checks the rest
 * against the model: the layer's range, hook_resid_mid's existence.) */
static int sae_site_ok(const char *name, long *layer)
{
    static const char *const kinds[] = {"hook_resid_pre", "hook_attn_out", "hook_resid_mid",
                                        "hook_mlp_out", "hook_resid_post"};
    if (strncmp(name, "blocks.", 7) != 0 || name[7] < '0' || name[7] > '9')
        return 0;
    char *end = NULL;
    errno = 0;
    *layer = strtol(name + 7, &end, 10);
    if (errno || *layer > 32767 || *end != '.')
        return 0;
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++)
        if (strcmp(end + 1, kinds[k]) == 0)
            return 1;
    return 0;
}

static int cmd_add_run(struct daemon_config *cfg, int argc, char **argv);

/* add-run with a source holding a range: every run of it, named from the
 * source, added to the family.  The names are checked before any is
 * added; a later failure leaves the runs added so far (re-running the
 * same command adds the rest: re-adding changes nothing). */
static int add_run_range(struct daemon_config *cfg, int argc, char **argv, const char *source,
                         const char *family)
{
    struct err e;
    struct runset rs;
    int n = runset_expand(source, &rs, &e);
    if (n <= 0 || !family) {
        if (n < 0)
            fprintf(stderr, "ckptd add-run: %s\n", err_str(&e));
        else
            fprintf(stderr, "ckptd add-run: need NAME, or a source with a range {A..B} and --family%s\n%s",
                    n > 0 ? " (the runs of a range form a family)" : "", usage);
        runset_free(&rs);
        return EXIT_USAGE;
    }
    char **sub = calloc((size_t)argc + 2, sizeof *sub);
    int status = sub ? 0 : EXIT_FAIL;
    for (int k = 0; k < n && status == 0; k++) {
        int a = 0;
        sub[a++] = argv[0];
        sub[a++] = rs.name[k];
        for (int i = 1; i < argc; i++) {
            sub[a++] = argv[i];
            if (strcmp(argv[i], "--source") == 0 && i + 1 < argc) {
                sub[a++] = rs.source[k];
                i++;
            }
        }
        status = cmd_add_run(cfg, a, sub);
        if (status != 0)
            fprintf(stderr, "ckptd add-run: stopped at %s (%d of %d runs added)\n", rs.name[k], k, n);
    }
    free(sub);
    runset_free(&rs);
    return status;
}

static int cmd_add_family(struct daemon_config *cfg, int argc, char **argv)
{
    if (argc < 3 || argv[1][0] == '-') {
        fprintf(stderr, "ckptd add-family: need NAME and at least one RUN\n%s", usage);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int added = 0, rc = migrate_check(db, &e);
    if (rc == 0)
        rc = family_add(db, argv[1], (const char *const *)argv + 2, argc - 2, &added, &e);
    if (rc == ERR_NOTFOUND || rc == ERR_INVALID)
        fprintf(stderr, "ckptd add-family: %s\n", err_str(&e));
    else if (rc < 0)
        log_err("cannot add the family", &e);
    else
        printf("family %s: %d run%s added, %d already members\n", argv[1], added, added == 1 ? "" : "s",
               argc - 2 - added);
    db_free(db);
    return rc == ERR_INVALID ? EXIT_USAGE : rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_add_run(struct daemon_config *cfg, int argc, char **argv)
{
    const char *name = NULL, *source = NULL, *schedule = NULL, *items_arg = NULL, *eval = NULL;
    const char *eval_text = NULL, *tokenizer = NULL, *family = NULL, *policy = NULL;
    long long seed = -1, ctx = 0, eval_seqs = 0;
    int max_attempts = 5, sae_warm_start = 0;
    json_t *probes = json_array(), *sae_sites = json_array(), *sae_dicts = json_array();
    const char *model_name = NULL;
    long site_layers[ADD_RUN_MAX_SAE_SITES];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--source") == 0 && i + 1 < argc)
            source = argv[++i];
        else if (strcmp(argv[i], "--schedule") == 0 && i + 1 < argc)
            schedule = argv[++i];
        else if (strcmp(argv[i], "--items") == 0 && i + 1 < argc)
            items_arg = argv[++i];
        else if (strcmp(argv[i], "--eval-tokens") == 0 && i + 1 < argc)
            eval = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = atoll(argv[++i]);
        else if (strcmp(argv[i], "--max-attempts") == 0 && i + 1 < argc)
            max_attempts = atoi(argv[++i]);
        else if (strcmp(argv[i], "--eval-text") == 0 && i + 1 < argc)
            eval_text = argv[++i];
        else if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            tokenizer = argv[++i];
        else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc)
            ctx = atoll(argv[++i]);
        else if (strcmp(argv[i], "--eval-seqs") == 0 && i + 1 < argc)
            eval_seqs = atoll(argv[++i]);
        else if (strcmp(argv[i], "--sae-warm-start") == 0)
            sae_warm_start = 1;
        else if (strcmp(argv[i], "--family") == 0 && i + 1 < argc)
            family = argv[++i];
        else if (strcmp(argv[i], "--policy") == 0 && i + 1 < argc)
            policy = argv[++i];
        else if (strcmp(argv[i], "--model-name") == 0 && i + 1 < argc)
            model_name = argv[++i];
        else if (strcmp(argv[i], "--sae") == 0 && i + 1 < argc) {
            char abs[PATH_MAX];
            if (json_array_size(sae_dicts) >= ADD_RUN_MAX_SAE_DICTS || !realpath(argv[++i], abs)) {
                fprintf(stderr, "ckptd add-run: cannot use SAE dictionary '%s'%s\n", argv[i],
                        json_array_size(sae_dicts) >= ADD_RUN_MAX_SAE_DICTS ? ": too many"
                                                                            : ": no such directory");
                json_decref(probes);
                json_decref(sae_sites);
                json_decref(sae_dicts);
                return EXIT_USAGE;
            }
            json_array_append_new(sae_dicts, json_string(abs));
        }
        else if (strcmp(argv[i], "--sae-site") == 0 && i + 1 < argc) {
            const char *site = argv[++i];
            const size_t ns = json_array_size(sae_sites);
            long layer = -1;
            const char *why = ns >= ADD_RUN_MAX_SAE_SITES ? "too many sites"
                              : !sae_site_ok(site, &layer)
                                  ? "a site is blocks.L.hook_resid_pre, hook_attn_out, "
                                    "hook_resid_mid, hook_mlp_out or hook_resid_post"
                                  : NULL;
            for (size_t k = 0; !why && k < ns; k++)
                if (site_layers[k] == layer)
                    why = "one site per layer (rows are keyed by layer)";
            if (why) {
                fprintf(stderr, "ckptd add-run: cannot use SAE site '%s': %s\n", site, why);
                json_decref(probes);
                json_decref(sae_sites);
                json_decref(sae_dicts);
                return EXIT_USAGE;
            }
            site_layers[ns] = layer;
            json_array_append_new(sae_sites, json_string(site));
        } else if (strcmp(argv[i], "--probe") == 0 && i + 1 < argc) {
            char abs[PATH_MAX];
            if (json_array_size(probes) >= ADD_RUN_MAX_PROBES || !realpath(argv[++i], abs)) {
                fprintf(stderr, "ckptd add-run: cannot use probe set '%s'%s\n", argv[i],
                        json_array_size(probes) >= ADD_RUN_MAX_PROBES ? ": too many" : "");
                json_decref(probes);
                json_decref(sae_sites);
                json_decref(sae_dicts);
                return EXIT_USAGE;
            }
            json_array_append_new(probes, json_string(abs));
        } else if (argv[i][0] != '-' && !name)
            name = argv[i];
        else {
            fprintf(stderr, "ckptd add-run: unexpected argument '%s'\n%s", argv[i], usage);
            json_decref(probes);
            json_decref(sae_sites);
            json_decref(sae_dicts);
            return EXIT_USAGE;
        }
    }
    struct runset rs_probe;
    int ranged = source ? runset_expand(source, &rs_probe, NULL) : 0;
    runset_free(&rs_probe);
    if (ranged != 0 && name) {
        fprintf(stderr, "ckptd add-run: a source with a range {A..B} names its runs: leave out NAME\n");
        json_decref(probes);
        json_decref(sae_sites);
        json_decref(sae_dicts);
        return EXIT_USAGE;
    }
    if (source && !name) { /* a range: one run per value, named from the source */
        json_decref(probes);
        json_decref(sae_sites);
        json_decref(sae_dicts);
        return add_run_range(cfg, argc, argv, source, family);
    }
    if (policy && !policy_known(policy)) {
        fprintf(stderr, "ckptd add-run: --policy is order or adaptive, not '%s'\n", policy);
        json_decref(probes);
        json_decref(sae_sites);
        json_decref(sae_dicts);
        return EXIT_USAGE;
    }
    if (!name || !source || !schedule || max_attempts < 1 || ctx < 0 || ctx > INT32_MAX ||
        eval_seqs < 0 || eval_seqs > INT32_MAX || ((ctx || eval_seqs) && !eval && !eval_text) ||
        (eval && eval_text) || (tokenizer && !eval_text)) {
        fprintf(stderr, "ckptd add-run: need NAME, --source and --schedule; --ctx and "
                        "--eval-seqs are positive and need --eval-tokens or --eval-text (not "
                        "both); --tokenizer goes with --eval-text\n%s", usage);
        json_decref(probes);
        json_decref(sae_sites);
        json_decref(sae_dicts);
        return EXIT_USAGE;
    }
    struct err e;
    long long *steps = NULL;
    int nsteps = 0, status = EXIT_FAIL;
    struct registry reg;
    memset(&reg, 0, sizeof reg);
    struct db *db = NULL;
    struct queue_item items[64];
    int nitems = 0;
    char *items_copy = NULL, abs_eval[PATH_MAX];
    json_t *opt = json_object();
    char *opt_text = NULL;
    long long probe_step = 0; /* the schedule's syntax, before asking the hub */
    if (source_check(source, &e) < 0 || schedule_parse_refs(schedule, &probe_step, 1, &steps, &nsteps, &e) < 0) {
        log_err("bad run", &e);
        status = EXIT_USAGE;
        goto out;
    }
    free(steps);
    steps = NULL;
    if (schedule_uses_refs(schedule)) { /* steps from the hub's branches */
        long long *refs = NULL;
        int nrefs = 0;
        struct fetch_opts fo;
        daemon_config_fetch_opts(cfg, &fo);
        struct fetcher *f = fetcher_new(&fo, &e);
        int drc = f ? stage_discover_steps(f, source, daemon_offline(), &refs, &nrefs, &e) : ERR_NET;
        fetcher_free(f);
        if (drc == 0)
            drc = schedule_parse_refs(schedule, refs, nrefs, &steps, &nsteps, &e);
        free(refs);
        if (drc < 0) {
            log_err("cannot discover the run's steps", &e);
            status = drc == ERR_INVALID && !source_is_hf(source) ? EXIT_USAGE : EXIT_FAIL;
            goto out;
        }
    } else if (schedule_parse(schedule, &steps, &nsteps, &e) < 0) {
        log_err("bad run", &e);
        status = EXIT_USAGE;
        goto out;
    }
    char worker[1024];
    supervise_worker_path(cfg->worker_path, worker, sizeof worker);
    if (registry_from_worker(&reg, worker, &e) < 0) {
        log_err("cannot read the battery from the worker", &e);
        goto out;
    }
    if (items_arg) {
        items_copy = strdup(items_arg);
        char *save = NULL;
        for (char *it = strtok_r(items_copy, ",", &save); it && nitems < 64; it = strtok_r(NULL, ",", &save)) {
            int v = registry_item_version(&reg, it);
            if (v < 0) {
                fprintf(stderr, "ckptd add-run: the battery has no item '%s'\n", it);
                status = EXIT_USAGE;
                goto out;
            }
            items[nitems++] = (struct queue_item){it, v};
        }
    } else {
        /* the whole battery but the items for toy runs' tasks, which only a
         * run from `ckpt-worker train` can answer (name them with --items),
         * opt-in items (sae_relu) and items whose dependency the battery lacks */
        for (int i = 0; i < reg.nitems && nitems < 64; i++)
            if (!reg.items[i].needs_task && !reg.items[i].opt_in &&
                (!reg.items[i].depends_on[0] || registry_item(&reg, reg.items[i].depends_on)))
                items[nitems++] = (struct queue_item){reg.items[i].name, reg.items[i].version};
    }
    /* an item reads the artifacts of the item it depends on: both or neither */
    for (int i = 0; i < nitems; i++) {
        const char *dep = registry_item(&reg, items[i].name)->depends_on;
        int found = !dep[0];
        for (int k = 0; k < nitems && !found; k++)
            found = strcmp(items[k].name, dep) == 0;
        if (!found) {
            fprintf(stderr, "ckptd add-run: item '%s' reads what '%s' writes: add '%s' to --items\n",
                    items[i].name, dep, dep);
            status = EXIT_USAGE;
            goto out;
        }
    }
    /* --sae is what sae_fixed reads: alone it adds the (opt-in) item to the
     * default battery; with --items, both or neither */
    int has_fixed = 0;
    for (int i = 0; i < nitems; i++)
        has_fixed |= strcmp(items[i].name, "sae_fixed") == 0;
    if (json_array_size(sae_dicts) && !has_fixed) {
        int v = registry_item_version(&reg, "sae_fixed");
        if (items_arg || v < 0 || nitems >= 64) {
            fprintf(stderr, "ckptd add-run: --sae is read by the item sae_fixed: %s\n",
                    v < 0 ? "the worker has none" : "add it to --items");
            status = EXIT_USAGE;
            goto out;
        }
        items[nitems++] = (struct queue_item){"sae_fixed", v};
        has_fixed = 1;
    }
    if (has_fixed && !json_array_size(sae_dicts)) {
        fprintf(stderr, "ckptd add-run: item sae_fixed follows fixed dictionaries: give --sae DIR\n");
        status = EXIT_USAGE;
        goto out;
    }
    /* each dictionary read now, by the worker's own reader */
    for (size_t k = 0; k < json_array_size(sae_dicts); k++) {
        char hook[128];
        const char *dir = json_string_value(json_array_get(sae_dicts, k));
        if (sae_opts_check_dict(worker, dir, hook, sizeof hook, &e) < 0) {
            log_err("bad SAE dictionary", &e);
            status = e.code == ERR_INVALID ? EXIT_USAGE : EXIT_FAIL;
            goto out;
        }
        log_info("sae dictionary", "index=%zu dir=%s hook=%s", k, log_quote(dir), hook);
    }
    char tok_default[PATH_MAX], tok_path[PATH_MAX];
    if (eval_text) {
        if (!tokenizer) {
            snprintf(tok_default, sizeof tok_default, "%s/20B_tokenizer.json", evalset_data_dir());
            tokenizer = tok_default;
        }
        if (evalset_tokenize(worker, eval_text, tokenizer, evalset_data_dir(), tok_path,
                             sizeof tok_path, &e) < 0) {
            log_err("cannot tokenize the eval text", &e);
            status = e.code == ERR_CHILD ? EXIT_FAIL : EXIT_USAGE;
            goto out;
        }
        eval = tok_path;
    }
    if (eval) {
        if (!realpath(eval, abs_eval)) {
            fprintf(stderr, "ckptd add-run: cannot find eval tokens '%s'\n", eval);
            status = EXIT_USAGE;
            goto out;
        }
        json_object_set_new(opt, "eval_tokens", json_string(abs_eval));
        if (ctx)
            json_object_set_new(opt, "ctx", json_integer(ctx));
        if (eval_seqs)
            json_object_set_new(opt, "eval_seqs", json_integer(eval_seqs));
    }
    if (json_array_size(probes))
        json_object_set(opt, "probes", probes);
    if (seed >= 0)
        json_object_set_new(opt, "seed", json_integer(seed));
    if (sae_warm_start) /* sae jobs wait for the previous checkpoint's and start from it */
        json_object_set_new(opt, "sae_warm_start", json_true());
    if (json_array_size(sae_sites))
        json_object_set(opt, "sae_sites", sae_sites);
    if (json_array_size(sae_dicts))
        json_object_set(opt, "sae_fixed", sae_dicts);
    if (model_name)
        json_object_set_new(opt, "model_name", json_string(model_name));
    opt_text = json_dumps(opt, JSON_SORT_KEYS | JSON_COMPACT);
    if (opt_text && strlen(opt_text) >= CLAIM_OPTIONS_MAX) {
        fprintf(stderr, "ckptd add-run: the run's options take %zu bytes, more than %d\n",
                strlen(opt_text), CLAIM_OPTIONS_MAX - 1);
        status = EXIT_USAGE;
        goto out;
    }
    if (!(db = open_db(cfg)))
        goto out;
    if (migrate_check(db, &e) < 0 || registry_sync(&reg, db, &e) < 0) {
        log_err("database not ready", &e);
        goto out;
    }
    long nc = 0, nj = 0;
    if (queue_add_run(db, name, source, schedule, steps, nsteps, items, nitems, opt_text,
                      max_attempts, &nc, &nj, &e) < 0) {
        log_err("cannot add run", &e);
        goto out;
    }
    printf("run %s: %d steps, %d items; added %ld checkpoints and %ld jobs\n", name, nsteps, nitems, nc, nj);
    int nf = 0;
    if (family && family_add(db, family, (const char *const *)&name, 1, &nf, &e) < 0) {
        log_err("cannot add the run to its family", &e);
        goto out;
    }
    if (family)
        printf("family %s: %s %s\n", family, name, nf ? "added" : "already a member");
    /* the claim order: a new run's jobs follow its policy; re-adding
     * without --policy keeps the run's */
    if (policy || nj > 0) {
        const char *pn[1] = {name};
        PGresult *pr = policy ? NULL : db_exec(db, "SELECT policy FROM runs WHERE name = $1", 1, pn, &e);
        const char *pol = policy ? policy : pr && PQntuples(pr) == 1 ? PQgetvalue(pr, 0, 0) : "order";
        int prc = policy_apply(db, name, pol, &e);
        PQclear(pr);
        if (prc < 0) {
            log_err("cannot set the run's policy", &e);
            goto out;
        }
        if (policy)
            printf("policy %s\n", policy);
    }
    status = 0;
out:
    free(opt_text);
    json_decref(opt);
    json_decref(probes);
    json_decref(sae_sites);
    json_decref(sae_dicts);
    free(items_copy);
    free(steps);
    registry_free(&reg);
    db_free(db);
    return status;
}

static int cmd_serve(struct daemon_config *cfg, const char *config_path, int argc, char **argv)
{
    int until_idle = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc)
            cfg->workers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--until-idle") == 0)
            until_idle = 1;
        else if (strcmp(argv[i], "--node") == 0 && i + 1 < argc)
            snprintf(cfg->node, sizeof cfg->node, "%s", argv[++i]);
        else if (strcmp(argv[i], "--metrics") == 0 && i + 1 < argc)
            snprintf(cfg->metrics_listen, sizeof cfg->metrics_listen, "%s", argv[++i]);
        else if (strcmp(argv[i], "--metrics-allow-remote") == 0)
            cfg->metrics_allow_remote = 1;
        else {
            fprintf(stderr, "ckptd serve: unexpected argument '%s'\n%s", argv[i], usage);
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
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = status_print(db, argc == 2 ? argv[1] : NULL, stdout, &e);
    if (rc < 0)
        log_err("status failed", &e);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_retry(struct daemon_config *cfg, int argc, char **argv)
{
    if (argc != 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int n = queue_retry(db, argv[1], &e);
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
    char tmp[4300], real[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%.4200s.tmp", dest);
    unlink(tmp);
    if (!realpath(src, real)) /* the snapshot's symlink: link its blob */
        return err_set(e, ERR_IO, src, "not in the cache");
    src = real;
    if (link(src, tmp) != 0) {
        FILE *in = fopen(src, "rb"), *out = in ? fopen(tmp, "wb") : NULL;
        char buf[1 << 16];
        size_t n;
        int bad = !in || !out;
        while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0)
            bad = fwrite(buf, 1, n, out) != n;
        bad |= in && ferror(in);
        if (in)
            fclose(in);
        if (out && fclose(out) != 0)
            bad = 1;
        if (bad) {
            unlink(tmp);
            return err_set(e, ERR_IO, dest, "cannot copy from the cache");
        }
    }
    if (rename(tmp, dest) != 0) {
        unlink(tmp);
        return err_set(e, ERR_IO, dest, "cannot place the file");
    }
    return 0;
}

static int cmd_fetch(struct daemon_config *cfg, int argc, char **argv)
{
    const char *source = NULL, *to = NULL;
    long long step = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--step") == 0 && i + 1 < argc) {
            char *end;
            step = strtoll(argv[++i], &end, 10);
            if (*end || end == argv[i] || step < 0)
                step = -2;
        } else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
            to = argv[++i];
        else if (argv[i][0] != '-' && !source)
            source = argv[i];
        else {
            fprintf(stderr, "ckptd fetch: unexpected argument '%s'\n%s", argv[i], usage);
            return EXIT_USAGE;
        }
    }
    if (!source || step < 0) {
        fprintf(stderr, "ckptd fetch: need SOURCE and --step N (a step number)\n%s", usage);
        return EXIT_USAGE;
    }
    struct err e;
    err_clear(&e);
    struct fetch_opts fo;
    daemon_config_fetch_opts(cfg, &fo);
    struct fetcher *f = NULL;
    struct cache *c = NULL;
    struct stage *st = NULL;
    int status = EXIT_FAIL, rc;
    if (source_check(source, &e) < 0) {
        log_err("bad source", &e);
        return EXIT_USAGE;
    }
    if (!(f = fetcher_new(&fo, &e)) ||
        !(c = cache_open(cfg->cache_dir, (long long)(cfg->cache_budget_gb * (1LL << 30)), &e)) ||
        !(st = stage_new(f, c, source, step, daemon_offline(), &e))) {
        log_err("fetch failed", &e);
        goto out;
    }
    double t0 = mono_now(), next_log = t0 + 5;
    while ((rc = stage_poll(st, &e)) == 0) {
        fetcher_run(f, NULL, 0, 500);
        if (mono_now() >= next_log) {
            long long done, total;
            double rate;
            stage_progress(st, &done, &total, &rate);
            log_info("download progress", "bytes=%lld total=%lld bytes_per_s=%.0f eta_s=%.0f", done, total, rate,
                     rate > 0 && total >= 0 ? (double)(total - done) / rate : -1.0);
            next_log = mono_now() + 5;
        }
    }
    double secs = mono_now() - t0;
    if (rc < 0) {
        fprintf(stderr, "ckptd fetch: %s\n", err_str(&e));
        goto out;
    }
    const struct hub_files *fs = stage_files(st);
    long long total = 0, down = stage_downloaded(st);
    if (to && path_mkdir_p(to, &e) < 0) {
        fprintf(stderr, "ckptd fetch: %s\n", err_str(&e));
        goto out;
    }
    for (int i = 0; i < fs->n; i++) {
        printf("%-40s %14lld  %s\n", fs->f[i].name, fs->f[i].size, fs->f[i].sha256);
        total += fs->f[i].size;
        if (to) {
            char src[4200], dest[4200];
            snprintf(src, sizeof src, "%s/%s", stage_dir(st), fs->f[i].name);
            snprintf(dest, sizeof dest, "%s/%s", to, fs->f[i].name);
            char *slash = strrchr(dest, '/');
            *slash = '\0';
            int prc = path_mkdir_p(dest, &e);
            *slash = '/';
            if (prc < 0 || place_copy(src, dest, &e) < 0) {
                fprintf(stderr, "ckptd fetch: %s\n", err_str(&e));
                goto out;
            }
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
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--family") == 0 && i + 1 < argc && !family && !run)
            family = argv[++i];
        else if (argv[i][0] != '-' && !run)
            run = argv[i];
        else {
            fprintf(stderr, "ckptd report: unexpected argument '%s'\n%s", argv[i], usage);
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
    struct detect_list_opts o = {NULL, 0, 0};
    const char *run = NULL, *family = NULL;
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        if (strcmp(argv[i], "--metric") == 0 && i + 1 < argc)
            o.metric = argv[++i];
        else if (strcmp(argv[i], "--min-score") == 0 && i + 1 < argc &&
                 (o.min_score = strtod(argv[i + 1], &end), end != argv[i + 1] && !*end))
            i++;
        else if (strcmp(argv[i], "--json") == 0)
            o.json = 1;
        else if (strcmp(argv[i], "--family") == 0 && i + 1 < argc && !family)
            family = argv[++i];
        else if (argv[i][0] != '-' && !run)
            run = argv[i];
        else {
            fprintf(stderr, "ckptd transitions: unexpected argument '%s'\n%s", argv[i], usage);
            return EXIT_USAGE;
        }
    }
    if (!run == !family) {
        fprintf(stderr, "ckptd transitions: need RUN or --family NAME\n%s", usage);
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
    if (argc == 3 && strcmp(argv[1], "--family") == 0) {
        struct db *db = open_db(cfg);
        if (!db)
            return EXIT_FAIL;
        int rc = detect_family(db, argv[2]);
        db_free(db);
        return rc;
    }
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "ckptd detect: need RUN or --family NAME\n%s", usage);
        return EXIT_USAGE;
    }
    struct err e;
    struct detect_stats st;
    struct db *db = open_db(cfg);
    if (!db)
        return EXIT_FAIL;
    int rc = migrate_check(db, &e);
    if (rc == 0)
        rc = detect_run_named(db, argv[1], &st, &e);
    if (rc < 0)
        log_err("transition detection failed", &e);
    else
        printf("run %s: %ld series, %ld points, %ld transitions (%.3f s)\n", argv[1], st.series, st.points,
               st.transitions, st.read_s + st.write_s);
    db_free(db);
    return rc < 0 ? EXIT_FAIL : 0;
}

static int cmd_integrity(struct daemon_config *cfg, int argc, char **argv)
{
    const char *run = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (argv[i][0] != '-' && !run)
            run = argv[i];
        else {
            fprintf(stderr, "ckptd integrity: unexpected argument '%s'\n%s", argv[i], usage);
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
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("ckptd %s\n", CKPTD_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(argv[i], "--db") == 0 && i + 1 < argc) {
            dbarg = argv[++i];
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            int l = log_level_parse(argv[++i]);
            if (l < 0) {
                fprintf(stderr, "ckptd: unknown log level '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
            log_set_level((enum log_level)l);
        } else {
            fprintf(stderr, "ckptd: unknown option '%s'\n%s", argv[i], usage);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
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
    fprintf(stderr, "ckptd: unknown command '%s'\n%s", cmd, usage);
    return EXIT_USAGE;
}
