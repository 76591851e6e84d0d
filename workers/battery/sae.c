/* Sparse autoencoders: forward, the folds, and the TopK/AuxK and ReLU/L1
 * trainers.  Definitions and sources in sae.h.
 *
 * Shapes: n rows of a batch, C = d_in, S = d_sae.  Every product is one
 * cblas_sgemm (or sgemv) over the whole batch; the loops here are
 * element-wise.  Sums that become numbers (losses, means) are taken in
 * double in a fixed order. */
#include "workers/battery/sae.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rng.h"
#include "workers/train/adamw.h"

const char *sae_arch_name(enum sae_arch a)
{
    return a == SAE_TOPK ? "topk" : a == SAE_RELU ? "standard" : a == SAE_JUMPRELU ? "jumprelu" : NULL;
}

/* ---- the dictionary ---- */

static size_t sae_floats(int C, int S)
{
    return (size_t)C * S * 2 + (size_t)S + (size_t)C;
}

int sae_create(struct sae **out, enum sae_arch arch, int d_in, int d_sae, int k, struct err *e)
{
    *out = NULL;
    if ((unsigned)arch >= SAE_ARCH_COUNT)
        return err_set(e, ERR_INVALID, "sae", "unknown architecture %d", (int)arch);
    if (d_in <= 0 || d_sae <= 0 || (size_t)d_in * d_sae > ((size_t)1 << 31))
        return err_set(e, ERR_INVALID, "sae", "sizes d_in %d, d_sae %d out of range", d_in, d_sae);
    if (arch == SAE_TOPK && (k < 1 || k > d_sae))
        return err_set(e, ERR_INVALID, "sae", "TopK k = %d outside [1, d_sae = %d]", k, d_sae);
    struct sae *s = calloc(1, sizeof *s);
    float *block = calloc(sae_floats(d_in, d_sae) + (arch == SAE_JUMPRELU ? (size_t)d_sae : 0),
                          sizeof *block);
    if (!s || !block) {
        free(s);
        free(block);
        return err_set(e, ERR_NOMEM, "sae", "out of memory for a %d x %d dictionary", d_in, d_sae);
    }
    s->arch = arch;
    s->d_in = d_in;
    s->d_sae = d_sae;
    s->k = arch == SAE_TOPK ? k : 0;
    s->apply_b_dec = 1;
    s->block = block;
    s->W_enc = block;
    s->W_dec = block + (size_t)d_in * d_sae;
    s->b_enc = s->W_dec + (size_t)d_in * d_sae;
    s->b_dec = s->b_enc + d_sae;
    s->threshold = arch == SAE_JUMPRELU ? s->b_dec + d_in : NULL;
    *out = s;
    return 0;
}

void sae_free(struct sae *s)
{
    if (!s)
        return;
    free(s->block);
    free(s);
}

struct sae *sae_clone(const struct sae *s)
{
    struct sae *c = NULL;
    if (sae_create(&c, s->arch, s->d_in, s->d_sae, s->k ? s->k : 1, NULL) < 0)
        return NULL;
    c->k = s->k;
    c->apply_b_dec = s->apply_b_dec;
    memcpy(c->block, s->block,
           (sae_floats(s->d_in, s->d_sae) + (s->threshold ? (size_t)s->d_sae : 0)) * sizeof(float));
    return c;
}

/* Every row of W_dec (S, C) to unit norm (a zero row stays zero). */
static void normalize_rows(float *W, int S, int C)
{
    for (int i = 0; i < S; i++) {
        float *d = W + (size_t)i * C;
        double ss = 0.0;
        for (int j = 0; j < C; j++)
            ss += (double)d[j] * d[j];
        if (ss > 0.0) {
            float inv = (float)(1.0 / sqrt(ss));
            for (int j = 0; j < C; j++)
                d[j] *= inv;
        }
    }
}

void sae_init_cold(struct sae *s, const float *x, size_t n, uint64_t seed)
{
    const int C = s->d_in, S = s->d_sae;
    uint64_t st = seed;
    for (size_t i = 0; i < (size_t)S * C; i++)
        s->W_dec[i] = (float)rng_normal(&st);
    normalize_rows(s->W_dec, S, C);
    for (int i = 0; i < S; i++)
        for (int j = 0; j < C; j++)
            s->W_enc[(size_t)j * S + i] = s->W_dec[(size_t)i * C + j];
    memset(s->b_enc, 0, (size_t)S * sizeof(float));
    for (int j = 0; j < C; j++) {
        double sum = 0.0;
        for (size_t t = 0; t < n; t++)
            sum += x[t * C + j];
        s->b_dec[j] = n ? (float)(sum / (double)n) : 0.0f;
    }
}

