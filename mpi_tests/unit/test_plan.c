/* test_plan.c - the merge plan as a pure function of hand-made indexes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "plan/plan.h"

/* ---- building indexes by hand ---- */

static ti_index *new_ranks(int W)
{
    ti_index *ix = calloc((size_t)W, sizeof *ix);
    for (int r = 0; r < W; r++) {
        ix[r].rank = r;
        ix[r].path = strdup("rank.pt");
        ix[r].entries = calloc(64, sizeof(ti_entry));
    }
    return ix;
}

static void free_ranks(ti_index *ix, int W)
{
    for (int r = 0; r < W; r++) ti_index_free(&ix[r]);
    free(ix);
}

static ti_entry *add_entry(ti_index *ix, const char *key, ti_kind kind, dt_type dt, int ndim, const int64_t *gshape)
{
    ti_entry *en = &ix->entries[ix->n++];
    en->key = strdup(key);
    en->kind = kind;
    en->dtype = dt;
    en->ndim = ndim;
    memcpy(en->gshape, gshape, sizeof(int64_t) * (size_t)ndim);
    return en;
}

/* A contiguous local block at goff with the given shape, own storage. */
static ti_piece *add_piece(ti_entry *en, const char *storage, const int64_t *shape, const int64_t *goff)
{
    en->pieces = realloc(en->pieces, sizeof(ti_piece) * (en->npieces + 1));
    ti_piece *p = &en->pieces[en->npieces++];
    memset(p, 0, sizeof *p);
    p->view.storage = strdup(storage);
    p->view.dtype = en->dtype;
    p->view.ndim = en->ndim;
    int64_t st = 1;
    for (int d = en->ndim - 1; d >= 0; d--) {
        p->view.shape[d] = shape[d];
        p->view.stride[d] = st;
        st *= shape[d];
        p->goff[d] = goff ? goff[d] : 0;
    }
    p->view.storage_nbytes = (uint64_t)st * dt_size(en->dtype);
    return p;
}

/* Shard(dim) of gshape over W ranks with torch.chunk's rule. */
static void add_sharded(ti_index *ix, int W, const char *key, int ndim, const int64_t *gshape, int dim)
{
    for (int r = 0; r < W; r++) {
        ti_entry *en = add_entry(&ix[r], key, TI_DTENSOR, DT_F32, ndim, gshape);
        int64_t shape[TI_MAX_DIMS], goff[TI_MAX_DIMS] = {0}, start, len;
        memcpy(shape, gshape, sizeof(int64_t) * (size_t)ndim);
        ti_chunk(gshape[dim], W, r, &start, &len);
        shape[dim] = len;
        goff[dim] = start;
        char st[32];
        snprintf(st, sizeof st, "data/%zu", ix[r].n);
        add_piece(en, st, shape, goff);
        snprintf(en->placements, sizeof en->placements, "(Shard(dim=%d),)", dim);
    }
}

static plan_opts opts(int W, int P)
{
    return (plan_opts){.world_size = W, .nprocs = P, .out_dtype = DT_BF16, .max_shard_size = 5000000000ull};
}

/* ---- cases ---- */

static void test_chunk_rule(void **state)
{
    (void)state;
    int64_t s, l;
    const int64_t want[][2] = {{0, 3}, {3, 3}, {6, 3}, {9, 1}}; /* n=10, k=4 */
    for (int c = 0; c < 4; c++) {
        ti_chunk(10, 4, c, &s, &l);
        assert_int_equal(s, want[c][0]);
        assert_int_equal(l, want[c][1]);
    }
    ti_chunk(2, 4, 3, &s, &l); /* trailing ranks are empty */
    assert_int_equal(s, 2);
    assert_int_equal(l, 0);
}

