/* dcpmerge.h - the merge command's DCP side (torch.distributed.checkpoint).
 *
 * A DCP folder enters the same pipeline as verl rank files: each .distcp
 * data file plays the role of a rank file (process p reads files p, p+P,
 * ...), its ti_index holds the chunks it stores as pieces of TI_SHARDED
 * entries (torchfmt/dcp.h), and the plan checks that they tile each tensor.
 */
#ifndef FM_DCPMERGE_H
#define FM_DCPMERGE_H

#include <mpi.h>
#include <stdbool.h>

#include "base/err.h"
#include "ckpt/ckpt.h"
#include "cmd/cli.h"
#include "torchfmt/dcp.h"
#include "base/util.h"

typedef struct dm_state {
    bool on;             /* the checkpoint is a DCP folder */
    dcp_meta meta;       /* parsed by every process */
    char *prefix;        /* the model's keys: "model." or "" */
} dm_state;

/*! dm_discover_all() : COLLECTIVE. Rank 0 looks for a DCP folder under
 *  o->checkpoint, reads its .metadata and finds the HF config folder; every
 *  process gets the bytes and parses them. When found, l is filled as for a
 *  verl checkpoint (actor_dir = the DCP folder, world_size = its data
 *  files, hf_dir or NULL) and d->on is set. Errors agreed. */
int dm_discover_all(const cli_opts *o, MPI_Comm comm, ck_layout *l, dm_state *d, fm_err *e);

/*! dm_open() : the ptz_file and ti_index of data file k, for keys under
 *  prefix (d->prefix for the model). */
int dm_open(const cli_opts *o, const ck_layout *l, const dm_state *d, const char *prefix, int k, size_t read_buffer,
            ptz_file **zip, ti_index *ix, fm_err *e);

/* torchtitan / get_optimizer_state_dict: the optimizer under "optimizer" */
#define DM_OPTIM_ENTRY "optimizer"
#define DM_OPTIM_STATE "optimizer.state."

/*! dm_open_optim() : data file k's optimizer tensor states of one or more
 *  dims, keyed "<fqn>.<state>" (like the verl path's after naming). */
int dm_open_optim(const cli_opts *o, const ck_layout *l, const dm_state *d, int k, ptz_file **zip, ti_index *ix, fm_err *e);

/*! dm_optim_json() : optimizer_state.json (param groups, 0-d states). */
int dm_optim_json(const cli_opts *o, const ck_layout *l, const dm_state *d, fm_buf *out, fm_err *e);

void dm_free(dm_state *d);

#endif
