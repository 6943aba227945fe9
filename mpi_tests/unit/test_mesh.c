/* test_mesh.c - unit tests of the DeviceMesh reader (torchfmt/mesh.h).
 *
 * tm_resolve() is fed hand-filled tm_raw records (each release's fields,
 * sources that disagree, the 1-D fallback); tm_gather() is fed pickle trees
 * built in memory (2.14's _layout.axes, 2.11's nested shape/stride, an
 * unknown layout); the last tests read real rank files of torch 2.14, 2.11
 * and 2.6 through ti_load().
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "torchfmt/mesh.h"
#include "torchfmt/tindex.h"
#include "testutil.h"

/* ---- tm_resolve on hand-filled fields ---- */

static void flat_mode(tm_raw *r, int m, int64_t size, int64_t stride)
{
    r->layout[m].nsub = 1;
    r->layout[m].size[0] = size;
    r->layout[m].stride[0] = stride;
    if (m + 1 > r->layout_ndim) r->layout_ndim = m + 1;
}

static int64_t iota4[4] = {0, 1, 2, 3};

static void with_rank_map(tm_raw *r, int64_t *map, size_t n)
{
    r->fields |= TM_F_RANK_MAP;
    r->rank_map = map;
    r->rank_map_n = n;
}

static void expect_mesh(const tm_raw *r, int rank, int world, int npl, int nd, const int64_t *shape, const int64_t *coord)
{
    tm_mesh m;
    fm_err e = {0};
    if (tm_resolve(r, rank, world, npl, &m, &e) != 0) fail_msg("tm_resolve: %s", e.msg);
    assert_int_equal(m.ndim, nd);
    for (int i = 0; i < nd; i++) {
        assert_int_equal(m.shape[i], shape[i]);
        assert_int_equal(m.coord[i], coord[i]);
    }
}

static void expect_error(const tm_raw *r, int rank, int world, int npl, const char *needle)
{
    tm_mesh m;
    fm_err e = {0};
    assert_int_not_equal(tm_resolve(r, rank, world, npl, &m, &e), 0);
    if (strstr(e.msg, needle) == NULL) fail_msg("message '%s' lacks '%s'", e.msg, needle);
}

/* 2.14 HSDP: axes (2 stride 2, 2 stride 1), rank map 0..3, coordinate pickled */
static void test_axes_2d(void **st)
{
    (void)st;
    tm_raw r = {.fields = TM_F_LAYOUT_AXES | TM_F_COORD | TM_F_RANK, .coord_ndim = 2, .coord = {1, 1}, .rank = 3};
    flat_mode(&r, 0, 2, 2);
    flat_mode(&r, 1, 2, 1);
    with_rank_map(&r, iota4, 4);
    expect_mesh(&r, 3, 4, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 1});
    r.fields &= ~(unsigned)(TM_F_COORD | TM_F_RANK); /* from the rank map alone */
    expect_mesh(&r, 2, 4, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 0});
}

/* The layout's strides place ranks, not row-major order: a transposed mesh. */
static void test_layout_strides(void **st)
{
    (void)st;
    tm_raw r = {.fields = TM_F_LAYOUT_SHAPE};
    flat_mode(&r, 0, 2, 1);
    flat_mode(&r, 1, 2, 2);
    with_rank_map(&r, iota4, 4);
    expect_mesh(&r, 1, 4, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 0});
}

/* A sub-mesh (the fsdp dim of a 2x2 root) and a nested (flattened) mode. */
static void test_submesh_and_nested(void **st)
{
    (void)st;
    tm_raw r = {.fields = TM_F_LAYOUT_SHAPE};
    flat_mode(&r, 0, 2, 1);
    with_rank_map(&r, iota4, 4);
    expect_mesh(&r, 3, 4, 1, 1, (int64_t[]){2}, (int64_t[]){1});
    tm_raw n = {.fields = TM_F_LAYOUT_SHAPE, .layout_ndim = 1};
    n.layout[0] = (tm_mode){.nsub = 2, .size = {2, 2}, .stride = {2, 1}};
    with_rank_map(&n, iota4, 4);
    expect_mesh(&n, 2, 4, 1, 1, (int64_t[]){4}, (int64_t[]){2});
}

