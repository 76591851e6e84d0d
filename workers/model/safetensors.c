/*
 * safetensors.c - mmap, validate and index safetensors files; write them.
 *
 * Layout: u64 LE header length N, N bytes of JSON, then the data buffer.
 * st_open maps the whole file, parses the header with jansson (duplicate
 * keys rejected) and checks every entry before a single tensor is handed
 * out.  The parsed JSON is kept: tensor names and metadata strings are
 * borrowed from it, so they live exactly as long as the st_file.
 */
#include "workers/model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "common/atomic_file.h"
#include "common/json_err.h"

#define ST_META_KEY "__metadata__"
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

struct st_file {
    char *path;
    void *map;                       /* whole file, read-only */
    size_t size;                     /* bytes mapped */
    const uint8_t *buf;              /* data buffer: map + 8 + N */
    size_t buf_size;                 /* size - 8 - N */
    json_t *header;                  /* owns tensor names and metadata */
    json_t *meta;                    /* borrowed from header, or NULL */
    void *owner;                     /* st_file_wrap: what tensors point into */
    void (*owner_free)(void *owner);
    struct st_tensor *tensors;       /* n, sorted by begin offset */
    const struct st_tensor **by_name; /* n, sorted by name */
    size_t n;
};

struct st_set {
    struct st_file **files;          /* nfiles, sorted by shard name */
    size_t nfiles;
    const struct st_tensor **all;    /* n, file order, then offset order */
    const struct st_tensor **by_name; /* n, sorted by name */
    size_t n;
};

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} dtype_info[ST_DTYPE_COUNT] = {
    [ST_F32] = {"F32", 4},         [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},       [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8},         [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2},         [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},           [ST_U16] = {"U16", 2},
    [ST_U32] = {"U32", 4},         [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1},       [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(enum st_dtype dt)
{
    if ((unsigned)dt >= ST_DTYPE_COUNT)
        return "?";
    return dtype_info[dt].name;
}

size_t st_dtype_size(enum st_dtype dt)
{
    if ((unsigned)dt >= ST_DTYPE_COUNT)
        return 0;
    return dtype_info[dt].size;
}

int st_dtype_parse(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_info[i].name) == 0)
            return i;
    return -1;
}

/* ---- small helpers ---- */

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void write_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* dir + "/" + name, malloc'd; NULL when out of memory. */
static char *path_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    char *p = malloc(dl + nl + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, dl);
    if (!slash)
        p[dl++] = '/';
    memcpy(p + dl, name, nl + 1);
    return p;
}

/* nelem and nbytes of a shape, or -1 on overflow. */
static int shape_size(const int64_t *shape, int ndim, size_t elsize, size_t *nelem,
                      size_t *nbytes)
{
    size_t ne = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX)
            return -1;
        if (__builtin_mul_overflow(ne, (size_t)shape[i], &ne))
            return -1;
    }
    if (__builtin_mul_overflow(ne, elsize, nbytes))
        return -1;
    *nelem = ne;
    return 0;
}

