/* rsfile.c - see rsfile.h. */
#include "reshard/rsfile.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/dtmpl.h"
#include "torchfmt/pkl.h"
#include "torchfmt/pkw.h"
#include "torchfmt/ptzw.h"

#define MAX_PICKLE (1u << 30)

typedef enum st_kind { ST_COPY = 0, ST_DATA, ST_MESH } st_kind;

/* One storage record of the new file. */
typedef struct st_rec {
    const char *key;      /* borrowed from the tree */
    st_kind kind;
    const ti_entry *en;   /* ST_DATA: the tensor (input rank 0's entry) */
    rs_block b;           /* ST_DATA: its new block */
    dt_type dt;           /* ST_MESH: int32 or int64 */
    uint64_t numel;       /* ST_MESH */
} st_rec;

typedef struct job {
    const rs_source *s;
    const rs_target *t;
    int64_t rank;
    pkl_doc *doc;
    pkl_value *root;
    uint8_t *seen;        /* per node serial: visited */
    st_rec *recs;
    size_t nrecs, cap;
    ptz_file *tz;         /* template file */
} job;

static const ti_entry *find_entry(const ti_index *ix, const char *key, size_t hint)
{
    if (hint < ix->n && strcmp(ix->entries[hint].key, key) == 0) return &ix->entries[hint];
    for (size_t i = 0; i < ix->n; i++)
        if (strcmp(ix->entries[i].key, key) == 0) return &ix->entries[i];
    return NULL;
}

/* Position of key in rank 0's index: the ranks list their keys in the same
 * order, so it is where the other ranks have it too (checked, not assumed). */
static size_t hint_of(const rs_source *s, const char *key)
{
    const ti_entry *en = find_entry(&s->ix[0], key, 0);
    return en ? (size_t)(en - s->ix[0].entries) : 0;
}

bool rs_padded(const rs_source *s, const char *key)
{
    size_t hint = hint_of(s, key);
    for (int r = 0; r < s->world; r++) {
        const ti_entry *en = find_entry(&s->ix[r], key, hint);
        if (en == NULL || en->npieces != 1) continue;
        const ti_view *v = &en->pieces[0].view;
        uint64_t snumel = v->storage_nbytes / dt_size(v->dtype), vnumel = ti_view_numel(v);
        int mdim, d;
        if (rs_entry_shard(en, &mdim, &d, NULL)) continue;
        int64_t st, l0;
        ti_chunk(en->gshape[d], en->mesh_shape[mdim], 0, &st, &l0);
        if (snumel > vnumel) return true;
        if (v->shape[d] < l0 && snumel == vnumel) return false;
    }
    return s->padded_default;
}

static st_rec *find_rec(job *j, const char *key)
{
    for (size_t i = 0; i < j->nrecs; i++)
        if (strcmp(j->recs[i].key, key) == 0) return &j->recs[i];
    return NULL;
}

