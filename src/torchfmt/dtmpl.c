/* dtmpl.c - see dtmpl.h. */
#include "torchfmt/dtmpl.h"

#include <inttypes.h>
#include <string.h>

/* The dict an OBJ's BUILD state keeps its attributes in (a dict, or the
 * slots dict of a (dict_or_None, slots) tuple that holds the name). */
static pkl_value *attr_dict(pkl_value *obj, const char *name)
{
    if (obj == NULL || obj->type != PKL_OBJ) return NULL;
    pkl_value *st = obj->u.obj.state;
    if (st == NULL) return NULL;
    if (st->type == PKL_DICT) return st;
    if (st->type == PKL_TUPLE && st->u.seq.n == 2)
        for (int i = 0; i < 2; i++)
            if (pkl_dict_get(st->u.seq.items[i], name)) return st->u.seq.items[i];
    return NULL;
}

static int set_attr(pkl_doc *doc, pkl_value *obj, const char *name, pkl_value *v, fm_err *e)
{
    pkl_value *d = attr_dict(obj, name);
    pkl_value *k = pkl_new_cstr(doc, name);
    if (d == NULL) return fm_fail(e, FM_EINTERNAL, "attribute '%s' to set is missing", name);
    if (k == NULL || v == NULL || pkl_dict_set(doc, d, k, v)) return fm_fail(e, FM_ENOMEM, "out of memory");
    return 0;
}

/* A tuple or list (kind of `like`) of the n ints. */
static pkl_value *int_seq(pkl_doc *doc, const int64_t *v, int n, pkl_type kind)
{
    pkl_value *items[TI_MAX_DIMS > TI_MAX_MESH ? TI_MAX_DIMS : TI_MAX_MESH];
    if (kind == PKL_LIST) {
        pkl_value *l = pkl_new_list(doc);
        for (int i = 0; l && i < n; i++) {
            pkl_value *x = pkl_new_int(doc, v[i]);
            if (x == NULL || pkl_seq_append(doc, l, x)) return NULL;
        }
        return l;
    }
    for (int i = 0; i < n; i++)
        if ((items[i] = pkl_new_int(doc, v[i])) == NULL) return NULL;
    return pkl_new_tuple(doc, (size_t)n, items);
}

/* (0, 1, ..., n-1) as a tuple or a list. */
static pkl_value *range_seq(pkl_doc *doc, int64_t n, pkl_type kind)
{
    pkl_value *l = pkl_new_list(doc);
    for (int64_t i = 0; l && i < n; i++) {
        pkl_value *x = pkl_new_int(doc, i);
        if (x == NULL || pkl_seq_append(doc, l, x)) return NULL;
    }
    if (l == NULL || kind == PKL_LIST) return l;
    return pkl_new_tuple(doc, l->u.seq.n, l->u.seq.items);
}

static pkl_value *slot_get(pkl_value *state, const char *name, pkl_value **dict)
{
    if (state == NULL) return NULL;
    if (state->type == PKL_DICT) {
        *dict = state;
        return pkl_dict_get(state, name);
    }
    if (state->type == PKL_TUPLE && state->u.seq.n == 2)
        for (int i = 0; i < 2; i++) {
            pkl_value *v = pkl_dict_get(state->u.seq.items[i], name);
            if (v) {
                *dict = state->u.seq.items[i];
                return v;
            }
        }
    return NULL;
}

bool dtm_match(pkl_value *v, dtm_parts *p)
{
    size_t n;
    memset(p, 0, sizeof *p);
    if (!pkl_obj_is(v, "torch._tensor", "_rebuild_from_type_v2")) return false;
    pkl_value *const *a = pkl_args(v, &n);
    if (a == NULL || n < 4 || !pkl_is_global(a[1], "torch.distributed.*", "DTensor")) return false;
    p->local = slot_get(a[3], "_local_tensor", &p->slots);
    p->spec = slot_get(a[3], "_spec", &p->slots);
    p->mesh = pkl_attr(p->spec, "mesh");
    return p->local && p->spec && pkl_obj_is(p->local, "torch._utils", "_rebuild_tensor_v2") &&
           pkl_obj_is(p->mesh, "torch.distributed.*", "DeviceMesh");
}

