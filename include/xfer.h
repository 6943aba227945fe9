/* xfer.h - moves tensor bytes from the shard files into the output files.
 *
 * The output is processed file by file in windows of `window` bytes of the
 * data section. For each window, every process reads the parts of its own
 * shards that land in the window (ptz_rec ranged reads, CRC checked as the
 * bytes stream), converts them to the output dtype and packs them in a
 * deterministic order; the writer gathers the packed bytes (MPI_Gatherv),
 * places them at their output offsets and hands the window to an I/O thread,
 * which writes it while the next window is gathered. Every process derives
 * the same segment list from the plan, so no offsets travel, only bytes.
 * Memory per process is bounded by the window and read buffers, whatever
 * the model size: no process ever holds a whole shard or tensor.
 *
 * Errors: each window ends with comm_agree_all(), so a failure on any
 * process (read error, CRC mismatch, write error) stops every process
 * within one window.
 */
#ifndef FM_XFER_H
#define FM_XFER_H

#include <mpi.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "plan.h"
#include "ptz.h"

typedef struct xf_opts {
    int writer;     /* process that writes the files */
    size_t window;  /* bytes per window (rounded down to a multiple of 8, >= 4096) */
    bool fsync;     /* fsync each output file before returning */
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

#endif