static int add_rec(job *j, const st_rec *r, fm_err *e)
{
    if (find_rec(j, r->key)) return 0; /* a shared (tied) storage: the first user decides */
    if (j->nrecs == j->cap) {
        size_t cap = j->cap ? 2 * j->cap : 64;
        st_rec *g = realloc(j->recs, sizeof *g * cap);
        if (g == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        j->recs = g;
        j->cap = cap;
    }
    j->recs[j->nrecs++] = *r;
    return 0;
}

static bool first_visit(job *j, const pkl_value *v)
{
    if (j->seen[v->serial]) return false;
    j->seen[v->serial] = 1;
    return true;
}

/* Rewrites one DTensor of the template for the new rank. */
static int retarget(job *j, const char *key, pkl_value *v, size_t hint, fm_err *e)
{
    dtm_parts p;
    if (!dtm_match(v, &p)) return fm_fail(e, FM_EUNSUPPORTED, "key '%s' is not a DTensor", key);
    if (!first_visit(j, v)) return 0; /* a tied parameter: the same pickled object */
    const ti_entry *en = find_entry(&j->s->ix[0], key, hint);
    if (en == NULL) return fm_fail(e, FM_EMISMATCH, "key '%s' is missing from rank 0", key);
    int mdim, d;
    FM_TRY(rs_entry_shard(en, &mdim, &d, e));
    if (en->mesh_ndim != j->t->mesh_ndim)
        return fm_fail(e, FM_EUNSUPPORTED, "key '%s': a %d-D mesh cannot become a %d-D one", key, en->mesh_ndim,
                       j->t->mesh_ndim);
    st_rec r = {.kind = ST_DATA, .en = en};
    rs_block_of(j->t, j->rank, en, rs_padded(j->s, key), &r.b);
    dtm_view dv = {.storage_numel = r.b.storage_numel, .ndim = en->ndim};
    memcpy(dv.shape, r.b.lshape, sizeof dv.shape);
    rs_contig_strides(en->ndim, r.b.sshape, dv.stride);
    FM_TRY(dtm_set_local(j->doc, p.local, &dv, &r.key, e));
    if (first_visit(j, p.spec)) {
        int sd[TI_MAX_MESH];
        for (int i = 0; i < j->t->mesh_ndim; i++) sd[i] = i == mdim ? r.b.shard_dim : -1;
        int64_t old = 1;
        for (int i = 0; i < en->mesh_ndim; i++) old *= en->mesh_shape[i];
        FM_TRY(dtm_set_placements(j->doc, p.spec, sd, j->t->mesh_ndim, old != j->t->world, e));
    }
    if (first_visit(j, p.mesh)) {
        dtm_mesh m = {.ndim = j->t->mesh_ndim, .rank = j->rank};
        memcpy(m.shape, j->t->mesh_shape, sizeof m.shape);
        st_rec mr = {.kind = ST_MESH, .numel = (uint64_t)j->t->world};
        FM_TRY(dtm_set_mesh(j->doc, p.mesh, &m, &mr.key, &mr.dt, e));
        FM_TRY(add_rec(j, &mr, e));
    }
    return add_rec(j, &r, e);
}

/* The DTensors of the template: the state dict's values (model), or
 * state[index][name] (optimizer); other values are left as they are. */
static int retarget_all(job *j, fm_err *e)
{
    const pkl_value *d = pkl_as_dict(j->root);
    if (d == NULL) return fm_fail(e, FM_EFORMAT, "data.pkl does not hold a dict");
    if (j->s->kind == RS_MODEL) {
        for (size_t i = 0; i < d->u.dict.n; i++) {
            const char *key = pkl_get_str(d->u.dict.keys[i]);
            if (key && ti_is_tensor(d->u.dict.vals[i])) FM_TRY(retarget(j, key, d->u.dict.vals[i], i, e));
        }
        return 0;
    }
    const pkl_value *state = pkl_as_dict(pkl_dict_get(d, "state"));
    size_t hint = 0;
    for (size_t i = 0; state && i < state->u.dict.n; i++) {
        int64_t idx;
        const pkl_value *per = pkl_as_dict(state->u.dict.vals[i]);
        if (!pkl_get_int(state->u.dict.keys[i], &idx) || per == NULL)
            return fm_fail(e, FM_EFORMAT, "optimizer state entry %zu is not {index: {name: value}}", i);
        for (size_t k = 0; k < per->u.dict.n; k++) {
            const char *name = pkl_get_str(per->u.dict.keys[k]);
            pkl_value *v = per->u.dict.vals[k];
            dtm_parts p;
            if (name == NULL || !dtm_match(v, &p)) continue; /* steps and other plain values are copied */
            char key[96];
            snprintf(key, sizeof key, "%" PRId64 "/%s", idx, name);
            FM_TRY(retarget(j, key, v, hint++, e));
        }
    }
    return 0;
}

/* Every storage the tree refers to that is not a DTensor's or the mesh's. */
static int collect_copies(job *j, const pkl_value *v, int depth, fm_err *e)
{
    if (v == NULL || v->type < PKL_LIST) return 0;
    if (depth > 10000) return fm_fail(e, FM_EUNSUPPORTED, "pickle nested too deeply");
    if (j->seen[v->serial] == 2) return 0;
    j->seen[v->serial] = 2;
    switch (v->type) {
    case PKL_LIST: case PKL_TUPLE: case PKL_SET: case PKL_FROZENSET:
        for (size_t i = 0; i < v->u.seq.n; i++) FM_TRY(collect_copies(j, v->u.seq.items[i], depth + 1, e));
        return 0;
    case PKL_DICT:
        for (size_t i = 0; i < v->u.dict.n; i++) {
            FM_TRY(collect_copies(j, v->u.dict.keys[i], depth + 1, e));
            FM_TRY(collect_copies(j, v->u.dict.vals[i], depth + 1, e));
        }
        return 0;
    case PKL_OBJ: {
        const pkl_value *parts[] = {v->u.obj.callable, v->u.obj.args, v->u.obj.kwargs, v->u.obj.state,
                                    v->u.obj.dictitems, v->u.obj.listitems};
        for (size_t i = 0; i < FM_ARRAY_LEN(parts); i++) FM_TRY(collect_copies(j, parts[i], depth + 1, e));
        return 0;
    }
    case PKL_PERSID: {
        size_t n;
        pkl_value *const *pid = pkl_items(v->u.persid.pid, &n);
        const char *key = pid && n >= 3 ? pkl_get_str(pid[2]) : NULL;
        if (key == NULL) return fm_fail(e, FM_EFORMAT, "persistent id is not ('storage', class, key, ...)");
        st_rec r = {.key = key, .kind = ST_COPY};
        return add_rec(j, &r, e);
    }
    default: return 0;
    }
}

static int cmp_rec_lex(const void *a, const void *b)
{
    return strcmp(((const st_rec *)a)->key, ((const st_rec *)b)->key);
}

static int cmp_rec(const void *a, const void *b)
{
    const char *x = ((const st_rec *)a)->key, *y = ((const st_rec *)b)->key;
    size_t lx = strlen(x), ly = strlen(y); /* numeric keys: shorter is smaller */
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

/* ---- storages ---- */

static int copy_record(job *j, ptzw *w, const char *key, uint64_t *bytes, fm_err *e)
{
    char name[64];
    snprintf(name, sizeof name, "data/%s", key);
    ptz_rec *r;
    FM_TRY(ptz_rec_open(j->tz, name, &r, e));
    uint64_t size = ptz_rec_size(r), chunk = ptz_buffer_size(j->tz);
    int rc = 0;
    for (uint64_t off = 0; rc == 0 && off < size; off += chunk) {
        const uint8_t *p;
        size_t len = (size_t)FM_MIN(chunk, size - off);
        rc = ptz_rec_get(r, off, len, &p, e);
        if (rc == 0) rc = ptzw_write(w, p, len, e);
    }
    if (rc == 0) rc = ptz_rec_finish(r, e);
    ptz_rec_close(r);
    *bytes += size;
    return rc;
}

static int write_ranks(ptzw *w, const st_rec *r, uint64_t *bytes, fm_err *e)
{
    size_t es = dt_size(r->dt);
    for (uint64_t i = 0; i < r->numel; i++) {
        int64_t v64 = (int64_t)i;
        int32_t v32 = (int32_t)i;
        FM_TRY(ptzw_write(w, es == 4 ? (const void *)&v32 : (const void *)&v64, es, e));
    }
    *bytes += r->numel * es;
    return 0;
}

/* The input pieces of one tensor, with a lazily opened reader each. */
typedef struct src_piece {
    int rank;
    const ti_piece *p;
    ptz_rec *rec;
} src_piece;

static int gather_pieces(const rs_source *s, const char *key, src_piece **out, size_t *n, fm_err *e)
{
    *out = NULL;
    *n = 0;
    size_t hint = hint_of(s, key);
    for (int r = 0; r < s->world; r++) {
        const ti_entry *en = find_entry(&s->ix[r], key, hint);
        if (en == NULL) return fm_fail(e, FM_EMISMATCH, "key '%s' is missing from rank %d", key, r);
        for (size_t i = 0; i < en->npieces; i++) {
            if (en->pieces[i].replica || ti_view_numel(&en->pieces[i].view) == 0) continue;
            src_piece *g = realloc(*out, sizeof *g * (*n + 1));
            if (g == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
            *out = g;
            g[(*n)++] = (src_piece){.rank = r, .p = &en->pieces[i]};
        }
    }
    return 0;
}

/* Copies the part of piece sp inside the global box [lo, hi) into the slab
 * (row-major with strides sst, whose element 0 is global index base). */
static int copy_box(const rs_source *s, src_piece *sp, int nd, const int64_t *lo, const int64_t *hi, const int64_t *base,
                    const int64_t *sst, size_t es, uint8_t *slab, fm_err *e)
{
    const ti_view *v = &sp->p->view;
    ptz_file *z = s->zips[sp->rank];
    if (sp->rec == NULL) FM_TRY(ptz_rec_open(z, v->storage, &sp->rec, e));
    int64_t g[TI_MAX_DIMS];
    memcpy(g, lo, sizeof(int64_t) * (size_t)nd);
    int64_t run = hi[nd - 1] - lo[nd - 1];
    size_t chunk = ptz_buffer_size(z);
    for (;;) {
        int64_t src = v->offset, dst = 0;
        for (int i = 0; i < nd; i++) {
            src += (g[i] - sp->p->goff[i]) * v->stride[i];
            dst += (g[i] - base[i]) * sst[i];
        }
        uint8_t *d = slab + (size_t)dst * es;
        if (v->stride[nd - 1] == 1) {
            for (uint64_t done = 0, total = (uint64_t)run * es; done < total;) {
                const uint8_t *p;
                size_t len = (size_t)FM_MIN(chunk, total - done);
                FM_TRY(ptz_rec_get(sp->rec, (uint64_t)src * es + done, len, &p, e));
                memcpy(d + done, p, len);
                done += len;
            }
        } else {
            for (int64_t k = 0; k < run; k++) {
                const uint8_t *p;
                FM_TRY(ptz_rec_get(sp->rec, (uint64_t)(src + k * v->stride[nd - 1]) * es, es, &p, e));
                memcpy(d + (size_t)k * es, p, es);
            }
        }
        int i = nd - 2; /* odometer over every dim but the last */
        while (i >= 0 && ++g[i] == hi[i]) g[i] = lo[i], i--;
        if (i < 0) return 0;
    }
}

/* The new storage of one DTensor: slabs of rows of its (padded) storage
 * shape, zero where no block element lies (FSDP2's padding). */
static int write_block(job *j, ptzw *w, const st_rec *r, size_t buf_bytes, uint64_t *bytes, fm_err *e)
{
    const rs_block *b = &r->b;
    int nd = b->ndim;
    size_t es = dt_size(r->en->dtype);
    if (nd < 1) return fm_fail(e, FM_EUNSUPPORTED, "key '%s': a 0-d DTensor cannot be resharded", r->en->key);
    int64_t sst[TI_MAX_DIMS];
    rs_contig_strides(nd, b->sshape, sst);
    uint64_t row = es;
    for (int i = 1; i < nd; i++) row *= (uint64_t)b->sshape[i];
    uint64_t rows_per = FM_MAX(1, buf_bytes / (row ? row : 1));
    src_piece *sp;
    size_t np;
    int rc = gather_pieces(j->s, r->en->key, &sp, &np, e);
    uint8_t *slab = rc ? NULL : malloc((size_t)(FM_MIN(rows_per, (uint64_t)FM_MAX(b->sshape[0], 1)) * row) + 1);
    if (rc == 0 && slab == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    for (int64_t a = 0; rc == 0 && a < b->sshape[0]; a += (int64_t)rows_per) {
        int64_t rows = FM_MIN((int64_t)rows_per, b->sshape[0] - a);
        memset(slab, 0, (size_t)rows * row);
        int64_t lo[TI_MAX_DIMS], hi[TI_MAX_DIMS], base[TI_MAX_DIMS];
        for (int i = 0; i < nd; i++) {
            base[i] = b->goff[i] + (i == 0 ? a : 0);
            lo[i] = base[i];
            hi[i] = b->goff[i] + (i == 0 ? FM_MIN(a + rows, b->lshape[0]) : b->lshape[i]);
        }
        for (size_t k = 0; rc == 0 && k < np; k++) {
            int64_t plo[TI_MAX_DIMS], phi[TI_MAX_DIMS];
            bool empty = false;
            for (int i = 0; i < nd; i++) {
                plo[i] = FM_MAX(lo[i], sp[k].p->goff[i]);
                phi[i] = FM_MIN(hi[i], sp[k].p->goff[i] + sp[k].p->view.shape[i]);
                empty = empty || plo[i] >= phi[i];
            }
            if (!empty) rc = copy_box(j->s, &sp[k], nd, plo, phi, base, sst, es, slab, e);
        }
        if (rc == 0) rc = ptzw_write(w, slab, (size_t)rows * row, e);
    }
    for (size_t k = 0; k < np; k++) {
        if (rc == 0 && sp[k].rec) rc = ptz_rec_finish(sp[k].rec, e); /* reads the rest: the whole record is checked */
        ptz_rec_close(sp[k].rec);
    }
    free(sp);
    free(slab);
    *bytes += b->storage_numel * es;
    if (rc) fm_context(e, "key '%s'", r->en->key);
    return rc;
}

static int write_storages(job *j, ptzw *w, size_t buf_bytes, uint64_t *bytes, fm_err *e)
{
    /* torch <= 2.6 (no .format_version record) wrote storages in lexicographic key order */
    ptz_record_info fv;
    bool legacy = !ptz_find(j->tz, ".format_version", &fv);
    qsort(j->recs, j->nrecs, sizeof *j->recs, legacy ? cmp_rec_lex : cmp_rec);
    for (size_t i = 0; i < j->nrecs; i++) {
        const st_rec *r = &j->recs[i];
        char name[64];
        snprintf(name, sizeof name, "data/%s", r->key);
        uint64_t size = r->kind == ST_MESH ? r->numel * dt_size(r->dt)
                        : r->kind == ST_DATA ? r->b.storage_numel * dt_size(r->en->dtype) : 0;
        if (r->kind == ST_COPY) {
            ptz_record_info ri;
            if (!ptz_find(j->tz, name, &ri)) return fm_fail(e, FM_EFORMAT, "%s: record %s is missing", ptz_path(j->tz), name);
            size = ri.size;
        }
        FM_TRY(ptzw_begin_sized(w, name, size, e));
        if (r->kind == ST_COPY) FM_TRY(copy_record(j, w, r->key, bytes, e));
        else if (r->kind == ST_MESH) FM_TRY(write_ranks(w, r, bytes, e));
        else FM_TRY(write_block(j, w, r, buf_bytes, bytes, e));
        FM_TRY(ptzw_end(w, e));
    }
    return 0;
}

static int build_pickle(job *j, const uint8_t *pk, size_t len, fm_buf *out, fm_err *e)
{
    FM_TRY(pkl_load(j->doc, pk, len, NULL, &j->root, e));
    j->seen = calloc(pkl_doc_node_count(j->doc) + 1, 1);
    if (j->seen == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    if (j->s->kind == RS_EXTRA) {
        fm_buf_append(out, pk, len); /* nothing in it depends on the mesh */
    } else {
        FM_TRY(retarget_all(j, e));
        FM_TRY(pkw_dump(j->doc, j->root, out, e));
    }
    /* nodes made by the rewrite have serials past the first count */
    uint8_t *g = realloc(j->seen, pkl_doc_node_count(j->doc) + 1);
    if (g == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    j->seen = g;
    memset(j->seen, 0, pkl_doc_node_count(j->doc) + 1);
    if (out->oom) return fm_fail(e, FM_ENOMEM, "out of memory");
    return collect_copies(j, j->root, 0, e);
}

/* The records before the storages, as the release that wrote the template
 * wrote them (2.7+ added .format_version and .storage_alignment). */
static int preamble(job *j, ptzw *w, const fm_buf *pk, fm_err *e)
{
    ptz_record_info ri;
    if (ptz_find(j->tz, ".format_version", &ri)) return ptzw_add_preamble(w, pk->data, pk->len, e);
    FM_TRY(ptzw_add(w, "data.pkl", pk->data, pk->len, e));
    return ptz_find(j->tz, "byteorder", &ri) ? ptzw_add(w, "byteorder", "little", 6, e) : 0;
}

int rs_write_rank(const rs_source *s, const rs_target *t, int64_t rank, const char *path, const char *prefix,
                  size_t buf_bytes, uint64_t *bytes, fm_err *e)
{
    job j = {.s = s, .t = t, .rank = rank, .tz = s->zips[rank % s->world]};
    uint64_t nb = 0;
    uint8_t *pk = NULL;
    size_t pklen = 0;
    fm_buf out = {0};
    ptzw *w = NULL;
    j.doc = pkl_doc_new();
    int rc = j.doc ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = ptz_read_record(j.tz, "data.pkl", MAX_PICKLE, &pk, &pklen, e);
    if (rc == 0) rc = build_pickle(&j, pk, pklen, &out, e);
    if (rc) fm_context(e, "%s (template for new rank %" PRId64 ")", ptz_path(j.tz), rank);
    if (rc == 0) rc = ptzw_create(path, prefix, &w, e);
    if (rc == 0) rc = preamble(&j, w, &out, e);
    if (rc == 0) rc = write_storages(&j, w, buf_bytes, &nb, e);
    if (rc == 0) {
        rc = ptzw_close(w, e);
        w = NULL;
    }
    ptzw_abort(w);
    if (rc) fm_context(e, "writing %s", path);
    if (bytes) *bytes += nb;
    fm_buf_free(&out);
    free(pk);
    free(j.seen);
    free(j.recs);
    pkl_doc_free(j.doc);
    return rc;
}
