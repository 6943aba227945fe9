/* test_ptz.c - the torch.save zip reader (ptz) on real fixtures and on
 * damaged copies of them. libzip is used independently to list entries and
 * to build archives the reader must refuse (deflated records). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>

#include "torchfmt/ptz.h"
#include "testutil.h"
#include "base/util.h"

#define MISC "misc_tensors/misc.pt"
#define TIED_MODEL "fsdp2_ws4_tied/global_step_1/actor/model_world_size_4_rank_0.pt"
#define PLAIN_MODEL "plain_ws2_replicated/global_step_1/actor/model_world_size_2_rank_0.pt"
#define LORA_OPTIM "fsdp2_ws4_lora/global_step_1/actor/optim_world_size_4_rank_0.pt"
#define BF16_EXTRA "fsdp2_ws8_uneven_bf16/global_step_1/actor/extra_state_world_size_8_rank_7.pt"
#define LEGACY "legacy_format/model_world_size_1_rank_0.pt"

/* ---- helpers ---------------------------------------------------------------- */

static ptz_file *open_ok(const char *path, unsigned flags, size_t buf)
{
    fm_err e = {0};
    ptz_file *f = NULL;
    int rc = ptz_open(path, flags, buf, &f, &e);
    if (rc != 0) fprintf(stderr, "ptz_open(%s): %s\n", path, e.msg);
    assert_int_equal(rc, 0);
    assert_non_null(f);
    return f;
}

/* Opening must fail with code; returns the message (static). */
static const char *open_fails(const char *path, unsigned flags, int code)
{
    static fm_err e;
    ptz_file *f = (ptz_file *)&e; /* must be reset to NULL */
    memset(&e, 0, sizeof e);
    int rc = ptz_open(path, flags, 0, &f, &e);
    if (rc != code) fprintf(stderr, "ptz_open(%s): rc %d, expected %d: %s\n", path, rc, code, e.msg);
    assert_int_equal(rc, code);
    assert_int_equal(e.code, code);
    assert_null(f);
    assert_non_null(strstr(e.msg, path));
    return e.msg;
}

/* Record names relative to the prefix, in central-directory order, as
 * libzip lists them (an independent reader). */
static size_t list_records(const char *path, char ***names)
{
    int err = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY, &err);
    assert_non_null(za);
    zip_int64_t n = zip_get_num_entries(za, 0);
    assert_true(n > 0);
    *names = calloc((size_t)n, sizeof **names);
    for (zip_int64_t i = 0; i < n; i++) {
        const char *nm = zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        const char *slash = strchr(nm, '/');
        assert_non_null(slash);
        (*names)[i] = strdup(slash + 1);
    }
    zip_discard(za);
    return (size_t)n;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static unsigned char *pread_bytes(const char *path, uint64_t ofs, size_t n)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    unsigned char *p = malloc(n ? n : 1);
    assert_int_equal(pread(fd, p, n, (off_t)ofs), (ssize_t)n);
    close(fd);
    return p;
}

static char *copy_fixture(const char *dir, const char *rel, const char *name)
{
    char *dst = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(dst, "%s/%s", dir, name);
    size_t n = 0;
    unsigned char *p = tu_slurp(tu_fixture(rel), &n);
    assert_non_null(p);
    FILE *o = fopen(dst, "wb");
    assert_non_null(o);
    assert_int_equal(fwrite(p, 1, n, o), n);
    fclose(o);
    free(p);
    return dst;
}

static void patch_file(const char *path, uint64_t ofs, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, p, n, (off_t)ofs), (ssize_t)n);
    close(fd);
}

static void flip_byte(const char *path, uint64_t ofs)
{
    unsigned char *b = pread_bytes(path, ofs, 1);
    b[0] ^= 0x5a;
    patch_file(path, ofs, b, 1);
    free(b);
}

/* Offset of the central directory entry named full_name. */
static uint64_t central_entry_ofs(const char *path, const char *full_name)
{
    size_t n = 0, nl = strlen(full_name);
    unsigned char *p = tu_slurp(path, &n);
    assert_non_null(p);
    for (size_t i = 0; i + 46 + nl <= n; i++) {
        if (memcmp(p + i, "PK\001\002", 4) == 0 && (size_t)(p[i + 28] | (p[i + 29] << 8)) == nl &&
            memcmp(p + i + 46, full_name, nl) == 0) {
            free(p);
            return i;
        }
    }
    free(p);
    fail_msg("no central entry %s in %s", full_name, path);
    return 0;
}

