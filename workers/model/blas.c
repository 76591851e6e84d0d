#include "workers/model/blas.h"

#include <cblas.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/cpu.h"
#include "workers/model/pool.h"

void blas_prepare(char **argv)
{
    if (getenv("CKPTD_BLAS_REEXEC"))
        return;
    if (!cpu_blas_choose())
        return; /* chosen by the user or the daemon, or nothing better known */
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
