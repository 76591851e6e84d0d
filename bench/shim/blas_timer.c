/*
 * blas_timer.so - an LD_PRELOAD shim for `make bench` that measures how much
 * of a process's time is spent inside BLAS and LAPACK.
 *
 * It interposes the BLAS/LAPACK entry points ckpt-worker calls (resolved
 * through the dynamic linker, so every caller is seen, whatever module it is
 * in), times each call with CLOCK_MONOTONIC, counts sgemm's floating-point
 * operations (2·M·N·K), and at exit appends one JSON line to the file named
 * by BLAS_TIMER_OUT (nothing when it is unset):
 *   {"pid":…, "wall_s":…, "blas_s":…, "sgemm_s":…, "sgemm_flop":…,
 *    "calls":{"cblas_sgemm":[n, s], …}}
 * Calls made from inside OpenBLAS (LAPACK's own sgemm) are not seen twice:
 * a per-thread depth counter times only a thread's outermost call.  The
 * model calls sgemm from several threads at once (its products split over
 * its threads): blas_s and sgemm_s are the wall time during which at least
 * one thread was inside BLAS (inside sgemm), so they stay comparable with
 * wall_s; the per-function seconds in "calls" add every thread's time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

enum { F_SGEMM, F_SGEMV, F_SSYRK, F_DGEMM, F_DSYRK, F_SGESDD, F_SGESVD, F_SSYEVD, F_DSYEVD,
       F_DGESDD, F_SPOTRF, F_SPOTRS, F_DPOTRF, F_DPOTRS, F_COUNT };
static const char *const fname[F_COUNT] = {
    "cblas_sgemm", "cblas_sgemv", "cblas_ssyrk", "cblas_dgemm", "cblas_dsyrk",
    "sgesdd_", "sgesvd_", "ssyevd_", "dsyevd_", "dgesdd_",
    "spotrf_", "spotrs_", "dpotrf_", "dpotrs_"};
static void *real[F_COUNT];
static long ncalls[F_COUNT];
static double secs[F_COUNT];
static double sgemm_flop;
static _Thread_local int depth;
static double t_start;
/* wall time with at least one thread inside: any function, sgemm */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int inside_any, inside_sgemm;
static double any_t0, sgemm_t0, any_s, sgemm_s;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *get(int f)
{
    if (!real[f]) {
        real[f] = dlsym(RTLD_NEXT, fname[f]);
        if (!real[f]) {
            fprintf(stderr, "blas_timer: %s not found\n", fname[f]);
            abort();
        }
    }
    return real[f];
}

static double enter(int f)
{
    double t = now();
    pthread_mutex_lock(&mu);
    if (inside_any++ == 0)
        any_t0 = t;
    if (f == F_SGEMM && inside_sgemm++ == 0)
        sgemm_t0 = t;
    pthread_mutex_unlock(&mu);
    return t;
}

static void leave(int f, double t0, double flop)
{
    double t = now();
    pthread_mutex_lock(&mu);
    ncalls[f]++;
    secs[f] += t - t0;
    sgemm_flop += flop;
    if (--inside_any == 0)
        any_s += t - any_t0;
    if (f == F_SGEMM && --inside_sgemm == 0)
        sgemm_s += t - sgemm_t0;
    pthread_mutex_unlock(&mu);
}

#define ENTER(f) double t0_ = depth++ ? -1.0 : enter(f)
#define LEAVE_FLOP(f, flop)                    \
    do {                                       \
        if (--depth == 0)                      \
            leave(f, t0_, flop);               \
    } while (0)
#define LEAVE(f) LEAVE_FLOP(f, 0.0)

__attribute__((constructor)) static void timer_init(void)
{
    t_start = now();
}

__attribute__((destructor)) static void timer_report(void)
{
    const char *path = getenv("BLAS_TIMER_OUT");
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    fprintf(f, "{\"pid\":%ld,\"wall_s\":%.6f,\"blas_s\":%.6f,\"sgemm_s\":%.6f,\"sgemm_flop\":%.6g,\"calls\":{",
            (long)getpid(), now() - t_start, any_s, sgemm_s, sgemm_flop);
    int first = 1;
    for (int i = 0; i < F_COUNT; i++) {
        if (!ncalls[i])
            continue;
        fprintf(f, "%s\"%s\":[%ld,%.6f]", first ? "" : ",", fname[i], ncalls[i], secs[i]);
        first = 0;
    }
    fputs("}}\n", f);
    fclose(f);
}

