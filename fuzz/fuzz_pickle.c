/*
 * fuzz_pickle.c - the pickle reader of torchzip.c, reached through
 * well-formed archives: the harness wraps the input in a torch.save-shaped
 * zip, so the fuzzer spends its time in data.pkl, not in the container.
 *
 * Input: one byte n (taken mod 9: records 0..n-1), n little-endian u16
 * record sizes, then data.pkl.  The archive holds archive/version "3",
 * archive/byteorder "little", archive/data/<k> of the given sizes (bytes
 * k, k+1, ...) and archive/data.pkl, all stored, with correct CRCs; the
 * seeds are the valid fixtures of tests/cases/torchzip rewritten this way
 * (fuzz/make_seeds.py).  With FUZZ_PICKLE_ZIP=FILE the archive built
 * for the input is also written to FILE (to turn a finding into a
 * tests/cases/torchzip case).
 *
 * Checked: the error contract; on success each tensor's byte count agrees
 * with its shape, and its bytes are a run of the record pattern (each byte
 * one more than the one before, mod 256): a tensor that strayed out of its
 * record into zip headers or another record would break the run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "fuzz/fuzz_util.h"
#include "workers/model/safetensors.h"
#include "workers/model/torchzip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_RECORDS 8
#define MAX_ENTRIES (MAX_RECORDS + 3)

struct zbuf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct zbuf *z, const void *src, size_t n)
{
    if (z->n + n > z->cap) {
        size_t nc = z->cap ? z->cap : 4096;
        while (nc < z->n + n)
            nc *= 2;
        uint8_t *np = realloc(z->p, nc);
        if (!np)
            fuzz_fail("out of memory building the archive");
        z->p = np;
        z->cap = nc;
    }
    memcpy(z->p + z->n, src, n);
    z->n += n;
}

static void put16(struct zbuf *z, unsigned v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    put(z, b, 2);
}

static void put32(struct zbuf *z, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(z, b, 4);
}

struct entry {
    char name[32];
    const uint8_t *data;
    size_t len;
    uint32_t crc, off;
};

/* A stored zip of the entries, as torch.save lays it out (no alignment
 * padding: the reader must not need it). */
static void build_zip(struct zbuf *z, struct entry *ents, int n)
{
    z->n = 0;
    for (int i = 0; i < n; i++) {
        struct entry *en = &ents[i];
        size_t nl = strlen(en->name);
        en->crc = (uint32_t)crc32_z(crc32_z(0L, Z_NULL, 0), en->data, en->len);
        en->off = (uint32_t)z->n;
        put32(z, 0x04034b50u);
        put16(z, 20), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0x21);
        put32(z, en->crc), put32(z, (uint32_t)en->len), put32(z, (uint32_t)en->len);
        put16(z, (unsigned)nl), put16(z, 0);
        put(z, en->name, nl);
        put(z, en->data, en->len);
    }
    size_t cd = z->n;
    for (int i = 0; i < n; i++) {
        struct entry *en = &ents[i];
        size_t nl = strlen(en->name);
        put32(z, 0x02014b50u);
        put16(z, 20), put16(z, 20), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0x21);
        put32(z, en->crc), put32(z, (uint32_t)en->len), put32(z, (uint32_t)en->len);
        put16(z, (unsigned)nl), put16(z, 0), put16(z, 0), put16(z, 0), put16(z, 0);
        put32(z, 0), put32(z, en->off);
        put(z, en->name, nl);
    }
    size_t cdlen = z->n - cd;
    put32(z, 0x06054b50u);
    put16(z, 0), put16(z, 0), put16(z, (unsigned)n), put16(z, (unsigned)n);
    put32(z, (uint32_t)cdlen), put32(z, (uint32_t)cd), put16(z, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct zbuf z;
    static uint8_t fill[65536];
    if (!fill[1])
        for (size_t i = 0; i < sizeof fill; i++)
            fill[i] = (uint8_t)i;
    if (size < 1)
        return 0;
    int nrec = data[0] % (MAX_RECORDS + 1);
    size_t pos = 1;
    if (size < pos + 2 * (size_t)nrec)
        return 0;
    struct entry ents[MAX_ENTRIES];
    int n = 0;
    memset(ents, 0, sizeof ents);
    /* data.pkl first, as torch.save writes it */
    for (int k = 0; k < nrec; k++) {
        size_t len = (size_t)data[pos] | (size_t)data[pos + 1] << 8;
        pos += 2;
        struct entry *en = &ents[1 + k];
        snprintf(en->name, sizeof en->name, "archive/data/%d", k);
        en->data = fill + k;
        en->len = len < sizeof fill - MAX_RECORDS ? len : sizeof fill - MAX_RECORDS;
    }
    snprintf(ents[0].name, sizeof ents[0].name, "archive/data.pkl");
    ents[0].data = data + pos;
    ents[0].len = size - pos;
    n = 1 + nrec;
    snprintf(ents[n].name, sizeof ents[n].name, "archive/byteorder");
    ents[n].data = (const uint8_t *)"little";
    ents[n++].len = 6;
    snprintf(ents[n].name, sizeof ents[n].name, "archive/version");
    ents[n].data = (const uint8_t *)"3\n";
    ents[n++].len = 2;
    build_zip(&z, ents, n);

    const char *path = fuzz_write("pytorch_model.bin", z.p, z.n);
    const char *keep = getenv("FUZZ_PICKLE_ZIP"); /* save the archive, for tests/cases */
    if (keep && *keep) {
        FILE *f = fopen(keep, "wb");
        if (!f || fwrite(z.p, 1, z.n, f) != z.n || fclose(f) != 0)
            fuzz_fail("cannot write %s", keep);
    }
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
        const uint8_t *b = t->data;
        for (size_t k = 1; k < t->nbytes; k++)
            if (b[k] != (uint8_t)(b[k - 1] + 1))
                fuzz_fail("tensor %s: byte %zu is not from its storage record", t->name, k);
        if (st_find(st, t->name) != t)
            fuzz_fail("st_find does not find tensor %s", t->name);
    }
    st_free(st);
    return 0;
}