static void test_shard0_uneven(void **state)
{
    (void)state;
    int W = 4;
    ti_index *ix = new_ranks(W);
    int64_t g[2] = {10, 6};
    add_sharded(ix, W, "w", 2, g, 0);
    plan pl;
    fm_err e = {0};
    plan_opts o = opts(W, 2);
    assert_int_equal(plan_build(ix, &o, &pl, &e), 0);
    assert_int_equal(pl.ntensors, 1);
    plan_tensor *t = &pl.tensors[0];
    assert_int_equal(t->npieces, 4);
    assert_true(t->sharded);
    for (int r = 0; r < 4; r++) {
        plan_piece *p = &t->pieces[r];
        assert_int_equal(p->rank, r);
        assert_int_equal(p->proc, r % 2);
        assert_int_equal(p->nruns, 1); /* a dim-0 block is one contiguous run */
        assert_int_equal(p->first, (uint64_t)(3 * r * 6));
    }
    assert_int_equal(t->pieces[3].run_len, 6);
    assert_int_equal(t->out_dtype, DT_BF16);
    assert_int_equal(pl.total_bytes, 120);
    plan_free(&pl);
    free_ranks(ix, W);
}

static void test_shard1_runs(void **state)
{
    (void)state;
    int W = 4;
    ti_index *ix = new_ranks(W);
    int64_t g[2] = {3, 8};
    add_sharded(ix, W, "w", 2, g, 1);
    plan pl;
    fm_err e = {0};
    plan_opts o = opts(W, W);
    assert_int_equal(plan_build(ix, &o, &pl, &e), 0);
    plan_tensor *t = &pl.tensors[0];
    plan_piece *p = &t->pieces[2]; /* columns 4..5 of each of the 3 rows */
    assert_int_equal(p->k, 1);
    assert_int_equal(p->nruns, 3);
    assert_int_equal(p->run_len, 2);
    assert_int_equal(plan_run_first(t, p, 0), 4);
    assert_int_equal(plan_run_first(t, p, 2), 20);
    assert_int_equal(plan_run_src(p, 2), 4);   /* local row 2 starts at element 4 */
    assert_int_equal(plan_first_run_after(t, p, 5), 0);  /* run 0 is [4, 6) */
    assert_int_equal(plan_first_run_after(t, p, 6), 1);
    assert_int_equal(plan_first_run_after(t, p, 13), 1); /* run 1 is [12, 14) */
    assert_int_equal(plan_first_run_after(t, p, 14), 2);
    assert_int_equal(plan_first_run_after(t, p, 22), 3); /* past the last run */
    plan_free(&pl);
    free_ranks(ix, W);
}

static void test_missing_key_and_dtype_mismatch(void **state)
{
    (void)state;
    int W = 3;
    ti_index *ix = new_ranks(W);
    int64_t g[1] = {9};
    add_sharded(ix, W, "a", 1, g, 0);
    add_sharded(ix, 2, "b", 1, g, 0); /* rank 2 lacks "b" */
    plan pl;
    fm_err e = {0};
    plan_opts o = opts(W, 1);
    assert_int_equal(plan_build(ix, &o, &pl, &e), FM_EMISMATCH);
    assert_non_null(strstr(e.msg, "rank 2 (rank.pt) has no key 'b', which rank 0 has"));
    free_ranks(ix, W);

    ix = new_ranks(W);
    add_sharded(ix, W, "a", 1, g, 0);
    ix[1].entries[0].dtype = DT_BF16;
    e = (fm_err){0};
    assert_int_equal(plan_build(ix, &o, &pl, &e), FM_EMISMATCH);
    assert_non_null(strstr(e.msg, "key 'a': dtype float32 on rank 0 but bfloat16 on rank 1"));
    free_ranks(ix, W);
}

