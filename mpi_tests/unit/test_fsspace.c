/* test_fsspace.c - the free-space check, the reservation and the disk-full
 * message, against statvfs and /proc/self/mounts of this machine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/fsspace.h"

static void test_mount_point(void **state)
{
    (void)state;
    char buf[4096];
    assert_string_equal(fs_mount_point("/", buf, sizeof buf), "/");
    assert_string_equal(fs_mount_point("/proc/self", buf, sizeof buf), "/proc");
    /* a missing path is named as given */
    assert_string_equal(fs_mount_point("/no/such/path", buf, sizeof buf), "/no/such/path");
}

static void test_check_space(void **state)
{
    (void)state;
    struct statvfs sv;
    assert_int_equal(statvfs("/tmp", &sv), 0);
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    fm_err e = {0};
    assert_int_equal(fs_check_space("/tmp", 0, &e), 0);
    assert_int_equal(fs_check_space("/tmp", avail + (1ull << 50), &e), FM_EIO);
    assert_non_null(strstr(e.msg, "not enough space for the output: needs "));
    assert_non_null(strstr(e.msg, " free on /"));
    assert_int_equal(fs_check_space("/no/such/dir", 1, &e), FM_EIO);
    assert_non_null(strstr(e.msg, "/no/such/dir"));
}

static void test_reserve_and_message(void **state)
{
    (void)state;
    char path[] = "/tmp/test_fsspace.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fm_err e = {0};
    assert_int_equal(fs_reserve(fd, 1 << 20, path, &e), 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(st.st_size, 0); /* the size is kept */
    /* far more than any disk: ENOSPC (or EFBIG), named with the file */
    int rc = fs_reserve(fd, 1ull << 62, path, &e);
    if (rc) assert_non_null(strstr(e.msg, path));
    close(fd);
    unlink(path);
    assert_int_equal(fs_write_error(&e, ENOSPC, "/tmp/x/model.safetensors"), FM_EIO);
    assert_non_null(strstr(e.msg, "cannot write /tmp/x/model.safetensors: No space left on device ("));
    assert_non_null(strstr(e.msg, " free on /"));
    assert_int_equal(fs_write_error(&e, EIO, "/tmp/x/y"), FM_EIO);
    assert_string_equal(e.msg, "cannot write /tmp/x/y: Input/output error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mount_point),
        cmocka_unit_test(test_check_space),
        cmocka_unit_test(test_reserve_and_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
