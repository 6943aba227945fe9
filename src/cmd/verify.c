/* verify.c - see verify.h. */
#include "cmd/verify.h"

#include "engine/h5out.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/comm.h"
#include "base/crc32c.h"
#include "base/numcmp.h"
#include "base/readahead.h"
#include "cmd/manifest.h"
#include "plan/segment.h"

#define RULE "======================================================================"

/* A short read means the file is shorter than its header says: a difference. */
static int read_at(int fd, const char *path, uint64_t off, void *buf, size_t n, fm_err *e)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return fm_fail(e, FM_EIO, "cannot read %s: %s", path, strerror(errno));
        if (k == 0) return fm_fail(e, FM_EDIFFER, "%s: ends at byte %" PRIu64 ", before the data its header describes (truncated?)", path, off);
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* A short output file is a difference, not a malformed input. */
static int as_difference(int rc, fm_err *e)
{
    if (rc == FM_EFORMAT) e->code = rc = FM_EDIFFER;
    return rc;
}

/* CRC-32C of bytes [off, off+len) of f, two chunks of VF_SEGMENT in flight
 * (r has nothing outstanding before and after, an error included: the
 * caller closes f next). */
static int crc_range(ra_reader *r, ra_file *f, uint64_t off, uint64_t len, uint32_t *crc, fm_err *e)
{
    uint64_t posted = 0, done = 0;
    uint32_t c = 0;
    int rc = 0, inflight = 0;
    while (rc == 0 && done < len) {
        while (rc == 0 && inflight < 2 && posted < len) {
            ra_range rg = {off + posted, FM_MIN(len - posted, (uint64_t)VF_SEGMENT)};
            rc = ra_post(r, f, &rg, 1, e);
            posted += rg.len;
            inflight++;
        }
        const uint8_t *const *at;
        if (rc == 0 && (rc = as_difference(ra_get(r, &at, e), e)) == 0) {
            size_t n = (size_t)FM_MIN(len - done, (uint64_t)VF_SEGMENT);
            c = crc32c_update(c, at[0], n);
            done += n;
            ra_done(r);
            inflight--;
        }
    }
    if (rc) ra_drain(r);
    *crc = c;
    return rc;
}

#ifdef FM_TEST_HOOKS
/* test builds only: FSDPMERGE_TEST_CORRUPT=OFFSET flips a byte of the first
 * output file between the write and the re-read (tests of --verify) */
static void test_corrupt(const char *path)
{
    const char *s = getenv("FSDPMERGE_TEST_CORRUPT");
    if (s == NULL) return;
    int fd = open(path, O_RDWR);
    uint8_t b;
    off_t off = (off_t)strtoull(s, NULL, 10);
    if (fd >= 0 && pread(fd, &b, 1, off) == 1) {
        b ^= 0x01;
        if (pwrite(fd, &b, 1, off) == 1) fsync(fd);
    }
    if (fd >= 0) close(fd);
}
#endif

/* Process me of nprocs checks file f's size and header when f % nprocs ==
 * me, and the tensors i with i % nprocs == me. */
static int reread_file(const char *dir, const plan *pl, size_t f, const uint32_t *crc, int me, int nprocs, ra_reader *r,
                       uint8_t *buf, uint64_t *bytes, fm_err *e)
{
    const plan_file *pf = &pl->files[f];
    char *path = fm_path_join(dir, pf->name);
    if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    bool whole = f % (size_t)nprocs == (size_t)me;
    ra_file rf = {0};
    int rc = ra_file_open(&rf, path, e);
    struct stat sb;
    if (rc) fm_context(e, "--verify");
    else if (whole && (fstat(rf.fd, &sb) != 0 || (uint64_t)sb.st_size != pf->size))
        rc = fm_fail(e, FM_EDIFFER, "--verify: %s holds %lld bytes on disk, %" PRIu64 " were written", pf->name,
                     (long long)sb.st_size, pf->size);
    /* the files were flushed: drop their clean pages so that even buffered reads come from the disk */
    if (rc == 0) posix_fadvise(rf.fd, 0, 0, POSIX_FADV_DONTNEED);
    if (rc == 0 && whole && pf->data_start <= VF_CHUNK && (rc = read_at(rf.fd, path, 0, buf, pf->data_start, e)) == 0 &&
        memcmp(buf, pf->header.data, pf->data_start) != 0)
        rc = fm_fail(e, FM_EDIFFER, "--verify: the header of %s read back from disk differs from the one written", pf->name);
    for (size_t i = pf->first; rc == 0 && i < pf->first + pf->count; i++) {
        const plan_tensor *t = &pl->tensors[i];
        uint32_t c = 0;
        if (i % (size_t)nprocs != (size_t)me) continue;
        *bytes += t->end - t->begin;
        rc = crc_range(r, &rf, pf->data_start + t->begin, t->end - t->begin, &c, e);
        if (rc == 0 && c != crc[i])
            rc = fm_fail(e, FM_EDIFFER, "--verify: tensor '%s' in %s read back from disk has CRC-32C %08" PRIx32
                         ", the bytes written had %08" PRIx32, t->name, pf->name, c, crc[i]);
    }
    if (whole) *bytes += pf->data_start;
    ra_file_close(&rf);
    free(path);
    return rc;
}

