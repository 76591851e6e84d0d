#include "workers/model/attention.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "workers/model/pool.h"
#include "workers/model/vmath.h"

/* Scratch of one thread: (QB,KB) scores / probabilities, (QB,KB) their
 * gradient, (QB,HS) the running z, (QB) row maximum, (QB) row sum, and
 * the head's q, k, v copied out of the fused layout, (T,HS) each. */
size_t attention_scratch_floats(int T, int HS)
{
    return 2 * (size_t)ATT_BLOCK * ATT_KEYS + (size_t)ATT_BLOCK * HS + 2 * ATT_BLOCK +
           3 * (size_t)T * HS + 64;
}

/* One head's q, k, v (T,HS) each, dense, from the fused qkv rows of stride
 * ld: the rows of one head are 3*NH*HS floats apart in qkv, which puts
 * each on its own page at long contexts; dense copies keep the blocks'
 * products out of the TLB's way. */
static void head_copy(float *q, float *k, float *v, const float *src, int T, int ld, int HS)
{
    for (int t = 0; t < T; t++) {
        const float *r = src + (size_t)t * ld;
        memcpy(q + (size_t)t * HS, r, (size_t)HS * sizeof(float));
        memcpy(k + (size_t)t * HS, r + HS, (size_t)HS * sizeof(float));
        memcpy(v + (size_t)t * HS, r + 2 * HS, (size_t)HS * sizeof(float));
    }
}

double attention_flops(int B, int T, int NH, int HS)
{
    double f = 0.0; /* query block [r0, r1) against keys [0, r1): q k^T and p v */
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        f += 2.0 * 2.0 * (r1 - r0) * r1 * HS;
    }
    return f * B * NH;
}

static int nblocks(int T) { return (T + ATT_BLOCK - 1) / ATT_BLOCK; }

/* ---- fused forward ---- */

struct fwd_ctx {
    float *z, *lse, *scratch;
    const float *qkv;
    int B, T, NH, HS, nqb;
};

/* One row's online-softmax step on a block of scores s (n valid entries,
 * `width` columns; the rest of the row is zeroed): s becomes
 * exp(s - m_new); *m and *l are updated; returns exp(m_old - m_new), the
 * factor the row's running z must be scaled by. */
KERNEL_CLONES static float online_row(float *s, int n, int width, float *m, float *l)
{
    /* whole vectors only: the masked part and the padding up to a multiple
     * of 16 are -inf, whose exp is taken as exactly 0 */
    const int w16 = (width + 15) & ~15;
    for (int i = n; i < w16; i++)
        s[i] = -INFINITY;
    float acc[16];
    for (int j = 0; j < 16; j++)
        acc[j] = -INFINITY;
    for (int i = 0; i < w16; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] = s[i + j] > acc[j] ? s[i + j] : acc[j];
    float mx = acc[0];
    for (int j = 1; j < 16; j++)
        mx = acc[j] > mx ? acc[j] : mx;
    const float m_new = mx > *m ? mx : *m;
    const float alpha = *m == -INFINITY ? 0.0f : exp_approx(*m - m_new);
    for (int j = 0; j < 16; j++)
        acc[j] = 0.0f;
    for (int i = 0; i < w16; i += 16)
        for (int j = 0; j < 16; j++) {
            float x = s[i + j], e = exp_approx(x - m_new);
            e = x == -INFINITY ? 0.0f : e;
            s[i + j] = e;
            acc[j] += e;
        }
    float sum = 0.0f;
    for (int j = 0; j < 16; j++)
        sum += acc[j];
    *l = *l * alpha + sum;
    *m = m_new;
    return alpha;
}

KERNEL_CLONES static void scale_row(float *x, int n, float a)
{
    for (int i = 0; i < n; i++)
        x[i] *= a;
}

