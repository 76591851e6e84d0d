/*
 * torchzip.c - PyTorch zip checkpoints: the archive, a whitelisting pickle
 * reader for data.pkl, and the tensors it describes.
 *
 * Order of work in torchzip_open: map the file; refuse what is not a zip
 * (naming the legacy format when it is one); open it with libzip
 * (ZIP_CHECKCONS) and find the one `<top>/data.pkl`; read the byteorder and
 * version records; run data.pkl through the pickle machine, which resolves
 * each storage persistent id to its record (located, size-checked and
 * CRC-checked once per key); finally check every tensor against its storage
 * and hand the list to st_file_wrap.  Pickle values live in an arena owned by
 * the result (tensor names point into it); the arena, the mapping and any
 * record read into memory are released together by st_free.
 */
#include "workers/model/torchzip.h"
#include "common/lazylib.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <zip.h>
#include <zlib.h>

/* ---- libzip, loaded at the first torch zip ----
 * A worker on a safetensors checkpoint never reads a zip: libzip and what
 * it brings (libcrypto, libbz2) are loaded (dlopen) when the first torch
 * zip is opened, not at every worker's start, where their relocations
 * cost ~200 page faults.  The calls below name libzip's functions as
 * usual; each is a pointer of the same type. */
#ifndef CKPT_LIBZIP_SONAME
#define CKPT_LIBZIP_SONAME "libzip.so.4"
#endif
#define LIBZIP_FUNCS(X, s) X(s, zip_open) X(s, zip_discard) X(s, zip_get_name) \
    X(s, zip_get_num_entries) X(s, zip_name_locate) X(s, zip_stat_index) X(s, zip_fopen_index) \
    X(s, zip_fread) X(s, zip_fclose) X(s, zip_get_error) X(s, zip_file_get_error) \
    X(s, zip_error_strerror) X(s, zip_error_init_with_code) X(s, zip_error_fini)
LAZYLIB_DECLARE(libzip, LIBZIP_FUNCS);

/* libzip loaded, or ERR_UNSUPPORTED saying a torch zip needs it */
static int libzip_load(const char *path, struct err *e)
{
    struct err le;
    err_clear(&le);
    if (LAZYLIB_LOAD(libzip, CKPT_LIBZIP_SONAME, &le) < 0)
        return err_set(e, ERR_UNSUPPORTED, path, "a torch zip checkpoint needs %s", err_str(&le));
    return 0;
}
#define zip_open libzip.zip_open
#define zip_discard libzip.zip_discard
#define zip_get_name libzip.zip_get_name
#define zip_get_num_entries libzip.zip_get_num_entries
#define zip_name_locate libzip.zip_name_locate
#define zip_stat_index libzip.zip_stat_index
#define zip_fopen_index libzip.zip_fopen_index
#define zip_fread libzip.zip_fread
#define zip_fclose libzip.zip_fclose
#define zip_get_error libzip.zip_get_error
#define zip_file_get_error libzip.zip_file_get_error
#define zip_error_strerror libzip.zip_error_strerror
#define zip_error_init_with_code libzip.zip_error_init_with_code
#define zip_error_fini libzip.zip_error_fini

/* ---- what the result owns ---- */

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
};

struct tz_owner {
    void *map;                 /* whole file, read-only */
    size_t size;
    struct arena_block *arena; /* pickle values, strings, tensor names */
    void **bufs;               /* records read into memory */
    size_t nbufs, capbufs;
};

static void owner_free(void *p)
{
    struct tz_owner *o = p;
    if (!o)
        return;
    if (o->map)
        munmap(o->map, o->size);
    for (struct arena_block *b = o->arena, *nx; b; b = nx) {
        nx = b->next;
        free(b);
    }
    for (size_t i = 0; i < o->nbufs; i++)
        free(o->bufs[i]);
    free(o->bufs);
    free(o);
}

/* 16-byte aligned bytes that live as long as the owner; NULL when out of
 * memory. */
static void *arena_alloc(struct tz_owner *o, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct arena_block *b = o->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = o->arena;
        o->arena = b;
    }
    void *p = b->mem + b->used;
    b->used += n;
    return p;
}

/* ---- the whitelist ---- */

enum tz_global {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_TENSOR,
    G_REBUILD_PARAMETER,
    G_STORAGE, /* first storage class; the rest follow in `globals` */
};

static const struct {
    const char *module, *name;
    int dtype; /* storage classes: their dtype; callables: -1 */
} globals[] = {
    {"collections", "OrderedDict", -1},
    {"torch._utils", "_rebuild_tensor_v2", -1},
    {"torch._utils", "_rebuild_tensor", -1},
    {"torch._utils", "_rebuild_parameter", -1},
    {"torch", "FloatStorage", ST_F32},
    {"torch", "HalfStorage", ST_F16},
    {"torch", "BFloat16Storage", ST_BF16},
    {"torch", "DoubleStorage", ST_F64},
    {"torch", "LongStorage", ST_I64},
    {"torch", "IntStorage", ST_I32},
    {"torch", "ShortStorage", ST_I16},
    {"torch", "CharStorage", ST_I8},
    {"torch", "ByteStorage", ST_U8},
    {"torch", "BoolStorage", ST_BOOL},
};
#define NGLOBALS (sizeof globals / sizeof globals[0])

/* ---- pickle values ---- */

enum pk_kind {
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_FLOAT,
    PK_STR,
    PK_TUPLE,
    PK_LIST,
    PK_DICT, /* items are key, value, key, value ... */
    PK_GLOBAL,
    PK_STORAGE,
    PK_TENSOR,
    PK_KIND_COUNT
};

/* With their article, for messages: "is an int". */
static const char *const kind_name[PK_KIND_COUNT] = {
    "None",     "a bool",   "an int",    "a float",   "a str",    "a tuple",
    "a list",   "a dict",   "a global",  "a storage", "a tensor",
};

struct tz_storage {
    const char *key;
    enum st_dtype dtype;
    size_t numel;
    const uint8_t *data;
};

struct pk_tensor {
    const struct tz_storage *st;
    int64_t offset; /* in elements */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t stride[ST_MAX_DIMS];
    size_t pos; /* byte of data.pkl where it was built */
};

struct pk_obj {
    enum pk_kind kind;
    union {
        int64_t i;
        double f;
        struct {
            char *s;
            size_t len;
        } str;
        struct {
            struct pk_obj **v;
            size_t n, cap;
        } seq;
        int global;
        const struct tz_storage *storage;
        struct pk_tensor *tensor;
    } u;
};

/* ---- the reader's state ---- */

struct tz_ctx {
    const char *path;
    struct tz_owner *own;
    zip_t *za;
    char prefix[256];          /* top folder, without the slash */
    uint64_t *local_off;       /* per libzip index: local header offset */
    uint64_t nentries;
    /* pickle machine */
    const uint8_t *pk;
    size_t pklen, pos, op_pos;
    struct pk_obj **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    struct pk_obj **memo;
    size_t memo_cap, memo_count; /* slots allocated, slots set */
    size_t nobjects;
    struct tz_storage **storages;
    size_t nstorages, storages_cap;
};

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* Grow *v (of element size `es`, capacity *cap) to hold `need`, up to
 * `limit` elements.  Returns 0, or -1 when over the limit or out of memory. */