static int cmp_by_name(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Begin offset, then end, then name: a total order, so st_get is
 * deterministic even for zero-size tensors sharing an offset. */
static int cmp_by_offset(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    uintptr_t xb = (uintptr_t)x->data, yb = (uintptr_t)y->data;
    if (xb != yb)
        return xb < yb ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static const struct st_tensor *find_sorted(const struct st_tensor *const *by_name, size_t n,
                                           const char *name)
{
    if (!name || n == 0)
        return NULL;
    struct st_tensor key = {.name = name};
    const struct st_tensor *kp = &key;
    const struct st_tensor *const *hit = bsearch(&kp, by_name, n, sizeof *by_name, cmp_by_name);
    return hit ? *hit : NULL;
}

/* ---- reading one file ---- */

/* A JSON integer >= 0, or -1. */
static json_int_t nonneg_int(const json_t *v)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : x;
}

static int check_metadata(const json_t *meta, const char *path, struct err *e)
{
    const char *key;
    json_t *val;

    if (!json_is_object(meta))
        return err_set(e, ERR_FORMAT, path, "\"" ST_META_KEY "\" is not a JSON object");
    json_object_foreach((json_t *)meta, key, val) {
        if (!json_is_string(val))
            return err_set(e, ERR_FORMAT, path,
                           "\"" ST_META_KEY "\" value for \"%s\" is not a string", key);
    }
    return 0;
}

/* Check one header entry and fill `t` (except path). */
static int parse_entry(struct st_tensor *t, const char *name, const json_t *ent,
                       const struct st_file *st, struct err *e)
{
    const char *path = st->path;

    if (!json_is_object(ent))
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": entry is not a JSON object", name);

    const json_t *jd = json_object_get(ent, "dtype");
    if (!jd)
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": missing \"dtype\"", name);
    if (!json_is_string(jd))
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": \"dtype\" is not a string", name);
    int dt = st_dtype_parse(json_string_value(jd));
    if (dt < 0)
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": unknown dtype \"%s\"", name,
                       json_string_value(jd));

    const json_t *js = json_object_get(ent, "shape");
    if (!js)
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": missing \"shape\"", name);
    if (!json_is_array(js))
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": \"shape\" is not an array", name);
    size_t ndim = json_array_size(js);
    if (ndim > ST_MAX_DIMS)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": \"shape\" has %zu dimensions, more than %d", name, ndim,
                       ST_MAX_DIMS);
    for (size_t i = 0; i < ndim; i++) {
        json_int_t d = nonneg_int(json_array_get(js, i));
        if (d < 0)
            return err_set(e, ERR_FORMAT, path,
                           "tensor \"%s\": \"shape\"[%zu] is not a non-negative integer", name,
                           i);
        t->shape[i] = (int64_t)d;
    }
    t->name = name;
    t->dtype = (enum st_dtype)dt;
    t->ndim = (int)ndim;
    if (shape_size(t->shape, t->ndim, st_dtype_size(t->dtype), &t->nelem, &t->nbytes) < 0)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": shape x dtype size overflows a size_t", name);

    const json_t *jo = json_object_get(ent, "data_offsets");
    if (!jo)
        return err_set(e, ERR_FORMAT, path, "tensor \"%s\": missing \"data_offsets\"", name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": \"data_offsets\" must be an array of 2 integers", name);
    json_int_t b = nonneg_int(json_array_get(jo, 0));
    json_int_t en = nonneg_int(json_array_get(jo, 1));
    if (b < 0 || en < 0)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": \"data_offsets\" must be non-negative integers", name);
    if (b > en)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": data_offsets [%lld, %lld] have begin > end", name,
                       (long long)b, (long long)en);
    if ((uint64_t)en > st->buf_size)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": data_offsets [%lld, %lld] exceed data buffer of %zu bytes (file truncated?)",
                       name, (long long)b, (long long)en, st->buf_size);
    if ((uint64_t)(en - b) != t->nbytes)
        return err_set(e, ERR_FORMAT, path,
                       "tensor \"%s\": data_offsets [%lld, %lld] span %lld bytes but shape and "
                       "dtype %s need %zu",
                       name, (long long)b, (long long)en, (long long)(en - b),
                       st_dtype_name(t->dtype), t->nbytes);
    t->data = st->buf + b;
    t->path = st->path;
    return 0;
}

/* With tensors sorted by offset, every byte of the buffer must belong to
 * exactly one tensor. */
