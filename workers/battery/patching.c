/* Exact activation patching and path patching (patching.h).
 *
 * Every patched forward resumes at the patched layer from the base run's
 * cached blocks.L.hook_resid_pre (gptneox_forward_from), with as many
 * variants (components) stacked along the batch as PATCH_TOKENS allows;
 * only the last position's final residual of each pair is read, through
 * the final LayerNorm and the pair's answer direction (no unembedding).
 * Sums over pairs are in double, in pair order. */
#include "workers/battery/patching.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "workers/model/backward.h"

/* ---- the logit difference ---- */

double patch_ld_row(const struct patch_base *pb, const float *x, int b)
{
    const struct gptneox *m = pb->m;
    const int C = pb->C;
    const float *d = pb->dir + (size_t)b * C;
    double mean = 0, var = 0, dot = 0;
    for (int c = 0; c < C; c++)
        mean += x[c];
    mean /= C;
    for (int c = 0; c < C; c++)
        var += (x[c] - mean) * (x[c] - mean);
    double rstd = 1.0 / sqrt(var / C + m->cfg.layer_norm_eps);
    for (int c = 0; c < C; c++)
        dot += ((x[c] - mean) * rstd * m->lnf_w[c] + m->lnf_b[c]) * d[c];
    return dot;
}

double patch_normalise(const struct patch_base *pb, double ld)
{
    double gap = pb->ld[0] - pb->ld[1];
    return gap == 0 ? NAN : (ld - pb->ld[1]) / gap;
}

double patch_forward_unit(const struct patch_base *pb)
{
    return gptneox_forward_flops(&pb->m->cfg, pb->B, pb->T);
}

/* ---- the base runs ---- */

struct base_hook {
    struct patch_base *pb;
};

/* clean rows [0, N), corrupted [N, 2N) of one stacked forward */
static int base_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct patch_base *pb = ((struct base_hook *)ctx)->pb;
    const size_t NC = (size_t)pb->N * pb->C;
    for (int r = 0; r < 2; r++) {
        const float *src = act->data + r * NC;
        if (act->kind == HOOK_RESID_PRE)
            memcpy(pb->resid[r] + (size_t)act->layer * NC, src, NC * sizeof(float));
        else if (act->kind == HOOK_ATTN_Z)
            memcpy(pb->z[r] + (size_t)act->layer * NC, src, NC * sizeof(float));
        else if (act->kind == HOOK_RESID_POST)
            memcpy(pb->resid[r] + (size_t)pb->NL * NC, src, NC * sizeof(float));
    }
    return 0;
}

/* one run's forward (grad 0) or backward (grad 1) on a tape: run r */
struct run_hook {
    struct patch_base *pb;
    int r;
};

static int run_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct run_hook *rh = ctx;
    struct patch_base *pb = rh->pb;
    const size_t NC = (size_t)pb->N * pb->C;
    float *dst = NULL;
    if (act->kind == HOOK_RESID_PRE)
        dst = (act->grad ? pb->gresid : pb->resid)[rh->r] + (size_t)act->layer * NC;
    else if (act->kind == HOOK_ATTN_Z)
        dst = (act->grad ? pb->gz : pb->z)[rh->r] + (size_t)act->layer * NC;
    else if (act->kind == HOOK_RESID_POST && !act->grad)
        dst = pb->resid[rh->r] + (size_t)pb->NL * NC;
    if (dst)
        memcpy(dst, act->data, NC * sizeof(float));
    return 0;
}