int vf_reread_all(const char *dir, const plan *pl, const uint32_t *crc, MPI_Comm comm, uint64_t *bytes, fm_err *e)
{
    int me, nprocs;
    MPI_Comm_rank(comm, &me);
    MPI_Comm_size(comm, &nprocs);
#ifdef FM_TEST_HOOKS
    if (me == 0 && pl->nfiles) {
        char *path = fm_path_join(dir, pl->files[0].name);
        if (path) test_corrupt(path);
        free(path);
    }
    MPI_Barrier(comm);
#endif
    uint8_t *buf = malloc(VF_CHUNK);
    ra_reader *r = NULL;
    int rc = buf ? ra_open(&r, VF_SEGMENT, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t f = 0; rc == 0 && f < pl->nfiles; f++) rc = reread_file(dir, pl, f, crc, me, nprocs, r, buf, bytes, e);
    ra_close(r);
    free(buf);
    return comm_agree_all(e, comm);
}

/* ---- against the checkpoint ---- */

/* This process's segments of every plan file, in order, cut into batches
 * of at most VF_SEGMENT bytes whose output bytes lie in one output file:
 * the read-ahead reads a batch of the output while the one before is read
 * from the shards, converted and compared. */
typedef struct vf_batch {
    sg_seg seg[RA_MAX_RANGES];
    int range[RA_MAX_RANGES]; /* segment -> its output range, -1 when not compared */
    ra_range rng[RA_MAX_RANGES];
    size_t nseg, nrng;
    uint64_t bytes;
    int ofile;
} vf_batch;

typedef struct vf_walk {
    const plan *pl;
    const sr_model *outm;
    const sr_tensor *const *where;
    ra_file *rf; /* one per output file, opened on first use */
    int me;
    size_t f;
    bool open, pending;
    sg_stream st;
    sg_seg next;
} vf_walk;

static bool walk_next(vf_walk *w, sg_seg *sg, fm_err *e)
{
    if (w->pending) {
        w->pending = false;
        *sg = w->next;
        return true;
    }
    while (w->f < w->pl->nfiles) {
        if (!w->open && sg_stream_init(&w->st, w->pl, (int)w->f, w->me, e) != 0) return false;
        w->open = true;
        if (sg_stream_next(&w->st, VF_CHUNK, sg)) return true;
        sg_stream_free(&w->st);
        w->open = false;
        w->f++;
    }
    return false;
}

static int fill_batch(vf_walk *w, vf_batch *b, fm_err *e)
{
    sg_seg sg;
    b->nseg = b->nrng = 0;
    b->bytes = 0;
    while (b->nseg < RA_MAX_RANGES && walk_next(w, &sg, e)) {
        const plan_tensor *t = &w->pl->tensors[sg.tensor];
        const sr_tensor *o = w->where[sg.tensor];
        uint64_t len = sg.n * dt_size(t->out_dtype);
        if (b->nseg && (b->bytes + len > VF_SEGMENT || (o && b->nrng && o->file != b->ofile))) {
            w->next = sg;
            w->pending = true;
            break;
        }
        b->range[b->nseg] = -1;
        if (o) {
            ra_file *rf = &w->rf[o->file];
            if (rf->path == NULL && ra_file_open(rf, w->outm->files[o->file].path, e) != 0) return e->code;
            b->ofile = o->file;
            b->rng[b->nrng] = (ra_range){o->begin + (sg.out - t->begin), len};
            b->range[b->nseg] = (int)b->nrng++;
        }
        b->seg[b->nseg++] = sg;
        b->bytes += len;
    }
    return e->code;
}

