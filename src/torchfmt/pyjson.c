/* pyjson.c - see pyjson.h. */
#include "torchfmt/pyjson.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "torchfmt/tindex.h"
#include "base/util.h"

#define PJ_MAX_DEPTH 200

typedef struct pj {
    const pj_opts *o;
    uint8_t *active; /* by serial: on the current conversion path */
    fm_err *e;
    int depth;
} pj;

static cJSON *convert(pj *c, const pkl_value *v);

/* ---- numbers ---- */

static cJSON *int_json(const pkl_value *v)
{
    fm_buf b = {0};
    pkl_int_text(&b, v);
    fm_buf_terminate(&b);
    cJSON *j = b.oom ? NULL : b.data[0] == '<' ? cJSON_CreateString((char *)b.data) : cJSON_CreateRaw((char *)b.data);
    fm_buf_free(&b);
    return j;
}

static cJSON *float_json(double f)
{
    if (isnan(f)) return cJSON_CreateString("nan");
    if (isinf(f)) return cJSON_CreateString(f > 0 ? "inf" : "-inf");
    return cJSON_CreateNumber(f);
}

static cJSON *bytes_json(const pkl_value *v)
{
    cJSON *o = cJSON_CreateObject();
    char *hex = malloc(v->u.str.len * 2 + 1);
    if (o == NULL || hex == NULL) {
        cJSON_Delete(o);
        free(hex);
        return NULL;
    }
    for (size_t i = 0; i < v->u.str.len; i++) snprintf(hex + 2 * i, 3, "%02x", (unsigned char)v->u.str.s[i]);
    hex[v->u.str.len * 2] = '\0';
    cJSON_AddStringToObject(o, "__bytes__", hex);
    free(hex);
    return o;
}

/* ---- tensors ---- */

static cJSON *int_array(int n, const int64_t *v)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%" PRId64, v[i]);
        cJSON_AddItemToArray(a, cJSON_CreateRaw(buf));
    }
    return a;
}

/* Element i (row-major over the view) as JSON. */
static cJSON *element(pj *c, ptz_rec *r, const ti_view *v, bool big, uint64_t i)
{
    int64_t rem = (int64_t)i, pos = v->offset;
    for (int d = v->ndim - 1; d >= 0; d--) {
        pos += (rem % v->shape[d]) * v->stride[d];
        rem /= v->shape[d];
    }
    size_t es = dt_size(v->dtype);
    const uint8_t *p;
    if (ptz_rec_get(r, (uint64_t)pos * es, es, &p, c->e)) return NULL;
    uint8_t le[16];
    for (size_t b = 0; b < es; b++) le[b] = big ? p[es - 1 - b] : p[b];
    if (dt_is_float(v->dtype)) {
        double d;
        if (v->dtype == DT_F64) memcpy(&d, le, 8);
        else {
            uint32_t u;
            float f;
            dt_convert(v->dtype, DT_F32, le, &u, 1, false);
            memcpy(&f, &u, 4);
            d = f;
        }
        return float_json(d);
    }
    char buf[32];
    switch (v->dtype) {
    case DT_BOOL: return cJSON_CreateBool(le[0] != 0);
    case DT_U8: snprintf(buf, sizeof buf, "%u", le[0]); break;
    case DT_I8: snprintf(buf, sizeof buf, "%d", (int8_t)le[0]); break;
    case DT_I16: { int16_t x; memcpy(&x, le, 2); snprintf(buf, sizeof buf, "%d", x); break; }
    case DT_U16: { uint16_t x; memcpy(&x, le, 2); snprintf(buf, sizeof buf, "%u", x); break; }
    case DT_I32: { int32_t x; memcpy(&x, le, 4); snprintf(buf, sizeof buf, "%" PRId32, x); break; }
    case DT_U32: { uint32_t x; memcpy(&x, le, 4); snprintf(buf, sizeof buf, "%" PRIu32, x); break; }
    case DT_I64: { int64_t x; memcpy(&x, le, 8); snprintf(buf, sizeof buf, "%" PRId64, x); break; }
    case DT_U64: { uint64_t x; memcpy(&x, le, 8); snprintf(buf, sizeof buf, "%" PRIu64, x); break; }
    default: return cJSON_CreateNull(); /* complex and fp8: not shown */
    }
    return cJSON_CreateRaw(buf);
}

