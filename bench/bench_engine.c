/*
 * bench_engine - timings of the analysis engine, one JSON line per run.
 *
 * Each subcommand measures one thing and prints one line of JSON to stdout;
 * bench/run calls it under different OPENBLAS_CORETYPE settings and thread
 * counts and turns the lines into the tables of `make bench`.  Every timing
 * is the median of R repetitions after one untimed warm-up (the machine is
 * small and noisy), taken with clock_gettime(CLOCK_MONOTONIC).
 *
 *     bench_engine forward --preset pythia-70m --batch 8 --ctx 256 --threads 2 --reps 5
 *     bench_engine sgemm   --preset pythia-70m --batch 8 --ctx 256 --threads 2 --reps 5
 *     bench_engine phases  --preset pythia-70m --batch 8 --ctx 256 --threads 2 --reps 3
 *     bench_engine load    --dir build/bench/ckpt --reps 5
 *     bench_engine f16     --mb 256 --reps 5
 *
 * forward: the engine's forward pass (no hooks) on random weights and tokens:
 *          tokens/s, GFLOP/s by gptneox_forward_flops, peak RSS.
 * sgemm:   the baseline: the same matrix products as plain cblas_sgemm calls
 *          (per layer qkv, attention output, MLP in and out; then the
 *          unembedding), weights (M,K) transposed as the model stores them.
 * phases:  where a forward's time goes: the forward rebuilt from kernels.h
 *          with each phase timed, beside the engine's own forward (the
 *          two should agree; if not, the engine does something else).
 * load:    gptneox_load + gptneox_free of a checkpoint directory (read-only
 *          and writable), against read(2) of its safetensors file into a
 *          buffer already touched and into a new one; and where a read-only
 *          load's time goes: mapping the file and touching each page once,
 *          the finiteness check over every weight (tensor_find_nonfinite),
 *          and the same check as a plain isfinite loop (how it was done
 *          before: the "before" of that step, measured in the same run).
 * f16:     tensor_to_f32 from F16: GB/s written and read.
 *
 * Exit status: 0 ok, 1 the measurement failed, 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "bench/bench_util.h"
#include "common/err.h"
#include "workers/model/attention.h"
#include "workers/model/backward.h"
#include "workers/model/blas.h"
#include "workers/model/config.h"
#include "workers/model/gptneox.h"
#include "workers/model/kernels.h"
#include "workers/model/pool.h"
#include "workers/model/safetensors.h"
#include "workers/model/tensor.h"

#define MAX_REPS 100

static const char usage[] =
    "usage: bench_engine forward|sgemm|phases --preset P --batch B --ctx T --threads N --reps R\n"
    "       bench_engine load --dir CKPT_DIR --reps R\n"
    "       bench_engine f16 --mb M --reps R\n";

/* Parsed command line; fields a subcommand does not use keep their defaults. */
struct opts {
    const char *preset;
    const char *dir;
    int B, T, threads, reps, mb;
};

/* ---- helpers ---- */



/* Median of x (n); sorts x in place. */

/* CPU seconds of this process (user + system, every thread): on a machine
 * shared with other work, the time on a CPU rather than waiting for one. */
static double cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0.0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static double peak_rss_mib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return -1.0;
    return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* x (n) <- uniform in [-a, a). */
static void fill_uniform(float *x, size_t n, float a, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        x[i] = a * (2.0f * (float)(rng_next(&s) >> 40) / 16777216.0f - 1.0f);
}

static float *alloc_floats(size_t n)
{
    return aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
}

/* Print the fields every model-shaped result shares (no braces). */
static void print_common(const struct opts *o, const struct gptneox_config *cfg)
{
    const char *env = getenv("OPENBLAS_CORETYPE");
    printf("\"preset\":\"%s\",\"B\":%d,\"T\":%d,\"C\":%d,\"L\":%d,\"threads\":%d,\"reps\":%d,"
           "\"core\":\"%s\",\"coretype_env\":\"%s\"",
           o->preset, o->B, o->T, cfg->d_model, cfg->n_layers, o->threads, o->reps,
           blas_corename(), env ? env : "");
}

