/* test_h5out.c - the HDF5 engine (h5out.c), in one process.
 *
 *   - the bf16 and fp16 HDF5 types: their fields read back, and HDF5's own
 *     conversion of all 65536 bf16 bit patterns to float32 against the
 *     exact widening (dt_bf16_to_f32);
 *   - misc_tensors/misc.pt (bf16, fp16, int64, bool, a 0-d scalar, an empty
 *     tensor, a transposed view, two views of one storage) written with
 *     h5_write_all() and read back with the HDF5 API: types, dataspaces,
 *     attributes, layout, values (bf16 also as float32 converted by HDF5);
 *   - a synthesized 4-rank checkpoint with Shard(0) and Shard(1) pieces and
 *     rows longer than the window, merged by one process with a 4 KiB
 *     window (pieces cut into sub-blocks, sub-blocks of several pieces
 *     joined into one write), fp32 and bf16, against the generator;
 *   - bad cases: an existing file (FM_EEXIST, untouched; replaced with
 *     overwrite), a name with '/', a corrupt shard (CRC error, no file left).
 *
 * Built without parallel HDF5 (FM_HAVE_HDF5 undefined) it only checks that
 * the engine refuses with FM_EUNSUPPORTED.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/dtype.h"
#include "engine/h5out.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"
#include "synth/synth.h"
#include "testutil.h"
#include "torchfmt/tindex.h"
#include "base/util.h"

/* With parallel HDF5 linked next to Open MPI, LeakSanitizer's scan of the
 * dynamic TLS at exit crashes ("Tracer caught signal 11" on a stale DTLS
 * entry; GCC 12's libsanitizer, glibc 2.36) in any program that calls
 * MPI_Init. Not intercepting __tls_get_addr avoids it; ASAN_OPTIONS from
 * the environment still override this default. */
#ifdef __SANITIZE_ADDRESS__
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "intercept_tls_get_addr=0"; }
#endif

#ifdef FM_HAVE_HDF5

/* ---- helpers ---------------------------------------------------------- */

/* Rank files opened and indexed in this one process, and their plan. */
typedef struct loaded {
    int W;
    ptz_file *z[8];
    ti_index ix[8];
    plan pl;
} loaded;

static void load(loaded *L, char **paths, int W, dt_type out)
{
    fm_err e = {0};
    memset(L, 0, sizeof *L);
    L->W = W;
    for (int r = 0; r < W; r++) {
        if (ptz_open(paths[r], 0, 0, &L->z[r], &e) || ti_load(L->z[r], r, &L->ix[r], &e)) fail_msg("%s: %s", paths[r], e.msg);
        for (size_t i = 0; i < L->ix[r].n && W > 1; i++) /* plain tensors are compared by content across ranks */
            for (size_t k = 0; k < L->ix[r].entries[i].npieces && L->ix[r].entries[i].kind == TI_PLAIN; k++) {
                ti_piece *p = &L->ix[r].entries[i].pieces[k];
                if (ti_piece_crc(L->z[r], p, &p->crc, &e)) fail_msg("crc: %s", e.msg);
                p->has_crc = true;
            }
    }
    plan_opts po = {.world_size = W, .nprocs = 1, .out_dtype = out, .max_shard_size = 5000000000ull};
    if (plan_build(L->ix, &po, &L->pl, &e)) fail_msg("plan: %s", e.msg);
}

static void unload(loaded *L)
{
    plan_free(&L->pl);
    for (int r = 0; r < L->W; r++) {
        ti_index_free(&L->ix[r]);
        ptz_close(L->z[r]);
    }
}

static int write_h5(loaded *L, const char *path, size_t window, const char *config, bool overwrite, fm_err *e)
{
    h5_opts o;
    h5_opts_init(&o);
    uint64_t indep = 99;
    o.window = window;
    o.config = config;
    o.source_world_size = L->W;
    o.overwrite = overwrite;
    o.independent = &indep;
    o.fsync = false;
    xf_stats st;
    int rc = h5_write_all(&L->pl, L->z, path, &o, NULL, NULL, MPI_COMM_WORLD, &st, e);
    if (rc == 0) {
        assert_int_equal(indep, 0); /* every write was collective I/O */
        assert_int_equal(st.bytes_written, L->pl.total_bytes);
    }
    return rc;
}

