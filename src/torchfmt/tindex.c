/* tindex.c - state dict pickle -> tensor index (see tindex.h). */
#include "torchfmt/tindex.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/mesh.h"

#define TI_MAX_PKL (1u << 30) /* data.pkl larger than 1 GiB is not a state dict we expect */

/* What parsing one file's values needs besides the value. */
typedef struct ti_ctx {
    ptz_file *zip;
    int rank, world;             /* the file's rank and the world size, -1 = unknown */
    const pkl_value *mesh_obj;   /* the DeviceMesh `mesh` was resolved from */
    int mesh_npl;
    tm_mesh mesh;
} ti_ctx;

/* ---- small helpers over the pickle tree ---- */

/* A value of a __setstate__-style state: a dict, or (dict_or_None, slots). */
static pkl_value *state_get(const pkl_value *state, const char *name)
{
    if (state == NULL) return NULL;
    if (state->type == PKL_DICT) return pkl_dict_get(state, name);
    if (state->type == PKL_TUPLE && state->u.seq.n == 2) {
        pkl_value *v = pkl_dict_get(state->u.seq.items[0], name);
        return v ? v : pkl_dict_get(state->u.seq.items[1], name);
    }
    return NULL;
}

/* The REDUCE/NEWOBJ arguments of obj if it is a call of module.name. */
static pkl_value *const *call_args(const pkl_value *obj, const char *module, const char *name, size_t *n)
{
    if (!pkl_obj_is(obj, module, name)) return NULL;
    return pkl_args(obj, n);
}

static dt_type dtype_of_global(const pkl_value *g)
{
    if (g == NULL || g->type != PKL_GLOBAL || strcmp(g->u.global.module, "torch") != 0) return DT_INVALID;
    return dt_from_torch_name(g->u.global.name);
}

static const char *class_name(const pkl_value *v, char *buf, size_t len)
{
    if (v && v->type == PKL_GLOBAL) {
        snprintf(buf, len, "%s.%s", v->u.global.module, v->u.global.name);
        return buf;
    }
    if (v && v->type == PKL_OBJ) return pkl_obj_class_name(v, buf, len);
    snprintf(buf, len, "%s", v ? pkl_type_name(v->type) : "nothing");
    return buf;
}

uint64_t ti_view_numel(const ti_view *v)
{
    uint64_t n = 1;
    for (int d = 0; d < v->ndim; d++) n *= (uint64_t)v->shape[d];
    return n;
}

bool ti_view_contiguous(const ti_view *v)
{
    int64_t expect = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] != 1 && v->stride[d] != expect) return false;
        expect *= v->shape[d];
    }
    return true;
}

void ti_chunk(int64_t n, int64_t k, int64_t c, int64_t *start, int64_t *len)
{
    int64_t size = k > 0 ? (n + k - 1) / k : n;
    int64_t s = size * c;
    if (s > n) s = n;
    int64_t l = n - s < size ? n - s : size;
    *start = s;
    *len = l < 0 ? 0 : l;
}

const char *ti_format_shape(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* ---- storages and plain tensors ---- */

/* ('storage', torch.<X>Storage, key, location, numel) -> record name, dtype, bytes */
static int parse_storage(const pkl_value *persid, ptz_file *zip, dt_type v3_dtype, ti_view *v, fm_err *e)
{
    if (persid == NULL || persid->type != PKL_PERSID)
        return fm_fail(e, FM_EFORMAT, "tensor storage is not a persistent id");
    size_t n;
    pkl_value *const *t = pkl_items(persid->u.persid.pid, &n);
    const char *tag = t && n == 5 ? pkl_get_str(t[0]) : NULL;
    if (tag == NULL || strcmp(tag, "storage") != 0)
        return fm_fail(e, FM_EFORMAT, "unexpected persistent id (not a ('storage', type, key, location, numel) tuple)");
    const pkl_value *type = t[1];
    const char *key = pkl_get_str(t[2]);
    int64_t numel;
    if (type == NULL || type->type != PKL_GLOBAL || key == NULL || !pkl_get_int(t[4], &numel) || numel < 0)
        return fm_fail(e, FM_EFORMAT, "malformed storage persistent id");
    if (strcmp(type->u.global.name, "UntypedStorage") == 0) {
        if (v3_dtype == DT_INVALID)
            return fm_fail(e, FM_EFORMAT, "untyped storage %s without a dtype", key);
        v->dtype = v3_dtype;
        v->storage_nbytes = (uint64_t)numel;
    } else {
        v->dtype = dt_from_storage_class(type->u.global.name);
        if (v->dtype == DT_INVALID)
            return fm_fail(e, FM_EUNSUPPORTED, "storage type torch.%s is not supported", type->u.global.name);
        if (fm_mul_ovf((uint64_t)numel, dt_size(v->dtype), &v->storage_nbytes))
            return fm_fail(e, FM_EFORMAT, "storage %s: size overflows", key);
    }
    v->storage = fm_asprintf("data/%s", key);
    if (v->storage == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    ptz_record_info info;
    if (!ptz_find(zip, v->storage, &info))
        return fm_fail(e, FM_EFORMAT, "storage record %s is missing from the archive", v->storage);
    if (info.size != v->storage_nbytes)
        return fm_fail(e, FM_EFORMAT, "storage record %s holds %" PRIu64 " bytes but the pickle says %" PRIu64,
                       v->storage, info.size, v->storage_nbytes);
    return 0;
}

/* Every element of the view must lie inside the storage. */
static int check_view_bounds(const ti_view *v, fm_err *e)
{
    if (v->offset < 0) return fm_fail(e, FM_EFORMAT, "negative storage offset");
    uint64_t last = (uint64_t)v->offset, numel = 1;
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] < 0 || v->stride[d] < 0) return fm_fail(e, FM_EFORMAT, "negative size or stride");
        if (fm_mul_ovf(numel, (uint64_t)v->shape[d], &numel)) return fm_fail(e, FM_EFORMAT, "size overflows");
    }
    if (numel == 0) return 0;
    for (int d = 0; d < v->ndim; d++) {
        uint64_t step;
        if (fm_mul_ovf((uint64_t)(v->shape[d] - 1), (uint64_t)v->stride[d], &step) || fm_add_ovf(last, step, &last))
            return fm_fail(e, FM_EFORMAT, "view extent overflows");
    }
    uint64_t end;
    if (fm_mul_ovf(last + 1, dt_size(v->dtype), &end) || end > v->storage_nbytes)
        return fm_fail(e, FM_EFORMAT, "view (offset %" PRId64 ") reaches past the end of storage %s (%" PRIu64 " bytes)",
                       v->offset, v->storage, v->storage_nbytes);
    return 0;
}

