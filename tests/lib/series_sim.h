/*
 * series_sim.h - simulated measurement series for the transition detector:
 * step schedules (Pythia's, a toy run's), seeded noise of several kinds and
 * sigmoid changes.  Header-only (static functions), shared by
 * tests/test_transitions.c and bench/transitions_bench.c so the benchmark
 * calibrates on the same series the tests check.
 *
 *     struct sim_rng r = {42};
 *     long long s[SIM_MAX];
 *     double v[SIM_MAX];
 *     int n = sim_pythia(s);
 *     sim_noise(&r, SIM_GAUSS, s, v, n, 1.0);       // v = noise
 *     sim_add_sigmoid(s, v, n, 3000, 400, 0.96);    // + a change
 */
#ifndef CKPTD_SERIES_SIM_H
#define CKPTD_SERIES_SIM_H

#include <math.h>

#define SIM_MAX 512

/* splitmix64 (Steele, Lea & Flood 2014): seeded, portable. */
struct sim_rng {
    unsigned long long state;
};

static unsigned long long sim_u64(struct sim_rng *r)
{
    unsigned long long z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* uniform on (0, 1) */
static double sim_unif(struct sim_rng *r) { return ((double)(sim_u64(r) >> 11) + 0.5) / 9007199254740992.0; }

/* standard normal (Box-Muller) */
static double sim_gauss(struct sim_rng *r)
{
    double u = sim_unif(r), v = sim_unif(r);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Student-t with df (integer) degrees of freedom */
static double sim_student(struct sim_rng *r, int df)
{
    double z = sim_gauss(r), c = 0;
    for (int i = 0; i < df; i++) {
        double g = sim_gauss(r);
        c += g * g;
    }
    return z / sqrt(c / df);
}

/* Pythia's 154 steps: 0, 1, 2, 4 ... 512, 1000, 2000 ... 143000. */
static int sim_pythia(long long *s)
{
    int n = 0;
    s[n++] = 0;
    for (long long p = 1; p <= 512; p *= 2)
        s[n++] = p;
    for (long long k = 1000; k <= 143000; k += 1000)
        s[n++] = k;
    return n;
}

/* A toy run's schedule (ckpt-worker train): 0, powers of two below every,
 * then every `every` steps up to `last`. */
static int sim_toy(long long *s, long long last, long long every)
{
    int n = 0;
    s[n++] = 0;
    for (long long p = 1; p < every; p *= 2)
        s[n++] = p;
    for (long long k = every; k <= last && n < SIM_MAX; k += every)
        s[n++] = k;
    return n;
}

/* n evenly spaced steps 0, 10, 20 ... */
static int sim_even(long long *s, int n)
{
    for (int i = 0; i < n; i++)
        s[i] = 10LL * i;
    return n;
}

enum sim_kind {
    SIM_GAUSS,     /* white Gaussian noise, sd sigma */
    SIM_T3,        /* Student-t, 3 degrees of freedom, scaled by sigma */
    SIM_T2,        /* Student-t, 2 degrees of freedom (infinite variance) */
    SIM_DRIFT,     /* white noise plus a slow random walk (steps of 0.3 sigma) */
    SIM_WALK,      /* a pure Gaussian random walk, steps of sigma */
    SIM_SPIKE,     /* white noise with one outlier of 30 sigma at a random point */
    SIM_CONST,     /* the constant 1.5 */
    SIM_QUANT,     /* white noise rounded to whole sigmas (quantised values) */
    SIM_TREND,     /* white noise on a straight line in steps (3 sigma per 1/n of the run) */
    SIM_KIND_COUNT
};

static const char *const sim_kind_name[SIM_KIND_COUNT] = {
    "gauss", "t3", "t2", "drift", "walk", "spike", "const", "quant", "trend"};

/* v[i] = 5 + noise of the kind (sigma its scale), for steps s[0..n). */
static void sim_noise(struct sim_rng *r, enum sim_kind kind, const long long *s, double *v, int n,
                      double sigma)
{
    double walk = 0;
    int spike = (int)(sim_unif(r) * n);
    for (int i = 0; i < n; i++) {
        double x = 0;
        switch (kind) {
        case SIM_GAUSS: x = sim_gauss(r); break;
        case SIM_T3: x = sim_student(r, 3); break;
        case SIM_T2: x = sim_student(r, 2); break;
        case SIM_DRIFT: walk += 0.3 * sim_gauss(r); x = walk + sim_gauss(r); break;
        case SIM_WALK: walk += sim_gauss(r); x = walk; break;
        case SIM_SPIKE: x = sim_gauss(r) + (i == spike ? 30.0 : 0.0); break;
        case SIM_CONST: x = 0; break;
        case SIM_QUANT: x = round(sim_gauss(r)); break;
        case SIM_TREND: x = sim_gauss(r) + 3.0 * n * (double)(s[i] - s[0]) / (double)(s[n - 1] - s[0] + 1); break;
        case SIM_KIND_COUNT: break;
        }
        v[i] = kind == SIM_CONST ? 1.5 : 5.0 + sigma * x;
    }
}

/* v += height / (1 + exp(-(step - centre) / k)), a logistic change whose
 * 10%-90% span is `width` steps (k = width / (2 ln 9)); width 0 is a step
 * at `centre` (points at centre get half). */
static void sim_add_sigmoid(const long long *s, double *v, int n, double centre, double width,
                            double height)
{
    for (int i = 0; i < n; i++) {
        double d = (double)s[i] - centre;
        double f = width > 0 ? 1.0 / (1.0 + exp(-d * 4.394449154672439 / width))
                             : (d > 0 ? 1.0 : d < 0 ? 0.0 : 0.5);
        v[i] += height * f;
    }
}

#endif
