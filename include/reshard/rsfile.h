/* rsfile.h - one rank file of the resharded checkpoint.
 *
 * The file of new rank n is written from the pickle of input rank n mod W:
 * every DTensor in it is rewritten for the new mesh (torchfmt/dtmpl), the
 * tree is pickled again (pkw), and the storages are written in key order:
 * a DTensor's storage is filled from the input pieces that overlap its new
 * block (ranged reads, one slab of rows at a time, CRC-checked when the
 * record has been read through), the mesh's rank tensor gets 0..N-1, and
 * every other storage (optimizer steps, RNG states) is copied whole from the
 * template file. extra_state files are copied like that with their pickle
 * untouched: only the archive name changes.
 */
#ifndef FM_RSFILE_H
#define FM_RSFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "reshard/rsgeom.h"
#include "torchfmt/ptz.h"
#include "torchfmt/tindex.h"

typedef enum rs_kind { RS_MODEL = 0, RS_OPTIM, RS_EXTRA } rs_kind;

typedef struct rs_source {
    rs_kind kind;
    int world;                 /* W: input rank files */
    ptz_file *const *zips;     /* the W input files of this kind */
    const ti_index *ix;        /* their tensor indexes (NULL for RS_EXTRA) */
    bool padded_default;       /* storage policy when the input does not show one */
} rs_source;

/*! rs_padded() : whether key's storages are FSDP2's padded chunk-0 buffers
 *  (some input rank's storage is larger than its view) or exact blocks
 *  (some rank holds a short block in a storage of just its size); else
 *  padded_default. */
bool rs_padded(const rs_source *s, const char *key);

/*! rs_write_rank() : writes new rank `rank`'s file at path with archive
 *  name `prefix` (e.g. "model_world_size_8_rank_3"); buf_bytes bounds the
 *  slab buffer; *bytes (may be NULL) gets the storage bytes written.
 *  Errors name the file. */
int rs_write_rank(const rs_source *s, const rs_target *t, int64_t rank, const char *path, const char *prefix,
                  size_t buf_bytes, uint64_t *bytes, fm_err *e);

#endif