static int int_tuple(const pkl_value *v, int64_t *out, int *n, const char *what, fm_err *e)
{
    int k = pkl_get_int_seq(v, out, TI_MAX_DIMS);
    if (k < 0) return fm_fail(e, FM_EFORMAT, "%s is not a tuple of at most %d integers", what, TI_MAX_DIMS);
    *n = k;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata]) */
static int parse_rebuild_tensor(const pkl_value *obj, ptz_file *zip, ti_view *v, fm_err *e)
{
    size_t n;
    pkl_value *const *a = call_args(obj, "torch._utils", "_rebuild_tensor_v2", &n);
    dt_type v3 = DT_INVALID;
    size_t meta_at = 6;
    if (a == NULL) {
        a = call_args(obj, "torch._utils", "_rebuild_tensor_v3", &n);
        if (a == NULL || n < 7) return fm_fail(e, FM_EFORMAT, "not a tensor rebuild call");
        v3 = dtype_of_global(a[6]);
        if (v3 == DT_INVALID) return fm_fail(e, FM_EUNSUPPORTED, "unsupported tensor dtype");
        meta_at = 7;
    }
    if (n < 6) return fm_fail(e, FM_EFORMAT, "_rebuild_tensor_v2 takes 6 arguments, got %zu", n);
    int64_t off;
    int nd_shape = 0, nd_stride = 0;
    if (!pkl_get_int(a[1], &off)) return fm_fail(e, FM_EFORMAT, "storage offset is not an integer");
    FM_TRY(int_tuple(a[2], v->shape, &nd_shape, "tensor size", e));
    FM_TRY(int_tuple(a[3], v->stride, &nd_stride, "tensor stride", e));
    if (nd_shape != nd_stride) return fm_fail(e, FM_EFORMAT, "size and stride have different lengths");
    v->ndim = nd_shape;
    v->offset = off;
    if (n > meta_at) {
        const pkl_value *meta = pkl_as_dict(a[meta_at]);
        bool flag = false;
        if (meta && ((pkl_get_bool(pkl_dict_get(meta, "conj"), &flag) && flag) ||
                     (pkl_get_bool(pkl_dict_get(meta, "neg"), &flag) && flag)))
            return fm_fail(e, FM_EUNSUPPORTED, "tensors with the conjugate or negative bit set are not supported");
    }
    FM_TRY(parse_storage(a[0], zip, v3, v, e));
    return check_view_bounds(v, e);
}

/* Plain tensor, possibly wrapped as a Parameter or a device tensor. */
static int parse_plain(const pkl_value *obj, ptz_file *zip, ti_view *v, int depth, fm_err *e)
{
    size_t n;
    pkl_value *const *a;
    if (depth > 4) return fm_fail(e, FM_EFORMAT, "tensor wrappers nested too deeply");
    if ((a = call_args(obj, "torch._utils", "_rebuild_parameter", &n)) ||
        (a = call_args(obj, "torch._utils", "_rebuild_parameter_with_state", &n)) ||
        (a = call_args(obj, "torch._utils", "_rebuild_device_tensor_from_cpu_tensor", &n))) {
        if (n < 1) return fm_fail(e, FM_EFORMAT, "parameter without data");
        return parse_plain(a[0], zip, v, depth + 1, e);
    }
    if (pkl_obj_is(obj, "torch._utils", "_rebuild_meta_tensor_no_storage"))
        return fm_fail(e, FM_EUNSUPPORTED, "a meta tensor (no data was saved)");
    return parse_rebuild_tensor(obj, zip, v, e);
}

