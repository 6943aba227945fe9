/* merge.h - the merge command: checkpoint folder -> HuggingFace folder.
 *
 * Phases, each ending with an error agreement across processes:
 *   discover (rank 0)  -> open shards + build indexes (every process, its
 *   own ranks)         -> exchange indexes, build the plan (every process,
 *   identically)       -> move the bytes (xfer) -> write config/tokenizer/
 *   index (writer)     -> rename the temporary folder (writer).
 * Rank 0 prints the banner, progress and summary; the others stay quiet.
 */
#ifndef FM_MERGE_H
#define FM_MERGE_H

#include <mpi.h>
#include <stdio.h>

#include "cmd/cli.h"
#include "base/err.h"

/*! mg_run_all() : COLLECTIVE over comm. Runs the merge described by o.
 *  @return : 0 or the agreed fm_code, with e holding the message. */
int mg_run_all(const cli_opts *o, MPI_Comm comm, FILE *out, fm_err *e);

#endif
