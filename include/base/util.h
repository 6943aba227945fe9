/* util.h - small helpers shared by every module: checked arithmetic, a
 * growable byte buffer, paths, whole-file reads, sizes and time.
 * Nothing here knows about MPI, pickles or tensors.
 */
#ifndef FM_UTIL_H
#define FM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define FM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Checked arithmetic: return true on overflow (result then undefined). */
static inline bool fm_mul_ovf(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_mul_overflow(a, b, r); }
static inline bool fm_add_ovf(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_add_overflow(a, b, r); }

/* A growable byte buffer. Zero-initialise ({0}) before use. On allocation
 * failure the buffer remembers it (oom) and later appends are no-ops, so a
 * builder can append freely and check once at the end. */
typedef struct fm_buf {
    uint8_t *data;
    size_t len, cap;
    bool oom;
} fm_buf;

void fm_buf_free(fm_buf *b);
bool fm_buf_reserve(fm_buf *b, size_t extra);
void fm_buf_append(fm_buf *b, const void *p, size_t n);
void fm_buf_putc(fm_buf *b, char c);
void fm_buf_puts(fm_buf *b, const char *s);
void fm_buf_printf(fm_buf *b, const char *fmt, ...) FM_PRINTF(2, 3);
/* NUL-terminates without counting the NUL in len. */
void fm_buf_terminate(fm_buf *b);

/* Strings. fm_strdup returns NULL on allocation failure. */
char *fm_strdup(const char *s);
char *fm_strndup(const char *s, size_t n);
bool fm_starts_with(const char *s, const char *prefix);
bool fm_ends_with(const char *s, const char *suffix);
char *fm_asprintf(const char *fmt, ...) FM_PRINTF(1, 2); /* malloc'd, NULL on failure */

/* Paths. All return malloc'd strings (NULL on allocation failure). */
char *fm_path_join(const char *a, const char *b);
char *fm_path_dirname(const char *p);  /* "a/b/c" -> "a/b", "c" -> "." */
char *fm_path_basename(const char *p); /* "a/b/c/" -> "c" */
bool fm_path_exists(const char *p);
bool fm_path_is_dir(const char *p);
bool fm_path_is_file(const char *p);

/*! fm_read_file() : reads a whole file of at most max_len bytes into a
 *  malloc'd, NUL-terminated buffer. @return : 0 or FM_EIO/FM_EFORMAT/FM_ENOMEM. */
int fm_read_file(const char *path, size_t max_len, char **out, size_t *out_len, fm_err *e);
/*! fm_write_file() : creates/truncates path with the given bytes. */
int fm_write_file(const char *path, const void *data, size_t len, fm_err *e);
/*! fm_copy_file() : copies src to dst (dst created with mode 0644). */
int fm_copy_file(const char *src, const char *dst, fm_err *e);
/*! fm_mkdir_p() : creates a directory and its parents (mode 0755). */
int fm_mkdir_p(const char *path, fm_err *e);
/*! fm_rmtree() : removes a file or directory tree; a missing path is success. */
int fm_rmtree(const char *path, fm_err *e);
/*! fm_pwrite_all() : writes all len bytes at off, retrying short writes and
 *  EINTR. @return : 0, or the errno of the failure (EIO for a 0-byte write). */
int fm_pwrite_all(int fd, const void *data, size_t len, uint64_t off);

/*! fm_fsync_path() : fsyncs a file or directory by path. */
int fm_fsync_path(const char *path, fm_err *e);

/*! fm_parse_size() : "64MiB", "5GB", "1.5G", "4096" -> bytes. K/M/G/T are
 *  decimal (as transformers' max_shard_size), Ki/Mi/Gi/Ti binary; a trailing
 *  B is optional. @return : 0 or FM_EUSAGE. */
int fm_parse_size(const char *s, uint64_t *out, fm_err *e);
/*! fm_parse_u64() : a plain decimal integer, no sign, overflow-checked. */
int fm_parse_u64(const char *s, uint64_t *out, fm_err *e);
/*! fm_format_bytes() : "1.23 GB" style (decimal units) into buf. */
const char *fm_format_bytes(uint64_t n, char *buf, size_t len);

/*! fm_now() : monotonic seconds. */
double fm_now(void);

#endif
