/*
 * bench_llc - the battery item `llc` on one checkpoint, against one
 * forward+backward of the same model on one of its minibatches, in the
 * same run.
 *
 *     bench_llc CKPT_DIR [--task FILE] [--threads N] [--reps R]
 *                        [--chains N --draws N --burnin N]
 *
 * The data set is the item's: the run's task.json (--task) or the
 * generated eval set of `analyze` (seed 0).  Baselines, medians of R after
 * one warm-up: fwd_bwd_s, gptneox_forward_backward on one minibatch of the
 * item's shape (m sequences of T tokens), and fwd_s, the forward alone.
 * Then the item (battery_llc_run) R times with the LLC_* hyperparameters,
 * or with fewer chains / draws / burn-in when given: the cost is linear in
 * the steps, so
 *     per_step_s = (item_s - init_chunks * fwd_s) / steps
 * and full_item_s = init_chunks * fwd_s + LLC_CHAINS * (LLC_BURNIN +
 * LLC_DRAWS) * per_step_s is the default item's time per checkpoint
 * (measured when no override is given, extrapolated otherwise).
 * step_over_fwd_bwd = per_step_s / fwd_bwd_s is what an SGLD step costs
 * beyond its gradient (the noise and the update over every parameter).
 * Prints one JSON line.  Exit status: 0 ok, 1 the measurement failed,
 * 2 usage error.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "common/err.h"
#include "workers/battery/battery.h"
#include "workers/model/backward.h"
#include "workers/model/blas.h"
#include "workers/model/gptneox.h"
#include "workers/train/task.h"

#define MAX_REPS 20




int main(int argc, char **argv)
{
    blas_prepare(argv);
    const char *dir = NULL, *task_path = NULL;
    int threads = 2, reps = 3;
    struct llc_params p = llc_default_params;
    int overridden = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-') {
            dir = argv[i];
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_llc: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--task") == 0)
            task_path = v;
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(v);
        else if (strcmp(argv[i], "--chains") == 0)
            p.chains = atoi(v), overridden = 1;
        else if (strcmp(argv[i], "--draws") == 0)
            p.draws = atoi(v), overridden = 1;
        else if (strcmp(argv[i], "--burnin") == 0)
            p.burnin = atoi(v), overridden = 1;
        else {
            fprintf(stderr, "usage: bench_llc CKPT_DIR [--task FILE] [--threads N] [--reps R] "
                            "[--chains N --draws N --burnin N]\n");
            return 2;
        }
        i++;
    }
    if (!dir || threads < 1 || reps < 1 || reps > MAX_REPS || p.chains < 1 || p.draws < 1 ||
        p.burnin < 0) {
        fprintf(stderr, "bench_llc: a checkpoint, threads, reps (<= %d), chains and draws "
                        "positive, burn-in >= 0\n", MAX_REPS);
        return 2;
    }
    blas_set_threads(threads);
    struct err e;
    err_clear(&e);
    struct gptneox *m = NULL, *g = NULL;
    struct gptneox_tape *tape = NULL;
    struct task *t = NULL;
    int *eval = NULL, B = 0, T = 0, *tok = NULL, *tgt = NULL, n = 0, status = 1;
    if (gptneox_load(&m, dir, 0, &e) < 0 ||
        battery_eval_default(&eval, &B, &T, m->cfg.vocab_size, m->cfg.max_positions, 0, &e) < 0)
        goto fail;
    /* the item's data (battery_llc.c) and one minibatch of it for the baselines */
    const int *src_tok = eval, *src_tgt = NULL;
    int nsrc = B, Td = T;
    if (task_path) {
        if (task_load_json(&t, task_path, &e) < 0)
            goto fail;
        task_batch(t, 0, &src_tok, &src_tgt, &nsrc);
        Td = task_seq_len(t);
        n = task_get_config(t)->kind == TASK_MODADD ? nsrc : LLC_TASK_SEQS;
    } else {
        n = B;
    }
    int mb = p.batch_tokens / Td;
    mb = mb < 1 ? 1 : mb > n ? n : mb;
    tok = malloc(sizeof(int) * (size_t)mb * Td);
    tgt = malloc(sizeof(int) * (size_t)mb * Td);
    if (!tok || !tgt) {
        err_set(&e, ERR_NOMEM, NULL, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < (size_t)mb * Td; i++) /* rows repeat if the batch has fewer */
        tok[i] = src_tok[i % ((size_t)nsrc * Td)];
    if (src_tgt)
        for (size_t i = 0; i < (size_t)mb * Td; i++)
            tgt[i] = src_tgt[i % ((size_t)nsrc * Td)];
    else
        gptneox_next_token_targets(tgt, tok, mb, Td);
    if (gptneox_grads_create(&g, m, &e) < 0 || gptneox_tape_create(&tape, &e) < 0)
        goto fail;
    double tf[MAX_REPS], tb[MAX_REPS], ti[MAX_REPS], loss;
    for (int r = -1; r < reps; r++) {
        double t0 = now_s();
        if (gptneox_train_forward(m, tape, tok, tgt, mb, Td, &loss, &e) < 0)
            goto fail;
        double t1 = now_s();
        if (gptneox_forward_backward(m, g, tape, tok, tgt, mb, Td, &loss, &e) < 0)
            goto fail;
        double t2 = now_s();
        if (r >= 0) {
            tf[r] = t1 - t0;
            tb[r] = t2 - t1;
        }
    }
    struct battery_ctx ctx = {.model = m, .eval_tokens = eval, .eval_B = B, .eval_T = T,
                              .task_path = task_path};
    for (int r = 0; r < reps; r++) {
        struct rows rows;
        rows_init(&rows);
        rows_begin(&rows, "llc", 1);
        double t0 = now_s();
        int rc = battery_llc_run(&ctx, &p, &rows, &e);
        ti[r] = now_s() - t0;
        rows_free(&rows);
        if (rc < 0)
            goto fail;
    }
    double f = median(tf, reps), fb = median(tb, reps), it = median(ti, reps);
    int chunks = (n + mb - 1) / mb;
    long steps = (long)p.chains * (p.burnin + p.draws);
    long full_steps = (long)LLC_CHAINS * (LLC_BURNIN + LLC_DRAWS);
    double per_step = (it - chunks * f) / (double)steps;
    double full = overridden ? chunks * f + full_steps * per_step : it;
    size_t np = gptneox_params(m, NULL, 0), d = 0;
    struct gptneox_param *ps = malloc(np * sizeof *ps);
    if (ps) {
        gptneox_params(m, ps, np);
        for (size_t i = 0; i < np; i++)
            d += ps[i].n;
        free(ps);
    }
    printf("{\"bench\":\"llc\",\"checkpoint\":\"%s\",\"data\":\"%s\",\"parameters\":%zu,"
           "\"examples\":%d,\"T\":%d,\"batch\":%d,\"threads\":%d,\"reps\":%d,\"core\":\"%s\","
           "\"chains\":%d,\"burnin\":%d,\"draws\":%d,\"steps\":%ld,\"fwd_s\":%.5f,"
           "\"fwd_bwd_s\":%.5f,\"item_s\":%.3f,\"item_over_fwd_bwd\":%.1f,\"per_step_s\":%.5f,"
           "\"step_over_fwd_bwd\":%.3f,\"full_item_s\":%.2f,\"full_measured\":%s}\n",
           dir, task_path ? "task" : "eval", d, n, Td, mb, threads, reps, blas_corename(),
           p.chains, p.burnin, p.draws, steps, f, fb, it, it / fb, per_step, per_step / fb, full,
           overridden ? "false" : "true");
    status = 0;
    goto out;
fail:
    fprintf(stderr, "bench_llc: %s\n", err_str(&e));
out:
    gptneox_tape_free(tape);
    gptneox_free(g);
    task_free(t);
    free(tok);
    free(tgt);
    free(eval);
    gptneox_free(m);
    return status;
}