/* Converts the batch's segments and compares them with the output bytes at[]. */
static int compare_batch(const vf_walk *w, const vf_batch *b, const uint8_t *const *at, sg_sources *src, uint8_t *mine,
                         uint64_t *first_diff, uint64_t *bytes, fm_err *e)
{
    for (size_t k = 0; k < b->nseg; k++) {
        const sg_seg *sg = &b->seg[k];
        const plan_tensor *t = &w->pl->tensors[sg->tensor];
        size_t es = dt_size(t->out_dtype), len = (size_t)(sg->n * es);
        FM_TRY(sg_read(src, w->pl, sg, mine, e)); /* read even when skipped: the records' CRCs are checked */
        if (b->range[k] < 0) continue;
        const uint8_t *theirs = at[b->range[k]];
        *bytes += len;
        if (memcmp(mine, theirs, len) == 0) continue;
        size_t i = 0;
        while (memcmp(mine + i * es, theirs + i * es, es) == 0) i++;
        uint64_t elem = (sg->out - t->begin) / es + i;
        if (elem < first_diff[sg->tensor]) first_diff[sg->tensor] = elem;
    }
    return 0;
}

static int compare_all(vf_walk *w, sg_sources *src, ra_reader *r, vf_batch *b, uint8_t *mine, uint64_t *first_diff,
                       uint64_t *bytes, fm_err *e)
{
    int i = 0;
    for (int k = 0; k < 2; k++) {
        FM_TRY(fill_batch(w, &b[k], e));
        if (b[k].nseg) FM_TRY(ra_post(r, &w->rf[b[k].ofile], b[k].rng, b[k].nrng, e));
    }
    while (b[i].nseg) {
        const uint8_t *const *at;
        FM_TRY(as_difference(ra_get(r, &at, e), e));
        FM_TRY(compare_batch(w, &b[i], at, src, mine, first_diff, bytes, e));
        ra_done(r);
        FM_TRY(fill_batch(w, &b[i], e));
        if (b[i].nseg) FM_TRY(ra_post(r, &w->rf[b[i].ofile], b[i].rng, b[i].nrng, e));
        i ^= 1;
    }
    return 0;
}

