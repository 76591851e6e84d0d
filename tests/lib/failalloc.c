/*
 * failalloc.c - the allocation wrappers behind failalloc.h.
 *
 * With -Wl,--wrap=malloc the linker sends the project's calls to
 * __wrap_malloc, which may refuse, and otherwise calls __real_malloc (the C
 * library's, or AddressSanitizer's, so its red zones stay exact).  The
 * live blocks are kept in an open-addressing table of pointer -> size
 * (its own memory from __real_calloc), so the wrapped free() can keep the
 * count of live bytes; a pointer the table does not hold (a buffer libc
 * allocated for getline or open_memstream) is passed through untouched.
 */
#include "tests/lib/failalloc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <jansson.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
int __real_posix_memalign(void **out, size_t align, size_t n);
ssize_t __real_getline(char **line, size_t *cap, FILE *f);
ssize_t __real___getdelim(char **line, size_t *cap, int delim, FILE *f);
FILE *__real_open_memstream(char **buf, size_t *len);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
int __wrap_posix_memalign(void **out, size_t align, size_t n);
int __wrap_vasprintf(char **out, const char *fmt, va_list ap);
ssize_t __wrap_getline(char **line, size_t *cap, FILE *f);
ssize_t __wrap___getdelim(char **line, size_t *cap, int delim, FILE *f);
FILE *__wrap_open_memstream(char **buf, size_t *len);

static long fail_at; /* 0: none */
static int persist;
static long count;
static int hit;
static long long live;

/* ---- the table of live blocks ---- */

struct slot {
    void *p;    /* NULL: empty; TOMB: deleted */
    size_t n;
};

static char tomb_mark;
#define TOMB ((void *)&tomb_mark)

static struct slot *tab;
static size_t cap, used; /* used counts live and tombstones */

static size_t slot_of(const void *p, size_t c)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 17) & (c - 1);
}

static void tab_put(void *p, size_t n);

static void tab_grow(void)
{
    struct slot *old = tab;
    size_t oc = cap;
    cap = cap ? cap * 2 : 4096;
    /* few live blocks among many tombstones: rebuild at the same size */
    if (oc && used < oc / 2)
        cap = oc;
    tab = __real_calloc(cap, sizeof *tab);
    if (!tab) {
        fprintf(stderr, "failalloc: out of memory for its own table\n");
        abort();
    }
    used = 0;
    for (size_t i = 0; i < oc; i++)
        if (old[i].p && old[i].p != TOMB)
            tab_put(old[i].p, old[i].n);
    __real_free(old);
}

static void tab_put(void *p, size_t n)
{
    if ((used + 1) * 4 > cap * 3)
        tab_grow();
    size_t i = slot_of(p, cap);
    while (tab[i].p && tab[i].p != TOMB)
        i = (i + 1) & (cap - 1);
    if (!tab[i].p)
        used++;
    tab[i].p = p;
    tab[i].n = n;
}

/* Remove p; its size, or -1 if the table does not hold it. */
static long long tab_take(const void *p)
{
    if (!cap)
        return -1;
    for (size_t i = slot_of(p, cap);; i = (i + 1) & (cap - 1)) {
        if (!tab[i].p)
            return -1;
        if (tab[i].p == p) {
            tab[i].p = TOMB;
            return (long long)tab[i].n;
        }
    }
}

static void *track(void *p, size_t n)
{
    if (p) {
        tab_put(p, n);
        live += (long long)n;
    }
    return p;
}

/* ---- the contract ---- */

void failalloc_arm(long n, int p)
{
    fail_at = n;
    persist = p;
    count = 0;
    hit = 0;
}

int failalloc_disarm(void)
{
    fail_at = 0;
    return hit;
}

long failalloc_count(void) { return count; }

long long failalloc_live(void) { return live; }

/* Count one allocation; 1 if it must fail. */
static int refuse(void)
{
    count++;
    if (fail_at > 0 && (count == fail_at || (persist && count > fail_at))) {
        hit = 1;
        errno = ENOMEM;
        return 1;
    }
    return 0;
}

/* ---- the wrappers ---- */

void *__wrap_malloc(size_t n)
{
    if (refuse())
        return NULL;
    return track(__real_malloc(n), n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    if (refuse())
        return NULL;
    return track(__real_calloc(n, size), n * size);
}

void *__wrap_realloc(void *p, size_t n)
{
    if (!p)
        return __wrap_malloc(n);
    if (refuse())
        return NULL; /* p is left as it was, as realloc promises */
    void *q = __real_realloc(p, n);
    if (!q)
        return NULL;
    long long old = tab_take(p);
    if (old >= 0)
        live -= old;
    return track(q, n);
}

void __wrap_free(void *p)
{
    if (!p)
        return;
    long long n = tab_take(p);
    if (n >= 0)
        live -= n;
    __real_free(p);
}

char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = __wrap_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *__wrap_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = __wrap_malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

int __wrap_posix_memalign(void **out, size_t align, size_t n)
{
    if (refuse())
        return ENOMEM;
    int rc = __real_posix_memalign(out, align, n);
    if (rc == 0)
        track(*out, n);
    return rc;
}

int __wrap_vasprintf(char **out, const char *fmt, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    if (n < 0)
        return -1;
    char *s = __wrap_malloc((size_t)n + 1);
    if (!s)
        return -1;
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    *out = s;
    return n;
}

ssize_t __wrap_getline(char **line, size_t *cap_, FILE *f)
{
    if (refuse())
        return -1;
    return __real_getline(line, cap_, f);
}

/* glibc's optimised stdio.h turns getline into an inline call of
 * __getdelim: both are wrapped. */
ssize_t __wrap___getdelim(char **line, size_t *cap_, int delim, FILE *f)
{
    if (refuse())
        return -1;
    return __real___getdelim(line, cap_, delim, f);
}

FILE *__wrap_open_memstream(char **buf, size_t *len)
{
    if (refuse())
        return NULL;
    return __real_open_memstream(buf, len);
}

/* jansson's allocations count (and may fail) only in persistent mode:
 * its lexer ignores a failure to grow its string buffer and then reads
 * and writes past it when the next allocation succeeds (jansson issue
 * #362, still in 2.14), so a transient failure there is a crash this
 * project cannot guard against.  When memory stays exhausted the next
 * allocation fails too and jansson returns an error cleanly. */
static void *json_alloc(size_t n)
{
    if (!persist)
        return track(__real_malloc(n), n);
    return __wrap_malloc(n);
}
static void json_release(void *p) { __wrap_free(p); }

void failalloc_jansson(void) { json_set_alloc_funcs(json_alloc, json_release); }