/* Both runs taped, each differentiated from d (mean LD) / d logits. */
static int base_grads(struct patch_base *pb, const struct pair_set *ps, struct err *e)
{
    const int V = pb->m->cfg.vocab_size, T = pb->T;
    struct gptneox_tape *tape = NULL;
    int rc = gptneox_tape_create(&tape, e);
    for (int r = 0; r < 2 && rc == 0; r++) {
        struct run_hook rh = {pb, r};
        struct gptneox_hook fh[3] = {{HOOK_RESID_PRE, -1, run_hook, &rh},
                                     {HOOK_ATTN_Z, -1, run_hook, &rh},
                                     {HOOK_RESID_POST, pb->NL - 1, run_hook, &rh}};
        if ((rc = gptneox_tape_forward(pb->m, tape, r == 0 ? ps->clean : ps->corrupted, pb->B, T,
                                       fh, 3, e)) < 0)
            break;
        float *d = gptneox_tape_dlogits(tape);
        memset(d, 0, (size_t)pb->N * V * sizeof *d);
        for (int b = 0; b < pb->B; b++) {
            float *row = d + ((size_t)b * T + T - 1) * V;
            int na = ps->ans_off[b + 1] - ps->ans_off[b], nw = ps->wrong_off[b + 1] - ps->wrong_off[b];
            for (int a = ps->ans_off[b]; a < ps->ans_off[b + 1]; a++)
                row[ps->ans[a]] += (float)(1.0 / ((double)pb->B * na));
            for (int w = ps->wrong_off[b]; w < ps->wrong_off[b + 1]; w++)
                row[ps->wrong[w]] -= (float)(1.0 / ((double)pb->B * nw));
        }
        struct gptneox_hook gh[2] = {{HOOK_RESID_PRE, -1, run_hook, &rh},
                                     {HOOK_ATTN_Z, -1, run_hook, &rh}};
        rc = gptneox_backward(pb->m, tape, d, gh, 2, NULL, e);
    }
    gptneox_tape_free(tape);
    return rc;
}

void patch_base_free(struct patch_base *pb)
{
    for (int r = 0; r < 2; r++) {
        free(pb->resid[r]);
        free(pb->z[r]);
        free(pb->gresid[r]);
        free(pb->gz[r]);
        free(pb->ld_pair[r]);
    }
    free(pb->dir);
    free(pb->stack);
    free(pb->out_ld);
    memset(pb, 0, sizeof *pb);
}

