/* direct.c - the direct engine: every process writes its own segments into
 * the output files with collective MPI-IO (see xfer.h). */
#include "engine/xfer.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/comm.h"
#include "base/fsspace.h"
#include "base/watchdog.h"
#include "base/dtype.h"
#include "plan/segment.h"
#include "base/util.h"

/* The file blocks of one round, increasing; the memory side is the packed
 * buffer in the same order, so it is contiguous. */
typedef struct blocks {
    MPI_Aint *disp;
    int *len;
    int n, cap;
} blocks;

static int blocks_add(blocks *b, uint64_t off, uint64_t len, fm_err *e)
{
    if (b->n > 0 && (uint64_t)b->disp[b->n - 1] + (uint64_t)b->len[b->n - 1] == off) {
        b->len[b->n - 1] += (int)len; /* adjoins the previous block */
        return 0;
    }
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 1024;
        MPI_Aint *d = realloc(b->disp, sizeof *d * (size_t)cap);
        int *l = realloc(b->len, sizeof *l * (size_t)cap);
        if (d) b->disp = d;
        if (l) b->len = l;
        if (d == NULL || l == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        b->cap = cap;
    }
    b->disp[b->n] = (MPI_Aint)off;
    b->len[b->n] = (int)len;
    b->n++;
    return 0;
}

static bool regular_stride(const blocks *b)
{
    if (b->n < 2) return false;
    MPI_Aint stride = b->disp[1] - b->disp[0];
    for (int i = 1; i < b->n; i++)
        if (b->len[i] != b->len[0] || b->disp[i] - b->disp[i - 1] != stride) return false;
    return stride > b->len[0] && stride <= INT32_MAX;
}

/* The file type of a round, relative to its first block (the view's
 * displacement): one block is contiguous bytes; equal blocks at a constant
 * stride (the rows of a Shard(d>0) piece) a 2-D subarray; anything else
 * an hindexed list. */
static int file_type(const blocks *b, MPI_Datatype *t, fm_err *e)
{
    int rc;
    if (b->n <= 1) {
        *t = MPI_BYTE;
        return 0;
    }
    if (regular_stride(b)) {
        int sizes[2] = {b->n, (int)(b->disp[1] - b->disp[0])}, sub[2] = {b->n, b->len[0]}, start[2] = {0, 0};
        rc = MPI_Type_create_subarray(2, sizes, sub, start, MPI_ORDER_C, MPI_BYTE, t);
    } else {
        MPI_Aint base = b->disp[0];
        for (int i = 0; i < b->n; i++) b->disp[i] -= base;
        rc = MPI_Type_create_hindexed(b->n, b->len, b->disp, MPI_BYTE, t);
        for (int i = 0; i < b->n; i++) b->disp[i] += base;
    }
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(t);
    return rc == MPI_SUCCESS ? 0 : comm_mpi_error(e, rc, "building the MPI-IO file view");
}

typedef struct dctx {
    const plan *pl;
    const xf_opts *o;
    MPI_Comm comm;
    int me, nprocs;
    sg_sources src;
    uint8_t *buf;
    blocks b;
} dctx;

/* Reads and converts this process's next segments, up to the window. */
static int fill_round(dctx *x, sg_stream *st, const plan_file *pf, uint64_t *used, fm_err *e)
{
    sg_seg sg;
    *used = 0;
    x->b.n = 0;
    while (x->o->window - *used >= 16 && sg_stream_next(st, x->o->window - *used, &sg)) {
        uint64_t len = sg.n * dt_size(x->pl->tensors[sg.tensor].out_dtype);
        FM_TRY(sg_read(&x->src, x->pl, &sg, x->buf + *used, e));
        FM_TRY(blocks_add(&x->b, pf->data_start + sg.out, len, e));
        *used += len;
    }
    return 0;
}

static int write_round(dctx *x, MPI_File fh, const char *path, uint64_t used, fm_err *e)
{
    MPI_Datatype t = MPI_BYTE;
    int rc = file_type(&x->b, &t, e);
    if (rc) return rc;
    MPI_Offset disp = x->b.n ? (MPI_Offset)x->b.disp[0] : 0;
    int mrc = MPI_File_set_view(fh, disp, MPI_BYTE, t, "native", x->o->info);
    /* offset 0 of the view: the view's displacement is the round's first block */
    MPI_Status status;
    int count = -1;
    wd_waiting("MPI_File_write_at_all (the collective write of a round)");
    if (mrc == MPI_SUCCESS) mrc = MPI_File_write_at_all(fh, 0, x->buf, (int)used, MPI_BYTE, &status);
    wd_waiting(NULL);
    if (t != MPI_BYTE) MPI_Type_free(&t);
    if (mrc != MPI_SUCCESS) return comm_mpi_error(e, mrc, "MPI_File_write_at_all");
    /* ompio returns MPI_SUCCESS when its pwritev fails; the count shows it */
    if (MPI_Get_count(&status, MPI_BYTE, &count) == MPI_SUCCESS && count == (int)used) return 0;
    return fm_fail(e, FM_EIO, "cannot write %s: the collective write stored %d of %d bytes (Open MPI's message above "
                   "names the cause)", path, count, (int)used);
}