/* The first n values, flat (nested = false) or nested by shape. */
static cJSON *values_json(pj *c, const ti_view *v, bool big, uint64_t n, bool nested)
{
    ptz_rec *r;
    if (ptz_rec_open(c->o->zip, v->storage, &r, c->e)) return NULL;
    cJSON *root = cJSON_CreateArray();
    if (v->ndim == 0 && nested) { /* a 0-d tensor is its one value */
        cJSON_Delete(root);
        root = n ? element(c, r, v, big, 0) : cJSON_CreateNull();
        ptz_rec_close(r);
        return root;
    }
    cJSON *stack[TI_MAX_DIMS + 1];
    for (uint64_t i = 0; root && i < n; i++) {
        /* open one nested list per dim whose index wrapped to 0 */
        int open_from = 0;
        if (nested) {
            uint64_t rem = i;
            open_from = v->ndim;
            for (int d = v->ndim - 1; d >= 0 && rem % (uint64_t)v->shape[d] == 0; d--) {
                open_from = d;
                rem /= (uint64_t)v->shape[d];
            }
            if (i == 0) open_from = 0;
            stack[0] = root;
            for (int d = open_from; d < v->ndim - 1; d++) {
                cJSON *a = cJSON_CreateArray();
                cJSON_AddItemToArray(stack[d], a);
                stack[d + 1] = a;
            }
        }
        cJSON *x = element(c, r, v, big, i);
        if (x == NULL) {
            cJSON_Delete(root);
            root = NULL;
            break;
        }
        cJSON_AddItemToArray(nested ? stack[v->ndim - 1] : root, x);
    }
    ptz_rec_close(r);
    return root;
}

static cJSON *view_json(pj *c, const ti_view *v, bool big)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL) return NULL;
    cJSON_AddStringToObject(o, "__class__", "torch.Tensor");
    char dt[64];
    snprintf(dt, sizeof dt, "torch.%s", dt_torch_name(v->dtype));
    cJSON_AddStringToObject(o, "dtype", dt);
    cJSON_AddItemToObject(o, "shape", int_array(v->ndim, v->shape));
    cJSON_AddItemToObject(o, "stride", int_array(v->ndim, v->stride));
    char off[32];
    snprintf(off, sizeof off, "%" PRId64, v->offset);
    cJSON_AddRawToObject(o, "storage_offset", off);
    cJSON_AddStringToObject(o, "storage", v->storage);
    snprintf(off, sizeof off, "%" PRIu64, v->storage_nbytes);
    cJSON_AddRawToObject(o, "storage_nbytes", off);
    uint64_t numel = ti_view_numel(v);
    if (c->o->zip && c->o->max_values != 0) {
        uint64_t n = c->o->max_values < 0 ? numel : FM_MIN(numel, (uint64_t)c->o->max_values);
        cJSON *vals = values_json(c, v, big, n, false);
        if (vals == NULL) {
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToObject(o, "values", vals);
    }
    return o;
}

