/* lorax.h - brings each process the LoRA factors of the fused weights it reads.
 *
 * A piece of a fused weight W ([out, in], rows [y0, y1) x columns [x0, x1))
 * needs A[:, x0:x1] (r x in: all of A for a row-sharded W) and B[y0:y1, :]
 * (its own rows of B), transposed roles for fan_in_fan_out. The factors are
 * sharded like any parameter, possibly on other ranks: every process reads
 * its own pieces of A and B and one MPI_Alltoallv per factor moves the
 * needed parts. Memory per process: r x (rows + columns) floats per piece it
 * reads, never a whole weight; all fused weights are prepared at once,
 * before the data phase (so the whole adapter's A, r x in per module, is
 * held by every process that reads rows of those modules).
 */
#ifndef FM_LORAX_H
#define FM_LORAX_H

#include <mpi.h>

#include "base/err.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"

/*! lx_prepare_all() : COLLECTIVE. Fills fuse->local of every fused tensor
 *  of pl for the pieces this process reads (zips as for the engines).
 *  *max_held (may be NULL): the most factor bytes any process holds. */
int lx_prepare_all(const plan *pl, ptz_file *const *zips, MPI_Comm comm, uint64_t *max_held, fm_err *e);

#endif