static int grow(void **v, size_t *cap, size_t need, size_t es, size_t limit)
{
    if (need <= *cap)
        return 0;
    if (need > limit)
        return -1;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    if (nc > limit)
        nc = limit;
    void *nv = realloc(*v, nc * es);
    if (!nv)
        return -1;
    *v = nv;
    *cap = nc;
    return 0;
}

/* ---- the archive ---- */

/* Local header offsets of every central directory entry, in libzip's index
 * order, each entry's name checked against libzip's.  libzip has opened and
 * checked the archive already; this walk only has to be bounds-safe. */
static int read_central_dir(struct tz_ctx *c, struct err *e)
{
    const uint8_t *m = c->own->map;
    size_t size = c->own->size;
    size_t eocd = SIZE_MAX;

    if (size >= 22)
        for (size_t p = size - 22;; p--) {
            if (le32(m + p) == 0x06054b50u) {
                eocd = p;
                break;
            }
            if (p == 0 || size - 22 - p >= 65535)
                break;
        }
    if (eocd == SIZE_MAX)
        return err_set(e, ERR_FORMAT, c->path, "zip end-of-central-directory record not found");
    uint64_t n = le16(m + eocd + 10), cdoff = le32(m + eocd + 16);
    if (n == 0xffff || cdoff == 0xffffffffu) {
        if (eocd < 20 || le32(m + eocd - 20) != 0x07064b50u)
            return err_set(e, ERR_FORMAT, c->path, "zip64 locator missing");
        uint64_t z = le64(m + eocd - 20 + 8);
        if (size < 56 || z > size - 56 || le32(m + z) != 0x06064b50u)
            return err_set(e, ERR_FORMAT, c->path, "zip64 end-of-central-directory record missing");
        n = le64(m + z + 32);
        cdoff = le64(m + z + 48);
    }
    if (n != c->nentries)
        return err_set(e, ERR_FORMAT, c->path,
                       "central directory lists %llu entries, libzip %llu",
                       (unsigned long long)n, (unsigned long long)c->nentries);
    c->local_off = calloc(n ? n : 1, sizeof *c->local_off);
    if (!c->local_off)
        return err_set(e, ERR_NOMEM, c->path, "out of memory");
    uint64_t p = cdoff;
    for (uint64_t i = 0; i < n; i++) {
        if (p > size || size - p < 46 || le32(m + p) != 0x02014b50u)
            return err_set(e, ERR_FORMAT, c->path, "central directory entry %llu is malformed",
                           (unsigned long long)i);
        size_t nlen = le16(m + p + 28), xlen = le16(m + p + 30), clen = le16(m + p + 32);
        if (size - p - 46 < nlen + xlen + clen)
            return err_set(e, ERR_FORMAT, c->path, "central directory entry %llu is truncated",
                           (unsigned long long)i);
        const char *zname = zip_get_name(c->za, i, ZIP_FL_ENC_RAW);
        if (!zname || strlen(zname) != nlen || memcmp(zname, m + p + 46, nlen) != 0)
            return err_set(e, ERR_FORMAT, c->path,
                           "central directory entry %llu does not match libzip's",
                           (unsigned long long)i);
        uint64_t loff = le32(m + p + 42);
        if (loff == 0xffffffffu) {
            /* zip64 extra field: the 8-byte values present, in order, are
             * uncompressed size, compressed size, local header offset. */
            const uint8_t *x = m + p + 46 + nlen, *xend = x + xlen;
            bool found = false;
            while (xend - x >= 4) {
                uint16_t id = le16(x), len = le16(x + 2);
                if ((size_t)(xend - x - 4) < len)
                    break;
                if (id == 0x0001) {
                    size_t k = 0;
                    if (le32(m + p + 24) == 0xffffffffu)
                        k += 8;
                    if (le32(m + p + 20) == 0xffffffffu)
                        k += 8;
                    if (k + 8 <= len) {
                        loff = le64(x + 4 + k);
                        found = true;
                    }
                    break;
                }
                x += 4 + len;
            }
            if (!found)
                return err_set(e, ERR_FORMAT, c->path,
                               "central directory entry \"%s\" lacks its zip64 offset", zname);
        }
        c->local_off[i] = loff;
        p += 46 + nlen + xlen + clen;
    }
    return 0;
}

/* Where the bytes of stored entry `idx` (of `len` bytes) start in the file. */
static int stored_data(struct tz_ctx *c, zip_uint64_t idx, uint64_t len, const char *name,
                       const uint8_t **out, struct err *e)
{
    const uint8_t *m = c->own->map;
    size_t size = c->own->size;
    uint64_t lo = c->local_off[idx];
    if (lo > size || size - lo < 30 || le32(m + lo) != 0x04034b50u)
        return err_set(e, ERR_FORMAT, c->path, "record \"%s\": bad local header at %llu", name,
                       (unsigned long long)lo);
    uint64_t d = lo + 30 + le16(m + lo + 26) + le16(m + lo + 28);
    if (d > size || size - d < len)
        return err_set(e, ERR_FORMAT, c->path,
                       "record \"%s\": %llu bytes at %llu run past the end of the %zu-byte file "
                       "(truncated?)",
                       name, (unsigned long long)len, (unsigned long long)d, size);
    *out = m + d;
    return 0;
}

/* The CRC-32 of a stored member's bytes against the central directory's.
 * A CRC of 0 over non-empty bytes means none was recorded (torch.save can
 * be told not to compute them; torch.load then does not check): skipped. */
static int check_crc(struct tz_ctx *c, const zip_stat_t *zs, const uint8_t *data,
                     const char *name, struct err *e)
{
    if (!(zs->valid & ZIP_STAT_CRC) || zs->crc == 0)
        return 0;
    uLong crc = crc32_z(crc32_z(0L, Z_NULL, 0), data, (z_size_t)zs->size);
    if (crc != zs->crc)
        return err_set(e, ERR_FORMAT, c->path,
                       "record \"%s\" fails its CRC-32 check (stored %08x, computed %08lx): "
                       "the file is corrupt",
                       name, (unsigned)zs->crc, (unsigned long)crc);
    return 0;
}

/* A whole member into a malloc'd buffer (16-byte aligned), NUL-terminated.
 * A stored member is copied from the mapping (check_crc), a compressed one
 * read through libzip, which checks its CRC.  At most `limit` bytes. */