void sae_encode_pre(const struct sae *s, float *pre, float *xc, const float *x, int n)
{
    const int C = s->d_in, S = s->d_sae;
    if (s->apply_b_dec)
        for (int t = 0; t < n; t++)
            for (int j = 0; j < C; j++)
                xc[(size_t)t * C + j] = x[(size_t)t * C + j] - s->b_dec[j];
    else
        memcpy(xc, x, (size_t)n * C * sizeof(float));
    for (int t = 0; t < n; t++)
        memcpy(pre + (size_t)t * S, s->b_enc, (size_t)S * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, S, C, 1.0f, xc, C, s->W_enc, S,
                1.0f, pre, S);
}

/* "a ranks below b" for TopK: smaller value, or equal value and higher
 * index (ties go to the lower index). */
static int ranks_below(float va, int ia, float vb, int ib)
{
    return va < vb || (va == vb && ia > ib);
}

/* Indices of the k largest of row (S) among those with mask[i] != 0 (mask
 * NULL: all), by a min-heap of size k; returns how many were found (<= k).
 * heap (k) is scratch and receives the indices. */
static int topk_row(const float *row, int S, const unsigned char *mask, int k, int *heap)
{
    int h = 0;
    for (int i = 0; i < S; i++) {
        if (mask && !mask[i])
            continue;
        float v = row[i];
        if (h < k) { /* push, sift up */
            int c = h++;
            while (c > 0) {
                int p = (c - 1) / 2;
                if (!ranks_below(v, i, row[heap[p]], heap[p]))
                    break;
                heap[c] = heap[p];
                c = p;
            }
            heap[c] = i;
        } else if (ranks_below(row[heap[0]], heap[0], v, i)) { /* replace the root, sift down */
            int c = 0;
            for (;;) {
                int l = 2 * c + 1, r = l + 1, m = c;
                float vm = v;
                int im = i;
                if (l < k && ranks_below(row[heap[l]], heap[l], vm, im)) {
                    m = l;
                    vm = row[heap[l]];
                    im = heap[l];
                }
                if (r < k && ranks_below(row[heap[r]], heap[r], vm, im))
                    m = r;
                if (m == c)
                    break;
                heap[c] = heap[m];
                c = m;
            }
            heap[c] = i;
        }
    }
    return h;
}

/* z (n,S) = act(pre (n,S)); heap (k) scratch for TopK.  z may equal pre. */
static void activate(const struct sae *s, float *z, const float *pre, int n, int *heap)
{
    const int S = s->d_sae;
    for (int t = 0; t < n; t++) {
        const float *p = pre + (size_t)t * S;
        float *o = z + (size_t)t * S;
        if (s->arch == SAE_RELU) {
            for (int i = 0; i < S; i++)
                o[i] = p[i] > 0.0f ? p[i] : 0.0f;
            continue;
        }
        if (s->arch == SAE_JUMPRELU) { /* SAELens: ReLU(pre) * (pre > threshold) */
            for (int i = 0; i < S; i++)
                o[i] = p[i] > s->threshold[i] && p[i] > 0.0f ? p[i] : 0.0f;
            continue;
        }
        int got = topk_row(p, S, NULL, s->k, heap);
        float kept[got > 0 ? got : 1];
        for (int j = 0; j < got; j++)
            kept[j] = p[heap[j]];
        memset(o, 0, (size_t)S * sizeof(float));
        for (int j = 0; j < got; j++)
            o[heap[j]] = kept[j] > 0.0f ? kept[j] : 0.0f;
    }
}

void sae_activate(const struct sae *s, float *z, const float *pre, int n)
{
    int heap[s->arch == SAE_TOPK ? s->k : 1];
    activate(s, z, pre, n, heap);
}

void sae_decode(const struct sae *s, float *xhat, const float *z, int n)
{
    const int C = s->d_in, S = s->d_sae;
    for (int t = 0; t < n; t++)
        memcpy(xhat + (size_t)t * C, s->b_dec, (size_t)C * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, S, 1.0f, z, S, s->W_dec, C, 1.0f,
                xhat, C);
}