static char *read_str_attr(hid_t obj, const char *name)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    assert_true(a >= 0);
    hid_t t = H5Aget_type(a);
    assert_true(H5Tis_variable_str(t) > 0);
    assert_int_equal(H5Tget_cset(t), H5T_CSET_UTF8);
    char *v = NULL;
    assert_true(H5Aread(a, t, &v) >= 0);
    char *copy = strdup(v);
    H5free_memory(v);
    H5Tclose(t);
    H5Aclose(a);
    return copy;
}

static void check_str_attr(hid_t obj, const char *name, const char *want)
{
    char *v = read_str_attr(obj, name);
    assert_string_equal(v, want);
    free(v);
}

/* The dataset's dtype and shape attributes, dataspace, layout and fill. */
static void check_dataset_meta(hid_t d, const char *dtype, int ndim, const int64_t *shape)
{
    check_str_attr(d, "dtype", dtype);
    hid_t a = H5Aopen(d, "shape", H5P_DEFAULT);
    assert_true(a >= 0);
    hid_t as = H5Aget_space(a);
    assert_int_equal(H5Sget_simple_extent_npoints(as), ndim);
    int64_t got[TI_MAX_DIMS + 1] = {0};
    assert_true(H5Aread(a, H5T_NATIVE_INT64, got) >= 0);
    for (int i = 0; i < ndim; i++) assert_int_equal(got[i], shape[i]);
    H5Sclose(as);
    H5Aclose(a);
    hid_t s = H5Dget_space(d);
    if (ndim == 0) {
        assert_int_equal(H5Sget_simple_extent_type(s), H5S_SCALAR);
    } else {
        hsize_t dims[TI_MAX_DIMS];
        assert_int_equal(H5Sget_simple_extent_dims(s, dims, NULL), ndim);
        for (int i = 0; i < ndim; i++) assert_int_equal(dims[i], shape[i]);
    }
    H5Sclose(s);
    hid_t dcpl = H5Dget_create_plist(d);
    H5D_fill_time_t ft;
    H5D_alloc_time_t at;
    assert_int_equal(H5Pget_layout(dcpl), H5D_CONTIGUOUS);
    assert_true(H5Pget_fill_time(dcpl, &ft) >= 0);
    assert_int_equal(ft, H5D_FILL_TIME_NEVER);
    assert_true(H5Pget_alloc_time(dcpl, &at) >= 0);
    assert_int_equal(at, H5D_ALLOC_TIME_EARLY);
    H5Pclose(dcpl);
}

/* Reads dataset `name` whole, converted by HDF5 to mtype. */
static void *read_all(hid_t f, const char *name, hid_t mtype, size_t n)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) fail_msg("no dataset '%s'", name);
    void *buf = calloc(n ? n : 1, H5Tget_size(mtype));
    assert_true(H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Dclose(d);
    return buf;
}

static hid_t open_ro(const char *path)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) fail_msg("cannot open %s", path);
    return f;
}

/* ---- the element types ---------------------------------------------------- */