static int read_member(struct tz_ctx *c, zip_uint64_t idx, uint64_t limit, uint8_t **out,
                       size_t *len, struct err *e)
{
    zip_stat_t zs;
    zip_file_t *zf = NULL;
    uint8_t *buf = NULL;
    int rc = 0;
    const char *name = zip_get_name(c->za, idx, ZIP_FL_ENC_RAW);

    *out = NULL;
    if (zip_stat_index(c->za, idx, 0, &zs) < 0 || !(zs.valid & ZIP_STAT_SIZE)) {
        rc = err_set(e, ERR_FORMAT, c->path, "record \"%s\": %s", name,
                     zip_error_strerror(zip_get_error(c->za)));
        goto out;
    }
    if (zs.size > limit) {
        rc = err_set(e, ERR_FORMAT, c->path, "record \"%s\" is %llu bytes, over the limit of %llu",
                     name, (unsigned long long)zs.size, (unsigned long long)limit);
        goto out;
    }
    if (posix_memalign((void **)&buf, 64, (size_t)zs.size + 1) != 0) {
        buf = NULL;
        rc = err_set(e, ERR_NOMEM, c->path, "out of memory for record \"%s\"", name);
        goto out;
    }
    if (zs.comp_method == ZIP_CM_STORE) {
        const uint8_t *src;
        if ((rc = stored_data(c, idx, zs.size, name, &src, e)) < 0 ||
            (rc = check_crc(c, &zs, src, name, e)) < 0)
            goto out;
        memcpy(buf, src, (size_t)zs.size);
        buf[zs.size] = 0;
        *out = buf;
        *len = (size_t)zs.size;
        buf = NULL;
        goto out;
    }
    zf = zip_fopen_index(c->za, idx, 0);
    if (!zf) {
        rc = err_set(e, ERR_FORMAT, c->path, "record \"%s\": %s", name,
                     zip_error_strerror(zip_get_error(c->za)));
        goto out;
    }
    uint64_t got = 0;
    for (;;) {
        uint8_t spare;
        uint8_t *dst = got < zs.size ? buf + got : &spare;
        zip_uint64_t want = got < zs.size ? zs.size - got : 1;
        zip_int64_t r = zip_fread(zf, dst, want);
        if (r < 0) {
            rc = err_set(e, ERR_FORMAT, c->path, "record \"%s\": %s", name,
                         zip_error_strerror(zip_file_get_error(zf)));
            goto out;
        }
        if (r == 0)
            break;
        got += (uint64_t)r;
        if (got > zs.size) {
            rc = err_set(e, ERR_FORMAT, c->path, "record \"%s\" is longer than its stated size",
                         name);
            goto out;
        }
    }
    if (got != zs.size) {
        rc = err_set(e, ERR_FORMAT, c->path, "record \"%s\": %llu of %llu bytes (truncated?)",
                     name, (unsigned long long)got, (unsigned long long)zs.size);
        goto out;
    }
    buf[got] = 0;
    *out = buf;
    *len = (size_t)got;
    buf = NULL;
out:
    if (zf)
        zip_fclose(zf);
    free(buf);
    return rc;
}

/* ---- storages ---- */

static bool plain_key(const char *s, size_t len)
{
    return len > 0 && len < 128 && memchr(s, '/', len) == NULL && memchr(s, '\0', len) == NULL &&
           strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* The storage with `key`, located, size-checked and CRC-checked the first
 * time it is named. */
static int storage_get(struct tz_ctx *c, const struct pk_obj *key, enum st_dtype dt,
                       int64_t numel, const struct tz_storage **out, struct err *e)
{
    const char *k = key->u.str.s;
    if (!plain_key(k, key->u.str.len))
        return err_set(e, ERR_FORMAT, c->path,
                       "data.pkl byte %zu: persistent id names storage key \"%.64s\", "
                       "not a plain record name",
                       c->op_pos, k);
    for (size_t i = 0; i < c->nstorages; i++) {
        struct tz_storage *s = c->storages[i];
        if (strcmp(s->key, k) != 0)
            continue;
        if (s->dtype != dt || s->numel != (size_t)numel)
            return err_set(e, ERR_FORMAT, c->path,
                           "data.pkl byte %zu: storage \"%s\" named again as %lld x %s "
                           "(first %zu x %s)",
                           c->op_pos, k, (long long)numel, st_dtype_name(dt), s->numel,
                           st_dtype_name(s->dtype));
        *out = s;
        return 0;
    }

    char name[512];
    snprintf(name, sizeof name, "%s/data/%s", c->prefix, k);
    zip_int64_t idx = zip_name_locate(c->za, name, ZIP_FL_ENC_RAW);
    if (idx < 0)
        return err_set(e, ERR_FORMAT, c->path,
                       "data.pkl byte %zu: persistent id names storage record \"%s\", which "
                       "is not in the archive",
                       c->op_pos, name);
    zip_stat_t zs;
    if (zip_stat_index(c->za, (zip_uint64_t)idx, 0, &zs) < 0)
        return err_set(e, ERR_FORMAT, c->path, "record \"%s\": %s", name,
                       zip_error_strerror(zip_get_error(c->za)));
    size_t esz = st_dtype_size(dt), want;
    if (__builtin_mul_overflow((size_t)numel, esz, &want) || zs.size != want)
        return err_set(e, ERR_FORMAT, c->path,
                       "data.pkl byte %zu: storage record \"%s\" holds %llu bytes, but its "
                       "persistent id declares %lld elements of %s (%lld bytes)",
                       c->op_pos, name, (unsigned long long)zs.size, (long long)numel,
                       st_dtype_name(dt), (long long)numel * (long long)esz);
    if ((zs.valid & ZIP_STAT_ENCRYPTION_METHOD) && zs.encryption_method != ZIP_EM_NONE)
        return err_set(e, ERR_UNSUPPORTED, c->path, "record \"%s\" is encrypted", name);

    struct tz_storage *s = arena_alloc(c->own, sizeof *s);
    char *kc = arena_alloc(c->own, key->u.str.len + 1);
    if (!s || !kc ||
        grow((void **)&c->storages, &c->storages_cap, c->nstorages + 1, sizeof *c->storages,
             SIZE_MAX / sizeof *c->storages) < 0)
        return err_set(e, ERR_NOMEM, c->path, "out of memory");
    memcpy(kc, k, key->u.str.len + 1);
    s->key = kc;
    s->dtype = dt;
    s->numel = (size_t)numel;

    int rc;
    if (zs.comp_method == ZIP_CM_STORE) {
        if ((rc = stored_data(c, (zip_uint64_t)idx, zs.size, name, &s->data, e)) < 0 ||
            (rc = check_crc(c, &zs, s->data, name, e)) < 0)
            return rc;
    } else {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (grow((void **)&c->own->bufs, &c->own->capbufs, c->own->nbufs + 1,
                 sizeof *c->own->bufs, SIZE_MAX / sizeof(void *)) < 0)
            return err_set(e, ERR_NOMEM, c->path, "out of memory");
        if ((rc = read_member(c, (zip_uint64_t)idx, UINT64_MAX - 1, &buf, &len, e)) < 0)
            return rc;
        c->own->bufs[c->own->nbufs++] = buf;
        s->data = buf;
    }
    c->storages[c->nstorages++] = s;
    *out = s;
    return 0;
}

/* ---- the pickle machine ---- */

static const struct {
    uint8_t op;
    const char *name;
} opnames[] = {
    {'(', "MARK"},          {'.', "STOP"},          {'0', "POP"},
    {'1', "POP_MARK"},      {'2', "DUP"},           {'F', "FLOAT"},
    {'I', "INT"},           {'J', "BININT"},        {'K', "BININT1"},
    {'L', "LONG"},          {'M', "BININT2"},       {'N', "NONE"},
    {'P', "PERSID"},        {'Q', "BINPERSID"},     {'R', "REDUCE"},
    {'S', "STRING"},        {'T', "BINSTRING"},     {'U', "SHORT_BINSTRING"},
    {'V', "UNICODE"},       {'X', "BINUNICODE"},    {'a', "APPEND"},
    {'b', "BUILD"},         {'c', "GLOBAL"},        {'d', "DICT"},
    {'}', "EMPTY_DICT"},    {'e', "APPENDS"},       {'g', "GET"},
    {'h', "BINGET"},        {'i', "INST"},          {'j', "LONG_BINGET"},
    {'l', "LIST"},          {']', "EMPTY_LIST"},    {'o', "OBJ"},
    {'p', "PUT"},           {'q', "BINPUT"},        {'r', "LONG_BINPUT"},
    {'s', "SETITEM"},       {'t', "TUPLE"},         {')', "EMPTY_TUPLE"},
    {'u', "SETITEMS"},      {'G', "BINFLOAT"},      {0x80, "PROTO"},
    {0x81, "NEWOBJ"},       {0x82, "EXT1"},         {0x83, "EXT2"},
    {0x84, "EXT4"},         {0x85, "TUPLE1"},       {0x86, "TUPLE2"},
    {0x87, "TUPLE3"},       {0x88, "NEWTRUE"},      {0x89, "NEWFALSE"},
    {0x8a, "LONG1"},        {0x8b, "LONG4"},        {'B', "BINBYTES"},
    {'C', "SHORT_BINBYTES"}, {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"},
    {0x8e, "BINBYTES8"},    {0x8f, "EMPTY_SET"},    {0x90, "ADDITEMS"},
    {0x91, "FROZENSET"},    {0x92, "NEWOBJ_EX"},    {0x93, "STACK_GLOBAL"},
    {0x94, "MEMOIZE"},      {0x95, "FRAME"},        {0x96, "BYTEARRAY8"},
    {0x97, "NEXT_BUFFER"},  {0x98, "READONLY_BUFFER"},
};

static const char *opname(uint8_t op)
{
    for (size_t i = 0; i < sizeof opnames / sizeof opnames[0]; i++)
        if (opnames[i].op == op)
            return opnames[i].name;
    return "unknown";
}

#define PERR(c, e, code, ...) err_set((e), (code), (c)->path, __VA_ARGS__)

static struct pk_obj *new_obj(struct tz_ctx *c, enum pk_kind k)
{
    if (c->nobjects >= TZ_MAX_OBJECTS)
        return NULL;
    struct pk_obj *o = arena_alloc(c->own, sizeof *o);
    if (o) {
        memset(o, 0, sizeof *o);
        o->kind = k;
        c->nobjects++;
    }
    return o;
}

static int oom_or_limit(struct tz_ctx *c, struct err *e)
{
    if (c->nobjects >= TZ_MAX_OBJECTS)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: more than %u values built", c->op_pos,
                    TZ_MAX_OBJECTS);
    return PERR(c, e, ERR_NOMEM, "out of memory reading data.pkl");
}

static int push(struct tz_ctx *c, struct pk_obj *o, struct err *e)
{
    if (!o)
        return oom_or_limit(c, e);
    if (grow((void **)&c->stack, &c->stack_cap, c->sp + 1, sizeof *c->stack, TZ_MAX_STACK) < 0)
        return c->sp + 1 > TZ_MAX_STACK
                   ? PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: stack deeper than %u values",
                          c->op_pos, TZ_MAX_STACK)
                   : PERR(c, e, ERR_NOMEM, "out of memory reading data.pkl");
    c->stack[c->sp++] = o;
    return 0;
}

