/* test_synth.c - the checkpoint synthesizer (synth.c): its rank files read
 * back with ptz + tindex, its pickles compared node for node with real
 * torch 2.11 fixtures, its expected safetensors checked against the shards
 * it wrote, and each injected fault. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/pkl.h"
#include "torchfmt/ptz.h"
#include "hf/st.h"
#include "synth/synth.h"
#include "testutil.h"
#include "torchfmt/tindex.h"
#include "base/util.h"

#define TIED_FX "fsdp2_ws4_tied/global_step_1/actor/model_world_size_4_rank_%d.pt"
#define SHARD1_FX "fsdp2_ws4_shard1/global_step_1/actor/model_world_size_4_rank_%d.pt"
#define BF16_FX "fsdp2_ws8_uneven_bf16/global_step_1/actor/model_world_size_8_rank_%d.pt"

/* ---- helpers -------------------------------------------------------------- */

/* A synthesized checkpoint in a fresh temporary folder. */
typedef struct synth {
    char *dir;
    char ref[4200];
    syn_opts o;
    syn_ctx *ctx;
} synth;

static void opts_tiny(synth *s, int world)
{
    syn_default_opts(&s->o);
    s->o.world_size = world;
}

/* Writes everything (meta, every rank, every expected file) in-process. */
static void synth_run(synth *s)
{
    fm_err e = {0};
    s->dir = tu_tmpdir();
    snprintf(s->ref, sizeof s->ref, "%s/ref", s->dir);
    s->o.out = s->dir;
    s->o.expected = s->ref;
    int rc = syn_init(&s->o, &s->ctx, &e);
    if (rc == 0) rc = syn_write_meta(s->ctx, &e);
    for (int r = 0; r < s->o.world_size && rc == 0; r++) rc = syn_write_rank(s->ctx, r, NULL, &e);
    for (size_t j = 0; j < syn_expected_jobs(s->ctx) && rc == 0; j++) rc = syn_write_expected(s->ctx, j, NULL, &e);
    if (rc != 0) fail_msg("synthesis failed: %s", e.msg);
}

static void synth_done(synth *s)
{
    syn_free(s->ctx);
    tu_rmdir(s->dir);
}

static ptz_file *open_rank(synth *s, int r)
{
    fm_err e = {0};
    char *path = syn_rank_path(s->ctx, r);
    ptz_file *f = NULL;
    if (ptz_open(path, 0, 0, &f, &e) != 0) fail_msg("ptz_open %s: %s", path, e.msg);
    free(path);
    return f;
}

/* ti_load of rank r; returns the code (message in *e). */
static int load_rank(synth *s, int r, ti_index *ix, fm_err *e)
{
    ptz_file *f = open_rank(s, r);
    int rc = ti_load(f, r, ix, e);
    ptz_close(f);
    return rc;
}

static void load_ok(synth *s, int r, ti_index *ix)
{
    fm_err e = {0};
    if (load_rank(s, r, ix, &e) != 0) fail_msg("ti_load rank %d: %s", r, e.msg);
}

static const ti_entry *entry(const ti_index *ix, const char *key)
{
    for (size_t i = 0; i < ix->n; i++)
        if (strcmp(ix->entries[i].key, key) == 0) return &ix->entries[i];
    fail_msg("no key %s", key);
    return NULL;
}


static ti_index load_fixture(const char *path, int r)
{
    fm_err e = {0};
    ptz_file *f = NULL;
    ti_index ix;
    if (ptz_open(path, 0, 0, &f, &e) != 0 || ti_load(f, r, &ix, &e) != 0) fail_msg("fixture %s: %s", path, e.msg);
    ptz_close(f);
    return ix;
}

/* ---- the parameter list and the generator ---------------------------------- */

static uint64_t count_params(const char *preset, bool critic)
{
    syn_opts o;
    syn_default_opts(&o);
    fm_err e = {0};
    assert_int_equal(syn_model_preset(preset, &o.model, &e), 0);
    o.model.critic = critic;
    o.out = "/nonexistent";
    syn_ctx *c = NULL;
    assert_int_equal(syn_init(&o, &c, &e), 0);
    uint64_t n = 0;
    for (size_t i = 0; i < syn_tensor_count(c); i++)
        if (syn_tensor_at(c, i)->tied_to < 0) n += syn_tensor_at(c, i)->numel;
    syn_free(c);
    return n;
}

static void test_presets(void **state)
{
    (void)state;
    assert_int_equal(count_params("tiny", false), 125504);
    assert_int_equal(count_params("qwen2.5-0.5b", false), 494032768);  /* Qwen2.5-0.5B's published count */
    assert_int_equal(count_params("qwen2.5-3b", false), 3085938688ULL); /* Qwen2.5-3B's */
    assert_int_equal(count_params("tiny", true), 125504 + 64); /* + score [1, H]; the tied head was not counted */
    syn_model m;
    fm_err e = {0};
    assert_int_equal(syn_model_preset("gpt-5", &m, &e), FM_EUSAGE);
    assert_non_null(strstr(e.msg, "qwen2.5-3b"));
}

