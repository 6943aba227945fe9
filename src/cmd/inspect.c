/* inspect.c - see inspect.h. */
#include "cmd/inspect.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/pkl.h"
#include "torchfmt/ptz.h"
#include "torchfmt/pyjson.h"
#include "torchfmt/tindex.h"
#include "base/util.h"
#include "cmd/inspectdcp.h"

#define MAX_TEXT_DEPTH 8

typedef struct ins {
    FILE *out;
    ptz_file *zip;
    int rank;
    long values;
    size_t node_count;
    size_t ntensors[3];
    uint64_t tensor_bytes;
    fm_err *e;
} ins;

/* "..._rank_7.pt" -> 7, else -1: the rank DTensor coordinates fall back on. */
static int rank_from_name(const char *path)
{
    const char *p = strstr(path, "_rank_");
    int r = -1;
    if (p) sscanf(p + 6, "%d", &r);
    return r;
}

static void print_view(const ti_view *v, fm_buf *b)
{
    char sh[160], st[160];
    fm_buf_printf(b, "Tensor(dtype=%s, shape=%s, stride=%s, storage=%s (%" PRIu64 " bytes), offset=%" PRId64 ")",
                  dt_torch_name(v->dtype), ti_format_shape(v->ndim, v->shape, sh, sizeof sh),
                  ti_format_shape(v->ndim, v->stride, st, sizeof st), v->storage, v->storage_nbytes, v->offset);
}

/* Values come from the JSON converter so that text and JSON agree. */
static void print_values(ins *s, const pkl_value *v, fm_buf *b)
{
    pj_opts po = {s->zip, s->rank, s->values, false, s->node_count};
    fm_err e = {0};
    cJSON *j = pj_convert(v, &po, &e);
    const cJSON *vals = j ? cJSON_GetObjectItemCaseSensitive(j, "values") : NULL;
    if (vals == NULL && j) {
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "local_shards");
        const cJSON *t = sh && sh->child ? cJSON_GetObjectItemCaseSensitive(sh->child, "tensor") : NULL;
        vals = t ? cJSON_GetObjectItemCaseSensitive(t, "values") : NULL;
    }
    char *text = vals ? cJSON_PrintUnformatted(vals) : NULL;
    if (text) fm_buf_printf(b, " values=%s%s", text, s->values >= 0 && cJSON_GetArraySize(vals) == s->values ? "..." : "");
    cJSON_free(text);
    cJSON_Delete(j);
}

static void print_tensor(ins *s, const pkl_value *v, fm_buf *b)
{
    ti_entry en;
    memset(&en, 0, sizeof en);
    fm_err e = {0};
    if (ti_parse(v, s->zip, s->rank, &en, &e)) {
        fm_buf_printf(b, "<unreadable tensor: %s>", e.msg);
        ti_entry_free(&en);
        return;
    }
    char sh[160];
    s->ntensors[en.kind]++;
    for (size_t k = 0; k < en.npieces; k++) s->tensor_bytes += ti_view_numel(&en.pieces[k].view) * dt_size(en.dtype);
    if (en.kind == TI_PLAIN) {
        print_view(&en.pieces[0].view, b);
    } else if (en.kind == TI_DTENSOR) {
        char m[160], c[160];
        fm_buf_printf(b, "DTensor(dtype=%s, shape=%s, placements=%s, mesh=%s, coordinate=%s, local=", dt_torch_name(en.dtype),
                      ti_format_shape(en.ndim, en.gshape, sh, sizeof sh), en.placements,
                      ti_format_shape(en.mesh_ndim, en.mesh_shape, m, sizeof m),
                      ti_format_shape(en.mesh_ndim, en.coord, c, sizeof c));
        print_view(&en.pieces[0].view, b);
        fm_buf_putc(b, ')');
    } else {
        fm_buf_printf(b, "ShardedTensor(dtype=%s, shape=%s, local_shards=[", dt_torch_name(en.dtype),
                      ti_format_shape(en.ndim, en.gshape, sh, sizeof sh));
        for (size_t k = 0; k < en.npieces; k++) {
            fm_buf_printf(b, "%sat %s: ", k ? ", " : "", ti_format_shape(en.ndim, en.pieces[k].goff, sh, sizeof sh));
            print_view(&en.pieces[k].view, b);
        }
        fm_buf_puts(b, "])");
    }
    ti_entry_free(&en);
    if (s->values) print_values(s, v, b);
}