int patch_base_run(struct patch_base *pb, struct gptneox *m, const struct pair_set *ps,
                   unsigned flags, struct err *e)
{
    memset(pb, 0, sizeof *pb);
    const struct gptneox_config *cfg = &m->cfg;
    int rc = pair_set_check(ps, cfg, e);
    if (rc < 0)
        return rc;
    pb->m = m;
    pb->ps = ps;
    pb->B = ps->B;
    pb->T = ps->T;
    pb->N = ps->B * ps->T;
    pb->NL = cfg->n_layers;
    pb->NH = cfg->n_heads;
    pb->HS = cfg->d_head;
    pb->C = cfg->d_model;
    const size_t NC = (size_t)pb->N * pb->C;
    int per = PATCH_TOKENS / pb->N;
    pb->max_var = per < 1 ? 1 : per;
    int *tok = malloc(2 * (size_t)pb->N * sizeof *tok);
    for (int r = 0; r < 2; r++) {
        pb->resid[r] = malloc((size_t)(pb->NL + 1) * NC * sizeof(float));
        pb->z[r] = malloc((size_t)pb->NL * NC * sizeof(float));
        pb->ld_pair[r] = malloc((size_t)pb->B * sizeof(double));
        if (flags & PATCH_BASE_GRADS) {
            pb->gresid[r] = malloc((size_t)pb->NL * NC * sizeof(float));
            pb->gz[r] = malloc((size_t)pb->NL * NC * sizeof(float));
        }
    }
    int grads_ok = !(flags & PATCH_BASE_GRADS) ||
                   (pb->gresid[0] && pb->gresid[1] && pb->gz[0] && pb->gz[1]);
    pb->dir = calloc((size_t)pb->B * pb->C, sizeof *pb->dir);
    pb->stack = malloc((size_t)pb->max_var * NC * sizeof *pb->stack);
    pb->out_ld = malloc((size_t)pb->max_var * pb->B * sizeof *pb->out_ld);
    if (!tok || !pb->resid[0] || !pb->resid[1] || !pb->z[0] || !pb->z[1] || !pb->ld_pair[0] ||
        !pb->ld_pair[1] || !pb->dir || !pb->stack || !pb->out_ld || !grads_ok) {
        rc = err_set(e, ERR_NOMEM, ps->name, "out of memory for the patching caches (%d pairs "
                     "of %d tokens)", pb->B, pb->T);
        goto out;
    }
    /* the answer directions: mean unembedding row of the answers minus
     * that of the wrong answers */
    double *acc = calloc((size_t)pb->C, sizeof *acc);
    if (!acc) {
        rc = err_set(e, ERR_NOMEM, ps->name, "out of memory");
        goto out;
    }
    for (int b = 0; b < pb->B; b++) {
        memset(acc, 0, (size_t)pb->C * sizeof *acc);
        int na = ps->ans_off[b + 1] - ps->ans_off[b], nw = ps->wrong_off[b + 1] - ps->wrong_off[b];
        for (int a = ps->ans_off[b]; a < ps->ans_off[b + 1]; a++)
            for (int c = 0; c < pb->C; c++)
                acc[c] += (double)m->unembed[(size_t)ps->ans[a] * pb->C + c] / na;
        for (int w = ps->wrong_off[b]; w < ps->wrong_off[b + 1]; w++)
            for (int c = 0; c < pb->C; c++)
                acc[c] -= (double)m->unembed[(size_t)ps->wrong[w] * pb->C + c] / nw;
        for (int c = 0; c < pb->C; c++)
            pb->dir[(size_t)b * pb->C + c] = (float)acc[c];
    }
    free(acc);
    memcpy(tok, ps->clean, (size_t)pb->N * sizeof *tok);
    memcpy(tok + pb->N, ps->corrupted, (size_t)pb->N * sizeof *tok);
    struct base_hook bh = {pb};
    struct gptneox_hook h[3] = {{HOOK_RESID_PRE, -1, base_hook, &bh},
                                {HOOK_ATTN_Z, -1, base_hook, &bh},
                                {HOOK_RESID_POST, pb->NL - 1, base_hook, &bh}};
    if (flags & PATCH_BASE_GRADS)
        rc = base_grads(pb, ps, e);
    else
        rc = gptneox_forward_until(m, tok, 2 * pb->B, pb->T, h, 3, pb->NL - 1, e);
    if (rc < 0)
        goto out;
    for (int r = 0; r < 2; r++) {
        double sum = 0;
        for (int b = 0; b < pb->B; b++) {
            const float *x = pb->resid[r] + ((size_t)pb->NL * pb->N + (size_t)b * pb->T + pb->T - 1) * pb->C;
            pb->ld_pair[r][b] = patch_ld_row(pb, x, b);
            sum += pb->ld_pair[r][b];
        }
        pb->ld[r] = sum / pb->B;
    }
out:
    free(tok);
    if (rc < 0)
        patch_base_free(pb);
    return rc;
}

/* ---- stacked forwards ---- */

/* the last hook_resid_post: each variant's pairs' LD into out_ld */
static int final_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct patch_base *pb = ctx;
    const int nseq = act->shape[0];
    for (int s = 0; s < nseq; s++)
        pb->out_ld[s] = patch_ld_row(pb, act->data + ((size_t)s * pb->T + pb->T - 1) * pb->C,
                                     s % pb->B);
    return 0;
}

/* Fill nv stack slots with the base run's hook_resid_pre of `layer`. */
static void stack_base(struct patch_base *pb, int base, int layer, int nv)
{
    const size_t NC = (size_t)pb->N * pb->C;
    for (int k = 0; k < nv; k++)
        memcpy(pb->stack + k * NC, pb->resid[base] + (size_t)layer * NC, NC * sizeof(float));
}

/* Resume the nv stacked variants at `layer` with the caller's hooks (at
 * most 3) and the final LD hook; out_ld[k*B + b] holds the LDs. */
