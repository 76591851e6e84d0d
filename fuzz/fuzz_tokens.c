/*
 * fuzz_tokens.c - tokens_read_file (workers/text/tokens.c) on arbitrary
 * bytes in each of its formats.
 *
 * Input: byte 0 picks the file type (mod 5: .json, .u16, .bin, .u32,
 * .npy), byte 1 the context length (0..255; 0 must be refused for the
 * streams), the rest is the file.
 *
 * Checked beyond "no crash": the error contract on failure; on success
 * B, T >= 1, every id in [0, 2^31), a stream's T equals the context length
 * and B * T ids fit in the file (each id is touched).
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz/fuzz_util.h"
#include "workers/text/tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"tokens.json", "tokens.u16", "tokens.bin", "tokens.u32",
                                        "tokens.npy"};
    static const int width[] = {0, 2, 2, 4, 0};
    if (size < 2)
        return 0;
    int kind = data[0] % 5, ctx = data[1];
    const char *path = fuzz_write(names[kind], data + 2, size - 2);
    int *tok = NULL, B = 0, T = 0;
    struct err e;
    int rc = tokens_read_file(path, ctx, &tok, &B, &T, &e);
    if (rc < 0) {
        fuzz_check_err("tokens_read_file", rc, &e);
        if (tok)
            fuzz_fail("tokens_read_file failed but returned tokens");
        return 0;
    }
    if (ctx == 0 && width[kind])
        fuzz_fail("context length 0 accepted");
    if (B < 1 || T < 1)
        fuzz_fail("B %d, T %d", B, T);
    if (width[kind] && (T != ctx || (size_t)B * (size_t)T * (size_t)width[kind] > size - 2))
        fuzz_fail("stream of %zu bytes gave B %d x T %d with ctx %d", size - 2, B, T, ctx);
    for (size_t i = 0; i < (size_t)B * (size_t)T; i++)
        if (tok[i] < 0)
            fuzz_fail("negative id %d at %zu", tok[i], i);
    free(tok);
    return 0;
}
