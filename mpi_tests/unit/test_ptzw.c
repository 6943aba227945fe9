/* test_ptzw.c - the torch.save zip writer (ptzw): round trips through ptz,
 * libzip and `unzip -t`, byte-exact copies of real torch files, ZIP64
 * fields (through a lowered threshold), and write failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zip.h>

#include "torchfmt/ptz.h"
#include "torchfmt/ptzw.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

typedef struct tw_rec {
    const char *name;
    unsigned char *data;
    size_t len;
    bool streamed;
} tw_rec;

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const unsigned char *p) { return (uint32_t)le16(p) | ((uint32_t)le16(p + 2) << 16); }
static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32); }

static char *tmp_path(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n ? n : 1);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (unsigned char)(x >> 16);
    }
    return p;
}

static ptzw *create_ok(const char *path, const char *prefix)
{
    ptzw *w = NULL;
    fm_err e = {0};
    int rc = ptzw_create(path, prefix, &w, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    return w;
}

/* Streams len bytes in uneven pieces (1, 7, 4096+3, ...). */
static void stream_entry(ptzw *w, const char *name, const unsigned char *data, size_t len)
{
    fm_err e = {0};
    assert_int_equal(ptzw_begin(w, name, &e), 0);
    static const size_t steps[] = {1, 7, 4099, 65536, 1 << 20, 3};
    size_t off = 0, k = 0;
    while (off < len) {
        size_t n = steps[k++ % (sizeof steps / sizeof steps[0])];
        if (n > len - off) n = len - off;
        assert_int_equal(ptzw_write(w, data + off, n, &e), 0);
        off += n;
    }
    int rc = ptzw_end(w, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
}

static void write_recs(ptzw *w, tw_rec *recs, size_t n)
{
    fm_err e = {0};
    for (size_t i = 0; i < n; i++) {
        if (recs[i].streamed) stream_entry(w, recs[i].name, recs[i].data, recs[i].len);
        else assert_int_equal(ptzw_add(w, recs[i].name, recs[i].data, recs[i].len, &e), 0);
    }
    int rc = ptzw_close(w, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
}

/* Every record reads back through ptz: same bytes, CRC verified, aligned. */
static void check_read_back(const char *path, const char *prefix, const tw_rec *recs, size_t n)
{
    ptz_file *f = NULL;
    fm_err e = {0};
    int rc = ptz_open(path, 0, 4096, &f, &e);
    if (rc != 0) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, 0);
    assert_string_equal(ptz_prefix(f), prefix);
    for (size_t i = 0; i < n; i++) {
        ptz_record_info in;
        assert_true(ptz_find(f, recs[i].name, &in));
        assert_int_equal(in.size, recs[i].len);
        assert_int_equal(in.data_offset % 64, 0);
        assert_int_equal(in.crc, ptz_crc32(0, recs[i].data, recs[i].len));
        ptz_rec *r;
        assert_int_equal(ptz_rec_open(f, recs[i].name, &r, &e), 0);
        for (uint64_t off = 0; off < in.size; off += 4096) {
            size_t len = in.size - off < 4096 ? (size_t)(in.size - off) : 4096;
            const uint8_t *p;
            assert_int_equal(ptz_rec_get(r, off, len, &p, &e), 0);
            assert_memory_equal(p, recs[i].data + off, len);
        }
        assert_int_equal(ptz_rec_finish(r, &e), 0);
        ptz_rec_close(r);
    }
    ptz_close(f);
}

static int unzip_test(const char *path)
{
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "unzip -tqq '%s' >/dev/null 2>&1", path);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Names in central-directory order, as libzip (ZIP_CHECKCONS) lists them. */
static size_t libzip_names(const char *path, char names[][64], size_t max)
{
    int err = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &err);
    if (za == NULL) fail_msg("libzip refuses %s (error %d)", path, err);
    zip_int64_t n = zip_get_num_entries(za, 0);
    assert_true(n >= 0 && (size_t)n <= max);
    for (zip_int64_t i = 0; i < n; i++) snprintf(names[i], 64, "%s", zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW));
    zip_discard(za);
    return (size_t)n;
}

