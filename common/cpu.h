/*
 * cpu.h - which OpenBLAS kernel family this CPU should use.
 *
 * Debian's OpenBLAS (a DYNAMIC_ARCH build) picks its kernels when the
 * library loads, from the CPU it recognises, and falls back to slow generic
 * ones on CPUs it does not know (0.3.21 calls an AVX-512 EPYC "Prescott").
 * The choice is read from OPENBLAS_CORETYPE at load time.  The worker sets
 * it from the CPU's features and re-executes itself once (workers/model/
 * blas.h); `ckptd serve` puts it in the environment of the workers it
 * starts, so they load the library with it and need not re-execute (their
 * processes then start in about half the time).  Both use the rule below,
 * so a worker chooses the same kernels whoever started it.
 *
 *     const char *core = cpu_blas_choose();   // before the library loads
 *     if (core) log_info("blas", "OPENBLAS_CORETYPE=%s chosen", core);
 */
#ifndef CKPTD_CPU_H
#define CKPTD_CPU_H

/* The OpenBLAS core type this CPU supports best ("SkylakeX": AVX-512
 * F/BW/VL/DQ; "Haswell": AVX2 and FMA; "Sandybridge": AVX), or NULL when
 * nothing better than the library's own choice is known. */
const char *cpu_blas_coretype(void);

/* What OPENBLAS_CORETYPE should be set to: cpu_blas_coretype(), or NULL
 * when it is set already, CKPTD_BLAS_AUTO is "0", or nothing is known.
 * Changes nothing. */
const char *cpu_blas_wanted(void);

/* Set OPENBLAS_CORETYPE to cpu_blas_wanted() when that is not NULL.
 * Returns the value set, or NULL when the environment was left as it was. */
const char *cpu_blas_choose(void);

#endif