/* Values on the stack above the innermost mark (0 without one). */
static size_t floor_sp(const struct tz_ctx *c) { return c->nmarks ? c->marks[c->nmarks - 1] : 0; }

static int pop(struct tz_ctx *c, struct pk_obj **o, uint8_t op, struct err *e)
{
    if (c->sp <= floor_sp(c))
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s on an empty stack", c->op_pos,
                    opname(op));
    *o = c->stack[--c->sp];
    return 0;
}

static int top(struct tz_ctx *c, struct pk_obj **o, uint8_t op, struct err *e)
{
    if (c->sp <= floor_sp(c))
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s on an empty stack", c->op_pos,
                    opname(op));
    *o = c->stack[c->sp - 1];
    return 0;
}

/* Pop to the innermost mark: *first is the index of the first value above
 * it, *n their count (the values stay in c->stack until overwritten). */
static int pop_mark(struct tz_ctx *c, size_t *first, size_t *n, uint8_t op, struct err *e)
{
    if (c->nmarks == 0)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s without a MARK", c->op_pos,
                    opname(op));
    size_t m = c->marks[--c->nmarks];
    *first = m;
    *n = c->sp - m;
    c->sp = m;
    return 0;
}

static int seq_append(struct tz_ctx *c, struct pk_obj *s, struct pk_obj *v, struct err *e)
{
    if (s->u.seq.n == s->u.seq.cap) {
        size_t nc = s->u.seq.cap ? s->u.seq.cap * 2 : 8;
        struct pk_obj **nv = arena_alloc(c->own, nc * sizeof *nv);
        if (!nv)
            return PERR(c, e, ERR_NOMEM, "out of memory reading data.pkl");
        if (s->u.seq.n)
            memcpy(nv, s->u.seq.v, s->u.seq.n * sizeof *nv);
        s->u.seq.v = nv;
        s->u.seq.cap = nc;
    }
    s->u.seq.v[s->u.seq.n++] = v;
    return 0;
}

static struct pk_obj *new_tuple(struct tz_ctx *c, struct pk_obj *const *v, size_t n)
{
    struct pk_obj *t = new_obj(c, PK_TUPLE);
    if (!t)
        return NULL;
    if (n) {
        t->u.seq.v = arena_alloc(c->own, n * sizeof *t->u.seq.v);
        if (!t->u.seq.v)
            return NULL;
        memcpy(t->u.seq.v, v, n * sizeof *v);
    }
    t->u.seq.n = t->u.seq.cap = n;
    return t;
}

static struct pk_obj *new_str(struct tz_ctx *c, const uint8_t *s, size_t len)
{
    struct pk_obj *o = new_obj(c, PK_STR);
    if (!o || !(o->u.str.s = arena_alloc(c->own, len + 1)))
        return NULL;
    memcpy(o->u.str.s, s, len);
    o->u.str.s[len] = '\0';
    o->u.str.len = len;
    return o;
}

/* `n` bytes of argument at the current position, or a truncation error. */
static int take(struct tz_ctx *c, size_t n, const uint8_t **p, uint8_t op, struct err *e)
{
    if (c->pklen - c->pos < n)
        return PERR(c, e, ERR_FORMAT,
                    "data.pkl is truncated: %s at byte %zu needs %zu bytes, %zu remain", opname(op),
                    c->op_pos, n, c->pklen - c->pos);
    *p = c->pk + c->pos;
    c->pos += n;
    return 0;
}

static int memo_put(struct tz_ctx *c, uint64_t idx, uint8_t op, struct err *e)
{
    struct pk_obj *o;
    int rc = top(c, &o, op, e);
    if (rc < 0)
        return rc;
    if (idx >= TZ_MAX_MEMO)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s to memo slot %llu, over the limit of %u",
                    c->op_pos, opname(op), (unsigned long long)idx, TZ_MAX_MEMO);
    size_t old = c->memo_cap;
    if (grow((void **)&c->memo, &c->memo_cap, (size_t)idx + 1, sizeof *c->memo, TZ_MAX_MEMO) < 0)
        return PERR(c, e, ERR_NOMEM, "out of memory reading data.pkl");
    if (c->memo_cap > old)
        memset(c->memo + old, 0, (c->memo_cap - old) * sizeof *c->memo);
    if (!c->memo[idx])
        c->memo_count++;
    c->memo[idx] = o;
    return 0;
}

