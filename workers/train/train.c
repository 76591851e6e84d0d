#include "workers/train/train.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/path.h"
#include "workers/model/backward.h"
#include "workers/train/adamw.h"

static long nice_every(long steps)
{
    double target = steps / 32.0;
    if (target <= 1.0)
        return 1;
    double p10 = pow(10.0, floor(log10(target)));
    const double mult[3] = {1, 2, 5};
    long best = (long)p10;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 3; i++) {
            double v = mult[i] * p10 * pow(10.0, k);
            if (fabs(log(v / target)) < fabs(log(best / target)))
                best = (long)v;
        }
    return best;
}

size_t train_schedule(long steps, long every, long *out, size_t cap)
{
    size_t n = 0;
    long last = -1;
    if (steps < 0)
        return 0;
    if (every <= 0)
        every = nice_every(steps);
#define PUT(v)            \
    do {                  \
        if (n < cap)      \
            out[n] = (v); \
        n++;              \
        last = (v);       \
    } while (0)
    PUT(0);
    for (long p = 1; p < every && p <= steps; p *= 2)
        PUT(p);
    for (long s = every; s <= steps; s += every)
        PUT(s);
    if (last != steps)
        PUT(steps);
#undef PUT
    return n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int check_config(const struct train_config *c, int V, int T, struct err *e)
{
    if (c->layers < 1 || c->layers > 64)
        return err_set(e, ERR_INVALID, NULL, "--layers must be in [1, 64], got %d", c->layers);
    if (c->d_model < 2 || c->d_model > 8192)
        return err_set(e, ERR_INVALID, NULL, "--d-model must be in [2, 8192], got %d", c->d_model);
    if (c->heads < 1 || c->d_model % c->heads != 0)
        return err_set(e, ERR_INVALID, NULL, "--heads %d must divide --d-model %d", c->heads,
                       c->d_model);
    if (c->d_mlp < 1 || c->d_mlp > 65536)
        return err_set(e, ERR_INVALID, NULL, "--d-mlp must be in [1, 65536], got %d", c->d_mlp);
    if (c->steps < 0 || c->steps > 100000000)
        return err_set(e, ERR_INVALID, NULL, "--steps must be in [0, 1e8], got %ld", c->steps);
    if (!(c->lr > 0 && c->lr < 10))
        return err_set(e, ERR_INVALID, NULL, "--lr must be in (0, 10), got %g", c->lr);
    if (!(c->weight_decay >= 0 && c->lr * c->weight_decay < 1))
        return err_set(e, ERR_INVALID, NULL, "--wd must be >= 0 with lr * wd < 1, got %g",
                       c->weight_decay);
    if (!(c->init_std > 0 && c->init_std < 10))
        return err_set(e, ERR_INVALID, NULL, "--init-std must be in (0, 10), got %g", c->init_std);
    if (c->warmup < 0)
        return err_set(e, ERR_INVALID, NULL, "--warmup must be >= 0");
    if (c->decay_start < 0 || c->decay_steps < 0 || c->decay_start > c->steps)
        return err_set(e, ERR_INVALID, NULL,
                       "--decay-start must be in [0, --steps] and --decay-steps >= 0");
    if (c->decay_start > 0 && !(c->decay_to >= 0 && c->decay_to <= 1))
        return err_set(e, ERR_INVALID, NULL, "--decay-to must be in [0, 1], got %g", c->decay_to);
    if (c->spike_step < 0 || c->spike_step > c->steps)
        return err_set(e, ERR_INVALID, NULL, "--lr-spike step must be in [0, --steps], got %ld",
                       c->spike_step);
    if (c->spike_step > 0 && !(c->spike_factor > 0 && c->lr * c->spike_factor < 10 &&
                               c->lr * c->spike_factor * c->weight_decay < 1))
        return err_set(e, ERR_INVALID, NULL,
                       "--lr-spike factor must be > 0 with lr * factor < 10 and "
                       "lr * factor * wd < 1, got %g", c->spike_factor);
    if (c->eval_every < 0)
        return err_set(e, ERR_INVALID, NULL, "--eval-every must be >= 0");
    for (size_t i = 0; i < c->ncheckpoints; i++)
        if (c->checkpoints[i] < 0 || c->checkpoints[i] > c->steps ||
            (i > 0 && c->checkpoints[i] <= c->checkpoints[i - 1]))
            return err_set(e, ERR_INVALID, NULL,
                           "--checkpoints must increase strictly within [0, --steps %ld]; "
                           "entry %zu is %ld", c->steps, i + 1, c->checkpoints[i]);
    (void)V;
    (void)T;
    return 0;
}

static json_t *run_json(const struct train_config *c, const struct gptneox_config *mc)
{
    json_t *cks = json_array();
    for (size_t i = 0; i < c->ncheckpoints; i++)
        json_array_append_new(cks, json_integer(c->checkpoints[i]));
    json_t *o = json_pack("{s:I, s:I, s:{s:s, s:f, s:f, s:f, s:f, s:f, s:I, s:s}, "
                     "s:{s:i, s:i, s:i, s:i, s:f, s:b, s:f}, s:o}",
                     "steps", (json_int_t)c->steps, "model_seed", (json_int_t)c->seed,
                     "optimizer", "name", "adamw", "lr", c->lr, "weight_decay", c->weight_decay,
                     "beta1", c->beta1, "beta2", c->beta2, "eps", c->eps, "warmup",
                     (json_int_t)c->warmup, "decay_applies_to",
                     "matrices and embeddings (not biases, not LayerNorm)", "model", "layers",
                     mc->n_layers, "d_model", mc->d_model, "heads", mc->n_heads, "d_mlp",
                     mc->d_mlp, "rotary_pct", mc->rotary_pct, "parallel_residual",
                     mc->parallel_residual, "init_std", c->init_std, "checkpoints", cks);
    /* the schedule's extras only when used, so plain runs keep their files */
    json_t *opt = o ? json_object_get(o, "optimizer") : NULL;
    if (opt && c->decay_start > 0) {
        json_object_set_new(opt, "decay_start", json_integer(c->decay_start));
        json_object_set_new(opt, "decay_steps", json_integer(c->decay_steps));
        json_object_set_new(opt, "decay_to", json_real(c->decay_to));
    }
    if (opt && c->spike_step > 0) {
        json_object_set_new(opt, "spike_step", json_integer(c->spike_step));
        json_object_set_new(opt, "spike_factor", json_real(c->spike_factor));
    }
    return o;
}

double train_lr_at(const struct train_config *c, long step)
{
    double lr = c->lr;
    if (c->warmup > 0 && step < c->warmup)
        lr *= (double)(step + 1) / (double)c->warmup;
    if (c->decay_start > 0 && step >= c->decay_start) {
        long into = step - c->decay_start;
        double f = c->decay_steps > 0 && into < c->decay_steps
                       ? 1.0 - (1.0 - c->decay_to) * (double)into / (double)c->decay_steps
                       : c->decay_to;
        lr *= f;
    }
    if (c->spike_step > 0 && step == c->spike_step)
        lr *= c->spike_factor;
    return lr;
}

/* One line {"step":N, name: value, ...} of the four task metrics. */
static int log_metrics(FILE *f, const char *out, const char *file, long step,
                       const char *const *names, const struct task_metrics *mt, struct err *e)
{
    fprintf(f, "{\"step\":%ld,\"%s\":%.7g,\"%s\":%.7g,\"%s\":%.7g,\"%s\":%.7g}\n", step,
            names[0], mt->train_loss, names[1], mt->train_acc, names[2], mt->test_loss, names[3],
            mt->test_acc);
    if (fflush(f) != 0)
        return err_set(e, ERR_IO, out, "writing %s: %s", file, strerror(errno));
    return 0;
}

int train_run(const struct train_config *c, struct err *e)
{
    struct task *task = NULL;
    struct gptneox *m = NULL, *g = NULL;
    struct gptneox_tape *tape = NULL;
    struct adamw *opt = NULL;
    FILE *log = NULL, *dense = NULL;
    json_t *extra = NULL;
    char path[4200];
    int rc;
    if ((rc = task_create(&task, &c->task, e)) < 0)
        return rc;
    const int V = task_vocab(task), T = task_seq_len(task);
    if ((rc = check_config(c, V, T, e)) < 0)
        goto out;
    struct gptneox_config mc;
    gptneox_config_default(&mc, V, c->d_model, c->layers, c->heads, c->d_mlp);
    mc.rotary_pct = c->rotary_pct;
    mc.parallel_residual = c->parallel_residual;
    mc.max_positions = T;
    if ((rc = gptneox_create(&m, &mc, e)) < 0)
        goto out;
    mc = m->cfg;
    gptneox_init_random(m, c->seed, (float)c->init_std);
    struct adamw_config ac = {c->lr, c->beta1, c->beta2, c->eps, c->weight_decay};
    if ((rc = gptneox_grads_create(&g, m, e)) < 0 || (rc = gptneox_tape_create(&tape, e)) < 0 ||
        (rc = adamw_create(&opt, m, &ac, e)) < 0)
        goto out;
    if ((rc = path_mkdir_p(c->out, e)) < 0)
        goto out;
    extra = run_json(c, &mc);
    snprintf(path, sizeof path, "%s/task.json", c->out);
    if ((rc = task_write_json(task, path, extra, e)) < 0)
        goto out;
    snprintf(path, sizeof path, "%s/train_log.jsonl", c->out);
    if (!(log = fopen(path, "w"))) {
        rc = err_set(e, ERR_IO, path, "cannot open for writing: %s", strerror(errno));
        goto out;
    }
    if (c->eval_every > 0) {
        snprintf(path, sizeof path, "%s/eval_log.jsonl", c->out);
        if (!(dense = fopen(path, "w"))) {
            rc = err_set(e, ERR_IO, path, "cannot open for writing: %s", strerror(errno));
            goto out;
        }
    }
    const char *const *names = task_metric_names(task);
    double t0 = now_s(), last_loss = NAN;
    size_t ci = 0;
    for (long step = 0;; step++) {
        int is_ckpt = ci < c->ncheckpoints && c->checkpoints[ci] == step;
        int is_eval = dense && (step % c->eval_every == 0 || step == c->steps);
        struct task_metrics mt;
        if ((is_ckpt || is_eval) && (rc = task_eval(task, m, &mt, e)) < 0)
            goto out;
        if ((is_ckpt || is_eval) && dense &&
            (rc = log_metrics(dense, c->out, "eval_log.jsonl", step, names, &mt, e)) < 0)
            goto out;
        if (is_ckpt) {
            snprintf(path, sizeof path, "%s/step%ld", c->out, step);
            if ((rc = gptneox_save(m, path, ST_F32, e)) < 0)
                goto out;
            /* each revision carries the task metadata too, so a checkpoint
             * fetched on its own (hub layout) can still be scored */
            char tpath[sizeof path + 16];
            snprintf(tpath, sizeof tpath, "%s/task.json", path);
            if ((rc = task_write_json(task, tpath, extra, e)) < 0)
                goto out;
            if ((rc = log_metrics(log, c->out, "train_log.jsonl", step, names, &mt, e)) < 0)
                goto out;
            if (c->progress)
                fprintf(c->progress,
                        "step %7ld  %s %.4f  %s %.4f  %s %.4f  %s %.4f  [checkpoint, %.1f s]\n",
                        step, names[0], mt.train_loss, names[1], mt.train_acc, names[2],
                        mt.test_loss, names[3], mt.test_acc, now_s() - t0);
            ci++;
        } else if (c->progress && c->log_every > 0 && step % c->log_every == 0) {
            fprintf(c->progress, "step %7ld  batch loss %.4f  [%.1f s]\n", step, last_loss,
                    now_s() - t0);
        }
        if (step >= c->steps)
            break;
        const int *tok, *tgt;
        int B;
        task_batch(task, step, &tok, &tgt, &B);
        double loss;
        if ((rc = gptneox_forward_backward(m, g, tape, tok, tgt, B, T, &loss, e)) < 0)
            goto out;
        if (!isfinite(loss)) {
            rc = err_set(e, ERR_NUMERIC, c->out,
                         "the loss became %g at step %ld; try a smaller --lr", loss, step);
            goto out;
        }
        last_loss = loss;
        adamw_step(opt, m, g, train_lr_at(c, step));
    }
    rc = 0;
out:
    if (log && fclose(log) != 0 && rc == 0)
        rc = err_set(e, ERR_IO, c->out, "closing train_log.jsonl: %s", strerror(errno));
    if (dense && fclose(dense) != 0 && rc == 0)
        rc = err_set(e, ERR_IO, c->out, "closing eval_log.jsonl: %s", strerror(errno));
    json_decref(extra);
    adamw_free(opt);
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(m);
    task_free(task);
    return rc;
}
