/* extrastate.c - see extrastate.h. */
#include "state/extrastate.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/comm.h"
#include "base/dtype.h"
#include "torchfmt/pkl.h"
#include "torchfmt/pkw.h"
#include "torchfmt/ptz.h"
#include "torchfmt/ptzw.h"
#include "torchfmt/pyjson.h"
#include "torchfmt/tindex.h"
#include "base/util.h"

#define ES_MAX_PKL (64u << 20)

/* What every rank contributes: its scheduler state as pickle bytes (to
 * compare) and its device RNG state tensor. */
typedef struct es_pkg {
    int rank;
    bool present;
    fm_buf sched;
    char device[32];
    dt_type dtype;
    int ndim;
    int64_t shape[TI_MAX_DIMS];
    fm_buf dev;     /* the device state's bytes, row-major, little-endian */
} es_pkg;

/* Rank 0's file stays open: its objects are re-emitted as they are. */
typedef struct es_src {
    ptz_file *zip;
    pkl_doc *doc;
    pkl_value *root;
} es_src;

static void src_free(es_src *s)
{
    pkl_doc_free(s->doc);
    ptz_close(s->zip);
    memset(s, 0, sizeof *s);
}

static bool is_host_rng_key(const char *k)
{
    return strcmp(k, "cpu") == 0 || strcmp(k, "numpy") == 0 || strcmp(k, "random") == 0;
}

/* The device state: the one tensor-valued key of rng besides cpu/numpy/random. */
static const pkl_value *device_state(const pkl_value *rng, const char **key)
{
    const pkl_value *d = pkl_as_dict(rng);
    for (size_t i = 0; d && i < d->u.dict.n; i++) {
        const char *k = pkl_get_str(d->u.dict.keys[i]);
        if (k && !is_host_rng_key(k) && ti_is_tensor(d->u.dict.vals[i])) {
            *key = k;
            return d->u.dict.vals[i];
        }
    }
    *key = NULL;
    return NULL;
}

/* A small tensor's elements, row-major, converted to little-endian. */
static int tensor_bytes(ptz_file *z, const pkl_value *v, es_pkg *pk, fm_err *e)
{
    ti_entry en;
    memset(&en, 0, sizeof en);
    int rc = ti_parse(v, z, 0, &en, e);
    if (rc == 0 && en.kind != TI_PLAIN) rc = fm_fail(e, FM_EUNSUPPORTED, "the device RNG state is not a plain tensor");
    ptz_rec *r = NULL;
    if (rc == 0) rc = ptz_rec_open(z, en.pieces[0].view.storage, &r, e);
    const ti_view *vw = rc == 0 ? &en.pieces[0].view : NULL;
    uint64_t numel = vw ? ti_view_numel(vw) : 0;
    size_t es = vw ? dt_size(vw->dtype) : 0;
    for (uint64_t i = 0; rc == 0 && i < numel; i++) {
        int64_t rem = (int64_t)i, pos = vw->offset;
        for (int d = vw->ndim - 1; d >= 0; d--) {
            pos += (rem % vw->shape[d]) * vw->stride[d];
            rem /= vw->shape[d];
        }
        const uint8_t *p;
        uint8_t le[16];
        rc = ptz_rec_get(r, (uint64_t)pos * es, es, &p, e);
        if (rc == 0 && dt_convert(vw->dtype, vw->dtype, p, le, 1, ptz_big_endian(z))) fm_buf_append(&pk->dev, le, es);
    }
    if (vw) {
        pk->dtype = vw->dtype;
        pk->ndim = vw->ndim;
        memcpy(pk->shape, vw->shape, sizeof pk->shape);
    }
    ptz_rec_close(r);
    ti_entry_free(&en);
    if (rc == 0 && pk->dev.oom) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    return rc;
}