static bool contains_tensor(const pkl_value *v, int depth)
{
    if (v == NULL || depth > MAX_TEXT_DEPTH) return false;
    if (ti_is_tensor(v)) return true;
    const pkl_value *d = pkl_as_dict(v);
    if (d) {
        for (size_t i = 0; i < d->u.dict.n; i++)
            if (contains_tensor(d->u.dict.vals[i], depth + 1)) return true;
        return false;
    }
    size_t n;
    pkl_value *const *items = pkl_items(v, &n);
    for (size_t i = 0; items && i < n; i++)
        if (contains_tensor(items[i], depth + 1)) return true;
    return false;
}

static void print_value(ins *s, const pkl_value *v, int depth);

static void print_line(ins *s, int depth, const char *label, const pkl_value *v)
{
    for (int i = 0; i < depth; i++) fputs("  ", s->out);
    fputs(label, s->out);
    if (ti_is_tensor(v)) {
        fm_buf b = {0};
        print_tensor(s, v, &b);
        fm_buf_terminate(&b);
        fprintf(s->out, "%s\n", b.data ? (char *)b.data : "");
        fm_buf_free(&b);
    } else if (depth < MAX_TEXT_DEPTH && contains_tensor(v, 0)) {
        fputs("\n", s->out);
        print_value(s, v, depth + 1);
    } else {
        fm_buf b = {0};
        pkl_repr(&b, v, 6, 16);
        fm_buf_terminate(&b);
        fprintf(s->out, "%s\n", b.data ? (char *)b.data : "");
        fm_buf_free(&b);
    }
}

static void print_value(ins *s, const pkl_value *v, int depth)
{
    const pkl_value *d = pkl_as_dict(v);
    char label[600];
    if (d) {
        for (size_t i = 0; i < d->u.dict.n; i++) {
            const pkl_value *k = d->u.dict.keys[i];
            fm_buf kb = {0};
            if (k->type == PKL_STR) fm_buf_puts(&kb, k->u.str.s);
            else pkl_repr(&kb, k, 2, 4);
            fm_buf_terminate(&kb);
            snprintf(label, sizeof label, "%s: ", kb.data ? (char *)kb.data : "?");
            fm_buf_free(&kb);
            print_line(s, depth, label, d->u.dict.vals[i]);
        }
        return;
    }
    size_t n;
    pkl_value *const *items = pkl_items(v, &n);
    for (size_t i = 0; items && i < n; i++) {
        snprintf(label, sizeof label, "[%zu]: ", i);
        print_line(s, depth, label, items[i]);
    }
    if (items == NULL) print_line(s, depth, "", v);
}

static int load(const char *path, ptz_file **zip, pkl_doc **doc, pkl_value **root, fm_err *e)
{
    FM_TRY(ind_open(path, zip, e)); /* a .pt file, or a DCP item FILE.distcp@OFFSET */
    uint8_t *buf;
    size_t len;
    FM_TRY(ptz_read_record(*zip, "data.pkl", 1u << 30, &buf, &len, e));
    *doc = pkl_doc_new();
    int rc = *doc ? pkl_load(*doc, buf, len, NULL, root, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    free(buf);
    return rc ? fm_context(e, "data.pkl") : 0;
}

int ins_run(const cli_opts *o, FILE *out, fm_err *e)
{
    ptz_file *zip = NULL;
    pkl_doc *doc = NULL;
    pkl_value *root = NULL;
    if (ind_listing(o->inspect_file)) return ind_run(o, out, e);
    int rc = load(o->inspect_file, &zip, &doc, &root, e);
    if (rc == 0 && o->json) {
        pj_opts po = {zip, rank_from_name(o->inspect_file), o->values, false, pkl_doc_node_count(doc)};
        cJSON *j = pj_convert(root, &po, e);
        char *text = j ? pj_print(j) : NULL;
        if (text) fputs(text, out);
        else rc = e->code ? e->code : fm_fail(e, FM_ENOMEM, "out of memory");
        free(text);
        cJSON_Delete(j);
    } else if (rc == 0) {
        ins s = {out, zip, rank_from_name(o->inspect_file), o->values, pkl_doc_node_count(doc), {0}, 0, e};
        fprintf(out, "%s: torch.save archive '%s', %zu records, byte order %s\n", o->inspect_file, ptz_prefix(zip),
                ptz_record_count(zip), ptz_big_endian(zip) ? "big" : "little");
        print_value(&s, root, 0);
        char b[32];
        fprintf(out, "-- %zu tensors (%zu plain, %zu DTensor, %zu ShardedTensor), %s of local tensor data\n",
                s.ntensors[0] + s.ntensors[1] + s.ntensors[2], s.ntensors[0], s.ntensors[1], s.ntensors[2],
                fm_format_bytes(s.tensor_bytes, b, sizeof b));
    }
    if (rc) fm_context(e, "%s", o->inspect_file);
    pkl_doc_free(doc);
    ptz_close(zip);
    return rc;
}