static int check_coverage(const struct st_file *st, struct err *e)
{
    size_t pos = 0;
    const struct st_tensor *prev = NULL;

    for (size_t i = 0; i < st->n; i++) {
        const struct st_tensor *t = &st->tensors[i];
        size_t b = (size_t)((const uint8_t *)t->data - st->buf);
        if (b < pos)
            return err_set(e, ERR_FORMAT, st->path,
                           "tensor \"%s\": data_offsets [%zu, %zu] overlap tensor \"%s\" "
                           "[%zu, %zu]",
                           t->name, b, b + t->nbytes, prev->name,
                           (size_t)((const uint8_t *)prev->data - st->buf), pos);
        if (b > pos)
            return err_set(e, ERR_FORMAT, st->path,
                           "data buffer has a hole: bytes [%zu, %zu) before tensor \"%s\" "
                           "belong to no tensor",
                           pos, b, t->name);
        pos = b + t->nbytes;
        prev = t;
    }
    if (pos != st->buf_size)
        return err_set(e, ERR_FORMAT, st->path,
                       "data buffer has a hole: bytes [%zu, %zu) after the last tensor belong "
                       "to no tensor",
                       pos, st->buf_size);
    return 0;
}

static int parse_header(struct st_file *st, struct err *e)
{
    const uint8_t *map = st->map;
    json_error_t jerr;
    const char *key;
    json_t *val;

    uint64_t hlen = read_le64(map);
    if (hlen > ST_MAX_HEADER)
        return err_set(e, ERR_FORMAT, st->path,
                       "header length %llu exceeds the limit of %u bytes",
                       (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > st->size - 8)
        return err_set(e, ERR_FORMAT, st->path,
                       "header length %llu runs past the end of the %zu-byte file",
                       (unsigned long long)hlen, st->size);
    st->buf = map + 8 + hlen;
    st->buf_size = st->size - 8 - (size_t)hlen;

    errno = 0;
    st->header = json_loadb((const char *)map + 8, (size_t)hlen,
                            JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!st->header && json_err_nomem(&jerr))
        return err_set(e, ERR_NOMEM, st->path, "out of memory reading the header");
    if (!st->header && json_error_code(&jerr) == json_error_duplicate_key)
        return err_set(e, ERR_FORMAT, st->path, "duplicate tensor name in header: %s",
                       jerr.text);
    if (!st->header)
        return err_set(e, ERR_FORMAT, st->path, "header is not valid JSON: %s (byte %d)",
                       jerr.text, jerr.position);
    if (!json_is_object(st->header))
        return err_set(e, ERR_FORMAT, st->path, "header is not a JSON object");

    st->meta = json_object_get(st->header, ST_META_KEY);
    if (st->meta) {
        int rc = check_metadata(st->meta, st->path, e);
        if (rc < 0)
            return rc;
    }

    size_t cap = json_object_size(st->header);
    st->tensors = calloc(cap ? cap : 1, sizeof *st->tensors);
    st->by_name = calloc(cap ? cap : 1, sizeof *st->by_name);
    if (!st->tensors || !st->by_name)
        return err_set(e, ERR_NOMEM, st->path, "out of memory for %zu tensors", cap);

    json_object_foreach(st->header, key, val) {
        if (strcmp(key, ST_META_KEY) == 0)
            continue;
        int rc = parse_entry(&st->tensors[st->n], key, val, st, e);
        if (rc < 0)
            return rc;
        st->n++;
    }

    if (st->n > 1)
        qsort(st->tensors, st->n, sizeof *st->tensors, cmp_by_offset);
    int rc = check_coverage(st, e);
    if (rc < 0)
        return rc;

    for (size_t i = 0; i < st->n; i++)
        st->by_name[i] = &st->tensors[i];
    if (st->n > 1)
        qsort(st->by_name, st->n, sizeof *st->by_name, cmp_by_name);
    return 0;
}

int st_map_file(const char *path, size_t min_size, void **map, size_t *size, struct err *e)
{
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int en = errno;
        return err_set(e, en == ENOENT ? ERR_NOTFOUND : ERR_IO, path, "open: %s", strerror(en));
    }
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) < 0) {
        rc = err_set(e, ERR_IO, path, "fstat: %s", strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        rc = err_set(e, ERR_IO, path, "not a regular file");
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        rc = err_set(e, ERR_IO, path, "file too large to map");
    } else {
        *size = (size_t)sb.st_size;
        /* a short file (the empty one included, which mmap would refuse) is
         * left to the caller's format check */
        if (*size >= min_size) {
            void *m = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED)
                rc = err_set(e, ERR_IO, path, "mmap %zu bytes: %s", *size, strerror(errno));
            else
                *map = m;
        }
    }
    close(fd);
    return rc;
}

