/* segment.h - the pieces of the plan that land in a stretch of output, and
 * reading them from the shards.
 *
 * A segment is the part of one run of one piece (see plan.h) that falls in
 * a given byte range of an output file: `n` elements starting at element
 * `j0` of run `run`. Two ways to enumerate them, both deterministic:
 *   - sg_for_each_in_window(): all segments of a window [wa, wb) of a file,
 *     in plan order (tensor, piece, run) - what the gather engine uses,
 *     since every process can enumerate every other process's segments;
 *   - sg_stream: one process's own segments of a file in increasing file
 *     offset, cut to fit a buffer - what the direct engine uses.
 * sg_sources reads a segment's source elements (ranged, CRC-checked reads of
 * the storage records) and converts them to the output dtype; for a
 * LoRA-fused weight (plan_tensor.fuse) it adds the low-rank product in fp32
 * first (plan/lora.h), so a fused tensor is rounded once.
 */
#ifndef FM_SEGMENT_H
#define FM_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"

typedef struct sg_seg {
    size_t tensor; /* index in pl->tensors */
    size_t piece;  /* index in the tensor's pieces */
    uint64_t run, j0, n;
    uint64_t out;  /* byte offset in the file's data section */
    bool last;     /* holds the piece's last element */
} sg_seg;

typedef int (*sg_fn)(void *ctx, const sg_seg *s, fm_err *e);

/*! sg_for_each_in_window() : calls fn for every segment of [wa, wb) of file
 *  f (data-section offsets) of process proc (or of all when proc < 0).
 *  *cursor is the first tensor of the file not yet finished (start it at
 *  pl->files[f].first; windows must come in increasing order). */
int sg_for_each_in_window(const plan *pl, size_t *cursor, int f, uint64_t wa, uint64_t wb, int proc, sg_fn fn, void *ctx,
                          fm_err *e);

/*! sg_bytes_of() : output bytes of file f that process proc supplies. */
uint64_t sg_bytes_of(const plan *pl, int f, int proc);

/* One process's segments of one file, in increasing offset. */
typedef struct sg_stream {
    const plan *pl;
    int file, proc;
    size_t tensor;      /* current tensor */
    size_t *run;        /* per piece of the current tensor: next run */
    uint64_t *j0;       /* per piece: elements of that run already taken */
    size_t cap;
} sg_stream;

int sg_stream_init(sg_stream *s, const plan *pl, int f, int proc, fm_err *e);
/*! sg_stream_next() : the next segment, at most max_bytes long (a run is cut
 *  to fit). @return : false when the file has no more segments of proc. */
bool sg_stream_next(sg_stream *s, uint64_t max_bytes, sg_seg *out);
void sg_stream_free(sg_stream *s);

/* Ranged readers of the storages this process uses. */
typedef struct sg_slot {
    int rank;
    const char *storage;
    ptz_rec *rec;
    size_t remaining; /* pieces still to finish before the CRC check */
} sg_slot;

typedef struct sg_sources {
    ptz_file *const *zips;
    sg_slot *slots;
    size_t nslots;
    size_t *piece_base; /* first flat piece id of each tensor */
    size_t *slot_of;    /* flat piece id -> slot, SIZE_MAX when not ours */
    uint64_t bytes_read;
    float *scratch;     /* a LoRA-fused segment in fp32 */
    size_t scratch_cap;
    /* NULL, or one word per tensor: sg_read() XORs the CRC-32C term of each
     * converted segment into it (base/crc32c.h), for the manifest and
     * --verify; every output byte is converted exactly once, by one process */
    uint32_t *crc32c;
} sg_sources;

int sg_sources_init(sg_sources *s, const plan *pl, ptz_file *const *zips, int me, fm_err *e);
void sg_sources_free(sg_sources *s);
/*! sg_read() : the source elements of segment sg, converted, into dst
 *  (n * output element size bytes). Once a piece's last segment is read and
 *  no other piece of this process uses its record, the record's CRC-32 is
 *  checked. Errors name the rank and the file. */
int sg_read(sg_sources *s, const plan *pl, const sg_seg *sg, uint8_t *dst, fm_err *e);
/*! sg_read_piece_f32() : the whole block of piece p of t (a small tensor: the
 *  LoRA factors), row-major in the block's shape, as fp32; CRC-checked. */
int sg_read_piece_f32(ptz_file *z, const plan_tensor *t, const plan_piece *p, float *dst, fm_err *e);

#endif