/* Index of (module, name) in `globals`, or a refusal naming it. */
static int resolve_global(struct tz_ctx *c, const char *module, const char *name, uint8_t op,
                          struct err *e)
{
    for (size_t i = 0; i < NGLOBALS; i++)
        if (strcmp(globals[i].module, module) == 0 && strcmp(globals[i].name, name) == 0)
            return (int)i;
    if (strcmp(module, "torch") == 0 && strstr(name, "Storage"))
        return PERR(c, e, ERR_UNSUPPORTED,
                    "data.pkl byte %zu: storage type %s.%s is not supported (only Float, Half, "
                    "BFloat16, Double, Long, Int, Short, Char, Byte and Bool storages)",
                    c->op_pos, module, name);
    return PERR(c, e, ERR_UNSUPPORTED,
                "data.pkl byte %zu: refusing %s %.100s.%.100s: not one of the names torch.save "
                "uses for tensors (nothing is executed)",
                c->op_pos, opname(op), module, name);
}

static int push_global(struct tz_ctx *c, int g, struct err *e)
{
    struct pk_obj *o = new_obj(c, PK_GLOBAL);
    if (o)
        o->u.global = g;
    return push(c, o, e);
}

/* A tuple of non-negative ints of at most ST_MAX_DIMS. */
static int int_tuple(struct tz_ctx *c, const struct pk_obj *t, int64_t *v, int *n,
                     const char *what, struct err *e)
{
    if (t->kind != PK_TUPLE)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: tensor %s is %s, not a tuple",
                    c->op_pos, what, kind_name[t->kind]);
    if (t->u.seq.n > ST_MAX_DIMS)
        return PERR(c, e, ERR_UNSUPPORTED, "data.pkl byte %zu: tensor %s has %zu dimensions, more than %d",
                    c->op_pos, what, t->u.seq.n, ST_MAX_DIMS);
    for (size_t i = 0; i < t->u.seq.n; i++) {
        const struct pk_obj *x = t->u.seq.v[i];
        if (x->kind != PK_INT || x->u.i < 0)
            return PERR(c, e, ERR_FORMAT,
                        "data.pkl byte %zu: tensor %s[%zu] is not a non-negative int", c->op_pos,
                        what, i);
        v[i] = x->u.i;
    }
    *n = (int)t->u.seq.n;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
 * backward_hooks[, metadata]) or _rebuild_tensor(storage, offset, size,
 * stride): a tensor value; contiguity and extent are checked later, when
 * its name is known. */
static int rebuild_tensor(struct tz_ctx *c, int g, const struct pk_obj *args, struct pk_obj **out,
                          struct err *e)
{
    size_t n = args->u.seq.n;
    struct pk_obj *const *a = args->u.seq.v;
    bool v2 = g == G_REBUILD_TENSOR_V2;
    if (v2 ? (n != 6 && n != 7) : n != 4)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s.%s called with %zu arguments",
                    c->op_pos, globals[g].module, globals[g].name, n);
    if (a[0]->kind != PK_STORAGE)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: tensor storage is %s, not a storage",
                    c->op_pos, kind_name[a[0]->kind]);
    if (a[1]->kind != PK_INT || a[1]->u.i < 0)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: tensor storage offset is not a non-negative int",
                    c->op_pos);
    if (v2 && (a[4]->kind != PK_BOOL || (a[5]->kind != PK_DICT && a[5]->kind != PK_NONE) ||
               (n == 7 && a[6]->kind != PK_DICT && a[6]->kind != PK_NONE)))
        return PERR(c, e, ERR_FORMAT,
                    "data.pkl byte %zu: _rebuild_tensor_v2 arguments are not (storage, int, "
                    "tuple, tuple, bool, dict[, dict])",
                    c->op_pos);
    struct pk_tensor *t = arena_alloc(c->own, sizeof *t);
    struct pk_obj *o = new_obj(c, PK_TENSOR);
    if (!t || !o)
        return oom_or_limit(c, e);
    memset(t, 0, sizeof *t);
    t->st = a[0]->u.storage;
    t->offset = a[1]->u.i;
    t->pos = c->op_pos;
    int nd = 0, ns = 0, rc;
    if ((rc = int_tuple(c, a[2], t->shape, &nd, "size", e)) < 0 ||
        (rc = int_tuple(c, a[3], t->stride, &ns, "stride", e)) < 0)
        return rc;
    if (nd != ns)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: tensor has %d sizes but %d strides",
                    c->op_pos, nd, ns);
    t->ndim = nd;
    o->u.tensor = t;
    *out = o;
    return 0;
}

static int op_reduce(struct tz_ctx *c, struct err *e)
{
    struct pk_obj *args, *fn, *res = NULL;
    int rc;
    if ((rc = pop(c, &args, 'R', e)) < 0 || (rc = pop(c, &fn, 'R', e)) < 0)
        return rc;
    if (fn->kind != PK_GLOBAL)
        return PERR(c, e, ERR_UNSUPPORTED, "data.pkl byte %zu: REDUCE calls %s, not a whitelisted global",
                    c->op_pos, kind_name[fn->kind]);
    int g = fn->u.global;
    if (args->kind != PK_TUPLE)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: REDUCE arguments are %s, not a tuple",
                    c->op_pos, kind_name[args->kind]);
    switch (g) {
    case G_ORDERED_DICT:
        if (args->u.seq.n != 0)
            return PERR(c, e, ERR_UNSUPPORTED,
                        "data.pkl byte %zu: collections.OrderedDict called with arguments",
                        c->op_pos);
        res = new_obj(c, PK_DICT);
        if (!res)
            return oom_or_limit(c, e);
        break;
    case G_REBUILD_TENSOR_V2:
    case G_REBUILD_TENSOR:
        if ((rc = rebuild_tensor(c, g, args, &res, e)) < 0)
            return rc;
        break;
    case G_REBUILD_PARAMETER:
        /* (data, requires_grad, backward_hooks): the parameter is its data */
        if (args->u.seq.n != 3 || args->u.seq.v[0]->kind != PK_TENSOR ||
            args->u.seq.v[1]->kind != PK_BOOL)
            return PERR(c, e, ERR_FORMAT,
                        "data.pkl byte %zu: _rebuild_parameter arguments are not (tensor, bool, "
                        "dict)",
                        c->op_pos);
        res = args->u.seq.v[0];
        break;
    default:
        return PERR(c, e, ERR_UNSUPPORTED, "data.pkl byte %zu: REDUCE calls %s.%s, which is not callable here",
                    c->op_pos, globals[g].module, globals[g].name);
    }
    return push(c, res, e);
}

/* BINPERSID: ('storage', <storage class>, key, location, numel). */
static int op_persid(struct tz_ctx *c, struct err *e)
{
    struct pk_obj *pid, *res;
    int rc;
    if ((rc = pop(c, &pid, 'Q', e)) < 0)
        return rc;
    struct pk_obj *const *a = pid->u.seq.v;
    if (pid->kind != PK_TUPLE || pid->u.seq.n != 5 || a[0]->kind != PK_STR ||
        strcmp(a[0]->u.str.s, "storage") != 0)
        return PERR(c, e, ERR_UNSUPPORTED,
                    "data.pkl byte %zu: persistent id is not a ('storage', type, key, location, "
                    "numel) tuple",
                    c->op_pos);
    if (a[1]->kind != PK_GLOBAL || globals[a[1]->u.global].dtype < 0)
        return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: persistent id's storage type is not a storage class",
                    c->op_pos);
    if (a[2]->kind != PK_STR || a[3]->kind != PK_STR || a[4]->kind != PK_INT || a[4]->u.i < 0)
        return PERR(c, e, ERR_FORMAT,
                    "data.pkl byte %zu: persistent id's key, location or numel has the wrong type",
                    c->op_pos);
    const struct tz_storage *s = NULL;
    if ((rc = storage_get(c, a[2], (enum st_dtype)globals[a[1]->u.global].dtype, a[4]->u.i, &s,
                          e)) < 0)
        return rc;
    res = new_obj(c, PK_STORAGE);
    if (res)
        res->u.storage = s;
    return push(c, res, e);
}

