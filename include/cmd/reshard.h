/* reshard.h - the reshard command: the checkpoint a run with N ranks would
 * have saved (model, optimizer and extra_state rank files, fsdp_config.json,
 * the other files of the actor and step folders), written atomically.
 */
#ifndef FM_RESHARD_H
#define FM_RESHARD_H

#include <mpi.h>
#include <stdio.h>

#include "base/err.h"
#include "cmd/cli.h"

/*! rs_run_all() : COLLECTIVE. New rank n is written by process n mod P;
 *  every process reads the input rank files it needs (a shared folder).
 *  @return : 0 or the agreed error. */
int rs_run_all(const cli_opts *o, MPI_Comm comm, FILE *out, fm_err *e);

#endif