/* ---- round trips ------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "out.pt");
    const char pkl[] = "\x80\x02}q\x00.";
    tw_rec recs[] = {
        {"data/0", pattern(1000, 1), 1000, false},
        {"data/1", pattern(0, 2), 0, false},             /* empty, added */
        {"data/2", pattern(0, 3), 0, true},              /* empty, streamed */
        {"data/3", pattern(5u << 20, 4), 5u << 20, true}, /* 5 MiB streamed */
        {"data/4", pattern(1, 5), 1, true},
        {"data/5", pattern(3u << 20, 6), 3u << 20, false}, /* larger than the stage */
        {"data/6", pattern(63, 7), 63, false},
    };
    size_t n = sizeof recs / sizeof recs[0];
    ptzw *w = create_ok(path, "extra_state_merged");
    fm_err e = {0};
    assert_int_equal(ptzw_add_preamble(w, pkl, sizeof pkl - 1, &e), 0);
    write_recs(w, recs, n);
    check_read_back(path, "extra_state_merged", recs, n);
    assert_int_equal(unzip_test(path), 0);

    /* entry order and names: torch's */
    char names[32][64];
    size_t k = libzip_names(path, names, 32);
    assert_int_equal(k, 4 + n + 2);
    const char *want[] = {"data.pkl", ".format_version", ".storage_alignment", "byteorder", "data/0", "data/1",
                          "data/2", "data/3", "data/4", "data/5", "data/6", "version", ".data/serialization_id"};
    for (size_t i = 0; i < k; i++) {
        char full[128];
        snprintf(full, sizeof full, "extra_state_merged/%s", want[i]);
        assert_string_equal(names[i], full);
    }

    /* small records' contents */
    ptz_file *f;
    assert_int_equal(ptz_open(path, 0, 0, &f, &e), 0);
    const char *small[][2] = {{"data.pkl", pkl}, {".format_version", "1"}, {".storage_alignment", "64"},
                              {"byteorder", "little"}, {"version", "3\n"}};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
        uint8_t *p;
        size_t len;
        assert_int_equal(ptz_read_record(f, small[i][0], 100, &p, &len, &e), 0);
        assert_string_equal((char *)p, small[i][1]);
        free(p);
    }
    uint8_t *id;
    size_t id_len;
    assert_int_equal(ptz_read_record(f, ".data/serialization_id", 100, &id, &id_len, &e), 0);
    assert_int_equal(id_len, 40);
    for (size_t i = 0; i < 40; i++) assert_true(id[i] >= '0' && id[i] <= '9');
    free(id);
    ptz_close(f);

    for (size_t i = 0; i < n; i++) free(recs[i].data);
    free(path);
    tu_rmdir(dir);
}

/* Identical input gives an identical file (serialization_id included). */
static void test_deterministic(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    unsigned char *files[2];
    size_t lens[2];
    for (int k = 0; k < 2; k++) {
        char *path = tmp_path(dir, k ? "b.pt" : "a.pt");
        tw_rec recs[] = {{"data/0", pattern(777, 9), 777, false}, {"data/1", pattern(70000, 10), 70000, true}};
        ptzw *w = create_ok(path, "x");
        fm_err e = {0};
        assert_int_equal(ptzw_add_preamble(w, "\x80\x02N.", 4, &e), 0);
        write_recs(w, recs, 2);
        files[k] = tu_slurp(path, &lens[k]);
        free(recs[0].data);
        free(recs[1].data);
        free(path);
    }
    assert_int_equal(lens[0], lens[1]);
    assert_memory_equal(files[0], files[1], lens[0]);
    free(files[0]);
    free(files[1]);
    tu_rmdir(dir);
}

/* Rewriting the records of real torch.save files in their order gives the
 * very same bytes: local headers, FB padding, descriptors, central
 * directory, ZIP64 end records. */
