/*
 * kernels.h - the numeric building blocks of the GPT-NeoX forward pass.
 *
 * Dense work goes through cblas_sgemm on whole batches (all B*T rows at
 * once); the element-wise kernels here are plain loops written so the
 * compiler vectorises them (no calls into libm inside the hot loops: exp and
 * erf are evaluated by polynomials accurate to ~2 ulp of float).
 *
 * Shapes are given in the first comment line of each kernel, output first.
 * Letters: N rows (B*T), C d_model, K in-features, M out-features.
 */
#ifndef CKPTD_KERNELS_H
#define CKPTD_KERNELS_H

#include <stddef.h>

/* Query rows per block in causal attention (forward and backward): scores
 * for a block are computed against keys [0, block end) only, halving the
 * work at long contexts while keeping every sgemm large. */
#define ATT_BLOCK 128

/* out (N,M) = inp (N,K) @ w(M,K)^T + b (M); b may be NULL. One sgemm. */
void matmul_forward(float *out, const float *inp, const float *w, const float *b,
                    int N, int K, int M);

/* out (N,C) = LayerNorm(inp (N,C)) * w (C) + b (C), biased variance, eps.
 * out may equal inp. */
void layernorm_forward(float *out, const float *inp, const float *w, const float *b,
                       int N, int C, float eps);

/* layernorm_forward that also stores each row's mean (N) and 1/sqrt(var + eps)
 * (N) when those are not NULL; the same arithmetic, so the same output. */
void layernorm_forward_stats(float *out, float *mean, float *rstd, const float *inp,
                             const float *w, const float *b, int N, int C, float eps);

/* x (n) <- 0.5 x (1 + erf(x / sqrt 2)), in place (exact-erf GELU). */
void gelu_forward(float *x, size_t n);
/* x (n) <- tanh-approximated GELU ("gelu_new"), in place. */
void gelu_tanh_forward(float *x, size_t n);

/* x (n) <- exp(x - max) / sum, in place, one row. */
void softmax_row(float *x, int n);

/* Cross-entropy of one row of logits l (V) against `target`, returned
 * (natural log), with l replaced by scale * (softmax(l) - onehot(target)):
 * the row's gradient of a loss that weights it by `scale`. */
double xent_grad_row(float *l, int V, int target, float scale);

/* exp(x) for each element: out (n), inp (n); out may equal inp. */
void vexp(float *out, const float *inp, size_t n);

/* erf(x) for each element, |error| < 3e-7 (about 2 ulp near 1). */
void verf(float *out, const float *inp, size_t n);

/* Rotary embedding on the first `rd` dims of each head's q and k, in place.
 * qkv (B,T,NH,3,HS): fused layout of query_key_value; cosv, sinv (T, rd/2)
 * tables for positions 0..T-1.  Rotate-half convention. */
void rotary_forward(float *qkv, const float *cosv, const float *sinv, int B, int T,
                    int NH, int HS, int rd);
/* Its backward: the gradients of the rotated q and k in dqkv (same layout)
 * become those of the unrotated ones, in place (the inverse rotation). */
void rotary_backward(float *dqkv, const float *cosv, const float *sinv, int B, int T, int NH,
                     int HS, int rd);

/* Fill cos/sin tables (T, rd/2) for base `base`: angle(t,i) = t * base^(-2i/rd),
 * computed as float32 like PyTorch's inv_freq so results match. */
void rotary_tables(float *cosv, float *sinv, int T, int rd, double base);

/* Causal multi-head attention.
 * pattern (B,NH,T,T) receives softmax(q k^T / sqrt(HS)) with zeros above the
 * diagonal; qkv (B,T,NH,3,HS) after rotary.  Scores are computed in blocks
 * of query rows against only the keys they may see. */
void attention_pattern(float *pattern, const float *qkv, int B, int T, int NH, int HS);

/* z (B,T,NH,HS) = pattern (B,NH,T,T) @ v, v taken from qkv (B,T,NH,3,HS).
 * Uses only the causal part of pattern. */
void attention_z(float *z, const float *pattern, const float *qkv, int B, int T,
                 int NH, int HS);

/* attention_z over every key: z = pattern @ v with the whole (T,T) pattern,
 * for a pattern a hook may have written above the diagonal. */
void attention_z_all(float *z, const float *pattern, const float *qkv, int B, int T, int NH,
                     int HS);

/* Cross-entropy per row: losses (N) = -log softmax(logits (N,V))[target (N)].
 * Rows with target < 0 get 0. Returns the mean over rows with target >= 0. */
double crossentropy_forward(float *losses, const float *logits, const int *targets,
                            int N, int V);

/* log sum_i exp(x[i]) of one row x (n), shifted by the row's maximum and
 * summed in double as crossentropy_forward does; *argmax (may be NULL)
 * gets the first index of the maximum. */
double logsumexp_row(const float *x, int n, int *argmax);

/* sum_i p[i] (a[i] - b[i]) of rows p, a, b (n): 16 float partial sums,
 * added in double. */
double dot_diff_row(const float *p, const float *a, const float *b, int n);

#endif
