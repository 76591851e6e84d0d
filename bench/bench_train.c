/*
 * bench_train - a training step against a forward of the same model, in
 * the same run: the ratio is what matters (goal: one training step, i.e.
 * forward + backward + AdamW, at most 3.5 forwards).
 *
 *     bench_train --preset pythia-14m --batch 8 --ctx 128 --threads 2 --reps 5
 *
 * Random weights and tokens; every timing is the median of R repetitions
 * after one untimed warm-up, clock_gettime(CLOCK_MONOTONIC).  Prints one
 * JSON line: forward seconds (gptneox_forward, logits only), forward+backward
 * seconds (gptneox_forward_backward: the loss and every gradient), AdamW
 * seconds, tokens/s of each and the step/forward ratio.
 * Exit status: 0 ok, 1 the measurement failed, 2 usage error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "common/err.h"
#include "workers/model/backward.h"
#include "workers/model/blas.h"
#include "workers/model/gptneox.h"
#include "workers/train/adamw.h"

#define MAX_REPS 50




int main(int argc, char **argv)
{
    blas_prepare(argv);
    const char *preset = "pythia-14m";
    int B = 8, T = 128, threads = 2, reps = 5;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_train: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--preset") == 0)
            preset = v;
        else if (strcmp(argv[i], "--batch") == 0)
            B = atoi(v);
        else if (strcmp(argv[i], "--ctx") == 0)
            T = atoi(v);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(v);
        else {
            fprintf(stderr, "usage: bench_train --preset P --batch B --ctx T --threads N --reps R\n");
            return 2;
        }
        i++;
    }
    if (B < 1 || T < 2 || threads < 1 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_train: batch, ctx, threads and reps (<= %d) must be positive\n",
                MAX_REPS);
        return 2;
    }
    blas_set_threads(threads);
    struct gptneox_config cfg;
    if (gptneox_config_preset(&cfg, preset) < 0) {
        fprintf(stderr, "bench_train: unknown preset '%s'\n", preset);
        return 2;
    }
    struct err e;
    struct gptneox *m = NULL, *g = NULL;
    struct gptneox_tape *tape = NULL;
    struct adamw *opt = NULL;
    struct adamw_config ac = {1e-4, 0.9, 0.95, 1e-8, 0.01};
    int *tok = malloc((size_t)B * T * sizeof(int)), *tgt = malloc((size_t)B * T * sizeof(int));
    int status = 1;
    if (!tok || !tgt || gptneox_create(&m, &cfg, &e) < 0 || gptneox_grads_create(&g, m, &e) < 0 ||
        gptneox_tape_create(&tape, &e) < 0 || adamw_create(&opt, m, &ac, &e) < 0) {
        fprintf(stderr, "bench_train: set-up failed\n");
        goto out;
    }
    gptneox_init_random(m, 1, 0.02f);
    uint64_t s = 42;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int)((s >> 33) % (uint64_t)cfg.vocab_size);
    }
    gptneox_next_token_targets(tgt, tok, B, T);
    double tf[MAX_REPS], tb[MAX_REPS], ta[MAX_REPS], loss = 0;
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        double t0 = now_s();
        if (gptneox_forward(m, tok, B, T, NULL, 0, &e) < 0)
            goto fail;
        double t1 = now_s();
        if (gptneox_forward_backward(m, g, tape, tok, tgt, B, T, &loss, &e) < 0)
            goto fail;
        double t2 = now_s();
        adamw_step(opt, m, g, 1e-6);
        double t3 = now_s();
        if (r >= 0) {
            tf[r] = t1 - t0;
            tb[r] = t2 - t1;
            ta[r] = t3 - t2;
        }
    }
    double f = median(tf, reps), b = median(tb, reps), a = median(ta, reps);
    printf("{\"bench\":\"train\",\"preset\":\"%s\",\"B\":%d,\"T\":%d,\"threads\":%d,\"reps\":%d,"
           "\"core\":\"%s\",\"forward_s\":%.5f,\"forward_backward_s\":%.5f,\"adamw_s\":%.5f,"
           "\"forward_tok_s\":%.0f,\"train_tok_s\":%.0f,\"step_over_forward\":%.3f}\n",
           preset, B, T, threads, reps, blas_corename(), f, b, a, B * T / f, B * T / (b + a),
           (b + a) / f);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "bench_train: %s\n", err_str(&e));
out:
    adamw_free(opt);
    gptneox_tape_free(tape);
    gptneox_free(g);
    gptneox_free(m);
    free(tok);
    free(tgt);
    return status;
}