static int model_setup(const struct opts *o, struct gptneox_config *cfg, struct gptneox **m,
                       int **tokens)
{
    struct err e;
    *m = NULL;
    *tokens = NULL;
    if (gptneox_config_preset(cfg, o->preset) < 0) {
        fprintf(stderr, "bench_engine: unknown preset '%s'\n", o->preset);
        return -1;
    }
    if (gptneox_create(m, cfg, &e) < 0) {
        fprintf(stderr, "bench_engine: %s\n", err_str(&e));
        return -1;
    }
    gptneox_init_random(*m, 1, 0.02f);
    size_t N = (size_t)o->B * o->T;
    *tokens = malloc(N * sizeof **tokens);
    if (!*tokens) {
        gptneox_free(*m);
        *m = NULL;
        fprintf(stderr, "bench_engine: out of memory\n");
        return -1;
    }
    uint64_t s = 7;
    for (size_t i = 0; i < N; i++)
        (*tokens)[i] = (int)(rng_next(&s) % (uint64_t)cfg->vocab_size);
    return 0;
}

/* ---- forward ---- */

static int run_forward(const struct opts *o)
{
    struct gptneox_config cfg;
    struct gptneox *m = NULL;
    int *tokens = NULL;
    double t[MAX_REPS], tc[MAX_REPS];
    struct err e;
    int rc = 1;

    if (model_setup(o, &cfg, &m, &tokens) < 0)
        goto out;
    for (int r = -1; r < o->reps; r++) { /* r == -1: warm-up */
        double t0 = now_s(), c0 = cpu_s();
        if (gptneox_forward(m, tokens, o->B, o->T, NULL, 0, &e) < 0) {
            fprintf(stderr, "bench_engine: forward: %s\n", err_str(&e));
            goto out;
        }
        if (r >= 0) {
            t[r] = now_s() - t0;
            tc[r] = cpu_s() - c0;
        }
    }
    double cs = median(tc, o->reps);
    double s = median(t, o->reps); /* t is sorted now: t[0] is the fastest */
    double flops = gptneox_forward_flops(&cfg, o->B, o->T);
    printf("{\"bench\":\"forward\",");
    print_common(o, &cfg);
    printf(",\"seconds\":%.6f,\"min_seconds\":%.6f,\"cpu_seconds\":%.6f,\"tokens_per_s\":%.1f,"
           "\"gflop\":%.3f,\"gflops\":%.2f,\"peak_rss_mib\":%.1f}\n",
           s, t[0], cs, (double)o->B * o->T / s, flops * 1e-9, flops * 1e-9 / s, peak_rss_mib());
    rc = 0;
out:
    free(tokens);
    gptneox_free(m);
    return rc;
}

/* ---- sgemm baseline ---- */

/* One product of the forward: out (N,M) = inp (N,K) @ w (M,K)^T, done
 * `count` times over distinct weights (one per layer). */
struct gemm_shape {
    int K, M, count;
};

