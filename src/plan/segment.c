/* segment.c - segments of the plan and reading them (see segment.h). */
#include "plan/segment.h"

#include <stdlib.h>
#include <string.h>

#include "base/crc32c.h"
#include "base/dtype.h"
#include "base/util.h"
#include "plan/lora.h"

/* ---- segments of a window ---- */

int sg_for_each_in_window(const plan *pl, size_t *cursor, int f, uint64_t wa, uint64_t wb, int proc, sg_fn fn,
                          void *ctx, fm_err *e)
{
    const plan_file *pf = &pl->files[f];
    while (*cursor < pf->first + pf->count && pl->tensors[*cursor].end <= wa) (*cursor)++;
    for (size_t ti = *cursor; ti < pf->first + pf->count; ti++) {
        const plan_tensor *t = &pl->tensors[ti];
        if (t->begin >= wb) break;
        uint64_t es = dt_size(t->out_dtype);
        uint64_t ea = (FM_MAX(wa, t->begin) - t->begin) / es;
        uint64_t eb = (FM_MIN(wb, t->end) - t->begin) / es;
        for (size_t pi = 0; pi < t->npieces; pi++) {
            const plan_piece *p = &t->pieces[pi];
            if (proc >= 0 && p->proc != proc) continue;
            for (uint64_t r = plan_first_run_after(t, p, ea); r < p->nruns; r++) {
                uint64_t s0 = plan_run_first(t, p, r);
                if (s0 >= eb) break;
                uint64_t lo = FM_MAX(s0, ea), hi = FM_MIN(s0 + p->run_len, eb);
                sg_seg s = {ti, pi, r, lo - s0, hi - lo, t->begin + lo * es,
                         r == p->nruns - 1 && hi == s0 + p->run_len};
                FM_TRY(fn(ctx, &s, e));
            }
        }
    }
    return 0;
}

/* ---- sources: one ranged reader per (rank, storage) this process uses ---- */

