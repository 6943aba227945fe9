/* tindex.h - the tensor index of one rank's shard file.
 *
 * Turns the pickle tree of a torch.save'd state dict into a flat list of
 * entries, one per state-dict key: the tensor's global dtype and shape, and
 * the pieces of it this rank holds. A piece is a strided view into one
 * storage record of the zip ("data/<key>") plus the offset of the block in
 * the global tensor. What produced the tensor decides the offsets:
 *   - DTensor (FSDP2, FSDP1 with a device mesh): placements + mesh
 *     coordinate + global shape, with torch.chunk's rule per Shard(d);
 *     Replicate mesh dims make replicas (marked, checked by the plan);
 *   - ShardedTensor (FSDP1 without a mesh): ShardMetadata offsets/sizes;
 *   - plain tensors: the whole tensor at offset 0 (the plan decides whether
 *     ranks hold replicas or dim-0 slices).
 * Classes are matched by name under torch.*, so every torch 2.x module path
 * works. The index is plain data and can be packed into bytes to cross ranks.
 */
#ifndef FM_TINDEX_H
#define FM_TINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/err.h"
#include "torchfmt/pkl.h"
#include "torchfmt/ptz.h"
#include "base/util.h"

#define TI_MAX_DIMS 16
#define TI_MAX_MESH 8

typedef enum ti_kind { TI_PLAIN = 0, TI_DTENSOR = 1, TI_SHARDED = 2 } ti_kind;

typedef struct ti_view {
    char *storage;            /* record name relative to the archive prefix, "data/3" */
    dt_type dtype;            /* element type of the storage */
    uint64_t storage_nbytes;  /* size of the whole storage (== record size) */
    int64_t offset;           /* in elements */
    int ndim;
    int64_t shape[TI_MAX_DIMS];
    int64_t stride[TI_MAX_DIMS];
} ti_view;

typedef struct ti_piece {
    ti_view view;                /* the local block; its shape is the block's shape */
    int64_t goff[TI_MAX_DIMS];   /* offset of the block in the global tensor */
    bool replica;                /* a copy of a block another coordinate holds */
    uint32_t crc;                /* content hash (see ti_piece_crc), valid when has_crc */
    bool has_crc;
} ti_piece;

typedef struct ti_entry {
    char *key;
    ti_kind kind;
    dt_type dtype;
    int ndim;
    int64_t gshape[TI_MAX_DIMS];
    ti_piece *pieces;
    size_t npieces;
    char placements[96];         /* "(Shard(dim=0),)" for messages and inspect; "" if none */
    int mesh_ndim;
    int64_t mesh_shape[TI_MAX_MESH];
    int64_t coord[TI_MAX_MESH];
} ti_entry;

typedef struct ti_index {
    int rank;              /* the original (training) rank of the file */
    char *path;            /* the file */
    bool big_endian;       /* the file's byteorder */
    ti_entry *entries;     /* state-dict order */
    size_t n;
    size_t skipped;        /* non-tensor values skipped */
} ti_index;

/*! ti_build() : interprets root (the unpickled data.pkl of zip) as a state
 *  dict. zip is used to check storage record sizes and to read device-mesh
 *  rank maps when a coordinate is not pickled. Errors name the key.
 *  @return : 0 (out must then be freed with ti_index_free()) or an fm_code
 *  (out is left empty). */
int ti_build(const pkl_value *root, ptz_file *zip, int rank, ti_index *out, fm_err *e);

/*! ti_load() : opens nothing itself: reads data.pkl of zip, ti_build()s it. */
int ti_load(ptz_file *zip, int rank, ti_index *out, fm_err *e);
/*! ti_build_ws() / ti_load_ws() : the same, knowing the checkpoint's world
 *  size (a 1-D DeviceMesh that pickles no shape is then read as the whole
 *  world; -1 = unknown). */
int ti_build_ws(const pkl_value *root, ptz_file *zip, int rank, int world, ti_index *out, fm_err *e);
int ti_load_ws(ptz_file *zip, int rank, int world, ti_index *out, fm_err *e);

void ti_index_free(ti_index *ix);

/*! ti_is_tensor() : v is a call that rebuilds a tensor (plain, Parameter,
 *  DTensor, ShardedTensor, ...), i.e. something ti_parse() may accept. */
bool ti_is_tensor(const pkl_value *v);
/*! ti_parse() : one tensor value into a zeroed entry (key left NULL); rank
 *  is only used to find a DTensor's mesh coordinate when it is not pickled
 *  (-1 = unknown). Free with ti_entry_free(). */
int ti_parse(const pkl_value *v, ptz_file *zip, int rank, ti_entry *en, fm_err *e);
void ti_entry_free(ti_entry *en);

/*! ti_read_ints() : the elements (row-major) of a small int32/int64 tensor
 *  of at most max elements (a device mesh's rank map), malloc'd into *vals;
 *  its shape into shape[TI_MAX_DIMS] and *ndim. */
int ti_read_ints(const pkl_value *obj, ptz_file *zip, size_t max, int64_t **vals, size_t *n, int64_t *shape, int *ndim,
                 fm_err *e);

/*! ti_view_numel() / ti_view_contiguous() : element count; row-major dense. */
uint64_t ti_view_numel(const ti_view *v);
bool ti_view_contiguous(const ti_view *v);

/*! ti_piece_crc() : CRC-32 of the piece's elements in row-major order, as
 *  stored (no byte swapping). Uses the directory CRC when the view is the
 *  whole record, contiguous, and the CRC was written; else reads the bytes. */
int ti_piece_crc(ptz_file *zip, const ti_piece *p, uint32_t *crc, fm_err *e);

/*! ti_pack() / ti_unpack() : a self-contained byte image of an index, for
 *  MPI: ti_pack appends a 64-bit length and the image, ti_unpack reads one
 *  image (without the length) and validates everything it reads. */
int ti_pack(const ti_index *ix, fm_buf *out, fm_err *e);
int ti_unpack(const uint8_t *buf, size_t len, ti_index *out, fm_err *e);
/*! ti_unpack_next() : unpacks the index at *p (as appended by ti_pack) and
 *  advances *p past it. */
int ti_unpack_next(const uint8_t **p, const uint8_t *end, ti_index *out, fm_err *e);

/*! ti_chunk() : torch.chunk's rule: the [start, start+len) of chunk c when n
 *  elements are split in k chunks (trailing chunks may be empty). */
void ti_chunk(int64_t n, int64_t k, int64_t c, int64_t *start, int64_t *len);

/*! ti_format_shape() : "[512, 64]" into buf. */
const char *ti_format_shape(int ndim, const int64_t *shape, char *buf, size_t len);

#endif
