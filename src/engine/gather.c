/* gather.c - the gather engine: windows of output bytes gathered at the
 * writer, which writes them through an I/O thread (see xfer.h). */
#include "engine/xfer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/comm.h"
#include "base/fsspace.h"
#include "base/dtype.h"
#include "plan/segment.h"
#include "base/util.h"

/* ---- the I/O thread: writes full windows while the next one is gathered ---- */

/* Direct I/O: windows that start on a 4 KiB boundary of the file are
 * written with O_DIRECT from 4 KiB-aligned buffers, which skips the copy into
 * the page cache (the biggest cost in the profile, docs/benchmarks.md); the
 * header, the first partial window and the tail go through the page cache. */
#define DIO_ALIGN 4096u

typedef struct iojob {
    int fd, dfd;    /* buffered and O_DIRECT descriptors (dfd < 0: none) */
    uint64_t off;
    const uint8_t *buf;
    size_t len;
    bool busy;
} iojob;

typedef struct iothread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    iojob jobs[2];
    bool stop, started;
    fm_err err;
    char path[4096]; /* the file being written, for messages; set before its first job */
} iothread;

static int write_job(const iojob *j)
{
    size_t aligned = j->dfd >= 0 && j->off % DIO_ALIGN == 0 ? j->len & ~(size_t)(DIO_ALIGN - 1) : 0;
    int err = aligned ? fm_pwrite_all(j->dfd, j->buf, aligned, j->off) : 0;
    if (err == EINVAL) { /* the file system refuses direct I/O after all: write through the cache */
        aligned = 0;
        err = 0;
    }
    if (err == 0) err = fm_pwrite_all(j->fd, j->buf + aligned, j->len - aligned, j->off + aligned);
    return err;
}

