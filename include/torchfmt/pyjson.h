/* pyjson.h - a pickled Python object tree as JSON.
 *
 * Used by `inspect --json` and for lr_scheduler_state.json. None, bools,
 * ints (any size, as exact integer tokens), floats (NaN/inf as the strings
 * "nan"/"inf"/"-inf"), str, lists/tuples/sets (arrays) and dicts with str
 * keys (objects) map directly; a dict with other keys becomes
 * {"__dict_items__": [[k, v], ...]}, bytes {"__bytes__": "<hex>"}.
 * Tensors are read from the zip: with `tensor_lists` as nested lists of
 * their values, else as a description (dtype, shape, stride, storage,
 * placements...) with the first `max_values` values. Any other object is
 * {"__class__": "module.Name", "args": [...], "state": ..., "items": ...}.
 * Shared values are converted each time they appear; cycles become the
 * string "<cycle>"; nesting is bounded.
 */
#ifndef FM_PYJSON_H
#define FM_PYJSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "base/err.h"
#include "torchfmt/pkl.h"
#include "torchfmt/ptz.h"

typedef struct pj_opts {
    ptz_file *zip;      /* for tensor data; NULL = describe without values */
    int rank;           /* for DTensor coordinates when not pickled; -1 unknown */
    long max_values;    /* values per tensor description: 0 none, -1 all */
    bool tensor_lists;  /* tensors as nested lists of values */
    size_t node_count;  /* pkl_doc_node_count() of the document */
} pj_opts;

/*! pj_convert() : @return : a new cJSON tree (cJSON_Delete it) or NULL with e set. */
cJSON *pj_convert(const pkl_value *v, const pj_opts *o, fm_err *e);

/*! pj_print() : prints JSON with 2-space indentation (cJSON prints tabs),
 *  a trailing newline. @return : malloc'd text or NULL. */
char *pj_print(const cJSON *j);

#endif
