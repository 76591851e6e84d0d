/*
 * kernels.h - the numeric building blocks of the GPT-NeoX forward pass.
 *
 * Dense work goes through cblas_sgemm on whole batches (all B*T rows at
 * once); the element-wise kernels here are plain loops written so the
 * compiler vectorises them (no calls into libm inside the hot loops: exp and
 * erf are evaluated by polynomials accurate to ~2 ulp of float), run in
 * blocks of rows on the model's threads (pool.h) when there is enough
 * work; the results do not depend on the thread count.
 *
 * Shapes are given in the first comment line of each kernel, output first.
 * Letters: N rows (B*T), C d_model, K in-features, M out-features.
 */
#ifndef CKPTD_KERNELS_H
#define CKPTD_KERNELS_H

#include <stddef.h>

/* cblas_sgemm (row-major) with the work split over the model's threads
 * (pool.h): blocks of C's rows, or of its columns when C is wider than
 * tall, each one single-threaded sgemm.  A block's products run over the
 * whole K as one sgemm would, so the numbers are those of one thread,
 * whatever the thread count; OpenBLAS's own threads are not used.  Must
 * not be called from a pool task. */
void sgemm_par(int transa, int transb, int M, int N, int K, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* out (N,M) = inp (N,K) @ w(M,K)^T + b (M); b may be NULL. One sgemm_par. */
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

/* The steps of a LayerNorm whose hook points are hooked (TransformerLens's
 * order): mean (N), scale (N) = sqrt(biased var + eps) and rstd (N) =
 * 1/scale (may be NULL) of inp (N,C); out (N,C) = (inp - mean) / scale;
 * x (N,C) <- x * w (C) + b (C) in place.  Statistics as layernorm_forward's. */
void layernorm_scale(float *mean, float *scale, float *rstd, const float *inp, int N, int C,
                     float eps);
void layernorm_normalize(float *out, const float *inp, const float *mean, const float *scale,
                         int N, int C);
void layernorm_affine(float *x, const float *w, const float *b, int N, int C);

/* x (n) += y (n), or x = (x + y) + z with z (n) not NULL (in that order,
 * so a parallel residual's update rounds as two adds would). */
void vadd(float *x, const float *y, const float *z, size_t n);

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