/* The tiny preset has the keys, order and shapes of the fixture model. */
static void test_tensor_list_matches_fixture(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 4);
    s.o.out = "/nonexistent";
    fm_err e = {0};
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), 0);
    ti_index fx = load_fixture(tu_fixturef(TIED_FX, 0), 0);
    assert_int_equal(syn_tensor_count(s.ctx), fx.n);
    for (size_t i = 0; i < fx.n; i++) {
        const syn_tensor *t = syn_tensor_at(s.ctx, i);
        assert_string_equal(t->name, fx.entries[i].key);
        assert_int_equal(t->ndim, fx.entries[i].ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], fx.entries[i].gshape[d]);
    }
    assert_int_equal(syn_tensor_at(s.ctx, fx.n - 1)->tied_to, 0);
    ti_index_free(&fx);
    syn_free(s.ctx);
}

static void test_generator(void **state)
{
    (void)state;
    syn_tensor w = {.kind = SYN_WEIGHT, .stream = 12345}, nrm = {.kind = SYN_NORM, .stream = 999};
    enum { N = 4099 };
    float *all = malloc(N * sizeof *all), *part = malloc(N * sizeof *part);
    syn_fill(&w, 0, N, all);
    /* any split (odd starts included) gives the same values: counter-based */
    for (size_t g0 = 0; g0 < 40; g0 += 3) {
        syn_fill(&w, g0, 17, part);
        assert_memory_equal(part, all + g0, 17 * sizeof(float));
    }
    syn_fill(&w, 1001, N - 1001, part);
    assert_memory_equal(part, all + 1001, (N - 1001) * sizeof(float));
    double sum = 0;
    int distinct = 0;
    for (size_t i = 0; i < N; i++) {
        assert_true(all[i] >= -0.05f && all[i] < 0.05f);
        sum += all[i];
        distinct += i > 0 && all[i] != all[i - 1];
    }
    assert_true(fabs(sum / N) < 0.005);
    assert_true(distinct > N - 10);
    syn_fill(&nrm, 7, N, part);
    for (size_t i = 0; i < N; i++) assert_true(part[i] >= 0.99f && part[i] <= 1.01f);
    w.stream++;
    syn_fill(&w, 0, 8, part);
    assert_memory_not_equal(part, all, 8 * sizeof(float));
    free(all);
    free(part);
}

static void test_bad_options(void **state)
{
    (void)state;
    syn_opts o;
    syn_ctx *c = NULL;
    fm_err e = {0};
    syn_default_opts(&o);
    o.out = "/nonexistent";
    o.world_size = 0;
    assert_int_equal(syn_init(&o, &c, &e), FM_EUSAGE);
    o.world_size = 4;
    o.model.heads = 5; /* 64 % 5 */
    assert_int_equal(syn_init(&o, &c, &e), FM_EUSAGE);
    assert_non_null(strstr(e.msg, "heads"));
    o.model.heads = 4;
    o.model.kv_heads = 3;
    assert_int_equal(syn_init(&o, &c, &e), FM_EUSAGE);
    o.model.kv_heads = 2;
    o.fault.kind = SYN_FAULT_SHAPE;
    o.fault.rank = 4;
    assert_int_equal(syn_init(&o, &c, &e), FM_EUSAGE);
    assert_null(c);
    o.fault.rank = 3;
    assert_int_equal(syn_init(&o, &c, &e), 0);
    syn_free(c);
}

static void test_parse_fault(void **state)
{
    (void)state;
    syn_fault f;
    fm_err e = {0};
    assert_int_equal(syn_parse_fault("shape:2", &f, &e), 0);
    assert_int_equal(f.kind, SYN_FAULT_SHAPE);
    assert_int_equal(f.rank, 2);
    assert_string_equal(f.key, "");
    assert_int_equal(syn_parse_fault("missing-key:0:model.norm.weight", &f, &e), 0);
    assert_int_equal(f.kind, SYN_FAULT_MISSING_KEY);
    assert_string_equal(f.key, "model.norm.weight");
    const char *bad[] = {"shape", "bogus:1", "shape:x", "shape:", "dtype:1:", "view-range:-1", ""};
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++) assert_int_equal(syn_parse_fault(bad[i], &f, &e), FM_EUSAGE);
}

/* ---- rank files read back --------------------------------------------------- */

