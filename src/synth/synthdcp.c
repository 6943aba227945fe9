/* synthdcp.c - synthetic DCP folders (see synthdcp.h). */
#include "synth/synthdcp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dtype.h"
#include "torchfmt/pkl.h"
#include "torchfmt/pkw.h"
#include "torchfmt/ptzw.h"
#include "torchfmt/tindex.h"

#define SYD_ROWS_PER_WRITE 4096 /* elements converted per write, bounded memory */
#define SYD_MODULE "torch.distributed.checkpoint.metadata"

/* ---- options ---- */

int syd_parse_layout(const char *s, syd_opts *d, fm_err *e)
{
    if (strcmp(s, "accelerate") == 0) d->layout = SYD_ACCELERATE;
    else if (strcmp(s, "titan") == 0) d->layout = SYD_TITAN;
    else if (strcmp(s, "flat") == 0) d->layout = SYD_FLAT;
    else return fm_fail(e, FM_EUSAGE, "--dcp: '%s' is not accelerate, titan or flat", s);
    return 0;
}

int syd_parse_chunking(const char *s, syd_opts *d, fm_err *e)
{
    if (strcmp(s, "shard0") == 0) d->chunking = SYD_SHARD0;
    else if (strcmp(s, "2d") == 0) d->chunking = SYD_2D;
    else return fm_fail(e, FM_EUSAGE, "--dcp-chunks: '%s' is not shard0 or 2d", s);
    return 0;
}

int syd_parse_fault(const char *s, syd_opts *d, fm_err *e)
{
    static const struct { const char *name; syd_fault f; bool file; } K[] = {
        {"missing-file", SYD_FAULT_MISSING_FILE, true}, {"truncate", SYD_FAULT_TRUNCATE, true},
        {"metadata", SYD_FAULT_METADATA, false},        {"overlap", SYD_FAULT_OVERLAP, false},
        {"gap", SYD_FAULT_GAP, false},                  {"transform", SYD_FAULT_TRANSFORM, false}};
    for (size_t i = 0; i < FM_ARRAY_LEN(K); i++) {
        size_t n = strlen(K[i].name);
        if (strncmp(s, K[i].name, n) != 0) continue;
        d->fault = K[i].f;
        if (!K[i].file && s[n] == '\0') return 0;
        if (K[i].file && s[n] == ':' && sscanf(s + n + 1, "%d", &d->fault_file) == 1 && d->fault_file >= 0) return 0;
    }
    return fm_fail(e, FM_EUSAGE, "--dcp-fault: '%s' is not missing-file:F, truncate:F, metadata, overlap, gap or transform", s);
}

/* ---- geometry ---- */

static int nfiles(const syn_opts *o) { return o->world_size; }
static int nchunks(const syn_opts *o, const syd_opts *d) { return o->world_size / (d->hsdp > 0 ? d->hsdp : 1); }

/* The grid of 2d chunking: rows x cols = S, rows the largest divisor <= sqrt(S). */
static void grid(int s, int *rows, int *cols)
{
    int r = 1;
    for (int k = 1; k * k <= s; k++)
        if (s % k == 0) r = k;
    *rows = r;
    *cols = s / r;
}

typedef struct chunk {
    int64_t off[2], size[2];
    int file;
} chunk;

static void chunk_of(const syn_opts *o, const syd_opts *d, size_t ti, const syn_tensor *t, int j, chunk *ch)
{
    int s = nchunks(o, d), r = s, cidx = 0, cols = 1;
    if (d->chunking == SYD_2D && t->ndim == 2) grid(s, &r, &cols);
    int ridx = j / cols;
    cidx = j % cols;
    ti_chunk(t->shape[0], r, ridx, &ch->off[0], &ch->size[0]);
    ch->off[1] = 0;
    ch->size[1] = t->ndim == 2 ? t->shape[1] : 0;
    if (t->ndim == 2 && cols > 1) ti_chunk(t->shape[1], cols, cidx, &ch->off[1], &ch->size[1]);
    ch->file = j + s * (int)(ti % (size_t)(d->hsdp > 0 ? d->hsdp : 1)); /* dedup spreads replicas over groups */
}

/* ---- pickles ---- */

typedef struct mk {
    pkl_doc *doc;
    bool fail;
} mk;

