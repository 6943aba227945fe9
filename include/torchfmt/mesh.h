/* mesh.h - a pickled torch DeviceMesh: its shape and this rank's coordinate.
 *
 * Each torch release pickles DeviceMesh.__dict__ (or __getstate__) with other
 * fields (docs/formats.md has the table and a fixture per row):
 *   2.4 - 2.8   mesh (int tensor of ranks; its shape is the mesh shape),
 *               _flatten_mesh_list (the same ranks as a tuple), mesh_dim_names,
 *               device_type, _dim_group_infos, _coordinate_on_dim (a list)
 *   2.9 - 2.11  _layout = _MeshLayout{shape, stride} (CuTe: modes may nest),
 *               _rank_map (flat int tensor of the root mesh), _flatten_rank_map,
 *               _rank, _coordinate_on_dim, _mesh_dim_names, _device_type
 *   2.14        _layout = _MeshLayout{axes: (_FlatLayout{shape, stride}, ...)},
 *               otherwise as 2.11
 * Reading is two steps so that a new field layout is a local addition:
 * tm_gather() copies whatever fields it knows into a tm_raw (plain data, no
 * pickle), tm_resolve() derives the shape and coordinate from every source
 * present, checks that the sources agree, and falls back to the world size
 * and the file's rank only for a 1-D mesh with no other source.
 */
#ifndef FM_MESH_H
#define FM_MESH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "torchfmt/pkl.h"
#include "torchfmt/ptz.h"

#define TM_MAX_DIMS 8          /* mesh dimensions (== TI_MAX_MESH) */
#define TM_MAX_SUB 8           /* sub-modes of one nested layout mode */
#define TM_MAX_RANKS (1 << 20) /* ranks in a rank map */

/* The fields a DeviceMesh pickle can carry (tm_raw.fields). */
typedef enum tm_field {
    TM_F_MESH = 1u << 0,        /* `mesh`: int tensor of ranks (<= 2.8) */
    TM_F_LAYOUT_SHAPE = 1u << 1, /* `_layout.shape` + `.stride` (2.9 - 2.11) */
    TM_F_LAYOUT_AXES = 1u << 2, /* `_layout.axes` of _FlatLayout (2.14) */
    TM_F_RANK_MAP = 1u << 3,    /* `_rank_map`: flat int tensor (>= 2.9) */
    TM_F_FLAT_RANK_MAP = 1u << 4, /* `_flatten_rank_map`: tuple of ints (>= 2.11) */
    TM_F_COORD = 1u << 5,       /* `_coordinate_on_dim` */
    TM_F_RANK = 1u << 6,        /* `_rank`: the writer's global rank */
    TM_F_MESH_LIST = 1u << 7    /* `_flatten_mesh_list`: the mesh's ranks, row-major (<= 2.8) */
} tm_field;

/* One layout mode: sub-sizes and sub-strides, outermost first (a flat mode
 * has nsub == 1). */
typedef struct tm_mode {
    int nsub;
    int64_t size[TM_MAX_SUB];
    int64_t stride[TM_MAX_SUB];
} tm_mode;

/* What a DeviceMesh pickle carried, as plain data. */
typedef struct tm_raw {
    unsigned fields;              /* TM_F_* present (and well formed) */
    char found[512];              /* every attribute name of the state, for messages */
    int mesh_ndim;                /* TM_F_MESH: the mesh tensor's shape and values (row-major) */
    int64_t mesh_shape[TM_MAX_DIMS];
    int64_t *mesh_ranks;
    int layout_ndim;              /* TM_F_LAYOUT_*: the layout's top-level modes */
    tm_mode layout[TM_MAX_DIMS];
    int64_t *rank_map;            /* TM_F_RANK_MAP */
    size_t rank_map_n;
    int64_t *flat_rank_map;       /* TM_F_FLAT_RANK_MAP */
    size_t flat_rank_map_n;
    int coord_ndim;               /* TM_F_COORD */
    int64_t coord[TM_MAX_DIMS];
    int64_t rank;                 /* TM_F_RANK */
    int64_t *mesh_list;           /* TM_F_MESH_LIST */
    size_t mesh_list_n;
} tm_raw;

/* The resolved mesh. */
typedef struct tm_mesh {
    int ndim;
    int64_t shape[TM_MAX_DIMS];
    int64_t coord[TM_MAX_DIMS];
    const char *shape_from; /* the source of the shape, for inspect: "mesh", "_layout", "world size" */
    const char *coord_from; /* the first source of the coordinate */
} tm_mesh;

/*! tm_gather() : copies the fields of the DeviceMesh object `mesh` into raw
 *  (zeroed first), reading rank-map tensors from zip. A field present but
 *  malformed is an error naming it. Free with tm_raw_free(). */
int tm_gather(const pkl_value *mesh, ptz_file *zip, tm_raw *raw, fm_err *e);
void tm_raw_free(tm_raw *raw);

/*! tm_resolve() : the shape and coordinate of `rank` (the file's rank, -1 =
 *  unknown: then the pickled _rank) from every source in raw. world is the
 *  checkpoint's world size (-1 = unknown) and nplacements the DTensor's
 *  placement count, both only used for the 1-D fallback. Sources that
 *  disagree are an error naming both; no usable source is an error naming
 *  the fields found. */
int tm_resolve(const tm_raw *raw, int rank, int world, int nplacements, tm_mesh *out, fm_err *e);

/*! tm_read() : tm_gather() + tm_resolve(). */
int tm_read(const pkl_value *mesh, ptz_file *zip, int rank, int world, int nplacements, tm_mesh *out, fm_err *e);

/*! tm_field_names() : "mesh, _rank_map, ..." of a TM_F_* mask into buf. */
const char *tm_field_names(unsigned fields, char *buf, size_t len);

#endif