static int run_sgemm(const struct opts *o)
{
    struct gptneox_config cfg;
    double t[MAX_REPS], tc[MAX_REPS];
    float *inp = NULL, *out = NULL, *w[5] = {NULL, NULL, NULL, NULL, NULL};
    int rc = 1;

    if (gptneox_config_preset(&cfg, o->preset) < 0) {
        fprintf(stderr, "bench_engine: unknown preset '%s'\n", o->preset);
        return 1;
    }
    const int N = o->B * o->T, C = cfg.d_model, F = cfg.d_mlp, V = cfg.vocab_size;
    const int L = cfg.n_layers;
    const struct gemm_shape shapes[5] = {
        {C, 3 * C, L}, /* qkv */
        {C, C, L},     /* attention output */
        {C, F, L},     /* MLP in */
        {F, C, L},     /* MLP out */
        {C, V, 1},     /* unembedding */
    };
    double flops = 0.0;
    size_t max_out = 0;
    for (int i = 0; i < 5; i++) {
        const struct gemm_shape *g = &shapes[i];
        flops += 2.0 * N * g->K * g->M * g->count;
        if ((size_t)N * g->M > max_out)
            max_out = (size_t)N * g->M;
        w[i] = alloc_floats((size_t)g->count * g->M * g->K);
        if (!w[i])
            goto nomem;
        fill_uniform(w[i], (size_t)g->count * g->M * g->K, 0.03f, 11 + (uint64_t)i);
    }
    inp = alloc_floats((size_t)N * (F > C ? F : C));
    out = alloc_floats(max_out);
    if (!inp || !out)
        goto nomem;
    fill_uniform(inp, (size_t)N * (F > C ? F : C), 1.0f, 3);
    memset(out, 0, max_out * sizeof *out);

    /* warm-up: every shape once (threads started, buffers touched) */
    for (int i = 0; i < 5; i++) {
        const struct gemm_shape *g = &shapes[i];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, g->M, g->K, 1.0f, inp, g->K,
                    w[i], g->K, 0.0f, out, g->M);
    }
    for (int r = 0; r < o->reps; r++) {
        double t0 = now_s(), c0 = cpu_s();
        /* layer by layer, as the forward orders them */
        for (int l = 0; l < L; l++)
            for (int i = 0; i < 4; i++) {
                const struct gemm_shape *g = &shapes[i];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, g->M, g->K, 1.0f, inp,
                            g->K, w[i] + (size_t)l * g->M * g->K, g->K, 0.0f, out, g->M);
            }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, V, C, 1.0f, inp, C, w[4], C,
                    0.0f, out, V);
        t[r] = now_s() - t0;
        tc[r] = cpu_s() - c0;
    }
    double s = median(t, o->reps);
    printf("{\"bench\":\"sgemm\",");
    print_common(o, &cfg);
    printf(",\"seconds\":%.6f,\"cpu_seconds\":%.6f,\"gflop\":%.3f,\"gflops\":%.2f}\n", s,
           median(tc, o->reps), flops * 1e-9, flops * 1e-9 / s);
    rc = 0;
    goto out;
nomem:
    fprintf(stderr, "bench_engine: out of memory\n");
out:
    for (int i = 0; i < 5; i++)
        free(w[i]);
    free(out);
    free(inp);
    return rc;
}

/* ---- phases: the forward rebuilt from kernels.h, each phase timed ---- */

enum phase {
    PH_EMBED,
    PH_LAYERNORM,
    PH_QKV,
    PH_ROTARY,
    PH_ATTENTION,
    PH_ATTN_OUT,
    PH_MLP_IN,
    PH_GELU,
    PH_MLP_OUT,
    PH_RESIDUAL,
    PH_UNEMBED,
    PH_COUNT
};

static const char *const phase_names[PH_COUNT] = {
    "embed",  "layernorm", "qkv",     "rotary",   "attention", "attn_out",
    "mlp_in", "gelu",      "mlp_out", "residual", "unembed",
};

static void add_inplace(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* Buffers of one rebuilt forward at N = B*T rows. */
struct phase_bufs {
    float *x, *ln, *qkv, *att, *z, *attn_out, *h, *mlp_out, *logits, *cosv, *sinv;
};

static void phase_bufs_free(struct phase_bufs *p)
{
    float **f[] = {&p->x, &p->ln,      &p->qkv,    &p->att,     &p->z,   &p->attn_out,
                   &p->h, &p->mlp_out, &p->logits, &p->cosv,    &p->sinv};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        free(*f[i]);
        *f[i] = NULL;
    }
}