/* Every key of every rank: torch.chunk rows, padded storage, coordinate. */
static void check_rank_views(synth *s, int r, const ti_index *ix, int64_t ws)
{
    assert_int_equal(ix->n, syn_tensor_count(s->ctx));
    for (size_t i = 0; i < ix->n; i++) {
        const ti_entry *en = &ix->entries[i];
        const syn_tensor *t = syn_tensor_at(s->ctx, i);
        assert_string_equal(en->key, t->name);
        assert_int_equal(en->kind, TI_DTENSOR);
        assert_int_equal(en->mesh_ndim, 1);
        assert_int_equal(en->mesh_shape[0], ws);
        assert_int_equal(en->coord[0], r);
        assert_int_equal(en->npieces, 1);
        int d = strstr(en->placements, "dim=1") ? 1 : 0;
        int64_t n = en->gshape[d], c = (n + ws - 1) / ws, start = FM_MIN(r * c, n), len = FM_MIN(start + c, n) - start;
        const ti_piece *p = &en->pieces[0];
        assert_int_equal(p->goff[d], start);
        assert_int_equal(p->view.shape[d], len);
        assert_int_equal(p->view.offset, 0);
        uint64_t padded = (uint64_t)c * (t->numel / (uint64_t)n) * dt_size(en->dtype);
        assert_int_equal(p->view.storage_nbytes, padded); /* chunk-0 size, even when the view is shorter */
        assert_true(p->view.storage_nbytes >= ti_view_numel(&p->view) * dt_size(en->dtype));
    }
}

static void test_tiny_w4_read_back(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 4);
    synth_run(&s);
    for (int r = 0; r < 4; r++) {
        ti_index ix;
        load_ok(&s, r, &ix);
        check_rank_views(&s, r, &ix, 4);
        const ti_entry *emb = entry(&ix, "model.embed_tokens.weight"), *head = entry(&ix, "lm_head.weight");
        assert_string_equal(emb->pieces[0].view.storage, "data/0"); /* the first storage key */
        assert_string_equal(head->pieces[0].view.storage, "data/0"); /* tied: the same storage */
        assert_string_equal(emb->placements, "(Shard(dim=0),)");
        assert_int_equal(emb->pieces[0].view.shape[0], 128);
        assert_int_equal(emb->pieces[0].view.stride[0], 64);
        ptz_file *f = open_rank(&s, r);
        ptz_record_info ri;
        assert_true(ptz_find(f, "data/1", &ri)); /* the mesh's rank map */
        assert_int_equal(ri.size, 16);
        assert_true(ptz_find(f, ".format_version", &ri));
        assert_true(ptz_find(f, "data/26", &ri)); /* 26 parameters + rank map, lm_head shares */
        assert_false(ptz_find(f, "data/27", &ri));
        ptz_close(f);
        ti_index_free(&ix);
    }
    synth_done(&s);
}

/* verl's rule: Shard(1) where dim 0 does not divide and dim 1 does. */
static void test_verl_placement(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 4);
    s.o.placement = SYN_PLACE_VERL;
    s.o.model.vocab = 1002;
    s.o.model.intermediate = 174;
    s.o.model.kv_heads = 1;
    s.o.model.tied = false;
    synth_run(&s);
    ti_index fx = load_fixture(tu_fixturef(SHARD1_FX, 2), 2);
    for (int r = 0; r < 4; r++) {
        ti_index ix;
        load_ok(&s, r, &ix);
        check_rank_views(&s, r, &ix, 4);
        for (size_t i = 0; i < ix.n; i++) /* the same placements as the real verl fixture */
            assert_string_equal(ix.entries[i].placements, fx.entries[i].placements);
        const ti_entry *emb = entry(&ix, "model.embed_tokens.weight");
        assert_string_equal(emb->placements, "(Shard(dim=1),)");
        assert_int_equal(emb->pieces[0].goff[1], 16 * r);
        assert_int_equal(emb->pieces[0].view.shape[0], 1002);
        assert_int_equal(emb->pieces[0].view.stride[0], 16);
        assert_string_equal(entry(&ix, "model.layers.0.mlp.gate_proj.weight")->placements, "(Shard(dim=1),)");
        assert_string_equal(entry(&ix, "model.layers.0.mlp.down_proj.weight")->placements, "(Shard(dim=0),)");
        assert_string_equal(entry(&ix, "model.layers.0.self_attn.k_proj.bias")->placements, "(Shard(dim=0),)");
        ti_index_free(&ix);
    }
    ti_index_free(&fx);
    synth_done(&s);
}

