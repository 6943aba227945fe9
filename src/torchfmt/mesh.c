/* mesh.c - DeviceMesh fields -> mesh shape and coordinate (see mesh.h). */
#include "torchfmt/mesh.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/tindex.h"

_Static_assert(TM_MAX_DIMS == TI_MAX_MESH, "a mesh dimension limit for both modules");

/* ---- gathering the fields ---- */

static const char *const field_names[] = {"mesh", "_layout.shape/stride", "_layout.axes", "_rank_map",
                                          "_flatten_rank_map", "_coordinate_on_dim", "_rank", "_flatten_mesh_list"};

const char *tm_field_names(unsigned fields, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof field_names / sizeof *field_names && o < len; i++)
        if (fields & (1u << i)) o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", field_names[i]);
    if (o == 0) snprintf(buf, len, "none");
    return buf;
}

/* The names of every attribute the state holds: what a "not recognised"
 * message shows, so that a new release's fields are visible at once. */
static void list_found(const pkl_value *obj, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    const pkl_value *st = obj->u.obj.state;
    const pkl_value *dicts[2] = {st, NULL};
    if (st && st->type == PKL_TUPLE && st->u.seq.n == 2) {
        dicts[0] = st->u.seq.items[0];
        dicts[1] = st->u.seq.items[1];
    }
    for (int k = 0; k < 2; k++) {
        const pkl_value *d = dicts[k] && dicts[k]->type == PKL_DICT ? dicts[k] : NULL;
        for (size_t i = 0; d && i < d->u.dict.n && o < len; i++) {
            const char *s = pkl_get_str(d->u.dict.keys[i]);
            if (s) o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", s);
        }
    }
    if (o == 0) snprintf(buf, len, "none");
}

static bool is_none(const pkl_value *v) { return v == NULL || v->type == PKL_NONE; }

/* A CuTe shape/stride pair, flattened into one mode's sub-modes. */
static bool flatten_mode(const pkl_value *shape, const pkl_value *stride, tm_mode *m, int depth)
{
    int64_t s, d;
    if (depth > 4) return false;
    if (pkl_get_int(shape, &s) && pkl_get_int(stride, &d)) {
        if (m->nsub >= TM_MAX_SUB || s < 1 || s > TM_MAX_RANKS || d < 0) return false;
        m->size[m->nsub] = s;
        m->stride[m->nsub++] = d;
        return true;
    }
    size_t ns, nd;
    pkl_value *const *a = pkl_items(shape, &ns), *const *b = pkl_items(stride, &nd);
    if (a == NULL || b == NULL || ns != nd) return false;
    for (size_t i = 0; i < ns; i++)
        if (!flatten_mode(a[i], b[i], m, depth + 1)) return false;
    return true;
}

/* 2.9 - 2.11: _MeshLayout{shape, stride}, one top-level item per mesh dim. */
static bool layout_from_shape(const pkl_value *layout, tm_raw *raw)
{
    size_t ns, nd;
    pkl_value *const *a = pkl_items(pkl_attr(layout, "shape"), &ns);
    pkl_value *const *b = pkl_items(pkl_attr(layout, "stride"), &nd);
    int64_t one;
    if (a == NULL && pkl_get_int(pkl_attr(layout, "shape"), &one)) { /* a bare int: one flat mode */
        raw->layout_ndim = 1;
        return flatten_mode(pkl_attr(layout, "shape"), pkl_attr(layout, "stride"), &raw->layout[0], 0);
    }
    if (a == NULL || b == NULL || ns != nd || ns == 0 || ns > TM_MAX_DIMS) return false;
    raw->layout_ndim = (int)ns;
    for (size_t i = 0; i < ns; i++)
        if (!flatten_mode(a[i], b[i], &raw->layout[i], 0)) return false;
    return true;
}