static void copy_torch_file(const char *src, const char *dst)
{
    int err = 0;
    zip_t *za = zip_open(src, ZIP_RDONLY, &err);
    assert_non_null(za);
    ptz_file *f;
    fm_err e = {0};
    assert_int_equal(ptz_open(src, 0, 0, &f, &e), 0);
    ptzw *w = create_ok(dst, ptz_prefix(f));
    zip_int64_t n = zip_get_num_entries(za, 0);
    for (zip_int64_t i = 0; i < n; i++) {
        const char *rel = strchr(zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW), '/') + 1;
        uint8_t *p;
        size_t len;
        assert_int_equal(ptz_read_record(f, rel, SIZE_MAX, &p, &len, &e), 0);
        if (i % 2) assert_int_equal(ptzw_add(w, rel, p, len, &e), 0);
        else stream_entry(w, rel, p, len); /* streamed: same bytes unless padding < 20 */
        free(p);
    }
    assert_int_equal(ptzw_close(w, &e), 0);
    ptz_close(f);
    zip_discard(za);
}

static void test_byte_exact_misc(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *dst = tmp_path(dir, "misc.pt");
    const char *src = tu_fixture("misc_tensors/misc.pt");
    int err = 0;
    zip_t *za = zip_open(src, ZIP_RDONLY, &err);
    ptz_file *f;
    fm_err e = {0};
    assert_int_equal(ptz_open(src, 0, 0, &f, &e), 0);
    ptzw *w = create_ok(dst, "misc");
    for (zip_int64_t i = 0; i < zip_get_num_entries(za, 0); i++) {
        const char *rel = strchr(zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW), '/') + 1;
        uint8_t *p;
        size_t len;
        assert_int_equal(ptz_read_record(f, rel, SIZE_MAX, &p, &len, &e), 0);
        assert_int_equal(ptzw_add(w, rel, p, len, &e), 0);
        free(p);
    }
    assert_int_equal(ptzw_close(w, &e), 0);
    ptz_close(f);
    zip_discard(za);
    size_t a_len = 0, b_len = 0;
    unsigned char *a = tu_slurp(src, &a_len), *b = tu_slurp(dst, &b_len);
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
    free(a);
    free(b);
    free(dst);
    tu_rmdir(dir);
}

static void test_byte_exact_model(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    const char *srcs[] = {"fsdp2_ws4_tied/global_step_1/actor/model_world_size_4_rank_0.pt",
                          "fsdp1_ws2_nomesh/global_step_1/actor/optim_world_size_2_rank_1.pt"};
    for (size_t k = 0; k < 2; k++) {
        char *dst = tmp_path(dir, k ? "b.pt" : "a.pt");
        const char *src = tu_fixture(srcs[k]);
        copy_torch_file(src, dst);
        assert_int_equal(unzip_test(dst), 0);
        /* streamed entries may carry 64 more bytes of padding: compare the
         * records, and the whole file when no entry needed that */
        size_t a_len = 0, b_len = 0;
        unsigned char *a = tu_slurp(src, &a_len), *b = tu_slurp(dst, &b_len);
        if (a_len == b_len) assert_memory_equal(a, b, a_len);
        else assert_true(b_len > a_len && (b_len - a_len) % 64 == 0);
        free(a);
        free(b);
        ptz_file *f1, *f2;
        fm_err e = {0};
        assert_int_equal(ptz_open(src, 0, 0, &f1, &e), 0);
        assert_int_equal(ptz_open(dst, 0, 0, &f2, &e), 0);
        assert_int_equal(ptz_record_count(f1), ptz_record_count(f2));
        ptz_record_info i1, i2;
        assert_true(ptz_find(f2, "data/0", &i2));
        assert_true(ptz_find(f1, "data/0", &i1));
        assert_int_equal(i1.crc, i2.crc);
        assert_int_equal(i1.size, i2.size);
        ptz_close(f1);
        ptz_close(f2);
        free(dst);
    }
    tu_rmdir(dir);
}

/* Walks the local headers: every entry's data starts at a multiple of 64,
 * and each local extra is "FB" padding (maybe after a ZIP64 extra). */
