/* llc v1: the local learning coefficient of the checkpoint's weights w*,
 * estimated by SGLD (sgld.h: Lau et al. 2023, "Quantifying degeneracy in
 * singular models via the learning coefficient", as devinterp computes it;
 * Hoogland et al. 2024, "The developmental landscape of in-context
 * learning", read its changes over training as developmental stages).
 *
 * The loss is the next-token cross-entropy of the checkpoint's model (mean
 * over the positions with a target, model/backward.h), on a data set of n
 * equal-length sequences, every one with the same number of targets:
 *   - a toy run (ctx->task_path set): its training data, rebuilt from
 *     task.json (task_load_json) -- modular addition: the training pairs
 *     `a b =`, the answer the only target; induction: the sequences of
 *     training steps 0, 1, ... (task_batch), LLC_TASK_SEQS of them;
 *   - otherwise the eval set (ctx->eval_tokens), every next token a target.
 * An example is one sequence; a minibatch is m = clamp(LLC_BATCH_TOKENS / T,
 * 1, n) of them, so a step costs about the same whatever T is.
 *
 * The sampler runs on a writable copy of the weights (gptneox_create and
 * the parameters copied in), so the checkpoint's model -- possibly a
 * read-only mapping, and read by the items after this one -- is never
 * written.  The copy's parameters lie in one block in gptneox_params
 * order; SGLD's vector w is that block, so the forward reads the chains'
 * weights in place, and its gradient vector is the gradient model's block,
 * which the backward writes.  The noise and the update run on as many
 * threads as BLAS (blas_threads; the numbers do not depend on it).
 *
 * Rows: init_loss (L(w*) over the whole data set), trace_loss (layer =
 * chain, idx = draw: L_m at that draw, the trace that shows whether the
 * hyperparameters were sane), llc_chain per chain that did not diverge,
 * llc (their mean; absent when every chain diverged), llc_std (their
 * sample standard deviation; absent with fewer than two), chains_diverged,
 * and chain_diverged_step for each chain that stopped (its step, burn-in
 * included).  A chain stops when its loss is non-finite or rises more than
 * LLC_MAX_RISE_LOGV * ln V above init_loss (ten times the loss of a
 * uniform guess: nothing a local posterior would reach).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "workers/battery/battery.h"
#include "workers/battery/sgld.h"
#include "workers/model/backward.h"
#include "workers/model/blas.h"
#include "workers/model/tensor.h"
#include "workers/train/task.h"

static const struct metric_def llc_metrics[] = {
    {"llc", "dimensionless", "local learning coefficient at the checkpoint's weights by SGLD "
     "(Lau et al. 2023, devinterp): mean of llc_chain over the chains that did not diverge",
     "", "", ""},
    {"llc_std", "dimensionless", "sample standard deviation of llc_chain over the chains that "
     "did not diverge", "", "", ""},
    {"llc_chain", "dimensionless", "one chain's estimate: nbeta * (mean trace_loss - init_loss)",
     "chain c", "", ""},
    {"init_loss", "nats", "mean loss at the checkpoint's weights over the whole LLC data set "
     "(the toy run's training data, else the eval set)", "", "", ""},
    {"trace_loss", "nats", "minibatch loss of a chain at one draw (after the burn-in): the SGLD "
     "trace; it should rise from init_loss and level off", "chain c", "", "draw t"},
    {"chains_diverged", "count", "chains stopped because their loss was non-finite or rose "
     "more than LLC_MAX_RISE_LOGV * ln(vocab) above init_loss", "", "", ""},
    {"chain_diverged_step", "step", "the SGLD step (0-based, burn-in included) at which a "
     "diverged chain stopped", "chain c", "", ""},
};

const struct llc_params llc_default_params = {
    .nbeta = LLC_NBETA,
    .gamma = LLC_GAMMA,
    .epsilon = LLC_EPSILON,
    .chains = LLC_CHAINS,
    .draws = LLC_DRAWS,
    .burnin = LLC_BURNIN,
    .batch_tokens = LLC_BATCH_TOKENS,
};

/* The data set: n sequences of T tokens and their targets (-1: none). */
struct llc_data {
    int *tokens, *targets;
    int n, T;
};

static void data_free(struct llc_data *d)
{
    free(d->tokens);
    free(d->targets);
    memset(d, 0, sizeof *d);
}

static int data_alloc(struct llc_data *d, int n, int T, struct err *e)
{
    d->n = n;
    d->T = T;
    d->tokens = malloc((size_t)n * T * sizeof *d->tokens);
    d->targets = malloc((size_t)n * T * sizeof *d->targets);
    if (!d->tokens || !d->targets)
        return err_set(e, ERR_NOMEM, NULL, "out of memory for %d sequences of %d tokens", n, T);
    return 0;
}