static void test_bf16_type_fields(void **state)
{
    (void)state;
    hid_t t = h5_bf16_type();
    assert_true(t >= 0);
    size_t spos, epos, esize, mpos, msize;
    assert_int_equal(H5Tget_class(t), H5T_FLOAT);
    assert_int_equal(H5Tget_size(t), 2);
    assert_int_equal(H5Tget_precision(t), 16);
    assert_int_equal(H5Tget_offset(t), 0);
    assert_int_equal(H5Tget_order(t), H5T_ORDER_LE);
    assert_true(H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize) >= 0);
    assert_int_equal(spos, 15);
    assert_int_equal(epos, 7);
    assert_int_equal(esize, 8);
    assert_int_equal(mpos, 0);
    assert_int_equal(msize, 7);
    assert_int_equal(H5Tget_ebias(t), 127);
    assert_int_equal(H5Tget_norm(t), H5T_NORM_IMPLIED);
    H5Tclose(t);

    hid_t h = h5_file_type(DT_F16); /* IEEE binary16 */
    assert_true(H5Tget_fields(h, &spos, &epos, &esize, &mpos, &msize) >= 0);
    assert_int_equal(spos, 15);
    assert_int_equal(epos, 10);
    assert_int_equal(esize, 5);
    assert_int_equal(msize, 10);
    assert_int_equal(H5Tget_ebias(h), 15);
    assert_int_equal(H5Tget_size(h), 2);
    H5Tclose(h);

    hid_t f = h5_file_type(DT_F32);
    assert_true(H5Tequal(f, H5T_IEEE_F32LE) > 0);
    H5Tclose(f);
    hid_t i = h5_file_type(DT_I64);
    assert_true(H5Tequal(i, H5T_STD_I64LE) > 0);
    H5Tclose(i);
    hid_t b = h5_file_type(DT_BOOL);
    assert_true(H5Tequal(b, H5T_STD_U8LE) > 0);
    H5Tclose(b);
    hid_t c = h5_file_type(DT_C64);
    assert_int_equal(H5Tget_class(c), H5T_COMPOUND);
    assert_int_equal(H5Tget_size(c), 8);
    H5Tclose(c);
    assert_true(h5_file_type(DT_INVALID) < 0);
}

/* HDF5's conversion of every bf16 pattern to float32 is the exact widening
 * (zeros, subnormals, normals, infinities); a NaN stays a NaN of the same
 * sign (HDF5 sets every mantissa bit: the raw bits in the file are untouched). */
static void test_bf16_converts_exactly(void **state)
{
    (void)state;
    hid_t t = h5_bf16_type();
    uint8_t *buf = malloc(65536 * 4);
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        memcpy(buf + 2 * i, &h, 2);
    }
    assert_true(H5Tconvert(t, H5T_NATIVE_FLOAT, 65536, buf, NULL, H5P_DEFAULT) >= 0);
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t got, want = dt_bf16_to_f32((uint16_t)i);
        memcpy(&got, buf + 4 * i, 4);
        float g, w;
        memcpy(&g, &got, 4);
        memcpy(&w, &want, 4);
        if (isnan(w)) {
            if (!isnan(g) || (got >> 31) != (want >> 31)) fail_msg("bf16 0x%04x: NaN became 0x%08x", i, got);
        } else if (got != want) {
            fail_msg("bf16 0x%04x: HDF5 gives 0x%08x, the widening 0x%08x", i, got, want);
        }
    }
    free(buf);
    H5Tclose(t);
}

/* ---- misc.pt: every odd tensor ------------------------------------------ */

