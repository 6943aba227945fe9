/* dtype.h - element types and bit-exact conversions.
 *
 * One table names every dtype the way torch (GLOBAL 'torch bfloat16',
 * 'torch BFloat16Storage') and safetensors ("BF16") spell it, and gives its
 * size and safetensors sort rank. Conversions between float types reproduce
 * PyTorch's CPU `tensor.to(dtype)` bit for bit (torch_format.md section 7):
 * fp32 -> bf16 and fp32 -> fp16 round to nearest even; subnormals are
 * rounded, not flushed; overflow goes to inf; NaN becomes what torch's
 * vectorised x86 CPU kernels produce (bf16: 0xFFFF; fp16: sign | 0x7E00 |
 * the top payload bits, as F16C does). Widening (bf16/fp16 -> fp32 -> fp64)
 * is exact. fp64 -> bf16/fp16 goes through fp32, as torch does.
 */
#ifndef FM_DTYPE_H
#define FM_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum dt_type {
    DT_INVALID = 0,
    DT_F64, DT_F32, DT_F16, DT_BF16,
    DT_I64, DT_I32, DT_I16, DT_I8, DT_U8, DT_BOOL,
    DT_U16, DT_U32, DT_U64,
    DT_C64, DT_C128,
    DT_F8_E4M3, DT_F8_E5M2, DT_F8_E4M3FNUZ, DT_F8_E5M2FNUZ,
    DT_COUNT
} dt_type;

size_t dt_size(dt_type t);              /* bytes per element, 0 for DT_INVALID */
const char *dt_torch_name(dt_type t);   /* "float32", "bfloat16", ... */
const char *dt_st_name(dt_type t);      /* "F32", "BF16", ... */
bool dt_is_float(dt_type t);            /* F64, F32, F16, BF16 (the convertible ones) */
/*! dt_st_order() : the position of t in the safetensors Dtype enum; the
 *  safetensors writer sorts tensors by this, descending, then by name. */
int dt_st_order(dt_type t);

dt_type dt_from_torch_name(const char *name);     /* "float32" or "torch.float32"; also "float", "half", "bfloat16" */
dt_type dt_from_st_name(const char *name);        /* "F32" */
dt_type dt_from_storage_class(const char *name);  /* "FloatStorage", "BFloat16Storage", ... */
const char *dt_storage_class(dt_type t);          /* the legacy typed-storage class, NULL if none */

uint16_t dt_f32_to_bf16(uint32_t bits);
uint16_t dt_f32_to_f16(uint32_t bits);
uint32_t dt_bf16_to_f32(uint16_t bits);
uint32_t dt_f16_to_f32(uint16_t bits);

/*! dt_can_convert() : from -> to is supported (same type, or both floats). */
bool dt_can_convert(dt_type from, dt_type to);

/*! dt_convert() : converts n elements from src (type `from`, stored in the
 *  byte order given by src_big_endian) to dst (type `to`, little-endian).
 *  src and dst must not overlap. @return : false if !dt_can_convert(). */
bool dt_convert(dt_type from, dt_type to, const void *src, void *dst, size_t n, bool src_big_endian);

#endif
