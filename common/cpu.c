#include "common/cpu.h"

#include <stdlib.h>
#include <string.h>

const char *cpu_blas_coretype(void)
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

const char *cpu_blas_wanted(void)
{
    if (getenv("OPENBLAS_CORETYPE"))
        return NULL;
    const char *opt = getenv("CKPTD_BLAS_AUTO");
    if (opt && strcmp(opt, "0") == 0)
        return NULL;
    return cpu_blas_coretype();
}

const char *cpu_blas_choose(void)
{
    const char *core = cpu_blas_wanted();
    if (core)
        setenv("OPENBLAS_CORETYPE", core, 1);
    return core;
}