static int read_rank(const char *path, bool no_crc, es_pkg *pk, es_src *src, fm_err *e)
{
    FM_TRY(ptz_open(path, no_crc ? PTZ_NO_CRC : 0, 0, &src->zip, e));
    uint8_t *buf;
    size_t len;
    FM_TRY(ptz_read_record(src->zip, "data.pkl", ES_MAX_PKL, &buf, &len, e));
    src->doc = pkl_doc_new();
    int rc = src->doc ? pkl_load(src->doc, buf, len, NULL, &src->root, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    free(buf);
    if (rc) return fm_context(e, "data.pkl");
    const pkl_value *d = pkl_as_dict(src->root);
    if (d == NULL) return fm_fail(e, FM_EFORMAT, "not an extra_state dict ({\"lr_scheduler\": ..., \"rng\": ...})");
    pkl_value *sched = pkl_dict_get(d, "lr_scheduler");
    pkl_value *none = sched ? NULL : pkl_new_none(src->doc);
    FM_TRY(pkw_dump(src->doc, sched ? sched : none, &pk->sched, e));
    const char *key;
    const pkl_value *dev = device_state(pkl_dict_get(d, "rng"), &key);
    if (dev == NULL) return 0;
    snprintf(pk->device, sizeof pk->device, "%s", key);
    return tensor_bytes(src->zip, dev, pk, e);
}

/* ---- the packages cross the processes as bytes ---- */

static void put_u64(fm_buf *b, uint64_t v) { fm_buf_append(b, &v, 8); }

static void pack(const es_pkg *pk, fm_buf *b)
{
    put_u64(b, (uint64_t)pk->rank);
    put_u64(b, pk->present);
    put_u64(b, pk->sched.len);
    fm_buf_append(b, pk->sched.data, pk->sched.len);
    fm_buf_append(b, pk->device, sizeof pk->device);
    put_u64(b, (uint64_t)pk->dtype);
    put_u64(b, (uint64_t)pk->ndim);
    for (int d = 0; d < pk->ndim; d++) put_u64(b, (uint64_t)pk->shape[d]);
    put_u64(b, pk->dev.len);
    fm_buf_append(b, pk->dev.data, pk->dev.len);
}

static bool take(const uint8_t **p, const uint8_t *end, void *dst, size_t n)
{
    if ((size_t)(end - *p) < n) return false;
    memcpy(dst, *p, n);
    *p += n;
    return true;
}

static bool unpack(const uint8_t **p, const uint8_t *end, es_pkg *pk)
{
    uint64_t v[4];
    if (!take(p, end, v, 24) || v[2] > (uint64_t)(end - *p)) return false;
    pk->rank = (int)v[0];
    pk->present = v[1] != 0;
    fm_buf_append(&pk->sched, *p, v[2]);
    *p += v[2];
    if (!take(p, end, pk->device, sizeof pk->device) || !take(p, end, v, 16) || v[1] > TI_MAX_DIMS) return false;
    pk->device[sizeof pk->device - 1] = '\0';
    pk->dtype = (dt_type)v[0];
    pk->ndim = (int)v[1];
    for (int d = 0; d < pk->ndim; d++)
        if (!take(p, end, &pk->shape[d], 8)) return false;
    if (!take(p, end, v, 8) || v[0] > (uint64_t)(end - *p)) return false;
    fm_buf_append(&pk->dev, *p, v[0]);
    *p += v[0];
    return !pk->sched.oom && !pk->dev.oom;
}

/* ---- composing the merged objects (process 0) ---- */

/* _rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict()) */
static pkl_value *new_tensor(pkl_doc *doc, const es_pkg *pk, const char *key)
{
    uint64_t numel = 1;
    pkl_value *dims[TI_MAX_DIMS], *strides[TI_MAX_DIMS];
    int64_t st = 1;
    for (int d = pk->ndim - 1; d >= 0; d--) {
        dims[d] = pkl_new_int(doc, pk->shape[d]);
        strides[d] = pkl_new_int(doc, st);
        st *= pk->shape[d];
        numel *= (uint64_t)pk->shape[d];
    }
    pkl_value *pid[5] = {pkl_new_cstr(doc, "storage"), pkl_new_global(doc, "torch", dt_storage_class(pk->dtype)),
                         pkl_new_cstr(doc, key), pkl_new_cstr(doc, "cpu"), pkl_new_int(doc, (int64_t)numel)};
    pkl_value *od = pkl_new_obj(doc, PKL_REDUCE, pkl_new_global(doc, "collections", "OrderedDict"), NULL);
    pkl_value *args[6] = {pkl_new_persid(doc, pkl_new_tuple(doc, 5, pid)), pkl_new_int(doc, 0),
                          pkl_new_tuple(doc, (size_t)pk->ndim, dims), pkl_new_tuple(doc, (size_t)pk->ndim, strides),
                          pkl_new_bool(doc, false), od};
    return pkl_new_obj(doc, PKL_REDUCE, pkl_new_global(doc, "torch._utils", "_rebuild_tensor_v2"), pkl_new_tuple(doc, 6, args));
}

/* Storage keys used by the tree (rank 0's), to number new storages after them. */
static void collect_keys(const pkl_value *v, uint8_t *seen, long *max_key, int depth)
{
    if (v == NULL || seen[v->serial] || depth > 200) return;
    seen[v->serial] = 1;
    size_t n;
    pkl_value *const *items;
    switch (v->type) {
    case PKL_PERSID: {
        items = pkl_items(v->u.persid.pid, &n);
        const char *k = items && n >= 3 ? pkl_get_str(items[2]) : NULL;
        char *end;
        long num = k ? strtol(k, &end, 10) : -1;
        if (k && *end == '\0' && num > *max_key) *max_key = num;
        return;
    }
    case PKL_LIST: case PKL_TUPLE: case PKL_SET: case PKL_FROZENSET:
        for (size_t i = 0; i < v->u.seq.n; i++) collect_keys(v->u.seq.items[i], seen, max_key, depth + 1);
        return;
    case PKL_DICT:
        for (size_t i = 0; i < v->u.dict.n; i++) collect_keys(v->u.dict.vals[i], seen, max_key, depth + 1);
        return;
    case PKL_OBJ: {
        const pkl_value *parts[] = {v->u.obj.args, v->u.obj.kwargs, v->u.obj.state, v->u.obj.dictitems, v->u.obj.listitems};
        for (size_t i = 0; i < FM_ARRAY_LEN(parts); i++) collect_keys(parts[i], seen, max_key, depth + 1);
        return;
    }
    default: return;
    }
}

/* rank 0's root with rng[device] replaced by the list of every rank's state */
static pkl_value *compose(pkl_doc *doc, const pkl_value *root, const es_pkg *pk, int W, long first_key, char (*keys)[24])
{
    const pkl_value *d = pkl_as_dict(root);
    pkl_value *out = pkl_new_dict(doc);
    for (size_t i = 0; out && i < d->u.dict.n; i++) {
        pkl_value *k = d->u.dict.keys[i], *v = d->u.dict.vals[i];
        const char *ks = pkl_get_str(k);
        if (ks && strcmp(ks, "rng") == 0 && pk[0].device[0] && pkl_as_dict(v)) {
            const pkl_value *rng = pkl_as_dict(v);
            pkl_value *nr = pkl_new_dict(doc);
            for (size_t j = 0; nr && j < rng->u.dict.n; j++) {
                const char *rk = pkl_get_str(rng->u.dict.keys[j]);
                pkl_value *val = rng->u.dict.vals[j];
                if (rk && strcmp(rk, pk[0].device) == 0) {
                    pkl_value *list = pkl_new_list(doc);
                    for (int r = 0; list && r < W; r++) {
                        pkl_value *t = r == 0 ? val : NULL;
                        if (r > 0) {
                            snprintf(keys[r], sizeof keys[r], "%ld", first_key + r - 1);
                            t = new_tensor(doc, &pk[r], keys[r]);
                        }
                        if (t == NULL || pkl_seq_append(doc, list, t)) list = NULL;
                    }
                    val = list;
                }
                if (val == NULL || pkl_dict_set(doc, nr, rng->u.dict.keys[j], val)) nr = NULL;
            }
            v = nr;
        }
        if (v == NULL || pkl_dict_set(doc, out, k, v)) out = NULL;
    }
    return out;
}

/* ---- writing ---- */

static int write_pt(const char *path, es_src *src, pkl_value *root, const es_pkg *pk, int W, long first_key,
                    char (*keys)[24], long max_old, fm_err *e)
{
    fm_buf pkl = {0};
    ptzw *w = NULL;
    int rc = pkw_dump(src->doc, root, &pkl, e);
    if (rc == 0) rc = ptzw_create(path, "extra_state_merged", &w, e);
    if (rc == 0) rc = ptzw_add_preamble(w, pkl.data, pkl.len, e);
    fm_buf_free(&pkl);
    for (long k = 0; rc == 0 && k <= max_old; k++) { /* rank 0's own storages, as they were */
        char name[48];
        snprintf(name, sizeof name, "data/%ld", k);
        uint8_t *data;
        size_t len;
        if (!ptz_find(src->zip, name, &(ptz_record_info){0})) continue;
        rc = ptz_read_record(src->zip, name, 1u << 30, &data, &len, e);
        if (rc == 0) rc = ptzw_add(w, name, data, len, e);
        free(data);
    }
    for (int r = 1; rc == 0 && r < W && pk[0].device[0]; r++) {
        char name[48];
        snprintf(name, sizeof name, "data/%s", keys[r]);
        rc = ptzw_add(w, name, pk[r].dev.data, pk[r].dev.len, e);
    }
    (void)first_key;
    if (w == NULL) return rc;
    if (rc) {
        ptzw_abort(w);
        return rc;
    }
    return ptzw_close(w, e);
}

static int scheduler_json(es_src *src, fm_buf *out, fm_err *e)
{
    const pkl_value *sched = pkl_dict_get(pkl_as_dict(src->root), "lr_scheduler");
    pkl_value *none = sched ? NULL : pkl_new_none(src->doc);
    pj_opts po = {src->zip, 0, -1, true, pkl_doc_node_count(src->doc)};
    cJSON *j = pj_convert(sched ? sched : none, &po, e);
    char *text = j ? pj_print(j) : NULL;
    cJSON_Delete(j);
    if (text == NULL) return e->code ? e->code : fm_fail(e, FM_ENOMEM, "out of memory");
    fm_buf_puts(out, text);
    free(text);
    return 0;
}

/* Process 0: checks, composes and produces the two files' bytes. */
static int build_outputs(es_src *src, const es_pkg *pk, int W, es_result *res, fm_buf *pt, fm_buf *json, fm_err *e)
{
    for (int r = 1; r < W; r++) {
        if (strcmp(pk[r].device, pk[0].device) != 0)
            return fm_fail(e, FM_EMISMATCH, "extra_state: rank 0 has RNG states for '%s' but rank %d for '%s'",
                           pk[0].device[0] ? pk[0].device : "no device", r, pk[r].device[0] ? pk[r].device : "no device");
        if (res->warning[0] == '\0' &&
            (pk[r].sched.len != pk[0].sched.len || memcmp(pk[r].sched.data, pk[0].sched.data, pk[0].sched.len) != 0))
            snprintf(res->warning, sizeof res->warning,
                     "the lr_scheduler state of rank %d differs from rank 0's: keeping rank 0's", r);
    }
    snprintf(res->device, sizeof res->device, "%s", pk[0].device);
    size_t nodes = pkl_doc_node_count(src->doc);
    uint8_t *seen = calloc(nodes ? nodes : 1, 1);
    if (seen == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    long max_key = -1;
    collect_keys(src->root, seen, &max_key, 0);
    free(seen);
    char (*keys)[24] = calloc((size_t)W, sizeof *keys);
    pkl_value *root = keys ? compose(src->doc, src->root, pk, W, max_key + 1, keys) : NULL;
    int rc = root ? 0 : fm_fail(e, FM_ENOMEM, "out of memory composing extra_state_merged.pt");
    char tmpl[] = "/tmp/fsdpmerge-extra-XXXXXX";
    int fd = rc == 0 ? mkstemp(tmpl) : -1;
    if (rc == 0 && fd < 0) rc = fm_fail(e, FM_EIO, "cannot create a temporary file in /tmp: %s", strerror(errno));
    if (fd >= 0) close(fd);
    if (rc == 0) rc = write_pt(tmpl, src, root, pk, W, max_key + 1, keys, max_key, e);
    char *bytes = NULL;
    size_t len = 0;
    if (rc == 0) rc = fm_read_file(tmpl, 1u << 30, &bytes, &len, e);
    if (fd >= 0) unlink(tmpl);
    fm_buf_append(pt, bytes, len);
    free(bytes);
    free(keys);
    if (rc == 0) rc = scheduler_json(src, json, e);
    return rc;
}

/* ---- the whole phase ---- */

static int read_mine(const ck_layout *l, int me, int P, bool no_crc, es_pkg *pk, es_src *src0, fm_buf *blob, fm_err *e)
{
    for (int r = me; r < l->world_size; r += P) {
        es_pkg *k = &pk[r];
        k->rank = r;
        char *path = ck_rank_file(l, "extra_state", r);
        if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        k->present = fm_path_exists(path);
        es_src tmp = {0};
        int rc = k->present ? read_rank(path, no_crc, k, r == 0 ? src0 : &tmp, e) : 0;
        if (rc) fm_context(e, "rank %d: %s", r, path);
        free(path);
        src_free(&tmp);
        if (rc) return rc;
        pack(k, blob);
    }
    return blob->oom ? fm_fail(e, FM_ENOMEM, "out of memory") : 0;
}

static int check_present(const ck_layout *l, const es_pkg *pk, es_result *res, fm_err *e)
{
    int W = l->world_size, n = 0;
    for (int r = 0; r < W; r++) n += pk[r].present;
    res->present = n > 0;
    for (int r = 0; r < W && n > 0 && n < W; r++) {
        if (pk[r].present) continue;
        char *path = ck_rank_file(l, "extra_state", r);
        fm_fail(e, FM_EIO, "missing extra_state for rank %d: %s does not exist (the other ranks have one)", r,
                path ? path : "?");
        free(path);
        return e->code;
    }
    return 0;
}

int es_merge_all(const ck_layout *l, const char *dir, int writer, bool no_crc, MPI_Comm comm, es_result *res, fm_err *e)
{
    int me, P, W = l->world_size;
    MPI_Comm_rank(comm, &me);
    MPI_Comm_size(comm, &P);
    memset(res, 0, sizeof *res);
    es_pkg *pk = calloc((size_t)W, sizeof *pk);
    es_src src0 = {0};
    fm_buf blob = {0}, pt = {0}, json = {0};
    uint8_t *all = NULL;
    uint64_t *offs = NULL;
    if (pk == NULL) fm_fail(e, FM_ENOMEM, "out of memory");
    else read_mine(l, me, P, no_crc, pk, &src0, &blob, e);
    int rc = comm_agree_all(e, comm);
    if (rc == 0) rc = comm_allgather_blobs_all(blob.data, blob.len, comm, &all, &offs, e);
    for (int q = 0; rc == 0 && q < P; q++) {
        const uint8_t *p = all + offs[q], *end = all + offs[q + 1];
        for (int r = q; r < W && rc == 0; r += P) {
            es_pkg tmp = {0};
            if (!unpack(&p, end, &tmp) || tmp.rank != r) rc = fm_fail(e, FM_EINTERNAL, "bad extra_state package");
            if (q != me) pk[r] = tmp;
            else {
                fm_buf_free(&tmp.sched);
                fm_buf_free(&tmp.dev);
            }
        }
    }
    if (rc == 0) rc = check_present(l, pk, res, e);
    if (rc == 0 && res->present && me == 0) build_outputs(&src0, pk, W, res, &pt, &json, e);
    if (rc == 0 && res->present) rc = comm_agree_all(e, comm);
    if (rc == 0 && res->present) {
        MPI_Bcast(res, (int)sizeof *res, MPI_BYTE, 0, comm);
        /* both calls on every process, whatever happened: they pair sends and receives */
        fm_err e2 = {0};
        comm_write_at_writer_all(pt.data, pt.len, 0, writer, dir, "extra_state_merged.pt", comm, e);
        comm_write_at_writer_all(json.data, json.len, 0, writer, dir, "lr_scheduler_state.json", comm, &e2);
        if (e->code == 0 && e2.code) *e = e2;
        rc = comm_agree_all(e, comm);
    }
    for (int r = 0; pk && r < W; r++) {
        fm_buf_free(&pk[r].sched);
        fm_buf_free(&pk[r].dev);
    }
    free(pk);
    free(all);
    free(offs);
    fm_buf_free(&blob);
    fm_buf_free(&pt);
    fm_buf_free(&json);
    src_free(&src0);
    return rc;
}
