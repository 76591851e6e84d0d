/* SGLD estimate of the local learning coefficient; the definitions, the
 * random streams and the exact update are in sgld.h. */
#include "workers/battery/sgld.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/rng.h"

#define SGLD_MAX_THREADS 64

double sgld_default_nbeta(int m)
{
    return m > 1 ? (double)m / log((double)m) : 1.0;
}

void sgld_result_free(struct sgld_result *r)
{
    if (!r)
        return;
    free(r->trace);
    free(r->ndraws);
    free(r->diverged_step);
    free(r->llc_chain);
    memset(r, 0, sizeof *r);
}

static int check_config(const struct sgld_config *c, size_t d, int n, struct err *e)
{
    if (d == 0)
        return err_set(e, ERR_INVALID, "sgld", "no parameters to sample");
    if (n < 1)
        return err_set(e, ERR_INVALID, "sgld", "no examples (n = %d)", n);
    if (!(c->nbeta > 0) || !isfinite(c->nbeta))
        return err_set(e, ERR_INVALID, "sgld", "nbeta %g must be positive and finite", c->nbeta);
    if (!(c->gamma >= 0) || !isfinite(c->gamma))
        return err_set(e, ERR_INVALID, "sgld", "gamma %g must be >= 0 and finite", c->gamma);
    if (!(c->epsilon > 0) || !isfinite(c->epsilon))
        return err_set(e, ERR_INVALID, "sgld", "epsilon %g must be positive and finite",
                       c->epsilon);
    if (c->chains < 1 || c->draws < 1 || c->burnin < 0)
        return err_set(e, ERR_INVALID, "sgld",
                       "chains %d, draws %d, burn-in %d: need at least one chain and draw, "
                       "and no negative burn-in",
                       c->chains, c->draws, c->burnin);
    if (c->batch < 1 || c->batch > n)
        return err_set(e, ERR_INVALID, "sgld", "minibatch of %d examples out of 1..%d",
                       c->batch, n);
    if (!(c->max_rise > 0))
        return err_set(e, ERR_INVALID, "sgld", "max_rise %g must be positive", c->max_rise);
    return 0;
}

/* The next m example indices of a chain's minibatch stream (sgld.h). */
struct batcher {
    uint64_t state;
    int *perm;
    int n, pos;
};

static void next_batch(struct batcher *b, int *idx, int m)
{
    for (int k = 0; k < m; k++) {
        if (b->pos == b->n) {
            for (int i = 0; i < b->n; i++)
                b->perm[i] = i;
            for (int i = b->n - 1; i > 0; i--) {
                int j = (int)rng_below(&b->state, (uint32_t)i + 1);
                int t = b->perm[i];
                b->perm[i] = b->perm[j];
                b->perm[j] = t;
            }
            b->pos = 0;
        }
        idx[k] = b->perm[b->pos++];
    }
}

/* What a step's update needs; the blocks are shared out among threads. */
struct step_job {
    float *w;
    const float *w0, *g;
    size_t d;
    uint64_t key; /* k_c + t * 2^32 */
    float gamma_f, nbeta_f, halfeps_f, sqrteps_f;
    size_t first, stride; /* this worker's blocks: first, first + stride, ... */
};

/* The update of noise block b (sgld.h). */
static void step_block(const struct step_job *j, size_t b)
{
    uint64_t s0 = j->key + b, s = rng_next(&s0);
    size_t lo = b * SGLD_NOISE_BLOCK, hi = lo + SGLD_NOISE_BLOCK < j->d ? lo + SGLD_NOISE_BLOCK
                                                                          : j->d;
    float *w = j->w;
    const float *w0 = j->w0, *g = j->g;
    for (size_t i = lo; i < hi; i += 2) {
        double zd[2];
        rng_normal_pair(&s, zd);
        float z[2] = {(float)zd[0], (float)zd[1]};
        for (size_t k = i; k < i + 2 && k < hi; k++) {
            float dw = j->gamma_f * (w[k] - w0[k]) + j->nbeta_f * g[k];
            w[k] = (w[k] - j->halfeps_f * dw) + j->sqrteps_f * z[k - i];
        }
    }
}

static void *step_worker(void *arg)
{
    const struct step_job *j = arg;
    size_t nb = (j->d + SGLD_NOISE_BLOCK - 1) / SGLD_NOISE_BLOCK;
    for (size_t b = j->first; b < nb; b += j->stride)
        step_block(j, b);
    return NULL;
}

/* One SGLD step on w over every block, on up to `threads` threads (the
 * caller's among them).  A thread that cannot be started leaves its blocks
 * to the caller, so the result is the same in every case. */
static void sgld_step(const struct step_job *proto, int threads)
{
    size_t nb = (proto->d + SGLD_NOISE_BLOCK - 1) / SGLD_NOISE_BLOCK;
    int nt = threads < 1 ? 1 : (size_t)threads > nb ? (int)nb : threads;
    if (nt > SGLD_MAX_THREADS)
        nt = SGLD_MAX_THREADS;
    struct step_job jobs[SGLD_MAX_THREADS];
    pthread_t tid[SGLD_MAX_THREADS];
    int started[SGLD_MAX_THREADS] = {0};
    for (int k = 0; k < nt; k++) {
        jobs[k] = *proto;
        jobs[k].first = (size_t)k;
        jobs[k].stride = (size_t)nt;
    }
    for (int k = 1; k < nt; k++)
        started[k] = pthread_create(&tid[k], NULL, step_worker, &jobs[k]) == 0;
    step_worker(&jobs[0]);
    for (int k = 1; k < nt; k++) {
        if (started[k])
            pthread_join(tid[k], NULL);
        else
            step_worker(&jobs[k]);
    }
}

