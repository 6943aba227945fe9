/* plan.c - every rank's index -> one merge plan (see plan.h). */
#include "plan/plan.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf/hfdir.h"
#include "hf/st.h"
#include "plan/lora.h"

/* ---- key lookup: per rank, entry indices sorted by key ---- */

typedef struct keymap {
    const ti_index *ix;
    size_t *order;
} keymap;

static const ti_index *g_sort_ix; /* qsort has no context argument; plan_build is not reentrant */

static int cmp_key(const void *a, const void *b)
{
    return strcmp(g_sort_ix->entries[*(const size_t *)a].key, g_sort_ix->entries[*(const size_t *)b].key);
}

static int keymap_init(keymap *m, const ti_index *ix, fm_err *e)
{
    m->ix = ix;
    m->order = malloc(sizeof(size_t) * (ix->n ? ix->n : 1));
    if (m->order == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < ix->n; i++) m->order[i] = i;
    g_sort_ix = ix;
    qsort(m->order, ix->n, sizeof(size_t), cmp_key);
    for (size_t i = 1; i < ix->n; i++)
        if (strcmp(ix->entries[m->order[i - 1]].key, ix->entries[m->order[i]].key) == 0)
            return fm_fail(e, FM_EFORMAT, "%s: key '%s' appears twice", ix->path, ix->entries[m->order[i]].key);
    return 0;
}

