/* util.c - see util.h. */
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void fm_buf_free(fm_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

bool fm_buf_reserve(fm_buf *b, size_t extra)
{
    if (b->oom) return false;
    if (b->len + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = true;
            return false;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void fm_buf_append(fm_buf *b, const void *p, size_t n)
{
    if (n == 0 || !fm_buf_reserve(b, n)) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void fm_buf_putc(fm_buf *b, char c) { fm_buf_append(b, &c, 1); }

void fm_buf_puts(fm_buf *b, const char *s) { fm_buf_append(b, s, strlen(s)); }

void fm_buf_printf(fm_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !fm_buf_reserve(b, (size_t)n + 1)) return;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void fm_buf_terminate(fm_buf *b)
{
    if (!fm_buf_reserve(b, 1)) return;
    b->data[b->len] = '\0';
}

char *fm_strdup(const char *s) { return s ? fm_strndup(s, strlen(s)) : NULL; }

char *fm_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p == NULL) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

bool fm_starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool fm_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

char *fm_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *p = malloc((size_t)n + 1);
    if (p == NULL) return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

char *fm_path_join(const char *a, const char *b)
{
    if (b[0] == '/' || a[0] == '\0') return fm_strdup(b);
    size_t la = strlen(a);
    return fm_asprintf("%s%s%s", a, a[la - 1] == '/' ? "" : "/", b);
}

char *fm_path_dirname(const char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') n--;
    while (n > 0 && p[n - 1] != '/') n--;
    if (n == 0) return fm_strdup(".");
    while (n > 1 && p[n - 1] == '/') n--;
    return fm_strndup(p, n);
}

char *fm_path_basename(const char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') n--;
    size_t s = n;
    while (s > 0 && p[s - 1] != '/') s--;
    return fm_strndup(p + s, n - s);
}

bool fm_path_exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

bool fm_path_is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

bool fm_path_is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int fm_read_file(const char *path, size_t max_len, char **out, size_t *out_len, fm_err *e)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fm_fail(e, FM_EIO, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_len) {
        close(fd);
        return fm_fail(e, FM_EFORMAT, "%s is too large (%lld bytes, limit %zu)", path,
                       (long long)st.st_size, max_len);
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len + 1);
    if (buf == NULL) {
        close(fd);
        return fm_fail(e, FM_ENOMEM, "out of memory reading %s", path);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int err = errno;
            free(buf);
            close(fd);
            return fm_fail(e, FM_EIO, "cannot read %s: %s", path, r < 0 ? strerror(err) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    if (out_len) *out_len = len;
    return 0;
}

static int write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int fm_pwrite_all(int fd, const void *data, size_t len, uint64_t off)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, FM_MIN(len, (size_t)1 << 30), (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return w < 0 ? errno : EIO;
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

int fm_write_file(const char *path, const void *data, size_t len, fm_err *e)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fm_fail(e, FM_EIO, "cannot create %s: %s", path, strerror(errno));
    if (write_all(fd, data, len) != 0) {
        int err = errno;
        close(fd);
        return fm_fail(e, FM_EIO, "cannot write %s: %s", path, strerror(err));
    }
    if (close(fd) != 0) return fm_fail(e, FM_EIO, "cannot close %s: %s", path, strerror(errno));
    return 0;
}

int fm_copy_file(const char *src, const char *dst, fm_err *e)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int err = errno;
        close(in);
        return fm_fail(e, FM_EIO, "cannot create %s: %s", dst, strerror(err));
    }
    char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = fm_fail(e, FM_EIO, "cannot read %s: %s", src, strerror(errno));
            break;
        }
        if (r == 0) break;
        if (write_all(out, buf, (size_t)r) != 0) {
            rc = fm_fail(e, FM_EIO, "cannot write %s: %s", dst, strerror(errno));
            break;
        }
    }
    close(in);
    if (close(out) != 0 && rc == 0) rc = fm_fail(e, FM_EIO, "cannot close %s: %s", dst, strerror(errno));
    return rc;
}

int fm_mkdir_p(const char *path, fm_err *e)
{
    char *p = fm_strdup(path);
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int err = errno;
            int rc = fm_fail(e, FM_EIO, "cannot create directory %s: %s", p, strerror(err));
            free(p);
            return rc;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0755) != 0 && (errno != EEXIST || !fm_path_is_dir(p)))
        rc = fm_fail(e, FM_EIO, "cannot create directory %s: %s", p, strerror(errno));
    free(p);
    return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) == 0 ? 0 : -1;
}

int fm_rmtree(const char *path, fm_err *e)
{
    if (!fm_path_exists(path)) return 0;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return fm_fail(e, FM_EIO, "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

int fm_fsync_path(const char *path, fm_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fm_fail(e, FM_EIO, "cannot open %s for fsync: %s", path, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL)
        rc = fm_fail(e, FM_EIO, "fsync %s: %s", path, strerror(errno));
    close(fd);
    return rc;
}

int fm_parse_u64(const char *s, uint64_t *out, fm_err *e)
{
    if (s == NULL || *s == '\0') return fm_fail(e, FM_EUSAGE, "expected a number, got an empty string");
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return fm_fail(e, FM_EUSAGE, "'%s' is not a non-negative integer", s);
        if (fm_mul_ovf(v, 10, &v) || fm_add_ovf(v, (uint64_t)(*p - '0'), &v))
            return fm_fail(e, FM_EUSAGE, "'%s' is too large", s);
    }
    *out = v;
    return 0;
}

int fm_parse_size(const char *s, uint64_t *out, fm_err *e)
{
    if (s == NULL || *s == '\0') return fm_fail(e, FM_EUSAGE, "expected a size, got an empty string");
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || !(v >= 0)) return fm_fail(e, FM_EUSAGE, "'%s' is not a size (e.g. 64MiB, 5GB)", s);
    static const struct { const char *suffix; double mult; } units[] = {
        {"", 1}, {"B", 1}, {"K", 1e3}, {"KB", 1e3}, {"M", 1e6}, {"MB", 1e6}, {"G", 1e9}, {"GB", 1e9},
        {"T", 1e12}, {"TB", 1e12}, {"KiB", 1024.0}, {"Ki", 1024.0}, {"MiB", 1048576.0}, {"Mi", 1048576.0},
        {"GiB", 1073741824.0}, {"Gi", 1073741824.0}, {"TiB", 1099511627776.0}, {"Ti", 1099511627776.0},
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(units); i++) {
        if (strcasecmp(end, units[i].suffix) != 0) continue;
        double bytes = v * units[i].mult;
        if (bytes >= 18446744073709551616.0) return fm_fail(e, FM_EUSAGE, "size '%s' is too large", s);
        *out = (uint64_t)bytes;
        return 0;
    }
    return fm_fail(e, FM_EUSAGE, "'%s' has an unknown unit (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s);
}

const char *fm_format_bytes(uint64_t n, char *buf, size_t len)
{
    static const char *unit[] = {"B", "KB", "MB", "GB", "TB", "PB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1000.0 && u + 1 < FM_ARRAY_LEN(unit)) {
        v /= 1000.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%llu B", (unsigned long long)n);
    else snprintf(buf, len, "%.2f %s", v, unit[u]);
    return buf;
}

double fm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