static int run_stack(struct patch_base *pb, int layer, int nv, const struct gptneox_hook *hooks,
                     int nh, struct err *e)
{
    struct gptneox_hook h[4];
    memcpy(h, hooks, (size_t)nh * sizeof *h);
    h[nh] = (struct gptneox_hook){HOOK_RESID_POST, pb->NL - 1, final_hook, pb};
    return gptneox_forward_from(pb->m, layer, pb->stack, nv * pb->B, pb->T, h, (size_t)nh + 1,
                                GPTNEOX_FWD_NO_LOGITS, e);
}

static double mean_ld(const struct patch_base *pb, int k)
{
    double s = 0;
    for (int b = 0; b < pb->B; b++)
        s += pb->out_ld[(size_t)k * pb->B + b];
    return s / pb->B;
}

/* ---- residual stream ---- */

int patch_resid_same(const struct patch_base *pb, int l, int t)
{
    const size_t NC = (size_t)pb->N * pb->C, C = (size_t)pb->C;
    for (int b = 0; b < pb->B; b++) {
        size_t off = (size_t)l * NC + ((size_t)b * pb->T + t) * C;
        if (memcmp(pb->resid[0] + off, pb->resid[1] + off, C * sizeof(float)) != 0)
            return 0;
    }
    return 1;
}

int patch_resid_some(struct patch_base *pb, enum patch_dir dir, const unsigned char *want,
                     double *out, struct err *e)
{
    const int base = dir == PATCH_DENOISE ? 1 : 0, src = 1 - base;
    const size_t NC = (size_t)pb->N * pb->C, C = (size_t)pb->C;
    int *todo = malloc((size_t)pb->T * sizeof *todo);
    if (!todo)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    int rc = 0;
    for (int l = 0; l < pb->NL && rc == 0; l++) {
        int n = 0;
        for (int t = 0; t < pb->T; t++) {
            if (patch_resid_same(pb, l, t))
                out[(size_t)l * pb->T + t] = pb->ld[base]; /* nothing to patch */
            else if (!want || want[(size_t)l * pb->T + t])
                todo[n++] = t;
        }
        for (int i0 = 0; i0 < n && rc == 0; i0 += pb->max_var) {
            int nv = n - i0 < pb->max_var ? n - i0 : pb->max_var;
            stack_base(pb, base, l, nv);
            for (int k = 0; k < nv; k++)
                for (int b = 0; b < pb->B; b++) {
                    size_t row = (size_t)b * pb->T + todo[i0 + k];
                    memcpy(pb->stack + k * NC + row * C,
                           pb->resid[src] + (size_t)l * NC + row * C, C * sizeof(float));
                }
            if ((rc = run_stack(pb, l, nv, NULL, 0, e)) < 0)
                break;
            for (int k = 0; k < nv; k++)
                out[(size_t)l * pb->T + todo[i0 + k]] = mean_ld(pb, k);
        }
    }
    free(todo);
    return rc;
}

int patch_resid(struct patch_base *pb, enum patch_dir dir, double *out, struct err *e)
{
    return patch_resid_some(pb, dir, NULL, out, e);
}

/* ---- heads ---- */

struct head_patch {
    struct patch_base *pb;
    int src, poi_only;
    const int *hl; /* variant k patches head hl[k] */
};

static int head_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct head_patch *hp = ctx;
    struct patch_base *pb = hp->pb;
    const struct pair_set *ps = pb->ps;
    const size_t NC = (size_t)pb->N * pb->C, C = (size_t)pb->C, HS = (size_t)pb->HS;
    const int nv = act->shape[0] / pb->B;
    const float *zs = pb->z[hp->src] + (size_t)act->layer * NC;
    for (int k = 0; k < nv; k++) {
        size_t off = (size_t)hp->hl[k] * HS;
        for (int b = 0; b < pb->B; b++) {
            int np = hp->poi_only ? ps->npos : pb->T;
            for (int i = 0; i < np; i++) {
                size_t row = (size_t)b * pb->T + (hp->poi_only ? ps->pos[i] : i);
                memcpy(act->data + k * NC + row * C + off, zs + row * C + off, HS * sizeof(float));
            }
        }
    }
    return 0;
}

