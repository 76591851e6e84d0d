#include "workers/text/unicode.h"

#include <stdlib.h>
#include <string.h>

#include "workers/text/unicode_tables.h"

/* Value of the range holding cp, or 0. */
static unsigned range_find(const struct uni_range *r, unsigned nr, uint32_t cp)
{
    unsigned lo = 0, hi = nr;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return r[mid].v;
    }
    return 0;
}

enum uni_class uni_class_of(uint32_t cp)
{
    static const unsigned char ascii[128] = {
        ['\t'] = UNI_SPACE, ['\n'] = UNI_SPACE, ['\v'] = UNI_SPACE, ['\f'] = UNI_SPACE,
        ['\r'] = UNI_SPACE, [' '] = UNI_SPACE,
        ['0'] = UNI_NUMBER, ['1'] = UNI_NUMBER, ['2'] = UNI_NUMBER, ['3'] = UNI_NUMBER,
        ['4'] = UNI_NUMBER, ['5'] = UNI_NUMBER, ['6'] = UNI_NUMBER, ['7'] = UNI_NUMBER,
        ['8'] = UNI_NUMBER, ['9'] = UNI_NUMBER,
    };
    if (cp < 128) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')
            return UNI_LETTER;
        return (enum uni_class)ascii[cp];
    }
    return (enum uni_class)range_find(uni_class_ranges, uni_class_nranges, cp);
}

/* One step of UTF-8 decoding: the length (1-4) of a well-formed sequence,
 * or minus the length of the maximal ill-formed subpart. */
static int utf8_step(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return -1;
    uint32_t v = c & (0xffu >> (len + 1));
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -i;
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b & 0xc0) != 0x80)
            return -i;
        v = v << 6 | (b & 0x3f);
    }
    *cp = v;
    return len;
}

int uni_utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    int k = utf8_step(s, n, cp);
    return k > 0 ? k : 0;
}

size_t uni_utf8_check(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_step(u + i, n - i, &cp);
        if (k <= 0)
            return i;
        i += (size_t)k;
    }
    return n;
}

int uni_utf8_put(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Hangul syllables are composed and decomposed by arithmetic (Unicode
 * §3.12), not by table. */
enum {
    SBASE = 0xac00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11a7,
    LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT
};

static unsigned ccc(uint32_t cp)
{
    return cp < 0x300 ? 0 : range_find(uni_ccc_ranges, uni_ccc_nranges, cp);
}

static const struct uni_decomp *decomp_find(uint32_t cp)
{
    unsigned lo = 0, hi = uni_ndecomps;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < uni_decomps[mid].cp)
            hi = mid;
        else if (cp > uni_decomps[mid].cp)
            lo = mid + 1;
        else
            return &uni_decomps[mid];
    }
    return NULL;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    unsigned lo = 0, hi = uni_ncomps;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        const struct uni_comp *c = &uni_comps[mid];
        if (a < c->first || (a == c->first && b < c->second))
            hi = mid;
        else if (a > c->first || b > c->second)
            lo = mid + 1;
        else
            return c->composite;
    }
    return 0;
}

int uni_nfc(const char *s, size_t n, char **out, size_t *outn, struct err *e)
{
    *out = NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t bad = uni_utf8_check(s, n);
    if (bad < n)
        return err_set(e, ERR_FORMAT, NULL, "text is not valid UTF-8 (byte offset %zu)", bad);
    /* Nothing below U+0300 decomposes into, or composes with, anything
     * else, so such text is already NFC. */
    size_t i = 0;
    while (i < n && u[i] < 0xcc)
        i++;
    if (i == n) {
        *out = malloc(n + 1);
        if (!*out)
            return err_set(e, ERR_NOMEM, NULL, "out of memory normalising %zu bytes", n);
        memcpy(*out, s, n);
        (*out)[n] = '\0';
        *outn = n;
        return 0;
    }
    /* decompose: at most 18 code points per input code point (U+FDFA) */
    size_t cap = n + 64, m = 0;
    uint32_t *cp = malloc(cap * sizeof *cp), *tmp;
    if (!cp)
        return err_set(e, ERR_NOMEM, NULL, "out of memory normalising %zu bytes", n);
    for (i = 0; i < n;) {
        uint32_t c;
        i += (size_t)uni_utf8_next(u + i, n - i, &c);
        if (m + 20 > cap) {
            cap = cap * 2;
            tmp = realloc(cp, cap * sizeof *cp);
            if (!tmp) {
                free(cp);
                return err_set(e, ERR_NOMEM, NULL, "out of memory normalising %zu bytes", n);
            }
            cp = tmp;
        }
        const struct uni_decomp *d;
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t k = c - SBASE;
            cp[m++] = LBASE + k / NCOUNT;
            cp[m++] = VBASE + k % NCOUNT / TCOUNT;
            if (k % TCOUNT)
                cp[m++] = TBASE + k % TCOUNT;
        } else if (c >= 0xc0 && (d = decomp_find(c))) {
            for (unsigned j = 0; j < d->len; j++)
                cp[m++] = uni_decomp_pool[d->off + j];
        } else
            cp[m++] = c;
    }
    /* canonical order: a stable sort of each run of non-starters */
    for (size_t j = 1; j < m; j++) {
        uint32_t c = cp[j];
        unsigned k = ccc(c);
        if (!k)
            continue;
        size_t t = j;
        while (t > 0 && ccc(cp[t - 1]) > k) {
            cp[t] = cp[t - 1];
            t--;
        }
        cp[t] = c;
    }
    /* compose, in place: r is the length of the result so far */
    size_t r = 0, starter = SIZE_MAX;
    unsigned last = 0;
    for (size_t j = 0; j < m; j++) {
        uint32_t c = cp[j], x;
        unsigned k = ccc(c);
        /* every second of a composition pair is U+0300 or above */
        if (c >= 0x300 && starter != SIZE_MAX && (last < k || (last == 0 && r - 1 == starter)) &&
            (x = compose(cp[starter], c)) != 0) {
            cp[starter] = x;
            continue;
        }
        if (k == 0)
            starter = r;
        last = k;
        cp[r++] = c;
    }
    char *o = malloc(r * 4 + 1);
    if (!o) {
        free(cp);
        return err_set(e, ERR_NOMEM, NULL, "out of memory normalising %zu bytes", n);
    }
    size_t on = 0;
    for (size_t j = 0; j < r; j++)
        on += (size_t)uni_utf8_put(cp[j], o + on);
    o[on] = '\0';
    free(cp);
    *out = o;
    *outn = on;
    return 0;
}

int uni_utf8_lossy(const char *s, size_t n, char **out, size_t *outn, struct err *e)
{
    const unsigned char *u = (const unsigned char *)s;
    /* each bad byte becomes at most 3 bytes */
    char *o = malloc(n * 3 + 1);
    *out = NULL;
    if (!o)
        return err_set(e, ERR_NOMEM, NULL, "out of memory decoding %zu bytes", n);
    size_t on = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        int k = utf8_step(u + i, n - i, &c);
        if (k > 0) {
            memcpy(o + on, s + i, (size_t)k);
            on += (size_t)k;
            i += (size_t)k;
        } else {
            on += (size_t)uni_utf8_put(0xfffd, o + on);
            i += (size_t)-k;
        }
    }
    o[on] = '\0';
    *out = o;
    *outn = on;
    return 0;
}