static void test_misc_roundtrip(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *src = strdup(tu_fixture("misc_tensors/misc.pt"));
    loaded L;
    load(&L, &src, 1, DT_INVALID);
    char *path = fm_path_join(dir, "model.h5");
    fm_err e = {0};
    const char *config = "{\"model_type\": \"misc\", \"note\": \"caf\xc3\xa9\"}";
    if (write_h5(&L, path, 4096, config, false, &e)) fail_msg("h5_write_all: %s", e.msg);

    hid_t f = open_ro(path);
    check_str_attr(f, "config", config);
    check_str_attr(f, "format_version", H5_FORMAT_VERSION);
    check_str_attr(f, "producer", "fsdpmerge");
    check_str_attr(f, "producer_version", FM_VERSION);
    int32_t ws = 0;
    hid_t a = H5Aopen(f, "source_world_size", H5P_DEFAULT);
    assert_true(H5Aread(a, H5T_NATIVE_INT32, &ws) >= 0);
    H5Aclose(a);
    assert_int_equal(ws, 1);
    H5G_info_t gi;
    assert_true(H5Gget_info(f, &gi) >= 0);
    assert_int_equal(gi.nlinks, L.pl.ntensors); /* one dataset per tensor, nothing else */

    /* bf16 [4,6] = 0..23: raw bits, and float32 by HDF5's conversion */
    hid_t d = H5Dopen2(f, "bf16", H5P_DEFAULT);
    check_dataset_meta(d, "bfloat16", 2, (int64_t[]){4, 6});
    hid_t ft = H5Dget_type(d);
    hid_t bt = h5_bf16_type();
    assert_true(H5Tequal(ft, bt) > 0);
    uint16_t raw[24];
    assert_true(H5Dread(d, bt, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) >= 0);
    H5Tclose(bt);
    H5Tclose(ft);
    H5Dclose(d);
    float *fl = read_all(f, "bf16", H5T_NATIVE_FLOAT, 24);
    for (int i = 0; i < 24; i++) {
        float v = (float)i;
        uint32_t u, g;
        memcpy(&u, &v, 4);
        assert_int_equal(raw[i], dt_f32_to_bf16(u));
        memcpy(&g, &fl[i], 4);
        assert_int_equal(g, dt_bf16_to_f32(raw[i]));
    }
    free(fl);

    d = H5Dopen2(f, "f16", H5P_DEFAULT);
    check_dataset_meta(d, "float16", 2, (int64_t[]){4, 6});
    H5Dclose(d);
    fl = read_all(f, "f16", H5T_NATIVE_FLOAT, 24); /* HDF5 converts binary16 too */
    for (int i = 0; i < 24; i++) assert_true(fl[i] == (float)i);
    free(fl);

    d = H5Dopen2(f, "int64", H5P_DEFAULT);
    check_dataset_meta(d, "int64", 1, (int64_t[]){5});
    H5Dclose(d);
    int64_t *iv = read_all(f, "int64", H5T_NATIVE_INT64, 5);
    for (int i = 0; i < 5; i++) assert_int_equal(iv[i], i);
    free(iv);

    d = H5Dopen2(f, "bool", H5P_DEFAULT);
    check_dataset_meta(d, "bool", 1, (int64_t[]){2});
    H5Dclose(d);
    uint8_t *bv = read_all(f, "bool", H5T_NATIVE_UINT8, 2);
    assert_int_equal(bv[0], 1);
    assert_int_equal(bv[1], 0);
    free(bv);

    d = H5Dopen2(f, "scalar", H5P_DEFAULT);
    check_dataset_meta(d, "float32", 0, NULL);
    H5Dclose(d);
    fl = read_all(f, "scalar", H5T_NATIVE_FLOAT, 1);
    assert_true(fl[0] == 3.5f);
    free(fl);

    d = H5Dopen2(f, "empty", H5P_DEFAULT);
    check_dataset_meta(d, "float32", 2, (int64_t[]){0, 7});
    H5Dclose(d);

    static const float transposed[24] = {0, 6, 12, 18, 1, 7, 13, 19, 2, 8, 14, 20, 3, 9, 15, 21, 4, 10, 16, 22, 5, 11, 17, 23};
    d = H5Dopen2(f, "transposed", H5P_DEFAULT);
    check_dataset_meta(d, "float32", 2, (int64_t[]){6, 4});
    H5Dclose(d);
    fl = read_all(f, "transposed", H5T_NATIVE_FLOAT, 24);
    assert_memory_equal(fl, transposed, sizeof transposed);
    free(fl);
    fl = read_all(f, "view_b", H5T_NATIVE_FLOAT, 12);
    for (int i = 0; i < 12; i++) assert_true(fl[i] == (float)(12 + i));
    free(fl);
    fl = read_all(f, "view_a", H5T_NATIVE_FLOAT, 6);
    for (int i = 0; i < 6; i++) assert_true(fl[i] == (float)(6 + i));
    free(fl);
    H5Fclose(f);

    free(path);
    free(src);
    unload(&L);
    tu_rmdir(dir);
}

/* ---- a synthesized checkpoint, small window ---------------------------- */

typedef struct synth {
    char *dir;
    syn_opts o;
    syn_ctx *ctx;
    char *paths[4];
} synth;

/* 4 ranks, verl placement: vocab 1001 is not divisible by 4, so the
 * embedding is Shard(1); intermediate 9000 makes down_proj rows of 36 KB,
 * longer than a 4 KiB window. */
