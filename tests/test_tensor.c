/*
 * test_tensor.c - F16/BF16 <-> F32 conversions and the non-finite scan.
 *
 * References, independent of the code under test: hand-computed bit
 * patterns; ldexp() for the value of every F16 bit pattern; a nearest-value
 * search for rounding; and, when the CPU has F16C, the hardware's own
 * F32 -> F16 conversion.  All comparisons are exact (tolerance 0).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/model/tensor.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define TEST_HAVE_X86 1
#endif

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
static int bf16_is_nan(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; }

/* Value of an F16 bit pattern from its definition, in double. */
static double f16_ref(uint16_t h)
{
    int sign = h >> 15, ex = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v;
    if (ex == 0x1f)
        v = man ? NAN : INFINITY;
    else if (ex == 0)
        v = ldexp(man, -24);
    else
        v = ldexp(1024 + man, ex - 25);
    return sign ? -v : v;
}

/* Small deterministic generator (xorshift64*). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

/* ---- F16 ---- */

static void test_f16_known_values(void **state)
{
    (void)state;
    static const struct {
        uint16_t h;
        float f;
    } known[] = {
        {0x3c00, 1.0f},
        {0xc000, -2.0f},
        {0x7bff, 65504.0f},
        {0xfbff, -65504.0f},
        {0x0001, 5.9604644775390625e-8f}, /* 2^-24, smallest subnormal */
        {0x03ff, 6.097555160522461e-5f},  /* 1023 * 2^-24, largest subnormal */
        {0x0400, 6.103515625e-5f},        /* 2^-14, smallest normal */
        {0x3bff, 0.99951171875f},
        {0x3c01, 1.0009765625f},
        {0x3555, 0.333251953125f},
        {0x4248, 3.140625f},
        {0x0000, 0.0f},
        {0x7c00, INFINITY},
        {0xfc00, -INFINITY},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        float f = f16_to_f32(known[i].h);
        if (bits(f) != bits(known[i].f))
            fail_msg("f16_to_f32(0x%04x) = %.9g, want %.9g", known[i].h, f, known[i].f);
        assert_int_equal(f32_to_f16(known[i].f), known[i].h);
    }
    /* Signed zero keeps its sign both ways. */
    assert_int_equal(bits(f16_to_f32(0x8000)), 0x80000000u);
    assert_int_equal(f32_to_f16(-0.0f), 0x8000);
    /* NaNs stay NaN, with their sign. */
    const uint16_t nans[] = {0x7e00, 0x7c01, 0x7fff, 0xfe00, 0xfc01};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        float f = f16_to_f32(nans[i]);
        assert_true(isnan(f));
        assert_int_equal(signbit(f) != 0, (nans[i] >> 15) != 0);
    }
}

/* Every F16 value: widening matches the definition, and narrowing it
 * again gives the same bits (NaNs: NaN, same sign, payload kept up to the
 * quiet bit). */
static void test_f16_all_values(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = f16_to_f32(h);
        uint16_t back = f32_to_f16(f);
        if (f16_is_nan(h)) {
            assert_true(isnan(f));
            assert_true(f16_is_nan(back));
            assert_int_equal(back & 0x8000, h & 0x8000);
            assert_int_equal(back & 0x1ff, h & 0x1ff);
            continue;
        }
        if ((double)f != f16_ref(h) || !signbit(f) != !signbit(f16_ref(h)))
            fail_msg("f16_to_f32(0x%04x) = %.9g, want %.9g", h, f, f16_ref(h));
        if (back != h)
            fail_msg("f32_to_f16(f16_to_f32(0x%04x)) = 0x%04x", h, back);
    }
}

