/*
 * pool.h - the model's worker threads: a parallel for over independent
 * tasks (attention per (batch, head, block of query rows), element-wise
 * kernels per block of rows).
 *
 * The pool has as many threads as BLAS is told to use (blas_set_threads
 * sets both), the calling thread being one of them, so the model never
 * runs more threads than the user asked for: while a parallel loop whose
 * tasks call BLAS runs, OpenBLAS is set to one thread (Debian's pthread
 * OpenBLAS 0.3.21 has no per-thread setting; the model's threads are the
 * only callers), and its count is restored afterwards; also when the loop
 * runs inline, so what the tasks compute does not depend on the number of
 * threads.  Tasks are handed
 * out in index order from a shared counter, so callers list expensive
 * tasks first; each task must write only its own outputs, so results do
 * not depend on which thread ran what.
 *
 * Workers start on the first parallel loop and wait on a condition
 * variable between loops, after a short spin; a fork()ed child starts
 * its own.  With one thread every loop runs inline.
 *
 *     static void task(void *ctx, int i, int tid) { ... rows of block i ... }
 *     pool_for(nblocks, task, &ctx, 0);
 */
#ifndef CKPTD_POOL_H
#define CKPTD_POOL_H

#include <stddef.h>

/* A task: index i in [0, n), run by thread tid in [0, pool_threads()). */
typedef void (*pool_task_fn)(void *ctx, int i, int tid);

/* Threads the pool uses from now on (n <= 0: leave as is).  Called by
 * blas_set_threads; before any call, OpenBLAS's own count at first use. */
void pool_set_threads(int n);
int pool_threads(void);

/* Run fn(ctx, i, tid) for every i in [0, n) and return when all are done.
 * blas: the tasks call BLAS (OpenBLAS runs single-threaded meanwhile).
 * Not reentrant: a task must not call pool_for. */
void pool_for(int n, pool_task_fn fn, void *ctx, int blas);

/* [*lo, *hi): the part of [0, total) that task i of n covers, in whole
 * multiples of `align` except the last. */
void pool_split(int total, int n, int i, int align, int *lo, int *hi);

/* fn(ctx, lo, hi) over [0, n) in chunks on the pool's threads, for loops
 * whose rows are independent (element-wise kernels); `cost` is the work of
 * one row (elements touched).  Small loops (n * cost below a few ten
 * thousand) run inline: waking threads would cost more. */
typedef void (*pool_rows_fn)(const void *ctx, size_t lo, size_t hi);
void pool_rows(size_t n, size_t cost, pool_rows_fn fn, const void *ctx);

#endif