int st_open(struct st_file **out, const char *path, struct err *e)
{
    struct st_file *st = NULL;
    int rc = 0;

    *out = NULL;
    st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }
    void *map = NULL;
    if ((rc = st_map_file(path, 8, &map, &st->size, e)) < 0)
        goto out;
    if (!map) {
        rc = err_set(e, ERR_FORMAT, path,
                     "truncated: file is %zu bytes, shorter than the 8-byte header length",
                     st->size);
        goto out;
    }
    st->map = map;

    rc = parse_header(st, e);

out:
    if (rc < 0) {
        st_free(st);
        return rc;
    }
    *out = st;
    return 0;
}

void st_free(struct st_file *st)
{
    if (!st)
        return;
    free(st->by_name);
    free(st->tensors);
    json_decref(st->header);
    if (st->map)
        munmap(st->map, st->size);
    if (st->owner_free)
        st->owner_free(st->owner);
    free(st->path);
    free(st);
}

int st_file_wrap(struct st_file **out, const char *path, size_t size,
                 const struct st_tensor *tensors, size_t n, void *owner,
                 void (*owner_free)(void *owner), struct err *e)
{
    struct st_file *st = calloc(1, sizeof *st);
    int rc = 0;

    *out = NULL;
    if (!st) {
        if (owner_free)
            owner_free(owner);
        return err_set(e, ERR_NOMEM, path, "out of memory");
    }
    st->owner = owner;
    st->owner_free = owner_free;
    st->size = size;
    st->n = n;
    st->path = strdup(path);
    st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
    st->by_name = calloc(n ? n : 1, sizeof *st->by_name);
    if (!st->path || !st->tensors || !st->by_name) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory for %zu tensors", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        st->tensors[i] = tensors[i];
        st->tensors[i].path = st->path;
        st->by_name[i] = &st->tensors[i];
    }
    if (n > 1)
        qsort(st->by_name, n, sizeof *st->by_name, cmp_by_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0) {
            rc = err_set(e, ERR_FORMAT, path, "duplicate tensor name \"%s\"",
                         st->by_name[i]->name);
            goto out;
        }
out:
    if (rc < 0) {
        st_free(st);
        return rc;
    }
    *out = st;
    return 0;
}

size_t st_count(const struct st_file *st) { return st->n; }

const struct st_tensor *st_get(const struct st_file *st, size_t i)
{
    return i < st->n ? &st->tensors[i] : NULL;
}

const struct st_tensor *st_find(const struct st_file *st, const char *name)
{
    return find_sorted(st->by_name, st->n, name);
}

const char *st_metadata(const struct st_file *st, const char *key)
{
    if (!st->meta || !key)
        return NULL;
    return json_string_value(json_object_get(st->meta, key));
}

size_t st_file_size(const struct st_file *st) { return st->size; }

/* ---- checkpoint directories ---- */

/* A shard name from the index must name a file in the directory itself. */
static bool plain_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 &&
           strcmp(s, "..") != 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Build the all/by_name arrays over set->files and reject names that
 * appear in two files. */
static int set_index(struct st_set *set, const char *ctx, struct err *e)
{
    size_t n = 0;
    for (size_t f = 0; f < set->nfiles; f++)
        n += st_count(set->files[f]);
    set->all = calloc(n ? n : 1, sizeof *set->all);
    set->by_name = calloc(n ? n : 1, sizeof *set->by_name);
    if (!set->all || !set->by_name)
        return err_set(e, ERR_NOMEM, ctx, "out of memory for %zu tensors", n);
    for (size_t f = 0; f < set->nfiles; f++)
        for (size_t i = 0; i < st_count(set->files[f]); i++)
            set->all[set->n++] = st_get(set->files[f], i);
    memcpy(set->by_name, set->all, n * sizeof *set->all);
    if (n > 1)
        qsort(set->by_name, n, sizeof *set->by_name, cmp_by_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(set->by_name[i - 1]->name, set->by_name[i]->name) == 0)
            return err_set(e, ERR_FORMAT, ctx, "tensor \"%s\" is in two shards: %s and %s",
                           set->by_name[i]->name, set->by_name[i - 1]->path,
                           set->by_name[i]->path);
    return 0;
}

