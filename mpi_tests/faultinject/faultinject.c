/* faultinject.c - a test-only LD_PRELOAD shim that makes one chosen call of
 * one chosen process fail (or block, or come back short).
 *
 *   FI_CALL   pread | pwrite | fsync | rename | open | fallocate   (required)
 *             pread also catches preadv, pwrite pwritev (ompio uses them)
 *   FI_NTH    the Nth matching call fails, and every later one (default 1)
 *   FI_ONCE   1: only the Nth call fails
 *   FI_ERRNO  ENOSPC, EIO, EACCES, EDQUOT, EISDIR, ... or a number (default EIO)
 *   FI_RANK   only the process whose OMPI_COMM_WORLD_RANK is this (default: any;
 *             processes without the variable, such as mpirun, are never touched)
 *   FI_PATH   only calls on a path containing this substring (the fd's path
 *             from /proc/self/fd for fd-based calls)
 *   FI_ACTION fail (default) | block (the call never returns) | short
 *             (pread: returns 0, the end of file, as a file truncated while read)
 *
 * Built by the Makefile as build/faultinject.so; used by
 * mpi_tests/integration/85_faults.sh. Nothing in the program links it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_long g_count;

static int errno_of(const char *s)
{
    static const struct { const char *n; int v; } names[] = {
        {"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EACCES", EACCES}, {"EDQUOT", EDQUOT}, {"EISDIR", EISDIR},
        {"ENOENT", ENOENT}, {"EPERM", EPERM}, {"EROFS", EROFS}, {"EINTR", EINTR}, {"ENOMEM", ENOMEM},
    };
    if (s == NULL) return EIO;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].n) == 0) return names[i].v;
    return atoi(s) > 0 ? atoi(s) : EIO;
}

static int env_int(const char *name, int dflt)
{
    const char *s = getenv(name);
    return s && *s ? atoi(s) : dflt;
}

static int path_matches(const char *path)
{
    const char *want = getenv("FI_PATH");
    return want == NULL || *want == '\0' || (path && strstr(path, want));
}

static int fd_matches(int fd)
{
    const char *want = getenv("FI_PATH");
    if (want == NULL || *want == '\0') return 1;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    return strstr(path, want) != NULL;
}

/* 0: pass the call through; 1: act on it (fail, block or short). */
static int hit(const char *call, int matches)
{
    const char *want = getenv("FI_CALL"), *rank = getenv("OMPI_COMM_WORLD_RANK"), *fr = getenv("FI_RANK");
    if (want == NULL || strcmp(want, call) != 0 || rank == NULL || !matches) return 0;
    if (fr && *fr && atoi(fr) != atoi(rank)) return 0;
    long n = atomic_fetch_add(&g_count, 1) + 1, nth = env_int("FI_NTH", 1);
    if (n < nth || (env_int("FI_ONCE", 0) && n != nth)) return 0;
    const char *act = getenv("FI_ACTION");
    if (act && strcmp(act, "block") == 0)
        for (;;) pause();
    return 1;
}

static int is_short(void)
{
    const char *act = getenv("FI_ACTION");
    return act && strcmp(act, "short") == 0;
}

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)
#define FAIL_WITH(ret) do { errno = errno_of(getenv("FI_ERRNO")); return ret; } while (0)

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    REAL(pread);
    if (hit("pread", fd_matches(fd))) {
        if (is_short()) return 0; /* end of file: the file was truncated */
        FAIL_WITH(-1);
    }
    return real_pread(fd, buf, n, off);
}
ssize_t pread64(int fd, void *buf, size_t n, off_t off) __attribute__((alias("pread")));

ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(preadv);
    if (hit("pread", fd_matches(fd))) FAIL_WITH(-1);
    return real_preadv(fd, iov, cnt, off);
}
ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t off) __attribute__((alias("preadv")));

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite);
    if (hit("pwrite", fd_matches(fd))) FAIL_WITH(-1);
    return real_pwrite(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) __attribute__((alias("pwrite")));

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(pwritev);
    if (hit("pwrite", fd_matches(fd))) FAIL_WITH(-1);
    return real_pwritev(fd, iov, cnt, off);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) __attribute__((alias("pwritev")));

int fsync(int fd)
{
    REAL(fsync);
    if (hit("fsync", fd_matches(fd))) FAIL_WITH(-1);
    return real_fsync(fd);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    REAL(fallocate);
    if (hit("fallocate", fd_matches(fd))) FAIL_WITH(-1);
    return real_fallocate(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) __attribute__((alias("fallocate")));

int rename(const char *a, const char *b)
{
    REAL(rename);
    if (hit("rename", path_matches(a) || path_matches(b))) FAIL_WITH(-1);
    return real_rename(a, b);
}

static int open_common(const char *call, int dirfd, const char *path, int flags, va_list ap)
{
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
    REAL(openat);
    if (hit("open", path_matches(path))) FAIL_WITH(-1);
    (void)call;
    return real_openat(dirfd, path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int rc = open_common("open", AT_FDCWD, path, flags, ap);
    va_end(ap);
    return rc;
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int rc = open_common("open", dirfd, path, flags, ap);
    va_end(ap);
    return rc;
}
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));