/* A toy run's training data (see the top of the file). */
static int data_from_task(struct llc_data *d, const struct battery_ctx *ctx, struct err *e)
{
    const struct gptneox_config *cfg = &ctx->model->cfg;
    struct task *t = NULL;
    int rc = task_load_json(&t, ctx->task_path, e);
    if (rc < 0)
        return rc;
    const int T = task_seq_len(t);
    if (cfg->vocab_size != task_vocab(t) || cfg->max_positions < T) {
        rc = err_set(e, ERR_INVALID, ctx->task_path,
                     "the checkpoint (vocabulary %d, %d positions) was not made for this task "
                     "(vocabulary %d, sequences of %d)",
                     cfg->vocab_size, cfg->max_positions, task_vocab(t), T);
        goto out;
    }
    const int *tok, *tgt;
    int B;
    task_batch(t, 0, &tok, &tgt, &B);
    int n = task_get_config(t)->kind == TASK_MODADD ? B : LLC_TASK_SEQS;
    if ((rc = data_alloc(d, n, T, e)) < 0)
        goto out;
    for (int have = 0, step = 1;; step++) { /* modular addition: one full batch */
        int k = n - have < B ? n - have : B;
        memcpy(d->tokens + (size_t)have * T, tok, (size_t)k * T * sizeof *tok);
        memcpy(d->targets + (size_t)have * T, tgt, (size_t)k * T * sizeof *tgt);
        if ((have += k) == n)
            break;
        task_batch(t, step, &tok, &tgt, &B);
    }
out:
    task_free(t);
    return rc;
}

static int data_from_eval(struct llc_data *d, const struct battery_ctx *ctx, struct err *e)
{
    int rc = battery_check_eval(ctx, e);
    if (rc < 0)
        return rc;
    if ((rc = data_alloc(d, ctx->eval_B, ctx->eval_T, e)) < 0)
        return rc;
    memcpy(d->tokens, ctx->eval_tokens, (size_t)d->n * d->T * sizeof *d->tokens);
    gptneox_next_token_targets(d->targets, d->tokens, d->n, d->T);
    return 0;
}

/* The loss callback of sgld_estimate: w is the working model's weight
 * block (its parameters, in gptneox_params order). */
struct llc_model {
    struct gptneox *work, *grads;
    struct gptneox_tape *tape;
    float *gflat;       /* the gradient model's block: SGLD's gradient vector */
    size_t d;
    const struct llc_data *data;
    int *btok, *btgt;   /* (m, T): the minibatch gathered */
};

static int llc_loss(void *ctx, const float *w, const int *idx, int m, double *loss, float *grad,
                    struct err *e)
{
    struct llc_model *lm = ctx;
    const int T = lm->data->T;
    (void)w; /* the working model's weight block: the forward reads it in place */
    for (int i = 0; i < m; i++) {
        memcpy(lm->btok + (size_t)i * T, lm->data->tokens + (size_t)idx[i] * T,
               (size_t)T * sizeof *lm->btok);
        memcpy(lm->btgt + (size_t)i * T, lm->data->targets + (size_t)idx[i] * T,
               (size_t)T * sizeof *lm->btgt);
    }
    if (!grad)
        return gptneox_train_forward(lm->work, lm->tape, lm->btok, lm->btgt, m, T, loss, e);
    /* grad is the gradient model's block: the backward writes it in place */
    return gptneox_forward_backward(lm->work, lm->grads, lm->tape, lm->btok, lm->btgt, m, T,
                                    loss, e);
}

/* The first parameter's data when the parameters ps lie back to back in
 * gptneox_params order (as gptneox_create allocates them), else NULL;
 * *d gets the total count. */
static float *param_block(const struct gptneox_param *ps, size_t np, size_t *d)
{
    size_t off = 0;
    for (size_t i = 0; i < np; i++) {
        if (ps[i].data != ps[0].data + off)
            return NULL;
        off += ps[i].n;
    }
    *d = off;
    return ps[0].data;
}

static int write_rows(const struct sgld_result *r, struct rows *out, struct err *e)
{
    int rc = rows_add(out, "init_loss", -1, -1, -1, r->init_loss, e);
    for (int c = 0; rc >= 0 && c < r->chains; c++)
        for (int t = 0; rc >= 0 && t < r->ndraws[c]; t++)
            rc = rows_add(out, "trace_loss", c, -1, t, r->trace[(size_t)c * r->draws + t], e);
    for (int c = 0; rc >= 0 && c < r->chains; c++)
        rc = r->diverged_step[c] < 0
                 ? rows_add(out, "llc_chain", c, -1, -1, r->llc_chain[c], e)
                 : rows_add(out, "chain_diverged_step", c, -1, -1, (double)r->diverged_step[c], e);
    int ok = r->chains - r->ndiverged;
    if (rc >= 0 && ok >= 1)
        rc = rows_add(out, "llc", -1, -1, -1, r->llc_mean, e);
    if (rc >= 0 && ok >= 2)
        rc = rows_add(out, "llc_std", -1, -1, -1, r->llc_std, e);
    if (rc >= 0)
        rc = rows_add(out, "chains_diverged", -1, -1, -1, r->ndiverged, e);
    return rc;
}