/* Writes a zip with libzip: method per entry (ZIP_CM_STORE / ZIP_CM_DEFLATE). */
static void make_zip(const char *path, size_t n, const char *const *names, const char *const *data,
                     const int *methods)
{
    int err = 0;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
    assert_non_null(za);
    for (size_t i = 0; i < n; i++) {
        zip_source_t *src = zip_source_buffer(za, data[i], strlen(data[i]), 0);
        assert_non_null(src);
        zip_int64_t idx = zip_file_add(za, names[i], src, ZIP_FL_ENC_UTF_8);
        assert_true(idx >= 0);
        assert_int_equal(zip_set_file_compression(za, (zip_uint64_t)idx, methods[i], 9), 0);
    }
    assert_int_equal(zip_close(za), 0);
}

/* read syscalls so far (Linux /proc/self/io), or -1 when not available. */
static long read_syscalls(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    if (f == NULL) return -1;
    char line[128];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "syscr: %ld", &v) == 1) break;
    fclose(f);
    return v;
}

/* ---- opening real files --------------------------------------------------- */

static void test_open_misc(void **state)
{
    (void)state;
    const char *path = tu_fixture(MISC);
    ptz_file *f = open_ok(path, 0, 0);
    assert_string_equal(ptz_prefix(f), "misc");
    assert_string_equal(ptz_path(f), path);
    assert_int_equal(ptz_record_count(f), 13);
    assert_int_equal(ptz_file_size(f), 3178);
    assert_int_equal(ptz_buffer_size(f), 4u << 20);
    assert_false(ptz_big_endian(f));
    ptz_record_info in;
    assert_true(ptz_find(f, "data.pkl", &in));
    assert_string_equal(in.name, "misc/data.pkl");
    assert_int_equal(in.size, 739);
    assert_int_equal(in.data_offset, 64);
    assert_int_equal(in.crc, 0x9f7d2c9cu);
    assert_true(ptz_find(f, "byteorder", &in));
    assert_int_equal(in.size, 6);
    assert_true(ptz_find(f, "data/0", &in));
    assert_int_equal(in.size, 48);
    assert_int_equal(in.data_offset, 1280);
    assert_true(ptz_find(f, "data/6", &in)); /* the empty storage: no CRC */
    assert_int_equal(in.size, 0);
    assert_int_equal(in.crc, 0);
    assert_true(ptz_find(f, ".data/serialization_id", NULL));
    assert_false(ptz_find(f, "data/7", &in));
    assert_false(ptz_find(f, "misc/data.pkl", &in)); /* names are relative */
    assert_false(ptz_find(f, "", &in));
    ptz_close(f);
}

static void test_read_small_records(void **state)
{
    (void)state;
    ptz_file *f = open_ok(tu_fixture(MISC), 0, 0);
    uint8_t *p = NULL;
    size_t n = 0;
    fm_err e = {0};
    assert_int_equal(ptz_read_record(f, "byteorder", 64, &p, &n, &e), 0);
    assert_int_equal(n, 6);
    assert_string_equal((char *)p, "little");
    free(p);
    assert_int_equal(ptz_read_record(f, "version", 64, &p, &n, &e), 0);
    assert_string_equal((char *)p, "3\n");
    free(p);
    assert_int_equal(ptz_read_record(f, "data.pkl", 1 << 20, &p, &n, &e), 0);
    assert_int_equal(n, 739);
    assert_int_equal(p[0], 0x80); /* PROTO 2 ... STOP */
    assert_int_equal(p[1], 2);
    assert_int_equal(p[n - 1], '.');
    free(p);
    assert_int_equal(ptz_read_record(f, "data/6", 16, &p, &n, &e), 0); /* empty */
    assert_int_equal(n, 0);
    assert_int_equal(p[0], 0);
    free(p);
    ptz_close(f);
}

static void test_read_record_limits(void **state)
{
    (void)state;
    ptz_file *f = open_ok(tu_fixture(MISC), 0, 0);
    uint8_t *p = (uint8_t *)"x";
    size_t n = 9;
    fm_err e = {0};
    assert_int_equal(ptz_read_record(f, "data.pkl", 738, &p, &n, &e), FM_EFORMAT);
    assert_null(p);
    assert_non_null(strstr(e.msg, "data.pkl"));
    assert_int_equal(ptz_read_record(f, "data/99", 1000, &p, &n, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "data/99"));
    ptz_rec *r = NULL;
    assert_int_equal(ptz_rec_open(f, "nope", &r, &e), FM_EFORMAT);
    assert_null(r);
    ptz_close(f);
}

/* Every record's data starts at a multiple of 64 and holds what libzip
 * reads for it. */
