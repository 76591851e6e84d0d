#include "daemon/plan/plan.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "daemon/plan/evalset.h"
#include "daemon/plan/pairset.h"
#include "daemon/plan/runset.h"
#include "daemon/plan/sae_opts.h"
#include "daemon/plan/source.h"

void plan_init(struct plan *p)
{
    memset(p, 0, sizeof *p);
    p->seed = -1;
    p->max_attempts = 5;
    p->sweep_every = -1;
}

void plan_free(struct plan *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->nprobes; i++)
        free(p->probes[i]);
    for (int i = 0; i < p->nsae_sites; i++)
        free(p->sae_sites[i]);
    for (int i = 0; i < p->nsae_dicts; i++)
        free(p->sae_dicts[i]);
    for (int i = 0; i < p->npairs; i++)
        free(p->pairs[i]);
    free(p->steps);
    plan_init(p);
}

int plan_sae_site(const char *name, long *layer)
{
    static const char *const kinds[] = {"hook_resid_pre", "hook_attn_out", "hook_resid_mid",
                                        "hook_mlp_out", "hook_resid_post"};
    if (strncmp(name, "blocks.", 7) != 0 || name[7] < '0' || name[7] > '9')
        return 0;
    char *end = NULL;
    errno = 0;
    *layer = strtol(name + 7, &end, 10);
    if (errno || *layer > PLAN_SITE_MAX_LAYER || *end != '.')
        return 0;
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++)
        if (strcmp(end + 1, kinds[k]) == 0)
            return 1;
    return 0;
}

int plan_add_sae_site(struct plan *p, const char *site, struct err *e)
{
    long layer = -1;
    const char *why = p->nsae_sites >= PLAN_MAX_SAE_SITES ? "too many sites"
                      : !plan_sae_site(site, &layer)
                          ? "a site is blocks.L.hook_resid_pre, hook_attn_out, "
                            "hook_resid_mid, hook_mlp_out or hook_resid_post"
                          : NULL;
    for (int k = 0; !why && k < p->nsae_sites; k++)
        if (p->sae_site_layers[k] == layer)
            why = "one site per layer (rows are keyed by layer)";
    if (why)
        return err_set(e, ERR_INVALID, NULL, "cannot use SAE site '%s': %s", site, why);
    if (!(p->sae_sites[p->nsae_sites] = strdup(site)))
        return err_set(e, ERR_NOMEM, site, "out of memory");
    p->sae_site_layers[p->nsae_sites++] = layer;
    return 0;
}

int plan_add_probe(struct plan *p, const char *path, struct err *e)
{
    char abs[PATH_MAX];
    if (p->nprobes >= PLAN_MAX_PROBES || !realpath(path, abs))
        return err_set(e, ERR_INVALID, NULL, "cannot use probe set '%s'%s", path,
                       p->nprobes >= PLAN_MAX_PROBES ? ": too many" : "");
    if (!(p->probes[p->nprobes] = strdup(abs)))
        return err_set(e, ERR_NOMEM, path, "out of memory");
    p->nprobes++;
    return 0;
}

int plan_add_sae_dict(struct plan *p, const char *dir, struct err *e)
{
    char abs[PATH_MAX];
    if (p->nsae_dicts >= PLAN_MAX_SAE_DICTS || !realpath(dir, abs))
        return err_set(e, ERR_INVALID, NULL, "cannot use SAE dictionary '%s'%s", dir,
                       p->nsae_dicts >= PLAN_MAX_SAE_DICTS ? ": too many" : ": no such directory");
    if (!(p->sae_dicts[p->nsae_dicts] = strdup(abs)))
        return err_set(e, ERR_NOMEM, dir, "out of memory");
    p->nsae_dicts++;
    return 0;
}

int plan_add_pairs(struct plan *p, const char *path, struct err *e)
{
    char abs[PATH_MAX];
    if (p->npairs >= PLAN_MAX_PAIRS || !realpath(path, abs))
        return err_set(e, ERR_INVALID, NULL, "cannot use pair set '%s'%s", path,
                       p->npairs >= PLAN_MAX_PAIRS ? ": too many" : "");
    if (!(p->pairs[p->npairs] = strdup(abs)))
        return err_set(e, ERR_NOMEM, path, "out of memory");
    p->npairs++;
    return 0;
}

int plan_prepare_pairs(struct plan *p, const char *worker, struct err *e)
{
    char tok_default[PATH_MAX];
    snprintf(tok_default, sizeof tok_default, "%s/20B_tokenizer.json", evalset_data_dir());
    const char *tok = p->tokenizer ? p->tokenizer : access(tok_default, R_OK) == 0 ? tok_default : NULL;
    for (int k = 0; k < p->npairs; k++) {
        char pinned[PATH_MAX], *copy;
        int rc = pairset_prepare(worker, p->pairs[k], tok, evalset_data_dir(), pinned, sizeof pinned, e);
        if (rc < 0)
            return rc;
        if (!(copy = strdup(pinned)))
            return err_set(e, ERR_NOMEM, pinned, "out of memory");
        free(p->pairs[k]);
        p->pairs[k] = copy;
    }
    return 0;
}