int sae_reconstruct(const struct sae *s, float *xhat, float *z, const float *x, size_t n,
                    struct err *e)
{
    const int C = s->d_in, S = s->d_sae;
    size_t R = n < SAE_RECON_ROWS ? n : SAE_RECON_ROWS;
    float *xc = malloc((R ? R : 1) * C * sizeof *xc);
    float *pre = malloc((R ? R : 1) * S * sizeof *pre);
    if (!xc || !pre) {
        free(xc);
        free(pre);
        return err_set(e, ERR_NOMEM, "sae", "out of memory for %zu reconstruction rows", R);
    }
    for (size_t r0 = 0; r0 < n; r0 += R) {
        int m = (int)(n - r0 < R ? n - r0 : R);
        sae_encode_pre(s, pre, xc, x + r0 * C, m);
        sae_activate(s, pre, pre, m);
        if (z)
            memcpy(z + r0 * S, pre, (size_t)m * S * sizeof(float));
        sae_decode(s, xhat + r0 * C, pre, m);
    }
    free(xc);
    free(pre);
    return 0;
}

void sae_fold_scaling(struct sae *s, double scale)
{
    for (int i = 0; i < s->d_sae; i++)
        s->b_enc[i] = (float)(s->b_enc[i] / scale);
    for (int j = 0; j < s->d_in; j++)
        s->b_dec[j] = (float)(s->b_dec[j] / scale);
}

void sae_unfold_scaling(struct sae *s, double scale)
{
    for (int i = 0; i < s->d_sae; i++)
        s->b_enc[i] = (float)(s->b_enc[i] * scale);
    for (int j = 0; j < s->d_in; j++)
        s->b_dec[j] = (float)(s->b_dec[j] * scale);
}

void sae_fold_saelens(struct sae *s, double scale)
{
    const size_t CS = (size_t)s->d_in * s->d_sae;
    for (size_t i = 0; i < CS; i++)
        s->W_enc[i] = (float)(s->W_enc[i] * scale);
    for (size_t i = 0; i < CS; i++)
        s->W_dec[i] = (float)(s->W_dec[i] / scale);
    for (int j = 0; j < s->d_in; j++)
        s->b_dec[j] = (float)(s->b_dec[j] / scale);
}

void sae_unfold_saelens(struct sae *s, double scale)
{
    const size_t CS = (size_t)s->d_in * s->d_sae;
    for (size_t i = 0; i < CS; i++)
        s->W_enc[i] = (float)(s->W_enc[i] / scale);
    for (size_t i = 0; i < CS; i++)
        s->W_dec[i] = (float)(s->W_dec[i] * scale);
    for (int j = 0; j < s->d_in; j++)
        s->b_dec[j] = (float)(s->b_dec[j] * scale);
}

void sae_fold_decoder_norm(struct sae *s)
{
    const int C = s->d_in, S = s->d_sae;
    for (int i = 0; i < S; i++) {
        float *d = s->W_dec + (size_t)i * C;
        double ss = 0.0;
        for (int j = 0; j < C; j++)
            ss += (double)d[j] * d[j];
        const double n = sqrt(ss);
        if (n > 0.0)
            for (int j = 0; j < C; j++)
                d[j] = (float)(d[j] / n);
        for (int j = 0; j < C; j++)
            s->W_enc[(size_t)j * S + i] = (float)(s->W_enc[(size_t)j * S + i] * n);
        s->b_enc[i] = (float)(s->b_enc[i] * n);
        if (s->threshold)
            s->threshold[i] = (float)(s->threshold[i] * n);
    }
}

int sae_norm_scale(const float *x, size_t n, int d_in, double *scale, struct err *e)
{
    double sum = 0.0;
    for (size_t t = 0; t < n; t++) {
        double ss = 0.0;
        for (int j = 0; j < d_in; j++)
            ss += (double)x[t * d_in + j] * x[t * d_in + j];
        if (!isfinite(ss))
            return err_set(e, ERR_NUMERIC, "sae",
                           "activation row %zu is not finite (NaN or infinite values)", t);
        sum += sqrt(ss);
    }
    if (n == 0 || !(sum > 0.0))
        return err_set(e, ERR_NUMERIC, "sae", "every one of the %zu activation rows is zero", n);
    *scale = sqrt((double)d_in) / (sum / (double)n);
    return 0;
}

