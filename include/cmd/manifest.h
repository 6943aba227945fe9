/* manifest.h - fsdpmerge_manifest.json: where an output came from, and a
 * CRC-32C per tensor.
 *
 * Written into every merge output (unless --no-manifest) next to the
 * weights: the tool version and command line, the checkpoint, its world
 * size and FSDP version, the dtype, mode and format, every output file's
 * size, and per tensor its file, safetensors dtype, shape, data offsets and
 * the CRC-32C of its bytes. The CRCs are assembled from the segments as the
 * engines convert them (base/crc32c.h), never by re-reading the output, so
 * `fsdpmerge verify OUT` can later check the files against them without the
 * checkpoint. The JSON is printed by hf/jsonfmt (indent 2, keys in the
 * order written, tensors in file order).
 */
#ifndef FM_MANIFEST_H
#define FM_MANIFEST_H

#include <stdint.h>

#include "base/err.h"
#include "base/util.h"
#include "plan/plan.h"

#define MF_NAME "fsdpmerge_manifest.json"

typedef struct mf_info {
    const char *command_line;
    const char *source;      /* checkpoint as given */
    const char *actor_dir;
    int world_size, fsdp_version, nprocs;
    const char *dtype;       /* --dtype: "bfloat16", ..., "auto" */
    const char *mode;        /* "gather", "direct", "hdf5" */
    const char *format;      /* "safetensors", "hdf5", "both" */
    uint64_t max_shard_size; /* --max-shard-size in bytes */
} mf_info;

/*! mf_build() : the manifest text (with a final newline) into out. crc[i]
 *  is the CRC-32C of pl->tensors[i]'s bytes; NULL crc (no safetensors
 *  written) leaves the tensors out. */
int mf_build(const mf_info *info, const plan *pl, const uint32_t *crc, fm_buf *out, fm_err *e);

/* One tensor as the manifest lists it. */
typedef struct mf_tensor {
    const char *name, *file, *dtype; /* borrowed from the parsed tree */
    uint32_t crc32c;
} mf_tensor;

typedef struct mf_manifest {
    void *tree;              /* the parsed JSON (jf_node) */
    const char *dtype;       /* the merge's --dtype ("bfloat16", "auto", ...), NULL if absent */
    uint64_t max_shard_size; /* the merge's --max-shard-size, 0 if absent */
    mf_tensor *tensors;
    size_t ntensors;
} mf_manifest;

/*! mf_parse() : reads the tensors of a manifest. FM_EFORMAT naming what is
 *  missing or malformed. */
int mf_parse(const char *text, size_t len, mf_manifest *m, fm_err *e);
void mf_free(mf_manifest *m);

#endif
