/* fsspace.c - see fsspace.h. */
#include "base/fsspace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "base/util.h"

/* The longest mount point in /proc/self/mounts that prefixes the real path. */
const char *fs_mount_point(const char *path, char *buf, size_t len)
{
    char real[PATH_MAX];
    snprintf(buf, len, "%s", path);
    if (realpath(path, real) == NULL) return buf;
    FILE *f = fopen("/proc/self/mounts", "r");
    if (f == NULL) return buf;
    char line[8192], dev[4096], mnt[4096];
    size_t best = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%4095s %4095s", dev, mnt) != 2) continue;
        size_t n = strlen(mnt);
        bool under = strcmp(mnt, "/") == 0 || (strncmp(real, mnt, n) == 0 && (real[n] == '/' || real[n] == '\0'));
        if (under && n >= best) {
            best = n;
            snprintf(buf, len, "%s", mnt);
        }
    }
    fclose(f);
    return buf;
}

static int free_bytes(const char *dir, uint64_t *avail)
{
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0) return errno;
    *avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    return 0;
}

int fs_check_space(const char *dir, uint64_t need, fm_err *e)
{
    uint64_t avail = 0;
    int err = free_bytes(dir, &avail);
    if (err) return fm_fail(e, FM_EIO, "cannot query the free space of %s: %s", dir, strerror(err));
    if (avail >= need) return 0;
    char n[32], a[32], mnt[4096];
    return fm_fail(e, FM_EIO, "not enough space for the output: needs %s, %s free on %s (--no-space-check to try anyway)",
                   fm_format_bytes(need, n, sizeof n), fm_format_bytes(avail, a, sizeof a),
                   fs_mount_point(dir, mnt, sizeof mnt));
}

int fs_write_error(fm_err *e, int err, const char *path)
{
    if (err != ENOSPC && err != EDQUOT) return fm_fail(e, FM_EIO, "cannot write %s: %s", path, strerror(err));
    char *dir = fm_path_dirname(path);
    char mnt[4096], a[32];
    uint64_t avail = 0;
    if (dir == NULL || free_bytes(dir, &avail) != 0) avail = 0;
    fs_mount_point(dir ? dir : path, mnt, sizeof mnt);
    free(dir);
    return fm_fail(e, FM_EIO, "cannot write %s: %s (%s free on %s)", path, strerror(err),
                   fm_format_bytes(avail, a, sizeof a), mnt);
}

int fs_reserve(int fd, uint64_t len, const char *path, fm_err *e)
{
    if (len == 0) return 0;
    int rc;
    do rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)len);
    while (rc != 0 && errno == EINTR);
    if (rc == 0 || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) return 0;
    char sz[32];
    int err = errno;
    fs_write_error(e, err, path);
    return fm_context(e, "no room for the %s of the output", fm_format_bytes(len, sz, sizeof sz));
}

int fs_reserve_path(const char *path, uint64_t len, fm_err *e)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", path, strerror(errno));
    int rc = fs_reserve(fd, len, path, e);
    close(fd);
    return rc;
}