static void check_offsets_and_content(const char *path)
{
    char **names;
    size_t n = list_records(path, &names);
    ptz_file *f = open_ok(path, 0, 0);
    assert_int_equal(ptz_record_count(f), n);
    int err = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY, &err);
    assert_non_null(za);
    for (size_t i = 0; i < n; i++) {
        ptz_record_info in;
        assert_true(ptz_find(f, names[i], &in));
        assert_int_equal(in.data_offset % 64, 0);
        zip_stat_t st;
        assert_int_equal(zip_stat(za, in.name, ZIP_FL_ENC_RAW, &st), 0);
        assert_int_equal(st.size, in.size);
        assert_int_equal(st.crc, in.crc);
        unsigned char *want = malloc(in.size + 1);
        zip_file_t *zf = zip_fopen(za, in.name, 0);
        assert_non_null(zf);
        assert_int_equal(zip_fread(zf, want, in.size), (zip_int64_t)in.size);
        zip_fclose(zf);
        uint8_t *got;
        size_t got_len;
        fm_err e = {0};
        assert_int_equal(ptz_read_record(f, names[i], SIZE_MAX, &got, &got_len, &e), 0);
        assert_int_equal(got_len, in.size);
        assert_memory_equal(got, want, in.size);
        free(got);
        free(want);
    }
    zip_discard(za);
    ptz_close(f);
    free_names(names, n);
}

static void test_offsets_and_content(void **state)
{
    (void)state;
    check_offsets_and_content(tu_fixture(MISC));
    check_offsets_and_content(tu_fixture(TIED_MODEL));
    check_offsets_and_content(tu_fixture(LORA_OPTIM));
}

/* ptz_rec_finish() verifies every record of a file (each read in full
 * through the ranged reader, or not read at all). */
static void check_crc_all(const char *path, size_t buf, bool read_first)
{
    char **names;
    size_t n = list_records(path, &names);
    ptz_file *f = open_ok(path, 0, buf);
    for (size_t i = 0; i < n; i++) {
        ptz_rec *r = NULL;
        fm_err e = {0};
        assert_int_equal(ptz_rec_open(f, names[i], &r, &e), 0);
        const uint8_t *p;
        if (read_first && ptz_rec_size(r) > 0)
            assert_int_equal(ptz_rec_get(r, 0, (size_t)FM_MIN(ptz_rec_size(r), (uint64_t)buf), &p, &e), 0);
        int rc = ptz_rec_finish(r, &e);
        if (rc != 0) fprintf(stderr, "%s\n", e.msg);
        assert_int_equal(rc, 0);
        ptz_rec_close(r);
    }
    ptz_close(f);
    free_names(names, n);
}

static void test_crc_all_records(void **state)
{
    (void)state;
    const char *files[] = {MISC, TIED_MODEL, PLAIN_MODEL, LORA_OPTIM, BF16_EXTRA,
                           "fsdp1_ws2_nomesh/global_step_1/actor/model_world_size_2_rank_1.pt",
                           "fsdp2_ws4_lora/global_step_1/data.pt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        check_crc_all(tu_fixture(files[i]), 0, false);
        check_crc_all(tu_fixture(files[i]), 100, true);
    }
}

/* ---- ranged reads ---------------------------------------------------------- */

static void expect_range(ptz_rec *r, const unsigned char *ref, uint64_t off, size_t len)
{
    const uint8_t *p = NULL;
    fm_err e = {0};
    int rc = ptz_rec_get(r, off, len, &p, &e);
    if (rc != 0) fprintf(stderr, "get(%llu, %zu): %s\n", (unsigned long long)off, len, e.msg);
    assert_int_equal(rc, 0);
    assert_non_null(p);
    if (len) assert_memory_equal(p, ref + off, len);
}

static void test_rec_get_sequential(void **state)
{
    (void)state;
    const char *path = tu_fixture(PLAIN_MODEL);
    ptz_file *f = open_ok(path, 0, 4096);
    ptz_record_info in;
    assert_true(ptz_find(f, "data/0", &in));
    assert_int_equal(in.size, 131072);
    unsigned char *ref = pread_bytes(path, in.data_offset, in.size);
    ptz_rec *r;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    assert_int_equal(ptz_rec_size(r), in.size);
    long before = read_syscalls();
    for (uint64_t off = 0; off < in.size; off += 1000)
        expect_range(r, ref, off, (size_t)FM_MIN((uint64_t)1000, in.size - off));
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    long after = read_syscalls();
    if (before >= 0 && after >= 0) {
        /* One pread per buffer-full (steps of 1000 straddle buffer ends, so
         * a refill starts at each straddling step: at most size/(4096-999)
         * reads), and finish reads nothing more. Plus the /proc read. */
        assert_true(after - before <= (long)(in.size / (4096 - 999)) + 2);
    }
    ptz_rec_close(r);
    free(ref);
    ptz_close(f);
}

