/*
 * failalloc.h - allocations that fail on demand, for fault-injection tests
 * in the manner of SQLite's malloc tests: run an operation with its Nth
 * allocation failing, for N = 1, 2, ... until a run no longer reaches N.
 * Every run must either succeed or fail cleanly - a negative code with a
 * message, its outputs NULL, nothing leaked - and never crash.
 *
 * A test program links tests/lib/failalloc.o with FAILALLOC_LDFLAGS (the
 * Makefile's -Wl,--wrap=malloc,...): every malloc, calloc, realloc,
 * strdup, strndup, posix_memalign, vasprintf, getline (and the __getdelim
 * glibc's optimised stdio.h turns it into) and open_memstream
 * the project's own code calls goes through this module, which counts it
 * and fails the armed one (errno ENOMEM).  jansson's allocations go
 * through it too once failalloc_jansson() has installed its allocators
 * (json_set_alloc_funcs); they are counted, and fail, in persistent mode
 * only: jansson 2.14's lexer cannot survive a transient failure (it
 * ignores a failed growth of its string buffer and overruns the buffer
 * when the next allocation succeeds; jansson issue #362).  Allocations
 * inside other shared libraries
 * (libc's own, libzip, libpq, libcurl, OpenBLAS) are not: the project's
 * handling of their failures is what the error paths around their calls
 * test.
 *
 * Leaks: under SANITIZE=address, LeakSanitizer reports them at exit; in
 * every build failalloc_live() gives the bytes the project holds through
 * this module (allocated and not yet freed; free() is wrapped too), so a
 * sweep can assert that each run, failed or not, leaves it where it was.
 * (A getline or open_memstream buffer is allocated inside libc and is not
 * in that count.)
 *
 *     failalloc_jansson();
 *     for (long n = 1;; n++) {
 *         long live = failalloc_live();
 *         failalloc_arm(n);
 *         int rc = st_open(&st, path, &e);
 *         int hit = failalloc_disarm();
 *         assert_true(rc == 0 || rc == ERR_NOMEM);
 *         st_free(st);
 *         assert_int_equal(failalloc_live(), live);
 *         if (!hit)
 *             break;         // ran to the end: every allocation was tried
 *     }
 */
#ifndef CKPTD_TESTS_LIB_FAILALLOC_H
#define CKPTD_TESTS_LIB_FAILALLOC_H

#include <stddef.h>

/* From now on, allocation number n (1-based) fails, and the ones after it
 * succeed again (SQLite's "transient" fault); with `persist`, every one
 * from the nth on fails (a memory that stays exhausted), jansson's
 * included.  n 0 fails none (a clean run that counts: persist chooses
 * whether jansson's allocations are in the count).  Resets the count. */
void failalloc_arm(long n, int persist);

/* Stop failing.  Returns 1 if an allocation was made to fail since
 * failalloc_arm, 0 if the operation ended before reaching n. */
int failalloc_disarm(void);

/* Allocations counted since the last failalloc_arm (or the start). */
long failalloc_count(void);

/* Bytes allocated through this module and not freed. */
long long failalloc_live(void);

/* Route jansson's allocations through this module. */
void failalloc_jansson(void);

#endif