/* W=8, dims not divisible: trailing ranks hold 0-row views over full padded storages. */
static void test_uneven_bf16_empty_shards(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 8);
    s.o.dtype = DT_BF16;
    s.o.model.vocab = 1003, s.o.model.hidden = 36, s.o.model.intermediate = 100;
    s.o.model.heads = 3, s.o.model.kv_heads = 1, s.o.model.tied = false;
    synth_run(&s);
    for (int r = 0; r < 8; r++) {
        ti_index ix, fx = load_fixture(tu_fixturef(BF16_FX, r), r);
        load_ok(&s, r, &ix);
        check_rank_views(&s, r, &ix, 8);
        for (size_t i = 0; i < ix.n; i++) { /* the same views and storages as torch's */
            const ti_piece *a = &ix.entries[i].pieces[0], *b = &fx.entries[i].pieces[0];
            assert_int_equal(ix.entries[i].dtype, DT_BF16);
            assert_int_equal(a->view.dtype, DT_BF16);
            assert_int_equal(a->view.storage_nbytes, b->view.storage_nbytes);
            assert_string_equal(a->view.storage, b->view.storage);
            assert_memory_equal(a->view.shape, b->view.shape, sizeof a->view.shape);
            assert_memory_equal(a->view.stride, b->view.stride, sizeof a->view.stride);
            assert_memory_equal(a->goff, b->goff, sizeof a->goff);
        }
        if (r >= 6) { /* k_proj.bias has 12 rows: chunks of 2, ranks 6 and 7 empty */
            const ti_piece *p = &entry(&ix, "model.layers.0.self_attn.k_proj.bias")->pieces[0];
            assert_int_equal(p->view.shape[0], 0);
            assert_int_equal(p->view.storage_nbytes, 4);
        }
        ti_index_free(&ix);
        ti_index_free(&fx);
    }
    synth_done(&s);
}

/* ---- the pickles against the real fixtures ------------------------------------ */

/* Node-for-node comparison: same types, values, GLOBALs and the same
 * sharing (memo) structure; the pseudo-random `_hash` ints are skipped. */
typedef struct cmp {
    uint32_t *ab, *ba; /* serial + 1 of the partner node, 0 = not seen */
    char path[512];
} cmp;

static bool same(cmp *c, const pkl_value *a, const pkl_value *b, bool skip_int);

static bool same_opt(cmp *c, const pkl_value *a, const pkl_value *b)
{
    if (a == NULL || b == NULL) return a == b;
    return same(c, a, b, false);
}

static bool same_seq(cmp *c, const pkl_value *a, const pkl_value *b)
{
    if (a->u.seq.n != b->u.seq.n) return false;
    for (size_t i = 0; i < a->u.seq.n; i++)
        if (!same(c, a->u.seq.items[i], b->u.seq.items[i], false)) return false;
    return true;
}

static bool same_dict(cmp *c, const pkl_value *a, const pkl_value *b)
{
    if (a->u.dict.n != b->u.dict.n) return false;
    for (size_t i = 0; i < a->u.dict.n; i++) {
        const char *k = pkl_get_str(a->u.dict.keys[i]);
        if (!same(c, a->u.dict.keys[i], b->u.dict.keys[i], false)) return false;
        if (!same(c, a->u.dict.vals[i], b->u.dict.vals[i], k && strcmp(k, "_hash") == 0)) {
            if (k) snprintf(c->path + strlen(c->path), sizeof c->path - strlen(c->path), " <- %s", k);
            return false;
        }
    }
    return true;
}

static bool same_obj(cmp *c, const pkl_value *a, const pkl_value *b)
{
    return a->u.obj.kind == b->u.obj.kind && same(c, a->u.obj.callable, b->u.obj.callable, false) &&
           same(c, a->u.obj.args, b->u.obj.args, false) && same_opt(c, a->u.obj.kwargs, b->u.obj.kwargs) &&
           same_opt(c, a->u.obj.state, b->u.obj.state) && same_opt(c, a->u.obj.dictitems, b->u.obj.dictitems) &&
           same_opt(c, a->u.obj.listitems, b->u.obj.listitems);
}

static bool same(cmp *c, const pkl_value *a, const pkl_value *b, bool skip_int)
{
    if (c->ab[a->serial] || c->ba[b->serial]) /* shared: must be shared the same way */
        return c->ab[a->serial] == b->serial + 1 && c->ba[b->serial] == a->serial + 1;
    c->ab[a->serial] = b->serial + 1;
    c->ba[b->serial] = a->serial + 1;
    if (a->type != b->type) return false;
    switch (a->type) {
    case PKL_NONE: return true;
    case PKL_BOOL: return a->u.b == b->u.b;
    case PKL_INT: return skip_int || (a->u.i.big == b->u.i.big && a->u.i.v == b->u.i.v);
    case PKL_FLOAT: return a->u.f == b->u.f;
    case PKL_STR: case PKL_BYTES:
        return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    case PKL_LIST: case PKL_TUPLE: case PKL_SET: case PKL_FROZENSET: return same_seq(c, a, b);
    case PKL_DICT: return same_dict(c, a, b);
    case PKL_GLOBAL:
        return strcmp(a->u.global.module, b->u.global.module) == 0 && strcmp(a->u.global.name, b->u.global.name) == 0;
    case PKL_OBJ: return same_obj(c, a, b);
    case PKL_PERSID: return same(c, a->u.persid.pid, b->u.persid.pid, false);
    }
    return false;
}

