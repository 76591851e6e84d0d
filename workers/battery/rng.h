/*
 * rng.h - the battery's pseudo-random numbers: splitmix64.
 *
 * Every random choice an item makes (the default eval token set, the start
 * vector of a power iteration) comes from this generator, so a measurement
 * is a pure function of the checkpoint, the item and the seed, and can be
 * reproduced outside this program.  splitmix64 is Steele, Lea and Flood,
 * "Fast splittable pseudorandom number generators" (OOPSLA 2014), in the
 * form of Vigna's reference code (https://prng.di.unimi.it/splitmix64.c):
 *
 *     state += 0x9e3779b97f4a7c15
 *     z = state
 *     z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
 *     z = (z ^ (z >> 27)) * 0x94d049bb133111eb
 *     return z ^ (z >> 31)
 *
 * In Python: the same with `& 0xffffffffffffffff` after each step.
 *
 *     uint64_t s = seed;
 *     int id = (int)rng_below(&s, V);     // uniform-ish in [0, V)
 *     float x = rng_symmetric(&s);        // in [-1, 1)
 */
#ifndef CKPTD_BATTERY_RNG_H
#define CKPTD_BATTERY_RNG_H

#include <stdint.h>

/* Advance the state and return the next 64-bit output. */
uint64_t rng_next(uint64_t *state);

/* An integer in [0, n) for 0 < n < 2^32: ((next >> 32) * n) >> 32.
 * (Lemire's multiply-shift; the bias is below n / 2^32.) */
uint32_t rng_below(uint64_t *state, uint32_t n);

/* A float in [-1, 1): the top 24 bits of next as k, then k / 2^23 - 1. */
float rng_symmetric(uint64_t *state);

#endif
