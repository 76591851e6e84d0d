/*
 * tensor.h - element conversions between checkpoint dtypes and F32.
 *
 * The model computes in F32 whatever the checkpoint stores.  These kernels
 * convert whole tensors (F16 uses the CPU's F16C instructions when present,
 * chosen at run time, and an exact bit-level path otherwise; BF16 is a
 * shift).  Sources may be unaligned (they point into a mapped file).
 *
 *     tensor_to_f32(dst, t->data, t->dtype, t->nelem);
 */
#ifndef CKPTD_TENSOR_H
#define CKPTD_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "workers/model/safetensors.h"

/* out (n) F32, src (n) of dtype F32/F16/BF16. Returns 0, or ERR_UNSUPPORTED
 * for any other dtype (out untouched). */
int tensor_to_f32(float *out, const void *src, enum st_dtype dt, size_t n) CK_WUR;

/* Scalar conversions (exact, round-to-nearest-even where narrowing). */
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t b);
uint16_t f32_to_f16(float f);
uint16_t f32_to_bf16(float f);

/* out (n) F16 / BF16 from F32, round to nearest even. */
void tensor_f32_to_f16(uint16_t *out, const float *src, size_t n);
void tensor_f32_to_bf16(uint16_t *out, const float *src, size_t n);

/* Index of the first non-finite value in x (n), or (size_t)-1 if all finite. */
size_t tensor_find_nonfinite(const float *x, size_t n);

#endif