void cblas_sgemm(const enum CBLAS_ORDER o, const enum CBLAS_TRANSPOSE ta,
                 const enum CBLAS_TRANSPOSE tb, const blasint m, const blasint n,
                 const blasint k, const float alpha, const float *a, const blasint lda,
                 const float *b, const blasint ldb, const float beta, float *c,
                 const blasint ldc)
{
    void (*fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint,
               blasint, float, const float *, blasint, const float *, blasint, float, float *,
               blasint) = get(F_SGEMM);
    ENTER(F_SGEMM);
    fn(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    LEAVE_FLOP(F_SGEMM, 2.0 * m * n * k);
}

void cblas_sgemv(const enum CBLAS_ORDER o, const enum CBLAS_TRANSPOSE t, const blasint m,
                 const blasint n, const float alpha, const float *a, const blasint lda,
                 const float *x, const blasint incx, const float beta, float *y,
                 const blasint incy)
{
    void (*fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, blasint, blasint, float, const float *,
               blasint, const float *, blasint, float, float *, blasint) = get(F_SGEMV);
    ENTER(F_SGEMV);
    fn(o, t, m, n, alpha, a, lda, x, incx, beta, y, incy);
    LEAVE(F_SGEMV);
}

void cblas_ssyrk(const enum CBLAS_ORDER o, const enum CBLAS_UPLO u, const enum CBLAS_TRANSPOSE t,
                 const blasint n, const blasint k, const float alpha, const float *a,
                 const blasint lda, const float beta, float *c, const blasint ldc)
{
    void (*fn)(enum CBLAS_ORDER, enum CBLAS_UPLO, enum CBLAS_TRANSPOSE, blasint, blasint, float,
               const float *, blasint, float, float *, blasint) = get(F_SSYRK);
    ENTER(F_SSYRK);
    fn(o, u, t, n, k, alpha, a, lda, beta, c, ldc);
    LEAVE(F_SSYRK);
}

void cblas_dgemm(const enum CBLAS_ORDER o, const enum CBLAS_TRANSPOSE ta,
                 const enum CBLAS_TRANSPOSE tb, const blasint m, const blasint n,
                 const blasint k, const double alpha, const double *a, const blasint lda,
                 const double *b, const blasint ldb, const double beta, double *c,
                 const blasint ldc)
{
    void (*fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint,
               blasint, double, const double *, blasint, const double *, blasint, double,
               double *, blasint) = get(F_DGEMM);
    ENTER(F_DGEMM);
    fn(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    LEAVE(F_DGEMM);
}

void cblas_dsyrk(const enum CBLAS_ORDER o, const enum CBLAS_UPLO u, const enum CBLAS_TRANSPOSE t,
                 const blasint n, const blasint k, const double alpha, const double *a,
                 const blasint lda, const double beta, double *c, const blasint ldc)
{
    void (*fn)(enum CBLAS_ORDER, enum CBLAS_UPLO, enum CBLAS_TRANSPOSE, blasint, blasint,
               double, const double *, blasint, double, double *, blasint) = get(F_DSYRK);
    ENTER(F_DSYRK);
    fn(o, u, t, n, k, alpha, a, lda, beta, c, ldc);
    LEAVE(F_DSYRK);
}

/* LAPACK, Fortran calling convention: every argument by pointer; the
 * trailing hidden string lengths are passed on unchanged. */
#define LAPACK_SHIM(f, name, params, args)        \
    void name params;                             \
    void name params                              \
    {                                             \
        void(*fn) params = get(f);                \
        ENTER(f);                                 \
        fn args;                                  \
        LEAVE(f);                                 \
    }

LAPACK_SHIM(F_SGESDD, sgesdd_,
            (const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s,
             float *u, const int *ldu, float *vt, const int *ldvt, float *work,
             const int *lwork, int *iwork, int *info, size_t l1),
            (jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info, l1))
LAPACK_SHIM(F_DGESDD, dgesdd_,
            (const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *iwork, int *info, size_t l1),
            (jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info, l1))
LAPACK_SHIM(F_SGESVD, sgesvd_,
            (const char *ju, const char *jv, const int *m, const int *n, float *a,
             const int *lda, float *s, float *u, const int *ldu, float *vt, const int *ldvt,
             float *work, const int *lwork, int *info, size_t l1, size_t l2),
            (ju, jv, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, info, l1, l2))
LAPACK_SHIM(F_SSYEVD, ssyevd_,
            (const char *jobz, const char *uplo, const int *n, float *a, const int *lda, float *w,
             float *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t l1,
             size_t l2),
            (jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info, l1, l2))
LAPACK_SHIM(F_DSYEVD, dsyevd_,
            (const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
             double *w, double *work, const int *lwork, int *iwork, const int *liwork, int *info,
             size_t l1, size_t l2),
            (jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info, l1, l2))
LAPACK_SHIM(F_SPOTRF, spotrf_,
            (const char *uplo, const int *n, float *a, const int *lda, int *info, size_t l1),
            (uplo, n, a, lda, info, l1))
LAPACK_SHIM(F_DPOTRF, dpotrf_,
            (const char *uplo, const int *n, double *a, const int *lda, int *info, size_t l1),
            (uplo, n, a, lda, info, l1))
LAPACK_SHIM(F_SPOTRS, spotrs_,
            (const char *uplo, const int *n, const int *nrhs, const float *a, const int *lda,
             float *b, const int *ldb, int *info, size_t l1),
            (uplo, n, nrhs, a, lda, b, ldb, info, l1))
LAPACK_SHIM(F_DPOTRS, dpotrs_,
            (const char *uplo, const int *n, const int *nrhs, const double *a, const int *lda,
             double *b, const int *ldb, int *info, size_t l1),
            (uplo, n, nrhs, a, lda, b, ldb, info, l1))
