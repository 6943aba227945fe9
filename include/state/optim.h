/* optim.h - the optimizer state of an FSDP2 checkpoint, by parameter name.
 *
 * verl saves optimizer.state_dict() on every rank: {"state": {index: {"step":
 * tensor, "exp_avg": DTensor, "exp_avg_sq": DTensor, ...}}, "param_groups":
 * [{hyper-parameters..., "params": [indices]}]}. Indices count the
 * parameters the optimizer was built on, in the model's parameter order
 * (a tied parameter once; frozen parameters absent). This module turns one
 * rank's file into a tensor index keyed "<index>/<state>", names the keys
 * "<parameter>.<state>" once every rank's index is known, and writes
 * optimizer_state.json. The tensors are then merged like the weights.
 * FSDP1 optimizers hold flat per-rank shards that cannot be split per
 * parameter: refused.
 */
#ifndef FM_OPTIM_H
#define FM_OPTIM_H

#include <stdint.h>

#include "base/err.h"
#include "torchfmt/ptz.h"
#include "torchfmt/tindex.h"
#include "base/util.h"

/*! op_index() : the tensor states (ndim >= 1) of one rank's optimizer file,
 *  keyed "<index>/<state>"; *nparams gets the number of parameters in the
 *  param groups. */
int op_index(ptz_file *zip, int rank, ti_index *out, int64_t *nparams, fm_err *e);

/*! op_name_states() : maps optimizer indices to parameter names and renames
 *  the keys of opt[0..W) to "<name>.<state>". model0 is rank 0's model
 *  index (state-dict order); dropped names a model key that is not a
 *  parameter of its own (a tied lm_head), or NULL. names[i] gets index i's
 *  parameter (malloc'd array of nparams borrowed strings, NULL when unknown).
 *  warning gets a note when the optimizer covers fewer parameters than the
 *  model (matched by shape, in order). */
int op_name_states(ti_index *opt, int W, const ti_index *model0, const char *dropped, int64_t nparams,
                   const char ***names, char *warning, size_t wlen, fm_err *e);

/*! op_state_json() : optimizer_state.json from rank 0's optimizer file:
 *  {"param_groups": [{hyper-parameters, "params": [names]}], "state":
 *  {name: {"step": ...}}} (the non-tensor and 0-d states), indented. */
int op_state_json(ptz_file *zip0, const char *const *names, int64_t nparams, fm_buf *out, fm_err *e);

#endif