static void compare_with_fixture(synth *s, const char *path, int r)
{
    size_t flen = 0;
    uint8_t *fpkl = NULL;
    fm_err e = {0};
    ptz_file *f = NULL;
    assert_int_equal(ptz_open(path, 0, 0, &f, &e), 0);
    assert_int_equal(ptz_read_record(f, "data.pkl", 1 << 24, &fpkl, &flen, &e), 0);
    ptz_close(f);
    fm_buf mine = {0};
    if (syn_rank_pickle(s->ctx, r, &mine, &e) != 0) fail_msg("%s", e.msg);
    pkl_doc *da = pkl_doc_new(), *db = pkl_doc_new();
    pkl_value *ra = NULL, *rb = NULL;
    assert_int_equal(pkl_load(da, fpkl, flen, NULL, &ra, &e), 0);
    assert_int_equal(pkl_load(db, mine.data, mine.len, NULL, &rb, &e), 0);
    cmp c = {calloc(pkl_doc_node_count(da), 4), calloc(pkl_doc_node_count(db), 4), ""};
    if (!same(&c, ra, rb, false)) fail_msg("%s: the pickles differ at%s", path, c.path);
    /* identical trees pickle to the same length, give or take the hash ints */
    assert_true(mine.len + 64 >= flen && mine.len <= flen + 64);
    free(c.ab);
    free(c.ba);
    pkl_doc_free(da);
    pkl_doc_free(db);
    fm_buf_free(&mine);
    free(fpkl);
}

static void test_pickle_matches_tied_fixture(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 4);
    s.o.out = "/nonexistent";
    fm_err e = {0};
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), 0);
    for (int r = 0; r < 4; r++) compare_with_fixture(&s, tu_fixturef(TIED_FX, r), r);
    syn_free(s.ctx);
}

static void test_pickle_matches_shard1_and_bf16_fixtures(void **state)
{
    (void)state;
    synth s = {0};
    fm_err e = {0};
    opts_tiny(&s, 4);
    s.o.out = "/nonexistent";
    s.o.placement = SYN_PLACE_VERL;
    s.o.model.vocab = 1002, s.o.model.intermediate = 174, s.o.model.kv_heads = 1, s.o.model.tied = false;
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), 0);
    for (int r = 0; r < 4; r++) compare_with_fixture(&s, tu_fixturef(SHARD1_FX, r), r);
    syn_free(s.ctx);
    opts_tiny(&s, 8);
    s.o.out = "/nonexistent";
    s.o.dtype = DT_BF16;
    s.o.model.vocab = 1003, s.o.model.hidden = 36, s.o.model.intermediate = 100;
    s.o.model.heads = 3, s.o.model.kv_heads = 1, s.o.model.tied = false;
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), 0);
    for (int r = 0; r < 8; r++) compare_with_fixture(&s, tu_fixturef(BF16_FX, r), r);
    syn_free(s.ctx);
}

/* The verl files: byte-identical to the fixture's for the tiny preset. */
static void test_meta_files(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 4);
    synth_run(&s);
    const char *files[] = {"huggingface/config.json", "huggingface/generation_config.json",
                           "huggingface/tokenizer_config.json", "fsdp_config.json"};
    for (size_t i = 0; i < FM_ARRAY_LEN(files); i++) {
        char rel[256], mine[8192];
        snprintf(rel, sizeof rel, "fsdp2_ws4_tied/global_step_1/actor/%s", files[i]);
        snprintf(mine, sizeof mine, "%s/%s", syn_actor_dir(s.ctx), files[i]);
        size_t la = 0, lb = 0;
        unsigned char *a = tu_slurp(tu_fixture(rel), &la), *b = tu_slurp(mine, &lb);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(la, lb);
        assert_memory_equal(a, b, la);
        free(a);
        free(b);
    }
    char p[8192];
    snprintf(p, sizeof p, "%s/latest_checkpointed_iteration.txt", s.dir);
    unsigned char *it = tu_slurp(p, NULL);
    assert_string_equal((char *)it, "1");
    free(it);
    synth_done(&s);
}

