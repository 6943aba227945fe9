/* lorax.c - the LoRA factors each process needs, where it needs them (see lorax.h). */
#include "engine/lorax.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "base/comm.h"
#include "base/util.h"
#include "plan/segment.h"

/* A row-major block [y0, y0+ny) x [x0, x0+nx) of a 2-D tensor. */
typedef struct rect {
    int64_t y0, ny, x0, nx;
} rect;

static rect piece_rect(const plan_piece *p)
{
    return (rect){p->goff[0], p->view.shape[0], p->goff[1], p->view.shape[1]};
}

static bool intersect(rect a, rect b, rect *out)
{
    int64_t y0 = FM_MAX(a.y0, b.y0), y1 = FM_MIN(a.y0 + a.ny, b.y0 + b.ny);
    int64_t x0 = FM_MAX(a.x0, b.x0), x1 = FM_MIN(a.x0 + a.nx, b.x0 + b.nx);
    *out = (rect){y0, y1 - y0, x0, x1 - x0};
    return y1 > y0 && x1 > x0;
}

/* copies the intersection `in` from block `from` (data fd) to block `to` (data td) */
static void copy_rect(rect in, rect from, const float *fd, rect to, float *td)
{
    for (int64_t y = in.y0; y < in.y0 + in.ny; y++)
        memcpy(td + (y - to.y0) * to.nx + (in.x0 - to.x0), fd + (y - from.y0) * from.nx + (in.x0 - from.x0),
               sizeof(float) * (size_t)in.nx);
}

/* What piece k of the fused W needs of A (factor 0) or B (factor 1). */
static rect need_rect(const plan_tensor *w, size_t k, int factor)
{
    const plan_fuse *f = w->fuse;
    rect p = piece_rect(&w->pieces[k]);
    int64_t rows0 = f->fan_in_fan_out ? p.x0 : p.y0, rows = f->fan_in_fan_out ? p.nx : p.ny;
    int64_t cols0 = f->fan_in_fan_out ? p.y0 : p.x0, cols = f->fan_in_fan_out ? p.ny : p.nx;
    if (factor == 0) return (rect){0, f->r, cols0, cols}; /* A[:, the columns of W] */
    return (rect){rows0, rows, 0, f->r};                   /* B[the rows of W, :] */
}

typedef struct xch {
    MPI_Comm comm;
    int me, nprocs;
    int *scount, *sdispl, *rcount, *rdispl;
} xch;

/* One factor S of one fused W: every process sends the parts of its
 * pieces of S that the pieces of W of other processes need (MPI_Alltoallv);
 * both sides walk (W piece, S piece) pairs in the same order. */
static int exchange_factor(xch *x, const plan_tensor *w, int factor, const plan_tensor *s, float *const *sdata,
                           fm_err *e)
{
    memset(x->scount, 0, sizeof(int) * (size_t)x->nprocs);
    memset(x->rcount, 0, sizeof(int) * (size_t)x->nprocs);
    uint64_t bytes[2] = {0, 0}, most[2];
    rect in;
    for (int pass = 0; pass < 2; pass++) { /* totals first, so that the int counts cannot overflow */
        for (size_t k = 0; k < w->npieces; k++)
            for (size_t j = 0; j < s->npieces; j++) {
                if (!intersect(need_rect(w, k, factor), piece_rect(&s->pieces[j]), &in)) continue;
                uint64_t n = (uint64_t)(in.ny * in.nx) * sizeof(float);
                if (pass == 0) {
                    bytes[0] += s->pieces[j].proc == x->me ? n : 0;
                    bytes[1] += w->pieces[k].proc == x->me ? n : 0;
                } else {
                    if (s->pieces[j].proc == x->me) x->scount[w->pieces[k].proc] += (int)n;
                    if (w->pieces[k].proc == x->me) x->rcount[s->pieces[j].proc] += (int)n;
                }
            }
        if (pass > 0) break;
        MPI_Allreduce(bytes, most, 2, MPI_UINT64_T, MPI_MAX, x->comm); /* every process takes the same branch */
        if (most[0] > INT_MAX || most[1] > INT_MAX)
            return fm_fail(e, FM_EUNSUPPORTED, "LoRA factors of '%s' over 2 GiB per process", w->key);
    }
    for (int q = 0, so = 0, ro = 0; q < x->nprocs; q++) {
        x->sdispl[q] = so, so += x->scount[q];
        x->rdispl[q] = ro, ro += x->rcount[q];
    }
    float *sbuf = malloc(bytes[0] ? bytes[0] : 1), *rbuf = malloc(bytes[1] ? bytes[1] : 1);
    int *cur = calloc((size_t)x->nprocs, sizeof(int));
    if (sbuf == NULL || rbuf == NULL || cur == NULL) fm_fail(e, FM_ENOMEM, "out of memory");
    for (int q = 0; e->code == 0 && q < x->nprocs; q++) cur[q] = x->sdispl[q];
    for (size_t k = 0; e->code == 0 && k < w->npieces; k++)
        for (size_t j = 0; j < s->npieces; j++) {
            if (s->pieces[j].proc != x->me || !intersect(need_rect(w, k, factor), piece_rect(&s->pieces[j]), &in)) continue;
            int q = w->pieces[k].proc;
            copy_rect(in, piece_rect(&s->pieces[j]), sdata[j], in, (float *)((char *)sbuf + cur[q]));
            cur[q] += (int)((uint64_t)(in.ny * in.nx) * sizeof(float));
        }
    int rc = comm_agree_all(e, x->comm);
    int mrc = rc ? MPI_SUCCESS
                 : MPI_Alltoallv(sbuf, x->scount, x->sdispl, MPI_BYTE, rbuf, x->rcount, x->rdispl, MPI_BYTE, x->comm);
    if (rc == 0 && mrc != MPI_SUCCESS) rc = comm_mpi_error(e, mrc, "MPI_Alltoallv (LoRA factors)");
    for (int q = 0; rc == 0 && q < x->nprocs; q++) cur[q] = x->rdispl[q];
    for (size_t k = 0; rc == 0 && k < w->npieces; k++)
        for (size_t j = 0; j < s->npieces; j++) {
            if (w->pieces[k].proc != x->me) continue;
            rect need = need_rect(w, k, factor);
            if (!intersect(need, piece_rect(&s->pieces[j]), &in)) continue;
            int q = s->pieces[j].proc;
            plan_factors *fc = &w->fuse->local[k];
            copy_rect(in, in, (const float *)((const char *)rbuf + cur[q]), need, factor == 0 ? fc->a : fc->b);
            cur[q] += (int)((uint64_t)(in.ny * in.nx) * sizeof(float));
        }
    free(sbuf);
    free(rbuf);
    free(cur);
    return rc;
}

