/*
 * fuzz_torchzip.c - torchzip_open (workers/model/torchzip.c) on arbitrary
 * bytes as pytorch_model.bin: the zip container, the records and data.pkl
 * together.  fuzz_pickle.c reaches deeper into the pickle reader by
 * building valid archives around a fuzzed data.pkl.
 *
 * Checked beyond "no crash": the error contract on failure; on success
 * every tensor's byte count agrees with its shape and dtype, its bytes are
 * read end to end (ASan sees reads past a record read into memory) and
 * st_find finds it by name.
 */
#include <stdint.h>

#include "fuzz/fuzz_util.h"
#include "workers/model/safetensors.h"
#include "workers/model/torchzip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("pytorch_model.bin", data, size);
    struct st_file *st = NULL;
    struct err e;
    int rc = torchzip_open(&st, path, &e);
    if (rc < 0) {
        if (st)
            fuzz_fail("torchzip_open failed but returned a file");
        fuzz_check_err("torchzip_open", rc, &e);
        return 0;
    }
    for (size_t i = 0; i < st_count(st); i++) {
        const struct st_tensor *t = st_get(st, i);
        size_t ne = 1;
        for (int d = 0; d < t->ndim; d++)
            ne *= (size_t)t->shape[d];
        if (ne != t->nelem || t->nelem * st_dtype_size(t->dtype) != t->nbytes)
            fuzz_fail("tensor %s: nelem/nbytes disagree with its shape", t->name);
        fuzz_touch(t->data, t->nbytes);
        if (st_find(st, t->name) != t)
            fuzz_fail("st_find does not find tensor %s", t->name);
    }
    st_free(st);
    return 0;
}
