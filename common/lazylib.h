/*
 * lazylib.h - a shared library loaded at its first use (dlopen), not at the
 * program's start.
 *
 * For a library most runs of a program never call: the loader's relocation
 * of a big library writes pages at every start, which a daemon pays once
 * per worker it starts.  The caller lists the functions it calls (an
 * X-macro of X(s, function) entries); LAZYLIB_DECLARE makes `s`, a struct
 * with a pointer of each function's own type, its table of names and its
 * lazylib:
 *
 *     #define ZL_FUNCS(X, s) X(s, zip_open) X(s, zip_discard)
 *     LAZYLIB_DECLARE(zl, ZL_FUNCS);
 *     if (LAZYLIB_LOAD(zl, "libzip.so.4", &e) < 0) ...
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

#define LAZYLIB_FIELD_(s, f) __typeof__(f) *f;
#define LAZYLIB_SYM_(s, f) {#f, (void **)&s.f},
/* static `s` (the pointers), s##_syms and s##_lib for the list FUNCS */
#define LAZYLIB_DECLARE(s, FUNCS) \
    static struct { \
        FUNCS(LAZYLIB_FIELD_, s) \
    } s; \
    static const struct lazylib_sym s##_syms[] = {FUNCS(LAZYLIB_SYM_, s)}; \
    static struct lazylib s##_lib = LAZYLIB_INIT
/* lazylib_load of what LAZYLIB_DECLARE(s, ...) made */
#define LAZYLIB_LOAD(s, soname, e) \
    lazylib_load(&s##_lib, (soname), s##_syms, (int)(sizeof s##_syms / sizeof *s##_syms), (e))

#endif
