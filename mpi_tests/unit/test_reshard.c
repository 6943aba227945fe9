/* test_reshard.c - reshard's geometry (rsgeom), the DTensor rewriting
 * (dtmpl) and one new rank file (rsfile) read back with the pickle VM and
 * the tensor index. Expected values come from FSDP2's rules worked out by
 * hand (torch.chunk: ceil(n/N) rows, padded chunk-0 storages). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "reshard/rsfile.h"
#include "reshard/rsgeom.h"
#include "testutil.h"
#include "torchfmt/dtmpl.h"
#include "torchfmt/pkl.h"
#include "torchfmt/ptz.h"
#include "torchfmt/tindex.h"

static void test_verl_rule(void **state)
{
    (void)state;
    assert_int_equal(rs_verl_dim(2, (int64_t[]){1002, 64}, 8), 1);
    assert_int_equal(rs_verl_dim(2, (int64_t[]){1002, 64}, 3), 0);
    assert_int_equal(rs_verl_dim(2, (int64_t[]){7, 5}, 4), 0); /* nothing divides: dim 0 */
    assert_int_equal(rs_verl_dim(1, (int64_t[]){36}, 4), 0);
}

static ti_entry entry2(int64_t d0, int64_t d1)
{
    ti_entry en;
    memset(&en, 0, sizeof en);
    en.key = (char *)"k";
    en.kind = TI_DTENSOR;
    en.ndim = 2;
    en.gshape[0] = d0;
    en.gshape[1] = d1;
    return en;
}

static void test_blocks(void **state)
{
    (void)state;
    rs_target t = {.mesh_ndim = 1, .mesh_shape = {8}, .world = 8, .policy = RS_PLACE_DIM0};
    ti_entry en = entry2(1003, 36);
    rs_block b;
    rs_block_of(&t, 7, &en, true, &b); /* 126 rows per rank: rank 7 has 1003 - 882 = 121 */
    assert_int_equal(b.goff[0], 882);
    assert_int_equal(b.lshape[0], 121);
    assert_int_equal(b.sshape[0], 126);
    assert_int_equal(b.storage_numel, 126 * 36);
    rs_block_of(&t, 7, &en, false, &b);
    assert_int_equal(b.storage_numel, 121 * 36);
    en = entry2(2, 5); /* 1 row per rank: ranks 2..7 are empty over a 1-row padded storage */
    rs_block_of(&t, 3, &en, true, &b);
    assert_int_equal(b.lshape[0], 0);
    assert_int_equal(b.storage_numel, 5);
    t.policy = RS_PLACE_VERL;
    en = entry2(1002, 64);
    rs_block_of(&t, 5, &en, true, &b);
    assert_int_equal(b.shard_dim, 1);
    assert_int_equal(b.goff[1], 40);
    assert_int_equal(b.lshape[0], 1002);
    assert_int_equal(b.lshape[1], 8);
    rs_target h = {.mesh_ndim = 2, .mesh_shape = {2, 4}, .world = 8, .policy = RS_PLACE_DIM0};
    en = entry2(512, 64);
    rs_block_of(&h, 6, &en, true, &b); /* rank 6 = (1, 2): rows 256..383 */
    assert_int_equal(b.goff[0], 256);
    assert_int_equal(b.lshape[0], 128);
}

typedef struct src4 {
    ptz_file *z[8];
    ti_index ix[8];
    int w;
} src4;

static void open_src(src4 *s, const char *name, int w, const char *kind)
{
    fm_err e = {0};
    s->w = w;
    for (int r = 0; r < w; r++) {
        const char *p = tu_fixturef("%s/global_step_1/actor/%s_world_size_%d_rank_%d.pt", name, kind, w, r);
        if (ptz_open(p, 0, 0, &s->z[r], &e) || ti_load(s->z[r], r, &s->ix[r], &e)) fail_msg("%s: %s", p, e.msg);
    }
}

static void close_src(src4 *s)
{
    for (int r = 0; r < s->w; r++) {
        ti_index_free(&s->ix[r]);
        ptz_close(s->z[r]);
    }
}

