/*
 * npy.h - write (and read back) float32 arrays in NumPy's .npy format.
 *
 * Version 1.0 files: magic "\x93NUMPY", a Python-dict header
 * {'descr': '<f4', 'fortran_order': False, 'shape': (...), } padded with
 * spaces to a 64-byte boundary and ended by '\n', then C-order data.
 * numpy.load reads them.  Writes are atomic (PATH.tmp, then rename).
 *
 *     int shape[3] = {B, T, V};
 *     npy_write_f32("out/logits.npy", logits, 3, shape, &e);
 *
 * Token ids are written as '<i4' (npy_write_i32); npy_read_header parses
 * any file's header for readers of other dtypes (tokens.c).
 */
#ifndef CKPTD_NPY_H
#define CKPTD_NPY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

#define NPY_MAX_DIMS 8

/* Write data (prod(shape)) as '<f4'. On failure nothing is left at path. */
int npy_write_f32(const char *path, const float *data, int ndim, const int *shape,
                  struct err *e) CK_WUR;

/* Read a '<f4' C-order file: *data (caller frees) and shape. Any other
 * dtype or layout is ERR_UNSUPPORTED. */
int npy_read_f32(const char *path, float **data, int *ndim, int shape[NPY_MAX_DIMS],
                 struct err *e) CK_WUR;

/* Write data (prod(shape)) as '<i4' (token ids).  Atomic like npy_write_f32. */
int npy_write_i32(const char *path, const int32_t *data, int ndim, const int *shape,
                  struct err *e) CK_WUR;

/* The header of an open .npy file (version 1, 2 or 3), leaving f at the
 * first data byte: descr (e.g. "<i4", "|u1"; NUL-terminated), the shape
 * and the byte offset of the data.  Fortran order is ERR_UNSUPPORTED; a
 * damaged header ERR_FORMAT naming `path`. */
int npy_read_header(FILE *f, const char *path, char descr[16], int *ndim,
                    int64_t shape[NPY_MAX_DIMS], size_t *data_offset, struct err *e) CK_WUR;

#endif