/* Counts preads through /proc/self/io: steps of 1 KiB over a 128 KiB record
 * with an 8 KiB buffer cost exactly 16 reads, and finish none; a jump far
 * ahead streams the gap through the buffer, and the whole record is still
 * read exactly once by the time finish is done. */
static void test_rec_get_exact_buffers(void **state)
{
    (void)state;
    const char *path = tu_fixture(PLAIN_MODEL);
    ptz_file *f = open_ok(path, 0, 8192);
    ptz_record_info in;
    assert_true(ptz_find(f, "data/0", &in));
    assert_int_equal(in.size, 16 * 8192);
    unsigned char *ref = pread_bytes(path, in.data_offset, in.size);
    ptz_rec *r;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    long base = read_syscalls();
    long self = read_syscalls() - base; /* what one read_syscalls() costs */
    long t0 = read_syscalls();
    for (uint64_t off = 0; off < in.size; off += 1024) expect_range(r, ref, off, 1024);
    long t1 = read_syscalls();
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    long t2 = read_syscalls();
    ptz_rec_close(r);
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    long t3 = read_syscalls();
    expect_range(r, ref, 100000, 1024);
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    long t4 = read_syscalls();
    if (base >= 0) {
        assert_int_equal(t1 - t0 - self, 16);
        assert_int_equal(t2 - t1 - self, 0);
        assert_int_equal(t4 - t3 - self, 16);
    }
    ptz_rec_close(r);
    free(ref);
    ptz_close(f);
}

static void test_rec_get_random(void **state)
{
    (void)state;
    const char *path = tu_fixture(PLAIN_MODEL);
    for (size_t bufsz = 64; bufsz <= 65536; bufsz *= 8) {
        ptz_file *f = open_ok(path, 0, bufsz);
        ptz_record_info in;
        assert_true(ptz_find(f, "data/1", &in));
        unsigned char *ref = pread_bytes(path, in.data_offset, in.size);
        ptz_rec *r;
        fm_err e = {0};
        assert_int_equal(ptz_rec_open(f, "data/1", &r, &e), 0);
        srand(42);
        for (int k = 0; k < 500; k++) {
            size_t len = (size_t)rand() % ((size_t)FM_MIN((uint64_t)bufsz, in.size) + 1);
            uint64_t off = (uint64_t)rand() % (in.size - len + 1);
            expect_range(r, ref, off, len);
        }
        assert_int_equal(ptz_rec_finish(r, &e), 0);
        ptz_rec_close(r);
        free(ref);
        ptz_close(f);
    }
}

/* Two records read alternately share the buffer; both CRCs still check. */
static void test_rec_interleaved(void **state)
{
    (void)state;
    const char *path = tu_fixture(TIED_MODEL);
    ptz_file *f = open_ok(path, 0, 512);
    ptz_record_info ia, ib;
    assert_true(ptz_find(f, "data/0", &ia));
    assert_true(ptz_find(f, "data/1", &ib));
    unsigned char *ra = pread_bytes(path, ia.data_offset, ia.size);
    unsigned char *rb = pread_bytes(path, ib.data_offset, ib.size);
    ptz_rec *a, *b;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/0", &a, &e), 0);
    assert_int_equal(ptz_rec_open(f, "data/1", &b, &e), 0);
    for (uint64_t off = 0; off + 300 <= FM_MIN(ia.size, ib.size); off += 300) {
        expect_range(a, ra, off, 300);
        expect_range(b, rb, off, 300);
    }
    assert_int_equal(ptz_rec_finish(a, &e), 0);
    assert_int_equal(ptz_rec_finish(b, &e), 0);
    ptz_rec_close(a);
    ptz_rec_close(b);
    free(ra);
    free(rb);
    ptz_close(f);
}

