/* The battery registry: the table of items, lookup, the run wrapper that
 * checks an item's rows against its declared metrics, and the default eval
 * set.  Adding an item: write battery_<name>.c defining its
 * `const struct battery_item`, declare it in battery.h, list it below. */
#include "workers/battery/battery.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/rng.h"

static const struct battery_item *const items[] = {
    &battery_item_loss,
    &battery_item_weights,
    &battery_item_integrity,
    &battery_item_heads,
    &battery_item_lens,
    &battery_item_composition,
    &battery_item_ablation,
    &battery_item_ablation_exact,
    &battery_item_probes,
    &battery_item_task,
    &battery_item_sae,
    &battery_item_sae_relu,
    &battery_item_sae_match,
    &battery_item_llc,
    &battery_item_sae_fixed,
    &battery_item_patching,
    &battery_item_attribution,
    &battery_item_path_patching,
    &battery_item_circuit,
};

static const char *const need_names[BATTERY_NEED_COUNT] = {
    [BATTERY_NEED_EVAL_TOKENS] = "eval_tokens",
    [BATTERY_NEED_PROBE_SETS] = "probe_sets",
    [BATTERY_NEED_TASK] = "task",
    [BATTERY_NEED_ARTIFACTS] = "artifacts",
    [BATTERY_NEED_PREV_ARTIFACTS] = "prev_artifacts",
    [BATTERY_NEED_TASK_OPTIONAL] = "task_optional",
    [BATTERY_NEED_SAE_DICTS] = "sae_dicts",
    [BATTERY_NEED_PAIR_SETS] = "pair_sets",
};

size_t battery_count(void)
{
    return sizeof items / sizeof *items;
}

const struct battery_item *battery_get(size_t i)
{
    return i < battery_count() ? items[i] : NULL;
}

const struct battery_item *battery_find(const char *name)
{
    for (size_t i = 0; i < battery_count(); i++)
        if (strcmp(items[i]->name, name) == 0)
            return items[i];
    return NULL;
}

const struct metric_def *battery_metric(const struct battery_item *it, const char *name)
{
    for (size_t i = 0; i < it->nmetrics; i++)
        if (strcmp(it->metrics[i].name, name) == 0)
            return &it->metrics[i];
    return NULL;
}

const char *battery_need_name(enum battery_need k)
{
    return (unsigned)k < BATTERY_NEED_COUNT ? need_names[k] : NULL;
}

/* Every row's third field (the metric, as escaped) must be a declared
 * metric.  Declared names are plain, so an escaped name never matches. */
static int check_rows(const struct battery_item *it, const struct rows *r, struct err *e)
{
    const char *p = r->buf, *end = r->buf + r->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            nl = end;
        const char *f = p;
        for (int tabs = 0; tabs < 2 && f && f < nl; tabs++) {
            f = memchr(f, '\t', (size_t)(nl - f));
            f = f ? f + 1 : NULL;
        }
        const char *fe = f ? memchr(f, '\t', (size_t)(nl - f)) : NULL;
        int ok = 0;
        for (size_t i = 0; fe && i < it->nmetrics && !ok; i++)
            ok = strlen(it->metrics[i].name) == (size_t)(fe - f) &&
                 memcmp(it->metrics[i].name, f, (size_t)(fe - f)) == 0;
        if (!ok)
            return err_set(e, ERR_INVALID, it->name, "wrote a row of an undeclared metric: %.*s",
                           (int)(nl - p), p);
        p = nl + 1;
    }
    return 0;
}

/* Why ctx cannot serve the item, or 0. */
static int needs_unmet(const struct battery_item *it, const struct battery_ctx *ctx, struct err *e)
{
    if ((it->needs & BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS)) &&
        (!ctx->eval_tokens || ctx->eval_B <= 0 || ctx->eval_T <= 0))
        return err_set(e, ERR_INVALID, NULL, "needs eval tokens and none were given");
    if ((it->needs & BATTERY_NEEDS(BATTERY_NEED_TASK)) && !ctx->task_path)
        return err_set(e, ERR_INVALID, NULL,
                       "needs the run's task.json (next to the checkpoint, in its parent "
                       "directory, or --task FILE) and none was found");
    if ((it->needs & BATTERY_NEEDS(BATTERY_NEED_SAE_DICTS)) && ctx->nsae_fixed <= 0)
        return err_set(e, ERR_INVALID, NULL,
                       "follows fixed SAE dictionaries and none was given (--sae DIR)");
    if ((it->needs & BATTERY_NEEDS(BATTERY_NEED_ARTIFACTS)) && !ctx->artifacts_dir)
        return err_set(e, ERR_INVALID, NULL,
                       "writes artifacts and no directory was given (--artifacts DIR)");
    return 0;
}

/* An item that reads the eval pass: the shared one when it is attached
 * there, else a pass of its own. */
static int run_with_pass(const struct battery_item *it, const struct battery_ctx *ctx,
                         struct rows *out, struct err *e)
{
    if (ctx->pass && evalpass_has(ctx->pass, it->name)) {
        if (evalpass_run(ctx->pass, NULL) < 0) {
            /* every consumer holds the forward's error: the item reports it */
        }
        return it->run(ctx, out, e);
    }
    struct battery_ctx own = *ctx;
    int rc = evalpass_create(&own.pass, ctx->model, ctx->eval_tokens, ctx->eval_B, ctx->eval_T, e);
    if (rc == 0 && (rc = it->attach(&own, own.pass, e)) == 0 &&
        (rc = evalpass_run(own.pass, e)) == 0)
        rc = it->run(&own, out, e);
    evalpass_free(own.pass);
    return rc;
}

