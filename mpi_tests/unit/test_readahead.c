/* test_readahead.c - the read-ahead reader: dense requests (one span, with
 * O_DIRECT on a disk file system), sparse ones (range by range), the
 * fallback where O_DIRECT is refused (tmpfs), a file shorter than asked,
 * and the post/get/done pipeline over many requests. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/readahead.h"

#define FILE_BYTES (3u << 20)
#define CAP (1u << 20)

/* byte i of the test file: not periodic in any power of two */
static uint8_t byte_at(uint64_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static char *make_file(const char *dir)
{
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/fm-ra-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        free(path);
        return NULL;
    }
    uint8_t *data = malloc(FILE_BYTES);
    for (uint64_t i = 0; i < FILE_BYTES; i++) data[i] = byte_at(i);
    ssize_t w = write(fd, data, FILE_BYTES);
    assert_int_equal(w, (ssize_t)FILE_BYTES);
    assert_int_equal(fsync(fd), 0);
    close(fd);
    free(data);
    return path;
}

static void expect_ranges(const uint8_t *const *at, const ra_range *rg, size_t n)
{
    for (size_t k = 0; k < n; k++)
        for (uint64_t i = 0; i < rg[k].len; i++)
            if (at[k][i] != byte_at(rg[k].off + i)) fail_msg("range %zu byte %llu differs", k, (unsigned long long)i);
}

/* Unaligned dense and sparse requests, two in flight, read back exactly. */
static void run_requests(const char *dir, bool expect_direct)
{
    char *path = make_file(dir);
    if (path == NULL) skip();
    fm_err e = {0};
    ra_file f = {0};
    ra_reader *r = NULL;
    assert_int_equal(ra_file_open(&f, path, &e), 0);
    if (expect_direct) assert_true(f.dfd >= 0);
    assert_int_equal(ra_open(&r, CAP, &e), 0);
    ra_range dense[3] = {{4097, 1000}, {5097, 70000}, {75097, 3}};      /* one span */
    ra_range sparse[2] = {{13, 500}, {FILE_BYTES - 600, 600}};          /* far apart: read each */
    ra_range last[1] = {{FILE_BYTES - CAP, CAP}};                       /* to the end of the file */
    assert_int_equal(ra_post(r, &f, dense, 3, &e), 0);
    assert_int_equal(ra_post(r, &f, sparse, 2, &e), 0);
    assert_int_equal(ra_post(r, &f, last, 1, &e), FM_EINTERNAL); /* both slots taken */
    const uint8_t *const *at;
    assert_int_equal(ra_get(r, &at, &e), 0);
    expect_ranges(at, dense, 3);
    ra_done(r);
    assert_int_equal(ra_post(r, &f, last, 1, &e), 0);
    assert_int_equal(ra_get(r, &at, &e), 0);
    expect_ranges(at, sparse, 2);
    ra_done(r);
    assert_int_equal(ra_get(r, &at, &e), 0);
    expect_ranges(at, last, 1);
    ra_done(r);
    /* many requests through the pipeline, sliding by an odd stride */
    uint64_t off = 0;
    int outstanding = 0;
    ra_range rg[2];
    for (int i = 0; i < 40; i++) {
        rg[i % 2] = (ra_range){off, 65536 + 17};
        assert_int_equal(ra_post(r, &f, &rg[i % 2], 1, &e), 0);
        if (++outstanding == 2) {
            assert_int_equal(ra_get(r, &at, &e), 0);
            expect_ranges(at, &rg[(i + 1) % 2], 1);
            ra_done(r);
            outstanding--;
        }
        off += 65536 + 4099;
    }
    assert_int_equal(ra_get(r, &at, &e), 0);
    expect_ranges(at, &rg[1], 1);
    ra_done(r);
    ra_close(r);
    ra_file_close(&f);
    unlink(path);
    free(path);
}

static void test_disk(void **state)
{
    (void)state;
    run_requests(".", false); /* the build directory's file system: O_DIRECT when it allows it */
}

static void test_tmpfs(void **state)
{
    (void)state;
    if (access("/dev/shm", W_OK) != 0) skip();
    run_requests("/dev/shm", false); /* O_DIRECT refused at open or at read: buffered */
}

static void test_short_file(void **state)
{
    (void)state;
    char *path = make_file(".");
    assert_non_null(path);
    fm_err e = {0};
    ra_file f = {0};
    ra_reader *r = NULL;
    assert_int_equal(ra_file_open(&f, path, &e), 0);
    assert_int_equal(ra_open(&r, CAP, &e), 0);
    ra_range dense = {FILE_BYTES - 100, 200}, sparse[2] = {{0, 10}, {FILE_BYTES - 5, 10}};
    const uint8_t *const *at;
    assert_int_equal(ra_post(r, &f, &dense, 1, &e), 0);
    assert_int_equal(ra_get(r, &at, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "ends at byte 3145728"));
    ra_done(r);
    memset(&e, 0, sizeof e);
    assert_int_equal(ra_post(r, &f, sparse, 2, &e), 0);
    assert_int_equal(ra_get(r, &at, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "ends at byte 3145728"));
    ra_done(r);
    ra_close(r);
    ra_file_close(&f);
    unlink(path);
    free(path);
}

/* An error with the next request still in flight: ra_drain() waits for it
 * and frees both slots, so the file can be closed and the reader reused. */
static void test_drain_after_error(void **state)
{
    (void)state;
    char *path = make_file(".");
    assert_non_null(path);
    fm_err e = {0};
    ra_file f = {0};
    ra_reader *r = NULL;
    assert_int_equal(ra_file_open(&f, path, &e), 0);
    assert_int_equal(ra_open(&r, CAP, &e), 0);
    ra_range past = {FILE_BYTES - 10, 20}, next = {4096, 100}, again = {7, 33};
    const uint8_t *const *at;
    assert_int_equal(ra_post(r, &f, &past, 1, &e), 0);
    assert_int_equal(ra_post(r, &f, &next, 1, &e), 0);
    assert_int_equal(ra_get(r, &at, &e), FM_EFORMAT);
    ra_drain(r);
    memset(&e, 0, sizeof e);
    assert_int_equal(ra_post(r, &f, &again, 1, &e), 0); /* a slot is free again */
    assert_int_equal(ra_post(r, &f, &next, 1, &e), 0);  /* and the other one */
    assert_int_equal(ra_get(r, &at, &e), 0);            /* the oldest is the new one, not a stale result */
    expect_ranges(at, &again, 1);
    ra_done(r);
    assert_int_equal(ra_get(r, &at, &e), 0);
    expect_ranges(at, &next, 1);
    ra_done(r);
    ra_drain(r); /* nothing outstanding: returns at once */
    ra_close(r);
    ra_file_close(&f);
    unlink(path);
    free(path);
}

static void test_open_fails(void **state)
{
    (void)state;
    fm_err e = {0};
    ra_file f = {0};
    assert_int_equal(ra_file_open(&f, "/no/such/file", &e), FM_EIO);
    assert_non_null(strstr(e.msg, "cannot open /no/such/file"));
    ra_file_close(&f);
    ra_file z = {0};
    ra_file_close(&z); /* zeroed: nothing to close */
    ra_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disk),
        cmocka_unit_test(test_tmpfs),
        cmocka_unit_test(test_short_file),
        cmocka_unit_test(test_drain_after_error),
        cmocka_unit_test(test_open_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