int patch_heads_some(struct patch_base *pb, enum patch_dir dir, int poi_only,
                     const unsigned char *want, double *out, struct err *e)
{
    const int base = dir == PATCH_DENOISE ? 1 : 0;
    int *hl = malloc((size_t)pb->NH * sizeof *hl);
    if (!hl)
        return err_set(e, ERR_NOMEM, NULL, "out of memory");
    struct head_patch hp = {pb, 1 - base, poi_only, hl};
    int rc = 0;
    for (int l = 0; l < pb->NL && rc == 0; l++) {
        int n = 0;
        for (int h = 0; h < pb->NH; h++)
            if (!want || want[(size_t)l * pb->NH + h])
                hl[n++] = h;
        for (int i0 = 0; i0 < n && rc == 0; i0 += pb->max_var) {
            int nv = n - i0 < pb->max_var ? n - i0 : pb->max_var;
            hp.hl = hl + i0;
            stack_base(pb, base, l, nv);
            struct gptneox_hook h = {HOOK_ATTN_Z, l, head_hook, &hp};
            if ((rc = run_stack(pb, l, nv, &h, 1, e)) < 0)
                break;
            for (int k = 0; k < nv; k++)
                out[(size_t)l * pb->NH + hl[i0 + k]] = mean_ld(pb, k);
        }
    }
    free(hl);
    return rc;
}

int patch_heads(struct patch_base *pb, enum patch_dir dir, int poi_only, double *out,
                struct err *e)
{
    return patch_heads_some(pb, dir, poi_only, NULL, out, e);
}

/* ---- path patching ---- */

struct path_patch {
    struct patch_base *pb;
    int base, src;
    /* step A: the senders of one layer (variant k: sender index si[k]) */
    const int *senders, *receivers;
    int nrecv, layer, nv;
    const int *si;
    float *rec;       /* (nsend, nrecv, N, HS) receivers' hook_z as step A computed them */
    /* step B: variant k puts rec[pairs[k]] into receiver head rh[k] */
    const int *bs, *br;
};

/* z rows (N) of head h of a stacked variant k: copy between act and a
 * packed (N, HS) buffer */
static void head_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride, int N,
                      int HS)
{
    for (int n = 0; n < N; n++)
        memcpy(dst + (size_t)n * dst_stride, src + (size_t)n * src_stride, (size_t)HS * sizeof(float));
}

static int path_a_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct path_patch *pp = ctx;
    struct patch_base *pb = pp->pb;
    const size_t NC = (size_t)pb->N * pb->C, C = (size_t)pb->C;
    const int HS = pb->HS, l = act->layer;
    if (l < pp->layer)
        return 0;
    for (int k = 0; k < pp->nv; k++) {
        float *zk = act->data + k * NC;
        int s = pp->si[k], sh = pp->senders[s] % pb->NH;
        if (l == pp->layer) { /* the sender from the source; the rest is base already */
            head_rows(zk + (size_t)sh * HS, C, pb->z[pp->src] + (size_t)l * NC + (size_t)sh * HS,
                      C, pb->N, HS);
            continue;
        }
        for (int r = 0; r < pp->nrecv; r++)
            if (pp->receivers[r] / pb->NH == l)
                head_rows(pp->rec + ((size_t)s * pp->nrecv + r) * pb->N * HS, (size_t)HS,
                          zk + (size_t)(pp->receivers[r] % pb->NH) * HS, C, pb->N, HS);
        memcpy(zk, pb->z[pp->base] + (size_t)l * NC, NC * sizeof(float)); /* frozen */
    }
    return 0;
}

