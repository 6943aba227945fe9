/* dcp.c - torch.distributed.checkpoint folders (see dcp.h).
 *
 * The .metadata pickle is read by the same inert VM as data.pkl. Its classes
 * are dataclasses pickled as NEWOBJ + BUILD(state dict); TensorProperties
 * pickles a tuple (dtype, layout, requires_grad, memory_format, pin_memory)
 * from __getstate__ (torch 2.x), older releases a dict. _StorageInfo's
 * __getstate__ drops None fields, so transform_descriptors appears only when
 * an extension (e.g. zstd) transformed the item.
 */
#include "torchfmt/dcp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "torchfmt/pkl.h"

#define DCP_MAX_ITEM_PKL (64u << 20) /* the pickle of one chunk tensor is a few hundred bytes */

/* ---- storage_data: (fqn, offsets) -> where the item is ---- */

typedef struct sloc {
    const char *fqn;
    int ndim;          /* -1: offset None (bytes items) */
    int64_t off[TI_MAX_DIMS];
    const char *path;
    int64_t offset, length;
    const pkl_value *transforms;
    size_t order;      /* position in storage_data: a later duplicate wins, as in a Python dict */
} sloc;

static int cmp_sloc_key(const void *a, const void *b);

/* by key, then dict order (qsort is not stable) */
static int cmp_sloc(const void *a, const void *b)
{
    int c = cmp_sloc_key(a, b);
    if (c) return c;
    const sloc *x = a, *y = b;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int cmp_sloc_key(const void *a, const void *b)
{
    const sloc *x = a, *y = b;
    int c = strcmp(x->fqn, y->fqn);
    if (c) return c;
    if (x->ndim != y->ndim) return x->ndim < y->ndim ? -1 : 1;
    for (int d = 0; d < x->ndim; d++)
        if (x->off[d] != y->off[d]) return x->off[d] < y->off[d] ? -1 : 1;
    return 0;
}

static int parse_sloc(const pkl_value *k, const pkl_value *v, sloc *s, fm_err *e)
{
    s->fqn = pkl_get_str(pkl_attr(k, "fqn"));
    if (!pkl_obj_is(k, "torch.distributed.checkpoint.*", "MetadataIndex") || s->fqn == NULL)
        return fm_fail(e, FM_EFORMAT, "storage_data: a key is not a MetadataIndex with an fqn");
    const pkl_value *off = pkl_attr(k, "offset");
    s->ndim = (off == NULL || off->type == PKL_NONE) ? -1 : pkl_get_int_seq(off, s->off, TI_MAX_DIMS);
    if (s->ndim < -1 || (s->ndim == -1 && off && off->type != PKL_NONE))
        return fm_fail(e, FM_EFORMAT, "storage_data: '%s': offset is not a tuple of integers", s->fqn);
    s->path = pkl_get_str(pkl_attr(v, "relative_path"));
    if (!pkl_get_int(pkl_attr(v, "offset"), &s->offset) || !pkl_get_int(pkl_attr(v, "length"), &s->length) ||
        s->path == NULL || s->offset < 0 || s->length < 0)
        return fm_fail(e, FM_EFORMAT, "storage_data: '%s': not a _StorageInfo(relative_path, offset, length)", s->fqn);
    if (s->path[0] == '\0' || s->path[0] == '.' || strchr(s->path, '/') || strchr(s->path, '\\'))
        return fm_fail(e, FM_EFORMAT, "storage_data: '%s': relative_path '%s' is not a file name in the folder", s->fqn,
                       s->path);
    s->transforms = pkl_attr(v, "transform_descriptors");
    return 0;
}

static const sloc *find_sloc(const sloc *v, size_t n, const char *fqn, int ndim, const int64_t *off)
{
    sloc key = {.fqn = fqn, .ndim = ndim};
    if (ndim > 0) memcpy(key.off, off, sizeof(int64_t) * (size_t)ndim);
    return bsearch(&key, v, n, sizeof *v, cmp_sloc_key);
}

/* ---- the file list ---- */

static int cmp_name(const void *a, const void *b) { return strverscmp(*(char *const *)a, *(char *const *)b); }

static int collect_files(const sloc *v, size_t n, dcp_meta *m, fm_err *e)
{
    m->files = calloc(n ? n : 1, sizeof *m->files);
    if (m->files == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t j;
        for (j = 0; j < m->nfiles; j++) /* few files: linear is fine up to thousands */
            if (strcmp(m->files[j], v[i].path) == 0) break;
        if (j < m->nfiles) continue;
        if ((m->files[m->nfiles] = fm_strdup(v[i].path)) == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        m->nfiles++;
    }
    qsort(m->files, m->nfiles, sizeof *m->files, cmp_name);
    return 0;
}

static int file_of(const dcp_meta *m, const char *path)
{
    size_t lo = 0, hi = m->nfiles;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strverscmp(path, m->files[mid]);
        if (c == 0) return (int)mid;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return -1;
}

/* ---- state_dict_metadata ---- */

static const char *KNOWN_DTYPES = "torch.float32, float16, bfloat16, float64, int8..int64, uint8, bool";

static int parse_dtype(const pkl_value *props, dcp_key *k, fm_err *e)
{
    const pkl_value *st = props ? props->u.obj.state : NULL, *dt = NULL;
    if (props && props->type == PKL_OBJ && st && st->type == PKL_TUPLE && st->u.seq.n >= 1) dt = st->u.seq.items[0];
    else dt = pkl_attr(props, "dtype");
    if (dt == NULL || dt->type != PKL_GLOBAL || strcmp(dt->u.global.module, "torch") != 0)
        return fm_fail(e, FM_EFORMAT, "key '%s': TensorProperties without a torch dtype", k->fqn);
    k->dtype = dt_from_torch_name(dt->u.global.name);
    if (k->dtype == DT_INVALID)
        return fm_fail(e, FM_EUNSUPPORTED, "key '%s': dtype torch.%s is not supported (%s)", k->fqn, dt->u.global.name,
                       KNOWN_DTYPES);
    return 0;
}

static int parse_chunk(const pkl_value *c, dcp_key *k, dcp_chunk *ch, fm_err *e)
{
    int no = pkl_get_int_seq(pkl_attr(c, "offsets"), ch->offsets, TI_MAX_DIMS);
    int ns = pkl_get_int_seq(pkl_attr(c, "sizes"), ch->sizes, TI_MAX_DIMS);
    if (!pkl_obj_is(c, "torch.distributed.checkpoint.*", "ChunkStorageMetadata") || no != k->ndim || ns != k->ndim)
        return fm_fail(e, FM_EFORMAT, "key '%s': a chunk is not a ChunkStorageMetadata of %d offsets and sizes", k->fqn,
                       k->ndim);
    for (int d = 0; d < k->ndim; d++)
        if (ch->offsets[d] < 0 || ch->sizes[d] < 0 || ch->offsets[d] > k->size[d] || ch->sizes[d] > k->size[d] - ch->offsets[d])
            return fm_fail(e, FM_EFORMAT, "key '%s': a chunk at offset %" PRId64 " of dim %d lies outside the tensor",
                           k->fqn, ch->offsets[d], d);
    return 0;
}

static int locate(const sloc *v, size_t n, const dcp_meta *m, const char *fqn, int ndim, dcp_chunk *ch, fm_err *e)
{
    const sloc *s = find_sloc(v, n, fqn, ndim, ch->offsets);
    ch->file = -1;
    if (s == NULL) {
        char b[128];
        return fm_fail(e, FM_EFORMAT, "key '%s': storage_data has no item for the chunk at offsets %s", fqn,
                       ndim < 0 ? "None" : ti_format_shape(ndim, ch->offsets, b, sizeof b));
    }
    ch->file = file_of(m, s->path);
    ch->offset = (uint64_t)s->offset;
    ch->length = (uint64_t)s->length;
    size_t nt = 0;
    if (s->transforms && s->transforms->type != PKL_NONE && (pkl_items(s->transforms, &nt) == NULL || nt > 0)) {
        fm_buf b = {0};
        pkl_repr(&b, s->transforms, 3, 8);
        fm_buf_terminate(&b);
        ch->transforms = fm_strdup(b.data ? (char *)b.data : "?");
        fm_buf_free(&b);
        if (ch->transforms == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    return 0;
}

static int parse_tensor(const pkl_value *v, const sloc *sl, size_t nsl, const dcp_meta *m, dcp_key *k, fm_err *e)
{
    FM_TRY(parse_dtype(pkl_attr(v, "properties"), k, e));
    k->ndim = pkl_get_int_seq(pkl_attr(v, "size"), k->size, TI_MAX_DIMS);
    if (k->ndim < 0) return fm_fail(e, FM_EFORMAT, "key '%s': size is not a tuple of at most %d integers", k->fqn, TI_MAX_DIMS);
    for (int d = 0; d < k->ndim; d++)
        if (k->size[d] < 0) return fm_fail(e, FM_EFORMAT, "key '%s': negative size", k->fqn);
    size_t n;
    pkl_value *const *cs = pkl_items(pkl_attr(v, "chunks"), &n);
    if (cs == NULL) return fm_fail(e, FM_EFORMAT, "key '%s': chunks is not a list", k->fqn);
    k->chunks = calloc(n ? n : 1, sizeof *k->chunks);
    if (k->chunks == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        k->nchunks = i + 1;
        FM_TRY(parse_chunk(cs[i], k, &k->chunks[i], e));
        FM_TRY(locate(sl, nsl, m, k->fqn, k->ndim, &k->chunks[i], e));
    }
    return 0;
}

static int parse_key(const pkl_value *name, const pkl_value *v, const pkl_value *planner, const sloc *sl, size_t nsl,
                     const dcp_meta *m, dcp_key *k, fm_err *e)
{
    const char *fqn = pkl_get_str(name);
    if (fqn == NULL) return fm_fail(e, FM_EFORMAT, "state_dict_metadata: a key is not a string");
    if ((k->fqn = fm_strdup(fqn)) == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    size_t np = 0;
    pkl_value *const *path = pkl_items(pkl_dict_get(planner, fqn), &np);
    if (path && np > 0) {
        fm_buf b = {0};
        if (pkl_get_str(path[0])) fm_buf_puts(&b, pkl_get_str(path[0]));
        else pkl_repr(&b, path[0], 1, 1);
        fm_buf_terminate(&b);
        k->top = fm_strdup(b.data ? (char *)b.data : "");
        fm_buf_free(&b);
        if (k->top == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        k->depth = (int)np;
    }
    if (pkl_obj_is(v, "torch.distributed.checkpoint.*", "BytesStorageMetadata")) {
        k->bytes = true;
        k->chunks = calloc(1, sizeof *k->chunks);
        if (k->chunks == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        k->nchunks = 1;
        return locate(sl, nsl, m, fqn, -1, &k->chunks[0], e);
    }
    if (!pkl_obj_is(v, "torch.distributed.checkpoint.*", "TensorStorageMetadata")) {
        char cls[256];
        return fm_fail(e, FM_EUNSUPPORTED, "key '%s': unknown storage metadata %s", fqn,
                       v && v->type == PKL_OBJ ? pkl_obj_class_name(v, cls, sizeof cls) : pkl_type_name(v ? v->type : PKL_NONE));
    }
    return parse_tensor(v, sl, nsl, m, k, e);
}

static int collect_slocs(const pkl_value *sd, sloc **out, size_t *n, fm_err *e)
{
    const pkl_value *d = pkl_as_dict(sd);
    if (d == NULL) return fm_fail(e, FM_EFORMAT, "storage_data is not a dict");
    sloc *v = calloc(d->u.dict.n ? d->u.dict.n : 1, sizeof *v);
    if (v == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    *out = v;
    *n = d->u.dict.n;
    for (size_t i = 0; i < d->u.dict.n; i++) {
        FM_TRY(parse_sloc(d->u.dict.keys[i], d->u.dict.vals[i], &v[i], e));
        v[i].order = i;
    }
    qsort(v, *n, sizeof *v, cmp_sloc);
    /* MetadataIndex compares (fqn, offset) only: equal keys (empty chunks at
     * the same offset) are one dict entry in Python, the last one */
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) {
        if (k > 0 && cmp_sloc_key(&v[k - 1], &v[i]) == 0) v[k - 1] = v[i];
        else v[k++] = v[i];
    }
    *n = k;
    return 0;
}

static int parse_root(const pkl_value *root, dcp_meta *m, fm_err *e)
{
    if (!pkl_obj_is(root, "torch.distributed.checkpoint.*", "Metadata"))
        return fm_fail(e, FM_EFORMAT, "not a torch.distributed.checkpoint Metadata pickle");
    const pkl_value *sdm = pkl_as_dict(pkl_attr(root, "state_dict_metadata"));
    const pkl_value *planner = pkl_as_dict(pkl_attr(root, "planner_data"));
    if (sdm == NULL) return fm_fail(e, FM_EFORMAT, "Metadata without a state_dict_metadata dict");
    sloc *sl = NULL;
    size_t nsl = 0;
    int rc = collect_slocs(pkl_attr(root, "storage_data"), &sl, &nsl, e);
    if (rc == 0) rc = collect_files(sl, nsl, m, e);
    if (rc == 0 && (m->keys = calloc(sdm->u.dict.n ? sdm->u.dict.n : 1, sizeof *m->keys)) == NULL)
        rc = fm_fail(e, FM_ENOMEM, "out of memory");
    m->nested = sdm->u.dict.n > 0 && planner != NULL;
    for (size_t i = 0; rc == 0 && i < sdm->u.dict.n; i++) {
        m->n = i + 1;
        rc = parse_key(sdm->u.dict.keys[i], sdm->u.dict.vals[i], planner, sl, nsl, m, &m->keys[i], e);
        if (rc == 0 && m->keys[i].depth < 2) m->nested = false;
    }
    free(sl);
    return rc;
}

int dcp_meta_parse(const uint8_t *buf, size_t len, const char *what, dcp_meta *m, fm_err *e)
{
    memset(m, 0, sizeof *m);
    pkl_doc *doc = pkl_doc_new();
    pkl_value *root = NULL;
    int rc = doc ? pkl_load(doc, buf, len, NULL, &root, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = parse_root(root, m, e);
    pkl_doc_free(doc);
    if (rc) {
        dcp_meta_free(m);
        fm_context(e, "%s", what);
    }
    return rc;
}

void dcp_meta_free(dcp_meta *m)
{
    if (m == NULL) return;
    for (size_t i = 0; i < m->nfiles; i++) free(m->files[i]);
    free(m->files);
    for (size_t i = 0; i < m->n; i++) {
        for (size_t c = 0; c < m->keys[i].nchunks; c++) free(m->keys[i].chunks[c].transforms);
        free(m->keys[i].chunks);
        free(m->keys[i].fqn);
        free(m->keys[i].top);
    }
    free(m->keys);
    memset(m, 0, sizeof *m);
}

/* ---- which keys are the model ---- */

static bool has_top(const dcp_meta *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->keys[i].top && strcmp(m->keys[i].top, name) == 0) return true;
    return false;
}

static void list_tops(const dcp_meta *m, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < m->n && o < len; i++) {
        const char *t = m->keys[i].top;
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++) seen = m->keys[j].top && strcmp(m->keys[j].top, t) == 0;
        if (!seen) o += (size_t)snprintf(buf + o, len - o, "%s'%s'", o ? ", " : "", t);
    }
}

int dcp_select(const dcp_meta *m, const char *entry, char **prefix, fm_err *e)
{
    char tops[512];
    *prefix = NULL;
    if (!m->nested) {
        if (entry) return fm_fail(e, FM_EUSAGE, "--dcp-key %s: this checkpoint's state dict is flat (no entries)", entry);
        *prefix = fm_strdup("");
        return *prefix ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    }
    list_tops(m, tops, sizeof tops);
    const char *pick = entry;
    if (pick == NULL && has_top(m, "model")) pick = "model";
    if (pick == NULL && strchr(tops, ',') == NULL) pick = m->keys[0].top;
    if (pick == NULL)
        return fm_fail(e, FM_EUSAGE, "the state dict has no 'model' entry; pick one of %s with --dcp-key NAME", tops);
    if (!has_top(m, pick)) return fm_fail(e, FM_EUSAGE, "--dcp-key %s: no such entry (the entries are %s)", pick, tops);
    *prefix = fm_asprintf("%s.", pick);
    return *prefix ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
}

bool dcp_key_selected(const dcp_key *k, const char *prefix)
{
    return !k->bytes && fm_starts_with(k->fqn, prefix) && k->fqn[strlen(prefix)] != '\0';
}

/* ---- one data file ---- */

char *dcp_file_path(const dcp_meta *m, const char *dir, int file) { return fm_path_join(dir, m->files[file]); }

static int check_usable(const dcp_meta *m, const dcp_key *k, const dcp_chunk *c, fm_err *e)
{
    if (c->transforms)
        return fm_fail(e, FM_EUNSUPPORTED, "key '%s': the item at [%" PRIu64 ", +%" PRIu64 ") of %s is stored with "
                       "transform_descriptors %s (a compressed or transformed item of a newer torch): unsupported",
                       k->fqn, c->offset, c->length, m->files[c->file], c->transforms);
    return 0;
}

static int gather_items(const dcp_meta *m, int file, const char *prefix, ptz_item **items, size_t *n, fm_err *e)
{
    size_t cap = 0;
    *items = NULL;
    *n = 0;
    for (size_t i = 0; i < m->n; i++) {
        const dcp_key *k = &m->keys[i];
        if (!dcp_key_selected(k, prefix)) continue;
        for (size_t c = 0; c < k->nchunks; c++) {
            if (k->chunks[c].file != file) continue;
            FM_TRY(check_usable(m, k, &k->chunks[c], e));
            bool dup = false; /* empty chunks at one offset share one item */
            for (size_t i2 = 0; i2 < *n && !dup; i2++) dup = (*items)[i2].offset == k->chunks[c].offset;
            if (dup) continue;
            if (*n == cap) {
                cap = cap ? cap * 2 : 64;
                ptz_item *ni = realloc(*items, cap * sizeof *ni);
                if (ni == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
                *items = ni;
            }
            (*items)[(*n)++] = (ptz_item){k->chunks[c].offset, k->chunks[c].length};
        }
    }
    return 0;
}

/* The chunk's item: one plain tensor of the key's dtype and chunk's sizes. */
static int item_piece(const dcp_key *k, const dcp_chunk *c, ptz_file *zip, ti_piece *p, fm_err *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    FM_TRY(ptz_scope(zip, c->offset, e));
    pkl_doc *doc = NULL;
    pkl_value *root = NULL;
    ti_entry en;
    memset(&en, 0, sizeof en);
    int rc = ptz_read_record(zip, "data.pkl", DCP_MAX_ITEM_PKL, &buf, &len, e);
    if (rc == 0 && (doc = pkl_doc_new()) == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = pkl_load(doc, buf, len, NULL, &root, e);
    if (rc == 0 && !ti_is_tensor(root)) rc = fm_fail(e, FM_EFORMAT, "the item does not hold a tensor");
    if (rc == 0) rc = ti_parse(root, zip, -1, &en, e);
    if (rc == 0 && (en.kind != TI_PLAIN || en.npieces != 1)) rc = fm_fail(e, FM_EFORMAT, "the item is not a plain tensor");
    char a[128], b[128];
    if (rc == 0 && en.dtype != k->dtype)
        rc = fm_fail(e, FM_EMISMATCH, "the item holds %s but .metadata says %s", dt_torch_name(en.dtype),
                     dt_torch_name(k->dtype));
    if (rc == 0 && (en.pieces[0].view.ndim != k->ndim ||
                    memcmp(en.pieces[0].view.shape, c->sizes, sizeof(int64_t) * (size_t)k->ndim) != 0))
        rc = fm_fail(e, FM_EMISMATCH, "the item holds a tensor of shape %s but .metadata says the chunk is %s",
                     ti_format_shape(en.pieces[0].view.ndim, en.pieces[0].view.shape, a, sizeof a),
                     ti_format_shape(k->ndim, c->sizes, b, sizeof b));
    if (rc == 0) {
        *p = en.pieces[0];
        p->view.storage = fm_asprintf("%" PRIu64 "/%s", c->offset, en.pieces[0].view.storage);
        if (p->view.storage == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
        memcpy(p->goff, c->offsets, sizeof(int64_t) * (size_t)k->ndim);
    }
    ti_entry_free(&en);
    pkl_doc_free(doc);
    free(buf);
    ptz_scope(zip, UINT64_MAX, e);
    if (rc) fm_context(e, "key '%s', item at [%" PRIu64 ", +%" PRIu64 ")", k->fqn, c->offset, c->length);
    return rc;
}

static int key_entry(const dcp_key *k, const char *prefix, int file, ptz_file *zip, ti_entry *en, fm_err *e)
{
    en->key = fm_strdup(k->fqn + strlen(prefix));
    if (en->key == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    en->kind = TI_SHARDED;
    en->dtype = k->dtype;
    en->ndim = k->ndim;
    memcpy(en->gshape, k->size, sizeof en->gshape);
    size_t mine = 0;
    for (size_t c = 0; c < k->nchunks; c++) mine += k->chunks[c].file == file;
    en->pieces = calloc(mine ? mine : 1, sizeof *en->pieces);
    if (en->pieces == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t c = 0; c < k->nchunks; c++) {
        if (k->chunks[c].file != file) continue;
        FM_TRY(item_piece(k, &k->chunks[c], zip, &en->pieces[en->npieces], e));
        en->npieces++;
    }
    return 0;
}

static int build_index(const dcp_meta *m, int file, const char *prefix, ptz_file *zip, ti_index *ix, fm_err *e)
{
    ix->rank = file;
    ix->path = fm_strdup(ptz_path(zip));
    ix->big_endian = ptz_big_endian(zip);
    ix->entries = calloc(m->n ? m->n : 1, sizeof *ix->entries);
    if (ix->path == NULL || ix->entries == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n; i++) {
        if (!dcp_key_selected(&m->keys[i], prefix)) {
            ix->skipped++;
            continue;
        }
        FM_TRY(key_entry(&m->keys[i], prefix, file, zip, &ix->entries[ix->n++], e));
    }
    return 0;
}

int dcp_file_index(const dcp_meta *m, const char *dir, int file, const char *prefix, unsigned flags, size_t read_buffer,
                   ptz_file **zip, ti_index *ix, fm_err *e)
{
    memset(ix, 0, sizeof *ix);
    *zip = NULL;
    ptz_item *items = NULL;
    size_t n = 0;
    char *path = dcp_file_path(m, dir, file);
    int rc = path ? gather_items(m, file, prefix, &items, &n, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = ptz_open_items(path, flags, read_buffer, items, n, zip, e);
    if (rc == 0) rc = build_index(m, file, prefix, *zip, ix, e);
    if (rc) {
        fm_context(e, "%s", path ? path : "?");
        ti_index_free(ix);
        ptz_close(*zip);
        *zip = NULL;
    }
    free(items);
    free(path);
    return rc;
}