/* Run data.pkl; *result is the value STOP returns. */
static int run_pickle(struct tz_ctx *c, struct pk_obj **result, struct err *e)
{
    int rc = 0;
    const uint8_t *p;
    struct pk_obj *o, *k, *v;
    size_t first, n;

    for (;;) {
        if (c->pos >= c->pklen)
            return PERR(c, e, ERR_FORMAT, "data.pkl is truncated: it ends at byte %zu without STOP",
                        c->pklen);
        c->op_pos = c->pos;
        uint8_t op = c->pk[c->pos++];
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = take(c, 1, &p, op, e)) < 0)
                return rc;
            if (p[0] < 2 || p[0] > 5)
                return PERR(c, e, ERR_UNSUPPORTED, "data.pkl byte %zu: pickle protocol %u (2 to 5 are read)",
                            c->op_pos, p[0]);
            break;
        case 0x95: /* FRAME: a length hint only */
            if ((rc = take(c, 8, &p, op, e)) < 0)
                return rc;
            if (le64(p) > c->pklen - c->pos)
                return PERR(c, e, ERR_FORMAT,
                            "data.pkl is truncated: FRAME at byte %zu announces %llu bytes, %zu remain",
                            c->op_pos, (unsigned long long)le64(p), c->pklen - c->pos);
            break;
        case '}':
            rc = push(c, new_obj(c, PK_DICT), e);
            break;
        case ']':
            rc = push(c, new_obj(c, PK_LIST), e);
            break;
        case ')':
            rc = push(c, new_tuple(c, NULL, 0), e);
            break;
        case '(':
            if (grow((void **)&c->marks, &c->marks_cap, c->nmarks + 1, sizeof *c->marks,
                     TZ_MAX_MARKS) < 0)
                return c->nmarks + 1 > TZ_MAX_MARKS
                           ? PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: more than %u nested MARKs",
                                  c->op_pos, TZ_MAX_MARKS)
                           : PERR(c, e, ERR_NOMEM, "out of memory reading data.pkl");
            c->marks[c->nmarks++] = c->sp;
            break;
        case 't':
            if ((rc = pop_mark(c, &first, &n, op, e)) < 0)
                return rc;
            /* an empty MARK on an empty stack: there is no stack array yet */
            rc = push(c, new_tuple(c, n ? c->stack + first : NULL, n), e);
            break;
        case 0x85:
        case 0x86:
        case 0x87: {
            n = (size_t)(op - 0x84);
            if (c->sp - floor_sp(c) < n)
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s needs %zu values on the stack",
                            c->op_pos, opname(op), n);
            c->sp -= n;
            rc = push(c, new_tuple(c, c->stack + c->sp, n), e);
            break;
        }
        case 'K':
        case 'M':
        case 'J': {
            size_t w = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if ((rc = take(c, w, &p, op, e)) < 0)
                return rc;
            o = new_obj(c, PK_INT);
            if (o)
                o->u.i = w == 1 ? p[0] : w == 2 ? le16(p) : (int32_t)le32(p);
            rc = push(c, o, e);
            break;
        }
        case 0x8a: /* LONG1: n bytes, little-endian two's complement */
            if ((rc = take(c, 1, &p, op, e)) < 0)
                return rc;
            n = p[0];
            if (n > 8)
                return PERR(c, e, ERR_UNSUPPORTED, "data.pkl byte %zu: LONG1 of %zu bytes does not fit 64 bits",
                            c->op_pos, n);
            if ((rc = take(c, n, &p, op, e)) < 0)
                return rc;
            o = new_obj(c, PK_INT);
            if (o) {
                uint64_t u = 0;
                for (size_t i = 0; i < n; i++)
                    u |= (uint64_t)p[i] << (8 * i);
                if (n > 0 && n < 8 && (p[n - 1] & 0x80))
                    u |= ~(uint64_t)0 << (8 * n);
                o->u.i = (int64_t)u;
            }
            rc = push(c, o, e);
            break;
        case 'X':
        case 0x8c:
        case 0x8d: {
            size_t w = op == 0x8c ? 1 : op == 'X' ? 4 : 8;
            if ((rc = take(c, w, &p, op, e)) < 0)
                return rc;
            uint64_t len = w == 1 ? p[0] : w == 4 ? le32(p) : le64(p);
            if (len > c->pklen - c->pos)
                return PERR(c, e, ERR_FORMAT,
                            "data.pkl is truncated: %s at byte %zu needs %llu bytes, %zu remain",
                            opname(op), c->op_pos, (unsigned long long)len, c->pklen - c->pos);
            if ((rc = take(c, (size_t)len, &p, op, e)) < 0)
                return rc;
            rc = push(c, new_str(c, p, (size_t)len), e);
            break;
        }
        case 'G': /* BINFLOAT: big-endian double */
            if ((rc = take(c, 8, &p, op, e)) < 0)
                return rc;
            o = new_obj(c, PK_FLOAT);
            if (o) {
                uint64_t u = 0;
                for (int i = 0; i < 8; i++)
                    u = u << 8 | p[i];
                memcpy(&o->u.f, &u, sizeof u);
            }
            rc = push(c, o, e);
            break;
        case 0x88:
        case 0x89:
            o = new_obj(c, PK_BOOL);
            if (o)
                o->u.i = op == 0x88;
            rc = push(c, o, e);
            break;
        case 'N':
            rc = push(c, new_obj(c, PK_NONE), e);
            break;
        case 'q':
            if ((rc = take(c, 1, &p, op, e)) < 0)
                return rc;
            rc = memo_put(c, p[0], op, e);
            break;
        case 'r':
            if ((rc = take(c, 4, &p, op, e)) < 0)
                return rc;
            rc = memo_put(c, le32(p), op, e);
            break;
        case 0x94: /* MEMOIZE: slot len(memo), as pickle's Unpickler */
            rc = memo_put(c, c->memo_count, op, e);
            break;
        case 'h':
        case 'j': {
            if ((rc = take(c, op == 'h' ? 1 : 4, &p, op, e)) < 0)
                return rc;
            uint64_t idx = op == 'h' ? p[0] : le32(p);
            if (idx >= c->memo_cap || !c->memo[idx])
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: %s of memo slot %llu, which was never set",
                            c->op_pos, opname(op), (unsigned long long)idx);
            rc = push(c, c->memo[idx], e);
            break;
        }
        case 's':
            if ((rc = pop(c, &v, op, e)) < 0 || (rc = pop(c, &k, op, e)) < 0 ||
                (rc = top(c, &o, op, e)) < 0)
                return rc;
            if (o->kind != PK_DICT)
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: SETITEM on %s, not a dict",
                            c->op_pos, kind_name[o->kind]);
            if ((rc = seq_append(c, o, k, e)) < 0 || (rc = seq_append(c, o, v, e)) < 0)
                return rc;
            break;
        case 'u':
            if ((rc = pop_mark(c, &first, &n, op, e)) < 0 || (rc = top(c, &o, op, e)) < 0)
                return rc;
            if (o->kind != PK_DICT || n % 2)
                return PERR(c, e, ERR_FORMAT,
                            "data.pkl byte %zu: SETITEMS of %zu values on %s (needs pairs on a dict)",
                            c->op_pos, n, kind_name[o->kind]);
            for (size_t i = 0; i < n && rc == 0; i++)
                rc = seq_append(c, o, c->stack[first + i], e);
            break;
        case 'a':
            if ((rc = pop(c, &v, op, e)) < 0 || (rc = top(c, &o, op, e)) < 0)
                return rc;
            if (o->kind != PK_LIST)
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: APPEND on %s, not a list",
                            c->op_pos, kind_name[o->kind]);
            rc = seq_append(c, o, v, e);
            break;
        case 'e':
            if ((rc = pop_mark(c, &first, &n, op, e)) < 0 || (rc = top(c, &o, op, e)) < 0)
                return rc;
            if (o->kind != PK_LIST)
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: APPENDS on %s, not a list",
                            c->op_pos, kind_name[o->kind]);
            for (size_t i = 0; i < n && rc == 0; i++)
                rc = seq_append(c, o, c->stack[first + i], e);
            break;
        case 'c': {
            /* GLOBAL "module\nname\n" */
            const uint8_t *m = c->pk + c->pos, *end = c->pk + c->pklen;
            const uint8_t *nl1 = memchr(m, '\n', (size_t)(end - m));
            const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
            if (!nl2)
                return PERR(c, e, ERR_FORMAT, "data.pkl is truncated: GLOBAL at byte %zu has no two lines",
                            c->op_pos);
            char mod[256], name[256];
            snprintf(mod, sizeof mod, "%.*s", (int)(nl1 - m > 255 ? 255 : nl1 - m), (const char *)m);
            snprintf(name, sizeof name, "%.*s", (int)(nl2 - nl1 - 1 > 255 ? 255 : nl2 - nl1 - 1),
                     (const char *)nl1 + 1);
            c->pos = (size_t)(nl2 + 1 - c->pk);
            int g = resolve_global(c, mod, name, op, e);
            if (g < 0)
                return g;
            rc = push_global(c, g, e);
            break;
        }
        case 0x93: /* STACK_GLOBAL: module, name on the stack */
            if ((rc = pop(c, &v, op, e)) < 0 || (rc = pop(c, &k, op, e)) < 0)
                return rc;
            if (k->kind != PK_STR || v->kind != PK_STR)
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: STACK_GLOBAL needs two strings",
                            c->op_pos);
            {
                int g = resolve_global(c, k->u.str.s, v->u.str.s, op, e);
                if (g < 0)
                    return g;
                rc = push_global(c, g, e);
            }
            break;
        case 'R':
            rc = op_reduce(c, e);
            break;
        case 'b':
            /* BUILD: only an OrderedDict's attribute dict (a state dict's
             * _metadata), which is dropped */
            if ((rc = pop(c, &v, op, e)) < 0 || (rc = top(c, &o, op, e)) < 0)
                return rc;
            if (o->kind != PK_DICT || (v->kind != PK_DICT && v->kind != PK_NONE))
                return PERR(c, e, ERR_UNSUPPORTED,
                            "data.pkl byte %zu: BUILD of %s with %s state (only a dict's "
                            "attributes are accepted)",
                            c->op_pos, kind_name[o->kind], kind_name[v->kind]);
            break;
        case 'Q':
            rc = op_persid(c, e);
            break;
        case '.':
            if ((rc = pop(c, result, op, e)) < 0)
                return rc;
            if (c->sp != 0 || c->nmarks != 0)
                return PERR(c, e, ERR_FORMAT, "data.pkl byte %zu: STOP leaves %zu values and %zu marks behind",
                            c->op_pos, c->sp, c->nmarks);
            return 0;
        default:
            return PERR(c, e, ERR_UNSUPPORTED,
                        "data.pkl byte %zu: opcode %s (0x%02x) is not one torch.save writes for a "
                        "state dict",
                        c->op_pos, opname(op), op);
        }
        if (rc < 0)
            return rc;
    }
}