static int path_b_hook(void *ctx, struct hook_act *act, struct err *e)
{
    (void)e;
    struct path_patch *pp = ctx;
    struct patch_base *pb = pp->pb;
    const size_t NC = (size_t)pb->N * pb->C;
    const int HS = pb->HS;
    for (int k = 0; k < pp->nv; k++) {
        int s = pp->bs[k], r = pp->br[k], rh = pp->receivers[r] % pb->NH;
        head_rows(act->data + k * NC + (size_t)rh * HS, (size_t)pb->C,
                  pp->rec + ((size_t)s * pp->nrecv + r) * pb->N * HS, (size_t)HS, pb->N, HS);
    }
    return 0;
}

int patch_path(struct patch_base *pb, enum patch_dir dir, const int *senders, int nsend,
               const int *receivers, int nrecv, double *out, struct err *e)
{
    const int nheads = pb->NL * pb->NH, HS = pb->HS, C = pb->C;
    const size_t NC = (size_t)pb->N * C;
    for (int i = 0; i < nsend; i++)
        if (senders[i] < 0 || senders[i] >= nheads)
            return err_set(e, ERR_INVALID, NULL, "sender %d is not a head (0 .. %d)", senders[i],
                           nheads - 1);
    for (int i = 0; i < nrecv; i++)
        if (receivers[i] < 0 || receivers[i] >= nheads)
            return err_set(e, ERR_INVALID, NULL, "receiver %d is not a head (0 .. %d)",
                           receivers[i], nheads - 1);
    struct path_patch pp = {.pb = pb, .base = dir == PATCH_DENOISE ? 1 : 0,
                            .senders = senders, .receivers = receivers, .nrecv = nrecv};
    pp.src = 1 - pp.base;
    int rc = 0, *si = malloc(((size_t)nsend + 1) * sizeof *si);
    int *bs = malloc(((size_t)nsend * nrecv + 1) * sizeof *bs);
    int *br = malloc(((size_t)nsend * nrecv + 1) * sizeof *br);
    float *xrow = malloc((size_t)C * sizeof *xrow);
    pp.rec = malloc(((size_t)nsend * nrecv * pb->N * HS + 1) * sizeof *pp.rec);
    if (!si || !bs || !br || !xrow || !pp.rec) {
        rc = err_set(e, ERR_NOMEM, NULL, "out of memory for path patching");
        goto out;
    }
    for (size_t i = 0; i < (size_t)nsend * (nrecv + 1); i++)
        out[i] = NAN;
    /* the direct path: the sender's output change added to the base run's
     * final residual at the last position */
    for (int s = 0; s < nsend; s++) {
        int l = senders[s] / pb->NH, h = senders[s] % pb->NH;
        const float *W = pb->m->layers[l].attn_w; /* (C_out, C_in) */
        double sum = 0;
        for (int b = 0; b < pb->B; b++) {
            size_t row = (size_t)b * pb->T + pb->T - 1;
            const float *zs = pb->z[pp.src] + (size_t)l * NC + row * C + (size_t)h * HS;
            const float *zb = pb->z[pp.base] + (size_t)l * NC + row * C + (size_t)h * HS;
            const float *x = pb->resid[pp.base] + (size_t)pb->NL * NC + row * C;
            for (int c = 0; c < C; c++) {
                double a = 0;
                for (int k = 0; k < HS; k++)
                    a += (double)W[(size_t)c * C + (size_t)h * HS + k] * ((double)zs[k] - zb[k]);
                xrow[c] = (float)(x[c] + a);
            }
            sum += patch_ld_row(pb, xrow, b);
        }
        out[(size_t)s * (nrecv + 1) + nrecv] = sum / pb->B;
    }
    /* step A, per sender layer: record what each receiver computes */
    for (int l = 0; l < pb->NL; l++) {
        int n = 0;
        for (int s = 0; s < nsend; s++) {
            int later = 0;
            for (int r = 0; r < nrecv && !later; r++)
                later = receivers[r] / pb->NH > l;
            if (senders[s] / pb->NH == l && later)
                si[n++] = s;
        }
        for (int k0 = 0; k0 < n; k0 += pb->max_var) {
            pp.nv = n - k0 < pb->max_var ? n - k0 : pb->max_var;
            pp.si = si + k0;
            pp.layer = l;
            stack_base(pb, pp.base, l, pp.nv);
            struct gptneox_hook h = {HOOK_ATTN_Z, -1, path_a_hook, &pp};
            if ((rc = gptneox_forward_from(pb->m, l, pb->stack, pp.nv * pb->B, pb->T, &h, 1,
                                           GPTNEOX_FWD_NO_LOGITS, e)) < 0)
                goto out;
        }
    }
    /* step B, per receiver layer: only the recorded receiver changes */
    for (int l = 1; l < pb->NL; l++) {
        int n = 0;
        for (int s = 0; s < nsend; s++)
            for (int r = 0; r < nrecv; r++)
                if (receivers[r] / pb->NH == l && senders[s] / pb->NH < l) {
                    bs[n] = s;
                    br[n++] = r;
                }
        for (int k0 = 0; k0 < n; k0 += pb->max_var) {
            pp.nv = n - k0 < pb->max_var ? n - k0 : pb->max_var;
            pp.bs = bs + k0;
            pp.br = br + k0;
            stack_base(pb, pp.base, l, pp.nv);
            struct gptneox_hook h = {HOOK_ATTN_Z, l, path_b_hook, &pp};
            if ((rc = run_stack(pb, l, pp.nv, &h, 1, e)) < 0)
                goto out;
            for (int k = 0; k < pp.nv; k++)
                out[(size_t)pp.bs[k] * (nrecv + 1) + pp.br[k]] = mean_ld(pb, k);
        }
    }
out:
    free(pp.rec);
    free(xrow);
    free(br);
    free(bs);
    free(si);
    return rc;
}

