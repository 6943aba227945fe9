/* inspect.h - `fsdpmerge inspect FILE`: what torch.load + print would show.
 *
 * Works on any torch.save file (model shard, optimizer, extra state): the
 * object tree with every tensor's dtype, shape, stride, storage offset and
 * storage, DTensor placements, mesh and coordinate, ShardedTensor shard
 * offsets; as indented text, or as JSON (see pyjson.h) with --json.
 */
#ifndef FM_INSPECT_H
#define FM_INSPECT_H

#include <stdio.h>

#include "cmd/cli.h"
#include "base/err.h"

int ins_run(const cli_opts *o, FILE *out, fm_err *e);

#endif
