/* comm.h - MPI glue: agreeing on errors, exchanging byte blobs.
 *
 * The error protocol (every phase): each process does its local work and
 * stops at its first error, but still calls comm_agree_all(). That call
 * finds the lowest failing process and hands its fm_err to every process,
 * so all take the same branch and rank 0 can print the one message. This is
 * how one rank's failure ends every rank promptly instead of leaving the
 * others blocked in a collective.
 *
 * Functions ending in _all are COLLECTIVE over comm.
 */
#ifndef FM_COMM_H
#define FM_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"

/*! comm_prefer_shared_memory() : before MPI_Init. When every process of
 *  the job runs on this host (mpirun's OMPI_COMM_WORLD_LOCAL_SIZE equals
 *  OMPI_COMM_WORLD_SIZE, or a singleton) and the user chose no transport
 *  (no OMPI_MCA_pml/btl/mtl in the environment), selects ob1 over self and
 *  shared memory: probing the network transports costs about 0.2 s of a
 *  1.6 s merge of a 0.5B model. FSDPMERGE_KEEP_MPI_TRANSPORTS=1 turns it off. */
void comm_prefer_shared_memory(void);

/*! comm_agree_all() : COLLECTIVE. On return e holds the error of the lowest
 *  process that failed, or success everywhere. @return : e->code. */
int comm_agree_all(fm_err *e, MPI_Comm comm);

/*! comm_allgather_blobs_all() : COLLECTIVE. Every process contributes
 *  buf[0..len); on return *all holds all blobs back to back (malloc'd) and
 *  offs[0..nprocs] their boundaries (malloc'd). Blobs are limited to 2 GiB
 *  in total (Open MPI 4 has no large-count collectives). */
int comm_allgather_blobs_all(const void *buf, size_t len, MPI_Comm comm, uint8_t **all, uint64_t **offs, fm_err *e);

/*! comm_write_at_writer_all() : COLLECTIVE. A small file that process
 *  `from` built (buf/len, ignored elsewhere) is written by process `writer`
 *  as dir/name (sent there first when from != writer). */
int comm_write_at_writer_all(const void *buf, size_t len, int from, int writer, const char *dir, const char *name,
                             MPI_Comm comm, fm_err *e);

/*! comm_print_hints() : prints the MPI-IO hints in effect on fh to out,
 *  titled with `what` (e.g. "the output"). */
void comm_print_hints(FILE *out, MPI_File fh, const char *what);

/*! comm_mpi_error() : fills e with the text of an MPI error code. */
int comm_mpi_error(fm_err *e, int mpi_rc, const char *what);

#endif