static void test_alignment_and_padding(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "align.pt");
    ptzw *w = create_ok(path, "p");
    fm_err e = {0};
    unsigned char *data = pattern(300, 1);
    char name[32];
    assert_int_equal(ptzw_add(w, "data.pkl", "\x80\x02N.", 4, &e), 0);
    for (int i = 0; i < 70; i++) { /* names of every length mod 64 */
        snprintf(name, sizeof name, "data/%0*d", 1 + i % 23, i);
        if (i % 3 == 0) stream_entry(w, name, data, (size_t)(i * 4) % 301);
        else assert_int_equal(ptzw_add(w, name, data, (size_t)(i * 4) % 301, &e), 0);
    }
    assert_int_equal(ptzw_close(w, &e), 0);
    size_t len = 0;
    unsigned char *z = tu_slurp(path, &len);
    ptz_file *f;
    assert_int_equal(ptz_open(path, 0, 0, &f, &e), 0);
    size_t pos = 0, entries = 0;
    while (le32(z + pos) == 0x04034b50u) {
        uint16_t flags = le16(z + pos + 6), nl = le16(z + pos + 26), xl = le16(z + pos + 28);
        assert_int_equal(le32(z + pos + 14), 0); /* CRC and sizes are in the descriptor */
        const unsigned char *x = z + pos + 30 + nl;
        assert_int_equal(x[0], 'F');
        assert_int_equal(x[1], 'B');
        assert_int_equal(le16(x + 2) + 4, xl);
        size_t data_ofs = pos + 30 + nl + xl;
        assert_int_equal(data_ofs % 64, 0);
        char rel[80]; /* "p/<rel>" */
        snprintf(rel, sizeof rel, "%.*s", nl - 2, (const char *)z + pos + 32);
        ptz_record_info in;
        assert_true(ptz_find(f, rel, &in));
        assert_int_equal(in.data_offset, data_ofs);
        pos = data_ofs + in.size;
        if (in.size > 0) {
            assert_int_equal(flags, 0x0808);
            assert_int_equal(le32(z + pos), 0x08074b50u);
            assert_int_equal(le32(z + pos + 4), in.crc);
            assert_int_equal(le32(z + pos + 8), in.size);
            assert_int_equal(le32(z + pos + 12), in.size);
            pos += 16;
        } else {
            assert_int_equal(flags, 0x0800);
        }
        entries++;
    }
    ptz_close(f);
    assert_int_equal(entries, 1 + 70 + 3); /* + version, byteorder, serialization_id */
    assert_int_equal(le32(z + pos), 0x02014b50u);
    assert_int_equal(unzip_test(path), 0);
    free(z);
    free(data);
    free(path);
    tu_rmdir(dir);
}

/* ---- ZIP64 ------------------------------------------------------------------- */

static void test_zip64_extra_encoding(void **state)
{
    (void)state;
    uint8_t x[28];
    const uint64_t L = 0xFFFFFFFFu;
    assert_int_equal(ptzw_zip64_extra(100, 100, 1000, L, x), 0);
    assert_int_equal(ptzw_zip64_extra(L - 1, L - 1, L - 1, L, x), 0);
    /* size >= 4 GiB - 1: [uncompressed, compressed] */
    assert_int_equal(ptzw_zip64_extra(L, 0, 5, L, x), 20);
    assert_int_equal(le16(x), 1);
    assert_int_equal(le16(x + 2), 16);
    assert_int_equal(le64(x + 4), L);
    assert_int_equal(le64(x + 12), 0);
    /* offset >= 4 GiB - 1: [local header offset] */
    assert_int_equal(ptzw_zip64_extra(10, 10, 0x123456789ull, L, x), 12);
    assert_int_equal(le16(x + 2), 8);
    assert_int_equal(le64(x + 4), 0x123456789ull);
    /* both, in the standard order */
    assert_int_equal(ptzw_zip64_extra(5ull << 30, 5ull << 30, 6ull << 30, L, x), 28);
    assert_int_equal(le16(x + 2), 24);
    assert_int_equal(le64(x + 4), 5ull << 30);
    assert_int_equal(le64(x + 12), 5ull << 30);
    assert_int_equal(le64(x + 20), 6ull << 30);
    /* a lowered limit (the test hook) */
    assert_int_equal(ptzw_zip64_extra(100, 100, 99, 100, x), 20);
}

