/*
 * clock.h - the monotonic clock both binaries time things with.
 *
 * Seconds as a double on CLOCK_MONOTONIC: unaffected by changes of the
 * wall clock, meaningful only as differences within one boot; and the
 * process's CPU seconds, the measure of work that other processes on the
 * machine do not stretch.
 *
 *     double t0 = mono_now();
 *     work();
 *     log_info("work done", "seconds=%.3f", mono_now() - t0);
 */
#ifndef CKPTD_CLOCK_H
#define CKPTD_CLOCK_H

/* Seconds on the monotonic clock. */
double mono_now(void);

/* CPU seconds the process has used, every thread (CLOCK_PROCESS_CPUTIME_ID):
 * the work done, whatever else the machine runs. */
double cpu_now(void);

#endif