int sg_sources_init(sg_sources *s, const plan *pl, ptz_file *const *zips, int me, fm_err *e)
{
    memset(s, 0, sizeof *s);
    s->zips = zips;
    s->piece_base = malloc(sizeof(size_t) * (pl->ntensors + 1));
    if (s->piece_base == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    size_t total = 0;
    for (size_t i = 0; i < pl->ntensors; i++) {
        s->piece_base[i] = total;
        total += pl->tensors[i].npieces;
    }
    s->piece_base[pl->ntensors] = total;
    s->slot_of = malloc(sizeof(size_t) * (total ? total : 1));
    s->slots = calloc(total ? total : 1, sizeof *s->slots);
    if (s->slot_of == NULL || s->slots == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < pl->ntensors; i++) {
        for (size_t k = 0; k < pl->tensors[i].npieces; k++) {
            const plan_piece *p = &pl->tensors[i].pieces[k];
            size_t id = s->piece_base[i] + k, j;
            s->slot_of[id] = SIZE_MAX;
            if (p->proc != me) continue;
            if (zips[p->rank] == NULL) return fm_fail(e, FM_EINTERNAL, "rank %d's file is not open here", p->rank);
            for (j = 0; j < s->nslots; j++)
                if (s->slots[j].rank == p->rank && strcmp(s->slots[j].storage, p->view.storage) == 0) break;
            if (j == s->nslots) s->slots[s->nslots++] = (sg_slot){p->rank, p->view.storage, NULL, 0};
            s->slots[j].remaining++;
            s->slot_of[id] = j;
        }
    }
    return 0;
}

void sg_sources_free(sg_sources *s)
{
    for (size_t j = 0; j < s->nslots; j++) ptz_rec_close(s->slots[j].rec);
    free(s->slots);
    free(s->slot_of);
    free(s->piece_base);
    free(s->scratch);
}

static int src_context(fm_err *e, const sg_sources *s, const sg_slot *sl)
{
    return fm_context(e, "rank %d: %s", sl->rank, ptz_path(s->zips[sl->rank]));
}

/* The source elements of run `run` [j0, j0+n) of piece p, converted to `to`. */
static int read_run(ptz_file *z, ptz_rec *rec, const plan_tensor *t, const plan_piece *p, uint64_t run, uint64_t j0,
                    uint64_t n, dt_type to, uint8_t *dst, fm_err *e)
{
    size_t ses = dt_size(t->src_dtype), oes = dt_size(to);
    const uint8_t *b;
    if (p->src_contig) {
        uint64_t elem = (uint64_t)plan_run_src(p, run) + j0, left = n;
        uint64_t max = ptz_buffer_size(z) / ses;
        while (left > 0) {
            uint64_t take = FM_MIN(left, max);
            FM_TRY(ptz_rec_get(rec, elem * ses, take * ses, &b, e));
            dt_convert(t->src_dtype, to, b, dst, take, p->big_endian);
            dst += take * oes;
            elem += take;
            left -= take;
        }
        return 0;
    }
    for (uint64_t j = 0; j < n; j++) {
        uint64_t elem = (uint64_t)plan_src_elem(p, run, j0 + j);
        FM_TRY(ptz_rec_get(rec, elem * ses, ses, &b, e));
        dt_convert(t->src_dtype, to, b, dst + j * oes, 1, p->big_endian);
    }
    return 0;
}

/* A LoRA-fused weight: the saved W in fp32, plus scaling * (B @ A) for
 * these elements, rounded once to the output dtype. */
static int read_fused(sg_sources *s, ptz_file *z, ptz_rec *rec, const plan_tensor *t, const sg_seg *sg, uint8_t *dst,
                      fm_err *e)
{
    const plan_piece *p = &t->pieces[sg->piece];
    if (sg->n > s->scratch_cap) {
        float *nb = realloc(s->scratch, sizeof(float) * sg->n);
        if (nb == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        s->scratch = nb;
        s->scratch_cap = sg->n;
    }
    FM_TRY(read_run(z, rec, t, p, sg->run, sg->j0, sg->n, DT_F32, (uint8_t *)s->scratch, e));
    lr_delta(t, sg->piece, plan_run_first(t, p, sg->run) + sg->j0, sg->n, s->scratch);
    dt_convert(DT_F32, t->out_dtype, s->scratch, dst, sg->n, false);
    return 0;
}

int sg_read(sg_sources *s, const plan *pl, const sg_seg *sg, uint8_t *dst, fm_err *e)
{
    const plan_tensor *t = &pl->tensors[sg->tensor];
    const plan_piece *p = &t->pieces[sg->piece];
    sg_slot *sl = &s->slots[s->slot_of[s->piece_base[sg->tensor] + sg->piece]];
    ptz_file *z = s->zips[sl->rank];
    if (sl->rec == NULL && ptz_rec_open(z, sl->storage, &sl->rec, e)) return src_context(e, s, sl);
    int rc = t->fuse ? read_fused(s, z, sl->rec, t, sg, dst, e)
                     : read_run(z, sl->rec, t, p, sg->run, sg->j0, sg->n, t->out_dtype, dst, e);
    if (rc) return src_context(e, s, sl);
    s->bytes_read += sg->n * dt_size(t->src_dtype);
    if (s->crc32c) {
        uint64_t off = sg->out - t->begin, len = sg->n * dt_size(t->out_dtype);
        s->crc32c[sg->tensor] ^= crc32c_segment(dst, len, t->end - t->begin - off - len);
    }
    if (sg->last && --sl->remaining == 0) {
        rc = ptz_rec_finish(sl->rec, e);
        ptz_rec_close(sl->rec);
        sl->rec = NULL;
        if (rc) return src_context(e, s, sl);
    }
    return 0;
}

int sg_read_piece_f32(ptz_file *z, const plan_tensor *t, const plan_piece *p, float *dst, fm_err *e)
{
    ptz_rec *rec = NULL;
    int rc = ptz_rec_open(z, p->view.storage, &rec, e);
    for (uint64_t r = 0; r < p->nruns && rc == 0; r++)
        rc = read_run(z, rec, t, p, r, 0, p->run_len, DT_F32, (uint8_t *)(dst + r * p->run_len), e);
    if (rc == 0) rc = ptz_rec_finish(rec, e);
    ptz_rec_close(rec);
    if (rc) fm_context(e, "rank %d: %s", p->rank, ptz_path(z));
    return rc;
}

uint64_t sg_bytes_of(const plan *pl, int f, int proc)
{
    const plan_file *pf = &pl->files[f];
    uint64_t n = 0;
    for (size_t i = pf->first; i < pf->first + pf->count; i++) {
        const plan_tensor *t = &pl->tensors[i];
        for (size_t k = 0; k < t->npieces; k++)
            if (t->pieces[k].proc == proc) n += ti_view_numel(&t->pieces[k].view) * dt_size(t->out_dtype);
    }
    return n;
}

/* ---- one process's segments in file order ---- */

static void stream_reset(sg_stream *s)
{
    memset(s->run, 0, sizeof *s->run * s->cap);
    memset(s->j0, 0, sizeof *s->j0 * s->cap);
}

int sg_stream_init(sg_stream *s, const plan *pl, int f, int proc, fm_err *e)
{
    memset(s, 0, sizeof *s);
    s->pl = pl;
    s->file = f;
    s->proc = proc;
    s->tensor = pl->files[f].first;
    for (size_t i = pl->files[f].first; i < pl->files[f].first + pl->files[f].count; i++)
        s->cap = FM_MAX(s->cap, pl->tensors[i].npieces);
    s->cap = FM_MAX(s->cap, (size_t)1);
    s->run = calloc(s->cap, sizeof *s->run);
    s->j0 = calloc(s->cap, sizeof *s->j0);
    if (s->run == NULL || s->j0 == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    return 0;
}

/* Among this process's pieces of the tensor (several when it reads several
 * ranks), the one whose next element comes first in the file. */
static size_t next_piece(const sg_stream *s, const plan_tensor *t)
{
    size_t best = SIZE_MAX;
    uint64_t best_pos = UINT64_MAX;
    for (size_t k = 0; k < t->npieces; k++) {
        const plan_piece *p = &t->pieces[k];
        if (p->proc != s->proc || s->run[k] >= p->nruns) continue;
        uint64_t pos = plan_run_first(t, p, s->run[k]) + s->j0[k];
        if (pos < best_pos) {
            best_pos = pos;
            best = k;
        }
    }
    return best;
}

bool sg_stream_next(sg_stream *s, uint64_t max_bytes, sg_seg *out)
{
    const plan_file *pf = &s->pl->files[s->file];
    while (s->tensor < pf->first + pf->count) {
        const plan_tensor *t = &s->pl->tensors[s->tensor];
        size_t k = next_piece(s, t);
        if (k == SIZE_MAX) {
            s->tensor++;
            stream_reset(s);
            continue;
        }
        const plan_piece *p = &t->pieces[k];
        uint64_t es = dt_size(t->out_dtype);
        uint64_t take = FM_MIN(p->run_len - s->j0[k], FM_MAX(max_bytes / es, (uint64_t)1));
        uint64_t first = plan_run_first(t, p, s->run[k]);
        *out = (sg_seg){s->tensor, k, s->run[k], s->j0[k], take, t->begin + (first + s->j0[k]) * es,
                        s->run[k] == p->nruns - 1 && s->j0[k] + take == p->run_len};
        s->j0[k] += take;
        if (s->j0[k] == p->run_len) {
            s->run[k]++;
            s->j0[k] = 0;
        }
        return true;
    }
    return false;
}

void sg_stream_free(sg_stream *s)
{
    free(s->run);
    free(s->j0);
    memset(s, 0, sizeof *s);
}