static cJSON *tensor_json(pj *c, const pkl_value *v)
{
    ti_entry en;
    memset(&en, 0, sizeof en);
    bool big = c->o->zip && ptz_big_endian(c->o->zip);
    if (c->o->zip == NULL || ti_parse(v, c->o->zip, c->o->rank, &en, c->e)) {
        ti_entry_free(&en);
        return NULL;
    }
    cJSON *o = NULL;
    if (c->o->tensor_lists && en.kind == TI_PLAIN) {
        o = values_json(c, &en.pieces[0].view, big, ti_view_numel(&en.pieces[0].view), true);
    } else if (en.kind == TI_PLAIN) {
        o = view_json(c, &en.pieces[0].view, big);
    } else {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "__class__", en.kind == TI_DTENSOR ? "torch.distributed.tensor.DTensor"
                                                                      : "torch.distributed._shard.sharded_tensor.ShardedTensor");
        char dt[64];
        snprintf(dt, sizeof dt, "torch.%s", dt_torch_name(en.dtype));
        cJSON_AddStringToObject(o, "dtype", dt);
        cJSON_AddItemToObject(o, "shape", int_array(en.ndim, en.gshape));
        cJSON_AddStringToObject(o, "placements", en.placements);
        if (en.kind == TI_DTENSOR) {
            cJSON_AddItemToObject(o, "mesh_shape", int_array(en.mesh_ndim, en.mesh_shape));
            cJSON_AddItemToObject(o, "coordinate", int_array(en.mesh_ndim, en.coord));
        }
        cJSON *shards = cJSON_AddArrayToObject(o, "local_shards");
        for (size_t k = 0; k < en.npieces; k++) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddItemToObject(s, "offsets", int_array(en.ndim, en.pieces[k].goff));
            cJSON_AddItemToObject(s, "tensor", view_json(c, &en.pieces[k].view, big));
            cJSON_AddItemToArray(shards, s);
        }
    }
    ti_entry_free(&en);
    return o;
}

/* ---- containers and objects ---- */

static cJSON *seq_json(pj *c, const pkl_value *v)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < v->u.seq.n; i++) {
        cJSON *x = convert(c, v->u.seq.items[i]);
        if (x == NULL) {
            cJSON_Delete(a);
            return NULL;
        }
        cJSON_AddItemToArray(a, x);
    }
    return a;
}

static cJSON *dict_json(pj *c, const pkl_value *d)
{
    bool str_keys = true;
    for (size_t i = 0; i < d->u.dict.n; i++)
        if (d->u.dict.keys[i]->type != PKL_STR) str_keys = false;
    cJSON *o = str_keys ? cJSON_CreateObject() : cJSON_CreateArray();
    for (size_t i = 0; o && i < d->u.dict.n; i++) {
        cJSON *val = convert(c, d->u.dict.vals[i]);
        if (val == NULL) {
            cJSON_Delete(o);
            return NULL;
        }
        if (str_keys) {
            cJSON_AddItemToObject(o, d->u.dict.keys[i]->u.str.s, val);
            continue;
        }
        cJSON *pair = cJSON_CreateArray(), *k = convert(c, d->u.dict.keys[i]);
        cJSON_AddItemToArray(pair, k ? k : cJSON_CreateNull());
        cJSON_AddItemToArray(pair, val);
        cJSON_AddItemToArray(o, pair);
    }
    if (o == NULL || str_keys) return o;
    cJSON *w = cJSON_CreateObject();
    cJSON_AddItemToObject(w, "__dict_items__", o);
    return w;
}