static pkl_value *ok(mk *m, pkl_value *v)
{
    if (v == NULL) m->fail = true;
    return v;
}
static pkl_value *mint(mk *m, int64_t v) { return ok(m, pkl_new_int(m->doc, v)); }
static pkl_value *mstr(mk *m, const char *s) { return ok(m, pkl_new_cstr(m->doc, s)); }
static pkl_value *mglob(mk *m, const char *mod, const char *n) { return ok(m, pkl_new_global(m->doc, mod, n)); }
static pkl_value *mtuple(mk *m, size_t n, pkl_value *const *v)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == NULL) return ok(m, NULL);
    return ok(m, pkl_new_tuple(m->doc, n, v));
}
static pkl_value *mcall(mk *m, pkl_value *fn, pkl_value *args)
{
    return fn && args ? ok(m, pkl_new_obj(m->doc, PKL_REDUCE, fn, args)) : ok(m, NULL);
}
static void mset(mk *m, pkl_value *d, const char *k, pkl_value *v)
{
    if (d == NULL || v == NULL || pkl_dict_set(m->doc, d, mstr(m, k), v) != 0) m->fail = true;
}
static pkl_value *mnew(mk *m, const char *cls, pkl_value *state)
{
    pkl_value *o = state ? ok(m, pkl_new_obj(m->doc, PKL_NEWOBJ, mglob(m, SYD_MODULE, cls), mtuple(m, 0, NULL))) : NULL;
    if (o) o->u.obj.state = state;
    return ok(m, o);
}
static pkl_value *msize(mk *m, int n, const int64_t *v)
{
    pkl_value *items[TI_MAX_DIMS] = {0};
    for (int i = 0; i < n; i++) items[i] = mint(m, v[i]);
    pkl_value *t = mtuple(m, (size_t)n, items);
    return mcall(m, mglob(m, "torch", "Size"), mtuple(m, 1, &t));
}

static int dump(mk *m, const pkl_value *root, fm_buf *out, fm_err *e)
{
    if (m->fail || root == NULL) return fm_fail(e, FM_ENOMEM, "out of memory building a pickle");
    return pkw_dump(m->doc, root, out, e);
}

