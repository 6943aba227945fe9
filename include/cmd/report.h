/* report.h - the --report JSON summary of a merge. */
#ifndef FM_REPORT_H
#define FM_REPORT_H

#include "cmd/cli.h"
#include "base/err.h"
#include "plan/plan.h"
#include "engine/xfer.h"

typedef struct rp_times {
    double discover, index, plan, data, finalize, total; /* seconds, as seen by rank 0 */
} rp_times;

/*! rp_write() : writes the summary to path (bytes_read summed over processes). */
int rp_write(const char *path, const cli_opts *o, const char *mode, int world_size, int nprocs, int writer, const plan *pl,
             const rp_times *t, uint64_t bytes_read, fm_err *e);

#endif