/* ---- training ---- */

struct sae_trainer {
    struct sae *s;
    struct sae_train_config c;
    int k_aux;
    long t;           /* Adam steps taken */
    long tokens;      /* tokens trained */
    long *since;      /* (S) tokens since the latent last fired */
    float *m, *v;     /* Adam moments over the dictionary block */
    float *gblock;    /* gradients, laid out as the dictionary block */
    struct sae_grads g;
    /* batch buffers */
    float *xb, *xc, *xhat, *dx, *eaux;  /* (B,C) */
    float *pre, *z, *dz, *zaux, *dzaux; /* (B,S) */
    float *rownorm;   /* (S) */
    unsigned char *dead, *fired; /* (S) */
    int *heap;        /* (max(k, k_aux)) */
    int last_n;       /* rows of the last grad, 0 when none */
};

void sae_train_config_default(struct sae_train_config *c, enum sae_arch arch)
{
    memset(c, 0, sizeof *c);
    c->lr = 4e-4;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->aux_coeff = arch == SAE_TOPK ? 1.0 / 32.0 : 0.0;
    c->k_aux = 0;
    c->l1_coeff = arch == SAE_RELU ? SAE_RELU_L1 : 0.0;
    c->dead_window = SAE_DEAD_WINDOW;
    c->batch = 1024;
    c->seed = 0;
}

void sae_trainer_free(struct sae_trainer *tr)
{
    if (!tr)
        return;
    free(tr->since);
    free(tr->m);
    free(tr->v);
    free(tr->gblock);
    free(tr->xb);
    free(tr->xc);
    free(tr->xhat);
    free(tr->dx);
    free(tr->eaux);
    free(tr->pre);
    free(tr->z);
    free(tr->dz);
    free(tr->zaux);
    free(tr->dzaux);
    free(tr->rownorm);
    free(tr->dead);
    free(tr->fired);
    free(tr->heap);
    free(tr);
}

int sae_trainer_create(struct sae_trainer **out, struct sae *s, const struct sae_train_config *c,
                       struct err *e)
{
    *out = NULL;
    if (!(c->lr > 0.0) || !(c->beta1 >= 0.0 && c->beta1 < 1.0) ||
        !(c->beta2 >= 0.0 && c->beta2 < 1.0) || !(c->eps > 0.0) || c->batch < 1 ||
        c->dead_window < 1 || !(c->aux_coeff >= 0.0) || !(c->l1_coeff >= 0.0) || c->k_aux < 0)
        return err_set(e, ERR_INVALID, "sae trainer",
                       "configuration out of range (lr %g, betas %g/%g, eps %g, batch %d, "
                       "dead window %ld, aux %g, l1 %g, k_aux %d)",
                       c->lr, c->beta1, c->beta2, c->eps, c->batch, c->dead_window, c->aux_coeff,
                       c->l1_coeff, c->k_aux);
    if (s->arch == SAE_JUMPRELU || !s->apply_b_dec)
        return err_set(e, ERR_UNSUPPORTED, "sae trainer",
                       "only TopK and ReLU dictionaries that subtract b_dec are trained "
                       "(architecture %s, apply_b_dec %d)",
                       sae_arch_name(s->arch), s->apply_b_dec);
    const int C = s->d_in, S = s->d_sae, B = c->batch;
    struct sae_trainer *tr = calloc(1, sizeof *tr);
    if (!tr)
        return err_set(e, ERR_NOMEM, "sae trainer", "out of memory");
    tr->s = s;
    tr->c = *c;
    tr->k_aux = c->k_aux ? c->k_aux : (C / 2 > 0 ? C / 2 : 1);
    if (tr->k_aux > S)
        tr->k_aux = S;
    size_t nb = sae_floats(C, S), bc = (size_t)B * C, bs = (size_t)B * S;
    int nheap = s->k > tr->k_aux ? s->k : tr->k_aux;
    tr->since = calloc((size_t)S, sizeof *tr->since);
    tr->m = calloc(nb, sizeof(float));
    tr->v = calloc(nb, sizeof(float));
    tr->gblock = calloc(nb, sizeof(float));
    tr->xb = malloc(bc * sizeof(float));
    tr->xc = malloc(bc * sizeof(float));
    tr->xhat = malloc(bc * sizeof(float));
    tr->dx = malloc(bc * sizeof(float));
    tr->eaux = malloc(bc * sizeof(float));
    tr->pre = malloc(bs * sizeof(float));
    tr->z = malloc(bs * sizeof(float));
    tr->dz = malloc(bs * sizeof(float));
    tr->zaux = malloc(bs * sizeof(float));
    tr->dzaux = malloc(bs * sizeof(float));
    tr->rownorm = malloc((size_t)S * sizeof(float));
    tr->dead = calloc((size_t)S, 1);
    tr->fired = calloc((size_t)S, 1);
    tr->heap = malloc((size_t)(nheap > 0 ? nheap : 1) * sizeof(int));
    if (!tr->since || !tr->m || !tr->v || !tr->gblock || !tr->xb || !tr->xc || !tr->xhat ||
        !tr->dx || !tr->eaux || !tr->pre || !tr->z || !tr->dz || !tr->zaux || !tr->dzaux ||
        !tr->rownorm || !tr->dead || !tr->fired || !tr->heap) {
        sae_trainer_free(tr);
        return err_set(e, ERR_NOMEM, "sae trainer",
                       "out of memory for batches of %d tokens at d_in %d, d_sae %d", B, C, S);
    }
    tr->g.W_enc = tr->gblock;
    tr->g.W_dec = tr->gblock + (size_t)C * S;
    tr->g.b_enc = tr->g.W_dec + (size_t)C * S;
    tr->g.b_dec = tr->g.b_enc + S;
    *out = tr;
    return 0;
}