int sgld_estimate(struct sgld_result *out, const struct sgld_config *c, float *w, float *grad,
                  size_t d, int n, sgld_loss_fn fn, void *ctx, struct err *e)
{
    memset(out, 0, sizeof *out);
    int rc = check_config(c, d, n, e);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < d; i++)
        if (!isfinite(w[i]))
            return err_set(e, ERR_NUMERIC, "sgld",
                           "parameter %zu of w* is not finite (%g): no local posterior", i,
                           (double)w[i]);
    const int C = c->chains, D = c->draws, m = c->batch;
    float *w0 = malloc(d * sizeof *w0), *galloc = grad ? NULL : malloc(d * sizeof *galloc);
    float *g = grad ? grad : galloc;
    int *idx = malloc((size_t)m * sizeof *idx), *perm = malloc((size_t)n * sizeof *perm);
    struct sgld_result r = {.chains = C, .draws = D};
    r.trace = malloc((size_t)C * D * sizeof *r.trace);
    r.ndraws = calloc((size_t)C, sizeof *r.ndraws);
    r.diverged_step = malloc((size_t)C * sizeof *r.diverged_step);
    r.llc_chain = malloc((size_t)C * sizeof *r.llc_chain);
    if (!w0 || !g || !idx || !perm || !r.trace || !r.ndraws || !r.diverged_step ||
        !r.llc_chain) {
        rc = err_set(e, ERR_NOMEM, "sgld", "out of memory for %zu parameters", d);
        goto out;
    }
    memcpy(w0, w, d * sizeof *w0);

    /* init_loss: every example once, in order, m at a time */
    double tot = 0.0;
    for (int s0 = 0; s0 < n; s0 += m) {
        int k = n - s0 < m ? n - s0 : m;
        for (int i = 0; i < k; i++)
            idx[i] = s0 + i;
        double l;
        if ((rc = fn(ctx, w, idx, k, &l, NULL, e)) < 0)
            goto out;
        tot += l * k;
    }
    r.init_loss = tot / n;
    if (!isfinite(r.init_loss)) {
        rc = err_set(e, ERR_NUMERIC, "sgld", "the loss at w* is not finite (%g)", r.init_loss);
        goto out;
    }

    struct step_job job = {.w = w, .w0 = w0, .g = g, .d = d, .gamma_f = (float)c->gamma,
                           .nbeta_f = (float)c->nbeta, .halfeps_f = (float)(c->epsilon / 2),
                           .sqrteps_f = (float)sqrt(c->epsilon)};
    const long steps = (long)c->burnin + D;
    uint64_t seeds = c->seed ^ SGLD_SALT;
    for (int ch = 0; ch < C; ch++) {
        uint64_t k = rng_next(&seeds);
        struct batcher b = {.state = k ^ SGLD_BATCH_SALT, .perm = perm, .n = n, .pos = n};
        double *tr = r.trace + (size_t)ch * D;
        for (int t = 0; t < D; t++)
            tr[t] = NAN;
        r.diverged_step[ch] = -1;
        memcpy(w, w0, d * sizeof *w);
        for (long t = 0; t < steps; t++) {
            double l;
            next_batch(&b, idx, m);
            if ((rc = fn(ctx, w, idx, m, &l, g, e)) < 0)
                goto out;
            if (!isfinite(l) || l > r.init_loss + c->max_rise) {
                r.diverged_step[ch] = t;
                r.ndiverged++;
                log_debug("sgld chain diverged", "chain=%d step=%ld loss=%g bound=%g", ch, t, l,
                          r.init_loss + c->max_rise);
                break;
            }
            if (t >= c->burnin)
                tr[r.ndraws[ch]++] = l;
            job.key = k + ((uint64_t)t << 32);
            sgld_step(&job, c->threads);
        }
        double mean = 0.0;
        for (int t = 0; t < D; t++)
            mean += tr[t];
        r.llc_chain[ch] = r.diverged_step[ch] < 0 ? c->nbeta * (mean / D - r.init_loss) : NAN;
    }

    int ok = 0;
    double sum = 0.0, ss = 0.0;
    for (int ch = 0; ch < C; ch++)
        if (r.diverged_step[ch] < 0) {
            sum += r.llc_chain[ch];
            ok++;
        }
    r.llc_mean = ok ? sum / ok : NAN;
    for (int ch = 0; ch < C; ch++)
        if (r.diverged_step[ch] < 0)
            ss += (r.llc_chain[ch] - r.llc_mean) * (r.llc_chain[ch] - r.llc_mean);
    r.llc_std = ok > 1 ? sqrt(ss / (ok - 1)) : NAN;
    *out = r;
    memset(&r, 0, sizeof r);
    rc = 0;
out:
    if (w0)
        memcpy(w, w0, d * sizeof *w); /* w* again, whatever happened */
    sgld_result_free(&r);
    free(perm);
    free(idx);
    free(galloc);
    free(w0);
    return rc;
}