int battery_run_item(const struct battery_item *it, const struct battery_ctx *ctx,
                     struct rows *out, struct err *e)
{
    rows_begin(out, it->name, it->version);
    int rc = needs_unmet(it, ctx, e);
    if (rc == 0)
        rc = it->attach ? run_with_pass(it, ctx, out, e) : it->run(ctx, out, e);
    if (rc >= 0)
        rc = check_rows(it, out, e);
    if (rc < 0) {
        rows_begin(out, it->name, it->version); /* drop the partial rows */
        err_wrap(e, "item %s v%d", it->name, it->version);
    }
    return rc;
}

int battery_pass_prepare(struct battery_ctx *ctx, const struct battery_item *const *list,
                         size_t n, struct err *e)
{
    ctx->pass = NULL;
    int readers = 0;
    for (size_t i = 0; i < n; i++)
        readers += list[i]->attach && needs_unmet(list[i], ctx, NULL) == 0;
    if (!readers)
        return 0;
    int rc = evalpass_create(&ctx->pass, ctx->model, ctx->eval_tokens, ctx->eval_B, ctx->eval_T, e);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        struct err why;
        err_clear(&why);
        if (!list[i]->attach || needs_unmet(list[i], ctx, NULL) < 0)
            continue;
        if (list[i]->attach(ctx, ctx->pass, &why) < 0) {
            if (why.code == ERR_NOMEM)
                return err_set(e, ERR_NOMEM, list[i]->name, "%s", why.msg);
            log_debug("eval pass: item left out", "item=%s error=%s", list[i]->name,
                      log_quote(err_str(&why)));
        }
    }
    return 0;
}

int battery_eval_default(int **tokens, int *B, int *T, int V, int max_positions,
                         uint64_t seed, struct err *e)
{
    *tokens = NULL;
    if (V <= 0 || max_positions <= 0)
        return err_set(e, ERR_INVALID, NULL, "vocabulary %d / max positions %d not positive", V,
                       max_positions);
    int b = BATTERY_EVAL_SEQS, t = max_positions < BATTERY_EVAL_LEN ? max_positions : BATTERY_EVAL_LEN;
    int *tok = malloc((size_t)b * t * sizeof *tok);
    if (!tok)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the eval set");
    uint64_t s = seed;
    for (size_t i = 0; i < (size_t)b * t; i++)
        tok[i] = (int)rng_below(&s, (uint32_t)V);
    *tokens = tok;
    *B = b;
    *T = t;
    return 0;
}

int battery_repeated_tokens(int **tokens, int *B, int *T, int *L, int V, int max_positions,
                            uint64_t seed, struct err *e)
{
    *tokens = NULL;
    int l = (max_positions - 1) / 2 < BATTERY_REP_LEN ? (max_positions - 1) / 2 : BATTERY_REP_LEN;
    l = V - 1 < l ? V - 1 : l;
    if (V < 3)
        return err_set(e, ERR_INVALID, NULL,
                       "vocabulary of %d ids: repeated sequences need at least 3", V);
    if (l < 2)
        return err_set(e, ERR_INVALID, NULL,
                       "max_position_embeddings %d leaves no room for a repeated sequence "
                       "(at least 5 positions are needed)",
                       max_positions);
    int b = BATTERY_REP_SEQS, t = 2 * l + 1;
    int *tok = malloc((size_t)b * t * sizeof *tok);
    if (!tok)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for the repeated sequences");
    uint64_t s = seed ^ BATTERY_REP_SALT;
    for (int i = 0; i < b; i++) {
        int *row = tok + (size_t)i * t;
        row[0] = BATTERY_REP_BOS; /* 0, inside every vocabulary */
        for (int j = 0; j < l; j++) {
            int id, seen;
            do { /* distinct ids in [1, V): redraw BOS and repeats */
                id = (int)rng_below(&s, (uint32_t)V);
                seen = id == BATTERY_REP_BOS;
                for (int k = 0; k < j && !seen; k++)
                    seen = row[1 + k] == id;
            } while (seen);
            row[1 + j] = row[1 + l + j] = id;
        }
    }
    *tokens = tok;
    *B = b;
    *T = t;
    *L = l;
    return 0;
}

int battery_check_eval(const struct battery_ctx *c, struct err *e)
{
    const struct gptneox_config *cfg = &c->model->cfg;
    const int B = c->eval_B, T = c->eval_T, V = cfg->vocab_size;
    const char *src = c->eval_name ? c->eval_name : "eval tokens";
    if (T < 2)
        return err_set(e, ERR_INVALID, src, "sequences of %d token(s): at least 2 are needed", T);
    if (T > cfg->max_positions)
        return err_set(e, ERR_INVALID, src,
                       "sequences of %d tokens are longer than the model's "
                       "max_position_embeddings %d",
                       T, cfg->max_positions);
    for (size_t i = 0; i < (size_t)B * T; i++)
        if (c->eval_tokens[i] < 0 || c->eval_tokens[i] >= V)
            return err_set(e, ERR_INVALID, src,
                           "token %d (sequence %zu, position %zu) is outside the vocabulary [0, %d)",
                           c->eval_tokens[i], i / (size_t)T, i % (size_t)T, V);
    return 0;
}