static void test_rec_get_boundaries(void **state)
{
    (void)state;
    const char *path = tu_fixture(MISC);
    ptz_file *f = open_ok(path, 0, 16);
    ptz_record_info in;
    assert_true(ptz_find(f, "data/1", &in)); /* 96 bytes */
    unsigned char *ref = pread_bytes(path, in.data_offset, in.size);
    ptz_rec *r;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/1", &r, &e), 0);
    expect_range(r, ref, 0, 16);  /* exactly one buffer */
    expect_range(r, ref, 16, 16); /* the next, exactly */
    expect_range(r, ref, 31, 2);  /* straddles the buffer end */
    expect_range(r, ref, 80, 16); /* the record's last bytes */
    expect_range(r, ref, 95, 1);
    expect_range(r, ref, 96, 0); /* empty at the very end */
    expect_range(r, ref, 0, 1);  /* backwards */
    expect_range(r, ref, 40, 0);
    expect_range(r, ref, 88, 8);
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    assert_int_equal(ptz_rec_finish(r, &e), 0); /* idempotent */
    ptz_rec_close(r);
    free(ref);
    ptz_close(f);
}

static void test_rec_get_errors(void **state)
{
    (void)state;
    ptz_file *f = open_ok(tu_fixture(MISC), 0, 32);
    ptz_rec *r;
    fm_err e = {0};
    const uint8_t *p;
    assert_int_equal(ptz_rec_open(f, "data/1", &r, &e), 0); /* 96 bytes */
    assert_int_equal(ptz_rec_get(r, 90, 7, &p, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "data/1"));
    assert_int_equal(ptz_rec_get(r, 97, 0, &p, &e), FM_EFORMAT);
    assert_int_equal(ptz_rec_get(r, UINT64_MAX, 2, &p, &e), FM_EFORMAT);
    assert_int_equal(ptz_rec_get(r, 0, 33, &p, &e), FM_EINTERNAL); /* more than the buffer */
    assert_int_equal(ptz_rec_get(r, 64, 32, &p, &e), 0);
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    ptz_rec_close(r);
    ptz_rec_close(NULL);
    ptz_close(f);
    ptz_close(NULL);
}

static void test_crc32(void **state)
{
    (void)state;
    assert_int_equal(ptz_crc32(0, "123456789", 9), 0xCBF43926u);
    uint32_t c = ptz_crc32(0, "1234", 4);
    assert_int_equal(ptz_crc32(c, "56789", 5), 0xCBF43926u);
    assert_int_equal(ptz_crc32(c, NULL, 0), c);
    assert_int_equal(ptz_crc32(0, "", 0), 0);
}

/* ---- refusals ----------------------------------------------------------------- */

static void test_legacy_format(void **state)
{
    (void)state;
    const char *msg = open_fails(tu_fixture(LEGACY), 0, FM_EUNSUPPORTED);
    assert_non_null(strstr(msg, "legacy"));
    assert_non_null(strstr(msg, "torch.save(torch.load(f), f)"));
}

static void test_missing_file(void **state)
{
    (void)state;
    const char *msg = open_fails("/nonexistent/dir/model.pt", 0, FM_EIO);
    assert_non_null(strstr(msg, "No such file"));
}

static void test_directory_refused(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    open_fails(dir, 0, FM_EIO);
    tu_rmdir(dir);
}

static void test_text_file(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *o = fopen(path, "w");
    fputs("this is not a zip archive, just some text\n", o);
    fclose(o);
    const char *msg = open_fails(path, 0, FM_EFORMAT);
    assert_non_null(strstr(msg, "not a torch.save zip archive"));
    snprintf(path, sizeof path, "%s/empty.pt", dir);
    fclose(fopen(path, "w"));
    open_fails(path, 0, FM_EFORMAT);
    tu_rmdir(dir);
}

static void test_truncated(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    size_t n = 0;
    unsigned char *whole = tu_slurp(tu_fixture(MISC), &n);
    const size_t cuts[] = {n - 1, n - 10, n - 22, n - 23, n - 60, n - 100, 2300, n / 2, 1300, 100, 30, 4, 3, 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/cut_%zu.pt", dir, cuts[i]);
        FILE *o = fopen(path, "wb");
        assert_int_equal(fwrite(whole, 1, cuts[i], o), cuts[i]);
        fclose(o);
        open_fails(path, 0, FM_EFORMAT);
    }
    free(whole);
    tu_rmdir(dir);
}

static void test_flipped_byte(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = copy_fixture(dir, MISC, "flipped.pt");
    flip_byte(path, 1280 + 5); /* inside data/0 */
    ptz_file *f = open_ok(path, 0, 0);
    ptz_rec *r;
    fm_err e = {0};
    const uint8_t *p;
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    assert_int_equal(ptz_rec_get(r, 0, 8, &p, &e), 0); /* reading is fine... */
    assert_int_equal(ptz_rec_finish(r, &e), FM_EFORMAT); /* ...the check is not */
    assert_non_null(strstr(e.msg, "CRC-32 mismatch in record data/0 of "));
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "expected 0xa5c6dcbe"));
    ptz_rec_close(r);
    /* never read before finish: finish reads it all */
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    assert_int_equal(ptz_rec_finish(r, &e), FM_EFORMAT);
    ptz_rec_close(r);
    uint8_t *whole;
    size_t len;
    assert_int_equal(ptz_read_record(f, "data/0", 1000, &whole, &len, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "CRC-32 mismatch in record data/0"));
    assert_int_equal(ptz_rec_open(f, "data/1", &r, &e), 0); /* the others are intact */
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    ptz_rec_close(r);
    ptz_close(f);
    free(path);
    tu_rmdir(dir);
}

