/*
 * vmath.h - private to the model's kernels (kernels.c, attention.c): the
 * branch-free exp and erf the element-wise loops inline, the row
 * reductions they share, and the function multi-versioning that compiles
 * those loops for AVX-512, AVX2 and the x86-64 baseline.  Everything here
 * is static inline: each including file gets its own vectorised copy.
 */
#ifndef CKPTD_VMATH_H
#define CKPTD_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The element-wise loops are compiled for several instruction sets and the
 * best one the CPU has is chosen when the program loads (GCC function
 * multi-versioning): AVX-512 and AVX2 make them 4-10x faster than the
 * x86-64 baseline, and the binary still runs everywhere. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX512F__)
/* (a build already targeting AVX-512, e.g. -march=native, needs no clones,
 * and clones for lesser targets could not inline the helpers below) */
#define KERNEL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL_CLONES
#endif

/* exp(x) in float: x = k ln2 + r, |r| <= ln2/2, exp(r) by a degree-7
 * Taylor polynomial (relative error < 1e-8 before rounding), 2^k by building
 * the exponent bits.  Branch-free so loops over it vectorise.  Inputs below
 * -87.3 give ~1e-38 rather than 0, harmless in softmax sums. */
static inline float exp_approx(float x)
{
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    const float shifter = 12582912.0f; /* 1.5 * 2^23: rounds to integer */
    float kf = x * 1.44269504088896341f + shifter;
    int32_t ki;
    memcpy(&ki, &kf, sizeof ki);
    ki -= 0x4b400000;
    kf -= shifter;
    float r = x - kf * 0.693145751953125f; /* ln2 split in two for accuracy */
    r = r - kf * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (ki + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* erf(x) from the Chebyshev-fitted erfc of Numerical Recipes (fractional
 * error < 1.2e-7): erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2). */
static inline float erf_approx(float x)
{
    float z = fabsf(x);
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float erfc = t * exp_approx(-z * z + p);
    float r = 1.0f - erfc;
    return x < 0.0f ? -r : r;
}

/* Reductions keep 16 partial results so the loops vectorise without
 * reassociation flags (the order of a float sum is fixed by the code). */
static inline float max_row(const float *x, int n)
{
    float acc[16];
    for (int j = 0; j < 16; j++)
        acc[j] = -INFINITY;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    float mx = -INFINITY;
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int j = 0; j < 16; j++)
        mx = acc[j] > mx ? acc[j] : mx;
    return mx;
}

/* x[i] = exp(x[i] - mx) over the whole blocks of 16, summed into acc[16];
 * returns where the blocks end (the caller finishes the row). */
static inline __attribute__((always_inline)) int exp_blocks16(float *x, int n, float mx,
                                                              float acc[16])
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            x[i + j] = exp_approx(x[i + j] - mx);
            acc[j] += x[i + j];
        }
    return i;
}

#endif