/* Open the shards listed by the index at `ipath` into `set`, each with
 * `open_file`. */
static int open_shards(struct st_set *set, const char *dir, const char *ipath,
                       st_open_fn open_file, struct err *e)
{
    json_t *root = NULL;
    const char **shards = NULL;
    char *spath = NULL;
    json_error_t jerr;
    const char *key;
    json_t *val;
    int rc = 0;

    errno = 0;
    root = json_load_file(ipath, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = json_err_nomem(&jerr)
                 ? err_set(e, ERR_NOMEM, ipath, "out of memory reading the index")
                 : err_set(e, ERR_FORMAT, ipath, "not valid JSON: %s (line %d column %d)",
                           jerr.text, jerr.line, jerr.column);
        goto out;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        rc = err_set(e, ERR_FORMAT, ipath, "\"weight_map\" is missing or not a JSON object");
        goto out;
    }
    size_t nw = json_object_size(wm);
    if (nw == 0) {
        rc = err_set(e, ERR_FORMAT, ipath, "\"weight_map\" is empty");
        goto out;
    }

    /* Distinct shard names, sorted: each file is opened once. */
    shards = calloc(nw, sizeof *shards);
    if (!shards) {
        rc = err_set(e, ERR_NOMEM, ipath, "out of memory");
        goto out;
    }
    size_t ns = 0;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            rc = err_set(e, ERR_FORMAT, ipath, "weight_map entry for \"%s\" is not a string",
                         key);
            goto out;
        }
        const char *s = json_string_value(val);
        if (!plain_name(s)) {
            rc = err_set(e, ERR_FORMAT, ipath,
                         "weight_map entry for \"%s\": shard \"%s\" is not a plain file name",
                         key, s);
            goto out;
        }
        shards[ns++] = s;
    }
    qsort(shards, ns, sizeof *shards, cmp_str);
    size_t nu = 0;
    for (size_t i = 0; i < ns; i++)
        if (nu == 0 || strcmp(shards[nu - 1], shards[i]) != 0)
            shards[nu++] = shards[i];

    set->files = calloc(nu, sizeof *set->files);
    if (!set->files) {
        rc = err_set(e, ERR_NOMEM, ipath, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nu; i++) {
        spath = path_join(dir, shards[i]);
        if (!spath) {
            rc = err_set(e, ERR_NOMEM, ipath, "out of memory");
            goto out;
        }
        rc = open_file(&set->files[i], spath, e);
        if (rc < 0) {
            const char *base = strrchr(ipath, '/');
            err_wrap(e, "shard named by %s", base ? base + 1 : ipath);
            goto out;
        }
        set->nfiles++;
        free(spath);
        spath = NULL;
    }

    rc = set_index(set, ipath, e);
    if (rc < 0)
        goto out;

    json_object_foreach(wm, key, val) {
        const char *s = json_string_value(val);
        const char **hit = bsearch(&s, shards, nu, sizeof *shards, cmp_str);
        if (!st_find(set->files[hit - shards], key)) {
            rc = err_set(e, ERR_FORMAT, ipath,
                         "tensor \"%s\" listed in weight_map is not in shard \"%s\"", key, s);
            goto out;
        }
    }

out:
    free(spath);
    free(shards);
    json_decref(root);
    return rc;
}

int st_set_open(struct st_set **out, const char *dir, struct err *e)
{
    return st_set_open_as(out, dir, ST_SINGLE_NAME, ST_INDEX_NAME, st_open, e);
}

