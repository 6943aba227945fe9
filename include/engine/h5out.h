/* h5out.h - the HDF5 engine: every tensor of the plan as one dataset of a
 * single, self-describing model.h5, written with parallel HDF5.
 *
 * Same contract as the safetensors engines (xfer.h): every process reads
 * only its own pieces (segment.h), converts them to the output dtype, and
 * writes them itself into the shared file - here with collective H5Dwrite
 * calls through hyperslab selections (H5Pset_fapl_mpio + H5FD_MPIO_COLLECTIVE).
 * No tensor byte travels between processes and nothing is gathered first.
 * Memory per process is bounded by `window` plus the read buffers: a piece
 * larger than the window is written in sub-blocks of consecutive rows.
 *
 * File layout (docs/formats_hdf5.md is the reference):
 *   /                 attributes: config (config.json text, omitted when
 *                     there is none), format_version ("1"), source_world_size
 *                     (int32), producer ("fsdpmerge"), producer_version
 *   /<tensor name>    one dataset per tensor at the root, named by its full
 *                     key ("model.layers.0.mlp.up_proj.weight"); contiguous
 *                     layout, allocated early, no fill value ever written;
 *                     0-d tensors have a scalar dataspace, empty tensors a
 *                     zero-sized one; attributes dtype (torch name) and
 *                     shape (int64[ndim], empty for 0-d).
 *   Element types (little-endian): bf16 is a 16-bit HDF5 float (sign bit
 *   15, 8-bit exponent at bit 7, 7-bit mantissa, bias 127: HDF5 converts it
 *   to float32 exactly), fp16 the IEEE binary16 layout, fp32/fp64 IEEE,
 *   integers the matching H5T_STD_*LE, bool uint8 (0/1), complex a compound
 *   {r, i} as h5py writes it, float8 its raw bits as uint8 (dtype says which).
 *   A name containing '/' (an HDF5 path separator) or equal to "." is refused.
 *
 * Errors: HDF5's automatic error printing is turned off; a failing HDF5 call
 * becomes an fm_err naming the dataset or property list and HDF5's own
 * innermost reason. Processes agree (comm_agree_all) after every set-up step
 * and once per tensor, and a process that failed keeps making the collective
 * calls until then (with empty selections), so one process's failure (read
 * error, CRC mismatch, HDF5 error) stops all of them within one tensor,
 * without a hang; the partly written file is removed.
 *
 * Built without parallel HDF5 (FM_HAVE_HDF5 undefined), h5_write_all()
 * fails with FM_EUNSUPPORTED and h5_available() is false.
 */
#ifndef FM_H5OUT_H
#define FM_H5OUT_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "hf/stread.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"
#include "engine/xfer.h"

#define H5_FORMAT_VERSION "1"
#define H5_DEFAULT_WINDOW ((size_t)32 << 20)
#define H5_DEFAULT_ALIGN ((uint64_t)1 << 20)

typedef struct h5_opts {
    size_t window;            /* bytes per H5Dwrite buffer (clamped to [4096, 1 GiB]) */
    MPI_Info info;            /* MPI-IO hints given to H5Pset_fapl_mpio, MPI_INFO_NULL for none */
    uint64_t align_threshold; /* H5Pset_alignment: allocations of at least this many bytes ... */
    uint64_t alignment;       /* ... start at a multiple of this; alignment <= 1 turns it off */
    bool overwrite;           /* replace an existing file at path (--force); else FM_EEXIST */
    bool fsync;               /* flush the file to disk (MPI_File_sync via H5Fflush) before closing */
    const char *config;       /* config.json text for the root attribute "config"; NULL = none */
    int source_world_size;    /* root attribute: the checkpoint's world size W */
    FILE *hints_out;          /* print the MPI-IO hints in effect here (process 0), NULL = don't */
    uint64_t *independent;    /* if not NULL: receives the number of this process's H5Dwrite calls
                                 that HDF5 did not perform as collective I/O (0 expected) */
} h5_opts;

/*! h5_opts_init() : the defaults: 32 MiB window, no hints, 1 MiB alignment
 *  for objects of 1 MiB or more, fsync on, not overwriting. */
void h5_opts_init(h5_opts *o);

/*! h5_available() : true when this build writes HDF5 (parallel HDF5 linked). */
bool h5_available(void);

/*! h5_check_names() : FM_EUNSUPPORTED naming the first tensor whose name
 *  cannot be an HDF5 dataset name at the root ('/' inside, empty, "."). Pure;
 *  lets the caller refuse before any work. */
int h5_check_names(const plan *pl, fm_err *e);

/*! h5_size_estimate() : an upper bound of model.h5's size for pl (tensor
 *  bytes, alignment padding, metadata): what the space check and the
 *  reservation of the file ask for. */
uint64_t h5_size_estimate(const plan *pl, const h5_opts *o);

/*! h5_write_all() : COLLECTIVE. Writes every tensor of pl into the HDF5 file
 *  at path (every process must see it: a shared file system). zips[r] is the
 *  open shard of original rank r for the ranks this process reads (NULL for
 *  the others), as for xf_direct_all(). progress (may be NULL) is called on
 *  every process after each write round with the bytes done so far (the
 *  same numbers everywhere). stats (may be NULL): bytes this process read
 *  from the shards and tensor bytes it wrote. An existing file at path is
 *  FM_EEXIST unless o->overwrite. On failure the file is removed.
 *  @return : 0 or an fm_code, the same on every process. */
int h5_write_all(const plan *pl, ptz_file *const *zips, const char *path, const h5_opts *o, xf_progress_fn progress,
                 void *pctx, MPI_Comm comm, xf_stats *stats, fm_err *e);

/*! h5_read_layout() : the datasets of a model.h5 written by h5_write_all()
 *  as a one-file sr_model (hf/stread.h): name, dtype (its "dtype"
 *  attribute), shape, and the byte range of its contiguous data in the
 *  file, so that the bytes can be compared like a safetensors file's
 *  (verify). Serial, read-only. FM_EFORMAT when a dataset is not one
 *  h5_write_all() writes. */
int h5_read_layout(const char *path, sr_model *m, fm_err *e);

#ifdef FM_HAVE_HDF5
#include <hdf5.h>
/*! h5_bf16_type() : a new HDF5 datatype for bfloat16 (little-endian):
 *  16 bits, sign bit 15, exponent bits 7..14 (bias 127), mantissa bits 0..6,
 *  implied leading 1. The caller closes it (H5Tclose). H5I_INVALID_HID on error. */
hid_t h5_bf16_type(void);
/*! h5_file_type() : a new HDF5 datatype (caller closes) for dtype t as it is
 *  stored in the file (see the layout above); H5I_INVALID_HID if t has none. */
hid_t h5_file_type(dt_type t);
#endif

#endif
