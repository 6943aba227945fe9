/* synthdcp.h - synthetic torch.distributed.checkpoint (DCP) folders.
 *
 * The same model and values as synth.h (so syn_write_expected() is the
 * oracle), saved as dcp.save does: `.metadata` (Metadata pickle:
 * state_dict_metadata, planner_data, storage_data) and `__F_0.distcp` files
 * in which each chunk is a complete torch.save archive of one tensor,
 * appended one after the other. Layouts: accelerate
 * (`pytorch_model_fsdp_0/`, keys `model.<name>`), titan (`step-N/`, same
 * keys), flat (`dcp/`, keys `<name>`). Chunking: shard0 (torch.chunk rule
 * on dim 0: uneven, trailing chunks possibly empty) or 2d (a grid over both
 * dims of matrices); with hsdp R the F files hold F/R chunks per tensor,
 * each stored once (deduplicated, spread over the replica groups).
 *
 * Data files are written by any process (syd_write_file); the item
 * locations they return are gathered and process 0 writes .metadata.
 */
#ifndef FM_SYNTHDCP_H
#define FM_SYNTHDCP_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/util.h"
#include "synth/synth.h"

typedef enum syd_layout { SYD_NONE = 0, SYD_ACCELERATE, SYD_TITAN, SYD_FLAT } syd_layout;
typedef enum syd_chunking { SYD_SHARD0 = 0, SYD_2D } syd_chunking;
typedef enum syd_fault {
    SYD_FAULT_NONE = 0,
    SYD_FAULT_MISSING_FILE,  /* data file `file` is removed */
    SYD_FAULT_TRUNCATE,      /* data file `file` loses its last 100 bytes */
    SYD_FAULT_METADATA,      /* .metadata is cut in half */
    SYD_FAULT_OVERLAP,       /* the first tensor's chunk 1 starts one row early */
    SYD_FAULT_GAP,           /* the first tensor's last chunk is missing from .metadata */
    SYD_FAULT_TRANSFORM      /* the first item says transform_descriptors ['stream.zstd'] */
} syd_fault;

typedef struct syd_opts {
    syd_layout layout;
    syd_chunking chunking;
    int hsdp;                 /* replica groups (1 = none); divides the file count */
    syd_fault fault;
    int fault_file;
} syd_opts;

/*! syd_parse_layout() / syd_parse_chunking() / syd_parse_fault() : the
 *  fsdpsynth option values (accelerate|titan|flat, shard0|2d,
 *  missing-file:F|truncate:F|metadata|overlap|gap|transform). */
int syd_parse_layout(const char *s, syd_opts *d, fm_err *e);
int syd_parse_chunking(const char *s, syd_opts *d, fm_err *e);
int syd_parse_fault(const char *s, syd_opts *d, fm_err *e);

/*! syd_dir() : malloc'd DCP folder "<out>/pytorch_model_fsdp_0" (or step-N, dcp). */
char *syd_dir(const syn_opts *o, const syd_opts *d);

/*! syd_write_meta() : the DCP folder and <out>/huggingface/ (process 0, first). */
int syd_write_meta(const syn_ctx *c, const syn_opts *o, const syd_opts *d, fm_err *e);

/*! syd_write_file() : data file f; appends to locs one (tensor, chunk,
 *  offset, length) quadruple of uint64 per item written. */
int syd_write_file(syn_ctx *c, const syn_opts *o, const syd_opts *d, int f, fm_buf *locs, uint64_t *bytes, fm_err *e);

/*! syd_write_metadata() : .metadata from every file's locs (concatenated),
 *  then the requested fault. Process 0, last. */
int syd_write_metadata(const syn_ctx *c, const syn_opts *o, const syd_opts *d, const uint8_t *locs, size_t len, fm_err *e);

#endif