int vf_compare_segments(const plan *pl, ptz_file *const *zips, const sr_model *outm, const sr_tensor *const *where,
                        int me, uint64_t *first_diff, uint64_t *bytes, fm_err *e)
{
    vf_walk w = {.pl = pl, .outm = outm, .where = where, .me = me};
    sg_sources src;
    ra_reader *r = NULL;
    uint8_t *mine = malloc(VF_CHUNK);
    vf_batch *b = calloc(2, sizeof *b);
    w.rf = calloc(outm->nfiles + 1, sizeof *w.rf);
    int rc = mine && b && w.rf ? ra_open(&r, VF_SEGMENT, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    bool have_src = rc == 0 && sg_sources_init(&src, pl, zips, me, e) == 0;
    if (have_src) rc = compare_all(&w, &src, r, b, mine, first_diff, bytes, e);
    else rc = e->code;
    ra_close(r); /* before the files it may still be reading are closed */
    if (have_src) sg_sources_free(&src);
    if (w.open) sg_stream_free(&w.st);
    for (size_t k = 0; w.rf && k < outm->nfiles; k++) ra_file_close(&w.rf[k]);
    free(w.rf);
    free(b);
    free(mine);
    return rc;
}

/* ---- verify OUT --checkpoint_path CKPT: one plan against what OUT holds ---- */

void vf_bad(vf_report *v, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fm_buf_printf(&v->lines, "  MISMATCH %s\n", line);
    v->bad++;
}

/* Names, dtypes, shapes and files (identical on every process). */
static void check_layout(const plan *pl, const sr_model *outm, bool files, const sr_tensor **where, vf_report *v)
{
    for (size_t i = 0; i < pl->ntensors; i++) {
        const plan_tensor *t = &pl->tensors[i];
        const sr_tensor *o = sr_find(outm, t->name);
        if (o == NULL) {
            vf_bad(v, "%s: a merge writes it, the output lacks it", t->name);
            continue;
        }
        if (o->dtype != t->out_dtype || o->ndim != t->ndim || memcmp(o->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim))
            vf_bad(v, "%s: %s of %d dims in the output, a merge writes %s of %d dims (shape or dtype differs; --dtype?)",
                   t->name, dt_st_name(o->dtype), o->ndim, dt_st_name(t->out_dtype), t->ndim);
        else
            where[i] = o;
        if (files && strcmp(outm->files[o->file].name, pl->files[t->file].name) != 0)
            vf_bad(v, "%s: in %s, a merge puts it in %s (--max-shard-size?)", t->name, outm->files[o->file].name,
                   pl->files[t->file].name);
    }
    for (size_t i = 0; i < outm->ntensors; i++) {
        bool known = false;
        for (size_t k = 0; k < pl->ntensors && !known; k++) known = strcmp(pl->tensors[k].name, outm->tensors[i].name) == 0;
        if (!known) vf_bad(v, "%s: in the output, not in the checkpoint", outm->tensors[i].name);
    }
}

void vf_check_text(vf_report *v, const char *what, const char *want, size_t wlen, const char *have, size_t hlen)
{
    if (have && wlen == hlen && memcmp(want, have, wlen) == 0) return;
    if (have == NULL) {
        vf_bad(v, "%s: a merge writes it, the output lacks it", what);
        return;
    }
    size_t i = 0, line = 1, start = 0;
    while (i < wlen && i < hlen && want[i] == have[i])
        if (want[i++] == '\n') line++, start = i;
    int wl = (int)(strcspn(want + start, "\n")), hl = (int)(strcspn(have + start, "\n"));
    vf_bad(v, "%s: line %zu is '%.*s' in the output, a merge writes '%.*s'", what, line, FM_MIN(hl, 200), have + start,
           FM_MIN(wl, 200), want + start);
}

static void check_index(const plan *pl, const sr_model *outm, const char *stem, vf_report *v)
{
    char name[128];
    snprintf(name, sizeof name, "%s.safetensors.index.json", stem);
    if (pl->index_json)
        vf_check_text(v, name, pl->index_json, strlen(pl->index_json), outm->index_text,
                      outm->index_text ? strlen(outm->index_text) : 0);
    else if (outm->index_text)
        vf_bad(v, "%s: in the output, a merge writes one %s.safetensors", name, stem);
}

/* pl against outm, opened (or failed, in e) on every process; stem NULL for
 * model.h5: one file, no placement in files, no index. */
static int plan_against(const plan *pl, ptz_file *const *zips, sr_model outm, const char *stem, MPI_Comm comm,
                        vf_report *v, uint64_t *bytes, fm_err *e)
{
    int me;
    MPI_Comm_rank(comm, &me);
    if (e->code == FM_EFORMAT) e->code = FM_EDIFFER;
    const sr_tensor **where = calloc(pl->ntensors + 1, sizeof *where);
    uint64_t *first = malloc((pl->ntensors + 1) * sizeof *first);
    if (e->code == 0 && (where == NULL || first == NULL)) fm_fail(e, FM_ENOMEM, "out of memory");
    int rc = comm_agree_all(e, comm);
    if (rc == 0) {
        check_layout(pl, &outm, stem != NULL, where, v);
        for (size_t i = 0; i < pl->ntensors; i++) first[i] = UINT64_MAX;
        vf_compare_segments(pl, zips, &outm, where, me, first, bytes, e);
        rc = comm_agree_all(e, comm);
    }
    if (rc == 0 && pl->ntensors) /* plans stay far below 2^31 tensors */
        MPI_Allreduce(MPI_IN_PLACE, first, (int)pl->ntensors, MPI_UINT64_T, MPI_MIN, comm);
    for (size_t i = 0; rc == 0 && me == 0 && i < pl->ntensors; i++) {
        if (first[i] == UINT64_MAX) continue;
        fm_buf d = {0};
        vf_describe_elem(&d, where[i], outm.files[where[i]->file].path, first[i]);
        fm_buf_putc(&d, '\0');
        vf_bad(v, "%s: first difference at %s in the output", pl->tensors[i].name, d.data ? (char *)d.data : "?");
        fm_buf_free(&d);
    }
    if (rc == 0 && stem) check_index(pl, &outm, stem, v);
    sr_free(&outm);
    free(where);
    free(first);
    return rc;
}

int vf_plan_all(const plan *pl, ptz_file *const *zips, const char *dir, const char *stem, MPI_Comm comm, vf_report *v,
                uint64_t *bytes, fm_err *e)
{
    sr_model outm;
    sr_open(dir, stem, &outm, e);
    return plan_against(pl, zips, outm, stem, comm, v, bytes, e);
}

int vf_plan_h5(const plan *pl, ptz_file *const *zips, const char *path, MPI_Comm comm, vf_report *v, uint64_t *bytes,
               fm_err *e)
{
    sr_model outm;
    h5_read_layout(path, &outm, e);
    return plan_against(pl, zips, outm, NULL, comm, v, bytes, e);
}

/* ---- describing a difference ---- */

void vf_describe_elem(fm_buf *b, const sr_tensor *t, const char *path, uint64_t elem)
{
    fm_buf_printf(b, "element %" PRIu64 " [", elem);
    uint64_t rest = elem;
    int64_t idx[SR_MAX_DIMS] = {0};
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] > 0) {
            idx[d] = (int64_t)(rest % (uint64_t)t->shape[d]);
            rest /= (uint64_t)t->shape[d];
        }
    }
    for (int d = 0; d < t->ndim; d++) fm_buf_printf(b, "%s%" PRId64, d ? ", " : "", idx[d]);
    fm_buf_puts(b, "]");
    size_t es = dt_size(t->dtype);
    uint8_t raw[8];
    fm_err ignore = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && elem < t->numel && read_at(fd, path, t->begin + elem * es, raw, es, &ignore) == 0) {
        double v;
        if (dt_is_float(t->dtype) && dt_convert(t->dtype, DT_F64, raw, &v, 1, false)) fm_buf_printf(b, " = %.9g", v);
        else {
            fm_buf_puts(b, " = 0x");
            for (size_t k = es; k-- > 0;) fm_buf_printf(b, "%02x", raw[k]);
        }
    }
    if (fd >= 0) close(fd);
}