static int phase_bufs_alloc(struct phase_bufs *p, const struct gptneox_config *c, int B, int T)
{
    const size_t N = (size_t)B * T, C = (size_t)c->d_model;
    const size_t rd2 = (size_t)(c->rotary_ndims / 2 > 0 ? c->rotary_ndims / 2 : 1);
    memset(p, 0, sizeof *p);
    p->x = alloc_floats(N * C);
    p->ln = alloc_floats(N * C);
    p->qkv = alloc_floats(N * 3 * C);
    p->att = alloc_floats((size_t)pool_threads() * attention_scratch_floats(T, c->d_head));
    p->z = alloc_floats(N * C);
    p->attn_out = alloc_floats(N * C);
    p->h = alloc_floats(N * (size_t)c->d_mlp);
    p->mlp_out = alloc_floats(N * C);
    p->logits = alloc_floats(N * (size_t)c->vocab_size);
    p->cosv = alloc_floats((size_t)T * rd2);
    p->sinv = alloc_floats((size_t)T * rd2);
    if (!p->x || !p->ln || !p->qkv || !p->att || !p->z || !p->attn_out || !p->h ||
        !p->mlp_out || !p->logits || !p->cosv || !p->sinv) {
        phase_bufs_free(p);
        return -1;
    }
    rotary_tables(p->cosv, p->sinv, T, c->rotary_ndims, c->rotary_base);
    return 0;
}

/* One forward with every phase timed: acc[phase] += seconds. Parallel or
 * sequential residual as the config says; exact GELU or tanh. */
