/* readahead.c - see readahead.h. */
#include "base/readahead.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/util.h"

enum { SLOT_FREE, SLOT_QUEUED, SLOT_DONE };

typedef struct ra_slot {
    int state;
    ra_file *f;
    ra_range ranges[RA_MAX_RANGES];
    const uint8_t *at[RA_MAX_RANGES];
    size_t n;
    uint8_t *raw, *buf; /* buf: raw aligned to RA_ALIGN, cap + 2 * RA_ALIGN bytes */
    fm_err err;
} ra_slot;

struct ra_reader {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool quit, started;
    size_t cap;
    ra_slot slot[2];
    unsigned posted, read, got; /* requests posted, read by the thread, handed out */
};

int ra_file_open(ra_file *f, const char *path, fm_err *e)
{
    f->path = path;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    f->dfd = -1;
    if (f->fd < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", path, strerror(errno));
    f->dfd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT); /* refused on tmpfs: stays -1 */
    return 0;
}

void ra_file_close(ra_file *f)
{
    if (f->path == NULL) return; /* zeroed: never opened */
    if (f->fd >= 0) close(f->fd);
    if (f->dfd >= 0) close(f->dfd);
    f->fd = f->dfd = -1;
}

/* Reads up to n bytes at off; *got gets how many before the end of the file. */
static int read_full(int fd, uint8_t *p, size_t n, uint64_t off, size_t *got)
{
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, p + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return errno;
        if (k == 0) break;
        done += (size_t)k;
    }
    *got = done;
    return 0;
}

static int short_file(const ra_file *f, uint64_t size, fm_err *e)
{
    return fm_fail(e, FM_EFORMAT, "%s ends at byte %" PRIu64 ", before the data its header describes (truncated?)", f->path,
                   size);
}

/* [lo, hi) in one read into s->buf; O_DIRECT reads the aligned cover. */
static int read_span(ra_slot *s, uint64_t lo, uint64_t hi, fm_err *e)
{
    ra_file *f = s->f;
    uint64_t base = lo;
    size_t got = 0;
    int err = EINVAL;
    if (f->dfd >= 0) {
        base = lo & ~(uint64_t)(RA_ALIGN - 1);
        uint64_t ahi = (hi + RA_ALIGN - 1) & ~(uint64_t)(RA_ALIGN - 1);
        err = read_full(f->dfd, s->buf, (size_t)(ahi - base), base, &got);
        if (err == EINVAL) { /* the file system refuses O_DIRECT after all */
            close(f->dfd);
            f->dfd = -1;
        }
    }
    if (err == EINVAL) {
        base = lo;
        err = read_full(f->fd, s->buf, (size_t)(hi - lo), lo, &got);
    }
    if (err) return fm_fail(e, FM_EIO, "cannot read %s: %s", f->path, strerror(err));
    if (base + got < hi) return short_file(f, base + got, e);
    for (size_t k = 0; k < s->n; k++) s->at[k] = s->buf + (s->ranges[k].off - base);
    return 0;
}

/* Sparse ranges: one buffered read each, packed. */
static int read_each(ra_slot *s, fm_err *e)
{
    uint8_t *p = s->buf;
    for (size_t k = 0; k < s->n; k++) {
        size_t got = 0, len = (size_t)s->ranges[k].len;
        int err = read_full(s->f->fd, p, len, s->ranges[k].off, &got);
        if (err) return fm_fail(e, FM_EIO, "cannot read %s: %s", s->f->path, strerror(err));
        if (got < len) return short_file(s->f, s->ranges[k].off + got, e);
        s->at[k] = p;
        p += len;
    }
    return 0;
}