/* _rebuild_tensor_v2(persid(('storage', torch.XStorage, '0', 'cpu', numel)), 0, size, stride, False, OrderedDict()) */
static int item_pickle(dt_type dt, int ndim, const int64_t *size, fm_buf *out, fm_err *e)
{
    mk m = {pkl_doc_new(), false};
    if (m.doc == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    int64_t numel = ndim == 2 ? size[0] * size[1] : size[0];
    pkl_value *pid[5] = {mstr(&m, "storage"), mglob(&m, "torch", dt == DT_BF16 ? "BFloat16Storage" : "FloatStorage"),
                         mstr(&m, "0"), mstr(&m, "cpu"), mint(&m, numel)};
    pkl_value *tp = mtuple(&m, 5, pid);
    pkl_value *sz[2] = {mint(&m, size[0]), ndim == 2 ? mint(&m, size[1]) : NULL};
    pkl_value *st[2] = {mint(&m, ndim == 2 ? size[1] : 1), ndim == 2 ? mint(&m, 1) : NULL};
    pkl_value *a[6] = {tp ? ok(&m, pkl_new_persid(m.doc, tp)) : NULL, mint(&m, 0), mtuple(&m, (size_t)ndim, sz),
                       mtuple(&m, (size_t)ndim, st), ok(&m, pkl_new_bool(m.doc, false)),
                       mcall(&m, mglob(&m, "collections", "OrderedDict"), mtuple(&m, 0, NULL))};
    pkl_value *root = mcall(&m, mglob(&m, "torch._utils", "_rebuild_tensor_v2"), mtuple(&m, 6, a));
    int rc = dump(&m, root, out, e);
    pkl_doc_free(m.doc);
    return rc;
}

/* ---- data files ---- */

char *syd_dir(const syn_opts *o, const syd_opts *d)
{
    if (d->layout == SYD_TITAN) return fm_asprintf("%s/step-%" PRId64, o->out, o->step);
    return fm_path_join(o->out, d->layout == SYD_FLAT ? "dcp" : "pytorch_model_fsdp_0");
}

static char *file_path(const syn_opts *o, const syd_opts *d, int f)
{
    char *dir = syd_dir(o, d), *p = dir ? fm_asprintf("%s/__%d_0.distcp", dir, f) : NULL;
    free(dir);
    return p;
}

int syd_write_meta(const syn_ctx *c, const syn_opts *o, const syd_opts *d, fm_err *e)
{
    if (d->hsdp < 1 || o->world_size % d->hsdp != 0)
        return fm_fail(e, FM_EUSAGE, "--dcp-hsdp %d must divide --world-size %d", d->hsdp, o->world_size);
    char *dir = syd_dir(o, d), *hf = fm_path_join(o->out, "huggingface");
    int rc = dir && hf ? fm_mkdir_p(dir, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = syn_write_hf_dir(c, hf, e);
    if (rc == 0 && o->expected) rc = syn_make_expected_dirs(c, e);
    for (int f = 0; rc == 0 && f < nfiles(o); f++) { /* items are appended: start from empty files */
        char *p = file_path(o, d, f);
        rc = p ? fm_write_file(p, "", 0, e) : fm_fail(e, FM_ENOMEM, "out of memory");
        free(p);
    }
    free(dir);
    free(hf);
    return rc;
}

/* The chunk's values, row by row, converted to the parameter dtype. */
static int write_values(ptzw *w, const syn_tensor *t, const chunk *ch, dt_type dt, float *fb, uint16_t *hb, fm_err *e)
{
    int64_t cols = t->ndim == 2 ? t->shape[1] : 1, ccols = t->ndim == 2 ? ch->size[1] : ch->size[0];
    int64_t rows = t->ndim == 2 ? ch->size[0] : 1;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c0 = 0; c0 < ccols; c0 += SYD_ROWS_PER_WRITE) {
            size_t n = (size_t)FM_MIN((int64_t)SYD_ROWS_PER_WRITE, ccols - c0);
            uint64_t g = t->ndim == 2 ? (uint64_t)((ch->off[0] + r) * cols + ch->off[1] + c0) : (uint64_t)(ch->off[0] + c0);
            syn_fill(t, g, n, fb);
            if (dt == DT_BF16) dt_convert(DT_F32, DT_BF16, fb, hb, n, false);
            FM_TRY(ptzw_write(w, dt == DT_BF16 ? (const void *)hb : (const void *)fb, n * dt_size(dt), e));
        }
    }
    return 0;
}

static int write_item(const syn_tensor *t, const chunk *ch, dt_type dt, const char *path, float *fb, uint16_t *hb,
                      uint64_t *bytes, fm_err *e)
{
    fm_buf pkl = {0};
    int64_t size[2] = {ch->size[0], ch->size[1]};
    ptzw *w = NULL;
    int rc = item_pickle(dt, t->ndim, size, &pkl, e);
    if (rc == 0) rc = ptzw_append(path, "archive", &w, e);
    if (rc == 0) rc = ptzw_add_preamble(w, pkl.data, pkl.len, e);
    if (rc == 0) rc = ptzw_begin(w, "data/0", e);
    if (rc == 0) rc = write_values(w, t, ch, dt, fb, hb, e);
    if (rc == 0) rc = ptzw_end(w, e);
    if (rc == 0) {
        rc = ptzw_close(w, e);
        w = NULL;
    }
    ptzw_abort(w);
    fm_buf_free(&pkl);
    uint64_t numel = (uint64_t)size[0] * (uint64_t)(t->ndim == 2 ? size[1] : 1);
    if (rc == 0 && bytes) *bytes += numel * dt_size(dt);
    return rc;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

int syd_write_file(syn_ctx *c, const syn_opts *o, const syd_opts *d, int f, fm_buf *locs, uint64_t *bytes, fm_err *e)
{
    char *path = file_path(o, d, f);
    float *fb = malloc(SYD_ROWS_PER_WRITE * sizeof *fb);
    uint16_t *hb = malloc(SYD_ROWS_PER_WRITE * sizeof *hb);
    int rc = path && fb && hb ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < syn_tensor_count(c); i++) {
        const syn_tensor *t = syn_tensor_at(c, i);
        const syn_tensor *src = t->tied_to >= 0 ? syn_tensor_at(c, (size_t)t->tied_to) : t;
        for (int j = 0; rc == 0 && j < nchunks(o, d); j++) {
            chunk ch;
            chunk_of(o, d, i, t, j, &ch);
            if (ch.file != f) continue;
            uint64_t before = file_size(path);
            rc = write_item(src, &ch, o->dtype, path, fb, hb, bytes, e);
            uint64_t q[4] = {i, (uint64_t)j, before, file_size(path) - before};
            if (rc == 0) fm_buf_append(locs, q, sizeof q);
        }
    }
    if (rc) fm_context(e, "%s", path ? path : "?");
    free(path);
    free(fb);
    free(hb);
    return rc;
}