const struct sae_grads *sae_trainer_grads(const struct sae_trainer *tr)
{
    return &tr->g;
}

long sae_trainer_tokens(const struct sae_trainer *tr)
{
    return tr->tokens;
}

int sae_trainer_grad(struct sae_trainer *tr, const float *x, int n, const unsigned char *dead,
                     struct sae_step_stats *st, struct err *e)
{
    struct sae *s = tr->s;
    const int C = s->d_in, S = s->d_sae;
    const struct sae_train_config *c = &tr->c;
    struct sae_step_stats z0 = {0};
    *st = z0;
    tr->last_n = 0;
    if (n < 1 || n > c->batch)
        return err_set(e, ERR_INVALID, "sae trainer", "batch of %d rows outside [1, %d]", n,
                       c->batch);
    const size_t nc = (size_t)n * C, ns = (size_t)n * S;
    /* forward */
    sae_encode_pre(s, tr->pre, tr->xc, x, n);
    activate(s, tr->z, tr->pre, n, tr->heap);
    sae_decode(s, tr->xhat, tr->z, n);
    const float two_n = 2.0f / (float)n;
    double mse = 0.0, l0 = 0.0;
    for (size_t i = 0; i < nc; i++) {
        float d = tr->xhat[i] - x[i];
        mse += (double)d * d;
        tr->dx[i] = two_n * d;
    }
    for (size_t i = 0; i < ns; i++)
        l0 += tr->z[i] > 0.0f;
    st->mse = mse / n;
    st->l0 = l0 / n;
    double loss = st->mse;

    /* ReLU: L1 weighted by the decoder row norms */
    if (s->arch == SAE_RELU) {
        for (int i = 0; i < S; i++) {
            double ss = 0.0;
            for (int j = 0; j < C; j++)
                ss += (double)s->W_dec[(size_t)i * C + j] * s->W_dec[(size_t)i * C + j];
            tr->rownorm[i] = (float)sqrt(ss);
        }
        double l1 = 0.0;
        for (int t = 0; t < n; t++)
            for (int i = 0; i < S; i++)
                l1 += (double)tr->z[(size_t)t * S + i] * tr->rownorm[i];
        st->l1 = l1 / n;
        loss += c->l1_coeff * st->l1;
    }