/* Task: one (batch, head), its query blocks in turn. */
static void fwd_task(void *vctx, int task, int tid)
{
    const struct fwd_ctx *c = vctx;
    const int T = c->T, NH = c->NH, HS = c->HS, C = NH * HS, ld = 3 * C;
    const int b = task / NH, h = task % NH;
    const float scale = 1.0f / sqrtf((float)HS);
    float *S = c->scratch + (size_t)tid * attention_scratch_floats(T, HS);
    float *O = S + 2 * (size_t)ATT_BLOCK * ATT_KEYS;
    float *mrow = O + (size_t)ATT_BLOCK * HS, *lrow = mrow + ATT_BLOCK;
    float *q = lrow + ATT_BLOCK, *k = q + (size_t)T * HS, *v = k + (size_t)T * HS;
    head_copy(q, k, v, c->qkv + (size_t)b * T * ld + (size_t)h * 3 * HS, T, ld, HS);
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        const int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, R = r1 - r0;
        for (int i = 0; i < R; i++) {
            mrow[i] = -INFINITY;
            lrow[i] = 0.0f;
        }
        for (int k0 = 0; k0 < r1; k0 += ATT_KEYS) {
            const int k1 = k0 + ATT_KEYS < r1 ? k0 + ATT_KEYS : r1, KN = k1 - k0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, KN, HS, scale,
                        q + (size_t)r0 * HS, HS, k + (size_t)k0 * HS, HS, 0.0f, S, ATT_KEYS);
            for (int i = 0; i < R; i++) {
                /* keys up to the row's own position: the last block (the
                 * one that reaches the query block) is where row i sees
                 * k0..r0+i */
                int n = k1 <= r0 ? KN : r0 + i + 1 - k0;
                float a = online_row(S + (size_t)i * ATT_KEYS, n, KN, &mrow[i], &lrow[i]);
                if (k0 > 0)
                    scale_row(O + (size_t)i * HS, HS, a);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, HS, KN, 1.0f, S, ATT_KEYS,
                        v + (size_t)k0 * HS, HS, k0 > 0 ? 1.0f : 0.0f, O, HS);
        }
        float *zo = c->z + ((size_t)b * T + r0) * C + (size_t)h * HS;
        for (int i = 0; i < R; i++) {
            const float inv = 1.0f / lrow[i];
            for (int d = 0; d < HS; d++)
                zo[(size_t)i * C + d] = O[(size_t)i * HS + d] * inv;
            if (c->lse)
                c->lse[((size_t)b * NH + h) * T + r0 + i] = mrow[i] + logf(lrow[i]);
        }
    }
}

void attention_forward(float *z, float *lse, const float *qkv, float *scratch, int B, int T,
                       int NH, int HS)
{
    struct fwd_ctx c = {z, lse, scratch, qkv, B, T, NH, HS, nblocks(T)};
    pool_for(B * NH, fwd_task, &c, 1);
}

/* ---- fused backward ---- */

struct bwd_ctx {
    float *dqkv, *scratch;
    const float *dz, *zd, *lse, *qkv;
    int B, T, NH, HS;
};

/* p (n) = exp(s - lse) for the n visible keys, 0 for the rest of width. */
KERNEL_CLONES static void probs_row(float *s, int n, int width, float lse)
{
    for (int i = 0; i < n; i++)
        s[i] = exp_approx(s[i] - lse);
    for (int i = n; i < width; i++)
        s[i] = 0.0f;
}

/* ds (n) = p * (dp - D) * scale, in place on dp. */
KERNEL_CLONES static void dscores_row(float *dp, const float *p, int n, float D, float scale)
{
    for (int i = 0; i < n; i++)
        dp[i] = scale * p[i] * (dp[i] - D);
}