int st_set_open_as(struct st_set **out, const char *dir, const char *single_name,
                   const char *index_name, st_open_fn open_file, struct err *e)
{
    struct st_set *set = NULL;
    char *single = NULL, *index = NULL;
    struct stat sb;
    int rc = 0;

    *out = NULL;
    set = calloc(1, sizeof *set);
    single = path_join(dir, single_name);
    index = path_join(dir, index_name);
    if (!set || !single || !index) {
        rc = err_set(e, ERR_NOMEM, dir, "out of memory");
        goto out;
    }

    if (stat(single, &sb) == 0) {
        set->files = calloc(1, sizeof *set->files);
        if (!set->files) {
            rc = err_set(e, ERR_NOMEM, dir, "out of memory");
            goto out;
        }
        rc = open_file(&set->files[0], single, e);
        if (rc < 0)
            goto out;
        set->nfiles = 1;
        rc = set_index(set, single, e);
    } else if (stat(index, &sb) == 0) {
        rc = open_shards(set, dir, index, open_file, e);
    } else {
        rc = err_set(e, ERR_NOTFOUND, dir, "no %s or %s in %s", single_name, index_name, dir);
    }

out:
    free(index);
    free(single);
    if (rc < 0) {
        st_set_free(set);
        return rc;
    }
    *out = set;
    return 0;
}

void st_set_free(struct st_set *set)
{
    if (!set)
        return;
    free(set->by_name);
    free(set->all);
    for (size_t i = 0; i < set->nfiles; i++)
        st_free(set->files[i]);
    free(set->files);
    free(set);
}

size_t st_set_count(const struct st_set *set) { return set->n; }

const struct st_tensor *st_set_get(const struct st_set *set, size_t i)
{
    return i < set->n ? set->all[i] : NULL;
}

const struct st_tensor *st_set_find(const struct st_set *set, const char *name)
{
    return find_sorted(set->by_name, set->n, name);
}

size_t st_set_nfiles(const struct st_set *set) { return set->nfiles; }

const char *st_set_file_path(const struct st_set *set, size_t i)
{
    return i < set->nfiles ? set->files[i]->path : NULL;
}

size_t st_set_bytes(const struct st_set *set)
{
    size_t sum = 0;
    for (size_t i = 0; i < set->nfiles; i++)
        sum += set->files[i]->size;
    return sum;
}

/* ---- writing ---- */

