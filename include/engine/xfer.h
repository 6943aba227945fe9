/* xfer.h - moves tensor bytes from the shard files into the output files.
 *
 * Two engines, one contract: every process reads only its own shards (see
 * segment.h), converts to the output dtype, and the bytes end up at their
 * offsets in the output files. Memory per process is bounded by `window`
 * plus the read buffers, whatever the model size.
 *
 * gather: the output is processed in windows of `window` bytes; every
 *   process packs its segments of the window, the writer gathers them
 *   (MPI_Gatherv), places them and hands the window to an I/O thread, which
 *   writes it while the next window is gathered. Only the writer needs to
 *   see the output folder.
 * direct: every process writes its own segments straight into the output
 *   files with MPI-IO, in rounds of up to `window` bytes each: a collective
 *   MPI_File_write_at_all through a file view (contiguous, a 2-D subarray
 *   for the strided rows of Shard(d>0) pieces, else hindexed). No tensor
 *   byte travels between processes. Every process must see the output
 *   folder. Rounds keep every count far below 2 GiB, which Open MPI 4 (no
 *   large-count calls) needs; offsets and displacements are 64-bit.
 *
 * Errors: every window/round ends with comm_agree_all(), so a failure on any
 * process (read error, CRC mismatch, write error) stops every process
 * within one step.
 */
#ifndef FM_XFER_H
#define FM_XFER_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"

typedef struct xf_opts {
    int writer;      /* process that writes the files (gather) or the headers (direct) */
    size_t window;   /* bytes per window/round (rounded down to a multiple of 8, >= 4096) */
    bool fsync;      /* flush each output file to disk before returning */
    bool direct_io;  /* gather: write aligned windows with O_DIRECT (skipped where unsupported) */
    MPI_Info info;   /* MPI-IO hints (direct), MPI_INFO_NULL for none */
    FILE *hints_out; /* direct: print the hints in effect here (rank 0), NULL = don't */
    uint32_t *crc32c; /* NULL, or per tensor: this process's CRC-32C terms (see sg_sources) */
} xf_opts;

typedef struct xf_stats {
    uint64_t bytes_read;    /* source bytes this process read for tensors */
    uint64_t bytes_written; /* output bytes (headers included), on the writer */
} xf_stats;

/* Called on every process after each window with the global progress. */
typedef void (*xf_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/*! xf_gather_all() : COLLECTIVE. zips[r] is the open shard file of original
 *  rank r for the ranks this process reads (NULL for the others). dir is
 *  the (temporary) output folder, used by the writer only; files are
 *  created there with the plan's names. */
int xf_gather_all(const plan *pl, ptz_file *const *zips, const char *dir, const xf_opts *o, xf_progress_fn progress,
                  void *progress_ctx, MPI_Comm comm, xf_stats *stats, fm_err *e);

/*! xf_direct_all() : COLLECTIVE. As xf_gather_all(), writing with MPI-IO
 *  from every process; dir must be visible to every process. */
int xf_direct_all(const plan *pl, ptz_file *const *zips, const char *dir, const xf_opts *o, xf_progress_fn progress,
                  void *progress_ctx, MPI_Comm comm, xf_stats *stats, fm_err *e);

#endif