static void phased_forward(const struct gptneox *m, struct phase_bufs *p, const int *tokens,
                           int B, int T, double acc[PH_COUNT])
{
    const struct gptneox_config *c = &m->cfg;
    const int C = c->d_model, NH = c->n_heads, HS = c->d_head, F = c->d_mlp;
    const int V = c->vocab_size, N = B * T;
    const float eps = (float)c->layer_norm_eps;
    double t0 = now_s(), t1;
#define LAP(ph) (t1 = now_s(), acc[ph] += t1 - t0, t0 = t1)

    for (int n = 0; n < N; n++)
        memcpy(p->x + (size_t)n * C, m->embed + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
    LAP(PH_EMBED);
    for (int l = 0; l < c->n_layers; l++) {
        const struct gptneox_layer *Ly = &m->layers[l];
        layernorm_forward(p->ln, p->x, Ly->ln1_w, Ly->ln1_b, N, C, eps);
        LAP(PH_LAYERNORM);
        matmul_forward(p->qkv, p->ln, Ly->qkv_w, Ly->qkv_b, N, C, 3 * C);
        LAP(PH_QKV);
        rotary_forward(p->qkv, p->cosv, p->sinv, B, T, NH, HS, c->rotary_ndims);
        LAP(PH_ROTARY);
        attention_forward(p->z, NULL, p->qkv, p->att, B, T, NH, HS);
        LAP(PH_ATTENTION);
        matmul_forward(p->attn_out, p->z, Ly->attn_w, Ly->attn_b, N, C, C);
        LAP(PH_ATTN_OUT);
        if (!c->parallel_residual) {
            add_inplace(p->x, p->attn_out, (size_t)N * C);
            LAP(PH_RESIDUAL);
        }
        layernorm_forward(p->ln, p->x, Ly->ln2_w, Ly->ln2_b, N, C, eps);
        LAP(PH_LAYERNORM);
        matmul_forward(p->h, p->ln, Ly->fc_w, Ly->fc_b, N, C, F);
        LAP(PH_MLP_IN);
        if (c->act == ACT_GELU)
            gelu_forward(p->h, (size_t)N * F);
        else
            gelu_tanh_forward(p->h, (size_t)N * F);
        LAP(PH_GELU);
        matmul_forward(p->mlp_out, p->h, Ly->proj_w, Ly->proj_b, N, F, C);
        LAP(PH_MLP_OUT);
        if (c->parallel_residual)
            add_inplace(p->x, p->attn_out, (size_t)N * C);
        add_inplace(p->x, p->mlp_out, (size_t)N * C);
        LAP(PH_RESIDUAL);
    }
    layernorm_forward(p->ln, p->x, m->lnf_w, m->lnf_b, N, C, eps);
    LAP(PH_LAYERNORM);
    matmul_forward(p->logits, p->ln, m->unembed, NULL, N, C, V);
    LAP(PH_UNEMBED);
#undef LAP
}

static int run_phases(const struct opts *o)
{
    struct gptneox_config cfg;
    struct gptneox *m = NULL;
    struct phase_bufs p;
    int *tokens = NULL, have_bufs = 0, rc = 1;
    double ph[PH_COUNT][MAX_REPS], tot[MAX_REPS], fw[MAX_REPS];
    struct err e;

    if (model_setup(o, &cfg, &m, &tokens) < 0)
        goto out;
    if (phase_bufs_alloc(&p, &cfg, o->B, o->T) < 0) {
        fprintf(stderr, "bench_engine: out of memory\n");
        goto out;
    }
    have_bufs = 1;
    for (int r = -1; r < o->reps; r++) {
        double acc[PH_COUNT] = {0};
        double t0 = now_s();
        phased_forward(m, &p, tokens, o->B, o->T, acc);
        double t1 = now_s();
        if (gptneox_forward(m, tokens, o->B, o->T, NULL, 0, &e) < 0)
            goto fail;
        double t2 = now_s();
        if (r < 0)
            continue;
        for (int k = 0; k < PH_COUNT; k++)
            ph[k][r] = acc[k];
        tot[r] = t1 - t0;
        fw[r] = t2 - t1;
    }

    /* FLOPs per phase, as gptneox_forward_flops counts them */
    const double N = (double)o->B * o->T, C = cfg.d_model, F = cfg.d_mlp, V = cfg.vocab_size;
    const double L = cfg.n_layers;
    double att = attention_flops(o->B, o->T, cfg.n_heads, cfg.d_head) * L;
    double fl[PH_COUNT] = {0};
    fl[PH_QKV] = L * 2 * N * C * 3 * C;
    fl[PH_ATTN_OUT] = L * 2 * N * C * C;
    fl[PH_MLP_IN] = L * 2 * N * C * F;
    fl[PH_MLP_OUT] = L * 2 * N * F * C;
    fl[PH_ATTENTION] = att;
    fl[PH_UNEMBED] = 2 * N * C * V;

    /* the rebuilt forward must compute what the engine does */
    const float *ref = gptneox_logits(m);
    double maxdiff = 0.0;
    for (size_t i = 0; i < (size_t)N * cfg.vocab_size; i++) {
        double d = fabs((double)p.logits[i] - (double)ref[i]);
        maxdiff = d > maxdiff ? d : maxdiff;
    }

    double s_tot = median(tot, o->reps);
    printf("{\"bench\":\"phases\",");
    print_common(o, &cfg);
    printf(",\"phased_seconds\":%.6f,\"forward_seconds\":%.6f,\"logits_maxdiff\":%.3g,"
           "\"phases\":{",
           s_tot, median(fw, o->reps), maxdiff);
    for (int k = 0; k < PH_COUNT; k++) {
        double s = median(ph[k], o->reps);
        printf("%s\"%s\":{\"seconds\":%.6f,\"share\":%.4f", k ? "," : "", phase_names[k], s,
               s / s_tot);
        if (fl[k] > 0)
            printf(",\"gflops\":%.2f", fl[k] * 1e-9 / s);
        printf("}");
    }
    printf("}}\n");
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_engine: forward: %s\n", err_str(&e));
out:
    if (have_bufs)
        phase_bufs_free(&p);
    free(tokens);
    gptneox_free(m);
    return rc;
}

/* ---- load ---- */

/* Read the whole file at `path` into buf (cap bytes) with read(2).
 * Returns the bytes read, or -1 with errno set. */
static long long read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < cap) {
        ssize_t k = read(fd, buf + got, cap - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
        if (k == 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    return (long long)got;
}

/* A plain isfinite scan (the finiteness check as it was before it was
 * vectorised); noinline so the compiler keeps it as written. */
static __attribute__((noinline)) size_t scan_scalar(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return (size_t)-1;
}

/* Seconds to map the checkpoint and touch every page once (no check). */
static double map_touch_seconds(const char *dir, volatile unsigned *sink)
{
    struct st_set *set = NULL;
    struct err e;
    double t0 = now_s();
    if (st_set_open(&set, dir, &e) < 0)
        return -1.0;
    unsigned acc = 0;
    for (size_t i = 0; i < st_set_count(set); i++) {
        const struct st_tensor *t = st_set_get(set, i);
        const unsigned char *p = t->data;
        for (size_t off = 0; off < t->nbytes; off += 4096)
            acc += p[off];
    }
    st_set_free(set);
    *sink += acc;
    return now_s() - t0;
}

static int run_load(const struct opts *o)
{
    char path[4096];
    char *buf = NULL;
    double t_ro[MAX_REPS], t_rw[MAX_REPS], t_rd[MAX_REPS], t_fresh[MAX_REPS];
    double t_map[MAX_REPS], t_scan[MAX_REPS], t_scalar[MAX_REPS];
    volatile unsigned sink = 0;
    struct stat sb;
    struct err e;
    int rc = 1;

    snprintf(path, sizeof path, "%s/model.safetensors", o->dir);
    if (stat(path, &sb) < 0) {
        fprintf(stderr, "bench_engine: %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t size = (size_t)sb.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        fprintf(stderr, "bench_engine: out of memory\n");
        return 1;
    }
    for (int r = -1; r < o->reps; r++) {
        struct gptneox *m = NULL;
        double t0 = now_s();
        if (gptneox_load(&m, o->dir, 0, &e) < 0)
            goto fail;
        gptneox_free(m);
        double t1 = now_s();
        if (gptneox_load(&m, o->dir, GPTNEOX_LOAD_WRITABLE, &e) < 0)
            goto fail;
        gptneox_free(m);
        double t2 = now_s();
        long long got = read_file(path, buf, size);
        double t3 = now_s();
        /* the same into a new buffer: pays first-touch page faults, as the
         * writable load does for its weight block */
        char *fresh = malloc(size ? size : 1);
        long long got2 = fresh ? read_file(path, fresh, size) : -1;
        free(fresh);
        double t4 = now_s();
        if (got != (long long)size || got2 != (long long)size) {
            fprintf(stderr, "bench_engine: %s: short read\n", path);
            goto out;
        }
        /* the parts of a read-only load (the file is in the page cache) */
        double tm = map_touch_seconds(o->dir, &sink);
        if (gptneox_load(&m, o->dir, 0, &e) < 0)
            goto fail;
        struct gptneox_param ps[1024];
        size_t np = gptneox_params(m, ps, 1024);
        double t5 = now_s();
        for (size_t i = 0; i < np && i < 1024; i++)
            sink += (unsigned)tensor_find_nonfinite(ps[i].data, ps[i].n);
        double t6 = now_s();
        for (size_t i = 0; i < np && i < 1024; i++)
            sink += (unsigned)scan_scalar(ps[i].data, ps[i].n);
        double t7 = now_s();
        gptneox_free(m);
        if (r < 0)
            continue;
        t_map[r] = tm;
        t_scan[r] = t6 - t5;
        t_scalar[r] = t7 - t6;
        t_fresh[r] = t4 - t3;
        t_ro[r] = t1 - t0;
        t_rw[r] = t2 - t1;
        t_rd[r] = t3 - t2;
    }
    double ro = median(t_ro, o->reps), rw = median(t_rw, o->reps), rd = median(t_rd, o->reps);
    double fr = median(t_fresh, o->reps);
    printf("{\"bench\":\"load\",\"file\":\"%s\",\"bytes\":%zu,\"reps\":%d,\"load_seconds\":%.6f,"
           "\"load_writable_seconds\":%.6f,\"read_seconds\":%.6f,\"read_gbps\":%.3f,"
           "\"read_fresh_seconds\":%.6f,\"load_over_read\":%.3f,"
           "\"load_writable_over_read_fresh\":%.3f,\"map_touch_seconds\":%.6f,"
           "\"check_seconds\":%.6f,\"check_scalar_seconds\":%.6f,\"peak_rss_mib\":%.1f}\n",
           path, size, o->reps, ro, rw, rd, (double)size / rd * 1e-9, fr, ro / rd, rw / fr,
           median(t_map, o->reps), median(t_scan, o->reps), median(t_scalar, o->reps),
           peak_rss_mib());
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_engine: load: %s\n", err_str(&e));
out:
    free(buf);
    return rc;
}

/* ---- F16 -> F32 ---- */

static int run_f16(const struct opts *o)
{
    const size_t n = (size_t)o->mb * 1024 * 1024 / 2;
    uint16_t *src = malloc(n * sizeof *src);
    float *dst = alloc_floats(n);
    double t[MAX_REPS];
    int rc = 1;

    if (!src || !dst) {
        fprintf(stderr, "bench_engine: out of memory\n");
        goto out;
    }
    uint64_t s = 5;
    for (size_t i = 0; i < n; i++) /* finite values of every exponent a model has */
        src[i] = f32_to_f16((float)((int64_t)(rng_next(&s) % 2000001) - 1000000) * 1e-4f);
    for (int r = -1; r < o->reps; r++) {
        double t0 = now_s();
        if (tensor_to_f32(dst, src, ST_F16, n) < 0) {
            fprintf(stderr, "bench_engine: tensor_to_f32 failed\n");
            goto out;
        }
        if (r >= 0)
            t[r] = now_s() - t0;
    }
    double sec = median(t, o->reps);
    printf("{\"bench\":\"f16\",\"elements\":%zu,\"reps\":%d,\"seconds\":%.6f,"
           "\"gbps_out\":%.3f,\"gbps_in\":%.3f,\"check\":%g}\n",
           n, o->reps, sec, (double)n * 4 / sec * 1e-9, (double)n * 2 / sec * 1e-9,
           (double)dst[n / 2]);
    rc = 0;
out:
    free(dst);
    free(src);
    return rc;
}

/* ---- main ---- */

static int parse_int(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v <= 0 || v > 1 << 30)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_opts(struct opts *o, int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[++i];
        int bad = 0;
        if (strcmp(k, "--preset") == 0)
            o->preset = v;
        else if (strcmp(k, "--dir") == 0)
            o->dir = v;
        else if (strcmp(k, "--batch") == 0)
            bad = parse_int(v, &o->B);
        else if (strcmp(k, "--ctx") == 0)
            bad = parse_int(v, &o->T);
        else if (strcmp(k, "--threads") == 0)
            bad = parse_int(v, &o->threads);
        else if (strcmp(k, "--reps") == 0)
            bad = parse_int(v, &o->reps);
        else if (strcmp(k, "--mb") == 0)
            bad = parse_int(v, &o->mb);
        else
            bad = -1;
        if (bad)
            return -1;
    }
    return o->reps <= MAX_REPS ? 0 : -1;
}

int main(int argc, char **argv)
{
    /* Honours OPENBLAS_CORETYPE and CKPTD_BLAS_AUTO=0 as the worker does. */
    blas_prepare(argv);
    struct opts o = {"pythia-70m", NULL, 8, 256, 1, 3, 256};
    if (argc < 2 || parse_opts(&o, argc, argv) < 0) {
        fputs(usage, stderr);
        return 2;
    }
    blas_set_threads(o.threads);
    const char *cmd = argv[1];
    if (strcmp(cmd, "forward") == 0)
        return run_forward(&o);
    if (strcmp(cmd, "sgemm") == 0)
        return run_sgemm(&o);
    if (strcmp(cmd, "phases") == 0)
        return run_phases(&o);
    if (strcmp(cmd, "load") == 0) {
        if (!o.dir) {
            fputs(usage, stderr);
            return 2;
        }
        return run_load(&o);
    }
    if (strcmp(cmd, "f16") == 0)
        return run_f16(&o);
    fputs(usage, stderr);
    return 2;
}
