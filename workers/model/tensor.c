/*
 * tensor.c - F16/BF16 <-> F32 conversions.
 *
 * The scalar conversions work on bit patterns and are exact: every F16 and
 * BF16 value widens to the F32 with the same value, and narrowing rounds to
 * nearest, ties to even.  NaNs stay NaN and come out quiet (the quiet bit
 * set, the rest of the payload kept as far as it fits), which is also what
 * the F16C instructions do, so the vector and scalar paths agree bit for bit.
 */
#include "workers/model/tensor.h"

#include <math.h>
#include <string.h>

#include "workers/model/vmath.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define TENSOR_HAVE_F16C 1
#endif

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t ex = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;

    if (ex == 0x1f) /* inf, or NaN made quiet */
        return bits_f32(sign | 0x7f800000u | (man ? 0x400000u : 0) | (man << 13));
    if (ex == 0) {
        if (man == 0)
            return bits_f32(sign);
        /* Subnormal: man * 2^-24; normalise so the leading 1 is implicit. */
        uint32_t e = 113; /* biased F32 exponent of 2^-14 */
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        return bits_f32(sign | (e << 23) | ((man & 0x3ffu) << 13));
    }
    return bits_f32(sign | ((ex + 112) << 23) | (man << 13));
}

float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

uint16_t f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;

    if (ax > 0x7f800000u) /* NaN: quiet, top of the payload kept */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 rounds to inf (65504 is odd) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal F16: >= 2^-14 */
        uint32_t h = ((ax >> 23) - 112) << 10 | ((ax >> 13) & 0x3ffu);
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
            h++; /* a carry into the exponent is still right */
        return (uint16_t)(sign | h);
    }
    /* Subnormal F16 (or zero): count units of 2^-24. */
    uint32_t e = ax >> 23;
    if (e < 102) /* below 2^-25: rounds to zero */
        return sign;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

void tensor_f32_to_f16(uint16_t *out, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = f32_to_f16(src[i]);
}

void tensor_f32_to_bf16(uint16_t *out, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = f32_to_bf16(src[i]);
}

/* out (n), src (n) F16 at any alignment. */
static void f16_to_f32_scalar(float *out, const uint8_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        out[i] = f16_to_f32(h);
    }
}

#ifdef TENSOR_HAVE_F16C
/* out (n), src (n) F16 at any alignment; eight at a time with F16C. */
__attribute__((target("f16c,avx"))) static void f16_to_f32_f16c(float *out,
                                                                  const uint8_t *src,
                                                                  size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i_u *)(const void *)(src + 2 * i));
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
    }
    f16_to_f32_scalar(out + i, src + 2 * i, n - i);
}

static int have_f16c(void)
{
#if defined(__clang__)
    /* clang's __builtin_cpu_supports does not know "f16c": ask CPUID, and
     * XGETBV for the OS saving the YMM registers. */
    unsigned a, b, c, d, lo, hi;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C) || !(c & bit_AVX) ||
        !(c & bit_OSXSAVE))
        return 0;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return (lo & 6u) == 6u;
#else
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
}
#endif

int tensor_to_f32(float *out, const void *src, enum st_dtype dt, size_t n)
{
    const uint8_t *s = src;

    if (dt != ST_F32 && dt != ST_F16 && dt != ST_BF16)
        return ERR_UNSUPPORTED;
    if (n == 0)
        return 0;
    switch (dt) {
    case ST_F32:
        memcpy(out, src, n * sizeof *out);
        return 0;
    case ST_F16:
#ifdef TENSOR_HAVE_F16C
        if (have_f16c()) {
            f16_to_f32_f16c(out, s, n);
            return 0;
        }
#endif
        f16_to_f32_scalar(out, s, n);
        return 0;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t b;
            memcpy(&b, s + 2 * i, sizeof b);
            out[i] = bf16_to_f32(b);
        }
        return 0;
    default:
        return ERR_UNSUPPORTED;
    }
}

/* Blocks of 4096 values are scanned branch-free for an exponent of all
 * ones (the largest |bits| of the block, a vectorised max); only a block
 * that has one is searched for its index.  One pass at memory speed. */
#define NONFINITE_BLOCK 4096

KERNEL_CLONES static int block_has_nonfinite(const float *x, size_t n)
{
    uint32_t mx = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        b &= 0x7fffffffu;
        mx = b > mx ? b : mx;
    }
    return mx >= 0x7f800000u;
}

size_t tensor_find_nonfinite(const float *x, size_t n)
{
    for (size_t i0 = 0; i0 < n; i0 += NONFINITE_BLOCK) {
        size_t m = n - i0 < NONFINITE_BLOCK ? n - i0 : NONFINITE_BLOCK;
        if (!block_has_nonfinite(x + i0, m))
            continue;
        for (size_t i = i0; i < i0 + m; i++)
            if (!isfinite(x[i]))
                return i;
    }
    return (size_t)-1;
}
