/*
 * plan.h - what a run is, checked before anything is written: its source
 * and schedule, the steps the schedule names, the battery items it runs
 * (each with the item it depends on), its SAE sites, probe sets, eval set
 * and seed, and the options JSON every worker of the run is started with.
 *
 * `ckptd add-run` fills a plan from its arguments and resolves it a piece
 * at a time, printing each failure its own way; queue_add_run (work/)
 * then writes what the plan holds.  Steps from a `refs` schedule need the
 * hub's branch list, which fetch/ reads: the caller asks the hub and
 * hands the list in.
 *
 *     struct plan p;
 *     plan_init(&p);
 *     p.name = "pythia-70m"; p.source = "hf://EleutherAI/pythia-70m-deduped"; p.schedule = "pythia";
 *     if (plan_add_sae_site(&p, "blocks.3.hook_resid_post", &e) < 0 ||
 *         plan_check_args(&p, &e) < 0 || plan_check_source(&p, &e) < 0 ||
 *         plan_set_steps(&p, NULL, 0, &e) < 0 || plan_choose_items(&p, &reg, &e) < 0 ||
 *         plan_tokenize_eval(&p, worker, &e) < 0 || plan_find_eval(&p, &e) < 0) ...
 *     char *options = plan_options_json(&p);     // runs.options
 *     ... queue_add_run(db, p.name, p.source, p.schedule, p.steps, p.nsteps, ...) ...
 *     free(options);
 *     plan_free(&p);
 *
 * The SAE site check exists twice, because daemon/ and workers/ share no
 * code but common/: plan_sae_site here, hook_parse + sae_site_check in
 * the worker (which also knows the model: its layer count, whether it has
 * hook_resid_mid).  tests/test_plan.c compares the two on every hook name
 * of the worker and on malformed names: they accept the same names.
 */
#ifndef CKPTD_PLAN_H
#define CKPTD_PLAN_H

#include <limits.h>

#include "common/err.h"
#include "daemon/plan/registry.h"

#define PLAN_MAX_ITEMS 64     /* the items of one run (the jobs one claim can take) */
#define PLAN_MAX_PROBES 16    /* --probe files of one run (a worker's argv has room for them) */
#define PLAN_MAX_SAE_SITES 16 /* --sae-site hooks of one run (likewise) */
#define PLAN_MAX_SAE_DICTS 16 /* --sae dictionaries of one run (the worker's SAE_FIXED_MAX) */
#define PLAN_MAX_PAIRS 16     /* --pairs files of one run (a worker's argv has room for them) */
#define PLAN_SITE_MAX_LAYER 32767

struct plan_item {
    char name[REGISTRY_NAME_MAX];
    int version;
};

struct plan {
    /* what the run was given: strings borrowed (argv), NULL when absent */
    const char *name, *source, *schedule;
    const char *items_arg;   /* "a,b,..."; NULL: the default items */
    const char *eval_tokens; /* a token file */
    const char *eval_text;   /* a text, tokenized by the worker */
    const char *tokenizer;   /* for eval_text; NULL: DATA_DIR/20B_tokenizer.json */
    long long seed;          /* -1: the worker's default */
    long long ctx, eval_seqs; /* 0: the worker's default */
    int max_attempts;        /* 5 */
    long long sweep_every;   /* full sweeps on every K-th checkpoint (cost.h); -1: the default */
    int sae_warm_start;
    int nprobes;
    char *probes[PLAN_MAX_PROBES];  /* absolute paths, owned */
    int nsae_sites;
    char *sae_sites[PLAN_MAX_SAE_SITES];  /* hook names, owned */
    long sae_site_layers[PLAN_MAX_SAE_SITES];
    int nsae_dicts;
    char *sae_dicts[PLAN_MAX_SAE_DICTS]; /* fixed dictionaries for sae_fixed, absolute, owned */
    const char *model_name;  /* recorded in SAE files; NULL: from the source (sae_opts.h) */
    const char *family;      /* the family the run joins (detect/family.h); NULL: none */
    const char *policy;      /* "order" or "adaptive" (work/policy.h); NULL: the run's, else order */
    int npairs;
    char *pairs[PLAN_MAX_PAIRS]; /* prompt-pair sets: absolute, then pinned copies (owned) */
    /* what the run is, once resolved */
    long long *steps;        /* owned */
    int nsteps;
    int nitems;
    struct plan_item items[PLAN_MAX_ITEMS]; /* each after nothing it depends on is missing */
    char eval_path[PATH_MAX]; /* the eval tokens, absolute; "" for none */
};

/* An empty plan with the defaults (seed -1, max_attempts 5, sweep_every -1). */
void plan_init(struct plan *p);

/* Release what the plan owns; p may be NULL.  The plan is empty after. */
void plan_free(struct plan *p);

/* Is name an SAE site's hook, blocks.L.hook_{resid_pre,attn_out,resid_mid,
 * mlp_out,resid_post} with L in decimal digits, at most
 * PLAN_SITE_MAX_LAYER?  1 with its layer in *layer, else 0.  What needs the
 * model (the layer's range, hook_resid_mid's existence) the worker checks. */
int plan_sae_site(const char *name, long *layer);

/* Add an SAE site.  ERR_INVALID, the plan unchanged, when it is not a site
 * (plan_sae_site), a second site of one layer (rows are keyed by layer),
 * or one too many; the message reads "cannot use SAE site 'NAME': why". */