int plan_check_args(const struct plan *p, struct err *e)
{
    const int has_eval = p->eval_tokens || p->eval_text;
    const int runs = p->source ? plan_source_runs(p, e) : 0;
    if (runs < 0)
        return runs;
    if (runs > 0 && p->name)
        return err_set(e, ERR_INVALID, NULL, "a source with a range {A..B} names its runs: leave out NAME");
    if (runs > 0 && !p->family)
        return err_set(e, ERR_INVALID, NULL,
                       "need NAME, or a source with a range {A..B} and --family (the runs of a range form a family)");
    if (p->policy && strcmp(p->policy, "order") != 0 && strcmp(p->policy, "adaptive") != 0)
        return err_set(e, ERR_INVALID, NULL, "--policy is order or adaptive, not '%s'", p->policy);
    if ((!p->name && runs == 0) || !p->source || !p->schedule || p->max_attempts < 1 || p->ctx < 0 ||
        p->ctx > INT32_MAX || p->eval_seqs < 0 || p->eval_seqs > INT32_MAX ||
        ((p->ctx || p->eval_seqs) && !has_eval) || (p->eval_tokens && p->eval_text) ||
        (p->tokenizer && !p->eval_text && !p->npairs))
        return err_set(e, ERR_INVALID, NULL,
                       "need NAME, --source and --schedule; --ctx and --eval-seqs are positive "
                       "and need --eval-tokens or --eval-text (not both); --tokenizer goes with "
                       "--eval-text or --pairs");
    if (p->sweep_every < -1 || p->sweep_every > INT32_MAX)
        return err_set(e, ERR_INVALID, NULL,
                       "--sweep-every is a count of checkpoints, 0 (never) or more");
    return 0;
}

int plan_source_runs(const struct plan *p, struct err *e)
{
    struct runset rs;
    int n = runset_expand(p->source, &rs, e);
    runset_free(&rs);
    return n;
}

int plan_check_source(const struct plan *p, struct err *e)
{
    long long probe_step = 0, *steps = NULL; /* the schedule's syntax, before asking the hub */
    int nsteps = 0, rc = source_check(p->source, e);
    if (rc == 0)
        rc = schedule_parse_refs(p->schedule, &probe_step, 1, &steps, &nsteps, e);
    free(steps);
    return rc;
}

int plan_needs_refs(const struct plan *p) { return schedule_uses_refs(p->schedule); }

int plan_set_steps(struct plan *p, const long long *refs, int nrefs, struct err *e)
{
    long long *steps = NULL;
    int nsteps = 0;
    int rc = plan_needs_refs(p) ? schedule_parse_refs(p->schedule, refs, nrefs, &steps, &nsteps, e)
                                : schedule_parse(p->schedule, &steps, &nsteps, e);
    if (rc < 0)
        return rc;
    free(p->steps);
    p->steps = steps;
    p->nsteps = nsteps;
    return 0;
}

static void add_item(struct plan *p, const struct reg_item *ri)
{
    struct plan_item *it = &p->items[p->nitems++];
    snprintf(it->name, sizeof it->name, "%s", ri->name);
    it->version = ri->version;
}

/* Is item `name` among p's items? */
static int has_item(const struct plan *p, const char *name)
{
    for (int k = 0; k < p->nitems; k++)
        if (strcmp(p->items[k].name, name) == 0)
            return 1;
    return 0;
}

int plan_choose_items(struct plan *p, const struct registry *reg, struct err *e)
{
    p->nitems = 0;
    if (p->items_arg) {
        char *list = strdup(p->items_arg), *save = NULL;
        if (!list)
            return err_set(e, ERR_NOMEM, NULL, "out of memory");
        for (char *it = strtok_r(list, ",", &save); it && p->nitems < PLAN_MAX_ITEMS;
             it = strtok_r(NULL, ",", &save)) {
            const struct reg_item *ri = registry_item(reg, it);
            if (!ri) {
                int rc = err_set(e, ERR_INVALID, NULL, "the battery has no item '%s'", it);
                free(list);
                p->nitems = 0;
                return rc;
            }
            add_item(p, ri);
        }
        free(list);
    } else {
        /* the whole battery but the items for toy runs' tasks, which only a
         * run from `ckpt-worker train` can answer (name them with --items),
         * opt-in items (sae_relu) and items whose dependency the battery lacks */
        for (int i = 0; i < reg->nitems && p->nitems < PLAN_MAX_ITEMS; i++) {
            const struct reg_item *ri = &reg->items[i];
            if (!ri->needs_task && !ri->opt_in && (!ri->depends_on[0] || registry_item(reg, ri->depends_on)))
                add_item(p, ri);
        }
    }
    /* an item reads the artifacts of the item it depends on: both or neither */
    for (int i = 0; i < p->nitems; i++) {
        const char *dep = registry_item(reg, p->items[i].name)->depends_on;
        if (dep[0] && !has_item(p, dep)) {
            int rc = err_set(e, ERR_INVALID, NULL, "item '%s' reads what '%s' writes: add '%s' to --items",
                             p->items[i].name, dep, dep);
            p->nitems = 0;
            return rc;
        }
    }
    /* --sae is what sae_fixed reads: alone it adds the (opt-in) item to the
     * default battery; with --items, both or neither */
    const int has_fixed = has_item(p, "sae_fixed");
    if (p->nsae_dicts && !has_fixed) {
        const struct reg_item *ri = registry_item(reg, "sae_fixed");
        if (p->items_arg || !ri || p->nitems >= PLAN_MAX_ITEMS) {
            p->nitems = 0;
            return err_set(e, ERR_INVALID, NULL, "--sae is read by the item sae_fixed: %s",
                           !ri ? "the worker has none" : "add it to --items");
        }
        add_item(p, ri);
    }
    if (has_fixed && !p->nsae_dicts) {
        p->nitems = 0;
        return err_set(e, ERR_INVALID, NULL, "item sae_fixed follows fixed dictionaries: give --sae DIR");
    }
    return 0;
}