/* 2.6: the mesh tensor's shape and the rank's place in it. */
static void test_mesh_tensor(void **st)
{
    (void)st;
    int64_t ranks[4] = {0, 1, 2, 3};
    tm_raw r = {.fields = TM_F_MESH, .mesh_ndim = 2, .mesh_shape = {2, 2}, .mesh_ranks = ranks};
    expect_mesh(&r, 2, 4, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 0});
    r.fields |= TM_F_COORD;
    r.coord_ndim = 2;
    r.coord[0] = 1;
    r.coord[1] = 0;
    expect_mesh(&r, 2, 4, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 0});
    expect_error(&r, 3, 4, 2, "disagrees with [1, 0] from _coordinate_on_dim");
    expect_error(&r, 7, 8, 2, "rank 7 is not in the device mesh tensor");
    int64_t list[4] = {0, 2, 1, 3}; /* 2.6's _flatten_mesh_list must agree with the tensor */
    r.fields |= TM_F_MESH_LIST;
    r.mesh_list = list;
    r.mesh_list_n = 4;
    expect_error(&r, 2, 4, 2, "[0, 1] from _flatten_mesh_list disagrees with [1, 0]");
    r.mesh_list_n = 3;
    expect_error(&r, 2, 4, 2, "_flatten_mesh_list holds 3 ranks for a mesh of 4");
}

static void test_disagreements(void **st)
{
    (void)st;
    int64_t ranks[4] = {0, 1, 2, 3}, other[4] = {0, 2, 1, 3};
    tm_raw r = {.fields = TM_F_MESH | TM_F_LAYOUT_AXES, .mesh_ndim = 2, .mesh_shape = {2, 2}, .mesh_ranks = ranks};
    flat_mode(&r, 0, 4, 1);
    expect_error(&r, 0, 4, 1, "shape [4] of _layout disagrees with the mesh tensor's [2, 2]");
    tm_raw p = {.fields = TM_F_LAYOUT_AXES | TM_F_RANK, .rank = 2};
    flat_mode(&p, 0, 4, 1);
    with_rank_map(&p, iota4, 4);
    expect_error(&p, 1, 4, 1, "pickled by rank 2, not by this file's rank 1");
    p.fields |= TM_F_FLAT_RANK_MAP;
    p.flat_rank_map = other;
    p.flat_rank_map_n = 4;
    expect_error(&p, 2, 4, 1, "_rank_map and _flatten_rank_map disagree");
    tm_raw c = {.fields = TM_F_LAYOUT_AXES | TM_F_COORD, .coord_ndim = 2, .coord = {0, 1}};
    flat_mode(&c, 0, 4, 1);
    expect_error(&c, 1, 4, 1, "mesh coordinate has 2 entries for a 1-D mesh");
}

/* Only a 1-D mesh falls back on the world size and the file's rank. */
static void test_fallback(void **st)
{
    (void)st;
    tm_raw r = {.fields = 0};
    snprintf(r.found, sizeof r.found, "_device_type, _new_layout");
    tm_mesh m;
    fm_err e = {0};
    assert_int_equal(tm_resolve(&r, 2, 4, 1, &m, &e), 0);
    assert_int_equal(m.ndim, 1);
    assert_int_equal(m.shape[0], 4);
    assert_int_equal(m.coord[0], 2);
    assert_string_equal(m.shape_from, "world size");
    expect_error(&r, 2, 4, 2, "not recognised");                          /* 2-D: ambiguous */
    expect_error(&r, 2, 4, 2, "fields found: _device_type, _new_layout"); /* names what it saw */
    expect_error(&r, 2, -1, 1, "not recognised");                          /* world unknown */
    r.fields = TM_F_COORD; /* a pickled coordinate is checked against the rank */
    r.coord_ndim = 1;
    r.coord[0] = 1;
    expect_error(&r, 2, 4, 1, "[2] from the file's rank disagrees with [1] from _coordinate_on_dim");
}

/* ---- tm_gather on pickle trees ---- */

static pkl_value *obj(pkl_doc *d, const char *mod, const char *name, pkl_value *state)
{
    pkl_value *o = pkl_new_obj(d, PKL_NEWOBJ, pkl_new_global(d, mod, name), pkl_new_tuple(d, 0, NULL));
    o->u.obj.state = state;
    return o;
}