static void test_flipped_byte_no_crc(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = copy_fixture(dir, MISC, "flipped.pt");
    flip_byte(path, 1280 + 5);
    ptz_file *f = open_ok(path, PTZ_NO_CRC, 0);
    ptz_rec *r;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    ptz_rec_close(r);
    uint8_t *whole;
    size_t len;
    assert_int_equal(ptz_read_record(f, "data/0", 1000, &whole, &len, &e), 0);
    free(whole);
    ptz_close(f);
    free(path);
    tu_rmdir(dir);
}

/* set_crc32_options(False) files: CRC 0 everywhere = no check. */
static void test_zero_crc_unchecked(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = copy_fixture(dir, MISC, "nocrc.pt");
    const unsigned char zero[4] = {0};
    uint64_t cde = central_entry_ofs(path, "misc/data/0");
    patch_file(path, cde + 16, zero, 4);        /* central directory CRC */
    unsigned char *lo = pread_bytes(path, cde + 42, 4);
    uint64_t local = (uint64_t)lo[0] | ((uint64_t)lo[1] << 8) | ((uint64_t)lo[2] << 16) | ((uint64_t)lo[3] << 24);
    free(lo);
    assert_int_equal(local, 1174);
    patch_file(path, local + 14, zero, 4);      /* local header CRC (already 0 in torch files) */
    patch_file(path, 1280 + 48 + 4, zero, 4);   /* data descriptor CRC */
    flip_byte(path, 1280 + 5);
    ptz_file *f = open_ok(path, 0, 0);
    ptz_record_info in;
    assert_true(ptz_find(f, "data/0", &in));
    assert_int_equal(in.crc, 0);
    ptz_rec *r;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    ptz_rec_close(r);
    uint8_t *whole;
    size_t len;
    assert_int_equal(ptz_read_record(f, "data/0", 1000, &whole, &len, &e), 0);
    free(whole);
    ptz_close(f);
    free(path);
    tu_rmdir(dir);
}

/* A central entry claiming more bytes than the file holds. */
static void test_size_past_end(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char *path = copy_fixture(dir, MISC, "big.pt");
    uint64_t cde = central_entry_ofs(path, "misc/data/5");
    const unsigned char big[8] = {0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10, 0x00}; /* 1 MiB, twice */
    patch_file(path, cde + 20, big, 8);
    open_fails(path, 0, FM_EFORMAT);
    free(path);
    tu_rmdir(dir);
}

static void test_deflated_record(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/deflated.pt", dir);
    char zeros[4097];
    memset(zeros, '0', 4096);
    zeros[4096] = '\0';
    const char *names[] = {"arch/data.pkl", "arch/byteorder", "arch/data/0", "arch/data/1"};
    const char *data[] = {"\x80\x02}q\x00.", "little", zeros, "abcd"};
    const int methods[] = {ZIP_CM_STORE, ZIP_CM_STORE, ZIP_CM_DEFLATE, ZIP_CM_STORE};
    make_zip(path, 4, names, data, methods);
    ptz_file *f = open_ok(path, 0, 0);
    assert_string_equal(ptz_prefix(f), "arch");
    assert_int_equal(ptz_record_count(f), 4);
    ptz_rec *r = NULL;
    fm_err e = {0};
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), FM_EUNSUPPORTED);
    assert_null(r);
    assert_non_null(strstr(e.msg, "record data/0 of"));
    assert_non_null(strstr(e.msg, "compressed"));
    assert_non_null(strstr(e.msg, path));
    uint8_t *whole;
    size_t len;
    assert_int_equal(ptz_read_record(f, "data/0", 1 << 20, &whole, &len, &e), FM_EUNSUPPORTED);
    assert_int_equal(ptz_read_record(f, "data/1", 1 << 20, &whole, &len, &e), 0); /* stored: fine */
    assert_string_equal((char *)whole, "abcd");
    free(whole);
    ptz_close(f);

    /* a deflated data.pkl is refused at open */
    const int methods2[] = {ZIP_CM_DEFLATE, ZIP_CM_STORE, ZIP_CM_STORE, ZIP_CM_STORE};
    data[0] = zeros;
    make_zip(path, 4, names, data, methods2);
    const char *msg = open_fails(path, 0, FM_EUNSUPPORTED);
    assert_non_null(strstr(msg, "data.pkl"));
    tu_rmdir(dir);
}