/* The persistent-id tuple ('storage', cls, key, location, numel) of a tensor call. */
static pkl_value *pid_of(const pkl_value *tensor)
{
    size_t n, m;
    pkl_value *const *a = pkl_args(tensor, &n);
    if (a == NULL || n < 4 || a[0]->type != PKL_PERSID) return NULL;
    pkl_value *pid = a[0]->u.persid.pid;
    if (pkl_items(pid, &m) == NULL || pid->type != PKL_TUPLE || m < 5) return NULL;
    return pid;
}

bool dtm_storage_of(const pkl_value *tensor, const char **key, dt_type *dtype)
{
    pkl_value *pid = pid_of(tensor);
    if (pid == NULL || pid->u.seq.items[1]->type != PKL_GLOBAL) return false;
    *key = pkl_get_str(pid->u.seq.items[2]);
    *dtype = dt_from_storage_class(pid->u.seq.items[1]->u.global.name);
    return *key != NULL && *dtype != DT_INVALID;
}

int dtm_set_local(pkl_doc *doc, pkl_value *local, const dtm_view *v, const char **storage_key, fm_err *e)
{
    pkl_value *pid = pid_of(local);
    if (pid == NULL || local->u.obj.args->type != PKL_TUPLE || pkl_get_str(pid->u.seq.items[2]) == NULL)
        return fm_fail(e, FM_EFORMAT, "local tensor is not _rebuild_tensor_v2(storage, offset, size, stride, ...)");
    pkl_value **items = local->u.obj.args->u.seq.items;
    /* the pid tuple is replaced whole: torch writes a fresh one per tensor */
    pkl_value *pi[8];
    size_t np = pid->u.seq.n < 8 ? pid->u.seq.n : 8;
    memcpy(pi, pid->u.seq.items, sizeof(pkl_value *) * np);
    pi[4] = pkl_new_int(doc, (int64_t)v->storage_numel);
    pkl_value *npid = pi[4] ? pkl_new_tuple(doc, np, pi) : NULL;
    pkl_value *nper = npid ? pkl_new_persid(doc, npid) : NULL;
    pkl_value *off = pkl_new_int(doc, v->offset);
    pkl_value *size = int_seq(doc, v->shape, v->ndim, PKL_TUPLE);
    pkl_value *stride = int_seq(doc, v->stride, v->ndim, PKL_TUPLE);
    if (nper == NULL || off == NULL || size == NULL || stride == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    items[0] = nper;
    items[1] = off;
    items[2] = size;
    items[3] = stride;
    if (storage_key) *storage_key = pkl_get_str(pi[2]);
    return 0;
}

/* A copy of placement object p with its 'dim' set to d. */
static pkl_value *shard_with_dim(pkl_doc *doc, const pkl_value *p, int d)
{
    pkl_value *o = pkl_new_obj(doc, p->u.obj.kind, p->u.obj.callable, pkl_new_tuple(doc, 0, NULL));
    pkl_value *st = pkl_new_dict(doc);
    if (o == NULL || st == NULL) return NULL;
    const pkl_value *old = p->u.obj.state;
    for (size_t i = 0; old && old->type == PKL_DICT && i < old->u.dict.n; i++)
        if (pkl_dict_set(doc, st, old->u.dict.keys[i], old->u.dict.vals[i])) return NULL;
    pkl_value *k = pkl_new_cstr(doc, "dim"), *v = pkl_new_int(doc, d);
    if (k == NULL || v == NULL || pkl_dict_set(doc, st, k, v)) return NULL;
    o->u.obj.state = st;
    return o;
}

/* shard_order (torch 2.9+): one ShardOrderEntry(tensor_dim, mesh_dims) per
 * sharded tensor dim; FSDP2 shards one dim, so one entry is rewritten. */
static int set_shard_order(pkl_doc *doc, pkl_value *spec, int dim, fm_err *e)
{
    pkl_value *so = pkl_attr(spec, "shard_order");
    size_t n, na;
    if (so == NULL || so->type == PKL_NONE) return 0;
    pkl_value *const *it = pkl_items(so, &n);
    if (it == NULL || n != 1 || !pkl_obj_is(it[0], "torch.distributed.*", "ShardOrderEntry"))
        return fm_fail(e, FM_EUNSUPPORTED, "DTensorSpec shard_order is not one ShardOrderEntry");
    pkl_value *const *a = pkl_args(it[0], &na);
    if (a == NULL || na != 2) return fm_fail(e, FM_EUNSUPPORTED, "ShardOrderEntry is not (tensor_dim, mesh_dims)");
    int64_t old;
    if (pkl_get_int(a[0], &old) && old == dim) return 0;
    pkl_value *args[2] = {pkl_new_int(doc, dim), a[1]};
    pkl_value *ent = args[0] ? pkl_new_obj(doc, it[0]->u.obj.kind, it[0]->u.obj.callable, pkl_new_tuple(doc, 2, args)) : NULL;
    pkl_value *tup = ent ? pkl_new_tuple(doc, 1, &ent) : NULL;
    if (tup == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    return set_attr(doc, spec, "shard_order", tup, e);
}

int dtm_set_placements(pkl_doc *doc, pkl_value *spec, const int *shard_dim, int n, bool clear_hash, fm_err *e)
{
    size_t np;
    pkl_value *pl = pkl_attr(spec, "placements");
    pkl_value *const *it = pkl_items(pl, &np);
    if (it == NULL || (int)np != n || n > TI_MAX_MESH)
        return fm_fail(e, FM_EUNSUPPORTED, "DTensorSpec has %zu placements, %d expected", it ? np : 0, n);
    pkl_value *items[TI_MAX_MESH];
    bool changed = false;
    int sharded = -1;
    for (int i = 0; i < n; i++) {
        items[i] = it[i];
        bool is_shard = pkl_obj_is(it[i], "torch.distributed.*", "Shard");
        bool is_repl = pkl_obj_is(it[i], "torch.distributed.*", "Replicate");
        if (!is_shard && !is_repl) {
            char cls[160];
            return fm_fail(e, FM_EUNSUPPORTED, "placement %s cannot be resharded (only Shard and Replicate)",
                           pkl_obj_class_name(it[i], cls, sizeof cls));
        }
        if (is_repl != (shard_dim[i] < 0))
            return fm_fail(e, FM_EINTERNAL, "placement kind of mesh dim %d would change", i);
        if (is_repl) continue;
        int64_t d;
        if (!pkl_get_int(pkl_attr(it[i], "dim"), &d)) return fm_fail(e, FM_EFORMAT, "Shard placement without a dim");
        if (sharded >= 0) return fm_fail(e, FM_EUNSUPPORTED, "more than one Shard placement cannot be resharded");
        sharded = shard_dim[i];
        if (d == shard_dim[i]) continue;
        if ((items[i] = shard_with_dim(doc, it[i], shard_dim[i])) == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        changed = true;
    }
    if (changed) FM_TRY(set_attr(doc, spec, "placements", pkl_new_tuple(doc, (size_t)n, items), e));
    if (sharded >= 0) FM_TRY(set_shard_order(doc, spec, sharded, e));
    if (clear_hash && pkl_attr(spec, "_hash")) FM_TRY(set_attr(doc, spec, "_hash", pkl_new_none(doc), e));
    return 0;
}

/* ---- DeviceMesh ---- */

static void coord_of(const dtm_mesh *m, int64_t *c)
{
    int64_t r = m->rank;
    for (int i = m->ndim - 1; i >= 0; i--) {
        c[i] = r % m->shape[i];
        r /= m->shape[i];
    }
}

static void row_major(const int64_t *shape, int n, int64_t *stride)
{
    int64_t s = 1;
    for (int i = n - 1; i >= 0; i--) {
        stride[i] = s;
        s *= shape[i] > 1 ? shape[i] : 1;
    }
}

static int64_t mesh_size(const dtm_mesh *m)
{
    int64_t n = 1;
    for (int i = 0; i < m->ndim; i++) n *= m->shape[i];
    return n;
}

/* The rank tensor (2.6 `mesh`: the mesh's shape; 2.9+ `_rank_map`: flat). */
static int set_rank_tensor(pkl_doc *doc, pkl_value *t, const dtm_mesh *m, bool flat, const char **key, dt_type *dt,
                           fm_err *e)
{
    dtm_view v = {0};
    v.storage_numel = (uint64_t)mesh_size(m);
    if (flat) {
        v.ndim = 1;
        v.shape[0] = mesh_size(m);
    } else {
        v.ndim = m->ndim;
        memcpy(v.shape, m->shape, sizeof(int64_t) * (size_t)m->ndim);
    }
    row_major(v.shape, v.ndim, v.stride);
    if (!dtm_storage_of(t, key, dt) || (*dt != DT_I32 && *dt != DT_I64))
        return fm_fail(e, FM_EUNSUPPORTED, "device mesh rank tensor is not an int32/int64 tensor");
    return dtm_set_local(doc, t, &v, key, e);
}

/* 2.6: [(tag, ranks of this rank's group along dim i, name), ...] */
static int set_group_infos(pkl_doc *doc, pkl_value *mesh, pkl_value *infos, const dtm_mesh *m, fm_err *e)
{
    size_t n, k;
    pkl_value *const *it = pkl_items(infos, &n);
    if (it == NULL || (int)n != m->ndim || infos->type != PKL_LIST)
        return fm_fail(e, FM_EUNSUPPORTED, "DeviceMesh _dim_group_infos is not one (tag, ranks, name) per mesh dim");
    pkl_value *list = pkl_new_list(doc);
    int64_t c[TI_MAX_MESH], stride[TI_MAX_MESH];
    coord_of(m, c);
    row_major(m->shape, m->ndim, stride);
    int64_t base = m->rank;
    for (int i = 0; list && i < m->ndim; i++) {
        pkl_value *const *g = pkl_items(it[i], &k);
        if (g == NULL || it[i]->type != PKL_TUPLE || k < 2 || g[1]->type != PKL_LIST)
            return fm_fail(e, FM_EUNSUPPORTED, "DeviceMesh _dim_group_infos entry %d is not (tag, ranks, ...)", i);
        int64_t first = base - c[i] * stride[i];
        pkl_value *ranks = pkl_new_list(doc);
        for (int64_t j = 0; ranks && j < m->shape[i]; j++) {
            pkl_value *x = pkl_new_int(doc, first + j * stride[i]);
            if (x == NULL || pkl_seq_append(doc, ranks, x)) ranks = NULL;
        }
        pkl_value *items[8];
        size_t nk = k < 8 ? k : 8;
        memcpy(items, g, sizeof(pkl_value *) * nk);
        items[1] = ranks;
        pkl_value *tup = ranks ? pkl_new_tuple(doc, nk, items) : NULL;
        if (tup == NULL || pkl_seq_append(doc, list, tup)) list = NULL;
    }
    if (list == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    return set_attr(doc, mesh, "_dim_group_infos", list, e);
}

/* 2.9+: _MeshLayout(shape, stride) of plain ints, replaced whole. */
static int set_layout(pkl_doc *doc, pkl_value *mesh, pkl_value *lay, const dtm_mesh *m, fm_err *e)
{
    int64_t old[TI_MAX_MESH], stride[TI_MAX_MESH];
    if (!pkl_obj_is(lay, "torch.distributed.*", "_MeshLayout") || lay->u.obj.state == NULL ||
        lay->u.obj.state->type != PKL_DICT || pkl_get_int_seq(pkl_attr(lay, "shape"), old, TI_MAX_MESH) != m->ndim ||
        pkl_attr(lay, "stride") == NULL)
        return fm_fail(e, FM_EUNSUPPORTED,
                       "DeviceMesh _layout is not a flat _MeshLayout(shape, stride) of %d dims (torch release not "
                       "supported by reshard)", m->ndim);
    row_major(m->shape, m->ndim, stride);
    pkl_value *o = pkl_new_obj(doc, lay->u.obj.kind, lay->u.obj.callable, pkl_new_tuple(doc, 0, NULL));
    pkl_value *st = pkl_new_dict(doc);
    if (o == NULL || st == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    const pkl_value *d = lay->u.obj.state;
    for (size_t i = 0; i < d->u.dict.n; i++) {
        const char *k = pkl_get_str(d->u.dict.keys[i]);
        pkl_value *v = d->u.dict.vals[i];
        if (k && strcmp(k, "shape") == 0) v = int_seq(doc, m->shape, m->ndim, PKL_TUPLE);
        else if (k && strcmp(k, "stride") == 0) v = int_seq(doc, stride, m->ndim, PKL_TUPLE);
        if (v == NULL || pkl_dict_set(doc, st, d->u.dict.keys[i], v)) return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    o->u.obj.state = st;
    return set_attr(doc, mesh, "_layout", o, e);
}

/* Fields that do not depend on the mesh size or the rank, or that must be empty. */
static const char *const KEEP[] = {"device_type", "_device_type", "mesh_dim_names", "_mesh_dim_names", "_thread_id",
                                   "_hash", "_dim_group_names", "_root_mesh", "_parent_mesh", "_flatten_mapping"};

static int check_kept(const char *k, const pkl_value *v, fm_err *e)
{
    if ((strcmp(k, "_root_mesh") == 0 || strcmp(k, "_parent_mesh") == 0) && v->type != PKL_NONE)
        return fm_fail(e, FM_EUNSUPPORTED, "the DTensors live on a sub-mesh (%s is set): not supported by reshard", k);
    const pkl_value *d = pkl_as_dict(v);
    if (strcmp(k, "_flatten_mapping") == 0 && (d == NULL || d->u.dict.n != 0))
        return fm_fail(e, FM_EUNSUPPORTED, "the device mesh has flattened sub-meshes: not supported by reshard");
    return 0;
}

int dtm_set_mesh(pkl_doc *doc, pkl_value *mesh, const dtm_mesh *m, const char **rank_storage_key, dt_type *rank_dtype,
                 fm_err *e)
{
    pkl_value *st = attr_dict(mesh, "_coordinate_on_dim");
    if (st == NULL) st = mesh->u.obj.state;
    if (st == NULL || st->type != PKL_DICT) return fm_fail(e, FM_EUNSUPPORTED, "DeviceMesh state is not a dict");
    *rank_storage_key = NULL;
    int64_t c[TI_MAX_MESH];
    coord_of(m, c);
    size_t n = st->u.dict.n; /* fields are replaced in place: same key order */
    for (size_t i = 0; i < n; i++) {
        const char *k = pkl_get_str(st->u.dict.keys[i]);
        pkl_value *v = st->u.dict.vals[i];
        if (k == NULL) return fm_fail(e, FM_EFORMAT, "DeviceMesh field %zu has no name", i);
        bool kept = false;
        for (size_t j = 0; j < FM_ARRAY_LEN(KEEP); j++) kept = kept || strcmp(k, KEEP[j]) == 0;
        if (kept) {
            FM_TRY(check_kept(k, v, e));
        } else if (strcmp(k, "mesh") == 0 || strcmp(k, "_rank_map") == 0) {
            if (!pkl_obj_is(v, "torch._utils", "_rebuild_tensor_v2"))
                return fm_fail(e, FM_EUNSUPPORTED, "DeviceMesh %s is not a tensor", k);
            FM_TRY(set_rank_tensor(doc, v, m, k[0] == '_', rank_storage_key, rank_dtype, e));
        } else if (strcmp(k, "_layout") == 0) {
            FM_TRY(set_layout(doc, mesh, v, m, e));
        } else if (strcmp(k, "_flatten_mesh_list") == 0 || strcmp(k, "_flatten_rank_map") == 0) {
            FM_TRY(set_attr(doc, mesh, k, range_seq(doc, mesh_size(m), v->type == PKL_LIST ? PKL_LIST : PKL_TUPLE), e));
        } else if (strcmp(k, "_rank") == 0) {
            FM_TRY(set_attr(doc, mesh, k, pkl_new_int(doc, m->rank), e));
        } else if (strcmp(k, "_coordinate_on_dim") == 0) {
            FM_TRY(set_attr(doc, mesh, k, int_seq(doc, c, m->ndim, v->type == PKL_LIST ? PKL_LIST : PKL_TUPLE), e));
        } else if (strcmp(k, "_dim_group_infos") == 0) {
            FM_TRY(set_group_infos(doc, mesh, v, m, e));
        } else {
            return fm_fail(e, FM_EUNSUPPORTED,
                           "DeviceMesh field '%s' is not known to reshard (a torch release whose mesh layout is not "
                           "supported)", k);
        }
    }
    if (*rank_storage_key == NULL)
        return fm_fail(e, FM_EUNSUPPORTED, "DeviceMesh has no rank tensor (mesh or _rank_map)");
    return 0;
}