/* ---- .metadata ---- */

typedef struct loc {
    uint64_t offset, length;
} loc;

static pkl_value *tensor_md(mk *m, const syn_opts *o, const syd_opts *d, size_t i, const syn_tensor *t, int skip_last,
                            int64_t shift)
{
    pkl_value *props_t[5] = {mglob(m, "torch", o->dtype == DT_BF16 ? "bfloat16" : "float32"), NULL,
                             ok(m, pkl_new_bool(m->doc, false)), NULL, ok(m, pkl_new_bool(m->doc, false))};
    pkl_value *ls = mstr(m, "torch.strided"), *zero = mint(m, 0);
    props_t[1] = mcall(m, mglob(m, "torch.serialization", "_get_layout"), mtuple(m, 1, &ls));
    props_t[3] = mcall(m, mglob(m, SYD_MODULE, "_MEM_FORMAT_ENCODING"), mtuple(m, 1, &zero));
    pkl_value *props = mnew(m, "TensorProperties", mtuple(m, 5, props_t));
    pkl_value *chunks = ok(m, pkl_new_list(m->doc)), *st = ok(m, pkl_new_dict(m->doc));
    int n = nchunks(o, d) - skip_last;
    for (int j = 0; j < n && chunks; j++) {
        chunk ch;
        chunk_of(o, d, i, t, j, &ch);
        if (j == 1) ch.off[0] += shift;
        pkl_value *cd = ok(m, pkl_new_dict(m->doc));
        mset(m, cd, "offsets", msize(m, t->ndim, ch.off));
        mset(m, cd, "sizes", msize(m, t->ndim, ch.size));
        if (pkl_seq_append(m->doc, chunks, mnew(m, "ChunkStorageMetadata", cd)) != 0) m->fail = true;
    }
    mset(m, st, "properties", props);
    mset(m, st, "size", msize(m, t->ndim, t->shape));
    mset(m, st, "chunks", chunks);
    return mnew(m, "TensorStorageMetadata", st);
}