static void test_overlap_and_gap(void **state)
{
    (void)state;
    int W = 2;
    int64_t g[1] = {8}, s4[1] = {4}, s3[1] = {3}, o0[1] = {0}, o3[1] = {3}, o4[1] = {4};
    ti_index *ix = new_ranks(W);
    add_piece(add_entry(&ix[0], "w", TI_SHARDED, DT_F32, 1, g), "data/0", s4, o0);
    add_piece(add_entry(&ix[1], "w", TI_SHARDED, DT_F32, 1, g), "data/0", s4, o3);
    plan pl;
    fm_err e = {0};
    plan_opts o = opts(W, 1);
    assert_int_equal(plan_build(ix, &o, &pl, &e), FM_EMISMATCH);
    assert_non_null(strstr(e.msg, "the blocks of rank 0 and rank 1 overlap"));
    free_ranks(ix, W);

    ix = new_ranks(W);
    add_piece(add_entry(&ix[0], "w", TI_SHARDED, DT_F32, 1, g), "data/0", s3, o0);
    add_piece(add_entry(&ix[1], "w", TI_SHARDED, DT_F32, 1, g), "data/0", s4, o4);
    e = (fm_err){0};
    assert_int_equal(plan_build(ix, &o, &pl, &e), FM_EMISMATCH);
    assert_non_null(strstr(e.msg, "the shards cover 7 of 8 elements"));
    free_ranks(ix, W);
}

/* HSDP: (Replicate, Shard(0)) over a 2x2 mesh; replicas must match. */
static void test_replicas(void **state)
{
    (void)state;
    int W = 4;
    int64_t g[1] = {4}, s[1] = {2};
    for (int differ = 0; differ < 2; differ++) {
        ti_index *ix = new_ranks(W);
        for (int r = 0; r < W; r++) {
            int64_t off[1] = {(r % 2) * 2};
            ti_entry *en = add_entry(&ix[r], "w", TI_DTENSOR, DT_F32, 1, g);
            ti_piece *p = add_piece(en, "data/0", s, off);
            p->replica = r >= 2;
            p->has_crc = true;
            p->crc = 100 + (uint32_t)(r % 2) + (differ && r == 3 ? 7 : 0);
        }
        plan pl;
        fm_err e = {0};
        plan_opts o = opts(W, W);
        int rc = plan_build(ix, &o, &pl, &e);
        if (differ) {
            assert_int_equal(rc, FM_EMISMATCH);
            assert_non_null(strstr(e.msg, "rank 1 and rank 3 hold replicas of the same block with different bytes"));
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(pl.tensors[0].npieces, 2);
            assert_int_equal(pl.tensors[0].pieces[0].rank, 0);
            assert_int_equal(pl.tensors[0].pieces[1].rank, 1);
            plan_free(&pl);
        }
        free_ranks(ix, W);
    }
}

static void test_plain_replicated_and_concat(void **state)
{
    (void)state;
    int W = 2;
    int64_t g[2] = {2, 3}, z[0] = {};
    ti_index *ix = new_ranks(W);
    for (int r = 0; r < W; r++) {
        ti_piece *p = add_piece(add_entry(&ix[r], "same", TI_PLAIN, DT_F32, 2, g), "data/0", g, NULL);
        p->has_crc = true;
        p->crc = 5;
        p = add_piece(add_entry(&ix[r], "half", TI_PLAIN, DT_F32, 2, g), "data/1", g, NULL);
        p->has_crc = true;
        p->crc = 10 + (uint32_t)r;
    }
    plan pl;
    fm_err e = {0};
    plan_opts o = opts(W, 1);
    o.out_dtype = DT_INVALID;
    assert_int_equal(plan_build(ix, &o, &pl, &e), 0);
    const plan_tensor *same = strcmp(pl.tensors[0].name, "same") == 0 ? &pl.tensors[0] : &pl.tensors[1];
    const plan_tensor *half = same == &pl.tensors[0] ? &pl.tensors[1] : &pl.tensors[0];
    assert_int_equal(same->shape[0], 2);
    assert_int_equal(same->npieces, 1);
    assert_int_equal(half->shape[0], 4);
    assert_int_equal(half->npieces, 2);
    assert_int_equal(half->pieces[1].first, 6);
    assert_int_equal(half->out_dtype, DT_F32);
    assert_int_equal(pl.nwarnings, 1);
    assert_non_null(strstr(pl.warnings[0], "'half' differs between ranks"));
    plan_free(&pl);
    free_ranks(ix, W);

    /* a 0-d plain tensor that differs cannot be concatenated */
    ix = new_ranks(W);
    for (int r = 0; r < W; r++) {
        ti_piece *p = add_piece(add_entry(&ix[r], "s", TI_PLAIN, DT_F32, 0, z), "data/0", z, NULL);
        p->has_crc = true;
        p->crc = (uint32_t)r;
    }
    e = (fm_err){0};
    assert_int_equal(plan_build(ix, &o, &pl, &e), FM_EMISMATCH);
    assert_non_null(strstr(e.msg, "0-d plain tensor differs between ranks"));
    free_ranks(ix, W);
}