static const ti_entry *keymap_find(const keymap *m, const char *key)
{
    size_t lo = 0, hi = m->ix->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->ix->entries[m->order[mid]].key, key);
        if (c == 0) return &m->ix->entries[m->order[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ---- small helpers ---- */

static int warn(plan *p, const char *fmt, ...) FM_PRINTF(2, 3);
static int warn(plan *p, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char **w = realloc(p->warnings, sizeof(char *) * (p->nwarnings + 1));
    if (w == NULL) return FM_ENOMEM;
    p->warnings = w;
    w[p->nwarnings] = fm_strdup(buf);
    if (w[p->nwarnings] == NULL) return FM_ENOMEM;
    p->nwarnings++;
    return 0;
}

static uint64_t numel_of(int ndim, const int64_t *shape)
{
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (uint64_t)shape[d];
    return n;
}

static bool same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    return na == nb && memcmp(a, b, sizeof(int64_t) * (size_t)na) == 0;
}

static bool same_view(const ti_view *a, const ti_view *b)
{
    return strcmp(a->storage, b->storage) == 0 && a->offset == b->offset && a->dtype == b->dtype &&
           same_shape(a->ndim, a->shape, b->ndim, b->shape) &&
           memcmp(a->stride, b->stride, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

char *plan_clean_name(const char *key)
{
    static const char *wrappers[] = {"_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."};
    char *out = fm_strdup(key);
    if (out == NULL) return NULL;
    for (size_t w = 0; w < FM_ARRAY_LEN(wrappers); w++) {
        size_t wl = strlen(wrappers[w]);
        char *p = out;
        while ((p = strstr(p, wrappers[w])) != NULL) {
            if (p == out || p[-1] == '.') memmove(p, p + wl, strlen(p + wl) + 1);
            else p++;
        }
    }
    return out;
}

/* ---- collecting the source pieces of one key ---- */

typedef struct src {
    const ti_piece *piece;
    int rank;
    bool big_endian;
    int64_t goff[TI_MAX_DIMS]; /* may differ from piece->goff for plain concat */
} src;

typedef struct srcset {
    src *v;
    size_t n, cap;
} srcset;

static int srcset_add(srcset *s, const ti_piece *p, int rank, bool big, fm_err *e)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        src *nv = realloc(s->v, sizeof *nv * cap);
        if (nv == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n] = (src){p, rank, big, {0}};
    memcpy(s->v[s->n].goff, p->goff, sizeof p->goff);
    s->n++;
    return 0;
}

static bool same_region(const src *a, const src *b)
{
    return same_shape(a->piece->view.ndim, a->piece->view.shape, b->piece->view.ndim, b->piece->view.shape) &&
           memcmp(a->goff, b->goff, sizeof(int64_t) * (size_t)a->piece->view.ndim) == 0;
}

/* Plain tensors carry no placement: decide replicated or dim-0 slices. */
static int plain_layout(const ti_entry *const *ents, int W, const plan_opts *o, plan *pl, plan_tensor *t,
                        bool *concat, fm_err *e)
{
    bool all_equal = true, shapes_equal = true;
    for (int r = 1; r < W; r++) {
        const ti_piece *a = &ents[0]->pieces[0], *b = &ents[r]->pieces[0];
        if (!same_shape(a->view.ndim, a->view.shape, b->view.ndim, b->view.shape)) shapes_equal = all_equal = false;
        else if (!(a->has_crc && b->has_crc && a->crc == b->crc)) all_equal = false;
    }
    *concat = o->plain == PLAN_PLAIN_CONCAT || (o->plain == PLAN_PLAIN_AUTO && !all_equal);
    if (W == 1 || !*concat) {
        *concat = false;
        return 0;
    }
    const ti_view *v0 = &ents[0]->pieces[0].view;
    if (v0->ndim == 0)
        return fm_fail(e, FM_EMISMATCH, "key '%s': a 0-d plain tensor differs between ranks and cannot be concatenated",
                       t->key);
    int64_t rows = 0;
    for (int r = 0; r < W; r++) {
        const ti_view *v = &ents[r]->pieces[0].view;
        if (v->ndim != v0->ndim || memcmp(v->shape + 1, v0->shape + 1, sizeof(int64_t) * (size_t)(v->ndim - 1)) != 0) {
            char a[128], b[128];
            return fm_fail(e, FM_EMISMATCH,
                           "key '%s': plain tensor of shape %s on rank 0 but %s on rank %d: not dim-0 slices", t->key,
                           ti_format_shape(v0->ndim, v0->shape, a, sizeof a), ti_format_shape(v->ndim, v->shape, b, sizeof b), r);
        }
        rows += v->shape[0];
    }
    t->ndim = v0->ndim;
    memcpy(t->shape, v0->shape, sizeof t->shape);
    t->shape[0] = rows;
    if (o->plain == PLAN_PLAIN_AUTO) {
        int rc = warn(pl, "'%s' differs between ranks and has no placement metadata: concatenated on dim 0%s",
                      t->key, shapes_equal ? "" : " (shapes differ)");
        if (rc) return fm_fail(e, rc, "out of memory");
    }
    return 0;
}

/* Replicas (same region) must hold the same bytes; keep one per region. */
static int dedup_replicas(plan_tensor *t, srcset *s, size_t *nregions, fm_err *e)
{
    size_t out = 0;
    *nregions = 0;
    for (size_t i = 0; i < s->n; i++) {
        size_t j;
        for (j = 0; j < out; j++)
            if (same_region(&s->v[j], &s->v[i])) break;
        if (j == out) {
            s->v[out++] = s->v[i];
            (*nregions)++;
            continue;
        }
        const ti_piece *a = s->v[j].piece, *b = s->v[i].piece;
        if (a->has_crc && b->has_crc && a->crc != b->crc)
            return fm_fail(e, FM_EMISMATCH,
                           "key '%s': rank %d and rank %d hold replicas of the same block with different bytes "
                           "(CRC 0x%08x vs 0x%08x)", t->key, s->v[j].rank, s->v[i].rank, a->crc, b->crc);
        if (a->replica && !b->replica) s->v[j] = s->v[i]; /* prefer the coordinate-0 copy */
    }
    s->n = out;
    return 0;
}

static bool blocks_overlap(const src *a, const src *b)
{
    for (int d = 0; d < a->piece->view.ndim; d++) {
        int64_t a0 = a->goff[d], a1 = a0 + a->piece->view.shape[d];
        int64_t b0 = b->goff[d], b1 = b0 + b->piece->view.shape[d];
        if (a1 <= b0 || b1 <= a0) return false;
    }
    return true;
}

/* The non-empty blocks must tile the tensor: inside it, total volume equal
 * to numel, pairwise disjoint. */
static int check_tiling(const plan_tensor *t, const srcset *s, fm_err *e)
{
    uint64_t vol = 0;
    for (size_t i = 0; i < s->n; i++) {
        const ti_view *v = &s->v[i].piece->view;
        if (v->ndim != t->ndim)
            return fm_fail(e, FM_EMISMATCH, "key '%s': rank %d holds a %d-D block of a %d-D tensor", t->key, s->v[i].rank,
                           v->ndim, t->ndim);
        for (int d = 0; d < t->ndim; d++)
            if (s->v[i].goff[d] < 0 || s->v[i].goff[d] + v->shape[d] > t->shape[d])
                return fm_fail(e, FM_EMISMATCH, "key '%s': rank %d's block lies outside the tensor", t->key, s->v[i].rank);
        vol += ti_view_numel(v);
    }
    for (size_t i = 0; i < s->n; i++)
        for (size_t j = i + 1; j < s->n; j++)
            if (blocks_overlap(&s->v[i], &s->v[j]))
                return fm_fail(e, FM_EMISMATCH, "key '%s': the blocks of rank %d and rank %d overlap", t->key, s->v[i].rank,
                               s->v[j].rank);
    if (vol != t->numel)
        return fm_fail(e, FM_EMISMATCH, "key '%s': the shards cover %" PRIu64 " of %" PRIu64 " elements", t->key, vol,
                       t->numel);
    return 0;
}

/* ---- run geometry ---- */

static void piece_geometry(const plan_tensor *t, plan_piece *p)
{
    int n = t->ndim;
    p->k = 0;
    for (int d = n - 1; d >= 0; d--)
        if (p->view.shape[d] != t->shape[d]) {
            p->k = d;
            break;
        }
    if (n == 0) {
        p->run_len = p->nruns = 1;
        p->first = 0;
        p->src_contig = true;
        return;
    }
    p->run_len = (uint64_t)p->view.shape[p->k];
    for (int d = p->k + 1; d < n; d++) p->run_len *= (uint64_t)t->shape[d];
    p->nruns = 1;
    for (int d = 0; d < p->k; d++) p->nruns *= (uint64_t)p->view.shape[d];
    p->first = 0;
    for (int d = 0; d < n; d++) p->first += (uint64_t)p->goff[d] * (uint64_t)t->gstride[d];
    int64_t expect = 1;
    p->src_contig = true;
    for (int d = n - 1; d >= p->k; d--) {
        if (p->view.shape[d] != 1 && p->view.stride[d] != expect) p->src_contig = false;
        expect *= p->view.shape[d];
    }
}

uint64_t plan_run_first(const plan_tensor *t, const plan_piece *p, uint64_t r)
{
    uint64_t off = (uint64_t)p->goff[p->k] * (uint64_t)(t->ndim ? t->gstride[p->k] : 0);
    for (int d = p->k - 1; d >= 0; d--) {
        uint64_t idx = r % (uint64_t)p->view.shape[d];
        r /= (uint64_t)p->view.shape[d];
        off += ((uint64_t)p->goff[d] + idx) * (uint64_t)t->gstride[d];
    }
    return off;
}

int64_t plan_run_src(const plan_piece *p, uint64_t r)
{
    int64_t pos = p->view.offset;
    for (int d = p->k - 1; d >= 0; d--) {
        int64_t idx = (int64_t)(r % (uint64_t)p->view.shape[d]);
        r /= (uint64_t)p->view.shape[d];
        pos += idx * p->view.stride[d];
    }
    return pos;
}

int64_t plan_src_elem(const plan_piece *p, uint64_t r, uint64_t j)
{
    int64_t pos = plan_run_src(p, r);
    for (int d = p->view.ndim - 1; d >= p->k; d--) {
        int64_t idx = (int64_t)(j % (uint64_t)p->view.shape[d]);
        j /= (uint64_t)p->view.shape[d];
        pos += idx * p->view.stride[d];
    }
    return pos;
}

uint64_t plan_first_run_after(const plan_tensor *t, const plan_piece *p, uint64_t e)
{
    uint64_t lo = 0, hi = p->nruns;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (plan_run_first(t, p, mid) + p->run_len > e) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

static int cmp_piece(const void *a, const void *b)
{
    uint64_t x = ((const plan_piece *)a)->first, y = ((const plan_piece *)b)->first;
    return x < y ? -1 : x > y;
}

static int fill_pieces(plan_tensor *t, const srcset *s, int nprocs, fm_err *e)
{
    t->pieces = calloc(s->n ? s->n : 1, sizeof *t->pieces);
    if (t->pieces == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < s->n; i++) {
        if (ti_view_numel(&s->v[i].piece->view) == 0) continue;
        plan_piece *p = &t->pieces[t->npieces++];
        p->rank = s->v[i].rank;
        p->proc = s->v[i].rank % nprocs;
        p->view = s->v[i].piece->view;
        p->view.storage = fm_strdup(p->view.storage);
        if (p->view.storage == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        p->big_endian = s->v[i].big_endian;
        memcpy(p->goff, s->v[i].goff, sizeof p->goff);
        piece_geometry(t, p);
    }
    qsort(t->pieces, t->npieces, sizeof *t->pieces, cmp_piece);
    return 0;
}

/* ---- one key across all ranks ---- */

static int check_agree(const ti_entry *const *ents, int W, fm_err *e)
{
    const ti_entry *a = ents[0];
    char x[128], y[128];
    for (int r = 1; r < W; r++) {
        const ti_entry *b = ents[r];
        if (b->kind != a->kind)
            return fm_fail(e, FM_EMISMATCH, "key '%s': saved as a %s on rank 0 but as a %s on rank %d", a->key,
                           a->kind == TI_PLAIN ? "plain tensor" : a->kind == TI_DTENSOR ? "DTensor" : "ShardedTensor",
                           b->kind == TI_PLAIN ? "plain tensor" : b->kind == TI_DTENSOR ? "DTensor" : "ShardedTensor", r);
        if (b->dtype != a->dtype)
            return fm_fail(e, FM_EMISMATCH, "key '%s': dtype %s on rank 0 but %s on rank %d", a->key, dt_torch_name(a->dtype),
                           dt_torch_name(b->dtype), r);
        if (a->kind == TI_DTENSOR && strcmp(a->placements, b->placements) != 0)
            return fm_fail(e, FM_EMISMATCH, "key '%s': placements %s on rank 0 but %s on rank %d", a->key, a->placements,
                           b->placements, r);
        if (a->kind == TI_DTENSOR && !same_shape(a->mesh_ndim, a->mesh_shape, b->mesh_ndim, b->mesh_shape))
            return fm_fail(e, FM_EMISMATCH, "key '%s': device mesh %s on rank 0 but %s on rank %d", a->key,
                           ti_format_shape(a->mesh_ndim, a->mesh_shape, x, sizeof x),
                           ti_format_shape(b->mesh_ndim, b->mesh_shape, y, sizeof y), r);
        if (a->kind != TI_PLAIN && !same_shape(a->ndim, a->gshape, b->ndim, b->gshape))
            return fm_fail(e, FM_EMISMATCH, "key '%s': global shape %s on rank 0 but %s on rank %d", a->key,
                           ti_format_shape(a->ndim, a->gshape, x, sizeof x), ti_format_shape(b->ndim, b->gshape, y, sizeof y), r);
    }
    return 0;
}

static void set_strides(plan_tensor *t)
{
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->gstride[d] = s;
        s *= t->shape[d];
    }
    t->numel = numel_of(t->ndim, t->shape);
}

static int plan_key(const ti_entry *const *ents, const ti_index *ix, int W, const plan_opts *o, plan *pl,
                    plan_tensor *t, fm_err *e)
{
    FM_TRY(check_agree(ents, W, e));
    const ti_entry *a = ents[0];
    t->key = fm_strdup(a->key);
    t->name = plan_clean_name(a->key);
    if (t->key == NULL || t->name == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    t->src_dtype = a->dtype;
    t->ndim = a->ndim;
    memcpy(t->shape, a->gshape, sizeof t->shape);
    bool concat = false;
    if (a->kind == TI_PLAIN) FM_TRY(plain_layout(ents, W, o, pl, t, &concat, e));
    set_strides(t);
    srcset s = {0};
    int rc = 0;
    int64_t row = 0;
    for (int r = 0; r < W && rc == 0; r++) {
        if (a->kind == TI_PLAIN && !concat && r > 0 && o->plain == PLAN_PLAIN_REPLICATED) break;
        for (size_t k = 0; k < ents[r]->npieces && rc == 0; k++) {
            rc = srcset_add(&s, &ents[r]->pieces[k], r, ix[r].big_endian, e);
            if (rc == 0 && concat) {
                s.v[s.n - 1].goff[0] = row;
                row += ents[r]->pieces[k].view.shape[0];
            }
        }
    }
    size_t nregions = 0;
    if (rc == 0) rc = dedup_replicas(t, &s, &nregions, e);
    if (rc == 0) rc = check_tiling(t, &s, e);
    if (rc == 0) rc = fill_pieces(t, &s, o->nprocs, e);
    free(s.v);
    t->sharded = nregions > 1;
    return rc;
}

/* ---- tied embeddings ---- */

static const char *EMBED_SUFFIXES[] = {"embed_tokens.weight", "wte.weight", "word_embeddings.weight",
                                       "embed_in.weight", "shared.weight"};

static bool is_embedding_name(const char *name)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(EMBED_SUFFIXES); i++)
        if (fm_ends_with(name, EMBED_SUFFIXES[i])) return true;
    return false;
}

/* lm_head is the same data as the embedding on every rank: the same
 * storage view (FSDP2 keeps the tie), or equal bytes block by block. */
static bool same_data(const ti_entry *const *ea, const ti_entry *const *eb, int W)
{
    for (int r = 0; r < W; r++) {
        const ti_entry *a = ea[r], *b = eb[r];
        if (a->npieces != b->npieces || a->dtype != b->dtype || !same_shape(a->ndim, a->gshape, b->ndim, b->gshape))
            return false;
        for (size_t k = 0; k < a->npieces; k++) {
            const ti_piece *pa = &a->pieces[k], *pb = &b->pieces[k];
            if (same_view(&pa->view, &pb->view)) continue;
            if (!same_shape(pa->view.ndim, pa->view.shape, pb->view.ndim, pb->view.shape) ||
                memcmp(pa->goff, pb->goff, sizeof pa->goff) != 0 || !pa->has_crc || !pb->has_crc || pa->crc != pb->crc)
                return false;
        }
    }
    return true;
}

/* The model head names the architecture: lm_head -> ...ForCausalLM, a
 * value/critic model's score -> ...ForTokenClassification. Looked up before
 * a tied lm_head is dropped. */
static void find_head(plan *pl)
{
    for (size_t i = 0; i < pl->ntensors; i++) {
        if (strcmp(pl->tensors[i].name, "lm_head.weight") == 0) snprintf(pl->head, sizeof pl->head, "lm_head");
        else if (strcmp(pl->tensors[i].name, "score.weight") == 0 && pl->head[0] == '\0')
            snprintf(pl->head, sizeof pl->head, "score");
    }
}

/* ---- output files ---- */

/* huggingface_hub's split_torch_state_dict_into_shards, exactly: tensors in
 * state-dict order; one larger than the limit becomes a shard of its own,
 * appended to the list at once; otherwise the current shard is appended
 * (and a new one begun) when the tensor would overflow it. A shard's file
 * number is its position in that list. */
static size_t split_shards(const plan *pl, const plan_opts *o, size_t *f)
{
    size_t nshards = 0, appended = 0, cur = SIZE_MAX;
    uint64_t cur_size = 0;
    size_t *pos = malloc(sizeof(size_t) * (pl->ntensors ? pl->ntensors : 1)); /* shard id -> list position */
    if (pos == NULL) return 0;
    for (size_t i = 0; i < pl->ntensors; i++) {
        uint64_t sz = pl->tensors[i].numel * dt_size(pl->tensors[i].out_dtype);
        if (sz > o->max_shard_size) {
            f[i] = nshards;
            pos[nshards++] = appended++;
            continue;
        }
        if (cur != SIZE_MAX && cur_size + sz > o->max_shard_size) {
            pos[cur] = appended++;
            cur = SIZE_MAX;
        }
        if (cur == SIZE_MAX) {
            cur = nshards++;
            cur_size = 0;
        }
        f[i] = cur;
        cur_size += sz;
    }
    if (cur != SIZE_MAX) pos[cur] = appended++;
    for (size_t i = 0; i < pl->ntensors; i++) f[i] = pos[f[i]];
    free(pos);
    return nshards;
}

static int assign_files(plan *pl, const plan_opts *o, size_t **file_of, fm_err *e)
{
    size_t *f = calloc(pl->ntensors ? pl->ntensors : 1, sizeof *f);
    if (f == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    size_t nf = split_shards(pl, o, f);
    if (nf == 0 && pl->ntensors > 0) {
        free(f);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    pl->nfiles = nf ? nf : 1;
    pl->files = calloc(pl->nfiles, sizeof *pl->files);
    if (pl->files == NULL) {
        free(f);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < pl->nfiles; k++) {
        const char *stem = o->file_stem ? o->file_stem : "model";
        pl->files[k].name = pl->nfiles == 1 ? fm_asprintf("%s.safetensors", stem)
                                            : fm_asprintf("%s-%05zu-of-%05zu.safetensors", stem, k + 1, pl->nfiles);
        if (pl->files[k].name == NULL) {
            free(f);
            return fm_fail(e, FM_ENOMEM, "out of memory");
        }
    }
    *file_of = f;
    return 0;
}

static int cmp_tensor_pos(const void *a, const void *b)
{
    const plan_tensor *x = a, *y = b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int layout_files(plan *pl, const plan_opts *o, const size_t *file_of, fm_err *e)
{
    st_entry *ent = calloc(pl->ntensors ? pl->ntensors : 1, sizeof *ent);
    if (ent == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    int rc = 0;
    for (size_t k = 0; k < pl->nfiles && rc == 0; k++) {
        size_t n = 0;
        for (size_t i = 0; i < pl->ntensors; i++) {
            if (file_of[i] != k) continue;
            plan_tensor *t = &pl->tensors[i];
            st_entry *s = &ent[n++];
            memset(s, 0, sizeof *s);
            s->name = t->name;
            s->dtype = t->out_dtype;
            s->ndim = t->ndim;
            memcpy(s->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
            s->user = i;
        }
        rc = st_layout(ent, n, e);
        if (rc == 0) rc = st_header_ex(ent, n, o->header_align, !o->no_metadata, &pl->files[k].header, e);
        if (rc) break;
        plan_file *f = &pl->files[k];
        f->data_start = f->header.len;
        f->size = f->data_start;
        f->count = n;
        for (size_t j = 0; j < n; j++) {
            plan_tensor *t = &pl->tensors[ent[j].user];
            t->file = (int)k;
            t->begin = ent[j].begin;
            t->end = ent[j].end;
            f->size = FM_MAX(f->size, f->data_start + t->end);
        }
    }
    free(ent);
    if (rc) return rc;
    qsort(pl->tensors, pl->ntensors, sizeof *pl->tensors, cmp_tensor_pos);
    size_t first = 0;
    for (size_t k = 0; k < pl->nfiles; k++) {
        pl->files[k].first = first;
        first += pl->files[k].count;
    }
    return 0;
}

static int build_index_json(plan *pl, fm_err *e)
{
    if (pl->nfiles < 2) return 0;
    hf_index_entry *ie = calloc(pl->ntensors, sizeof *ie);
    if (ie == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < pl->ntensors; i++) {
        ie[i].tensor = pl->tensors[i].name;
        ie[i].file = pl->files[pl->tensors[i].file].name;
    }
    size_t len;
    int rc = hf_index_json(ie, pl->ntensors, pl->total_bytes, pl->total_params, &pl->index_json, &len, e);
    free(ie);
    return rc;
}

/* ---- the whole plan ---- */

static int check_same_keys(const keymap *maps, const ti_index *ix, int W, fm_err *e)
{
    for (int r = 1; r < W; r++) {
        for (size_t i = 0; i < ix[0].n; i++)
            if (keymap_find(&maps[r], ix[0].entries[i].key) == NULL)
                return fm_fail(e, FM_EMISMATCH, "rank %d (%s) has no key '%s', which rank 0 has", r, ix[r].path,
                               ix[0].entries[i].key);
        for (size_t i = 0; i < ix[r].n; i++)
            if (keymap_find(&maps[0], ix[r].entries[i].key) == NULL)
                return fm_fail(e, FM_EMISMATCH, "rank %d (%s) has key '%s', which rank 0 does not have", r, ix[r].path,
                               ix[r].entries[i].key);
    }
    return 0;
}

static int check_unique_names(const plan *pl, fm_err *e)
{
    for (size_t i = 0; i < pl->ntensors; i++)
        for (size_t j = i + 1; j < pl->ntensors; j++)
            if (strcmp(pl->tensors[i].name, pl->tensors[j].name) == 0)
                return fm_fail(e, FM_EMISMATCH, "keys '%s' and '%s' both become '%s' once wrapper prefixes are removed",
                               pl->tensors[i].key, pl->tensors[j].key, pl->tensors[i].name);
    return 0;
}

static void free_tensor(plan_tensor *t)
{
    for (size_t k = 0; k < t->npieces; k++) free(t->pieces[k].view.storage);
    free(t->pieces);
    free(t->name);
    free(t->key);
}

/* Drops a tied lm_head (save_pretrained drops it when tie_word_embeddings). */
static int drop_tied(plan *pl, const ti_entry ***ents, const plan_opts *o)
{
    size_t head = SIZE_MAX;
    for (size_t i = 0; i < pl->ntensors; i++)
        if (strcmp(pl->tensors[i].name, "lm_head.weight") == 0) head = i;
    if (head == SIZE_MAX || !o->tie_word_embeddings) return 0;
    for (size_t i = 0; i < pl->ntensors; i++) {
        if (i == head || !is_embedding_name(pl->tensors[i].name)) continue;
        if (!same_data(ents[head], ents[i], o->world_size)) continue;
        pl->dropped_key = fm_strdup(pl->tensors[head].key);
        if (pl->dropped_key == NULL) return FM_ENOMEM;
        free_tensor(&pl->tensors[head]);
        free(ents[head]);
        memmove(&pl->tensors[head], &pl->tensors[head + 1], sizeof *pl->tensors * (pl->ntensors - head - 1));
        memmove(&ents[head], &ents[head + 1], sizeof *ents * (pl->ntensors - head - 1));
        pl->ntensors--;
        ents[pl->ntensors] = NULL;
        pl->n_dropped++;
        return 0;
    }
    return warn(pl, "tie_word_embeddings is true but lm_head.weight differs from the input embedding: both are kept");
}

static void finish_stats(plan *pl, const plan_opts *o)
{
    for (size_t i = 0; i < pl->ntensors; i++) {
        plan_tensor *t = &pl->tensors[i];
        t->out_dtype = (dt_is_float(t->src_dtype) && o->out_dtype != DT_INVALID) ? o->out_dtype : t->src_dtype;
        pl->total_params += t->numel;
        pl->total_bytes += t->numel * dt_size(t->out_dtype);
        for (size_t k = 0; k < t->npieces; k++) pl->input_bytes += ti_view_numel(&t->pieces[k].view) * dt_size(t->src_dtype);
        if (t->sharded) pl->n_sharded++;
        else pl->n_replicated++;
    }
}

/* A LoRA checkpoint renames its keys, leaves some out and plans the
 * adapter's A and B apart (pl->lora_src) when they are fused. */
static int plan_one_key(const ti_index *ix, const keymap *maps, const plan_opts *o, plan *pl, const ti_entry ***ents,
                        size_t i, fm_err *e)
{
    int W = o->world_size;
    const char *key = ix[0].entries[i].key;
    char *name = NULL;
    bool is_src = false;
    if (o->lora) {
        FM_TRY(lr_output_name(o->lora, key, &name, &is_src, e));
        if (name == NULL) return 0;
    }
    size_t slot = pl->ntensors;
    ents[slot] = malloc(sizeof(const ti_entry *) * (size_t)W);
    if (ents[slot] == NULL) {
        free(name);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    for (int r = 0; r < W; r++) ents[slot][r] = keymap_find(&maps[r], key);
    plan_tensor *t = is_src ? &pl->lora_src[pl->nlora_src++] : &pl->tensors[pl->ntensors++];
    int rc = plan_key(ents[slot], ix, W, o, pl, t, e);
    if (name) {
        free(t->name);
        t->name = name;
    }
    if (is_src) {
        free(ents[slot]);
        ents[slot] = NULL;
    }
    return rc;
}

static int plan_all_keys(const ti_index *ix, const keymap *maps, const plan_opts *o, plan *pl, const ti_entry ***ents,
                         fm_err *e)
{
    for (size_t i = 0; i < ix[0].n; i++) FM_TRY(plan_one_key(ix, maps, o, pl, ents, i, e));
    if (pl->ntensors == 0) return fm_fail(e, FM_EFORMAT, "%s holds no tensors to write", ix[0].path);
    return 0;
}

int plan_build(const ti_index *ix, const plan_opts *o, plan *pl, fm_err *e)
{
    memset(pl, 0, sizeof *pl);
    int W = o->world_size;
    if (W < 1 || o->nprocs < 1) return fm_fail(e, FM_EINTERNAL, "bad plan options");
    keymap *maps = calloc((size_t)W, sizeof *maps);
    const ti_entry ***ents = calloc(ix[0].n ? ix[0].n : 1, sizeof *ents);
    pl->tensors = calloc(ix[0].n ? ix[0].n : 1, sizeof *pl->tensors);
    pl->lora_src = calloc(ix[0].n ? ix[0].n : 1, sizeof *pl->lora_src);
    size_t *file_of = NULL;
    int rc = (maps && ents && pl->tensors && pl->lora_src) ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    for (int r = 0; r < W && rc == 0; r++) rc = keymap_init(&maps[r], &ix[r], e);
    if (rc == 0) rc = check_same_keys(maps, ix, W, e);
    if (rc == 0 && ix[0].n == 0) rc = fm_fail(e, FM_EFORMAT, "%s holds no tensors", ix[0].path);
    if (rc == 0) rc = plan_all_keys(ix, maps, o, pl, ents, e);
    if (rc == 0) rc = check_unique_names(pl, e);
    if (rc == 0) find_head(pl);
    if (rc == 0) rc = drop_tied(pl, ents, o) ? fm_fail(e, FM_ENOMEM, "out of memory") : 0;
    if (rc == 0 && o->lora) rc = lr_link(pl, o->lora, e);
    if (rc == 0) finish_stats(pl, o);
    if (rc == 0) rc = assign_files(pl, o, &file_of, e);
    if (rc == 0) rc = layout_files(pl, o, file_of, e);
    if (rc == 0) rc = build_index_json(pl, e);
    free(file_of);
    for (size_t i = 0; i < ix[0].n && ents; i++) free(ents[i]);
    free(ents);
    for (int r = 0; r < W && maps; r++) free(maps[r].order);
    free(maps);
    if (rc) plan_free(pl);
    return rc;
}

void plan_free(plan *pl)
{
    if (pl == NULL) return;
    for (size_t i = 0; i < pl->ntensors; i++) free_tensor(&pl->tensors[i]);
    free(pl->tensors);
    for (size_t i = 0; i < pl->nlora_src; i++) free_tensor(&pl->lora_src[i]);
    free(pl->lora_src);
    for (size_t i = 0; i < pl->nfuses; i++) {
        for (size_t k = 0; pl->fuses[i].local && k < pl->fuses[i].nlocal; k++) {
            free(pl->fuses[i].local[k].a);
            free(pl->fuses[i].local[k].b);
        }
        free(pl->fuses[i].local);
    }
    free(pl->fuses);
    for (size_t k = 0; k < pl->nfiles; k++) {
        free(pl->files[k].name);
        fm_buf_free(&pl->files[k].header);
    }
    free(pl->files);
    for (size_t i = 0; i < pl->nwarnings; i++) free(pl->warnings[i]);
    free(pl->warnings);
    free(pl->index_json);
    free(pl->dropped_key);
    memset(pl, 0, sizeof *pl);
}