static void storage_entries(mk *m, const syn_opts *o, const syd_opts *d, size_t i, const syn_tensor *t, const char *fqn,
                            const loc *lc, int skip_last, int64_t shift, pkl_value *sd)
{
    for (int j = 0; j < nchunks(o, d) - skip_last; j++) {
        chunk ch;
        chunk_of(o, d, i, t, j, &ch);
        if (j == 1) ch.off[0] += shift;
        pkl_value *kd = ok(m, pkl_new_dict(m->doc)), *vd = ok(m, pkl_new_dict(m->doc));
        mset(m, kd, "fqn", mstr(m, fqn));
        mset(m, kd, "offset", msize(m, t->ndim, ch.off));
        mset(m, kd, "index", mint(m, j));
        char name[32];
        snprintf(name, sizeof name, "__%d_0.distcp", ch.file);
        mset(m, vd, "relative_path", mstr(m, name));
        mset(m, vd, "offset", mint(m, (int64_t)lc[j].offset));
        mset(m, vd, "length", mint(m, (int64_t)lc[j].length));
        if (d->fault == SYD_FAULT_TRANSFORM && i == 0 && j == 0) {
            pkl_value *l = ok(m, pkl_new_list(m->doc));
            if (l == NULL || pkl_seq_append(m->doc, l, mstr(m, "stream.zstd")) != 0) m->fail = true;
            mset(m, vd, "transform_descriptors", l);
        }
        pkl_value *k = mnew(m, "MetadataIndex", kd);
        pkl_value *v = k ? ok(m, pkl_new_obj(m->doc, PKL_NEWOBJ, mglob(m, "torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                                               mtuple(m, 0, NULL)))
                         : NULL;
        if (v) v->u.obj.state = vd;
        if (k == NULL || v == NULL || pkl_dict_set(m->doc, sd, k, v) != 0) m->fail = true;
    }
}

static int metadata_pickle(const syn_ctx *c, const syn_opts *o, const syd_opts *d, const loc *locs, fm_buf *out, fm_err *e)
{
    mk m = {pkl_doc_new(), false};
    if (m.doc == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    pkl_value *sdm = ok(&m, pkl_new_dict(m.doc)), *pd = ok(&m, pkl_new_dict(m.doc)), *sd = ok(&m, pkl_new_dict(m.doc));
    size_t S = (size_t)nchunks(o, d);
    for (size_t i = 0; i < syn_tensor_count(c) && !m.fail; i++) {
        const syn_tensor *t = syn_tensor_at(c, i);
        int skip = d->fault == SYD_FAULT_GAP && i == 0;
        int64_t shift = d->fault == SYD_FAULT_OVERLAP && i == 0 ? -1 : 0;
        char *fqn = d->layout == SYD_FLAT ? fm_strdup(t->name) : fm_asprintf("model.%s", t->name);
        if (fqn == NULL) m.fail = true;
        else {
            mset(&m, sdm, fqn, tensor_md(&m, o, d, i, t, skip, shift));
            pkl_value *path[2] = {mstr(&m, d->layout == SYD_FLAT ? t->name : "model"), mstr(&m, t->name)};
            mset(&m, pd, fqn, ok(&m, pkl_new_list(m.doc)));
            pkl_value *l = pkl_dict_get(pd, fqn);
            for (int k = d->layout == SYD_FLAT ? 1 : 0; l && k < 2; k++)
                if (pkl_seq_append(m.doc, l, d->layout == SYD_FLAT ? path[0] : path[k]) != 0) m.fail = true;
            storage_entries(&m, o, d, i, t, fqn, &locs[i * S], skip, shift, sd);
        }
        free(fqn);
    }
    pkl_value *root = ok(&m, pkl_new_dict(m.doc));
    mset(&m, root, "state_dict_metadata", sdm);
    mset(&m, root, "planner_data", pd);
    mset(&m, root, "storage_data", sd);
    pkl_value *md = mnew(&m, "Metadata", root);
    int rc = dump(&m, md, out, e);
    pkl_doc_free(m.doc);
    return rc;
}

static int apply_file_fault(const syn_opts *o, const syd_opts *d, fm_err *e)
{
    if (d->fault != SYD_FAULT_MISSING_FILE && d->fault != SYD_FAULT_TRUNCATE) return 0;
    if (d->fault_file >= nfiles(o)) return fm_fail(e, FM_EUSAGE, "--dcp-fault: no data file %d", d->fault_file);
    char *p = file_path(o, d, d->fault_file);
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    uint64_t sz = file_size(p);
    int rc = d->fault == SYD_FAULT_MISSING_FILE ? unlink(p) : truncate(p, (off_t)(sz > 100 ? sz - 100 : 0));
    free(p);
    return rc ? fm_fail(e, FM_EIO, "--dcp-fault: cannot change data file %d", d->fault_file) : 0;
}

int syd_write_metadata(const syn_ctx *c, const syn_opts *o, const syd_opts *d, const uint8_t *locs, size_t len, fm_err *e)
{
    size_t S = (size_t)nchunks(o, d), n = syn_tensor_count(c);
    loc *lc = calloc((n * S) > 0 ? n * S : 1, sizeof *lc);
    if (lc == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t k = 0; k + 32 <= len; k += 32) {
        uint64_t q[4];
        memcpy(q, locs + k, sizeof q);
        if (q[0] < n && q[1] < S) lc[q[0] * S + q[1]] = (loc){q[2], q[3]};
    }
    fm_buf pkl = {0};
    char *dir = syd_dir(o, d), *path = dir ? fm_path_join(dir, ".metadata") : NULL;
    int rc = path ? metadata_pickle(c, o, d, lc, &pkl, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0 && d->fault == SYD_FAULT_METADATA) pkl.len /= 2;
    if (rc == 0) rc = fm_write_file(path, pkl.data, pkl.len, e);
    if (rc == 0) rc = apply_file_fault(o, d, e);
    fm_buf_free(&pkl);
    free(lc);
    free(dir);
    free(path);
    return rc;
}