/* This process's pieces of S, whole, in fp32 (S is small: r x in or out x r). */
static int load_factor(const plan_tensor *s, ptz_file *const *zips, int me, float ***out, fm_err *e)
{
    float **d = calloc(s->npieces ? s->npieces : 1, sizeof *d);
    *out = d;
    if (d == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t j = 0; j < s->npieces; j++) {
        const plan_piece *p = &s->pieces[j];
        if (p->proc != me) continue;
        d[j] = malloc(sizeof(float) * ti_view_numel(&p->view));
        if (d[j] == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        FM_TRY(sg_read_piece_f32(zips[p->rank], s, p, d[j], e));
    }
    return 0;
}

static void free_factor(float **d, size_t n)
{
    for (size_t j = 0; d && j < n; j++) free(d[j]);
    free(d);
}

static int alloc_local(const plan_tensor *w, int me, uint64_t *held, fm_err *e)
{
    plan_fuse *f = w->fuse;
    f->local = calloc(w->npieces ? w->npieces : 1, sizeof *f->local);
    if (f->local == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    f->nlocal = w->npieces;
    for (size_t k = 0; k < w->npieces; k++) {
        if (w->pieces[k].proc != me) continue;
        rect a = need_rect(w, k, 0), b = need_rect(w, k, 1);
        plan_factors *fc = &f->local[k];
        *fc = (plan_factors){malloc(sizeof(float) * (size_t)(a.ny * a.nx)), malloc(sizeof(float) * (size_t)(b.ny * b.nx)),
                             a.x0, a.nx, b.y0, b.ny};
        if (fc->a == NULL || fc->b == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        *held += sizeof(float) * (uint64_t)(a.ny * a.nx + b.ny * b.nx);
    }
    return 0;
}

static int prepare_one(xch *x, const plan *pl, const plan_tensor *w, ptz_file *const *zips, uint64_t *held, fm_err *e)
{
    const plan_tensor *A = &pl->lora_src[w->fuse->a], *B = &pl->lora_src[w->fuse->b];
    float **ad = NULL, **bd = NULL;
    if (e->code == 0 && alloc_local(w, x->me, held, e) == 0 && load_factor(A, zips, x->me, &ad, e) == 0)
        load_factor(B, zips, x->me, &bd, e);
    int rc = comm_agree_all(e, x->comm);
    if (rc == 0) rc = exchange_factor(x, w, 0, A, ad, e);
    if (rc == 0) rc = exchange_factor(x, w, 1, B, bd, e);
    free_factor(ad, A->npieces);
    free_factor(bd, B->npieces);
    return comm_agree_all(e, x->comm);
}

int lx_prepare_all(const plan *pl, ptz_file *const *zips, MPI_Comm comm, uint64_t *max_held, fm_err *e)
{
    uint64_t held = 0;
    xch x = {.comm = comm};
    MPI_Comm_rank(comm, &x.me);
    MPI_Comm_size(comm, &x.nprocs);
    size_t np = (size_t)x.nprocs;
    x.scount = calloc(np, sizeof(int)), x.sdispl = calloc(np, sizeof(int));
    x.rcount = calloc(np, sizeof(int)), x.rdispl = calloc(np, sizeof(int));
    if (!x.scount || !x.sdispl || !x.rcount || !x.rdispl) fm_fail(e, FM_ENOMEM, "out of memory");
    int rc = comm_agree_all(e, comm);
    for (size_t i = 0; i < pl->ntensors && rc == 0; i++)
        if (pl->tensors[i].fuse) rc = prepare_one(&x, pl, &pl->tensors[i], zips, &held, e);
    if (max_held) MPI_Allreduce(&held, max_held, 1, MPI_UINT64_T, MPI_MAX, comm);
    free(x.scount);
    free(x.sdispl);
    free(x.rcount);
    free(x.rdispl);
    return rc;
}