int battery_llc_run(const struct battery_ctx *ctx, const struct llc_params *p, struct rows *out,
                    struct err *e)
{
    struct gptneox *m = ctx->model;
    struct llc_data data = {0};
    struct llc_model lm = {0};
    struct gptneox_param *ps = NULL, *ws = NULL;
    struct sgld_result r = {0};
    size_t np = gptneox_params(m, NULL, 0);
    int rc;

    if (p->batch_tokens < 1)
        return err_set(e, ERR_INVALID, NULL, "minibatch of %d tokens", p->batch_tokens);
    ps = malloc(np * sizeof *ps);
    ws = malloc(np * sizeof *ws);
    if (!ps || !ws) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory listing %zu parameters", np);
        goto out;
    }
    gptneox_params(m, ps, np);
    for (size_t i = 0; i < np; i++) {
        size_t bad = tensor_find_nonfinite(ps[i].data, ps[i].n);
        if (bad != (size_t)-1) {
            rc = err_set(e, ERR_NUMERIC, ps[i].name,
                         "holds a non-finite weight (%g at flat index %zu): the local learning "
                         "coefficient is defined only at finite weights",
                         (double)ps[i].data[bad], bad);
            goto out;
        }
    }
    rc = ctx->task_path ? data_from_task(&data, ctx, e) : data_from_eval(&data, ctx, e);
    if (rc < 0)
        goto out;
    int mb = p->batch_tokens / data.T;
    mb = mb < 1 ? 1 : mb > data.n ? data.n : mb;

    if ((rc = gptneox_create(&lm.work, &m->cfg, e)) < 0 ||
        (rc = gptneox_grads_create(&lm.grads, m, e)) < 0 ||
        (rc = gptneox_tape_create(&lm.tape, e)) < 0)
        goto out;
    gptneox_params(lm.work, ws, np);
    for (size_t i = 0; i < np; i++)
        memcpy(ws[i].data, ps[i].data, ps[i].n * sizeof *ps[i].data);
    float *w = param_block(ws, np, &lm.d);
    size_t dg = 0;
    gptneox_params(lm.grads, ws, np);
    lm.gflat = param_block(ws, np, &dg);
    if (!w || !lm.gflat || dg != lm.d) { /* gptneox_create allocates one block */
        rc = err_set(e, ERR_INVALID, NULL, "the working copy's parameters are not one block");
        goto out;
    }
    lm.data = &data;
    lm.btok = malloc((size_t)mb * data.T * sizeof *lm.btok);
    lm.btgt = malloc((size_t)mb * data.T * sizeof *lm.btgt);
    if (!lm.btok || !lm.btgt) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for a minibatch");
        goto out;
    }
    struct sgld_config sc = {
        .nbeta = p->nbeta > 0 ? p->nbeta : sgld_default_nbeta(mb),
        .gamma = p->gamma,
        .epsilon = p->epsilon,
        .chains = p->chains,
        .draws = p->draws,
        .burnin = p->burnin,
        .batch = mb,
        .max_rise = LLC_MAX_RISE_LOGV * log((double)m->cfg.vocab_size),
        .seed = ctx->seed,
        .threads = blas_threads(),
    };
    log_debug("llc sampling", "data=%s examples=%d tokens=%d batch=%d nbeta=%g gamma=%g "
              "epsilon=%g chains=%d draws=%d burnin=%d params=%zu",
              ctx->task_path ? "task" : "eval", data.n, data.T, mb, sc.nbeta, sc.gamma,
              sc.epsilon, sc.chains, sc.draws, sc.burnin, lm.d);
    if ((rc = sgld_estimate(&r, &sc, w, lm.gflat, lm.d, data.n, llc_loss, &lm, e)) < 0)
        goto out;
    if (r.ndiverged)
        log_warn("llc chains diverged", "count=%d chains=%d epsilon=%g", r.ndiverged, r.chains,
                 sc.epsilon);
    rc = write_rows(&r, out, e);
out:
    sgld_result_free(&r);
    free(lm.btok);
    free(lm.btgt);
    gptneox_tape_free(lm.tape);
    gptneox_free(lm.grads);
    gptneox_free(lm.work);
    data_free(&data);
    free(ws);
    free(ps);
    return rc;
}

static int llc_run(const struct battery_ctx *ctx, struct rows *out, struct err *e)
{
    return battery_llc_run(ctx, &llc_default_params, out, e);
}

const struct battery_item battery_item_llc = {
    .name = "llc",
    .version = 1,
    .needs = BATTERY_NEEDS(BATTERY_NEED_EVAL_TOKENS) | BATTERY_NEEDS(BATTERY_NEED_TASK_OPTIONAL),
    .metrics = llc_metrics,
    .nmetrics = sizeof llc_metrics / sizeof *llc_metrics,
    .run = llc_run,
    .opt_in = 1,
};
