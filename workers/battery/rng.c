#include "workers/battery/rng.h"

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

float rng_symmetric(uint64_t *state)
{
    uint32_t k = (uint32_t)(rng_next(state) >> 40); /* 24 bits */
    return (float)k / 8388608.0f - 1.0f;
}