static void test_f32_to_f16_ties_to_even(void **state)
{
    (void)state;
    const float u = 0x1p-11f; /* half an F16 ulp at 1.0 */
    assert_int_equal(f32_to_f16(1.0f + u), 0x3c00);            /* tie, down to even */
    assert_int_equal(f32_to_f16(1.0f + 3 * u), 0x3c02);        /* tie, up to even */
    assert_int_equal(f32_to_f16(1.0f + u + 0x1p-20f), 0x3c01); /* above the tie */
    assert_int_equal(f32_to_f16(1.0f + u - 0x1p-20f), 0x3c00); /* below the tie */
    assert_int_equal(f32_to_f16(-(1.0f + u)), 0xbc00);
    assert_int_equal(f32_to_f16(-(1.0f + 3 * u)), 0xbc02);
    /* A carry out of the mantissa into the exponent. */
    assert_int_equal(f32_to_f16(2.0f - 0x1p-12f), 0x4000);
    /* The top of the range: 65520 is the tie between 65504 (odd) and 2^16. */
    assert_int_equal(f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(f32_to_f16(-65520.0f), 0xfc00);
    assert_int_equal(f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(f32_to_f16(FLT_MAX), 0x7c00);
    assert_int_equal(f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(f32_to_f16(-INFINITY), 0xfc00);
    /* Subnormals: 2^-25 is the tie between 0 and 2^-24. */
    assert_int_equal(f32_to_f16(0x1p-25f), 0x0000);
    assert_int_equal(f32_to_f16(-0x1p-25f), 0x8000);
    assert_int_equal(f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
    assert_int_equal(f32_to_f16(3 * 0x1p-25f), 0x0002); /* tie 1|2 -> 2 */
    assert_int_equal(f32_to_f16(5 * 0x1p-25f), 0x0002); /* tie 2|3 -> 2 */
    assert_int_equal(f32_to_f16(0x1p-26f), 0x0000);
    assert_int_equal(f32_to_f16(1e-10f), 0x0000);
    assert_int_equal(f32_to_f16(0x1p-149f), 0x0000); /* F32 subnormal */
    /* Largest subnormal + half an ulp: tie between 0x03ff and 0x0400. */
    assert_int_equal(f32_to_f16(1023.5f * 0x1p-24f), 0x0400);
    assert_int_equal(f32_to_f16(1022.5f * 0x1p-24f), 0x03fe);
    /* NaN stays NaN, even with a payload only in bits F16 drops. */
    assert_true(f16_is_nan(f32_to_f16(NAN)));
    assert_true(f16_is_nan(f32_to_f16(from_bits(0x7f800001u))));
    assert_int_equal(f32_to_f16(from_bits(0xff800001u)) & 0x8000, 0x8000);
}

/* Random finite floats in F16 range: the result is a nearest F16, and an
 * even one on ties.  Uses f16_to_f32, checked above against ldexp. */
static void test_f32_to_f16_nearest(void **state)
{
    (void)state;
    for (int i = 0; i < 1000000; i++) {
        uint32_t x = rng32();
        float f = from_bits(x);
        if (!isfinite(f) || fabsf(f) >= 65504.0f)
            continue;
        uint16_t h = f32_to_f16(f);
        double d = fabs((double)f - (double)f16_to_f32(h));
        /* The neighbours on either side (same sign, magnitude +-1). */
        uint16_t mag = h & 0x7fff;
        for (int s = -1; s <= 1; s += 2) {
            if ((mag == 0 && s < 0) || mag + s > 0x7bff)
                continue;
            uint16_t nb = (uint16_t)((h & 0x8000) | (mag + s));
            double dn = fabs((double)f - (double)f16_to_f32(nb));
            if (dn < d || (dn == d && (h & 1)))
                fail_msg("f32_to_f16(%a) = 0x%04x, but 0x%04x is %s", (double)f, h, nb,
                         dn < d ? "nearer" : "as near and even");
        }
    }
}

#ifdef TEST_HAVE_X86
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
    __m128i h = _mm_cvtps_ph(_mm_set1_ps(f), _MM_FROUND_TO_NEAREST_INT);
    return (uint16_t)_mm_extract_epi16(h, 0);
}

static int have_f16c(void)
{
#if defined(__clang__)
    /* clang's __builtin_cpu_supports does not know "f16c": ask CPUID,
     * and XGETBV for the OS saving the YMM registers. */
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

/* The hardware conversion as a second reference, on random bit patterns
 * (NaNs, infinities and subnormals included). */
static void test_f32_to_f16_matches_hardware(void **state)
{
    (void)state;
#ifdef TEST_HAVE_X86
    if (!have_f16c()) {
        print_message("no F16C: skipped\n");
        skip();
    }
    for (int i = 0; i < 2000000; i++) {
        uint32_t x = rng32();
        if (i & 1) /* bias half the draws towards F16's range */
            x = (x & 0x807fffffu) | ((100u + (x % 48u)) << 23);
        float f = from_bits(x);
        uint16_t want = hw_f32_to_f16(f), got = f32_to_f16(f);
        if (got != want)
            fail_msg("f32_to_f16(0x%08x) = 0x%04x, hardware 0x%04x", x, got, want);
    }
#else
    skip();
#endif
}

/* tensor_to_f32 on F16 (the F16C path where present) equals f16_to_f32
 * on every value, from an unaligned source, for an odd length, and for
 * every short length (the scalar tail). */
static void test_f16_vector_matches_scalar(void **state)
{
    (void)state;
    const size_t n = 65536 + 7;
    uint8_t *raw = malloc(2 * n + 1);
    float *got = malloc((n + 1) * sizeof *got);
    float *want = malloc(n * sizeof *want);
    assert_true(raw && got && want);
    uint8_t *src = raw + 1; /* odd address */
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(i * 40503u); /* odd multiplier: a permutation */
        memcpy(src + 2 * i, &h, 2);
        want[i] = f16_to_f32(h);
    }
    got[n] = 12345.0f;
    assert_int_equal(tensor_to_f32(got, src, ST_F16, n), 0);
    for (size_t i = 0; i < n; i++)
        if (bits(got[i]) != bits(want[i]))
            fail_msg("element %zu (0x%04x): 0x%08x, scalar 0x%08x", i,
                     (unsigned)(uint16_t)(i * 40503u), bits(got[i]), bits(want[i]));
    assert_true(got[n] == 12345.0f); /* nothing written past n */

    for (size_t len = 0; len <= 33; len++) {
        for (size_t k = 0; k <= len; k++)
            got[k] = -7.0f;
        assert_int_equal(tensor_to_f32(got, src + 2 * 3, ST_F16, len), 0);
        assert_memory_equal(got, want + 3, len * sizeof *got);
        assert_true(got[len] == -7.0f);
    }
#ifdef TEST_HAVE_X86
    print_message("F16C %s\n", have_f16c() ? "used" : "not available");
#endif
    free(want);
    free(got);
    free(raw);
}

/* ---- BF16 ---- */

static void test_bf16_known_values(void **state)
{
    (void)state;
    static const struct {
        uint16_t b;
        float f;
    } known[] = {
        {0x3f80, 1.0f},      {0xc000, -2.0f},       {0x4049, 3.140625f},
        {0x7f7f, 0x1.fep127f}, {0x0080, 0x1p-126f}, {0x0001, 0x1p-133f},
        {0x0000, 0.0f},      {0x7f80, INFINITY},    {0xff80, -INFINITY},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        float f = bf16_to_f32(known[i].b);
        if (bits(f) != bits(known[i].f))
            fail_msg("bf16_to_f32(0x%04x) = %a, want %a", known[i].b, (double)f,
                     (double)known[i].f);
        assert_int_equal(f32_to_bf16(known[i].f), known[i].b);
    }
    assert_true(isnan(bf16_to_f32(0x7fc0)));
    assert_int_equal(bits(bf16_to_f32(0x8000)), 0x80000000u);
}

static void test_f32_to_bf16_ties_to_even(void **state)
{
    (void)state;
    const float u = 0x1p-8f; /* half a BF16 ulp at 1.0 */
    assert_int_equal(f32_to_bf16(1.0f + u), 0x3f80);            /* tie, down */
    assert_int_equal(f32_to_bf16(1.0f + 3 * u), 0x3f82);        /* tie, up */
    assert_int_equal(f32_to_bf16(1.0f + u + 0x1p-20f), 0x3f81); /* above */
    assert_int_equal(f32_to_bf16(1.0f + u - 0x1p-20f), 0x3f80); /* below */
    assert_int_equal(f32_to_bf16(-(1.0f + 3 * u)), 0xbf82);
    assert_int_equal(f32_to_bf16(2.0f - 0x1p-10f), 0x4000);     /* carry */
    assert_int_equal(f32_to_bf16(FLT_MAX), 0x7f80);             /* rounds to inf */
    assert_int_equal(f32_to_bf16(from_bits(0x7f7f7fffu)), 0x7f7f);
    assert_int_equal(f32_to_bf16(from_bits(0x7f7f8000u)), 0x7f80); /* tie, odd -> up */
    assert_int_equal(f32_to_bf16(from_bits(0x00008000u)), 0x0000); /* subnormal tie */
    assert_int_equal(f32_to_bf16(from_bits(0x00018000u)), 0x0002);
    assert_int_equal(f32_to_bf16(-0.0f), 0x8000);
    /* NaN stays NaN even when its payload is only in the dropped bits. */
    assert_true(bf16_is_nan(f32_to_bf16(from_bits(0x7f800001u))));
    assert_true(bf16_is_nan(f32_to_bf16(NAN)));
    assert_int_equal(f32_to_bf16(from_bits(0xff800001u)) & 0x8000, 0x8000);
}

static void test_bf16_all_values(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t b = (uint16_t)i;
        float f = bf16_to_f32(b);
        assert_int_equal(bits(f), (uint32_t)b << 16);
        uint16_t back = f32_to_bf16(f);
        if (bf16_is_nan(b)) {
            assert_true(bf16_is_nan(back));
            assert_int_equal(back & 0x8000, b & 0x8000);
        } else if (back != b) {
            fail_msg("f32_to_bf16(bf16_to_f32(0x%04x)) = 0x%04x", b, back);
        }
    }
}

/* ---- whole tensors ---- */

static void test_to_f32_dtypes(void **state)
{
    (void)state;
    const float vals[5] = {1.5f, -0.0f, 3e38f, 0x1p-140f, -7.25f};
    uint8_t raw[2 + sizeof vals];
    float out[6];

    /* F32 from an unaligned source is a copy. */
    memcpy(raw + 1, vals, sizeof vals);
    out[5] = 99.0f;
    assert_int_equal(tensor_to_f32(out, raw + 1, ST_F32, 5), 0);
    assert_memory_equal(out, vals, sizeof vals);
    assert_true(out[5] == 99.0f);

    /* BF16, unaligned. */
    const uint16_t bf[3] = {0x3f80, 0xc049, 0x7f80};
    memcpy(raw + 1, bf, sizeof bf);
    assert_int_equal(tensor_to_f32(out, raw + 1, ST_BF16, 3), 0);
    assert_true(out[0] == 1.0f);
    assert_true(out[1] == -3.140625f);
    assert_true(isinf(out[2]) && out[2] > 0);
    assert_true(out[5] == 99.0f);

    /* Anything else: ERR_UNSUPPORTED, out untouched. */
    const enum st_dtype other[] = {ST_F64, ST_I64, ST_I32, ST_U8, ST_BOOL, ST_F8_E4M3};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        for (int k = 0; k < 6; k++)
            out[k] = -1.0f;
        assert_int_equal(tensor_to_f32(out, raw, other[i], 2), ERR_UNSUPPORTED);
        for (int k = 0; k < 6; k++)
            assert_true(out[k] == -1.0f);
    }

    /* Nothing to convert. */
    assert_int_equal(tensor_to_f32(NULL, NULL, ST_F32, 0), 0);
    assert_int_equal(tensor_to_f32(NULL, NULL, ST_F16, 0), 0);
    assert_int_equal(tensor_to_f32(NULL, NULL, ST_BF16, 0), 0);
}

static void test_f32_to_half_arrays(void **state)
{
    (void)state;
    enum { N = 1001 };
    float *src = malloc(N * sizeof *src);
    uint16_t *h = malloc((N + 1) * sizeof *h), *b = malloc((N + 1) * sizeof *b);
    assert_true(src && h && b);
    for (int i = 0; i < N; i++)
        src[i] = from_bits(rng32());
    src[0] = 1.0f;
    src[1] = 65520.0f;
    h[N] = b[N] = 0xabcd;
    tensor_f32_to_f16(h, src, N);
    tensor_f32_to_bf16(b, src, N);
    assert_int_equal(h[0], 0x3c00);
    assert_int_equal(h[1], 0x7c00);
    assert_int_equal(b[0], 0x3f80);
    for (int i = 0; i < N; i++) {
        assert_int_equal(h[i], f32_to_f16(src[i]));
        assert_int_equal(b[i], f32_to_bf16(src[i]));
    }
    assert_int_equal(h[N], 0xabcd);
    assert_int_equal(b[N], 0xabcd);
    tensor_f32_to_f16(NULL, NULL, 0);
    tensor_f32_to_bf16(NULL, NULL, 0);
    free(b);
    free(h);
    free(src);
}

static void test_find_nonfinite(void **state)
{
    (void)state;
    enum { N = 37 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (float)i - 18.0f;
    x[3] = FLT_MAX;
    x[4] = -FLT_MAX;
    x[5] = 0x1p-149f;
    assert_int_equal(tensor_find_nonfinite(x, N), (size_t)-1);
    assert_int_equal(tensor_find_nonfinite(x, 0), (size_t)-1);
    assert_int_equal(tensor_find_nonfinite(NULL, 0), (size_t)-1);

    x[N - 1] = -INFINITY;
    assert_int_equal(tensor_find_nonfinite(x, N), N - 1);
    assert_int_equal(tensor_find_nonfinite(x, N - 1), (size_t)-1);
    x[20] = NAN;
    assert_int_equal(tensor_find_nonfinite(x, N), 20);
    x[7] = INFINITY;
    assert_int_equal(tensor_find_nonfinite(x, N), 7);
    x[0] = from_bits(0xffc00001u); /* a negative NaN */
    assert_int_equal(tensor_find_nonfinite(x, N), 0);
    assert_int_equal(tensor_find_nonfinite(x + 1, N - 1), 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_f16_all_values),
        cmocka_unit_test(test_f32_to_f16_ties_to_even),
        cmocka_unit_test(test_f32_to_f16_nearest),
        cmocka_unit_test(test_f32_to_f16_matches_hardware),
        cmocka_unit_test(test_f16_vector_matches_scalar),
        cmocka_unit_test(test_bf16_known_values),
        cmocka_unit_test(test_f32_to_bf16_ties_to_even),
        cmocka_unit_test(test_bf16_all_values),
        cmocka_unit_test(test_to_f32_dtypes),
        cmocka_unit_test(test_f32_to_half_arrays),
        cmocka_unit_test(test_find_nonfinite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
