/*
 * safetensors.h - read (and write) HuggingFace safetensors checkpoints.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON mapping tensor names to {dtype, shape, data_offsets:[begin,end]}
 * (plus an optional "__metadata__" object of strings), then the data buffer.
 * The file is mmap'd read-only; tensors point into the mapping, so reading
 * an aligned F32 tensor copies nothing.
 *
 * Nothing in the file is trusted before it is checked: the header length is
 * bounded (ST_MAX_HEADER) and must fit in the file, the header must be a JSON
 * object of well-formed entries with known dtypes, every offset pair must lie
 * inside the data buffer with end - begin == prod(shape) * dtype size, no two
 * tensors may overlap, the buffer must be fully covered (no holes, as the
 * reference implementation requires), and names may not repeat.  Each
 * violation is its own ERR_FORMAT error naming the file and the tensor.
 *
 *     struct st_file *st = NULL;
 *     struct err e;
 *     if (st_open(&st, "step1000/model.safetensors", &e) < 0) { ...err_str(&e)... }
 *     const struct st_tensor *t = st_find(st, "embed_out.weight");
 *     // t->dtype, t->ndim, t->shape[], t->data (borrowed, lives until st_free)
 *     st_free(st);
 *
 * A checkpoint directory is opened as a set: `model.safetensors`, or the
 * shards named by `model.safetensors.index.json` (its "weight_map"), each
 * shard checked as above and every weight_map entry checked to exist.
 */
#ifndef CKPTD_SAFETENSORS_H
#define CKPTD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Bound on the JSON header, as the format's reference implementation. */
#define ST_MAX_HEADER (100u * 1024u * 1024u)
#define ST_MAX_DIMS 8

/* Every dtype the format names.  Only F32, F16 and BF16 are computed with;
 * the rest are recognised so errors can name them. */
enum st_dtype {
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F64,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_U16,
    ST_U32,
    ST_U64,
    ST_BOOL,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_DTYPE_COUNT
};

struct st_tensor {
    const char *name;         /* borrowed, lives as long as the file */
    enum st_dtype dtype;
    int ndim;                 /* 0..ST_MAX_DIMS; 0 is a scalar */
    int64_t shape[ST_MAX_DIMS];
    size_t nelem;             /* prod(shape) */
    size_t nbytes;            /* nelem * dtype size */
    const void *data;         /* into the mapping; may be unaligned */
    const char *path;         /* file it lives in (borrowed) */
};

struct st_file; /* opaque: one mapped file */
struct st_set;  /* opaque: one checkpoint (single file or shards) */

/* Name ("F32") and element size in bytes of a dtype. */
const char *st_dtype_name(enum st_dtype dt);
size_t st_dtype_size(enum st_dtype dt);
/* Parse a dtype name; returns -1 if it is not one of the format's names. */
int st_dtype_parse(const char *name);

/* Open and validate one file (ERR_NOTFOUND if it does not exist, ERR_IO
 * if it cannot be read, ERR_FORMAT for what is wrong inside). On success *out is set (caller frees it with
 * st_free); on failure *out is NULL, a negative code is returned and `e`
 * says what is wrong, naming the file and, where one is involved, the
 * tensor. */
int st_open(struct st_file **out, const char *path, struct err *e) CK_WUR;

/* Map the regular file `path` read-only, for the checkpoint readers:
 * *size gets its length and *map the mapping (munmap(*map, *size) frees
 * it).  A file shorter than min_size (which must be > 0) is not mapped:
 * *map is NULL and 0 is returned, so the caller can say what its format
 * needed.  Errors: ERR_NOTFOUND (no such file), ERR_IO (not a regular file,
 * too large, open/fstat/mmap failed), each naming the file. */
int st_map_file(const char *path, size_t min_size, void **map, size_t *size,
                struct err *e) CK_WUR;
void st_free(struct st_file *st);

/* Tensors in file order of their offsets. Borrowed. */
size_t st_count(const struct st_file *st);
const struct st_tensor *st_get(const struct st_file *st, size_t i);
/* NULL when absent. */
const struct st_tensor *st_find(const struct st_file *st, const char *name);
/* Value of a "__metadata__" string, or NULL. Borrowed. */
const char *st_metadata(const struct st_file *st, const char *key);
/* Size of the mapped file in bytes. */
size_t st_file_size(const struct st_file *st);

/* Open a checkpoint directory: model.safetensors if present, else the
 * shards of model.safetensors.index.json.  ERR_NOTFOUND if neither exists.
 * Caller frees with st_set_free. */
int st_set_open(struct st_set **out, const char *dir, struct err *e) CK_WUR;
void st_set_free(struct st_set *set);
size_t st_set_count(const struct st_set *set);                      /* all shards */
const struct st_tensor *st_set_get(const struct st_set *set, size_t i);
const struct st_tensor *st_set_find(const struct st_set *set, const char *name);
size_t st_set_nfiles(const struct st_set *set);
const char *st_set_file_path(const struct st_set *set, size_t i);
/* Sum of the mapped file sizes. */
size_t st_set_bytes(const struct st_set *set);

/* ---- other formats as st_file/st_set ---- */

/* Opens one file of some format as an st_file (st_open, torchzip_open). */
typedef int (*st_open_fn)(struct st_file **out, const char *path, struct err *e);

/* st_set_open with other file names and another opener: `single_name` in
 * `dir` if present, else the shards named by the "weight_map" of
 * `index_name`, each opened with `open_file`.  Same contract as st_set_open;
 * ERR_NOTFOUND names both files when neither exists. */
int st_set_open_as(struct st_set **out, const char *dir, const char *single_name,
                   const char *index_name, st_open_fn open_file, struct err *e) CK_WUR;

/* For readers of other formats: an st_file over tensors found elsewhere.
 * `tensors` (n of them, in the order st_get returns) are copied; their
 * names and data are borrowed from `owner`, which st_free releases with
 * owner_free (may be NULL).  `size` is what st_file_size reports.  Names
 * must be distinct (ERR_FORMAT otherwise); tensors may share bytes.  Takes
 * ownership of `owner` even on failure. */
int st_file_wrap(struct st_file **out, const char *path, size_t size,
                 const struct st_tensor *tensors, size_t n, void *owner,
                 void (*owner_free)(void *owner), struct err *e) CK_WUR;

/* ---- writing ---- */

/* One tensor to write: data is nelem * dtype-size bytes, borrowed. */
struct st_write_tensor {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
};

/* Write a safetensors file atomically (to PATH.tmp, fsync, rename): tensors
 * laid out in the given order, header padded with spaces to 8-byte alignment,
 * so the data buffer starts aligned (a tensor is aligned when the ones before
 * it have sizes that are multiples of its element size: put F32 first).  `meta_kv` is NULL or a NULL-terminated list of
 * key, value strings for "__metadata__".  On failure nothing is left at
 * `path` (an existing file there is untouched). */
int st_write(const char *path, const struct st_write_tensor *tensors, size_t n,
             const char *const *meta_kv, struct err *e) CK_WUR;

#endif