static void synth_make(synth *s)
{
    fm_err e = {0};
    memset(s, 0, sizeof *s);
    s->dir = tu_tmpdir();
    syn_default_opts(&s->o);
    s->o.out = s->dir;
    s->o.expected = NULL;
    s->o.world_size = 4;
    s->o.placement = SYN_PLACE_VERL;
    s->o.model.vocab = 1001;
    s->o.model.hidden = 64;
    s->o.model.intermediate = 9000;
    s->o.model.layers = 1;
    s->o.model.heads = 4;
    s->o.model.kv_heads = 2;
    s->o.model.tied = false;
    int rc = syn_init(&s->o, &s->ctx, &e);
    if (rc == 0) rc = syn_write_meta(s->ctx, &e);
    for (int r = 0; r < 4 && rc == 0; r++) rc = syn_write_rank(s->ctx, r, NULL, &e);
    if (rc) fail_msg("synthesis: %s", e.msg);
    for (int r = 0; r < 4; r++) s->paths[r] = syn_rank_path(s->ctx, r);
}

static void synth_done(synth *s)
{
    for (int r = 0; r < 4; r++) free(s->paths[r]);
    syn_free(s->ctx);
    tu_rmdir(s->dir);
}

static const syn_tensor *syn_find(const syn_ctx *c, const char *name)
{
    for (size_t i = 0; i < syn_tensor_count(c); i++)
        if (strcmp(syn_tensor_at(c, i)->name, name) == 0) return syn_tensor_at(c, i);
    return NULL;
}

static void check_against_generator(const synth *s, const loaded *L, const char *path, dt_type out)
{
    hid_t f = open_ro(path);
    size_t sharded1 = 0;
    for (size_t i = 0; i < L->pl.ntensors; i++) {
        const plan_tensor *t = &L->pl.tensors[i];
        const syn_tensor *st = syn_find(s->ctx, t->name);
        if (st == NULL) fail_msg("tensor %s not in the generator", t->name);
        for (size_t k = 0; k < t->npieces; k++) sharded1 += t->pieces[k].k > 0;
        float *want = malloc(sizeof(float) * t->numel);
        syn_fill(st, 0, t->numel, want);
        uint32_t *got = read_all(f, t->name, H5T_NATIVE_FLOAT, t->numel);
        hid_t d = H5Dopen2(f, t->name, H5P_DEFAULT);
        check_dataset_meta(d, dt_torch_name(out), t->ndim, t->shape);
        H5Dclose(d);
        for (uint64_t j = 0; j < t->numel; j++) {
            uint32_t w;
            memcpy(&w, &want[j], 4);
            if (out == DT_BF16) w = dt_bf16_to_f32(dt_f32_to_bf16(w));
            if (got[j] != w) fail_msg("%s element %" PRIu64 ": 0x%08x, expected 0x%08x", t->name, j, got[j], w);
        }
        free(want);
        free(got);
    }
    assert_true(sharded1 > 0); /* the Shard(1) path was taken */
    H5Fclose(f);
}

static void test_synth_small_window(void **state)
{
    (void)state;
    synth s;
    synth_make(&s);
    dt_type outs[2] = {DT_F32, DT_BF16};
    for (int k = 0; k < 2; k++) {
        loaded L;
        load(&L, s.paths, 4, outs[k]);
        char *path = fm_asprintf("%s/model-%d.h5", s.dir, k);
        fm_err e = {0};
        if (write_h5(&L, path, 4096, NULL, false, &e)) fail_msg("h5_write_all: %s", e.msg);
        hid_t f = open_ro(path);
        assert_int_equal(H5Aexists(f, "config"), 0); /* no config.json: no attribute */
        H5Fclose(f);
        check_against_generator(&s, &L, path, outs[k]);
        free(path);
        unload(&L);
    }
    synth_done(&s);
}

/* ---- bad cases --------------------------------------------------------- */