static void read_slot(ra_slot *s, size_t cap)
{
    uint64_t lo = UINT64_MAX, hi = 0, bytes = 0;
    for (size_t k = 0; k < s->n; k++) {
        lo = FM_MIN(lo, s->ranges[k].off);
        hi = FM_MAX(hi, s->ranges[k].off + s->ranges[k].len);
        bytes += s->ranges[k].len;
    }
    memset(&s->err, 0, sizeof s->err);
    if (s->n == 0) return;
    if (hi - lo <= cap && hi - lo <= 2 * bytes) read_span(s, lo, hi, &s->err);
    else read_each(s, &s->err);
}

static void *thread_main(void *arg)
{
    ra_reader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        ra_slot *s = &r->slot[r->read % 2];
        while (!r->quit && !(r->read < r->posted && s->state == SLOT_QUEUED)) pthread_cond_wait(&r->cv, &r->mu);
        if (r->quit) break;
        pthread_mutex_unlock(&r->mu);
        read_slot(s, r->cap);
        pthread_mutex_lock(&r->mu);
        s->state = SLOT_DONE;
        r->read++;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int ra_open(ra_reader **out, size_t cap, fm_err *e)
{
    ra_reader *r = calloc(1, sizeof *r);
    *out = NULL;
    if (r == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    r->cap = cap;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    for (int k = 0; k < 2; k++) {
        r->slot[k].raw = malloc(cap + 3 * (size_t)RA_ALIGN);
        if (r->slot[k].raw == NULL) break;
        r->slot[k].buf = (uint8_t *)(((uintptr_t)r->slot[k].raw + RA_ALIGN - 1) & ~(uintptr_t)(RA_ALIGN - 1));
    }
    if (r->slot[0].raw == NULL || r->slot[1].raw == NULL) {
        ra_close(r);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    if (pthread_create(&r->th, NULL, thread_main, r) != 0) {
        ra_close(r);
        return fm_fail(e, FM_EGENERIC, "cannot start the read-ahead thread");
    }
    r->started = true;
    *out = r;
    return 0;
}

int ra_post(ra_reader *r, ra_file *f, const ra_range *ranges, size_t n, fm_err *e)
{
    ra_slot *s = &r->slot[r->posted % 2];
    uint64_t bytes = 0;
    for (size_t k = 0; k < n; k++) bytes += ranges[k].len;
    if (s->state != SLOT_FREE || n > RA_MAX_RANGES || bytes > r->cap)
        return fm_fail(e, FM_EINTERNAL, "read-ahead: request of %zu ranges, %" PRIu64 " bytes, does not fit", n, bytes);
    s->f = f;
    s->n = n;
    memcpy(s->ranges, ranges, n * sizeof *ranges);
    pthread_mutex_lock(&r->mu);
    s->state = SLOT_QUEUED;
    r->posted++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int ra_get(ra_reader *r, const uint8_t *const **at, fm_err *e)
{
    ra_slot *s = &r->slot[r->got % 2];
    if (r->got >= r->posted) return fm_fail(e, FM_EINTERNAL, "read-ahead: nothing posted");
    pthread_mutex_lock(&r->mu);
    while (s->state != SLOT_DONE) pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    *at = s->at;
    if (s->err.code) {
        *e = s->err;
        return e->code;
    }
    return 0;
}

void ra_done(ra_reader *r)
{
    ra_slot *s = &r->slot[r->got % 2];
    pthread_mutex_lock(&r->mu);
    s->state = SLOT_FREE;
    r->got++;
    pthread_mutex_unlock(&r->mu);
}

void ra_drain(ra_reader *r)
{
    pthread_mutex_lock(&r->mu);
    for (; r->got < r->posted; r->got++) {
        ra_slot *s = &r->slot[r->got % 2];
        while (s->state != SLOT_DONE) pthread_cond_wait(&r->cv, &r->mu);
        s->state = SLOT_FREE;
    }
    pthread_mutex_unlock(&r->mu);
}

void ra_close(ra_reader *r)
{
    if (r == NULL) return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->quit = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->th, NULL);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->slot[0].raw);
    free(r->slot[1].raw);
    free(r);
}