static bool is_tensor_call(const pkl_value *v)
{
    return pkl_obj_is(v, "torch._utils", NULL) || pkl_obj_is(v, "torch._tensor", "_rebuild_from_type_v2") ||
           pkl_obj_is(v, "torch._tensor", "_rebuild_from_type");
}

/* ---- DTensor ---- */

typedef struct placement {
    char kind; /* 'S' shard, 'R' replicate */
    int dim;
} placement;

static int parse_placements(const pkl_value *tuple, placement *pl, int *n, char *text, size_t tlen, fm_err *e)
{
    size_t k;
    pkl_value *const *items = pkl_items(tuple, &k);
    if (items == NULL || k == 0 || k > TI_MAX_MESH)
        return fm_fail(e, FM_EFORMAT, "DTensor placements are not a tuple of 1 to %d placements", TI_MAX_MESH);
    size_t o = (size_t)snprintf(text, tlen, "(");
    for (size_t i = 0; i < k; i++) {
        char cls[256];
        int64_t dim;
        if (pkl_obj_is(items[i], "torch.distributed.*", "Shard")) {
            if (!pkl_get_int(pkl_attr(items[i], "dim"), &dim) || dim < 0 || dim >= TI_MAX_DIMS)
                return fm_fail(e, FM_EFORMAT, "Shard placement without a valid dim");
            pl[i] = (placement){'S', (int)dim};
            o += (size_t)snprintf(text + o, o < tlen ? tlen - o : 0, "Shard(dim=%d),", (int)dim);
        } else if (pkl_obj_is(items[i], "torch.distributed.*", "Replicate")) {
            pl[i] = (placement){'R', 0};
            o += (size_t)snprintf(text + o, o < tlen ? tlen - o : 0, "Replicate(),");
        } else if (pkl_obj_is(items[i], "torch.distributed.*", "Partial") ||
                   pkl_obj_is(items[i], "torch.distributed.*", "_Partial")) {
            return fm_fail(e, FM_EUNSUPPORTED,
                           "placement Partial (pending reduction) is not supported: the shards must be summed, "
                           "save a reduced state dict instead");
        } else if (pkl_obj_is(items[i], "torch.distributed.*", "_StridedShard")) {
            return fm_fail(e, FM_EUNSUPPORTED,
                           "placement _StridedShard (FSDP combined with tensor parallelism) is not supported");
        } else {
            return fm_fail(e, FM_EUNSUPPORTED, "unknown DTensor placement %s",
                           class_name(items[i], cls, sizeof cls));
        }
    }
    if (o < tlen) snprintf(text + o, tlen - o, ")");
    *n = (int)k;
    return 0;
}

