/* optimdcp.h - the optimizer state of a DCP checkpoint (torchtitan, or
 * get_optimizer_state_dict under "optimizer"), written like the verl path's.
 *
 * dcp.save flattens {"state": {fqn: {"exp_avg": DTensor, "step": tensor}},
 * "param_groups": [{..., "params": [fqn, ...]}]} under the entry to keys
 * "optimizer.state.<fqn>.<state>" and "optimizer.param_groups.<g>.<field>".
 * The tensor states of one or more dims are merged like weights (keys
 * "<fqn>.<state>", see cmd/dcpmerge); the 0-d and non-tensor states and the
 * param groups go to optimizer_state.json, as op_state_json() writes it.
 */
#ifndef FM_OPTIMDCP_H
#define FM_OPTIMDCP_H

#include "base/err.h"
#include "base/util.h"
#include "torchfmt/dcp.h"

/*! odcp_state_json() : optimizer_state.json of the entry `entry` ("optimizer")
 *  of the DCP folder dir: reads the param-group objects and the 0-d states
 *  (one small item each). */
int odcp_state_json(const dcp_meta *m, const char *dir, const char *entry, unsigned ptz_flags, fm_buf *out, fm_err *e);

#endif