/* Task: one (batch, head): dk and dv gather from every query block. */
static void bwd_task(void *vctx, int task, int tid)
{
    const struct bwd_ctx *c = vctx;
    const int T = c->T, NH = c->NH, HS = c->HS, C = NH * HS, ld = 3 * C;
    const int b = task / NH, h = task % NH;
    const float scale = 1.0f / sqrtf((float)HS);
    float *P = c->scratch + (size_t)tid * attention_scratch_floats(T, HS);
    float *dP = P + (size_t)ATT_BLOCK * ATT_KEYS;
    float *Drow = dP + (size_t)ATT_BLOCK * ATT_KEYS;
    const size_t base = (size_t)b * T * ld + (size_t)h * 3 * HS;
    const float *q = c->qkv + base, *k = q + HS, *v = q + 2 * HS;
    float *dq = c->dqkv + base, *dk = dq + HS, *dv = dq + 2 * HS;
    const float *dzh = c->dz + (size_t)b * T * C + (size_t)h * HS;
    const float *zh = c->zd + (size_t)b * T * C + (size_t)h * HS;
    const float *lse = c->lse + ((size_t)b * NH + h) * T;
    for (int t = 0; t < T; t++)
        memset(dq + (size_t)t * ld, 0, 3 * (size_t)HS * sizeof(float));
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        const int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, R = r1 - r0;
        for (int i = 0; i < R; i++) { /* sum_j P_ij dP_ij = dz_i . z_i */
            const float *a = dzh + (size_t)(r0 + i) * C, *zz = zh + (size_t)(r0 + i) * C;
            float s = 0.0f;
            for (int d = 0; d < HS; d++)
                s += a[d] * zz[d];
            Drow[i] = s;
        }
        for (int k0 = 0; k0 < r1; k0 += ATT_KEYS) {
            const int k1 = k0 + ATT_KEYS < r1 ? k0 + ATT_KEYS : r1, KN = k1 - k0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, KN, HS, scale,
                        q + (size_t)r0 * ld, ld, k + (size_t)k0 * ld, ld, 0.0f, P, ATT_KEYS);
            for (int i = 0; i < R; i++) {
                int n = k1 <= r0 ? KN : r0 + i + 1 - k0;
                probs_row(P + (size_t)i * ATT_KEYS, n, KN, lse[r0 + i]);
            }
            /* dP = dz v^T; dv += P^T dz */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, KN, HS, 1.0f,
                        dzh + (size_t)r0 * C, C, v + (size_t)k0 * ld, ld, 0.0f, dP, ATT_KEYS);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, KN, HS, R, 1.0f, P, ATT_KEYS,
                        dzh + (size_t)r0 * C, C, 1.0f, dv + (size_t)k0 * ld, ld);
            for (int i = 0; i < R; i++)
                dscores_row(dP + (size_t)i * ATT_KEYS, P + (size_t)i * ATT_KEYS, KN, Drow[i],
                            scale);
            /* dq += dS k; dk += dS^T q (masked entries of dS are 0: P is) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, HS, KN, 1.0f, dP,
                        ATT_KEYS, k + (size_t)k0 * ld, ld, 1.0f, dq + (size_t)r0 * ld, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, KN, HS, R, 1.0f, dP, ATT_KEYS,
                        q + (size_t)r0 * ld, ld, 1.0f, dk + (size_t)k0 * ld, ld);
        }
    }
}

void attention_backward(float *dqkv, const float *dz, const float *zd, const float *lse,
                        const float *qkv, float *scratch, int B, int T, int NH, int HS)
{
    struct bwd_ctx c = {dqkv, scratch, dz, zd, lse, qkv, B, T, NH, HS};
    pool_for(B * NH, bwd_task, &c, 1);
}

/* ---- materialised ---- */

void attention_scores(float *s, const float *qkv, int B, int T, int NH, int HS)
{
    const int ld = 3 * NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * ld + (size_t)h * 3 * HS;
            const float *k = q + HS;
            float *p = s + ((size_t)b * NH + h) * T * T;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, HS, scale,
                            q + (size_t)r0 * ld, ld, k, ld, 0.0f, p + (size_t)r0 * T, T);
                for (int i = r0; i < r1; i++)
                    for (int j = i + 1; j < T; j++)
                        p[(size_t)i * T + j] = -INFINITY;
            }
        }
}

/* One row: softmax over [0, n) with -inf entries giving 0; zeros after. */
KERNEL_CLONES static void softmax_masked_row(float *x, int n, int width)
{
    float mx = max_row(x, n);
    if (n == 0 || mx == -INFINITY) { /* nothing visible: TransformerLens's NaN -> 0 */
        memset(x, 0, (size_t)width * sizeof(float));
        return;
    }
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            float e = exp_approx(x[i + j] - mx);
            x[i + j] = x[i + j] == -INFINITY ? 0.0f : e;
            acc[j] += x[i + j];
        }
    float s = 0.0f;
    for (; i < n; i++) {
        float e = exp_approx(x[i] - mx);
        x[i] = x[i] == -INFINITY ? 0.0f : e;
        s += x[i];
    }
    for (int j = 0; j < 16; j++)
        s += acc[j];
    float inv = 1.0f / s;
    for (i = 0; i < n; i++)
        x[i] *= inv;
    for (i = n; i < width; i++)
        x[i] = 0.0f;
}

