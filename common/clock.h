/*
 * clock.h - the monotonic clock both binaries time things with.
 *
 * Seconds as a double on CLOCK_MONOTONIC: unaffected by changes of the
 * wall clock, meaningful only as differences within one boot.
 *
 *     double t0 = mono_now();
 *     work();
 *     log_info("work done", "seconds=%.3f", mono_now() - t0);
 */
#ifndef CKPTD_CLOCK_H
#define CKPTD_CLOCK_H

/* Seconds on the monotonic clock. */
double mono_now(void);

#endif