int ti_read_ints(const pkl_value *obj, ptz_file *zip, size_t max, int64_t **vals, size_t *n, int64_t *shape, int *ndim,
                 fm_err *e)
{
    ti_view v = {0};
    *vals = NULL;
    *n = 0;
    int rc = parse_plain(obj, zip, &v, 0, e);
    uint64_t numel = rc == 0 ? ti_view_numel(&v) : 0;
    if (rc == 0 && ((v.dtype != DT_I32 && v.dtype != DT_I64) || numel > max))
        rc = fm_fail(e, FM_EFORMAT, "not a small integer tensor");
    int64_t *out = rc == 0 ? malloc(sizeof(int64_t) * (numel ? numel : 1)) : NULL;
    if (rc == 0 && out == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    ptz_rec *r = NULL;
    if (rc == 0) rc = ptz_rec_open(zip, v.storage, &r, e);
    size_t es = dt_size(v.dtype);
    for (uint64_t i = 0; rc == 0 && i < numel; i++) {
        int64_t rem = (int64_t)i, pos = v.offset;
        for (int d = v.ndim - 1; d >= 0; d--) {
            pos += (rem % v.shape[d]) * v.stride[d];
            rem /= v.shape[d];
        }
        const uint8_t *p;
        rc = ptz_rec_get(r, (uint64_t)pos * es, es, &p, e);
        if (rc) break;
        if (es == 4) {
            int32_t x;
            memcpy(&x, p, 4);
            out[i] = ptz_big_endian(zip) ? (int32_t)__builtin_bswap32((uint32_t)x) : x;
        } else {
            int64_t x;
            memcpy(&x, p, 8);
            out[i] = ptz_big_endian(zip) ? (int64_t)__builtin_bswap64((uint64_t)x) : x;
        }
    }
    if (r) ptz_rec_close(r);
    free(v.storage);
    if (rc) {
        free(out);
        return rc;
    }
    *vals = out;
    *n = (size_t)numel;
    *ndim = v.ndim;
    memcpy(shape, v.shape, sizeof(int64_t) * (size_t)v.ndim);
    return 0;
}

/* Mesh sizes and this rank's coordinate (torchfmt/mesh). A state dict's
 * DTensors share one pickled DeviceMesh: the last one read is reused. */
static int parse_mesh(const pkl_value *mesh, ti_ctx *c, int npl, ti_entry *en, fm_err *e)
{
    if (mesh == NULL || mesh != c->mesh_obj || npl != c->mesh_npl) {
        c->mesh_obj = NULL;
        FM_TRY(tm_read(mesh, c->zip, c->rank, c->world, npl, &c->mesh, e));
        c->mesh_obj = mesh;
        c->mesh_npl = npl;
    }
    en->mesh_ndim = c->mesh.ndim;
    memcpy(en->mesh_shape, c->mesh.shape, sizeof(int64_t) * (size_t)c->mesh.ndim);
    memcpy(en->coord, c->mesh.coord, sizeof(int64_t) * (size_t)c->mesh.ndim);
    return 0;
}

/* Applies each mesh dim's placement to the global shape (torch's
 * compute_local_shape_and_global_offset). */
static int dtensor_region(ti_entry *en, const placement *pl, int npl, ti_piece *p, fm_err *e)
{
    if (npl != en->mesh_ndim)
        return fm_fail(e, FM_EFORMAT, "%d placements for a %d-D mesh", npl, en->mesh_ndim);
    int64_t local[TI_MAX_DIMS];
    memcpy(local, en->gshape, sizeof local);
    memset(p->goff, 0, sizeof p->goff);
    for (int i = 0; i < npl; i++) {
        if (en->coord[i] < 0 || en->coord[i] >= en->mesh_shape[i])
            return fm_fail(e, FM_EFORMAT, "mesh coordinate out of range");
        if (pl[i].kind == 'R') {
            if (en->coord[i] != 0) p->replica = true;
            continue;
        }
        int d = pl[i].dim;
        if (d >= en->ndim) return fm_fail(e, FM_EFORMAT, "Shard(dim=%d) of a %d-D tensor", d, en->ndim);
        int64_t start, len;
        ti_chunk(local[d], en->mesh_shape[i], en->coord[i], &start, &len);
        p->goff[d] += start;
        local[d] = len;
    }
    char a[128], b[128];
    if (p->view.ndim != en->ndim || memcmp(local, p->view.shape, sizeof(int64_t) * (size_t)en->ndim) != 0)
        return fm_fail(e, FM_EFORMAT, "local tensor shape %s does not match %s of global shape %s at mesh coordinate",
                       ti_format_shape(p->view.ndim, p->view.shape, a, sizeof a), en->placements,
                       ti_format_shape(en->ndim, en->gshape, b, sizeof b));
    return 0;
}

/* Global dtype and shape from _rebuild_wrapper_subclass(cls, dtype, size, stride, ...). */
static int parse_wrapper_args(const pkl_value *func, const pkl_value *args, ti_entry *en, fm_err *e)
{
    size_t n;
    pkl_value *const *a = pkl_items(args, &n);
    if (!pkl_is_global(func, "torch._utils", "_rebuild_wrapper_subclass") || a == NULL || n < 3)
        return fm_fail(e, FM_EFORMAT, "tensor subclass not rebuilt by _rebuild_wrapper_subclass");
    en->dtype = dtype_of_global(a[1]);
    if (en->dtype == DT_INVALID) return fm_fail(e, FM_EUNSUPPORTED, "unsupported tensor dtype");
    return int_tuple(a[2], en->gshape, &en->ndim, "global size", e);
}

static int add_piece(ti_entry *en, ti_piece **out, fm_err *e)
{
    ti_piece *p = realloc(en->pieces, sizeof *p * (en->npieces + 1));
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    en->pieces = p;
    *out = &p[en->npieces++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* torch >= 2.9 pickles shard_order: per tensor dim, the mesh dims that shard
 * it in the order they were applied. Only the default (ascending mesh dims,
 * as placements are applied left to right) is read; another order lays the
 * blocks out differently and is refused. */
static int check_shard_order(const pkl_value *order, fm_err *e)
{
    size_t n;
    pkl_value *const *entries = pkl_items(order, &n);
    for (size_t i = 0; entries && i < n; i++) {
        size_t na;
        pkl_value *const *a = pkl_args(entries[i], &na);
        int64_t dims[TI_MAX_MESH];
        int nd = a && na == 2 ? pkl_get_int_seq(a[1], dims, TI_MAX_MESH) : -1;
        if (nd < 0) return fm_fail(e, FM_EFORMAT, "DTensor shard_order entry is not a (tensor_dim, mesh_dims) pair");
        for (int k = 1; k < nd; k++)
            if (dims[k] <= dims[k - 1])
                return fm_fail(e, FM_EUNSUPPORTED,
                               "DTensor shard_order applies mesh dims out of order (not the default order); not supported");
    }
    return 0;
}

static int parse_dtensor(const pkl_value *state, ti_ctx *c, ti_entry *en, fm_err *e)
{
    const pkl_value *local = state_get(state, "_local_tensor");
    const pkl_value *spec = state_get(state, "_spec");
    if (local == NULL || spec == NULL) return fm_fail(e, FM_EFORMAT, "DTensor without _local_tensor/_spec");
    placement pl[TI_MAX_MESH];
    int npl = 0;
    FM_TRY(parse_placements(pkl_attr(spec, "placements"), pl, &npl, en->placements, sizeof en->placements, e));
    FM_TRY(parse_mesh(pkl_attr(spec, "mesh"), c, npl, en, e));
    FM_TRY(check_shard_order(pkl_attr(spec, "shard_order"), e));
    /* tensor_meta (global shape/dtype) must agree with the wrapper */
    size_t tn;
    pkl_value *const *tm = pkl_args(pkl_attr(spec, "tensor_meta"), &tn);
    if (tm && tn >= 3) {
        int64_t shape[TI_MAX_DIMS];
        int nd = 0;
        FM_TRY(int_tuple(tm[0], shape, &nd, "tensor_meta shape", e));
        if (nd != en->ndim || memcmp(shape, en->gshape, sizeof(int64_t) * (size_t)nd) != 0)
            return fm_fail(e, FM_EFORMAT, "DTensor tensor_meta shape disagrees with the wrapper size");
    }
    ti_piece *p;
    FM_TRY(add_piece(en, &p, e));
    FM_TRY(parse_plain(local, c->zip, &p->view, 0, e));
    if (p->view.dtype != en->dtype)
        return fm_fail(e, FM_EFORMAT, "local tensor dtype %s differs from the DTensor dtype %s",
                       dt_torch_name(p->view.dtype), dt_torch_name(en->dtype));
    return dtensor_region(en, pl, npl, p, e);
}

/* ---- ShardedTensor ---- */

static int parse_sharded(const pkl_value *state, ptz_file *zip, ti_entry *en, fm_err *e)
{
    size_t n, ns;
    pkl_value *const *st = pkl_items(state, &n);
    if (st == NULL || n < 2 || state->type != PKL_TUPLE)
        return fm_fail(e, FM_EFORMAT, "ShardedTensor state is not the (local_shards, metadata, ...) tuple");
    pkl_value *const *shards = pkl_items(st[0], &ns);
    if (shards == NULL) return fm_fail(e, FM_EFORMAT, "ShardedTensor local_shards is not a list");
    snprintf(en->placements, sizeof en->placements, "ShardedTensor");
    for (size_t i = 0; i < ns; i++) {
        const pkl_value *tensor = pkl_attr(shards[i], "tensor");
        const pkl_value *md = pkl_attr(shards[i], "metadata");
        int64_t offs[TI_MAX_DIMS], sizes[TI_MAX_DIMS];
        int no = 0, nz = 0;
        if (tensor == NULL || md == NULL) return fm_fail(e, FM_EFORMAT, "ShardedTensor shard without tensor/metadata");
        FM_TRY(int_tuple(pkl_attr(md, "shard_offsets"), offs, &no, "shard_offsets", e));
        FM_TRY(int_tuple(pkl_attr(md, "shard_sizes"), sizes, &nz, "shard_sizes", e));
        ti_piece *p;
        FM_TRY(add_piece(en, &p, e));
        FM_TRY(parse_plain(tensor, zip, &p->view, 0, e));
        char a[128], b[128];
        if (no != en->ndim || nz != en->ndim || p->view.ndim != en->ndim ||
            memcmp(sizes, p->view.shape, sizeof(int64_t) * (size_t)nz) != 0)
            return fm_fail(e, FM_EFORMAT, "shard tensor shape %s does not match its metadata sizes %s",
                           ti_format_shape(p->view.ndim, p->view.shape, a, sizeof a),
                           ti_format_shape(nz, sizes, b, sizeof b));
        if (p->view.dtype != en->dtype)
            return fm_fail(e, FM_EFORMAT, "shard dtype %s differs from the ShardedTensor dtype %s",
                           dt_torch_name(p->view.dtype), dt_torch_name(en->dtype));
        memcpy(p->goff, offs, sizeof(int64_t) * (size_t)no);
        for (int d = 0; d < en->ndim; d++)
            if (offs[d] < 0 || offs[d] + sizes[d] > en->gshape[d])
                return fm_fail(e, FM_EFORMAT, "shard at offset %s lies outside the global shape %s",
                               ti_format_shape(no, offs, a, sizeof a), ti_format_shape(en->ndim, en->gshape, b, sizeof b));
    }
    return 0;
}

/* ---- one state-dict value ---- */

static int parse_value(const pkl_value *v, ti_ctx *c, ti_entry *en, fm_err *e)
{
    size_t n;
    pkl_value *const *a = call_args(v, "torch._tensor", "_rebuild_from_type_v2", &n);
    if (a == NULL) {
        en->kind = TI_PLAIN;
        ti_piece *p;
        FM_TRY(add_piece(en, &p, e));
        FM_TRY(parse_plain(v, c->zip, &p->view, 0, e));
        en->dtype = p->view.dtype;
        en->ndim = p->view.ndim;
        memcpy(en->gshape, p->view.shape, sizeof en->gshape);
        return 0;
    }
    if (n < 4) return fm_fail(e, FM_EFORMAT, "_rebuild_from_type_v2 takes 4 arguments, got %zu", n);
    const pkl_value *func = a[0], *type = a[1], *args = a[2], *state = a[3];
    char cls[256];
    if (pkl_is_global(type, "torch.distributed.*", "DTensor")) {
        en->kind = TI_DTENSOR;
        FM_TRY(parse_wrapper_args(func, args, en, e));
        return parse_dtensor(state, c, en, e);
    }
    if (pkl_is_global(type, "torch.distributed.*", "ShardedTensor")) {
        en->kind = TI_SHARDED;
        FM_TRY(parse_wrapper_args(func, args, en, e));
        return parse_sharded(state, c->zip, en, e);
    }
    if (pkl_is_global(type, "torch._tensor", "Tensor") || pkl_is_global(type, "torch", "Tensor") ||
        pkl_is_global(type, "torch.nn.parameter", "Parameter")) {
        /* a plain tensor that carried Python attributes: rebuild func(*args) */
        pkl_value fake = {.type = PKL_OBJ};
        fake.u.obj.kind = PKL_REDUCE;
        fake.u.obj.callable = (pkl_value *)func;
        fake.u.obj.args = (pkl_value *)args;
        return parse_value(&fake, c, en, e);
    }
    return fm_fail(e, FM_EUNSUPPORTED, "tensor subclass %s is not supported", class_name(type, cls, sizeof cls));
}

bool ti_is_tensor(const pkl_value *v) { return is_tensor_call(v); }

int ti_parse(const pkl_value *v, ptz_file *zip, int rank, ti_entry *en, fm_err *e)
{
    ti_ctx c = {.zip = zip, .rank = rank, .world = -1};
    return parse_value(v, &c, en, e);
}

void ti_entry_free(ti_entry *en)
{
    for (size_t i = 0; i < en->npieces; i++) free(en->pieces[i].view.storage);
    free(en->pieces);
    free(en->key);
}

void ti_index_free(ti_index *ix)
{
    if (ix == NULL) return;
    for (size_t i = 0; i < ix->n; i++) ti_entry_free(&ix->entries[i]);
    free(ix->entries);
    free(ix->path);
    memset(ix, 0, sizeof *ix);
}

/* The state dict: the root dict, or the dict under a single wrapper key. */
static const pkl_value *find_state_dict(const pkl_value *root)
{
    const pkl_value *d = pkl_as_dict(root);
    if (d == NULL) return NULL;
    for (size_t i = 0; i < d->u.dict.n; i++)
        if (is_tensor_call(d->u.dict.vals[i])) return d;
    static const char *wrappers[] = {"model", "state_dict", "module", "model_state_dict"};
    for (size_t i = 0; i < FM_ARRAY_LEN(wrappers); i++) {
        const pkl_value *inner = pkl_as_dict(pkl_dict_get(d, wrappers[i]));
        if (inner) return inner;
    }
    return d;
}

static int build_entries(const pkl_value *root, ti_ctx *c, ti_index *out, fm_err *e);

int ti_build_ws(const pkl_value *root, ptz_file *zip, int rank, int world, ti_index *out, fm_err *e)
{
    ti_ctx c = {.zip = zip, .rank = rank, .world = world};
    int rc = build_entries(root, &c, out, e);
    if (rc) ti_index_free(out); /* nothing half-built survives an error */
    return rc;
}

int ti_build(const pkl_value *root, ptz_file *zip, int rank, ti_index *out, fm_err *e)
{
    return ti_build_ws(root, zip, rank, -1, out, e);
}

static int build_entries(const pkl_value *root, ti_ctx *c, ti_index *out, fm_err *e)
{
    memset(out, 0, sizeof *out);
    out->rank = c->rank;
    out->path = fm_strdup(ptz_path(c->zip));
    out->big_endian = ptz_big_endian(c->zip);
    const pkl_value *sd = find_state_dict(root);
    if (out->path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    if (sd == NULL) return fm_fail(e, FM_EFORMAT, "data.pkl does not hold a state dict (a dict of tensors)");
    out->entries = calloc(sd->u.dict.n ? sd->u.dict.n : 1, sizeof *out->entries);
    if (out->entries == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < sd->u.dict.n; i++) {
        const char *key = pkl_get_str(sd->u.dict.keys[i]);
        const pkl_value *v = sd->u.dict.vals[i];
        if (key == NULL) return fm_fail(e, FM_EFORMAT, "state dict key %zu is not a string", i);
        if (!is_tensor_call(v)) {
            out->skipped++;
            continue;
        }
        ti_entry *en = &out->entries[out->n++];
        en->key = fm_strdup(key);
        if (en->key == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        int rc = parse_value(v, c, en, e);
        if (rc) return fm_context(e, "key '%s'", key);
    }
    return 0;
}

int ti_load(ptz_file *zip, int rank, ti_index *out, fm_err *e) { return ti_load_ws(zip, rank, -1, out, e); }

int ti_load_ws(ptz_file *zip, int rank, int world, ti_index *out, fm_err *e)
{
    uint8_t *pkl = NULL;
    size_t len = 0;
    memset(out, 0, sizeof *out);
    FM_TRY(ptz_read_record(zip, "data.pkl", TI_MAX_PKL, &pkl, &len, e));
    pkl_doc *doc = pkl_doc_new();
    pkl_value *root = NULL;
    int rc = doc ? pkl_load(doc, pkl, len, NULL, &root, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    free(pkl);
    if (rc) {
        pkl_doc_free(doc);
        return fm_context(e, "data.pkl");
    }
    rc = ti_build_ws(root, zip, rank, world, out, e);
    pkl_doc_free(doc);
    return rc;
}

/* ---- content hashes ---- */

int ti_piece_crc(ptz_file *zip, const ti_piece *p, uint32_t *crc, fm_err *e)
{
    const ti_view *v = &p->view;
    uint64_t numel = ti_view_numel(v);
    size_t es = dt_size(v->dtype);
    ptz_record_info info;
    if (!ptz_find(zip, v->storage, &info)) return fm_fail(e, FM_EFORMAT, "record %s is missing", v->storage);
    if (ti_view_contiguous(v) && v->offset == 0 && numel * es == info.size && info.crc != 0) {
        *crc = info.crc;
        return 0;
    }
    ptz_rec *r;
    FM_TRY(ptz_rec_open(zip, v->storage, &r, e));
    uint32_t c = ptz_crc32(0, NULL, 0);
    int rc = 0;
    if (ti_view_contiguous(v)) {
        uint64_t pos = (uint64_t)v->offset * es, left = numel * es;
        size_t chunk = ptz_buffer_size(zip);
        while (left > 0 && rc == 0) {
            size_t take = left < chunk ? (size_t)left : chunk;
            const uint8_t *b;
            rc = ptz_rec_get(r, pos, take, &b, e);
            if (rc == 0) c = ptz_crc32(c, b, take);
            pos += take;
            left -= take;
        }
    } else {
        for (uint64_t i = 0; i < numel && rc == 0; i++) {
            int64_t rem = (int64_t)i, pos = v->offset;
            for (int d = v->ndim - 1; d >= 0; d--) {
                pos += (rem % v->shape[d]) * v->stride[d];
                rem /= v->shape[d];
            }
            const uint8_t *b;
            rc = ptz_rec_get(r, (uint64_t)pos * es, es, &b, e);
            if (rc == 0) c = ptz_crc32(c, b, es);
        }
    }
    ptz_rec_close(r);
    *crc = c;
    return rc;
}

/* ---- packing for MPI ---- */

static void put_u64(fm_buf *b, uint64_t v) { fm_buf_append(b, &v, 8); }
static void put_i64(fm_buf *b, int64_t v) { fm_buf_append(b, &v, 8); }
static void put_str(fm_buf *b, const char *s)
{
    uint64_t n = strlen(s);
    put_u64(b, n);
    fm_buf_append(b, s, n);
}

int ti_pack(const ti_index *ix, fm_buf *b, fm_err *e)
{
    size_t len_at = b->len;
    put_u64(b, 0); /* length, patched below */
    put_u64(b, 0x58444e4954534d46ull); /* magic */
    put_i64(b, ix->rank);
    put_str(b, ix->path);
    put_u64(b, ix->big_endian);
    put_u64(b, ix->skipped);
    put_u64(b, ix->n);
    for (size_t i = 0; i < ix->n; i++) {
        const ti_entry *en = &ix->entries[i];
        put_str(b, en->key);
        put_u64(b, (uint64_t)en->kind);
        put_u64(b, (uint64_t)en->dtype);
        put_u64(b, (uint64_t)en->ndim);
        for (int d = 0; d < en->ndim; d++) put_i64(b, en->gshape[d]);
        put_str(b, en->placements);
        put_u64(b, (uint64_t)en->mesh_ndim);
        for (int d = 0; d < en->mesh_ndim; d++) {
            put_i64(b, en->mesh_shape[d]);
            put_i64(b, en->coord[d]);
        }
        put_u64(b, en->npieces);
        for (size_t k = 0; k < en->npieces; k++) {
            const ti_piece *p = &en->pieces[k];
            put_str(b, p->view.storage);
            put_u64(b, (uint64_t)p->view.dtype);
            put_u64(b, p->view.storage_nbytes);
            put_i64(b, p->view.offset);
            put_u64(b, (uint64_t)p->view.ndim);
            for (int d = 0; d < p->view.ndim; d++) {
                put_i64(b, p->view.shape[d]);
                put_i64(b, p->view.stride[d]);
                put_i64(b, p->goff[d]);
            }
            put_u64(b, ((uint64_t)p->replica) | ((uint64_t)p->has_crc << 1) | ((uint64_t)p->crc << 32));
        }
    }
    if (b->oom) return fm_fail(e, FM_ENOMEM, "out of memory packing the index");
    uint64_t len = b->len - len_at - 8;
    memcpy(b->data + len_at, &len, 8);
    return 0;
}

typedef struct reader {
    const uint8_t *p, *end;
    bool bad;
} reader;

static uint64_t get_u64(reader *r)
{
    uint64_t v = 0;
    if (r->bad || (size_t)(r->end - r->p) < 8) {
        r->bad = true;
        return 0;
    }
    memcpy(&v, r->p, 8);
    r->p += 8;
    return v;
}

static int64_t get_i64(reader *r) { return (int64_t)get_u64(r); }

static char *get_str(reader *r)
{
    uint64_t n = get_u64(r);
    if (r->bad || n > (uint64_t)(r->end - r->p)) {
        r->bad = true;
        return NULL;
    }
    char *s = fm_strndup((const char *)r->p, (size_t)n);
    r->p += n;
    if (s == NULL) r->bad = true;
    return s;
}

static bool get_dims(reader *r, int *nd)
{
    uint64_t v = get_u64(r);
    if (v > TI_MAX_DIMS) r->bad = true;
    *nd = (int)v;
    return !r->bad;
}

static void unpack_piece(reader *r, ti_piece *p)
{
    p->view.storage = get_str(r);
    p->view.dtype = (dt_type)get_u64(r);
    p->view.storage_nbytes = get_u64(r);
    p->view.offset = get_i64(r);
    if (!get_dims(r, &p->view.ndim)) return;
    for (int d = 0; d < p->view.ndim; d++) {
        p->view.shape[d] = get_i64(r);
        p->view.stride[d] = get_i64(r);
        p->goff[d] = get_i64(r);
    }
    uint64_t flags = get_u64(r);
    p->replica = flags & 1;
    p->has_crc = (flags >> 1) & 1;
    p->crc = (uint32_t)(flags >> 32);
    if (p->view.dtype <= DT_INVALID || p->view.dtype >= DT_COUNT) r->bad = true;
}

static void unpack_entry(reader *r, ti_entry *en)
{
    en->key = get_str(r);
    en->kind = (ti_kind)get_u64(r);
    en->dtype = (dt_type)get_u64(r);
    if (!get_dims(r, &en->ndim)) return;
    for (int d = 0; d < en->ndim; d++) en->gshape[d] = get_i64(r);
    char *pl = get_str(r);
    if (pl) snprintf(en->placements, sizeof en->placements, "%s", pl);
    free(pl);
    uint64_t md = get_u64(r);
    if (md > TI_MAX_MESH) {
        r->bad = true;
        return;
    }
    en->mesh_ndim = (int)md;
    for (int d = 0; d < en->mesh_ndim; d++) {
        en->mesh_shape[d] = get_i64(r);
        en->coord[d] = get_i64(r);
    }
    uint64_t np = get_u64(r);
    if (r->bad || np > (uint64_t)(r->end - r->p) / 8) {
        r->bad = true;
        return;
    }
    en->pieces = calloc(np ? np : 1, sizeof *en->pieces);
    if (en->pieces == NULL) {
        r->bad = true;
        return;
    }
    for (uint64_t k = 0; k < np && !r->bad; k++, en->npieces++) unpack_piece(r, &en->pieces[k]);
    if (en->dtype <= DT_INVALID || en->dtype >= DT_COUNT || en->kind > TI_SHARDED) r->bad = true;
}

int ti_unpack(const uint8_t *buf, size_t len, ti_index *out, fm_err *e)
{
    reader r = {buf, buf + len, false};
    memset(out, 0, sizeof *out);
    if (get_u64(&r) != 0x58444e4954534d46ull) return fm_fail(e, FM_EINTERNAL, "bad index image");
    out->rank = (int)get_i64(&r);
    out->path = get_str(&r);
    out->big_endian = get_u64(&r) != 0;
    out->skipped = (size_t)get_u64(&r);
    uint64_t n = get_u64(&r);
    if (r.bad || n > len / 8) return fm_fail(e, FM_EINTERNAL, "bad index image");
    out->entries = calloc(n ? n : 1, sizeof *out->entries);
    if (out->entries == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < n && !r.bad; i++, out->n++) unpack_entry(&r, &out->entries[i]);
    if (r.bad || r.p != r.end) {
        ti_index_free(out);
        return fm_fail(e, FM_EINTERNAL, "bad index image");
    }
    return 0;
}

int ti_unpack_next(const uint8_t **p, const uint8_t *end, ti_index *out, fm_err *e)
{
    uint64_t len;
    if (*p == NULL || end - *p < 8) return fm_fail(e, FM_EINTERNAL, "bad index image");
    memcpy(&len, *p, 8);
    if (len > (uint64_t)(end - *p) - 8) return fm_fail(e, FM_EINTERNAL, "bad index image");
    FM_TRY(ti_unpack(*p + 8, (size_t)len, out, e));
    *p += 8 + len;
    return 0;
}
