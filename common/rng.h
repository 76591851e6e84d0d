/*
 * rng.h - the project's pseudo-random numbers: splitmix64, and what is
 * drawn from it (uniform integers and reals, normals by Box-Muller).
 *
 * Every random choice the worker makes (a model's random init, a toy
 * task's data, the battery's default eval set, an SAE's start, the SGLD
 * noise, the composition baseline) comes from here, so each is a pure
 * function of its seed and can be reproduced outside this program.  The
 * three normal samplers are kept as their users have always drawn (a
 * model's init and an SAE's start, the composition baseline, the SGLD
 * noise), since another method would change every number they make.
 * splitmix64 is Steele, Lea and Flood, "Fast splittable pseudorandom
 * number generators" (OOPSLA 2014), in the form of Vigna's reference code
 * (https://prng.di.unimi.it/splitmix64.c):
 *
 *     state += 0x9e3779b97f4a7c15
 *     z = state
 *     z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
 *     z = (z ^ (z >> 27)) * 0x94d049bb133111eb
 *     return z ^ (z >> 31)
 *
 * In Python: the same with `& 0xffffffffffffffff` after each step.  Each
 * function below states its formula, so a reference implementation draws
 * the same numbers (the scripts of tests/reference do).
 *
 *     uint64_t s = seed;
 *     int id = (int)rng_below(&s, V);     // uniform-ish in [0, V)
 *     float x = rng_symmetric(&s);        // in [-1, 1)
 *     double z = rng_normal(&s);          // N(0, 1)
 */
#ifndef CKPTD_RNG_H
#define CKPTD_RNG_H

#include <stddef.h>
#include <stdint.h>

/* Advance the state and return the next 64-bit output. */
uint64_t rng_next(uint64_t *state);

/* An integer in [0, n) for 0 < n < 2^32: ((next >> 32) * n) >> 32.
 * (Lemire's multiply-shift; the bias is below n / 2^32.) */
uint32_t rng_below(uint64_t *state, uint32_t n);

/* An integer in [0, n) for n > 0: next % n (the modulo bias is below
 * n / 2^64; the toy tasks' draws). */
uint64_t rng_mod(uint64_t *state, uint64_t n);

/* A float in [-1, 1): the top 24 bits of next as k, then k / 2^23 - 1. */
float rng_symmetric(uint64_t *state);

/* A double in [0, 1): (next >> 11) * 2^-53. */
double rng_unit(uint64_t *state);

/* A standard normal, Box-Muller's cosine branch in double: from two
 * draws, u1 = ((next >> 11) + 1) / (2^53 + 1) in (0, 1] and
 * u2 = (next >> 11) / 2^53, sqrt(-2 ln u1) cos(2 pi u2). */
double rng_normal(uint64_t *state);

/* Two standard normals into z by Marsaglia's polar method (the SGLD
 * noise): u = 2 rng_unit - 1 and v likewise (exactly (next >> 11) 2^-52
 * - 1), drawn again while q = u^2 + v^2 is 0 or at least 1; then
 * f = sqrt(-2 ln q / q), z = (u f, v f). */
void rng_normal_pair(uint64_t *state, double z[2]);

/* n standard normals into x, Box-Muller with both branches in float (half
 * the draws of rng_normal; the composition baseline samples millions):
 * each pair of draws gives u1 = ((next >> 11) + 1) 2^-53 and
 * u2 = (next >> 11) 2^-53, r = sqrtf(-2 logf(u1)), then r cos(2 pi u2)
 * and r sin(2 pi u2) (sincosf); an odd n drops the last sine. */
void rng_normals_f(float *x, size_t n, uint64_t *state);

#endif
