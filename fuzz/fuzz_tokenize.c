/*
 * fuzz_tokenize.c - tokenizer_encode and tokenizer_decode
 * (workers/text/tokenizer.c) on arbitrary text, with GPT-NeoX-20B's
 * tokenizer ($CKPTD_DATA or var/data/20B_tokenizer.json, as test_tokenizer
 * reads it) or, when that is absent, tests/cases/tokenizer/tiny.
 *
 * Checked beyond "no crash": encoding fails with ERR_FORMAT exactly when
 * the text is not well-formed UTF-8 (a validator written here, independent
 * of unicode.c); every id is a token; decoding succeeds and gives
 * well-formed UTF-8; and for ASCII text (which NFC leaves alone) decoding
 * the ids gives back the text byte for byte.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzz_util.h"
#include "workers/text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tokenizer *tok;
static int full; /* the real tokenizer: every byte has a token */

/* Well-formed UTF-8 (Unicode 3.9, table 3-7)? */
static int utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0)
                lo = 0xa0;
            if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0)
                lo = 0x90;
            if (c == 0xf4)
                hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        i += len;
    }
    return 1;
}

static void load(void)
{
    char path[4096];
    const char *dir = getenv("CKPTD_DATA");
    snprintf(path, sizeof path, "%s/20B_tokenizer.json", dir && *dir ? dir : "var/data");
    struct err e;
    if (tokenizer_load(&tok, path, &e) == 0) {
        full = 1;
        return;
    }
    if (tokenizer_load(&tok, "tests/cases/tokenizer/tiny/input.json", &e) < 0)
        fuzz_fail("no tokenizer to fuzz with (run from the repository root): %s", err_str(&e));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok)
        load();
    int *ids = NULL;
    size_t n = 0;
    struct err e;
    int well = utf8_ok(data, size);
    int rc = tokenizer_encode(tok, (const char *)data, size, &ids, &n, &e);
    if (rc < 0) {
        fuzz_check_err("tokenizer_encode", rc, &e);
        if (ids)
            fuzz_fail("tokenizer_encode failed but returned ids");
        if (well && (full || rc != ERR_UNSUPPORTED))
            fuzz_fail("well-formed text refused: %s", e.msg);
        if (!well && rc != ERR_FORMAT)
            fuzz_fail("ill-formed text refused with code %d, not ERR_FORMAT: %s", rc, e.msg);
        return 0;
    }
    if (!well)
        fuzz_fail("ill-formed UTF-8 encoded without an error");
    int V = tokenizer_vocab_size(tok);
    for (size_t k = 0; k < n; k++)
        if (ids[k] < 0 || ids[k] >= V)
            fuzz_fail("id %d outside the vocabulary of %d", ids[k], V);
    char *text = NULL;
    size_t len = 0;
    rc = tokenizer_decode(tok, ids, n, &text, &len, &e);
    if (rc < 0)
        fuzz_fail("decoding encoded ids failed: %s", e.msg);
    if (!utf8_ok((const uint8_t *)text, len))
        fuzz_fail("decode gave ill-formed UTF-8");
    int ascii = 1;
    for (size_t i = 0; i < size && ascii; i++)
        ascii = data[i] < 0x80;
    if (ascii && (len != size || memcmp(text, data, size) != 0))
        fuzz_fail("ASCII text does not survive encode + decode (%zu bytes in, %zu out)", size, len);
    free(text);
    free(ids);
    return 0;
}