    /* TopK: AuxK on the dead latents */
    int ndead = 0;
    for (int i = 0; dead && i < S; i++)
        ndead += dead[i] != 0;
    st->ndead = s->arch == SAE_TOPK ? ndead : 0;
    int use_aux = s->arch == SAE_TOPK && ndead > 0 && c->aux_coeff > 0.0;
    if (use_aux) {
        int kaux = tr->k_aux < ndead ? tr->k_aux : ndead;
        memset(tr->zaux, 0, ns * sizeof(float));
        for (int t = 0; t < n; t++) {
            const float *p = tr->pre + (size_t)t * S;
            int got = topk_row(p, S, dead, kaux, tr->heap);
            for (int j = 0; j < got; j++) {
                float v = p[tr->heap[j]];
                tr->zaux[(size_t)t * S + tr->heap[j]] = v > 0.0f ? v : 0.0f;
            }
        }
        /* ehat = zaux W_dec (no bias); r = ehat - e, e = x - xhat */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, S, 1.0f, tr->zaux, S,
                    s->W_dec, C, 0.0f, tr->eaux, C);
        double aux = 0.0;
        const float ga = (float)(c->aux_coeff * 2.0 / n);
        for (size_t i = 0; i < nc; i++) {
            float r = tr->eaux[i] - (x[i] - tr->xhat[i]);
            aux += (double)r * r;
            tr->eaux[i] = ga * r; /* now d loss / d ehat */
        }
        st->aux = aux / n;
        loss += c->aux_coeff * st->aux;
    }
    st->loss = loss;
    if (!isfinite(loss))
        return err_set(e, ERR_NUMERIC, "sae trainer",
                       "training loss is not finite (%g) after %ld tokens: the activations "
                       "hold NaN or infinite values, or the step diverged",
                       loss, tr->tokens);

    /* backward: W_dec */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, C, n, 1.0f, tr->z, S, tr->dx, C, 0.0f,
                tr->g.W_dec, C);
    if (use_aux)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, C, n, 1.0f, tr->zaux, S, tr->eaux,
                    C, 1.0f, tr->g.W_dec, C);
    /* dz = dx W_dec^T (and the AuxK path) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, S, C, 1.0f, tr->dx, C, s->W_dec, C,
                0.0f, tr->dz, S);
    if (use_aux)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, S, C, 1.0f, tr->eaux, C, s->W_dec,
                    C, 0.0f, tr->dzaux, S);
    if (s->arch == SAE_RELU) { /* d(l1)/d W_dec,i = coeff * mean_t z_ti * d_i / ||d_i|| */
        const float gl = (float)(c->l1_coeff / n);
        for (int i = 0; i < S; i++) {
            double zs = 0.0;
            for (int t = 0; t < n; t++)
                zs += tr->z[(size_t)t * S + i];
            if (zs == 0.0 || tr->rownorm[i] == 0.0f)
                continue;
            float f = (float)(c->l1_coeff * zs / n) / tr->rownorm[i];
            for (int j = 0; j < C; j++)
                tr->g.W_dec[(size_t)i * C + j] += f * s->W_dec[(size_t)i * C + j];
        }
        for (int t = 0; t < n; t++)
            for (int i = 0; i < S; i++)
                tr->dz[(size_t)t * S + i] += gl * tr->rownorm[i];
    }
    /* dpre (in dz): through the activation's mask */
    for (size_t i = 0; i < ns; i++) {
        float d = tr->z[i] > 0.0f ? tr->dz[i] : 0.0f;
        if (use_aux && tr->zaux[i] > 0.0f)
            d += tr->dzaux[i];
        tr->dz[i] = d;
    }
    /* b_enc, W_enc, b_dec */
    for (int i = 0; i < S; i++) {
        double sum = 0.0;
        for (int t = 0; t < n; t++)
            sum += tr->dz[(size_t)t * S + i];
        tr->g.b_enc[i] = (float)sum;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, S, n, 1.0f, tr->xc, C, tr->dz, S, 0.0f,
                tr->g.W_enc, S);
    for (int j = 0; j < C; j++) {
        double sum = 0.0;
        for (int t = 0; t < n; t++)
            sum += tr->dx[(size_t)t * C + j];
        tr->g.b_dec[j] = (float)sum;
    }
    /* pre = (x - b_dec) W_enc + b_enc: d/d b_dec = -W_enc g_b_enc */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, C, S, -1.0f, s->W_enc, S, tr->g.b_enc, 1, 1.0f,
                tr->g.b_dec, 1);
    tr->last_n = n;
    return 0;
}