/* 2.14: _MeshLayout{axes: (_FlatLayout{shape, stride}, ...)}, one axis per mesh dim. */
static bool layout_from_axes(const pkl_value *axes, tm_raw *raw)
{
    size_t n;
    pkl_value *const *a = pkl_items(axes, &n);
    if (a == NULL || n == 0 || n > TM_MAX_DIMS) return false;
    raw->layout_ndim = (int)n;
    for (size_t i = 0; i < n; i++)
        if (!flatten_mode(pkl_attr(a[i], "shape"), pkl_attr(a[i], "stride"), &raw->layout[i], 0)) return false;
    return true;
}

static int gather_layout(const pkl_value *layout, tm_raw *raw, fm_err *e)
{
    if (is_none(layout)) return 0;
    const pkl_value *axes = pkl_attr(layout, "axes");
    if (axes) {
        if (!layout_from_axes(axes, raw)) return fm_fail(e, FM_EFORMAT, "device mesh _layout.axes is malformed");
        raw->fields |= TM_F_LAYOUT_AXES;
    } else if (pkl_attr(layout, "shape")) {
        if (!layout_from_shape(layout, raw))
            return fm_fail(e, FM_EFORMAT, "device mesh _layout shape/stride are malformed");
        raw->fields |= TM_F_LAYOUT_SHAPE;
    }
    return 0;
}

static int gather_tensor(const pkl_value *t, ptz_file *zip, const char *what, int64_t **vals, size_t *n,
                         int64_t *shape, int *ndim, fm_err *e)
{
    int64_t sh[TI_MAX_DIMS];
    int nd = 0;
    int rc = ti_read_ints(t, zip, TM_MAX_RANKS, vals, n, sh, &nd, e);
    if (rc == 0 && shape) {
        if (nd < 1 || nd > TM_MAX_DIMS) rc = fm_fail(e, FM_EFORMAT, "it has %d dimensions", nd);
        memcpy(shape, sh, sizeof(int64_t) * (size_t)(nd > 0 && nd <= TM_MAX_DIMS ? nd : 0));
        *ndim = nd;
    }
    return rc ? fm_context(e, "device mesh %s", what) : 0;
}