static void *io_main(void *arg)
{
    iothread *io = arg;
    pthread_mutex_lock(&io->mu);
    for (;;) {
        int k = io->jobs[0].busy ? 0 : io->jobs[1].busy ? 1 : -1;
        if (k < 0) {
            if (io->stop) break;
            pthread_cond_wait(&io->cv, &io->mu);
            continue;
        }
        iojob job = io->jobs[k];
        pthread_mutex_unlock(&io->mu);
        int err = io->err.code ? 0 : write_job(&job);
        pthread_mutex_lock(&io->mu);
        if (err && io->err.code == 0) fs_write_error(&io->err, err, io->path);
        io->jobs[k].busy = false;
        pthread_cond_broadcast(&io->cv);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

static int io_start(iothread *io, fm_err *e)
{
    memset(io, 0, sizeof *io);
    pthread_mutex_init(&io->mu, NULL);
    pthread_cond_init(&io->cv, NULL);
    if (pthread_create(&io->th, NULL, io_main, io) != 0) return fm_fail(e, FM_EGENERIC, "cannot start the I/O thread");
    io->started = true;
    return 0;
}

/* Waits until buffer slot k is free again; returns the thread's error. */
static int io_wait(iothread *io, int k, fm_err *e)
{
    pthread_mutex_lock(&io->mu);
    while (io->jobs[k].busy) pthread_cond_wait(&io->cv, &io->mu);
    fm_err err = io->err;
    pthread_mutex_unlock(&io->mu);
    if (err.code) *e = err;
    return err.code;
}

static void io_submit(iothread *io, int k, const int fds[2], uint64_t off, const uint8_t *buf, size_t len)
{
    pthread_mutex_lock(&io->mu);
    io->jobs[k] = (iojob){fds[0], fds[1], off, buf, len, true};
    pthread_cond_broadcast(&io->cv);
    pthread_mutex_unlock(&io->mu);
}

static int io_stop(iothread *io, fm_err *e)
{
    if (!io->started) return 0;
    pthread_mutex_lock(&io->mu);
    io->stop = true;
    pthread_cond_broadcast(&io->cv);
    pthread_mutex_unlock(&io->mu);
    pthread_join(io->th, NULL);
    pthread_mutex_destroy(&io->mu);
    pthread_cond_destroy(&io->cv);
    io->started = false;
    if (io->err.code && e && e->code == 0) *e = io->err;
    return io->err.code;
}

/* ---- one window ---- */

typedef struct xctx {
    const plan *pl;
    const xf_opts *o;
    MPI_Comm comm;
    int me, nprocs;
    sg_sources src;
    uint8_t *pack;        /* this process's packed bytes */
    size_t pack_len;
    /* writer only */
    uint8_t *win[2];      /* two windows: one filled while the other is written */
    uint8_t *recv;
    int *counts, *displs;
    size_t *cursor_in;    /* per process: read position in recv while unpacking */
    uint8_t *cur_win;
    uint64_t wa;
    iothread io;
} xctx;

static int pack_seg(void *ctx, const sg_seg *s, fm_err *e)
{
    xctx *x = ctx;
    const plan_tensor *t = &x->pl->tensors[s->tensor];
    uint8_t *dst = x->me == x->o->writer ? x->cur_win + (s->out - x->wa) : x->pack + x->pack_len;
    FM_TRY(sg_read(&x->src, x->pl, s, dst, e));
    if (x->me != x->o->writer) x->pack_len += s->n * dt_size(t->out_dtype);
    return 0;
}

static int count_seg(void *ctx, const sg_seg *s, fm_err *e)
{
    (void)e;
    xctx *x = ctx;
    const plan_tensor *t = &x->pl->tensors[s->tensor];
    int proc = t->pieces[s->piece].proc;
    if (proc != x->o->writer) x->counts[proc] += (int)(s->n * dt_size(t->out_dtype));
    return 0;
}

static int unpack_seg(void *ctx, const sg_seg *s, fm_err *e)
{
    (void)e;
    xctx *x = ctx;
    const plan_tensor *t = &x->pl->tensors[s->tensor];
    int proc = t->pieces[s->piece].proc;
    if (proc == x->o->writer) return 0;
    size_t n = s->n * dt_size(t->out_dtype);
    memcpy(x->cur_win + (s->out - x->wa), x->recv + x->cursor_in[proc], n);
    x->cursor_in[proc] += n;
    return 0;
}

static int gather_window(xctx *x, int f, size_t *cursor, uint64_t wa, uint64_t wb, fm_err *e)
{
    bool writer = x->me == x->o->writer;
    x->wa = wa;
    x->pack_len = 0;
    if (e->code == 0) sg_for_each_in_window(x->pl, cursor, f, wa, wb, x->me, pack_seg, x, e);
    FM_TRY(comm_agree_all(e, x->comm));
    if (writer) {
        memset(x->counts, 0, sizeof(int) * (size_t)x->nprocs);
        sg_for_each_in_window(x->pl, cursor, f, wa, wb, -1, count_seg, x, e);
        int total = 0;
        for (int q = 0; q < x->nprocs; q++) {
            x->displs[q] = total;
            x->cursor_in[q] = (size_t)total;
            total += x->counts[q];
        }
    }
    int mrc = MPI_Gatherv(x->pack, (int)x->pack_len, MPI_BYTE, x->recv, x->counts, x->displs, MPI_BYTE, x->o->writer,
                          x->comm);
    if (mrc != MPI_SUCCESS) return comm_mpi_error(e, mrc, "MPI_Gatherv");
    if (writer) sg_for_each_in_window(x->pl, cursor, f, wa, wb, -1, unpack_seg, x, e);
    return 0;
}

/* ---- files ---- */

/* fds[0] buffered, fds[1] O_DIRECT (or -1 when unwanted or unsupported) */
static int open_output(const char *dir, const plan_file *pf, bool direct_io, int fds[2], fm_err *e)
{
    char *path = fm_path_join(dir, pf->name);
    if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    fds[0] = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    fds[1] = -1;
    int rc = 0;
    if (fds[0] < 0) rc = fm_fail(e, FM_EIO, "cannot create %s: %s", path, strerror(errno));
    else if (ftruncate(fds[0], (off_t)pf->size) != 0)
        rc = fm_fail(e, FM_EIO, "cannot size %s to %" PRIu64 " bytes: %s", path, pf->size, strerror(errno));
    else if (fm_pwrite_all(fds[0], pf->header.data, pf->header.len, 0) != 0)
        rc = fm_fail(e, FM_EIO, "cannot write the header of %s: %s", path, strerror(errno));
    else rc = fs_reserve(fds[0], pf->size, path, e);
    if (rc == 0 && direct_io) fds[1] = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC); /* -1 (EINVAL) on tmpfs etc. */
    free(path);
    return rc;
}

static int close_output(const int fds[2], const char *name, bool do_fsync, fm_err *e)
{
    int rc = 0;
    if (do_fsync && fsync(fds[0]) != 0) rc = fm_fail(e, FM_EIO, "fsync %s: %s", name, strerror(errno));
    if (fds[1] >= 0) close(fds[1]);
    if (close(fds[0]) != 0 && rc == 0) rc = fm_fail(e, FM_EIO, "close %s: %s", name, strerror(errno));
    return rc;
}

/* The first window ends at the first 4 KiB boundary of the file, so that
 * every later one starts on one (for O_DIRECT). */
static uint64_t first_window_end(const plan_file *pf, uint64_t window, uint64_t data_len)
{
    uint64_t to_boundary = (DIO_ALIGN - pf->data_start % DIO_ALIGN) % DIO_ALIGN;
    return FM_MIN(to_boundary ? to_boundary : window, data_len);
}

static int merge_file(xctx *x, int f, const char *dir, uint64_t *done, xf_progress_fn progress, void *pctx, fm_err *e)
{
    const plan_file *pf = &x->pl->files[f];
    bool writer = x->me == x->o->writer;
    int fds[2] = {-1, -1};
    if (writer) {
        open_output(dir, pf, x->o->direct_io, fds, e);
        pthread_mutex_lock(&x->io.mu);
        snprintf(x->io.path, sizeof x->io.path, "%s/%s", dir, pf->name);
        pthread_mutex_unlock(&x->io.mu);
    }
    if (comm_agree_all(e, x->comm)) {
        if (fds[0] >= 0) close_output(fds, pf->name, false, e);
        return e->code;
    }
    uint64_t data_len = pf->size - pf->data_start;
    size_t cursor = pf->first;
    int k = 0;
    for (uint64_t wa = 0, wb = first_window_end(pf, x->o->window, data_len); wa < data_len;
         wa = wb, wb = FM_MIN(wa + x->o->window, data_len), k ^= 1) {
        if (writer && io_wait(&x->io, k, e) == 0) x->cur_win = x->win[k];
        if (gather_window(x, f, &cursor, wa, wb, e)) break;
        if (writer) io_submit(&x->io, k, fds, pf->data_start + wa, x->win[k], (size_t)(wb - wa));
        *done += wb - wa;
        if (progress) progress(pctx, *done, x->pl->total_bytes);
    }
    if (writer) {
        io_wait(&x->io, 0, e);
        io_wait(&x->io, 1, e);
        if (close_output(fds, pf->name, x->o->fsync, e) && x->io.err.code == 0) x->io.err = *e;
    }
    return comm_agree_all(e, x->comm);
}

static int xctx_init(xctx *x, const plan *pl, ptz_file *const *zips, const xf_opts *o, MPI_Comm comm, fm_err *e)
{
    memset(x, 0, sizeof *x);
    x->pl = pl;
    x->o = o;
    x->comm = comm;
    MPI_Comm_rank(comm, &x->me);
    MPI_Comm_size(comm, &x->nprocs);
    int rc = sg_sources_init(&x->src, pl, zips, x->me, e);
    x->src.crc32c = o->crc32c;
    x->pack = malloc(o->window);
    if (rc == 0 && x->pack == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory (%zu-byte window)", o->window);
    if (rc == 0 && x->me == o->writer) {
        /* aligned for O_DIRECT */
        if (posix_memalign((void **)&x->win[0], DIO_ALIGN, o->window) != 0) x->win[0] = NULL;
        if (posix_memalign((void **)&x->win[1], DIO_ALIGN, o->window) != 0) x->win[1] = NULL;
        x->recv = malloc(o->window);
        x->counts = calloc((size_t)x->nprocs, sizeof(int));
        x->displs = calloc((size_t)x->nprocs, sizeof(int));
        x->cursor_in = calloc((size_t)x->nprocs, sizeof(size_t));
        if (!x->win[0] || !x->win[1] || !x->recv || !x->counts || !x->displs || !x->cursor_in)
            rc = fm_fail(e, FM_ENOMEM, "out of memory (writer buffers of %zu bytes)", o->window);
        if (rc == 0) rc = io_start(&x->io, e);
    }
    return rc;
}

static void xctx_free(xctx *x)
{
    io_stop(&x->io, NULL);
    sg_sources_free(&x->src);
    free(x->pack);
    free(x->win[0]);
    free(x->win[1]);
    free(x->recv);
    free(x->counts);
    free(x->displs);
    free(x->cursor_in);
}

int xf_gather_all(const plan *pl, ptz_file *const *zips, const char *dir, const xf_opts *o, xf_progress_fn progress,
                  void *pctx, MPI_Comm comm, xf_stats *stats, fm_err *e)
{
    xf_opts opts = *o;
    /* a multiple of 4 KiB (direct I/O), at most 1 GiB (MPI counts are int) */
    opts.window = FM_MIN(FM_MAX(opts.window & ~(size_t)(DIO_ALIGN - 1), (size_t)DIO_ALIGN), (size_t)1 << 30);
    xctx x;
    xctx_init(&x, pl, zips, &opts, comm, e);
    int rc = comm_agree_all(e, comm);
    uint64_t done = 0;
    for (size_t f = 0; f < pl->nfiles && rc == 0; f++) rc = merge_file(&x, (int)f, dir, &done, progress, pctx, e);
    if (stats) {
        stats->bytes_read = x.src.bytes_read;
        stats->bytes_written = 0;
        if (x.me == opts.writer)
            for (size_t f = 0; f < pl->nfiles; f++) stats->bytes_written += pl->files[f].size;
    }
    xctx_free(&x);
    return rc;
}