static void test_byteorder_values(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/bo.pt", dir);
    const char *names[] = {"x/data.pkl", "x/byteorder"};
    const int methods[] = {ZIP_CM_STORE, ZIP_CM_STORE};
    const char *big[] = {"\x80\x02N.", "big"};
    make_zip(path, 2, names, big, methods);
    ptz_file *f = open_ok(path, 0, 0);
    assert_true(ptz_big_endian(f));
    ptz_close(f);
    const char *odd[] = {"\x80\x02N.", "middle"};
    make_zip(path, 2, names, odd, methods);
    const char *msg = open_fails(path, 0, FM_EFORMAT);
    assert_non_null(strstr(msg, "middle"));
    const char *none[] = {"x/data.pkl"};
    make_zip(path, 1, names, none, methods);
    f = open_ok(path, 0, 0);
    assert_false(ptz_big_endian(f)); /* absent: little */
    assert_int_equal(ptz_record_count(f), 1);
    ptz_close(f);
    tu_rmdir(dir);
}

static void test_no_data_pkl(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/nopkl.zip", dir);
    const char *names[] = {"x/other.txt", "data.pkl", "a/b/data.pkl"};
    const char *data[] = {"hello", "top-level data.pkl is not torch's", "nested"};
    const int methods[] = {ZIP_CM_STORE, ZIP_CM_STORE, ZIP_CM_STORE};
    make_zip(path, 3, names, data, methods);
    const char *msg = open_fails(path, 0, FM_EFORMAT);
    assert_non_null(strstr(msg, "data.pkl"));
    tu_rmdir(dir);
}

/* Entries outside the prefix are not records; the prefix comes from the
 * X/data.pkl entry, wherever it is in the directory. */
static void test_prefix_from_data_pkl(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/prefix.pt", dir);
    const char *names[] = {"other/x", "archive/byteorder", "archive/data.pkl", "archive/data/0"};
    const char *data[] = {"1", "little", "\x80\x02N.", "0123"};
    const int methods[] = {ZIP_CM_STORE, ZIP_CM_STORE, ZIP_CM_STORE, ZIP_CM_STORE};
    make_zip(path, 4, names, data, methods);
    ptz_file *f = open_ok(path, 0, 0);
    assert_string_equal(ptz_prefix(f), "archive");
    assert_int_equal(ptz_record_count(f), 3);
    assert_false(ptz_find(f, "x", NULL));
    assert_true(ptz_find(f, "data/0", NULL));
    ptz_close(f);
    tu_rmdir(dir);
}

/* ---- a real ZIP64 archive (> 4 GiB, sparse) -------------------------------- */

static unsigned char *put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + n;
}

static unsigned char *local_header(unsigned char *p, const char *name, const char *data)
{
    size_t nl = strlen(name), dl = strlen(data);
    p = put_le(p, 0x04034b50u, 4);
    p = put_le(p, 20, 2);     /* version needed */
    p = put_le(p, 0x0800, 2); /* UTF-8; sizes in the header */
    p = put_le(p, 0, 2);
    p = put_le(p, 0, 4);
    p = put_le(p, crc32(0, (const Bytef *)data, (uInt)dl), 4);
    p = put_le(p, dl, 4);
    p = put_le(p, dl, 4);
    p = put_le(p, nl, 2);
    p = put_le(p, 0, 2);
    memcpy(p, name, nl);
    memcpy(p + nl, data, dl);
    return p + nl + dl;
}

static unsigned char *central_entry(unsigned char *p, const char *name, const char *data, uint64_t lofs)
{
    size_t nl = strlen(name), dl = strlen(data);
    bool z64 = lofs >= 0xFFFFFFFFu;
    p = put_le(p, 0x02014b50u, 4);
    p = put_le(p, 45, 2);
    p = put_le(p, 20, 2);
    p = put_le(p, 0x0800, 2);
    p = put_le(p, 0, 2);
    p = put_le(p, 0, 4);
    p = put_le(p, crc32(0, (const Bytef *)data, (uInt)dl), 4);
    p = put_le(p, dl, 4);
    p = put_le(p, dl, 4);
    p = put_le(p, nl, 2);
    p = put_le(p, z64 ? 12 : 0, 2);
    p = put_le(p, 0, 6); /* comment length, disk, internal attributes */
    p = put_le(p, 0, 4); /* external attributes */
    p = put_le(p, z64 ? 0xFFFFFFFFu : lofs, 4);
    memcpy(p, name, nl);
    p += nl;
    if (z64) {
        p = put_le(p, 1, 2);
        p = put_le(p, 8, 2);
        p = put_le(p, lofs, 8);
    }
    return p;
}