/* ---- tensors ---- */

static void dims_str(char *buf, size_t n, const int64_t *v, int nd)
{
    size_t o = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < nd && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)v[i]);
    if (o < n)
        snprintf(buf + o, n - o, ")");
}

/* One entry of the state dict as an st_tensor. */
static int to_st_tensor(struct tz_ctx *c, const struct pk_obj *key, const struct pk_obj *val,
                        struct st_tensor *out, struct err *e)
{
    if (key->kind != PK_STR || memchr(key->u.str.s, '\0', key->u.str.len))
        return PERR(c, e, ERR_FORMAT, "data.pkl: a state dict key is %s, not a string",
                    kind_name[key->kind]);
    const char *name = key->u.str.s;
    if (val->kind != PK_TENSOR)
        return PERR(c, e, ERR_FORMAT,
                    "data.pkl: value of \"%s\" is %s, not a tensor (not a flat state dict)",
                    name, kind_name[val->kind]);
    const struct pk_tensor *t = val->u.tensor;
    const struct tz_storage *s = t->st;
    size_t nelem = 1, extent = 1;
    int empty = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0)
            empty = 1;
        if (__builtin_mul_overflow(nelem, (size_t)t->shape[d], &nelem))
            return PERR(c, e, ERR_FORMAT, "tensor \"%s\": shape overflows a size_t", name);
    }
    /* Contiguous (row-major) as torch defines it: dims of size 1 may have
     * any stride, and an empty tensor is contiguous.  Without a zero dim the
     * running product is at most nelem, which did not overflow. */
    int64_t want[ST_MAX_DIMS];
    int64_t acc = 1;
    bool contiguous = true;
    for (int d = t->ndim - 1; d >= 0 && !empty; d--) {
        want[d] = acc;
        if (t->shape[d] != 1 && t->stride[d] != acc)
            contiguous = false;
        acc *= t->shape[d];
    }
    if (!contiguous) {
        char sh[160], st[160], ws[160];
        dims_str(sh, sizeof sh, t->shape, t->ndim);
        dims_str(st, sizeof st, t->stride, t->ndim);
        dims_str(ws, sizeof ws, want, t->ndim);
        return PERR(c, e, ERR_UNSUPPORTED,
                    "tensor \"%s\" (data.pkl byte %zu): strides %s of shape %s are not "
                    "contiguous (want %s); save it with .contiguous()",
                    name, t->pos, st, sh, ws);
    }
    extent = empty ? 0 : nelem;
    if ((uint64_t)t->offset > s->numel || s->numel - (size_t)t->offset < extent)
        return PERR(c, e, ERR_FORMAT,
                    "tensor \"%s\" (data.pkl byte %zu): elements [%lld, %llu) reach past its "
                    "storage \"%s\" of %zu elements",
                    name, t->pos, (long long)t->offset,
                    (unsigned long long)t->offset + (unsigned long long)extent,
                    s->key, s->numel);
    memset(out, 0, sizeof *out);
    out->name = name;
    out->dtype = s->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof t->shape);
    out->nelem = nelem;
    out->nbytes = nelem * st_dtype_size(s->dtype);
    out->data = s->data + (size_t)t->offset * st_dtype_size(s->dtype);
    return 0;
}