/* With the threshold lowered to 200 bytes, sizes, offsets and the central
 * directory use the ZIP64 fields exactly as a > 4 GiB file would. The
 * result must read back through ptz, libzip (CHECKCONS) and unzip -t. */
static void test_zip64_threshold_round_trip(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "z64.pt");
    tw_rec recs[] = {
        {"data/0", pattern(150, 1), 150, false},  /* small, at offset 84: no ZIP64 */
        {"data/1", pattern(5000, 2), 5000, false}, /* size in ZIP64 */
        {"data/2", pattern(7000, 3), 7000, true},  /* streamed: upgraded local header */
        {"data/3", pattern(10, 4), 10, true},      /* streamed, small */
        {"data/4", pattern(0, 5), 0, true},
        {"data/5", pattern(0, 6), 0, false},
    };
    size_t n = sizeof recs / sizeof recs[0];
    ptzw *w = create_ok(path, "z");
    ptzw_set_zip64_threshold(w, 200);
    fm_err e = {0};
    assert_int_equal(ptzw_add(w, "data.pkl", "\x80\x02N.", 4, &e), 0); /* offset 0: no ZIP64 */
    write_recs(w, recs, n);
    check_read_back(path, "z", recs, n);
    char names[16][64];
    assert_int_equal(libzip_names(path, names, 16), 1 + n + 3);
    assert_int_equal(unzip_test(path), 0);

    /* look at the bytes: classic EOCD saturated, ZIP64 extras present */
    size_t len = 0;
    unsigned char *z = tu_slurp(path, &len);
    const unsigned char *eocd = z + len - 22;
    assert_int_equal(le32(eocd), 0x06054b50u);
    assert_int_equal(le32(eocd + 12), 0xFFFFFFFFu); /* cd size */
    assert_int_equal(le32(eocd + 16), 0xFFFFFFFFu); /* cd offset */
    assert_int_equal(le32(eocd - 20), 0x07064b50u);
    const unsigned char *z64 = z + le64(eocd - 20 + 8);
    assert_int_equal(le32(z64), 0x06064b50u);
    assert_int_equal(le64(z64 + 32), 1 + n + 3);
    size_t pos = le64(z64 + 48), big_sizes = 0, big_ofs = 0;
    while (le32(z + pos) == 0x02014b50u) {
        uint16_t nl = le16(z + pos + 28), xl = le16(z + pos + 30);
        bool sz = le32(z + pos + 24) == 0xFFFFFFFFu, of = le32(z + pos + 42) == 0xFFFFFFFFu;
        big_sizes += sz;
        big_ofs += of;
        assert_int_equal(xl, (sz || of) ? 4 + 16 * sz + 8 * of : 0);
        if (xl) assert_int_equal(le16(z + pos + 46 + nl), 1);
        pos += 46 + nl + xl;
    }
    assert_int_equal(big_sizes, 2);    /* data/1, data/2 */
    assert_int_equal(big_ofs, n + 2);  /* all but data.pkl and data/0 */
    free(z);
    for (size_t i = 0; i < n; i++) free(recs[i].data);
    free(path);
    tu_rmdir(dir);
}

/* ---- misuse and failures ---------------------------------------------------- */

static void test_abort_removes(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "partial.pt");
    ptzw *w = create_ok(path, "x");
    fm_err e = {0};
    assert_int_equal(ptzw_add(w, "data.pkl", "abc", 3, &e), 0);
    assert_int_equal(ptzw_begin(w, "data/0", &e), 0);
    assert_int_equal(ptzw_write(w, "12345", 5, &e), 0);
    assert_true(access(path, F_OK) == 0);
    ptzw_abort(w);
    assert_true(access(path, F_OK) != 0);
    ptzw_abort(NULL);
    free(path);
    tu_rmdir(dir);
}