static cJSON *obj_json(pj *c, const pkl_value *v)
{
    /* an OrderedDict (or other dict subclass) built by REDUCE + SETITEMS is its items */
    if (pkl_obj_is(v, "collections", "OrderedDict") && v->u.obj.dictitems) return dict_json(c, v->u.obj.dictitems);
    if (pkl_obj_is(v, "collections", "OrderedDict")) return cJSON_CreateObject();
    cJSON *o = cJSON_CreateObject();
    char name[512];
    cJSON_AddStringToObject(o, "__class__", pkl_obj_class_name(v, name, sizeof name));
    const pkl_value *parts[] = {v->u.obj.args, v->u.obj.kwargs, v->u.obj.state, v->u.obj.dictitems, v->u.obj.listitems};
    const char *names[] = {"args", "kwargs", "state", "items", "list_items"};
    for (size_t i = 0; i < FM_ARRAY_LEN(parts); i++) {
        if (parts[i] == NULL || (i == 0 && parts[i]->type == PKL_TUPLE && parts[i]->u.seq.n == 0)) continue;
        cJSON *x = convert(c, parts[i]);
        if (x == NULL) {
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToObject(o, names[i], x);
    }
    return o;
}

static cJSON *convert_node(pj *c, const pkl_value *v)
{
    char name[512];
    switch (v->type) {
    case PKL_NONE: return cJSON_CreateNull();
    case PKL_BOOL: return cJSON_CreateBool(v->u.b);
    case PKL_INT: return int_json(v);
    case PKL_FLOAT: return float_json(v->u.f);
    case PKL_STR: return cJSON_CreateString(v->u.str.s);
    case PKL_BYTES: return bytes_json(v);
    case PKL_LIST:
    case PKL_TUPLE:
    case PKL_SET:
    case PKL_FROZENSET: return seq_json(c, v);
    case PKL_DICT: return dict_json(c, v);
    case PKL_GLOBAL: {
        cJSON *o = cJSON_CreateObject();
        snprintf(name, sizeof name, "%s.%s", v->u.global.module, v->u.global.name);
        cJSON_AddStringToObject(o, "__global__", name);
        return o;
    }
    case PKL_PERSID: {
        cJSON *o = cJSON_CreateObject(), *x = convert(c, v->u.persid.pid);
        cJSON_AddItemToObject(o, "__persistent_id__", x ? x : cJSON_CreateNull());
        return o;
    }
    case PKL_OBJ: return ti_is_tensor(v) ? tensor_json(c, v) : obj_json(c, v);
    }
    return cJSON_CreateNull();
}

static cJSON *convert(pj *c, const pkl_value *v)
{
    if (v == NULL) return cJSON_CreateNull();
    if (c->active[v->serial]) return cJSON_CreateString("<cycle>");
    if (c->depth >= PJ_MAX_DEPTH) return cJSON_CreateString("<too deep>");
    c->active[v->serial] = 1;
    c->depth++;
    cJSON *j = convert_node(c, v);
    c->depth--;
    c->active[v->serial] = 0;
    if (j == NULL && c->e->code == 0) fm_fail(c->e, FM_ENOMEM, "out of memory");
    return j;
}

cJSON *pj_convert(const pkl_value *v, const pj_opts *o, fm_err *e)
{
    pj c = {o, calloc(o->node_count ? o->node_count : 1, 1), e, 0};
    if (c.active == NULL) {
        fm_fail(e, FM_ENOMEM, "out of memory");
        return NULL;
    }
    cJSON *j = convert(&c, v);
    free(c.active);
    return j;
}

/* ---- printing with 2-space indentation ---- */

static void print_node(fm_buf *b, const cJSON *j, int depth);

static void indent(fm_buf *b, int depth)
{
    for (int i = 0; i < depth; i++) fm_buf_puts(b, "  ");
}

static void print_container(fm_buf *b, const cJSON *j, int depth, bool object)
{
    if (j->child == NULL) {
        fm_buf_puts(b, object ? "{}" : "[]");
        return;
    }
    fm_buf_putc(b, object ? '{' : '[');
    for (const cJSON *c = j->child; c; c = c->next) {
        fm_buf_putc(b, '\n');
        indent(b, depth + 1);
        if (object) {
            cJSON *k = cJSON_CreateString(c->string);
            char *kt = k ? cJSON_PrintUnformatted(k) : NULL;
            fm_buf_puts(b, kt ? kt : "\"?\"");
            fm_buf_puts(b, ": ");
            cJSON_free(kt);
            cJSON_Delete(k);
        }
        print_node(b, c, depth + 1);
        if (c->next) fm_buf_putc(b, ',');
    }
    fm_buf_putc(b, '\n');
    indent(b, depth);
    fm_buf_putc(b, object ? '}' : ']');
}

static void print_node(fm_buf *b, const cJSON *j, int depth)
{
    if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        print_container(b, j, depth, cJSON_IsObject(j));
        return;
    }
    if (cJSON_IsRaw(j)) {
        fm_buf_puts(b, j->valuestring);
        return;
    }
    char *t = cJSON_PrintUnformatted(j);
    fm_buf_puts(b, t ? t : "null");
    cJSON_free(t);
}

char *pj_print(const cJSON *j)
{
    fm_buf b = {0};
    print_node(&b, j, 0);
    fm_buf_putc(&b, '\n');
    fm_buf_terminate(&b);
    if (b.oom) {
        fm_buf_free(&b);
        return NULL;
    }
    return (char *)b.data;
}
