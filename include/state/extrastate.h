/* extrastate.h - extra_state_merged.pt and lr_scheduler_state.json.
 *
 * verl saves per rank {"lr_scheduler": <state dict or None>, "rng": {"cpu",
 * "numpy", "random"[, "cuda"|"npu"]}}. The merged file keeps rank 0's
 * objects (re-emitted as they were read: numpy arrays and dtypes, tuples,
 * tensors) and turns the device key into a list of every rank's state in
 * rank order, so torch.cuda.set_rng_state_all(extra["rng"]["cuda"])
 * restores every GPU. The scheduler state must be the same on every rank
 * (compared as re-pickled bytes); if not, a warning, and rank 0's is kept.
 * lr_scheduler_state.json is the scheduler state as indented JSON (tensors
 * as lists, other objects as {"__class__": ...}).
 */
#ifndef FM_EXTRASTATE_H
#define FM_EXTRASTATE_H

#include <mpi.h>
#include <stdbool.h>

#include "ckpt/ckpt.h"
#include "base/err.h"

typedef struct es_result {
    bool present;          /* the checkpoint has extra_state files */
    char device[32];       /* "cuda", "npu", or "" */
    char warning[512];     /* non-empty when the scheduler states differ */
} es_result;

/*! es_merge_all() : COLLECTIVE. Every process reads the extra_state files
 *  of its ranks (rank r is read by r % nprocs); process 0 composes the
 *  merged objects; the writer writes extra_state_merged.pt and
 *  lr_scheduler_state.json into dir. No files at all: res->present = false
 *  and success. Some ranks without one: an error naming the missing file. */
int es_merge_all(const ck_layout *l, const char *dir, int writer, bool no_crc, MPI_Comm comm, es_result *res, fm_err *e);

#endif