static void test_detect_policy(void **state)
{
    (void)state;
    src4 a, b;
    rs_policy p;
    fm_err e = {0};
    open_src(&a, "fsdp2_ws4_shard1", 4, "model");
    assert_int_equal(rs_detect_policy(&a.ix[0], &p, &e), 0);
    assert_int_equal(p, RS_PLACE_VERL);
    open_src(&b, "fsdp2_ws4_tied", 4, "model");
    assert_int_equal(rs_detect_policy(&b.ix[0], &p, &e), 0);
    assert_int_equal(p, RS_PLACE_DIM0);
    close_src(&a);
    close_src(&b);
}

/* Rank 2 of 3 from the tied fixture, read back: mesh [3], coordinate 2,
 * rows 342..511 (171 per rank) in a padded 171-row storage, tied head on
 * the same storage. */
static void test_rank_file_reads_back(void **state)
{
    (void)state;
    src4 s;
    open_src(&s, "fsdp2_ws4_tied", 4, "model");
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/model_world_size_3_rank_2.pt", dir);
    rs_source src = {.kind = RS_MODEL, .world = 4, .zips = s.z, .ix = s.ix, .padded_default = true};
    rs_target t = {.mesh_ndim = 1, .mesh_shape = {3}, .world = 3, .policy = RS_PLACE_DIM0};
    fm_err e = {0};
    uint64_t bytes = 0;
    if (rs_write_rank(&src, &t, 2, path, "model_world_size_3_rank_2", 1 << 16, &bytes, &e)) fail_msg("%s", e.msg);
    ptz_file *z;
    ti_index ix;
    if (ptz_open(path, 0, 0, &z, &e) || ti_load(z, 2, &ix, &e)) fail_msg("%s", e.msg);
    assert_string_equal(ptz_prefix(z), "model_world_size_3_rank_2");
    assert_int_equal(ix.n, s.ix[0].n);
    const ti_entry *emb = &ix.entries[0], *head = &ix.entries[ix.n - 1];
    assert_string_equal(emb->key, "model.embed_tokens.weight");
    assert_string_equal(emb->placements, "(Shard(dim=0),)");
    assert_int_equal(emb->mesh_ndim, 1);
    assert_int_equal(emb->mesh_shape[0], 3);
    assert_int_equal(emb->coord[0], 2);
    assert_int_equal(emb->pieces[0].goff[0], 342);
    assert_int_equal(emb->pieces[0].view.shape[0], 170);
    assert_int_equal(emb->pieces[0].view.storage_nbytes, 171 * 64 * 4);
    assert_string_equal(head->key, "lm_head.weight");
    assert_string_equal(head->pieces[0].view.storage, emb->pieces[0].view.storage);
    ti_index_free(&ix);
    ptz_close(z);
    tu_rmdir(dir);
    close_src(&s);
}

/* A DeviceMesh field reshard does not know is refused, not copied. */
static void test_unknown_mesh_field(void **state)
{
    (void)state;
    pkl_doc *d = pkl_doc_new();
    pkl_value *mesh = pkl_new_obj(d, PKL_NEWOBJ, pkl_new_global(d, "torch.distributed.device_mesh", "DeviceMesh"), NULL);
    mesh->u.obj.state = pkl_new_dict(d);
    pkl_dict_set(d, mesh->u.obj.state, pkl_new_cstr(d, "_axes_of_a_future_release"), pkl_new_int(d, 1));
    dtm_mesh m = {.ndim = 1, .shape = {2}, .rank = 1};
    const char *key;
    dt_type dt;
    fm_err e = {0};
    assert_int_equal(dtm_set_mesh(d, mesh, &m, &key, &dt, &e), FM_EUNSUPPORTED);
    assert_non_null(strstr(e.msg, "_axes_of_a_future_release"));
    pkl_doc_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verl_rule),
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_detect_policy),
        cmocka_unit_test(test_rank_file_reads_back),
        cmocka_unit_test(test_unknown_mesh_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