static void test_critic_config(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 2);
    s.o.model.critic = true;
    synth_run(&s);
    assert_non_null(strstr(syn_actor_dir(s.ctx), "/critic"));
    char p[8192];
    snprintf(p, sizeof p, "%s/huggingface/config.json", syn_actor_dir(s.ctx));
    unsigned char *cfg = tu_slurp(p, NULL);
    assert_non_null(strstr((char *)cfg, "\"Qwen2ForTokenClassification\""));
    assert_non_null(strstr((char *)cfg, "\"tie_word_embeddings\": false"));
    free(cfg);
    ti_index ix;
    load_ok(&s, 1, &ix);
    const ti_entry *score = entry(&ix, "score.weight");
    assert_int_equal(score->gshape[0], 1);
    assert_int_equal(score->pieces[0].view.shape[0], 0); /* one row: rank 1 is empty */
    assert_string_equal(ix.entries[ix.n - 1].key, "score.weight");
    ti_index_free(&ix);
    synth_done(&s);
}

/* ---- expected output ------------------------------------------------------------ */

static void check_expected_header(synth *s, const char *dtdir, dt_type dt)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/%s/model.safetensors", s->ref, dtdir);
    st_header_info h;
    fm_err e = {0};
    if (st_read_header(p, &h, &e) != 0) fail_msg("%s: %s", p, e.msg);
    size_t n = syn_tensor_count(s->ctx), want = 0;
    for (size_t i = 0; i < n; i++) {
        const syn_tensor *t = syn_tensor_at(s->ctx, i);
        bool found = false;
        for (size_t k = 0; k < h.n; k++) {
            if (strcmp(h.entries[k].name, t->name) != 0) continue;
            found = true;
            assert_int_equal(h.entries[k].dtype, dt);
            assert_int_equal(h.entries[k].ndim, t->ndim);
            for (int d = 0; d < t->ndim; d++) assert_int_equal(h.entries[k].shape[d], t->shape[d]);
        }
        assert_int_equal(found, t->tied_to < 0); /* a tied lm_head is dropped */
        want += t->tied_to < 0;
    }
    assert_int_equal(h.n, want);
    st_header_info_free(&h);
}

static void test_expected_headers(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 4);
    synth_run(&s);
    check_expected_header(&s, "bf16", DT_BF16);
    check_expected_header(&s, "fp32", DT_F32);
    synth_done(&s);
}

/* The oracle agrees with the shards: every local view's elements equal the
 * expected tensor at the view's global offset (a merge done the slow way). */
static void check_rank_values(synth *s, int r, const uint8_t *ref, const st_header_info *h)
{
    ti_index ix;
    load_ok(s, r, &ix);
    ptz_file *f = open_rank(s, r);
    fm_err e = {0};
    for (size_t i = 0; i < ix.n; i++) {
        const ti_entry *en = &ix.entries[i];
        const ti_piece *p = &en->pieces[0];
        const st_entry *x = NULL;
        for (size_t k = 0; k < h->n; k++)
            if (strcmp(h->entries[k].name, en->key) == 0) x = &h->entries[k];
        if (x == NULL) continue; /* tied lm_head */
        uint8_t *st = NULL;
        size_t len = 0;
        assert_int_equal(ptz_read_record(f, p->view.storage, 1 << 26, &st, &len, &e), 0);
        int64_t rows = p->view.shape[0], cols = en->ndim == 2 ? p->view.shape[1] : 1;
        int64_t gcols = en->ndim == 2 ? en->gshape[1] : 1;
        for (int64_t a = 0; a < rows; a++)
            for (int64_t b = 0; b < cols; b++) {
                int64_t so = p->view.offset + a * p->view.stride[0] + (en->ndim == 2 ? b * p->view.stride[1] : 0);
                int64_t go = (p->goff[0] + a) * gcols + (en->ndim == 2 ? p->goff[1] + b : 0);
                const uint8_t *want = ref + h->data_start + x->begin + (uint64_t)go * 4;
                if (memcmp(st + so * 4, want, 4) != 0) fail_msg("rank %d %s [%ld,%ld] differs", r, en->key, (long)a, (long)b);
            }
        free(st);
    }
    ptz_close(f);
    ti_index_free(&ix);
}

static void test_expected_values_match_shards(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 8);
    s.o.placement = SYN_PLACE_VERL;
    s.o.model.vocab = 1000; /* 1000 % 8 == 0: Shard(0) for the embedding, Shard(1) elsewhere */
    s.o.model.intermediate = 100;
    synth_run(&s);
    char p[8192];
    snprintf(p, sizeof p, "%s/fp32/model.safetensors", s.ref);
    size_t len = 0;
    uint8_t *ref = tu_slurp(p, &len);
    st_header_info h;
    fm_err e = {0};
    assert_int_equal(st_parse_header(ref, len, len, &h, &e), 0);
    for (int r = 0; r < 8; r++) check_rank_values(&s, r, ref, &h);
    st_header_info_free(&h);
    free(ref);
    synth_done(&s);
}