int plan_check_sae_dicts(const struct plan *p, const char *worker, struct err *e)
{
    for (int k = 0; k < p->nsae_dicts; k++) {
        char hook[128];
        int rc = sae_opts_check_dict(worker, p->sae_dicts[k], hook, sizeof hook, e);
        if (rc < 0)
            return rc;
        log_info("sae dictionary", "index=%d dir=%s hook=%s", k, log_quote(p->sae_dicts[k]), hook);
    }
    return 0;
}

int plan_tokenize_eval(struct plan *p, const char *worker, struct err *e)
{
    if (!p->eval_text)
        return 0;
    char tok_default[PATH_MAX];
    const char *tokenizer = p->tokenizer;
    if (!tokenizer) {
        snprintf(tok_default, sizeof tok_default, "%s/20B_tokenizer.json", evalset_data_dir());
        tokenizer = tok_default;
    }
    return evalset_tokenize(worker, p->eval_text, tokenizer, evalset_data_dir(), p->eval_path,
                            sizeof p->eval_path, e);
}

int plan_find_eval(struct plan *p, struct err *e)
{
    char given[PATH_MAX];
    const char *eval = p->eval_text ? p->eval_path : p->eval_tokens;
    if (!eval) {
        p->eval_path[0] = '\0';
        return 0;
    }
    snprintf(given, sizeof given, "%s", eval);
    if (!realpath(given, p->eval_path)) {
        p->eval_path[0] = '\0';
        return err_set(e, ERR_NOTFOUND, NULL, "cannot find eval tokens '%s'", given);
    }
    return 0;
}

char *plan_options_json(const struct plan *p)
{
    json_t *opt = json_object(), *probes = json_array(), *sites = json_array(), *dicts = json_array();
    json_t *pairs = json_array();
    char *text = NULL;
    if (!opt || !probes || !sites || !dicts || !pairs)
        goto out;
    if (p->eval_path[0]) {
        json_object_set_new(opt, "eval_tokens", json_string(p->eval_path));
        if (p->ctx)
            json_object_set_new(opt, "ctx", json_integer(p->ctx));
        if (p->eval_seqs)
            json_object_set_new(opt, "eval_seqs", json_integer(p->eval_seqs));
    }
    for (int i = 0; i < p->nprobes; i++)
        json_array_append_new(probes, json_string(p->probes[i]));
    if (p->nprobes)
        json_object_set(opt, "probes", probes);
    if (p->seed >= 0)
        json_object_set_new(opt, "seed", json_integer(p->seed));
    if (p->sae_warm_start) /* sae jobs wait for the previous checkpoint's and start from it */
        json_object_set_new(opt, "sae_warm_start", json_true());
    for (int i = 0; i < p->nsae_sites; i++)
        json_array_append_new(sites, json_string(p->sae_sites[i]));
    if (p->nsae_sites)
        json_object_set(opt, "sae_sites", sites);
    for (int i = 0; i < p->nsae_dicts; i++)
        json_array_append_new(dicts, json_string(p->sae_dicts[i]));
    if (p->nsae_dicts)
        json_object_set(opt, "sae_fixed", dicts);
    if (p->model_name)
        json_object_set_new(opt, "model_name", json_string(p->model_name));
    for (int i = 0; i < p->npairs; i++)
        json_array_append_new(pairs, json_string(p->pairs[i]));
    if (p->npairs)
        json_object_set(opt, "pairs", pairs);
    if (p->sweep_every >= 0) /* full sweeps (ablation of every head) on this skeleton */
        json_object_set_new(opt, "sweep_every", json_integer(p->sweep_every));
    text = json_dumps(opt, JSON_SORT_KEYS | JSON_COMPACT);
out:
    json_decref(pairs);
    json_decref(dicts);
    json_decref(sites);
    json_decref(probes);
    json_decref(opt);
    return text;
}