static void print_hints(dctx *x, MPI_File fh)
{
    if (x->me == 0 && x->o->hints_out) comm_print_hints(x->o->hints_out, fh, "the safetensors files");
}

static int open_file(dctx *x, const char *path, const plan_file *pf, bool first, MPI_File *fh, fm_err *e)
{
    int rc = MPI_File_open(x->comm, path, MPI_MODE_CREATE | MPI_MODE_EXCL | MPI_MODE_WRONLY, x->o->info, fh);
    if (rc != MPI_SUCCESS) return comm_mpi_error(e, rc, "MPI_File_open of the output");
    MPI_File_set_errhandler(*fh, MPI_ERRORS_RETURN); /* every call's error is ours to agree on */
    if (first) print_hints(x, *fh);
    rc = MPI_File_set_size(*fh, (MPI_Offset)pf->size);
    if (rc == MPI_SUCCESS && x->me == x->o->writer)
        rc = MPI_File_write_at(*fh, 0, pf->header.data, (int)pf->header.len, MPI_BYTE, MPI_STATUS_IGNORE);
    return rc == MPI_SUCCESS ? 0 : comm_mpi_error(e, rc, "writing the safetensors header");
}

/* Every process runs the same number of rounds: the most any process needs. */
static uint64_t rounds_for(const dctx *x, int f)
{
    uint64_t most = 0;
    for (int q = 0; q < x->nprocs; q++) {
        uint64_t bytes = sg_bytes_of(x->pl, f, q);
        most = FM_MAX(most, (bytes + x->o->window - 1) / x->o->window);
    }
    return most;
}

static int direct_file(dctx *x, int f, const char *dir, uint64_t *done, xf_progress_fn progress, void *pctx, fm_err *e)
{
    const plan_file *pf = &x->pl->files[f];
    char *path = fm_path_join(dir, pf->name);
    if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    MPI_File fh = MPI_FILE_NULL;
    int rc = open_file(x, path, pf, f == 0, &fh, e);
    if (rc) fm_context(e, "%s", path);
    /* ompio loses a failed pwritev inside write_at_all (the call succeeds,
     * the bytes are gone): no later write may find the disk full */
    else if (x->me == x->o->writer) fs_reserve_path(path, pf->size, e);
    if (comm_agree_all(e, x->comm)) { /* MPI_File_open is collective: all or none have it */
        free(path);
        return e->code;
    }
    sg_stream st;
    rc = sg_stream_init(&st, x->pl, f, x->me, e);
    uint64_t nrounds = rounds_for(x, f);
    for (uint64_t r = 0; r < nrounds; r++) {
        uint64_t used = 0, all = 0;
        if (e->code == 0) fill_round(x, &st, pf, &used, e);
        if (comm_agree_all(e, x->comm)) break;
        write_round(x, fh, path, used, e);
        MPI_Allreduce(&used, &all, 1, MPI_UINT64_T, MPI_SUM, x->comm);
        if (comm_agree_all(e, x->comm)) break;
        *done += all;
        if (progress) progress(pctx, *done, x->pl->total_bytes);
    }
    sg_stream_free(&st);
    if (e->code == 0 && x->o->fsync) {
        int mrc = MPI_File_sync(fh);
        if (mrc != MPI_SUCCESS) comm_mpi_error(e, mrc, "MPI_File_sync");
    }
    int mrc = MPI_File_close(&fh);
    if (mrc != MPI_SUCCESS && e->code == 0) comm_mpi_error(e, mrc, "MPI_File_close");
    free(path);
    return comm_agree_all(e, x->comm);
}

int xf_direct_all(const plan *pl, ptz_file *const *zips, const char *dir, const xf_opts *o, xf_progress_fn progress,
                  void *pctx, MPI_Comm comm, xf_stats *stats, fm_err *e)
{
    xf_opts opts = *o;
    opts.window = FM_MAX(opts.window & ~(size_t)7, (size_t)4096);
    if (opts.window > (1u << 30)) opts.window = 1u << 30; /* MPI counts are int */
    dctx x;
    memset(&x, 0, sizeof x);
    x.pl = pl;
    x.o = &opts;
    x.comm = comm;
    MPI_Comm_rank(comm, &x.me);
    MPI_Comm_size(comm, &x.nprocs);
    if (sg_sources_init(&x.src, pl, zips, x.me, e) == 0) {
        x.src.crc32c = o->crc32c;
        x.buf = malloc(opts.window);
        if (x.buf == NULL) fm_fail(e, FM_ENOMEM, "out of memory (%zu-byte buffer)", opts.window);
    }
    int rc = comm_agree_all(e, comm);
    uint64_t done = 0;
    for (size_t f = 0; f < pl->nfiles && rc == 0; f++) rc = direct_file(&x, (int)f, dir, &done, progress, pctx, e);
    if (stats) {
        stats->bytes_read = x.src.bytes_read;
        stats->bytes_written = 0;
        for (size_t f = 0; f < pl->nfiles; f++) stats->bytes_written += sg_bytes_of(pl, (int)f, x.me);
        if (x.me == opts.writer)
            for (size_t f = 0; f < pl->nfiles; f++) stats->bytes_written += pl->files[f].data_start;
    }
    sg_sources_free(&x.src);
    free(x.buf);
    free(x.b.disp);
    free(x.b.len);
    return rc;
}
