/*
 * bench_sae - SAE training throughput (workers/battery/sae.h) and plain
 * sgemm on the same shapes, in the same run.
 *
 *     bench_sae train --d-in 512 --expansion 4 --k 32 --batch 256 --tokens 65536 --threads 2
 *     bench_sae sgemm --d-in 512 --expansion 4 --batch 256 --reps 20 --threads 2
 *
 * train: a TopK (or --arch relu) dictionary trained by sae_train on 16384
 * Gaussian rows (N(0,1), normalised as the item normalises), the item's
 * rate rule; one JSON line with seconds, tokens/s and the flops the five
 * products of a step do (2 n d_in d_sae each; AuxK steps do more).  Run it
 * under bench/shim/blas_timer.so to see its time inside sgemm.
 * sgemm: the five products of one step without AuxK (encode, decode, the
 * decoder's gradient, the codes' gradient, the encoder's gradient), each a
 * cblas_sgemm of the training call's shape and transposes, repeated; one
 * JSON line with the median seconds per step and GFLOP/s.
 * Exit status: 0 ok, 1 the measurement failed, 2 usage error.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "common/err.h"
#include "common/rng.h"
#include "workers/battery/sae.h"
#include "workers/model/blas.h"

#define ROWS 16384
#define MAX_REPS 200



static float *random_floats(size_t n, uint64_t seed)
{
    float *x = malloc(n * sizeof *x);
    uint64_t st = seed;
    for (size_t i = 0; x && i < n; i++) {
        double u1 = ((rng_next(&st) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (rng_next(&st) >> 11) / 9007199254740992.0;
        x[i] = (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
    return x;
}

int main(int argc, char **argv)
{
    blas_prepare(argv);
    if (argc < 2 || (strcmp(argv[1], "train") && strcmp(argv[1], "sgemm"))) {
        fprintf(stderr, "usage: bench_sae train|sgemm [--d-in N] [--expansion E] [--k K] "
                        "[--batch B] [--tokens N] [--reps R] [--threads T] [--arch topk|relu]\n");
        return 2;
    }
    int C = 512, E = 4, k = 32, batch = 256, reps = 20, threads = 2;
    long tokens = 65536;
    enum sae_arch arch = SAE_TOPK;
    for (int i = 2; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_sae: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--d-in") == 0)
            C = atoi(v);
        else if (strcmp(argv[i], "--expansion") == 0)
            E = atoi(v);
        else if (strcmp(argv[i], "--k") == 0)
            k = atoi(v);
        else if (strcmp(argv[i], "--batch") == 0)
            batch = atoi(v);
        else if (strcmp(argv[i], "--tokens") == 0)
            tokens = atol(v);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(v);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(argv[i], "--arch") == 0)
            arch = strcmp(v, "relu") == 0 ? SAE_RELU : SAE_TOPK;
        else {
            fprintf(stderr, "bench_sae: unknown option %s\n", argv[i]);
            return 2;
        }
        i++;
    }
    const int S = E * C;
    if (C < 1 || S < 1 || batch < 1 || tokens < 1 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_sae: sizes out of range\n");
        return 2;
    }
    blas_set_threads(threads);
    const double step_flop = 5.0 * 2.0 * batch * (double)C * S;
    struct err e;
    if (strcmp(argv[1], "train") == 0) {
        float *x = random_floats((size_t)ROWS * C, 1);
        struct sae *s = NULL;
        struct sae_trainer *tr = NULL;
        double scale;
        if (!x || sae_norm_scale(x, ROWS, C, &scale, &e) < 0 ||
            sae_create(&s, arch, C, S, k, &e) < 0) {
            fprintf(stderr, "bench_sae: %s\n", x ? err_str(&e) : "out of memory");
            return 1;
        }
        for (size_t i = 0; i < (size_t)ROWS * C; i++)
            x[i] = (float)(x[i] * scale);
        struct sae_train_config tc;
        sae_train_config_default(&tc, arch);
        tc.lr = 2e-4 * sqrt(16384.0 / S);
        tc.batch = batch;
        if (arch == SAE_RELU)
            tc.l1_coeff = 0.25 * sqrt((double)C);
        sae_init_cold(s, x, ROWS, 1);
        if (sae_trainer_create(&tr, s, &tc, &e) < 0) {
            fprintf(stderr, "bench_sae: %s\n", err_str(&e));
            return 1;
        }
        double t0 = now_s();
        struct sae_step_stats st;
        if (sae_train(tr, x, ROWS, tokens, &st, &e) < 0) {
            fprintf(stderr, "bench_sae: %s\n", err_str(&e));
            return 1;
        }
        double secs = now_s() - t0;
        printf("{\"kind\":\"train\",\"arch\":\"%s\",\"d_in\":%d,\"d_sae\":%d,\"k\":%d,\"batch\":%d,"
               "\"threads\":%d,\"tokens\":%ld,\"seconds\":%.6f,\"tokens_per_s\":%.1f,"
               "\"step_flop\":%.6g,\"steps\":%ld,\"final_l0\":%.2f}\n",
               sae_arch_name(arch), C, S, k, batch, threads, tokens, secs, tokens / secs,
               step_flop, (tokens + batch - 1) / batch, st.l0);
        sae_trainer_free(tr);
        sae_free(s);
        free(x);
        return 0;
    }
    /* plain sgemm: the five products of one step */
    float *xc = random_floats((size_t)batch * C, 2), *W_enc = random_floats((size_t)C * S, 3),
          *W_dec = random_floats((size_t)S * C, 4), *pre = random_floats((size_t)batch * S, 5),
          *xh = random_floats((size_t)batch * C, 6), *gd = random_floats((size_t)S * C, 7),
          *dz = random_floats((size_t)batch * S, 8), *ge = random_floats((size_t)C * S, 9);
    if (!xc || !W_enc || !W_dec || !pre || !xh || !gd || !dz || !ge) {
        fprintf(stderr, "bench_sae: out of memory\n");
        return 1;
    }
    double t[MAX_REPS + 1];
    for (int r = 0; r <= reps; r++) { /* rep 0 warms up */
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, S, C, 1.0f, xc, C, W_enc, S,
                    1.0f, pre, S);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, C, S, 1.0f, pre, S, W_dec, C,
                    1.0f, xh, C);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, C, batch, 1.0f, pre, S, xh, C,
                    0.0f, gd, C);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, S, C, 1.0f, xh, C, W_dec, C,
                    0.0f, dz, S);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, S, batch, 1.0f, xc, C, dz, S, 0.0f,
                    ge, S);
        t[r] = now_s() - t0;
    }
    qsort(t + 1, (size_t)reps, sizeof *t, cmp_double);
    double med = reps % 2 ? t[1 + reps / 2] : 0.5 * (t[reps / 2] + t[1 + reps / 2]);
    printf("{\"kind\":\"sgemm\",\"d_in\":%d,\"d_sae\":%d,\"batch\":%d,\"threads\":%d,"
           "\"step_seconds\":%.6f,\"gflops\":%.3f,\"step_flop\":%.6g}\n",
           C, S, batch, threads, med, step_flop / med * 1e-9, step_flop);
    free(xc);
    free(W_enc);
    free(W_dec);
    free(pre);
    free(xh);
    free(gd);
    free(dz);
    free(ge);
    return 0;
}