static void set(pkl_doc *d, pkl_value *dict, const char *k, pkl_value *v) { assert_int_equal(pkl_dict_set(d, dict, pkl_new_cstr(d, k), v), 0); }

static pkl_value *ints(pkl_doc *d, int n, const int64_t *v)
{
    pkl_value *items[8];
    for (int i = 0; i < n; i++) items[i] = pkl_new_int(d, v[i]);
    return pkl_new_tuple(d, (size_t)n, items);
}

static pkl_value *flat_layout(pkl_doc *d, int64_t size, int64_t stride)
{
    pkl_value *s = pkl_new_dict(d);
    set(d, s, "shape", ints(d, 1, &size));
    set(d, s, "stride", ints(d, 1, &stride));
    return obj(d, "torch.distributed._mesh_layout", "_FlatLayout", s);
}

static void test_gather_axes(void **st)
{
    (void)st;
    pkl_doc *d = pkl_doc_new();
    pkl_value *axes[2] = {flat_layout(d, 2, 2), flat_layout(d, 2, 1)};
    pkl_value *ls = pkl_new_dict(d);
    set(d, ls, "axes", pkl_new_tuple(d, 2, axes));
    pkl_value *ms = pkl_new_dict(d);
    set(d, ms, "_device_type", pkl_new_cstr(d, "cpu"));
    set(d, ms, "_layout", obj(d, "torch.distributed._mesh_layout", "_MeshLayout", ls));
    set(d, ms, "_flatten_rank_map", ints(d, 4, iota4));
    set(d, ms, "_rank", pkl_new_int(d, 2));
    set(d, ms, "_coordinate_on_dim", ints(d, 2, (int64_t[]){1, 0}));
    pkl_value *mesh = obj(d, "torch.distributed.device_mesh", "DeviceMesh", ms);
    tm_raw raw;
    fm_err e = {0};
    if (tm_gather(mesh, NULL, &raw, &e)) fail_msg("tm_gather: %s", e.msg);
    assert_int_equal(raw.fields, TM_F_LAYOUT_AXES | TM_F_FLAT_RANK_MAP | TM_F_RANK | TM_F_COORD);
    char names[256];
    assert_string_equal(tm_field_names(raw.fields, names, sizeof names),
                        "_layout.axes, _flatten_rank_map, _coordinate_on_dim, _rank");
    expect_mesh(&raw, 2, 4, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 0});
    expect_mesh(&raw, -1, -1, 2, 2, (int64_t[]){2, 2}, (int64_t[]){1, 0}); /* rank from _rank */
    tm_raw_free(&raw);
    pkl_doc_free(d);
}

/* 2.11's CuTe shape/stride with a nested mode: ((2, 2),) strides ((2, 1),) is one dim of 4. */
static void test_gather_nested_shape(void **st)
{
    (void)st;
    pkl_doc *d = pkl_doc_new();
    pkl_value *ls = pkl_new_dict(d);
    pkl_value *sh = ints(d, 2, (int64_t[]){2, 2}), *sd = ints(d, 2, (int64_t[]){2, 1});
    set(d, ls, "shape", pkl_new_tuple(d, 1, &sh));
    set(d, ls, "stride", pkl_new_tuple(d, 1, &sd));
    pkl_value *ms = pkl_new_dict(d);
    set(d, ms, "_layout", obj(d, "torch.distributed._mesh_layout", "_MeshLayout", ls));
    set(d, ms, "_flatten_rank_map", ints(d, 4, (int64_t[]){3, 2, 1, 0}));
    pkl_value *mesh = obj(d, "torch.distributed.device_mesh", "DeviceMesh", ms);
    tm_mesh m;
    fm_err e = {0};
    if (tm_read(mesh, NULL, 1, 4, 1, &m, &e)) fail_msg("tm_read: %s", e.msg);
    assert_int_equal(m.ndim, 1);
    assert_int_equal(m.shape[0], 4);
    assert_int_equal(m.coord[0], 2); /* rank 1 sits at position 2 of the rank map */
    pkl_doc_free(d);
}

