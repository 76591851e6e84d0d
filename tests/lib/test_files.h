/* test_files.h - small file helpers the cmocka tests share (include after
 * <cmocka.h>): formatted strings, whole files, a scratch directory. */
#ifndef CKPTD_TESTS_LIB_TEST_FILES_H
#define CKPTD_TESTS_LIB_TEST_FILES_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/err.h"

/* A malloc'd formatted string; fails the test when out of memory. */
static inline char *xasprintf(const char *fmt, ...) CK_PRINTF(1, 2);
static inline char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    return s;
}

/* The whole file in a malloc'd buffer with a '\0' after its *len bytes (len
 * may be NULL); NULL if it cannot be opened. */
static inline void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *nb = realloc(buf, cap);
            assert_non_null(nb);
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* Write text to path (the file replaced); fails the test if it cannot. */
static inline void put_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* A fresh scratch directory /tmp/<prefix>XXXXXX into dir (n bytes); 0, or
 * -1 (for a cmocka setup function to return). */
static inline int scratch_make(char *dir, size_t n, const char *prefix)
{
    snprintf(dir, n, "/tmp/%sXXXXXX", prefix);
    return mkdtemp(dir) ? 0 : -1;
}

/* Remove the scratch directory and everything in it; 0 or -1. */
static inline int scratch_remove(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

#endif
