/*
 * blas.h - choosing OpenBLAS's kernel family and thread count.
 *
 * OpenBLAS built for many CPUs (Debian's DYNAMIC_ARCH build) picks its
 * kernels when the library loads, from the CPU it recognises; on CPUs it
 * does not know it falls back to slow generic ones (Debian's 0.3.21 calls an
 * AVX-512 EPYC "Prescott" and runs sgemm ~5x slower).  The choice is read
 * from OPENBLAS_CORETYPE at load time, so setting it later in main() does
 * nothing.  blas_prepare() therefore detects the CPU's features and, when
 * neither the user nor `ckptd serve` has set OPENBLAS_CORETYPE, sets it and
 * re-executes the program once (guarded by CKPTD_BLAS_REEXEC) so the library
 * loads with it (the rule: common/cpu.h).
 *
 *     int main(int argc, char **argv) {
 *         blas_prepare(argv);            // may not return (re-exec)
 *         log_info("blas", "core=%s", blas_corename());
 */
#ifndef CKPTD_BLAS_H
#define CKPTD_BLAS_H

/* Ensure OPENBLAS_CORETYPE is chosen before the library's kernels are used:
 * if unset (and CKPTD_BLAS_AUTO is not "0"), set it by common/cpu.h's rule
 * and execv /proc/self/exe with argv.  Returns normally when nothing needs
 * doing or when re-executing failed (then the library's own choice stands). */
void blas_prepare(char **argv);

/* The core OpenBLAS actually uses (openblas_get_corename). */
const char *blas_corename(void);

/* Threads for BLAS calls and the model's own loops (pool.h) (n <= 0:
 * leave as configured). */
void blas_set_threads(int n);
int blas_threads(void);

#endif