/* ---- the verify command without a checkpoint ---- */

typedef struct vrun {
    const cli_opts *o;
    int me, nprocs;
    sr_model outm, refm;
    vf_report rep;          /* this process's report lines */
    uint64_t checked, bytes;
    uint8_t *a, *b;         /* VF_CHUNK each */
    double *scratch;        /* 2 * VF_CHUNK / 8 doubles: chunks converted to float64 */
    ra_reader *ra;          /* by manifest: the output read ahead */
    ra_file *rf;            /* one per output file, opened on first use */
} vrun;

static int check_manifest_tensor(vrun *v, const mf_tensor *mt, fm_err *e)
{
    const sr_tensor *t = sr_find(&v->outm, mt->name);
    if (t == NULL) {
        vf_bad(&v->rep, "%s: in the manifest, not in the safetensors files", mt->name);
        return 0;
    }
    const char *file = v->outm.files[t->file].name;
    if (strcmp(file, mt->file) != 0 || strcmp(dt_st_name(t->dtype), mt->dtype) != 0) {
        vf_bad(&v->rep, "%s: in %s as %s, the manifest says %s as %s", mt->name, file, dt_st_name(t->dtype), mt->file, mt->dtype);
        return 0;
    }
    ra_file *rf = &v->rf[t->file];
    uint32_t c = 0;
    if (rf->path == NULL) FM_TRY(ra_file_open(rf, v->outm.files[t->file].path, e));
    FM_TRY(crc_range(v->ra, rf, t->begin, t->end - t->begin, &c, e));
    v->checked++;
    v->bytes += t->end - t->begin;
    if (c != mt->crc32c)
        vf_bad(&v->rep, "%s (%s): CRC-32C %08" PRIx32 ", the manifest says %08" PRIx32, mt->name, file, c, mt->crc32c);
    return 0;
}

static int by_manifest(vrun *v, fm_err *e)
{
    char *path = fm_path_join(v->o->verify_dir, MF_NAME), *text = NULL;
    size_t len = 0;
    mf_manifest m;
    memset(&m, 0, sizeof m);
    v->rf = calloc(v->outm.nfiles + 1, sizeof *v->rf);
    int rc = path && v->rf ? ra_open(&v->ra, VF_SEGMENT, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0 && (rc = fm_read_file(path, 1u << 30, &text, &len, e)) == FM_EIO)
        fm_context(e, "verify without --checkpoint_path or --reference needs the manifest a merge writes");
    if (rc == 0) rc = mf_parse(text, len, &m, e);
    for (size_t i = (size_t)v->me; rc == 0 && i < m.ntensors; i += (size_t)v->nprocs) rc = check_manifest_tensor(v, &m.tensors[i], e);
    /* tensors in the files that the manifest does not list */
    for (size_t i = (size_t)v->me; rc == 0 && i < v->outm.ntensors; i += (size_t)v->nprocs) {
        bool listed = false;
        for (size_t k = 0; k < m.ntensors && !listed; k++) listed = strcmp(m.tensors[k].name, v->outm.tensors[i].name) == 0;
        if (!listed) vf_bad(&v->rep, "%s: in the safetensors files, not in the manifest", v->outm.tensors[i].name);
    }
    ra_close(v->ra);
    for (size_t k = 0; v->rf && k < v->outm.nfiles; k++) ra_file_close(&v->rf[k]);
    free(v->rf);
    mf_free(&m);
    free(text);
    free(path);
    return rc;
}