/* ---- opening ---- */

/* The single `<top>/data.pkl` entry; fills c->prefix. */
static int find_pickle(struct tz_ctx *c, zip_uint64_t *idx, struct err *e)
{
    bool found = false;
    for (zip_uint64_t i = 0; i < c->nentries; i++) {
        const char *nm = zip_get_name(c->za, i, ZIP_FL_ENC_RAW);
        if (!nm)
            continue;
        const char *slash = strchr(nm, '/');
        if (!slash || strcmp(slash, "/data.pkl") != 0)
            continue;
        if (found)
            return PERR(c, e, ERR_FORMAT, "two pickles in the archive: %s/data.pkl and %s",
                        c->prefix, nm);
        size_t pl = (size_t)(slash - nm);
        if (pl == 0 || pl >= sizeof c->prefix)
            return PERR(c, e, ERR_FORMAT, "archive folder name of %s is empty or too long", nm);
        memcpy(c->prefix, nm, pl);
        c->prefix[pl] = '\0';
        *idx = i;
        found = true;
    }
    if (!found)
        return PERR(c, e, ERR_FORMAT,
                    "zip archive without a <folder>/data.pkl: not a torch.save checkpoint");
    return 0;
}

/* A small text record `<top>/<name>` (NULL *out when absent). */
static int small_record(struct tz_ctx *c, const char *name, char **out, struct err *e)
{
    char full[512];
    snprintf(full, sizeof full, "%s/%s", c->prefix, name);
    *out = NULL;
    zip_int64_t i = zip_name_locate(c->za, full, ZIP_FL_ENC_RAW);
    if (i < 0)
        return 0;
    size_t len;
    uint8_t *buf;
    int rc = read_member(c, (zip_uint64_t)i, 64, &buf, &len, e);
    if (rc < 0)
        return rc;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
        buf[--len] = '\0';
    *out = (char *)buf;
    return 0;
}

static int check_header_records(struct tz_ctx *c, struct err *e)
{
    char *bo = NULL, *ver = NULL;
    int rc;
    if ((rc = small_record(c, "byteorder", &bo, e)) < 0)
        goto out;
    if (bo && strcmp(bo, "little") != 0) {
        rc = strcmp(bo, "big") == 0
                 ? PERR(c, e, ERR_UNSUPPORTED, "big-endian checkpoint (byteorder \"big\"): only little-endian is read")
                 : PERR(c, e, ERR_FORMAT, "byteorder record says \"%.16s\", not little or big", bo);
        goto out;
    }
    if ((rc = small_record(c, "version", &ver, e)) < 0)
        goto out;
    if (!ver) {
        rc = PERR(c, e, ERR_FORMAT, "no %s/version record: not a torch.save checkpoint", c->prefix);
        goto out;
    }
    if (ver[0] == '\0' || strspn(ver, "0123456789") != strlen(ver)) {
        rc = PERR(c, e, ERR_FORMAT, "version record \"%.16s\" is not a number", ver);
        goto out;
    }
out:
    free(bo);
    free(ver);
    return rc;
}

/* Say what a file that is not a zip is. */
static int not_zip(const char *path, const uint8_t *m, size_t size, struct err *e)
{
    if (size >= 2 && m[0] == 0x80 && m[1] >= 2 && m[1] <= 5)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "legacy torch.save format (a bare pickle stream, before PyTorch 1.6) is "
                       "not supported: load and re-save it with a current torch.save, or convert "
                       "it to safetensors");
    if (size >= 262 && memcmp(m + 257, "ustar", 5) == 0)
        return err_set(e, ERR_UNSUPPORTED, path,
                       "legacy tar torch.save format (PyTorch 0.1-0.3) is not supported: load "
                       "and re-save it with a current torch.save, or convert it to safetensors");
    return err_set(e, ERR_FORMAT, path,
                   "not a zip archive (PyTorch zip checkpoint expected; file starts %02x %02x %02x %02x)",
                   size > 0 ? m[0] : 0, size > 1 ? m[1] : 0, size > 2 ? m[2] : 0,
                   size > 3 ? m[3] : 0);
}

int torchzip_open(struct st_file **out, const char *path, struct err *e)
{
    struct tz_ctx c = {.path = path};
    struct st_tensor *tensors = NULL;
    uint8_t *pk = NULL;
    int rc = 0;

    *out = NULL;
    c.own = calloc(1, sizeof *c.own);
    if (!c.own) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    if ((rc = st_map_file(path, 22, &c.own->map, &c.own->size, e)) < 0)
        goto out;
    if (!c.own->map) {
        rc = c.own->size == 0 ? err_set(e, ERR_FORMAT, path, "empty file")
                              : err_set(e, ERR_FORMAT, path,
                                        "truncated: %zu bytes cannot hold a zip archive",
                                        c.own->size);
        goto out;
    }
    if (memcmp(c.own->map, "PK\3\4", 4) != 0) {
        rc = not_zip(path, c.own->map, c.own->size, e);
        goto out;
    }

    if ((rc = libzip_load(path, e)) < 0)
        goto out;
    int zerr = 0;
    c.za = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
    if (!c.za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        rc = err_set(e, ERR_FORMAT, path, "not a readable zip archive (truncated?): %s",
                     zip_error_strerror(&ze));
        zip_error_fini(&ze);
        goto out;
    }
    zip_int64_t ne = zip_get_num_entries(c.za, 0);
    c.nentries = ne < 0 ? 0 : (uint64_t)ne;
    zip_uint64_t pk_idx = 0;
    size_t pklen = 0;
    if ((rc = find_pickle(&c, &pk_idx, e)) < 0 || (rc = read_central_dir(&c, e)) < 0 ||
        (rc = check_header_records(&c, e)) < 0 ||
        (rc = read_member(&c, pk_idx, TZ_MAX_PICKLE, &pk, &pklen, e)) < 0)
        goto out;
    c.pk = pk;
    c.pklen = pklen;

    struct pk_obj *root = NULL;
    if ((rc = run_pickle(&c, &root, e)) < 0)
        goto out;
    if (root->kind != PK_DICT) {
        rc = err_set(e, ERR_FORMAT, path, "data.pkl holds %s, not a state dict",
                     kind_name[root->kind]);
        goto out;
    }
    size_t n = root->u.seq.n / 2;
    tensors = calloc(n ? n : 1, sizeof *tensors);
    if (!tensors) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((rc = to_st_tensor(&c, root->u.seq.v[2 * i], root->u.seq.v[2 * i + 1], &tensors[i],
                               e)) < 0)
            goto out;
    zip_discard(c.za);
    c.za = NULL;
    rc = st_file_wrap(out, path, c.own->size, tensors, n, c.own, owner_free, e);
    c.own = NULL; /* taken by st_file_wrap, even on failure */

out:
    if (c.za)
        zip_discard(c.za);
    free(tensors);
    free(pk);
    free(c.local_off);
    free(c.stack);
    free(c.marks);
    free(c.memo);
    free(c.storages);
    owner_free(c.own);
    return rc;
}

int torchzip_set_open(struct st_set **out, const char *dir, struct err *e)
{
    return st_set_open_as(out, dir, TZ_SINGLE_NAME, TZ_INDEX_NAME, torchzip_open, e);
}