/* --expected-max-shard-size splits like the merger: files + index. */
static void test_expected_split(void **state)
{
    (void)state;
    synth s = {0};
    opts_tiny(&s, 2);
    s.o.expected_fp32 = false;
    s.o.expected_max_shard = 40000; /* bf16: embed 65536 B alone, then ~40 kB files */
    synth_run(&s);
    assert_true(syn_expected_jobs(s.ctx) > 2);
    size_t n = syn_expected_jobs(s.ctx), names = 0;
    for (size_t k = 0; k < n; k++) {
        char p[8192];
        snprintf(p, sizeof p, "%s/bf16/model-%05zu-of-%05zu.safetensors", s.ref, k + 1, n);
        st_header_info h;
        fm_err e = {0};
        if (st_read_header(p, &h, &e) != 0) fail_msg("%s", e.msg);
        names += h.n;
        st_header_info_free(&h);
    }
    assert_int_equal(names, syn_tensor_count(s.ctx) - 1);
    char p[8192];
    snprintf(p, sizeof p, "%s/bf16/model.safetensors.index.json", s.ref);
    unsigned char *idx = tu_slurp(p, NULL);
    assert_non_null(idx);
    assert_non_null(strstr((char *)idx, "\"total_parameters\": 125504"));
    assert_null(strstr((char *)idx, "lm_head"));
    free(idx);
    synth_done(&s);
    /* fp32: gate/up/down (45 kB) exceed the limit and are listed as soon as
     * they are seen, before the shard still open around them */
    opts_tiny(&s, 2);
    s.o.expected_bf16 = false;
    s.o.expected_max_shard = 40000;
    synth_run(&s);
    assert_int_equal(syn_expected_jobs(s.ctx), 10);
    snprintf(p, sizeof p, "%s/fp32/model.safetensors.index.json", s.ref);
    idx = tu_slurp(p, NULL);
    assert_non_null(strstr((char *)idx, "\"model.embed_tokens.weight\": \"model-00001-of-00010.safetensors\""));
    assert_non_null(strstr((char *)idx, "\"model.layers.0.self_attn.v_proj.bias\": \"model-00002-of-00010.safetensors\""));
    assert_non_null(strstr((char *)idx, "\"model.layers.0.mlp.gate_proj.weight\": \"model-00003-of-00010.safetensors\""));
    assert_non_null(strstr((char *)idx, "\"model.layers.0.self_attn.o_proj.weight\": \"model-00006-of-00010.safetensors\""));
    assert_non_null(strstr((char *)idx, "\"model.layers.0.input_layernorm.weight\": \"model-00006-of-00010.safetensors\""));
    free(idx);
    synth_done(&s);
}

/* ---- faults ---------------------------------------------------------------------- */

static void fault_run(synth *s, syn_fault_kind kind, int rank, const char *key)
{
    opts_tiny(s, 4);
    s->o.fault.kind = kind;
    s->o.fault.rank = rank;
    snprintf(s->o.fault.key, sizeof s->o.fault.key, "%s", key ? key : "");
    synth_run(s);
}

/* Every rank but `bad` loads as the plain model does. */
static void others_clean(synth *s, int bad)
{
    for (int r = 0; r < 4; r++) {
        if (r == bad) continue;
        ti_index ix;
        load_ok(s, r, &ix);
        check_rank_views(s, r, &ix, 4);
        ti_index_free(&ix);
    }
}

static void test_fault_shape(void **state)
{
    (void)state;
    synth s = {0};
    fault_run(&s, SYN_FAULT_SHAPE, 2, "model.norm.weight");
    others_clean(&s, 2);
    ti_index ix;
    load_ok(&s, 2, &ix);
    assert_int_equal(entry(&ix, "model.norm.weight")->gshape[0], 64 + 4);
    assert_int_equal(entry(&ix, "model.embed_tokens.weight")->gshape[0], 512);
    ti_index_free(&ix);
    synth_done(&s);
    fault_run(&s, SYN_FAULT_SHAPE, 1, NULL); /* default: the first key; the tied head follows it */
    load_ok(&s, 1, &ix);
    assert_int_equal(ix.entries[0].gshape[0], 512 + 4);
    assert_int_equal(entry(&ix, "lm_head.weight")->gshape[0], 512 + 4);
    ti_index_free(&ix);
    synth_done(&s);
}

static void test_fault_dtype(void **state)
{
    (void)state;
    synth s = {0};
    fault_run(&s, SYN_FAULT_DTYPE, 3, "model.layers.1.mlp.up_proj.weight");
    others_clean(&s, 3);
    ti_index ix;
    load_ok(&s, 3, &ix);
    const ti_entry *en = entry(&ix, "model.layers.1.mlp.up_proj.weight");
    assert_int_equal(en->dtype, DT_BF16);
    assert_int_equal(en->pieces[0].view.dtype, DT_BF16);
    assert_int_equal(en->pieces[0].view.storage_nbytes, 44 * 64 * 2);
    assert_int_equal(entry(&ix, "model.layers.1.mlp.gate_proj.weight")->dtype, DT_F32);
    ti_index_free(&ix);
    synth_done(&s);
}

