/* stread.h - reads the layout of a HuggingFace weights folder: which
 * tensors, in which safetensors file, with which dtype, shape and byte
 * range. Only the headers are read, never tensor data.
 *
 * A folder holds model.safetensors, or shards listed by
 * model.safetensors.index.json (weight_map). Every header is parsed and
 * checked by hf/st (st_read_header: known dtypes, offsets contiguous,
 * matching the shapes and the file size). With an
 * index, every tensor of the weight_map must be in the file it names, and
 * every tensor of the shards must be in the weight_map.
 */
#ifndef FM_STREAD_H
#define FM_STREAD_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/err.h"
#include "hf/st.h"

#define SR_MAX_DIMS ST_MAX_DIMS

typedef struct sr_tensor {
    char *name;
    dt_type dtype;
    int ndim;
    int64_t shape[SR_MAX_DIMS];
    uint64_t numel;
    int file;            /* index in sr_model.files */
    uint64_t begin, end; /* absolute byte offsets in the file */
} sr_tensor;

typedef struct sr_file {
    char *name;          /* "model.safetensors" */
    char *path;
    uint64_t size, data_start;
} sr_file;

typedef struct sr_model {
    sr_tensor *tensors;  /* sorted by name */
    size_t ntensors;
    sr_file *files;
    size_t nfiles;
    char *index_text;    /* the index file's text, NULL without one */
} sr_model;

/*! sr_open() : the layout of the safetensors weights of dir (stem "model":
 *  model.safetensors or model.safetensors.index.json). Errors name the
 *  file and what is wrong; FM_EIO when neither file exists. */
int sr_open(const char *dir, const char *stem, sr_model *m, fm_err *e);
void sr_free(sr_model *m);

/*! sr_sort() : sorts m's tensors by name (what sr_find needs), for a model
 *  filled by another reader (engine/h5out's model.h5); FM_EFORMAT naming
 *  where on a name that appears twice. */
int sr_sort(sr_model *m, const char *where, fm_err *e);

/*! sr_find() : the tensor called name, or NULL. */
const sr_tensor *sr_find(const sr_model *m, const char *name);

#endif
