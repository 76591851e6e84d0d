/*
 * bench_util.h - the timing helpers every benchmark program shares: a
 * monotonic clock in seconds and the median of repeated timings.
 * Header-only (static functions), so each bench program stays one file.
 */
#ifndef CKPTD_BENCH_UTIL_H
#define CKPTD_BENCH_UTIL_H

#include <stdlib.h>
#include <time.h>

/* CLOCK_MONOTONIC in seconds. */
static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort comparator of doubles, ascending. */
static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of x[0..n), n > 0; sorts x in place. */
static inline double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

#endif
