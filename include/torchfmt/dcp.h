/* dcp.h - torch.distributed.checkpoint (DCP) folders: .metadata and items.
 *
 * A DCP folder holds `.metadata` (a pickle of
 * torch.distributed.checkpoint.metadata.Metadata) and data files
 * (`__R_0.distcp`). `state_dict_metadata` maps each flattened key to a
 * TensorStorageMetadata (properties.dtype, size, chunks of offsets/sizes)
 * or a BytesStorageMetadata; `storage_data` maps MetadataIndex(fqn,
 * offset) to _StorageInfo(relative_path, offset, length[,
 * transform_descriptors]); `planner_data` maps each flattened key to its
 * path in the nested state dict. Every item is a complete torch.save
 * archive at [offset, offset+length) of its file (see docs/formats.md).
 *
 * dcp_meta_parse() turns .metadata into plain data; dcp_file_index() makes
 * the ti_index of one data file, so that a .distcp file plays the role of a
 * verl rank file for the plan and the engines: its records are named
 * "<item offset>/data/N" (ptz_open_items), its pieces are the chunks it
 * holds, at their global offsets.
 */
#ifndef FM_DCP_H
#define FM_DCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/err.h"
#include "torchfmt/ptz.h"
#include "torchfmt/tindex.h"

#define DCP_METADATA ".metadata"

typedef struct dcp_chunk {
    int64_t offsets[TI_MAX_DIMS], sizes[TI_MAX_DIMS];
    int file;                 /* index in dcp_meta.files, -1 when storage_data has no entry */
    uint64_t offset, length;  /* the item in that file */
    char *transforms;         /* transform_descriptors as text, NULL when none */
} dcp_chunk;

typedef struct dcp_key {
    char *fqn;                /* flattened key, "model.model.embed_tokens.weight" */
    char *top;                /* first element of its planner_data path; NULL when unknown */
    int depth;                /* length of that path (0 when unknown) */
    bool bytes;               /* BytesStorageMetadata: a pickled object, not a tensor */
    dt_type dtype;
    int ndim;
    int64_t size[TI_MAX_DIMS];
    dcp_chunk *chunks;        /* a bytes item has one chunk (its offsets unused) */
    size_t nchunks;
} dcp_key;

typedef struct dcp_meta {
    char **files;             /* data files named by storage_data, in natural order */
    size_t nfiles;
    dcp_key *keys;            /* state_dict_metadata order */
    size_t n;
    bool nested;              /* every key's planner_data path has 2 or more parts */
} dcp_meta;

/*! dcp_meta_parse() : .metadata bytes -> m. Errors (FM_EFORMAT) say what
 *  is malformed and name the key; `what` names the file in them.
 *  @return : 0 (free m with dcp_meta_free) or an fm_code (m left empty). */
int dcp_meta_parse(const uint8_t *buf, size_t len, const char *what, dcp_meta *m, fm_err *e);
void dcp_meta_free(dcp_meta *m);

/*! dcp_select() : which entry of a nested state dict holds the model:
 *  `entry` when given, else "model", else the only entry. *prefix gets the
 *  malloc'd text to strip from the flattened keys ("model.", or "" when the
 *  state dict is flat). FM_EUSAGE naming the entries when it cannot tell. */
int dcp_select(const dcp_meta *m, const char *entry, char **prefix, fm_err *e);

/*! dcp_key_selected() : a tensor key under prefix (see dcp_select). */
bool dcp_key_selected(const dcp_key *k, const char *prefix);

/*! dcp_file_index() : opens data file `file` of the folder dir (only the
 *  items of the keys under prefix) as one ptz_file, and builds its ti_index: every selected key (with the prefix
 *  removed) in .metadata order, as TI_SHARDED entries with one piece per
 *  chunk the file holds (none when it holds none). Each item's pickle must
 *  be one plain tensor of the key's dtype and the chunk's sizes. Errors name
 *  the file and the key. rank is the file index. */
int dcp_file_index(const dcp_meta *m, const char *dir, int file, const char *prefix, unsigned flags, size_t read_buffer,
                   ptz_file **zip, ti_index *ix, fm_err *e);

/*! dcp_file_path() : malloc'd "<dir>/<files[file]>". */
char *dcp_file_path(const dcp_meta *m, const char *dir, int file);

#endif
