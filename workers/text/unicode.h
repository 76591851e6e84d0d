/*
 * unicode.h - the little Unicode the tokenizer needs: strict UTF-8
 * decoding, the letter/number/white-space classes of its split pattern,
 * NFC normalisation, and lossy UTF-8 repair for decoded bytes.
 *
 * The character data (unicode_tables.c) is generated from the JavaScript
 * engine's Unicode tables by scripts/gen-unicode-tables.mjs, which also
 * checks NFC against String.prototype.normalize on every code point.
 * No library is used: ICU would be a large dependency for three tables,
 * and the tables must match the reference implementation exactly.
 *
 *     char *out; size_t n;
 *     if (uni_nfc(text, len, &out, &n, &e) < 0) ...
 *     free(out);
 */
#ifndef CKPTD_UNICODE_H
#define CKPTD_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Classes of the GPT-2 split pattern: \p{L}, \p{N}, and \s as Oniguruma
 * reads it in Unicode mode (the White_Space property). */
enum uni_class {
    UNI_OTHER,
    UNI_LETTER,
    UNI_NUMBER,
    UNI_SPACE,
    UNI_CLASS_COUNT
};

/* Class of code point cp (UNI_OTHER for anything unassigned or invalid). */
enum uni_class uni_class_of(uint32_t cp);

/* Decode one code point from s[0..n): its length (1-4), or 0 when the bytes
 * are not well-formed UTF-8 (overlong forms, surrogates, > U+10FFFF,
 * truncated sequences).  n must be >= 1. */
int uni_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

/* Byte offset of the first ill-formed sequence in s[0..n), or n. */
size_t uni_utf8_check(const char *s, size_t n);

/* Encode cp (<= U+10FFFF) into out (4 bytes of room); returns the length. */
int uni_utf8_put(uint32_t cp, char *out);

/* NFC of the well-formed UTF-8 text s[0..n) into *out (NUL-terminated,
 * caller frees), *outn bytes.  Ill-formed input is ERR_FORMAT naming the
 * byte offset; ERR_NOMEM.  On failure *out is NULL. */
int uni_nfc(const char *s, size_t n, char **out, size_t *outn, struct err *e) CK_WUR;

/* Rewrite s[0..n) so it is well-formed UTF-8: each maximal ill-formed
 * subpart becomes U+FFFD (the WHATWG/Unicode "maximal subpart" practice,
 * as TextDecoder and Rust's from_utf8_lossy do).  *out (NUL-terminated)
 * is the caller's; ERR_NOMEM. */
int uni_utf8_lossy(const char *s, size_t n, char **out, size_t *outn, struct err *e) CK_WUR;

#endif