static void test_gather_unknown(void **st)
{
    (void)st;
    pkl_doc *d = pkl_doc_new();
    pkl_value *ms = pkl_new_dict(d);
    set(d, ms, "_device_type", pkl_new_cstr(d, "cpu"));
    set(d, ms, "_topology", pkl_new_int(d, 7));
    pkl_value *mesh = obj(d, "torch.distributed.device_mesh", "DeviceMesh", ms);
    tm_mesh m;
    fm_err e = {0};
    assert_int_not_equal(tm_read(mesh, NULL, 0, 4, 2, &m, &e), 0);
    assert_non_null(strstr(e.msg, "device mesh layout not recognised"));
    assert_non_null(strstr(e.msg, "fields found: _device_type, _topology"));
    /* malformed known fields are named too */
    set(d, ms, "_layout", obj(d, "torch.distributed._mesh_layout", "_MeshLayout", pkl_new_dict(d)));
    set(d, pkl_attr(mesh, "_layout")->u.obj.state, "axes", pkl_new_cstr(d, "x"));
    assert_int_not_equal(tm_read(mesh, NULL, 0, 4, 1, &m, &e), 0);
    assert_non_null(strstr(e.msg, "_layout.axes is malformed"));
    assert_int_not_equal(tm_read(pkl_new_int(d, 3), NULL, 0, 4, 1, &m, &e), 0);
    assert_non_null(strstr(e.msg, "without a DeviceMesh"));
    pkl_doc_free(d);
}

/* ---- real files ---- */

static void load(const char *path, int rank, ti_index *ix)
{
    ptz_file *z;
    fm_err e = {0};
    if (ptz_open(path, 0, 0, &z, &e) || ti_load_ws(z, rank, 4, ix, &e)) fail_msg("%s: %s", path, e.msg);
    ptz_close(z);
}

static void test_real_files(void **st)
{
    (void)st;
    ti_index ix;
    for (int r = 0; r < 4; r++) { /* torch 2.14: _layout.axes */
        load(tu_fixturef("torch214_fsdp2_ws4/global_step_1/actor/model_world_size_4_rank_%d.pt", r), r, &ix);
        assert_int_equal(ix.entries[0].mesh_ndim, 1);
        assert_int_equal(ix.entries[0].mesh_shape[0], 4);
        assert_int_equal(ix.entries[0].coord[0], r);
        ti_index_free(&ix);
    }
    /* torch 2.11 HSDP: _layout shape (2, 2), rank 2 at (1, 0) */
    load("mpi_tests/fixtures/fsdp2_hsdp_ws4/global_step_1/actor/model_world_size_4_rank_2.pt", 2, &ix);
    assert_int_equal(ix.entries[0].mesh_ndim, 2);
    assert_int_equal(ix.entries[0].coord[0], 1);
    assert_int_equal(ix.entries[0].coord[1], 0);
    ti_index_free(&ix);
    /* torch 2.6 HSDP: the mesh tensor (2, 2), rank 1 at (0, 1) */
    load("mpi_tests/fixtures/torch26_hsdp_ws4/global_step_1/actor/model_world_size_4_rank_1.pt", 1, &ix);
    assert_int_equal(ix.entries[0].mesh_ndim, 2);
    assert_int_equal(ix.entries[0].coord[0], 0);
    assert_int_equal(ix.entries[0].coord[1], 1);
    ti_index_free(&ix);
    /* a file read as another rank than the one that wrote it is refused */
    ptz_file *z;
    fm_err e = {0};
    assert_int_equal(ptz_open(tu_fixture("torch214_fsdp2_ws4/global_step_1/actor/model_world_size_4_rank_1.pt"), 0, 0, &z, &e), 0);
    assert_int_not_equal(ti_load_ws(z, 3, 4, &ix, &e), 0);
    assert_non_null(strstr(e.msg, "pickled by rank 1, not by this file's rank 3"));
    ti_index_free(&ix);
    ptz_close(z);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_axes_2d),          cmocka_unit_test(test_layout_strides),
        cmocka_unit_test(test_submesh_and_nested), cmocka_unit_test(test_mesh_tensor),
        cmocka_unit_test(test_disagreements),    cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_gather_axes),      cmocka_unit_test(test_gather_nested_shape),
        cmocka_unit_test(test_gather_unknown),   cmocka_unit_test(test_real_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
