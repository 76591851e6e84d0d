/*
 * attention.h - causal multi-head attention of GPT-NeoX, forward and
 * backward, on the fused query_key_value layout qkv (B,T,NH,3,HS) (after
 * rotary; scores scaled by 1/sqrt(HS)).
 *
 * Two paths compute the same function:
 *
 * - fused (attention_forward): scores, causal mask, softmax and z in one
 *   pass over blocks of keys, with an online softmax (a running row maximum
 *   and sum; FlashAttention, Dao et al. 2022): per block of ATT_BLOCK query
 *   rows, for each block of ATT_KEYS keys it may see, S = q k^T (sgemm),
 *   P = exp(S - m), z = z * exp(m_old - m) + P v (sgemm).  Nothing of size
 *   T x T is ever stored: a block's scores stay in a per-thread scratch
 *   that fits the cache.  It keeps each row's log-sum-exp for the
 *   backward, which recomputes P block by block instead of reading it.
 *   Tasks are (batch, head, query block), run on the model's threads
 *   (pool.h) with BLAS single-threaded inside.
 *
 * - materialised (attention_scores, attention_softmax, attention_z_pattern):
 *   the whole (B,NH,T,T) scores and pattern, for hooks that read or write
 *   them (attn.hook_attn_scores, attn.hook_pattern).  The scores are those
 *   of TransformerLens: scaled, and -inf above the diagonal.
 *
 * The two agree within float rounding (tests/test_attention.c).
 */
#ifndef CKPTD_ATTENTION_H
#define CKPTD_ATTENTION_H

#include <stddef.h>

/* The block sizes, defined here only: query rows per block (the fused and
 * the materialised paths, forward and backward), and keys per block of the
 * fused kernel (a multiple of ATT_BLOCK; its last block of a query block
 * ends at the query block's end, so only the causal part is computed). */
#ifndef ATT_BLOCK
#define ATT_BLOCK 128
#endif
#ifndef ATT_KEYS
#define ATT_KEYS 512
#endif

/* Floats of per-thread scratch the fused kernels need at context T. */
size_t attention_scratch_floats(int T, int HS);

/* Floating-point operations of attention at (B,T) as both paths compute
 * it: each block of query rows [r0, r1) against keys [0, r1), q k^T and
 * p v, 2*M*N*K each. */
double attention_flops(int B, int T, int NH, int HS);

/* Fused causal attention.  z (B,T,NH,HS) = softmax(q k^T / sqrt(HS), causal)
 * v; lse (B,NH,T) (may be NULL) = log sum_j exp(s_ij) of each query row;
 * qkv (B,T,NH,3,HS); scratch: pool_threads() * attention_scratch_floats. */
void attention_forward(float *z, float *lse, const float *qkv, float *scratch, int B, int T,
                       int NH, int HS);

/* Its backward.  dqkv (B,T,NH,3,HS) receives d/dq, d/dk, d/dv (of the
 * rotated q and k; overwritten); dz (B,T,NH,HS) the gradient at z; zd
 * (B,T,NH,HS) the z the fused forward computed (for each row's
 * sum_j P_ij dP_ij = dz_i . z_i); lse as the forward gave it. */
void attention_backward(float *dqkv, const float *dz, const float *zd, const float *lse,
                        const float *qkv, float *scratch, int B, int T, int NH, int HS);

/* Materialised scores: s (B,NH,T,T) = q k^T / sqrt(HS) where j <= i, -inf
 * above the diagonal.  Each block of query rows is one sgemm against the
 * keys it may see. */
void attention_scores(float *s, const float *qkv, int B, int T, int NH, int HS);

/* p (B,NH,T,T) = softmax of each row of s (may be p): entries at -inf get
 * exactly 0 and a row that is -inf throughout gets zeros (TransformerLens
 * turns its NaN into 0).  A row is summed only up to its last entry above
 * -inf, so an unmasked causal row is summed exactly as softmax_row does. */
void attention_softmax(float *p, const float *s, int B, int NH, int T);

/* z (B,T,NH,HS) = p @ v for a materialised pattern p (B,NH,T,T) that a hook
 * may have written anywhere: each block of query rows reads keys up to the
 * last nonzero entry of its rows (the causal part when nothing was written
 * above the diagonal). */
void attention_z_pattern(float *z, const float *p, const float *qkv, int B, int T, int NH,
                         int HS);

/* The materialised backward of one (batch, head), in two steps so a hook
 * can see d/d scores of every head in between.
 * Pattern step: dv_h (rows of stride 3*NH*HS) += p_used^T dzh over the keys
 * z read; dp (T,T), in: d/d pattern, out: d/d scores = p_soft * (dp -
 * sum_j p_soft dp) (0 where p_soft is; -inf scores give 0).  p_used (T,T):
 * the pattern z was computed from (after hook_pattern); p_soft (T,T): the
 * softmax's output (before it; may be p_used); dzh: d/d z of this head,
 * row stride ldz.
 * Scores step: dq, dk of dqk_h (the head's q at dqk_h, k at dqk_h + HS,
 * rows of stride 3*NH*HS) += d/d q and d/d k from ds (T,T) = d/d scores
 * (the 1/sqrt(HS) applied here); keys up to the last nonzero of ds. */
void attention_backward_pattern_head(float *dv_h, float *dp, const float *p_used,
                                     const float *p_soft, const float *dzh, int ldz, int T,
                                     int NH, int HS);
void attention_backward_scores_head(float *dqk_h, const float *ds, const float *qkv_h, int T,
                                    int NH, int HS);

/* dp (T,T) = dzh v^T: d/d pattern of one (batch, head), every key. */
void attention_dpattern_head(float *dp, const float *dzh, int ldz, const float *qkv_h, int T,
                             int NH, int HS);

#endif