int plan_add_sae_site(struct plan *p, const char *site, struct err *e) CK_WUR;

/* Add a probe set, made absolute.  ERR_INVALID, the plan unchanged, when
 * the file cannot be found or there are PLAN_MAX_PROBES already; the
 * message reads "cannot use probe set 'PATH'[: too many]". */
int plan_add_probe(struct plan *p, const char *path, struct err *e) CK_WUR;

/* Add a fixed dictionary (a directory) for sae_fixed, made absolute.
 * ERR_INVALID, the plan unchanged, when it cannot be found or there are
 * PLAN_MAX_SAE_DICTS already; the message reads "cannot use SAE dictionary
 * 'DIR': no such directory|too many". */
int plan_add_sae_dict(struct plan *p, const char *dir, struct err *e) CK_WUR;

/* The arguments together: a name, a source, a schedule, at least one
 * attempt; ctx and eval_seqs in [0, INT32_MAX] and only with an eval set;
 * eval_tokens or eval_text, not both; a tokenizer only with eval_text.
 * ERR_INVALID with one message saying all of that; another when
 * sweep_every is not -1 or in [0, INT32_MAX], when policy is not "order"
 * or "adaptive", or for a source with a range {A..B} (runset.h): it names
 * its runs (no NAME) and they form a family (--family needed); a
 * malformed range gives runset_expand's message. */
int plan_check_args(const struct plan *p, struct err *e) CK_WUR;

/* How many runs p->source holds: 0 without a range, else the number of
 * values of its range (runset_expand), or ERR_INVALID for a bad range. */
int plan_source_runs(const struct plan *p, struct err *e) CK_WUR;

/* The source's and the schedule's syntax, before the hub is asked
 * anything.  ERR_INVALID from source_check or the schedule's parser. */
int plan_check_source(const struct plan *p, struct err *e) CK_WUR;

/* Does the schedule take its steps from the hub's branches (`refs`)? */
int plan_needs_refs(const struct plan *p);

/* The schedule's steps into p->steps: from refs (the steps of the hub's
 * branches, nrefs of them) when plan_needs_refs, else from the schedule
 * alone (refs unused).  The schedule's parser's errors; p unchanged. */
int plan_set_steps(struct plan *p, const long long *refs, int nrefs, struct err *e) CK_WUR;

/* The items: those of items_arg in that order, each at the version reg
 * offers (empty names skipped); or, without items_arg, the battery but the
 * items for toy runs' tasks, opt-in items and items whose dependency the
 * battery lacks.  Then every item's dependency must be among them (an item
 * reads the artifacts of the one it depends on).  At most PLAN_MAX_ITEMS.
 * Fixed dictionaries (plan_add_sae_dict) are what sae_fixed reads: without
 * items_arg they add it (opt-in) to the default items; with items_arg
 * both or neither.  ERR_INVALID: "the battery has no item 'x'", "item 'a'
 * reads what 'b' writes: add 'b' to --items", "--sae is read by the item
 * sae_fixed: the worker has none|add it to --items", "item sae_fixed
 * follows fixed dictionaries: give --sae DIR". */
int plan_choose_items(struct plan *p, const struct registry *reg, struct err *e) CK_WUR;

/* Each fixed dictionary read now by the worker's own reader
 * (sae_opts_check_dict), its hook logged.  Its errors: ERR_INVALID (the
 * worker cannot read it), ERR_CHILD. */
int plan_check_sae_dicts(const struct plan *p, const char *worker, struct err *e) CK_WUR;

/* Add a prompt-pair set file (absolute path).  ERR_INVALID when it cannot
 * be found or there are PLAN_MAX_PAIRS already. */
int plan_add_pairs(struct plan *p, const char *path, struct err *e) CK_WUR;

/* Each pair set checked by the worker, its texts tokenized (with
 * p->tokenizer, or DATA_DIR/20B_tokenizer.json when it exists) and pinned
 * as a copy in the data directory (pairset_prepare); p->pairs then name
 * the copies.  Errors: pairset_prepare's (ERR_CHILD: the worker refused
 * the file). */
int plan_prepare_pairs(struct plan *p, const char *worker, struct err *e) CK_WUR;

/* With eval_text: tokenize it with the worker (evalset_tokenize, in the
 * data directory, once per text and tokenizer) into p->eval_path.
 * Nothing to do without eval_text.  evalset_tokenize's errors (ERR_CHILD:
 * the worker failed). */
int plan_tokenize_eval(struct plan *p, const char *worker, struct err *e) CK_WUR;

/* The eval set (the tokenized text, else eval_tokens) made absolute in
 * p->eval_path; "" without one.  ERR_NOTFOUND: "cannot find eval tokens
 * 'PATH'". */
int plan_find_eval(struct plan *p, struct err *e) CK_WUR;

/* The run's options, compact JSON with sorted keys: eval_tokens (with ctx
 * and eval_seqs when set), probes, seed, sae_warm_start, sae_sites,
 * sae_fixed (the dictionaries), model_name, pairs, sweep_every, each only
 * when given.  They are what every worker of the run is started with, so
 * family and policy are not among them: the caller writes those to
 * family_members (family_add) and runs.policy (policy_apply), where a
 * later add-run may change them.  The caller frees it; NULL when out of
 * memory. */
char *plan_options_json(const struct plan *p);

#endif
