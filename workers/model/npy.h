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
 */
#ifndef CKPTD_NPY_H
#define CKPTD_NPY_H

#include <stddef.h>

#include "../../common/err.h"

#define NPY_MAX_DIMS 8

/* Write data (prod(shape)) as '<f4'. On failure nothing is left at path. */
int npy_write_f32(const char *path, const float *data, int ndim, const int *shape,
                  struct err *e) CK_WUR;

/* Read a '<f4' C-order file: *data (caller frees) and shape. Any other
 * dtype or layout is ERR_UNSUPPORTED. */
int npy_read_f32(const char *path, float **data, int *ndim, int shape[NPY_MAX_DIMS],
                 struct err *e) CK_WUR;

#endif