static void test_misuse(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "misuse.pt");
    ptzw *w = NULL;
    fm_err e = {0};
    assert_int_equal(ptzw_create(path, "a/b", &w, &e), FM_EINTERNAL);
    assert_int_equal(ptzw_create(path, "", &w, &e), FM_EINTERNAL);
    assert_null(w);
    w = create_ok(path, "x");
    assert_int_equal(ptzw_write(w, "a", 1, &e), FM_EINTERNAL); /* outside a record */
    assert_int_equal(ptzw_end(w, &e), FM_EINTERNAL);
    assert_int_equal(ptzw_add(w, "data/0", "a", 1, &e), 0);
    assert_int_equal(ptzw_add(w, "data/0", "b", 1, &e), FM_EINTERNAL); /* twice */
    assert_non_null(strstr(e.msg, "data/0"));
    assert_int_equal(ptzw_add(w, "", "b", 1, &e), FM_EINTERNAL);
    assert_int_equal(ptzw_add(w, "/abs", "b", 1, &e), FM_EINTERNAL);
    assert_int_equal(ptzw_begin(w, "data/1", &e), 0);
    assert_int_equal(ptzw_begin(w, "data/2", &e), FM_EINTERNAL); /* nested */
    assert_int_equal(ptzw_close(w, &e), FM_EINTERNAL);           /* inside a record */
    assert_true(access(path, F_OK) != 0);                        /* removed */
    free(path);
    tu_rmdir(dir);
}

static void test_create_errors(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    ptzw *w = NULL;
    fm_err e = {0};
    assert_int_equal(ptzw_create(dir, "x", &w, &e), FM_EIO); /* a directory */
    assert_non_null(strstr(e.msg, dir));
    char *p = tmp_path(dir, "no/such/dir/x.pt");
    assert_int_equal(ptzw_create(p, "x", &w, &e), FM_EIO);
    assert_non_null(strstr(e.msg, "No such file"));
    assert_null(w);
    free(p);
    /* an existing regular file is truncated */
    p = tmp_path(dir, "old.pt");
    FILE *o = fopen(p, "w");
    fputs("old contents that are longer than nothing", o);
    fclose(o);
    w = create_ok(p, "x");
    assert_int_equal(ptzw_close(w, &e), 0);
    size_t len = 0;
    unsigned char *z = tu_slurp(p, &len);
    assert_int_equal(len, 56 + 20 + 22); /* no entries: the end records only */
    free(z);
    free(p);
    tu_rmdir(dir);
}

/* A write failure (here EFBIG from RLIMIT_FSIZE, as ENOSPC would be) is
 * reported with the path, and the partial file is removed. Runs in a child
 * so that the limit does not leak into other tests. */
static void test_write_failure(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "full.pt");
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {100000, 100000};
        setrlimit(RLIMIT_FSIZE, &rl);
        ptzw *w = NULL;
        fm_err e = {0};
        if (ptzw_create(path, "x", &w, &e) != 0) _exit(10);
        unsigned char *big = pattern(3u << 20, 1);
        int rc = ptzw_add(w, "data/0", big, 3u << 20, &e);
        if (rc == 0) rc = ptzw_close(w, &e);
        else ptzw_abort(w);
        free(big);
        if (rc != FM_EIO) _exit(11);
        if (strstr(e.msg, path) == NULL || strstr(e.msg, "too large") == NULL) _exit(12);
        if (access(path, F_OK) == 0) _exit(13);
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    free(path);
    tu_rmdir(dir);
}

/* A write that fails inside ptzw_close (central directory) also cleans up. */
static void test_close_failure(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = tmp_path(dir, "full.pt");
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {4096, 4096};
        setrlimit(RLIMIT_FSIZE, &rl);
        ptzw *w = NULL;
        fm_err e = {0};
        if (ptzw_create(path, "x", &w, &e) != 0) _exit(10);
        unsigned char *d = pattern(5000, 1); /* stays in the stage until close */
        if (ptzw_add(w, "data/0", d, 5000, &e) != 0) _exit(11);
        free(d);
        if (ptzw_close(w, &e) != FM_EIO) _exit(12);
        if (access(path, F_OK) == 0) _exit(13);
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    free(path);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_byte_exact_misc),
        cmocka_unit_test(test_byte_exact_model),
        cmocka_unit_test(test_alignment_and_padding),
        cmocka_unit_test(test_zip64_extra_encoding),
        cmocka_unit_test(test_zip64_threshold_round_trip),
        cmocka_unit_test(test_abort_removes),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_write_failure),
        cmocka_unit_test(test_close_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
