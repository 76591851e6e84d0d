#include "common/rng.h"

#include <math.h>

uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint32_t rng_below(uint64_t *state, uint32_t n)
{
    return (uint32_t)(((rng_next(state) >> 32) * (uint64_t)n) >> 32);
}

uint64_t rng_mod(uint64_t *state, uint64_t n) { return rng_next(state) % n; }

float rng_symmetric(uint64_t *state)
{
    uint32_t k = (uint32_t)(rng_next(state) >> 40); /* 24 bits */
    return (float)k / 8388608.0f - 1.0f;
}

double rng_unit(uint64_t *state) { return (double)(rng_next(state) >> 11) * 0x1.0p-53; }

double rng_normal(uint64_t *state)
{
    double u1 = ((rng_next(state) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (rng_next(state) >> 11) / 9007199254740992.0;          /* [0, 1) */
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void rng_normal_pair(uint64_t *state, double z[2])
{
    double u, v, q;
    do {
        u = 2.0 * rng_unit(state) - 1.0;
        v = 2.0 * rng_unit(state) - 1.0;
        q = u * u + v * v;
    } while (q >= 1.0 || q == 0.0);
    double f = sqrt(-2.0 * log(q) / q);
    z[0] = u * f;
    z[1] = v * f;
}

void rng_normals_f(float *x, size_t n, uint64_t *state)
{
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((double)(rng_next(state) >> 11) + 1.0) * 0x1.0p-53;
        double u2 = (double)(rng_next(state) >> 11) * 0x1.0p-53;
        float r = sqrtf(-2.0f * logf((float)u1)), c, sn;
        sincosf((float)(2.0 * M_PI * u2), &sn, &c);
        x[i] = r * c;
        if (i + 1 < n)
            x[i + 1] = r * sn;
    }
}
