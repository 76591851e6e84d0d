/*
 * fuzz_tokenizer.c - tokenizer_load (workers/text/tokenizer.c) on arbitrary
 * bytes as tokenizer.json.
 *
 * Checked beyond "no crash": the error contract on failure; on success a
 * few fixed texts are encoded, every id returned is a token of the
 * vocabulary, its bytes can be asked for, and decoding them succeeds (or
 * says the file has no decoder) with well-formed UTF-8 out.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzz_util.h"
#include "workers/text/tokenizer.h"
#include "workers/text/unicode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const texts[] = {
    "Hello, world! It's 2024.",
    "  two  spaces\n\nand tabs\t\t",
    "<|endoftext|>abc<|endoftext|>",
    "caf\xc3\xa9 \xe2\x82\xac 12 345",
    "ab!cd b!cd abc",
    "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("tokenizer.json", data, size);
    struct tokenizer *tok = NULL;
    struct err e;
    int rc = tokenizer_load(&tok, path, &e);
    if (rc < 0) {
        if (tok)
            fuzz_fail("tokenizer_load failed but returned a tokenizer");
        fuzz_check_err("tokenizer_load", rc, &e);
        return 0;
    }
    int V = tokenizer_vocab_size(tok);
    if (V < 1)
        fuzz_fail("vocabulary size %d", V);
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int *ids = NULL;
        size_t n = 0;
        rc = tokenizer_encode(tok, texts[i], strlen(texts[i]), &ids, &n, &e);
        if (rc < 0) {
            fuzz_check_err("tokenizer_encode", rc, &e);
            if (ids)
                fuzz_fail("tokenizer_encode failed but returned ids");
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            size_t blen;
            if (ids[k] < 0 || ids[k] >= V || !tokenizer_token_bytes(tok, ids[k], &blen))
                fuzz_fail("encode gave id %d, not a token (vocabulary %d)", ids[k], V);
        }
        char *text = NULL;
        size_t len = 0;
        rc = tokenizer_decode(tok, ids, n, &text, &len, &e);
        if (rc < 0) {
            fuzz_check_err("tokenizer_decode", rc, &e);
            if (rc != ERR_UNSUPPORTED)
                fuzz_fail("decode of encoded ids failed: %s", e.msg);
        } else if (uni_utf8_check(text, len) != len || strlen(text) > len) {
            fuzz_fail("decode gave ill-formed UTF-8");
        }
        free(text);
        free(ids);
    }
    (void)tokenizer_token_id(tok, "a");
    tokenizer_free(tok);
    return 0;
}
