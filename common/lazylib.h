/*
 * lazylib.h - a shared library loaded at its first use (dlopen), not at the
 * program's start.
 *
 * For a library most runs of a program never call: the loader's relocation
 * of a big library writes pages at every start, which a daemon pays once
 * per worker it starts.  The caller keeps a function pointer per symbol,
 * of the symbol's own type, and names them in a table:
 *
 *     static struct { __typeof__(zip_open) *zip_open; } zl;
 *     static struct lazylib zl_lib = LAZYLIB_INIT;
 *     static const struct lazylib_sym zl_syms[] = {{"zip_open", (void **)&zl.zip_open}};
 *     if (lazylib_load(&zl_lib, "libzip.so.4", zl_syms, 1, &e) < 0) ...
 *     zl.zip_open(path, ZIP_RDONLY, &zerr);
 *
 * Thread-safe.  Once loaded the library stays for the program's life; a
 * failure is not remembered (it may have been for want of memory), so the
 * next call tries again.
 */
#ifndef CKPTD_LAZYLIB_H
#define CKPTD_LAZYLIB_H

#include <pthread.h>

#include "common/err.h"

struct lazylib {
    pthread_mutex_t lock;
    int loaded;
};
#define LAZYLIB_INIT {PTHREAD_MUTEX_INITIALIZER, 0}

struct lazylib_sym {
    const char *name;
    void **slot; /* gets the symbol's address */
};

/* Load `soname` (RTLD_NOW, local) and fill every slot, unless done before.
 * ERR_UNSUPPORTED naming the library, and the symbol when one is missing. */
int lazylib_load(struct lazylib *l, const char *soname, const struct lazylib_sym *syms, int n,
                 struct err *e) CK_WUR;

#endif
