#include "workers/model/blas.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workers/model/pool.h"

const char *blas_best_coretype(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
    if (__builtin_cpu_supports("avx"))
        return "Sandybridge";
#endif
    return NULL;
}

void blas_prepare(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("CKPTD_BLAS_REEXEC"))
        return;
    const char *opt = getenv("CKPTD_BLAS_AUTO");
    if (opt && strcmp(opt, "0") == 0)
        return;
    const char *core = blas_best_coretype();
    if (!core)
        return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    setenv("CKPTD_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: go on with the library's own choice */
    unsetenv("OPENBLAS_CORETYPE");
}

const char *blas_corename(void)
{
    const char *n = openblas_get_corename();
    return n ? n : "unknown";
}

void blas_set_threads(int n)
{
    if (n > 0) {
        openblas_set_num_threads(n);
        pool_set_threads(n);
    }
}

int blas_threads(void) { return openblas_get_num_threads(); }
