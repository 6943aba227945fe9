/* inspectdcp.h - `fsdpmerge inspect` on DCP checkpoints.
 *
 *   inspect DIR/.metadata (or DIR)   every key: dtype, global shape, chunks
 *                                    (offsets, sizes) and where each is
 *                                    (file, item offset, length); --json too
 *   inspect FILE.distcp              the items of that file, from .metadata
 *   inspect FILE.distcp@OFFSET       one item, shown like a .pt file
 */
#ifndef FM_INSPECTDCP_H
#define FM_INSPECTDCP_H

#include <stdbool.h>
#include <stdio.h>

#include "base/err.h"
#include "cmd/cli.h"
#include "torchfmt/ptz.h"

/*! ind_listing() : true when path names a DCP folder, a .metadata or a
 *  whole .distcp file: ind_run() prints it. */
bool ind_listing(const char *path);
int ind_run(const cli_opts *o, FILE *out, fm_err *e);

/*! ind_open() : "FILE.distcp@OFFSET" -> the item archive (its length from
 *  the folder's .metadata); any other path -> ptz_open(). */
int ind_open(const char *path, ptz_file **zip, fm_err *e);

#endif