/* First differing element of two tensors of one shape (base/numcmp.h), in chunks. */
static int compare_data(vrun *v, const sr_tensor *ta, const sr_tensor *tb, uint64_t *first, fm_err *e)
{
    const char *pa = v->outm.files[ta->file].path, *pb = v->refm.files[tb->file].path;
    nc_tol tol = {v->o->atol, v->o->rtol};
    size_t ea = dt_size(ta->dtype), eb = dt_size(tb->dtype), per = VF_CHUNK / 8;
    int fa = open(pa, O_RDONLY | O_CLOEXEC), fb = open(pb, O_RDONLY | O_CLOEXEC), rc = 0;
    if (fa < 0 || fb < 0) rc = fm_fail(e, FM_EIO, "cannot open %s: %s", fa < 0 ? pa : pb, strerror(errno));
    *first = UINT64_MAX;
    for (uint64_t at = 0; rc == 0 && at < ta->numel && *first == UINT64_MAX; at += per) {
        size_t n = (size_t)FM_MIN((uint64_t)per, ta->numel - at);
        rc = read_at(fa, pa, ta->begin + at * ea, v->a, n * ea, e);
        if (rc == 0) rc = read_at(fb, pb, tb->begin + at * eb, v->b, n * eb, e);
        size_t k = rc == 0 ? nc_first_diff(ta->dtype, v->a, tb->dtype, v->b, n, &tol, v->scratch) : n;
        if (k < n) *first = at + k;
    }
    if (fa >= 0) close(fa);
    if (fb >= 0) close(fb);
    v->bytes += ta->end - ta->begin;
    return rc;
}

static int check_reference_tensor(vrun *v, const sr_tensor *tb, fm_err *e)
{
    const sr_tensor *ta = sr_find(&v->outm, tb->name);
    if (ta == NULL) {
        vf_bad(&v->rep, "%s: in the reference, missing from the output", tb->name);
        return 0;
    }
    bool same_shape = ta->ndim == tb->ndim && memcmp(ta->shape, tb->shape, sizeof(int64_t) * (size_t)ta->ndim) == 0;
    nc_tol tol = {v->o->atol, v->o->rtol};
    bool convertible = nc_comparable(ta->dtype, tb->dtype, &tol);
    if (!same_shape || !convertible) {
        vf_bad(&v->rep, "%s: %s of %d dims in the output, %s of %d dims in the reference%s", tb->name, dt_st_name(ta->dtype),
                 ta->ndim, dt_st_name(tb->dtype), tb->ndim,
                 same_shape ? " (give --atol/--rtol to compare values across float dtypes)" : " (shapes differ)");
        return 0;
    }
    uint64_t first;
    FM_TRY(compare_data(v, ta, tb, &first, e));
    v->checked++;
    if (first == UINT64_MAX) return 0;
    fm_buf d1 = {0}, d2 = {0};
    vf_describe_elem(&d1, ta, v->outm.files[ta->file].path, first);
    vf_describe_elem(&d2, tb, v->refm.files[tb->file].path, first);
    fm_buf_putc(&d1, '\0');
    fm_buf_putc(&d2, '\0');
    const char *s2 = strchr((char *)d2.data, '=');
    vf_bad(&v->rep, "%s: first difference at %s in the output, %s in the reference", tb->name, (char *)d1.data, s2 ? s2 + 2 : "?");
    fm_buf_free(&d1);
    fm_buf_free(&d2);
    return 0;
}

