/*
 * fuzz_safetensors.c - st_open (workers/model/safetensors.c) on arbitrary
 * bytes as model.safetensors.
 *
 * Checked beyond "no crash": what st_open promises of an accepted file.
 * Every tensor's bytes are its shape times its dtype size, the tensors tile
 * the data buffer (8 + header length .. end of file) without gap or overlap,
 * each is read end to end (ASan sees a read past the mapping), and st_find
 * finds each by its name.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz/fuzz_util.h"
#include "workers/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("model.safetensors", data, size);
    struct st_file *st = NULL;
    struct err e;
    int rc = st_open(&st, path, &e);
    if (rc < 0) {
        if (st)
            fuzz_fail("st_open failed but returned a file");
        fuzz_check_err("st_open", rc, &e);
        return 0;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | data[i];
    size_t buf_size = size - 8 - (size_t)hlen, total = 0;
    if (st_file_size(st) != size)
        fuzz_fail("st_file_size %zu, file %zu", st_file_size(st), size);
    const uint8_t *base = st_count(st) ? st_get(st, 0)->data : NULL;
    for (size_t i = 0; i < st_count(st); i++) {
        const struct st_tensor *t = st_get(st, i);
        size_t ne = 1;
        for (int d = 0; d < t->ndim; d++)
            ne *= (size_t)t->shape[d];
        if (ne != t->nelem || t->nelem * st_dtype_size(t->dtype) != t->nbytes)
            fuzz_fail("tensor %s: nelem/nbytes disagree with its shape", t->name);
        if ((const uint8_t *)t->data != base + total)
            fuzz_fail("tensor %s does not start where the previous one ended", t->name);
        total += t->nbytes;
        fuzz_touch(t->data, t->nbytes);
        if (st_find(st, t->name) != t)
            fuzz_fail("st_find does not find tensor %s", t->name);
    }
    if (total != buf_size)
        fuzz_fail("tensors cover %zu of the %zu-byte data buffer", total, buf_size);
    if (st_find(st, "\x01no such tensor"))
        fuzz_fail("st_find found a name not in the file");
    (void)st_metadata(st, "format");
    st_free(st);
    return 0;
}