static void test_tied_head_dropped(void **state)
{
    (void)state;
    int W = 2;
    int64_t g[2] = {4, 2};
    for (int tie = 0; tie < 2; tie++) {
        ti_index *ix = new_ranks(W);
        add_sharded(ix, W, "model.embed_tokens.weight", 2, g, 0);
        add_sharded(ix, W, "lm_head.weight", 2, g, 0);
        for (int r = 0; r < W; r++) { /* lm_head views the embedding's storage, as FSDP2 saves a tie */
            free(ix[r].entries[1].pieces[0].view.storage);
            ix[r].entries[1].pieces[0].view.storage = strdup(ix[r].entries[0].pieces[0].view.storage);
        }
        plan pl;
        fm_err e = {0};
        plan_opts o = opts(W, W);
        o.tie_word_embeddings = tie;
        assert_int_equal(plan_build(ix, &o, &pl, &e), 0);
        assert_int_equal(pl.ntensors, tie ? 1 : 2);
        assert_int_equal(pl.n_dropped, tie ? 1 : 0);
        assert_string_equal(pl.head, "lm_head");
        plan_free(&pl);
        free_ranks(ix, W);
    }
}

static void test_clean_names(void **state)
{
    (void)state;
    char *s = plan_clean_name("_orig_mod.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.w");
    assert_string_equal(s, "model.layers.0.mlp.w");
    free(s);
    s = plan_clean_name("x_orig_mod.y"); /* only whole components */
    assert_string_equal(s, "x_orig_mod.y");
    free(s);
}

/* transformers' split: [3, 3, 7, 1] bytes with a 5-byte limit gives files
 * {t0}, {t2}, {t1, t3}: the oversize tensor's shard is listed at once. */
static void test_shard_split_order(void **state)
{
    (void)state;
    int W = 1;
    ti_index *ix = new_ranks(W);
    const char *names[] = {"t0", "t1", "t2", "t3"};
    int64_t sizes[] = {3, 3, 7, 1};
    for (int i = 0; i < 4; i++) {
        int64_t g[1] = {sizes[i]};
        ti_entry *en = add_entry(&ix[0], names[i], TI_PLAIN, DT_U8, 1, g);
        char st[32];
        snprintf(st, sizeof st, "data/%d", i);
        add_piece(en, st, g, NULL);
    }
    plan pl;
    fm_err e = {0};
    plan_opts o = opts(W, 1);
    o.max_shard_size = 5;
    assert_int_equal(plan_build(ix, &o, &pl, &e), 0);
    assert_int_equal(pl.nfiles, 3);
    int file_of[4];
    for (size_t i = 0; i < pl.ntensors; i++) file_of[pl.tensors[i].name[1] - '0'] = pl.tensors[i].file;
    assert_int_equal(file_of[0], 0);
    assert_int_equal(file_of[2], 1);
    assert_int_equal(file_of[1], 2);
    assert_int_equal(file_of[3], 2);
    assert_string_equal(pl.files[1].name, "model-00002-of-00003.safetensors");
    assert_non_null(pl.index_json);
    assert_non_null(strstr(pl.index_json, "\"t2\": \"model-00002-of-00003.safetensors\""));
    plan_free(&pl);
    free_ranks(ix, W);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunk_rule),
        cmocka_unit_test(test_shard0_uneven),
        cmocka_unit_test(test_shard1_runs),
        cmocka_unit_test(test_missing_key_and_dtype_mismatch),
        cmocka_unit_test(test_overlap_and_gap),
        cmocka_unit_test(test_replicas),
        cmocka_unit_test(test_plain_replicated_and_concat),
        cmocka_unit_test(test_tied_head_dropped),
        cmocka_unit_test(test_clean_names),
        cmocka_unit_test(test_shard_split_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