void attention_softmax(float *p, const float *s, int B, int NH, int T)
{
    const size_t rows = (size_t)B * NH * T;
    for (size_t r = 0; r < rows; r++) {
        float *x = p + r * T;
        if (x != s + r * T)
            memcpy(x, s + r * T, (size_t)T * sizeof(float));
        int n = T;
        while (n > 0 && x[n - 1] == -INFINITY)
            n--;
        softmax_masked_row(x, n, T);
    }
}

/* Keys a block of pattern rows [r0, r1) reaches: up to its last nonzero. */
static int keys_reached(const float *p, int T, int r0, int r1)
{
    int kmax = r1;
    for (int i = r0; i < r1; i++)
        for (int j = T - 1; j >= kmax; j--)
            if (p[(size_t)i * T + j] != 0.0f) {
                kmax = j + 1;
                break;
            }
    return kmax;
}

void attention_z_pattern(float *z, const float *p, const float *qkv, int B, int T, int NH,
                         int HS)
{
    const int ld = 3 * NH * HS, C = NH * HS;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *v = qkv + (size_t)b * T * ld + (size_t)h * 3 * HS + 2 * HS;
            const float *ph = p + ((size_t)b * NH + h) * T * T;
            for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                int kn = keys_reached(ph, T, r0, r1);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, HS, kn, 1.0f,
                            ph + (size_t)r0 * T, T, v, ld, 0.0f,
                            z + ((size_t)b * T + r0) * C + (size_t)h * HS, C);
            }
        }
}

void attention_dpattern_head(float *dp, const float *dzh, int ldz, const float *qkv_h, int T,
                             int NH, int HS)
{
    const int ld = 3 * NH * HS;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f, dzh, ldz,
                qkv_h + 2 * HS, ld, 0.0f, dp, T);
}

void attention_backward_pattern_head(float *dv_h, float *dp, const float *p_used,
                                     const float *p_soft, const float *dzh, int ldz, int T,
                                     int NH, int HS)
{
    const int ld = 3 * NH * HS;
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, R = r1 - r0;
        /* dv += P^T dz over the keys z read */
        int kn = keys_reached(p_used, T, r0, r1);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kn, HS, R, 1.0f,
                    p_used + (size_t)r0 * T, T, dzh + (size_t)r0 * ldz, ldz, 1.0f, dv_h, ld);
        /* softmax backward, at the softmax's own output */
        for (int i = r0; i < r1; i++) {
            const float *pr = p_soft + (size_t)i * T;
            float *g = dp + (size_t)i * T;
            int n = T;
            while (n > 0 && pr[n - 1] == 0.0f)
                n--;
            float sum = 0.0f;
            for (int j = 0; j < n; j++)
                sum += pr[j] * g[j];
            for (int j = 0; j < n; j++)
                g[j] = pr[j] * (g[j] - sum);
            for (int j = n; j < T; j++)
                g[j] = 0.0f;
        }
    }
}

void attention_backward_scores_head(float *dqk_h, const float *ds, const float *qkv_h, int T,
                                    int NH, int HS)
{
    const int ld = 3 * NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *q = qkv_h, *k = q + HS;
    float *dq = dqk_h, *dk = dq + HS;
    for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        int r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, R = r1 - r0;
        int ks = keys_reached(ds, T, r0, r1);
        /* dq = scale dS k, dk += scale dS^T q, over the keys dS reaches */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, HS, ks, scale,
                    ds + (size_t)r0 * T, T, k, ld, 1.0f, dq + (size_t)r0 * ld, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ks, HS, R, scale,
                    ds + (size_t)r0 * T, T, q + (size_t)r0 * ld, ld, 1.0f, dk, ld);
    }
}
