/* verify.h - checks an output folder: against the CRCs computed while it
 * was written (merge --verify, and `verify OUT` with its manifest), against
 * another HuggingFace folder (`verify OUT --reference DIR`), or against the
 * checkpoint (`verify OUT --checkpoint_path CKPT`, cmd/merge.c re-derives
 * every segment and vf_compare_segments() compares it with the file).
 *
 * Memory stays bounded: tensors are converted in chunks of VF_CHUNK bytes
 * and the output is read in batches of VF_SEGMENT bytes, never whole (a
 * helper thread reads the next batch, with O_DIRECT where allowed, while
 * this one is compared: base/readahead.h). Work is split across processes by tensor (or by segment); every
 * process must see the folders. A difference is reported per tensor, with
 * its first differing element, and the command exits with FM_EDIFFER (11).
 */
#ifndef FM_VERIFY_H
#define FM_VERIFY_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "base/util.h"
#include "cmd/cli.h"
#include "hf/stread.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"

#define VF_CHUNK (1u << 20)
#define VF_SEGMENT (8u << 20)

/*! vf_reread_all() : COLLECTIVE over comm (every process of which sees
 *  dir). merge --verify, before the rename: drops the output files from the
 *  page cache (they were flushed) and reads them back from disk, tensors
 *  split across the processes: each file's size and header bytes, and each
 *  tensor's CRC-32C against crc[] (computed as the data was converted).
 *  FM_EDIFFER names a file and tensor that differ. *bytes gets the bytes
 *  this process read. */
int vf_reread_all(const char *dir, const plan *pl, const uint32_t *crc, MPI_Comm comm, uint64_t *bytes, fm_err *e);

/*! vf_manifest_defaults() : verify --checkpoint_path: --dtype and
 *  --max-shard-size not given take the values OUT's manifest records (the
 *  merge's); nothing changes without a readable manifest. */
void vf_manifest_defaults(cli_opts *o);

/*! vf_run_all() : COLLECTIVE. The verify command without a checkpoint:
 *  against the manifest, or against o->reference. */
int vf_run_all(const cli_opts *o, MPI_Comm comm, FILE *out, fm_err *e);

/*! vf_compare_segments() : this process's segments of pl (as a merge would
 *  convert them) against the same bytes of the output: where[i] is plan
 *  tensor i in outm (the caller has checked its dtype and shape), NULL to
 *  skip it. first_diff[i] gets the lowest differing element of tensor i this
 *  process saw (left alone when none: start it at UINT64_MAX). */
int vf_compare_segments(const plan *pl, ptz_file *const *zips, const sr_model *outm, const sr_tensor *const *where,
                        int me, uint64_t *first_diff, uint64_t *bytes, fm_err *e);

/* The differences found, as report lines (printed by rank 0). */
typedef struct vf_report {
    fm_buf lines;
    uint64_t bad;
} vf_report;

void vf_bad(vf_report *v, const char *fmt, ...) FM_PRINTF(2, 3);

/*! vf_check_text() : a side file (config.json, the index) against the text
 *  a merge writes: the first differing line when they differ; have NULL
 *  when the output lacks the file. */
void vf_check_text(vf_report *v, const char *what, const char *want, size_t wlen, const char *have, size_t hlen);

/*! vf_plan_all() : COLLECTIVE. verify --checkpoint_path for one plan (the
 *  weights, stem "model", or the optimizer state): reads dir's safetensors
 *  layout (a malformed or truncated file is FM_EDIFFER), adds a report line
 *  for every tensor missing, extra, of another dtype, shape or file, then
 *  compares every segment (vf_compare_segments) and reports each tensor's
 *  first differing element, and the index file. *bytes: compared here. */
int vf_plan_all(const plan *pl, ptz_file *const *zips, const char *dir, const char *stem, MPI_Comm comm, vf_report *v,
                uint64_t *bytes, fm_err *e);
/*! vf_plan_h5() : COLLECTIVE. As vf_plan_all(), against the datasets of the
 *  model.h5 at path (engine/h5out's layout: contiguous data, compared byte
 *  for byte); names, dtypes and shapes too, no file placement or index. */
int vf_plan_h5(const plan *pl, ptz_file *const *zips, const char *path, MPI_Comm comm, vf_report *v, uint64_t *bytes,
               fm_err *e);

/*! vf_describe_elem() : "element 1234 [3, 42]: VALUE" of a tensor in a file,
 *  appended to b (the value printed as a float when the dtype is one). */
void vf_describe_elem(fm_buf *b, const sr_tensor *t, const char *path, uint64_t elem);

#endif
