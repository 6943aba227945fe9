/* st.h - the safetensors file layout.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON, then the tensor bytes, back to back. This module lays files out the
 * way the safetensors library (Rust, all versions 0.3-0.7) does, so that a
 * merge is byte-identical to a save_pretrained() of the same tensors:
 *   - tensors ordered by dtype (the Dtype enum, descending: F64, F32, ...,
 *     BF16, F16, ..., U8, BOOL) and then by name (bytewise);
 *   - offsets consecutive in that order, no gaps;
 *   - header JSON compact (serde_json), "__metadata__" first, then tensors
 *     in offset order, fields in the order dtype, shape, data_offsets;
 *   - the JSON padded with spaces to a multiple of 8 bytes.
 * It also parses headers (to verify outputs and for `inspect`).
 */
#ifndef FM_ST_H
#define FM_ST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/err.h"
#include "base/util.h"

#define ST_MAX_DIMS 16

typedef struct st_entry {
    const char *name; /* borrowed (st_parse_header: owned by the st_header) */
    dt_type dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end; /* offsets in the data section (st_layout fills them) */
    size_t user;         /* caller's index, carried through sorting */
} st_entry;

/*! st_nbytes() : numel * dtype size, or UINT64_MAX on overflow. */
uint64_t st_nbytes(const st_entry *t);

/*! st_layout() : sorts t[0..n) into safetensors order and assigns begin/end.
 *  @return : 0, FM_EFORMAT for a duplicate name or a size overflow. */
int st_layout(st_entry *t, size_t n, fm_err *e);

/*! st_header() : appends the 8-byte length and the padded JSON header for
 *  t[0..n) (already laid out) with __metadata__ {"format":"pt"} to out.
 *  The data section starts at out->len bytes after what out held before.
 *  extra_align (0, or a power of two such as 1 MiB) pads the JSON further so
 *  that the data section starts at a multiple of it in the file: legal
 *  (trailing spaces) and useful for striped file systems. */
int st_header(const st_entry *t, size_t n, size_t extra_align, fm_buf *out, fm_err *e);
/*! st_header_ex() : st_header() with or without the __metadata__ entry
 *  (safetensors' save_file() without metadata writes none). */
int st_header_ex(const st_entry *t, size_t n, size_t extra_align, bool pt_metadata, fm_buf *out, fm_err *e);

/* A parsed header (for verification and inspect). */
typedef struct st_header_info {
    st_entry *entries; /* in offset order */
    size_t n;
    uint64_t data_start; /* file offset of the data section (8 + N) */
    char *metadata_json; /* the "__metadata__" object as JSON text, or NULL */
    void *priv_;
} st_header_info;

/*! st_parse_header() : parses a safetensors header from buf (the first len
 *  bytes of the file; a buffer shorter than 8 + N is FM_EFORMAT "truncated").
 *  Validates: N <= 100,000,000, a JSON object, known dtypes, shapes, offsets
 *  contiguous from 0 with no gaps and matching numel * size. file_size (0 =
 *  unknown) must equal data_start + the last end. */
int st_parse_header(const uint8_t *buf, size_t len, uint64_t file_size, st_header_info *out, fm_err *e);
/*! st_read_header() : st_parse_header() of a file on disk. */
int st_read_header(const char *path, st_header_info *out, fm_err *e);
void st_header_info_free(st_header_info *h);

#endif