/* ---- attribution patching ---- */

int patch_atp(const struct patch_base *pb, enum patch_dir dir, double *resid, double *head,
              double *head_poi, struct err *e)
{
    const int base = dir == PATCH_DENOISE ? 1 : 0, src = 1 - base;
    if (!pb->gresid[base] || !pb->gz[base])
        return err_set(e, ERR_INVALID, NULL, "attribution patching needs a base run with "
                       "gradients (PATCH_BASE_GRADS)");
    const size_t NC = (size_t)pb->N * pb->C, C = (size_t)pb->C, HS = (size_t)pb->HS;
    const struct pair_set *ps = pb->ps;
    for (int l = 0; l < pb->NL; l++) {
        const size_t o = (size_t)l * NC;
        /* per row: (a_src - a_base) . g, by head for z */
        for (int t = 0; resid && t < pb->T; t++) {
            double s = 0;
            for (int b = 0; b < pb->B; b++) {
                size_t r = o + ((size_t)b * pb->T + t) * C;
                const float *as = pb->resid[src] + r, *ab = pb->resid[base] + r;
                const float *g = pb->gresid[base] + r;
                for (size_t c = 0; c < C; c++)
                    s += ((double)as[c] - ab[c]) * g[c];
            }
            resid[(size_t)l * pb->T + t] = pb->ld[base] + s;
        }
        for (int h = 0; (head || head_poi) && h < pb->NH; h++) {
            double all = 0, poi = 0;
            for (int b = 0; b < pb->B; b++)
                for (int t = 0, k = 0; t < pb->T; t++) {
                    size_t r = o + ((size_t)b * pb->T + t) * C + (size_t)h * HS;
                    const float *as = pb->z[src] + r, *ab = pb->z[base] + r, *g = pb->gz[base] + r;
                    double s = 0;
                    for (size_t c = 0; c < HS; c++)
                        s += ((double)as[c] - ab[c]) * g[c];
                    all += s;
                    while (k < ps->npos && ps->pos[k] < t)
                        k++;
                    if (k < ps->npos && ps->pos[k] == t)
                        poi += s;
                }
            if (head)
                head[(size_t)l * pb->NH + h] = pb->ld[base] + all;
            if (head_poi)
                head_poi[(size_t)l * pb->NH + h] = pb->ld[base] + poi;
        }
    }
    return 0;
}