/* A tuple of ranks (_flatten_rank_map, _flatten_mesh_list). */
static int gather_rank_tuple(const pkl_value *v, const char *what, int64_t **out, size_t *count, fm_err *e)
{
    size_t n;
    pkl_value *const *a = pkl_items(v, &n);
    if (a == NULL || n == 0 || n > TM_MAX_RANKS) return fm_fail(e, FM_EFORMAT, "device mesh %s is not a tuple of ranks", what);
    *out = malloc(sizeof(int64_t) * n);
    if (*out == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if (!pkl_get_int(a[i], &(*out)[i])) return fm_fail(e, FM_EFORMAT, "device mesh %s is not a tuple of ranks", what);
    *count = n;
    return 0;
}

static int gather_fields(const pkl_value *mesh, ptz_file *zip, tm_raw *raw, fm_err *e)
{
    const pkl_value *v;
    list_found(mesh, raw->found, sizeof raw->found);
    if ((v = pkl_attr(mesh, "mesh")) && ti_is_tensor(v)) {
        size_t n;
        FM_TRY(gather_tensor(v, zip, "mesh tensor", &raw->mesh_ranks, &n, raw->mesh_shape, &raw->mesh_ndim, e));
        raw->fields |= TM_F_MESH;
    }
    FM_TRY(gather_layout(pkl_attr(mesh, "_layout"), raw, e));
    if ((v = pkl_attr(mesh, "_rank_map")) && ti_is_tensor(v)) {
        FM_TRY(gather_tensor(v, zip, "_rank_map", &raw->rank_map, &raw->rank_map_n, NULL, NULL, e));
        raw->fields |= TM_F_RANK_MAP;
    }
    if (!is_none(v = pkl_attr(mesh, "_flatten_rank_map"))) {
        FM_TRY(gather_rank_tuple(v, "_flatten_rank_map", &raw->flat_rank_map, &raw->flat_rank_map_n, e));
        raw->fields |= TM_F_FLAT_RANK_MAP;
    }
    if (!is_none(v = pkl_attr(mesh, "_flatten_mesh_list"))) {
        FM_TRY(gather_rank_tuple(v, "_flatten_mesh_list", &raw->mesh_list, &raw->mesh_list_n, e));
        raw->fields |= TM_F_MESH_LIST;
    }
    if (!is_none(v = pkl_attr(mesh, "_coordinate_on_dim"))) {
        raw->coord_ndim = pkl_get_int_seq(v, raw->coord, TM_MAX_DIMS);
        if (raw->coord_ndim < 0) return fm_fail(e, FM_EFORMAT, "device mesh _coordinate_on_dim is not a tuple of ints");
        raw->fields |= TM_F_COORD;
    }
    if (!is_none(v = pkl_attr(mesh, "_rank"))) {
        if (!pkl_get_int(v, &raw->rank)) return fm_fail(e, FM_EFORMAT, "device mesh _rank is not an integer");
        raw->fields |= TM_F_RANK;
    }
    return 0;
}

int tm_gather(const pkl_value *mesh, ptz_file *zip, tm_raw *raw, fm_err *e)
{
    memset(raw, 0, sizeof *raw);
    if (!pkl_obj_is(mesh, "torch.distributed.*", "DeviceMesh"))
        return fm_fail(e, FM_EFORMAT, "DTensor spec without a DeviceMesh");
    int rc = gather_fields(mesh, zip, raw, e);
    if (rc) tm_raw_free(raw);
    return rc;
}

void tm_raw_free(tm_raw *raw)
{
    free(raw->mesh_ranks);
    free(raw->rank_map);
    free(raw->flat_rank_map);
    free(raw->mesh_list);
    raw->mesh_ranks = raw->rank_map = raw->flat_rank_map = raw->mesh_list = NULL;
}

/* ---- resolving ---- */

static const char *fmt_ints(int n, const int64_t *v, char *buf, size_t len) { return ti_format_shape(n, v, buf, len); }

static int64_t product(int n, const int64_t *v)
{
    int64_t p = 1; /* saturates past TM_MAX_RANKS: the callers only compare with small counts */
    for (int i = 0; i < n && p <= TM_MAX_RANKS; i++) p *= v[i] <= TM_MAX_RANKS ? v[i] : TM_MAX_RANKS + 1;
    return p;
}

/* Every shape source present must give the same shape. */
static int resolve_shape(const tm_raw *raw, int world, int nplacements, tm_mesh *out, fm_err *e)
{
    char a[160], b[160];
    if (raw->fields & (TM_F_LAYOUT_SHAPE | TM_F_LAYOUT_AXES)) {
        out->ndim = raw->layout_ndim;
        for (int i = 0; i < out->ndim; i++) {
            out->shape[i] = 1;
            for (int j = 0; j < raw->layout[i].nsub; j++) {
                out->shape[i] *= raw->layout[i].size[j];
                if (out->shape[i] > TM_MAX_RANKS) return fm_fail(e, FM_EFORMAT, "device mesh _layout is too large");
            }
        }
        if (product(out->ndim, out->shape) > TM_MAX_RANKS) return fm_fail(e, FM_EFORMAT, "device mesh _layout is too large");
        out->shape_from = "_layout";
    }
    if (raw->fields & TM_F_MESH) {
        if (out->shape_from &&
            (out->ndim != raw->mesh_ndim || memcmp(out->shape, raw->mesh_shape, sizeof(int64_t) * (size_t)out->ndim)))
            return fm_fail(e, FM_EFORMAT, "device mesh shape %s of _layout disagrees with the mesh tensor's %s",
                           fmt_ints(out->ndim, out->shape, a, sizeof a),
                           fmt_ints(raw->mesh_ndim, raw->mesh_shape, b, sizeof b));
        out->ndim = raw->mesh_ndim;
        memcpy(out->shape, raw->mesh_shape, sizeof(int64_t) * (size_t)out->ndim);
        if (!out->shape_from) out->shape_from = "mesh";
    }
    if (out->shape_from) return 0;
    /* no shape pickled: only a 1-D mesh over the whole world is unambiguous */
    if (nplacements == 1 && world > 0 && (!(raw->fields & TM_F_COORD) || raw->coord_ndim == 1)) {
        out->ndim = 1;
        out->shape[0] = world;
        out->shape_from = "world size";
        return 0;
    }
    return fm_fail(e, FM_EUNSUPPORTED,
                   "device mesh layout not recognised (no mesh tensor, _layout shape/stride or axes; "
                   "fields found: %s)",
                   raw->found);
}

/* Position of rank in a rank list, -1 if absent. */
static int64_t find_rank(const int64_t *map, size_t n, int64_t rank)
{
    for (size_t i = 0; i < n; i++)
        if (map[i] == rank) return (int64_t)i;
    return -1;
}

/* Row-major coordinate of a flat index. */
static void unflatten(int64_t flat, int nd, const int64_t *shape, int64_t *coord)
{
    for (int i = nd - 1; i >= 0; i--) {
        coord[i] = flat % shape[i];
        flat /= shape[i];
    }
}

/* Coordinate of position i of the root rank map under the layout: each
 * sub-mode's index is (i / stride) % size, sub-modes combine row-major. */
static void layout_coord(const tm_raw *raw, int64_t i, int64_t *coord)
{
    for (int m = 0; m < raw->layout_ndim; m++) {
        const tm_mode *md = &raw->layout[m];
        coord[m] = 0;
        for (int j = 0; j < md->nsub; j++)
            coord[m] = coord[m] * md->size[j] + (md->stride[j] ? (i / md->stride[j]) % md->size[j] : 0);
    }
}

/* The rank map (_rank_map and _flatten_rank_map must agree when both are
 * pickled); NULL if neither is. */
static const int64_t *rank_map(const tm_raw *raw, size_t *n, fm_err *e, int *rc)
{
    *rc = 0;
    if ((raw->fields & TM_F_RANK_MAP) && (raw->fields & TM_F_FLAT_RANK_MAP) &&
        (raw->rank_map_n != raw->flat_rank_map_n ||
         memcmp(raw->rank_map, raw->flat_rank_map, sizeof(int64_t) * raw->rank_map_n) != 0)) {
        *rc = fm_fail(e, FM_EFORMAT, "device mesh _rank_map and _flatten_rank_map disagree");
        return NULL;
    }
    if (raw->fields & TM_F_RANK_MAP) {
        *n = raw->rank_map_n;
        return raw->rank_map;
    }
    *n = raw->flat_rank_map_n;
    return (raw->fields & TM_F_FLAT_RANK_MAP) ? raw->flat_rank_map : NULL;
}

typedef struct coord_acc {
    tm_mesh *m;
    bool have;
} coord_acc;

/* Records one source's coordinate, or fails if it disagrees with an earlier one. */
static int offer(coord_acc *c, const char *from, const int64_t *coord, fm_err *e)
{
    char a[160], b[160];
    tm_mesh *m = c->m;
    for (int i = 0; i < m->ndim; i++)
        if (coord[i] < 0 || coord[i] >= m->shape[i])
            return fm_fail(e, FM_EFORMAT, "mesh coordinate %s from %s lies outside the mesh %s",
                           fmt_ints(m->ndim, coord, a, sizeof a), from, fmt_ints(m->ndim, m->shape, b, sizeof b));
    if (c->have) {
        if (memcmp(coord, m->coord, sizeof(int64_t) * (size_t)m->ndim) != 0)
            return fm_fail(e, FM_EFORMAT, "mesh coordinate %s from %s disagrees with %s from %s",
                           fmt_ints(m->ndim, coord, a, sizeof a), from, fmt_ints(m->ndim, m->coord, b, sizeof b),
                           m->coord_from);
        return 0;
    }
    memcpy(m->coord, coord, sizeof(int64_t) * (size_t)m->ndim);
    m->coord_from = from;
    c->have = true;
    return 0;
}

static int coord_from_maps(const tm_raw *raw, int64_t rank, coord_acc *c, fm_err *e)
{
    int64_t coord[TM_MAX_DIMS];
    tm_mesh *m = c->m;
    if (raw->fields & TM_F_MESH) {
        int64_t at = find_rank(raw->mesh_ranks, (size_t)product(raw->mesh_ndim, raw->mesh_shape), rank);
        if (at < 0) return fm_fail(e, FM_EFORMAT, "rank %" PRId64 " is not in the device mesh tensor", rank);
        unflatten(at, m->ndim, m->shape, coord);
        FM_TRY(offer(c, "the mesh tensor", coord, e));
    }
    if (raw->fields & TM_F_MESH_LIST) {
        if ((int64_t)raw->mesh_list_n != product(m->ndim, m->shape))
            return fm_fail(e, FM_EFORMAT, "device mesh _flatten_mesh_list holds %zu ranks for a mesh of %" PRId64,
                           raw->mesh_list_n, product(m->ndim, m->shape));
        int64_t at = find_rank(raw->mesh_list, raw->mesh_list_n, rank);
        if (at < 0) return fm_fail(e, FM_EFORMAT, "rank %" PRId64 " is not in the device mesh _flatten_mesh_list", rank);
        unflatten(at, m->ndim, m->shape, coord);
        FM_TRY(offer(c, "_flatten_mesh_list", coord, e));
    }
    size_t n = 0;
    int rc;
    const int64_t *map = rank_map(raw, &n, e, &rc);
    FM_TRY(rc);
    if (map == NULL) return 0;
    int64_t at = find_rank(map, n, rank);
    if (at < 0) return fm_fail(e, FM_EFORMAT, "rank %" PRId64 " is not in the device mesh rank map", rank);
    if (raw->layout_ndim > 0) {
        layout_coord(raw, at, coord);
        return offer(c, "the rank map and _layout", coord, e);
    }
    if ((int64_t)n != product(m->ndim, m->shape)) return 0; /* a root map of a sub-mesh: no layout to place it */
    unflatten(at, m->ndim, m->shape, coord);
    return offer(c, "the rank map", coord, e);
}

int tm_resolve(const tm_raw *raw, int rank, int world, int nplacements, tm_mesh *out, fm_err *e)
{
    memset(out, 0, sizeof *out);
    FM_TRY(resolve_shape(raw, world, nplacements, out, e));
    int64_t r = rank;
    if (raw->fields & TM_F_RANK) {
        if (r >= 0 && raw->rank != r)
            return fm_fail(e, FM_EFORMAT, "the device mesh was pickled by rank %" PRId64 ", not by this file's rank %d",
                           raw->rank, rank);
        r = raw->rank;
    }
    coord_acc c = {out, false};
    if (raw->fields & TM_F_COORD) {
        if (raw->coord_ndim != out->ndim)
            return fm_fail(e, FM_EFORMAT, "mesh coordinate has %d entries for a %d-D mesh", raw->coord_ndim, out->ndim);
        FM_TRY(offer(&c, "_coordinate_on_dim", raw->coord, e));
    }
    if (r >= 0) FM_TRY(coord_from_maps(raw, r, &c, e));
    if (r >= 0 && strcmp(out->shape_from, "world size") == 0) {
        int64_t one = r;
        FM_TRY(offer(&c, "the file's rank", &one, e));
    }
    if (!c.have) {
        char f[256];
        return fm_fail(e, FM_EFORMAT, "device mesh has neither a coordinate nor a rank map holding rank %d (fields found: %s)",
                       rank, tm_field_names(raw->fields, f, sizeof f));
    }
    return 0;
}

int tm_read(const pkl_value *mesh, ptz_file *zip, int rank, int world, int nplacements, tm_mesh *out, fm_err *e)
{
    tm_raw raw;
    FM_TRY(tm_gather(mesh, zip, &raw, e));
    int rc = tm_resolve(&raw, rank, world, nplacements, out, e);
    tm_raw_free(&raw);
    return rc;
}