static void test_existing_file(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *src = strdup(tu_fixture("misc_tensors/misc.pt"));
    loaded L;
    load(&L, &src, 1, DT_INVALID);
    char *path = fm_path_join(dir, "model.h5");
    fm_err e = {0};
    assert_int_equal(fm_write_file(path, "keep", 4, &e), 0);
    assert_int_equal(write_h5(&L, path, 1 << 20, NULL, false, &e), FM_EEXIST);
    assert_non_null(strstr(e.msg, "already exists (use --force to replace it)"));
    size_t len = 0;
    unsigned char *kept = tu_slurp(path, &len);
    assert_int_equal(len, 4); /* untouched */
    free(kept);
    fm_err_clear(&e);
    assert_int_equal(write_h5(&L, path, 1 << 20, NULL, true, &e), 0);
    hid_t f = open_ro(path);
    H5Fclose(f);
    free(path);
    free(src);
    unload(&L);
    tu_rmdir(dir);
}

static void test_bad_name(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *src = strdup(tu_fixture("misc_tensors/misc.pt"));
    loaded L;
    load(&L, &src, 1, DT_INVALID);
    free(L.pl.tensors[0].name);
    L.pl.tensors[0].name = strdup("model/evil.weight");
    fm_err e = {0};
    assert_int_equal(h5_check_names(&L.pl, &e), FM_EUNSUPPORTED);
    char *path = fm_path_join(dir, "model.h5");
    fm_err_clear(&e);
    assert_int_equal(write_h5(&L, path, 1 << 20, NULL, false, &e), FM_EUNSUPPORTED);
    assert_non_null(strstr(e.msg, "model/evil.weight"));
    assert_false(fm_path_exists(path));
    free(path);
    free(src);
    unload(&L);
    tu_rmdir(dir);
}

/* A flipped byte in a storage record: the CRC check of sg_read() fails
 * the write, and no file is left under the name. */
static void test_corrupt_shard(void **state)
{
    (void)state;
    synth s;
    synth_make(&s);
    ptz_file *z = NULL;
    fm_err e = {0};
    ptz_record_info info;
    assert_int_equal(ptz_open(s.paths[2], 0, 0, &z, &e), 0);
    assert_true(ptz_find(z, "data/11", &info)); /* down_proj: rows longer than the window */
    ptz_close(z);
    int fd = open(s.paths[2], O_RDWR);
    assert_true(fd >= 0);
    uint8_t b = 0;
    assert_int_equal(pread(fd, &b, 1, (off_t)info.data_offset + 40000), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)info.data_offset + 40000), 1);
    close(fd);
    loaded L;
    load(&L, s.paths, 4, DT_BF16);
    char *path = fm_path_join(s.dir, "model.h5");
    int rc = write_h5(&L, path, 1 << 16, NULL, false, &e);
    assert_int_equal(rc, FM_EFORMAT);
    assert_non_null(strstr(e.msg, "CRC"));
    assert_non_null(strstr(e.msg, "rank 2"));
    assert_false(fm_path_exists(path));
    free(path);
    unload(&L);
    synth_done(&s);
}

int main(void)
{
    MPI_Init(NULL, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_type_fields),
        cmocka_unit_test(test_bf16_converts_exactly),
        cmocka_unit_test(test_misc_roundtrip),
        cmocka_unit_test(test_synth_small_window),
        cmocka_unit_test(test_existing_file),
        cmocka_unit_test(test_bad_name),
        cmocka_unit_test(test_corrupt_shard),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}

#else /* no HDF5 in this build */

static void test_refused_without_hdf5(void **state)
{
    (void)state;
    plan pl;
    memset(&pl, 0, sizeof pl);
    h5_opts o;
    h5_opts_init(&o);
    fm_err e = {0};
    assert_false(h5_available());
    assert_int_equal(h5_write_all(&pl, NULL, "/nonexistent/model.h5", &o, NULL, NULL, MPI_COMM_WORLD, NULL, &e),
                     FM_EUNSUPPORTED);
    assert_non_null(strstr(e.msg, "without parallel HDF5"));
}

int main(void)
{
    MPI_Init(NULL, NULL);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_refused_without_hdf5)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    MPI_Finalize();
    return rc;
}

#endif