static void test_fault_missing_and_extra_key(void **state)
{
    (void)state;
    synth s = {0};
    fault_run(&s, SYN_FAULT_MISSING_KEY, 0, NULL);
    others_clean(&s, 0);
    ti_index ix;
    load_ok(&s, 0, &ix);
    assert_int_equal(ix.n, syn_tensor_count(s.ctx) - 1);
    assert_string_equal(ix.entries[ix.n - 1].key, "model.norm.weight"); /* lm_head is gone */
    ti_index_free(&ix);
    synth_done(&s);
    fault_run(&s, SYN_FAULT_MISSING_KEY, 1, "model.embed_tokens.weight");
    load_ok(&s, 1, &ix); /* the tied head now owns its storage */
    assert_int_equal(ix.n, syn_tensor_count(s.ctx) - 1);
    assert_string_equal(ix.entries[0].key, "model.layers.0.self_attn.q_proj.weight");
    assert_string_equal(entry(&ix, "lm_head.weight")->pieces[0].view.storage, "data/26"); /* 0: q_proj, 1: rank map */
    ti_index_free(&ix);
    synth_done(&s);
    fault_run(&s, SYN_FAULT_EXTRA_KEY, 2, NULL);
    others_clean(&s, 2);
    load_ok(&s, 2, &ix);
    assert_int_equal(ix.n, syn_tensor_count(s.ctx) + 1);
    assert_string_equal(ix.entries[ix.n - 1].key, "model.extra_fault.weight");
    assert_int_equal(ix.entries[ix.n - 1].gshape[0], 64);
    ti_index_free(&ix);
    synth_done(&s);
}

static void test_fault_view_range(void **state)
{
    (void)state;
    synth s = {0};
    fault_run(&s, SYN_FAULT_VIEW_RANGE, 1, NULL);
    others_clean(&s, 1);
    ti_index ix;
    fm_err e = {0};
    assert_int_equal(load_rank(&s, 1, &ix, &e), FM_EFORMAT); /* a valid zip + pickle the reader must refuse */
    assert_non_null(strstr(e.msg, "past the end"));
    assert_non_null(strstr(e.msg, "model.embed_tokens.weight"));
    ti_index_free(&ix); /* ti_load leaves a partial index to free, even on error */
    synth_done(&s);
}

static void test_fault_placement(void **state)
{
    (void)state;
    synth s = {0};
    fault_run(&s, SYN_FAULT_PLACEMENT, 0, NULL);
    others_clean(&s, 0);
    ti_index ix;
    load_ok(&s, 0, &ix);
    assert_string_equal(ix.entries[0].placements, "(Shard(dim=1),)");
    assert_int_equal(ix.entries[0].pieces[0].view.shape[1], 16);
    assert_string_equal(ix.entries[1].placements, "(Shard(dim=0),)");
    ti_index_free(&ix);
    synth_done(&s);
    /* a fault that cannot apply is a usage error of syn_init, before any file */
    opts_tiny(&s, 4);
    s.o.out = "/nonexistent";
    fm_err e = {0};
    s.o.fault = (syn_fault){SYN_FAULT_PLACEMENT, 0, "model.norm.weight"}; /* 1-D: cannot move */
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), FM_EUSAGE);
    assert_non_null(strstr(e.msg, "model.norm.weight"));
    s.o.fault = (syn_fault){SYN_FAULT_SHAPE, 1, "model.nope"};
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), FM_EUSAGE);
    s.o.fault = (syn_fault){SYN_FAULT_EXTRA_KEY, 1, "model.norm.weight"}; /* already a key */
    assert_int_equal(syn_init(&s.o, &s.ctx, &e), FM_EUSAGE);
    assert_null(s.ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presets),
        cmocka_unit_test(test_tensor_list_matches_fixture),
        cmocka_unit_test(test_generator),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_parse_fault),
        cmocka_unit_test(test_tiny_w4_read_back),
        cmocka_unit_test(test_verl_placement),
        cmocka_unit_test(test_uneven_bf16_empty_shards),
        cmocka_unit_test(test_pickle_matches_tied_fixture),
        cmocka_unit_test(test_pickle_matches_shard1_and_bf16_fixtures),
        cmocka_unit_test(test_meta_files),
        cmocka_unit_test(test_critic_config),
        cmocka_unit_test(test_expected_headers),
        cmocka_unit_test(test_expected_values_match_shards),
        cmocka_unit_test(test_expected_split),
        cmocka_unit_test(test_fault_shape),
        cmocka_unit_test(test_fault_dtype),
        cmocka_unit_test(test_fault_missing_and_extra_key),
        cmocka_unit_test(test_fault_view_range),
        cmocka_unit_test(test_fault_placement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