/* The header JSON for `tensors`, contiguous from offset 0 in order. */
static int build_header(json_t **out, const struct st_write_tensor *tensors, size_t n,
                        const char *const *meta_kv, const char *path, struct err *e)
{
    json_t *root = NULL;
    json_t *meta = NULL;
    json_t *shape = NULL;
    json_t *ent = NULL;
    int rc = 0;
    uint64_t off = 0;

    root = json_object();
    if (!root) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (meta_kv) {
        meta = json_object();
        if (!meta) {
            rc = ERR_NOMEM;
            goto out;
        }
        for (size_t i = 0; meta_kv[i]; i += 2) {
            if (!meta_kv[i + 1]) {
                rc = err_set(e, ERR_INVALID, path, "metadata key \"%s\" has no value",
                             meta_kv[i]);
                goto out;
            }
            json_t *v = json_string(meta_kv[i + 1]);
            if (!v || json_object_set_new(meta, meta_kv[i], v) < 0) {
                rc = err_set(e, ERR_INVALID, path,
                             "metadata \"%s\": key or value is not valid UTF-8", meta_kv[i]);
                goto out;
            }
        }
        if (json_object_set_new(root, ST_META_KEY, meta) < 0) {
            meta = NULL;
            rc = ERR_NOMEM;
            goto out;
        }
        meta = NULL;
    }

    for (size_t i = 0; i < n; i++) {
        const struct st_write_tensor *t = &tensors[i];
        size_t nelem, nbytes;

        if (!t->name || strcmp(t->name, ST_META_KEY) == 0) {
            rc = err_set(e, ERR_INVALID, path, "tensor %zu: missing or reserved name", i);
            goto out;
        }
        if ((unsigned)t->dtype >= ST_DTYPE_COUNT || t->ndim < 0 || t->ndim > ST_MAX_DIMS ||
            shape_size(t->shape, t->ndim, st_dtype_size(t->dtype), &nelem, &nbytes) < 0) {
            rc = err_set(e, ERR_INVALID, path, "tensor \"%s\": bad dtype, ndim or shape",
                         t->name);
            goto out;
        }
        if (nbytes > 0 && !t->data) {
            rc = err_set(e, ERR_INVALID, path, "tensor \"%s\": no data", t->name);
            goto out;
        }
        if (json_object_get(root, t->name)) {
            rc = err_set(e, ERR_INVALID, path, "tensor \"%s\" given twice", t->name);
            goto out;
        }
        shape = json_array();
        rc = shape ? 0 : ERR_NOMEM;
        for (int d = 0; d < t->ndim && rc == 0; d++)
            if (json_array_append_new(shape, json_integer(t->shape[d])) < 0)
                rc = ERR_NOMEM;
        if (rc < 0)
            goto out;
        ent = json_pack("{s:s, s:O, s:[I, I]}", "dtype", st_dtype_name(t->dtype), "shape",
                        shape, "data_offsets", (json_int_t)off, (json_int_t)(off + nbytes));
        if (!ent) {
            rc = ERR_NOMEM;
            goto out;
        }
        json_decref(shape);
        shape = NULL;
        if (json_object_set_new(root, t->name, ent) < 0) {
            ent = NULL;
            rc = err_set(e, ERR_INVALID, path, "tensor name \"%s\" is not valid UTF-8",
                         t->name);
            goto out;
        }
        ent = NULL;
        off += nbytes;
    }
    *out = root;
    root = NULL;

out:
    if (rc == ERR_NOMEM)
        err_set(e, ERR_NOMEM, path, "out of memory building header");
    json_decref(ent);
    json_decref(shape);
    json_decref(meta);
    json_decref(root);
    return rc;
}

/* fsync the directory holding `path`, so the rename is durable.  Best
 * effort: a filesystem that cannot fsync directories is not an error. */
int st_write(const char *path, const struct st_write_tensor *tensors, size_t n,
             const char *const *meta_kv, struct err *e)
{
    json_t *root = NULL;
    char *hdr = NULL;
    struct atomic_file af = {0};
    int rc;

    rc = build_header(&root, tensors, n, meta_kv, path, e);
    if (rc < 0)
        goto out;
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr) {
        rc = err_set(e, ERR_NOMEM, path, "out of memory");
        goto out;
    }

    /* Pad with spaces so the data buffer starts at a multiple of 8. */
    size_t hlen = strlen(hdr);
    size_t padded = (hlen + 7) & ~(size_t)7;
    uint8_t len8[8];
    static const char spaces[8] = "        ";
    write_le64(len8, padded);

    if ((rc = atomic_file_open(&af, path, e)) < 0)
        goto out;
    bool ok = fwrite(len8, 1, 8, af.f) == 8 && fwrite(hdr, 1, hlen, af.f) == hlen &&
              fwrite(spaces, 1, padded - hlen, af.f) == padded - hlen;
    for (size_t i = 0; ok && i < n; i++) {
        size_t nelem = 0, nbytes = 0;
        (void)shape_size(tensors[i].shape, tensors[i].ndim, st_dtype_size(tensors[i].dtype),
                         &nelem, &nbytes);
        ok = nbytes == 0 || fwrite(tensors[i].data, 1, nbytes, af.f) == nbytes;
    }
    if (!ok) {
        rc = err_set(e, ERR_IO, path, "write %s: %s", af.tmp, strerror(errno));
        goto out;
    }
    rc = atomic_file_commit(&af, e);

out:
    atomic_file_abort(&af); /* after a commit: nothing */
    free(hdr);
    json_decref(root);
    return rc;
}