static int by_reference(vrun *v, fm_err *e)
{
    FM_TRY(sr_open(v->o->reference, "model", &v->refm, e));
    for (size_t i = (size_t)v->me; i < v->refm.ntensors; i += (size_t)v->nprocs)
        FM_TRY(check_reference_tensor(v, &v->refm.tensors[i], e));
    for (size_t i = (size_t)v->me; i < v->outm.ntensors; i += (size_t)v->nprocs)
        if (sr_find(&v->refm, v->outm.tensors[i].name) == NULL)
            vf_bad(&v->rep, "%s: in the output, not in the reference", v->outm.tensors[i].name);
    return 0;
}

/* Rank 0 prints every process's lines, then the summary. */
static int report(vrun *v, MPI_Comm comm, FILE *out, const char *against, double secs, fm_err *e)
{
    uint8_t *all = NULL;
    uint64_t *offs = NULL, mine[3] = {v->checked, v->rep.bad, v->bytes}, sum[3];
    FM_TRY(comm_allgather_blobs_all(v->rep.lines.data, v->rep.lines.len, comm, &all, &offs, e));
    MPI_Allreduce(mine, sum, 3, MPI_UINT64_T, MPI_SUM, comm);
    if (v->me == 0 && !v->o->quiet) {
        fwrite(all, 1, offs[v->nprocs], out);
        char sz[32];
        fprintf(out, "%s %" PRIu64 " tensors checked against %s, %s read in %.2f s: %" PRIu64 " mismatch%s\n",
                sum[1] ? "\xe2\x9c\x97" : "\xe2\x9c\x85", sum[0], against, fm_format_bytes(sum[2], sz, sizeof sz), secs,
                sum[1], sum[1] == 1 ? "" : "es");
        fflush(out);
    }
    free(all);
    free(offs);
    if (sum[1]) return fm_fail(e, FM_EDIFFER, "%s differs from %s: %" PRIu64 " mismatch%s (listed above)", v->o->verify_dir,
                               against, sum[1], sum[1] == 1 ? "" : "es");
    return 0;
}

void vf_manifest_defaults(cli_opts *o)
{
    char *path = fm_path_join(o->verify_dir, MF_NAME), *text = NULL;
    size_t len = 0;
    fm_err ignore = {0};
    mf_manifest m;
    memset(&m, 0, sizeof m);
    if (path && fm_read_file(path, 1u << 30, &text, &len, &ignore) == 0 && mf_parse(text, len, &m, &ignore) == 0) {
        dt_type d = m.dtype ? dt_from_torch_name(m.dtype) : DT_INVALID;
        if (!o->dtype_given && m.dtype && (strcmp(m.dtype, "auto") == 0 || d != DT_INVALID)) o->dtype = d;
        if (!o->shard_size_given && m.max_shard_size) o->max_shard_size = m.max_shard_size;
    }
    mf_free(&m);
    free(text);
    free(path);
}

int vf_run_all(const cli_opts *o, MPI_Comm comm, FILE *out, fm_err *e)
{
    vrun v;
    memset(&v, 0, sizeof v);
    v.o = o;
    MPI_Comm_rank(comm, &v.me);
    MPI_Comm_size(comm, &v.nprocs);
    double t0 = MPI_Wtime();
    v.a = malloc(VF_CHUNK);
    v.b = malloc(VF_CHUNK);
    v.scratch = malloc(2 * (VF_CHUNK / 8) * sizeof(double));
    if (!v.a || !v.b || !v.scratch) fm_fail(e, FM_ENOMEM, "out of memory");
    if (e->code == 0 && sr_open(o->verify_dir, "model", &v.outm, e) != 0 && e->code == FM_EFORMAT)
        e->code = FM_EDIFFER; /* a malformed output is a difference */
    else if (e->code == 0) {
        if (v.me == 0 && !o->quiet)
            fprintf(out, "Verifying %s (%zu tensors in %zu file%s) against %s...\n", o->verify_dir, v.outm.ntensors,
                    v.outm.nfiles, v.outm.nfiles == 1 ? "" : "s", o->reference ? o->reference : "its manifest");
        if (o->reference) by_reference(&v, e);
        else by_manifest(&v, e);
    }
    int rc = comm_agree_all(e, comm);
    if (rc == 0) rc = report(&v, comm, out, o->reference ? o->reference : MF_NAME, MPI_Wtime() - t0, e);
    sr_free(&v.outm);
    sr_free(&v.refm);
    fm_buf_free(&v.rep.lines);
    free(v.a);
    free(v.b);
    free(v.scratch);
    return rc;
}