/* data.pkl at 0, then a 5 GiB hole, then data/0 whose local header offset
 * needs the ZIP64 extra, then a central directory found only through the
 * ZIP64 end record. Costs no disk space on a filesystem with sparse files. */
static void test_real_zip64_offsets(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/sparse.pt", dir);
    const uint64_t far = 5ull << 30;
    static unsigned char head[256], tail[1024];
    unsigned char *h = local_header(head, "s/data.pkl", "\x80\x02N.");
    unsigned char *t = local_header(tail, "s/data/0", "hello, far away");
    uint64_t cd_ofs = far + (uint64_t)(t - tail);
    t = central_entry(t, "s/data.pkl", "\x80\x02N.", 0);
    t = central_entry(t, "s/data/0", "hello, far away", far);
    uint64_t cd_size = far + (uint64_t)(t - tail) - cd_ofs, z_ofs = far + (uint64_t)(t - tail);
    t = put_le(t, 0x06064b50u, 4);
    t = put_le(t, 44, 8);
    t = put_le(t, 0x031E, 2);
    t = put_le(t, 45, 2);
    t = put_le(t, 0, 8);
    t = put_le(t, 2, 8);
    t = put_le(t, 2, 8);
    t = put_le(t, cd_size, 8);
    t = put_le(t, cd_ofs, 8);
    t = put_le(t, 0x07064b50u, 4);
    t = put_le(t, 0, 4);
    t = put_le(t, z_ofs, 8);
    t = put_le(t, 1, 4);
    t = put_le(t, 0x06054b50u, 4);
    t = put_le(t, 0, 4);
    t = put_le(t, 2, 2);
    t = put_le(t, 2, 2);
    t = put_le(t, cd_size, 4);
    t = put_le(t, 0xFFFFFFFFu, 4);
    t = put_le(t, 0, 2);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, head, (size_t)(h - head), 0), h - head);
    assert_int_equal(pwrite(fd, tail, (size_t)(t - tail), (off_t)far), t - tail);
    close(fd);

    ptz_file *f = open_ok(path, 0, 8);
    assert_true(ptz_file_size(f) > far);
    ptz_record_info in;
    assert_true(ptz_find(f, "data/0", &in));
    assert_int_equal(in.data_offset, far + 30 + 8);
    assert_int_equal(in.size, 15);
    uint8_t *p;
    size_t len;
    fm_err e = {0};
    assert_int_equal(ptz_read_record(f, "data/0", 100, &p, &len, &e), 0);
    assert_string_equal((char *)p, "hello, far away");
    free(p);
    ptz_rec *r;
    assert_int_equal(ptz_rec_open(f, "data/0", &r, &e), 0);
    const uint8_t *q;
    assert_int_equal(ptz_rec_get(r, 7, 8, &q, &e), 0);
    assert_memory_equal(q, "far away", 8);
    assert_int_equal(ptz_rec_finish(r, &e), 0);
    ptz_rec_close(r);
    ptz_close(f);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_misc),
        cmocka_unit_test(test_read_small_records),
        cmocka_unit_test(test_read_record_limits),
        cmocka_unit_test(test_offsets_and_content),
        cmocka_unit_test(test_crc_all_records),
        cmocka_unit_test(test_rec_get_sequential),
        cmocka_unit_test(test_rec_get_exact_buffers),
        cmocka_unit_test(test_rec_get_random),
        cmocka_unit_test(test_rec_interleaved),
        cmocka_unit_test(test_rec_get_boundaries),
        cmocka_unit_test(test_rec_get_errors),
        cmocka_unit_test(test_crc32),
        cmocka_unit_test(test_legacy_format),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_directory_refused),
        cmocka_unit_test(test_text_file),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_flipped_byte),
        cmocka_unit_test(test_flipped_byte_no_crc),
        cmocka_unit_test(test_zero_crc_unchecked),
        cmocka_unit_test(test_size_past_end),
        cmocka_unit_test(test_deflated_record),
        cmocka_unit_test(test_byteorder_values),
        cmocka_unit_test(test_no_data_pkl),
        cmocka_unit_test(test_prefix_from_data_pkl),
        cmocka_unit_test(test_real_zip64_offsets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