void sae_trainer_apply(struct sae_trainer *tr)
{
    struct sae *s = tr->s;
    const int C = s->d_in, S = s->d_sae;
    if (!tr->last_n)
        return;
    /* remove each decoder row's gradient component along the row */
    for (int i = 0; i < S; i++) {
        const float *d = s->W_dec + (size_t)i * C;
        float *g = tr->g.W_dec + (size_t)i * C;
        double gd = 0.0;
        for (int j = 0; j < C; j++)
            gd += (double)g[j] * d[j];
        float f = (float)gd;
        for (int j = 0; j < C; j++)
            g[j] -= f * d[j];
    }
    struct adamw_config ac = {tr->c.lr, tr->c.beta1, tr->c.beta2, tr->c.eps, 0.0};
    tr->t++;
    adamw_update(s->block, tr->gblock, tr->m, tr->v, sae_floats(C, S), tr->c.lr, 0.0, &ac, tr->t);
    normalize_rows(s->W_dec, S, C);
    tr->last_n = 0;
}

int sae_trainer_step(struct sae_trainer *tr, const float *x, int n, struct sae_step_stats *st,
                     struct err *e)
{
    const int S = tr->s->d_sae;
    for (int i = 0; i < S; i++)
        tr->dead[i] = tr->since[i] >= tr->c.dead_window;
    if (sae_trainer_grad(tr, x, n, tr->dead, st, e) < 0)
        return e ? e->code : ERR_NUMERIC;
    memset(tr->fired, 0, (size_t)S);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < S; i++)
            tr->fired[i] |= tr->z[(size_t)t * S + i] > 0.0f;
    sae_trainer_apply(tr);
    for (int i = 0; i < S; i++)
        tr->since[i] = tr->fired[i] ? 0 : tr->since[i] + n;
    tr->tokens += n;
    return 0;
}

int sae_train(struct sae_trainer *tr, const float *x, size_t n, long tokens,
              struct sae_step_stats *tail, struct err *e)
{
    const int C = tr->s->d_in, B = tr->c.batch;
    if (n == 0)
        return err_set(e, ERR_INVALID, "sae trainer", "no training activations");
    size_t *perm = malloc(n * sizeof *perm);
    if (!perm)
        return err_set(e, ERR_NOMEM, "sae trainer", "out of memory for %zu rows", n);
    uint64_t rs = tr->c.seed ^ SAE_SHUFFLE_SALT;
    long steps = (tokens + B - 1) / B, tail_from = steps - (steps / 10 > 0 ? steps / 10 : 1);
    struct sae_step_stats acc = {0};
    long nacc = 0;
    size_t pos = n; /* next row of the current epoch; n: draw a new order */
    int rc = 0;
    for (long step = 0; step < steps; step++) {
        long left = tokens - step * (long)B;
        int nb = left < B ? (int)left : B;
        for (int r = 0; r < nb; r++) {
            if (pos == n) {
                for (size_t i = 0; i < n; i++)
                    perm[i] = i;
                for (size_t i = n - 1; i > 0; i--) {
                    size_t j = (size_t)rng_mod(&rs, i + 1);
                    size_t t = perm[i];
                    perm[i] = perm[j];
                    perm[j] = t;
                }
                pos = 0;
            }
            memcpy(tr->xb + (size_t)r * C, x + perm[pos++] * C, (size_t)C * sizeof(float));
        }
        struct sae_step_stats st;
        if ((rc = sae_trainer_step(tr, tr->xb, nb, &st, e)) < 0)
            break;
        if (step >= tail_from) {
            acc.loss += st.loss;
            acc.mse += st.mse;
            acc.aux += st.aux;
            acc.l1 += st.l1;
            acc.l0 += st.l0;
            acc.ndead = st.ndead;
            nacc++;
        }
    }
    free(perm);
    if (rc == 0 && tail && nacc) {
        acc.loss /= nacc;
        acc.mse /= nacc;
        acc.aux /= nacc;
        acc.l1 /= nacc;
        acc.l0 /= nacc;
        *tail = acc;
    }
    return rc;
}

int sae_trainer_dead(const struct sae_trainer *tr, unsigned char *dead)
{
    long w = tr->c.dead_window < tr->tokens ? tr->c.dead_window : tr->tokens;
    int nd = 0;
    for (int i = 0; i < tr->s->d_sae; i++) {
        dead[i] = tr->tokens > 0 && tr->since[i] >= w;
        nd += dead[i];
    }
    return nd;
}
