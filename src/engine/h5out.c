/* h5out.c - the HDF5 engine: one model.h5 written in parallel (see h5out.h).
 *
 * Per tensor, every process runs the same sequence of collective HDF5 calls:
 * H5Dcreate2 + the attributes (identical arguments everywhere, collective
 * metadata), then nwrites[t] collective H5Dwrite calls, where nwrites[t] is
 * the most writes any process needs for that tensor (one MPI_Allreduce over
 * all tensors at the start). A process with nothing (more) to write takes
 * part with an empty selection.
 *
 * What a process writes: its pieces of the tensor (plan.h: a piece is a
 * block at goff with shape view.shape), cut into sub-blocks that fit the
 * window. A sub-block fixes one index in each dim before some dim s, takes
 * `rows` indices of dim s and all of the block's dims after s; s is the
 * first dim whose trailing block fits, so a piece whose rows fit is cut
 * along dim 0 only. A sub-block is thus a hyperslab of the dataset and a
 * contiguous range of the piece's row-major order, which is the order of its
 * runs: the data comes from sg_read() run by run.
 */
#include "engine/h5out.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/comm.h"
#include "base/fsspace.h"
#include "base/watchdog.h"
#include "base/dtype.h"
#include "plan/segment.h"
#include "base/util.h"

#ifndef FM_VERSION
#define FM_VERSION "0.0.0"
#endif

void h5_opts_init(h5_opts *o)
{
    memset(o, 0, sizeof *o);
    o->window = H5_DEFAULT_WINDOW;
    o->info = MPI_INFO_NULL;
    o->align_threshold = H5_DEFAULT_ALIGN;
    o->alignment = H5_DEFAULT_ALIGN;
    o->fsync = true;
    o->source_world_size = 0;
}

/* A dataset at the root is addressed by its name as an HDF5 path: '/' would
 * make groups of it, and "." is the root itself. Refused rather than escaped,
 * so that f[name] in h5py always finds the tensor under its own name. */
int h5_check_names(const plan *pl, fm_err *e)
{
    for (size_t i = 0; i < pl->ntensors; i++) {
        const char *n = pl->tensors[i].name;
        if (n[0] == '\0' || strcmp(n, ".") == 0 || strchr(n, '/') != NULL)
            return fm_fail(e, FM_EUNSUPPORTED,
                           "tensor '%s' (key '%s'): a name that is empty, \".\" or contains '/' cannot be an HDF5 "
                           "dataset name at the root of the file; use --format safetensors",
                           n, pl->tensors[i].key);
    }
    return 0;
}

uint64_t h5_size_estimate(const plan *pl, const h5_opts *o)
{
    uint64_t total = 1u << 20; /* superblock, root group, attributes (config.json) */
    for (size_t i = 0; i < pl->ntensors; i++) {
        uint64_t n = pl->tensors[i].numel * dt_size(pl->tensors[i].out_dtype);
        if (o->alignment > 1 && n >= o->align_threshold) n += o->alignment - 1; /* the padding before it */
        total += n + 4096; /* its object header and attributes */
    }
    return total;
}

#ifndef FM_HAVE_HDF5

bool h5_available(void) { return false; }

int h5_read_layout(const char *path, sr_model *m, fm_err *e)
{
    memset(m, 0, sizeof *m);
    return fm_fail(e, FM_EUNSUPPORTED, "%s: this fsdpmerge was built without HDF5", path);
}

int h5_write_all(const plan *pl, ptz_file *const *zips, const char *path, const h5_opts *o, xf_progress_fn progress,
                 void *pctx, MPI_Comm comm, xf_stats *stats, fm_err *e)
{
    (void)pl, (void)zips, (void)o, (void)progress, (void)pctx, (void)comm;
    if (stats) memset(stats, 0, sizeof *stats);
    return fm_fail(e, FM_EUNSUPPORTED,
                   "%s: this fsdpmerge was built without parallel HDF5 (install libhdf5-openmpi-dev and rebuild)", path);
}

#else /* FM_HAVE_HDF5 */

#if !defined(H5_HAVE_PARALLEL)
#error "h5out.c needs the parallel (MPI) build of HDF5: pkg-config hdf5-openmpi"
#endif

bool h5_available(void) { return true; }

/* ---- errors ---- */

typedef struct h5_reason {
    char desc[384];
    char minor[128];
} h5_reason;

/* H5E_WALK_UPWARD starts at the innermost record: the most specific reason. */
static herr_t first_reason(unsigned n, const H5E_error2_t *err, void *data)
{
    h5_reason *r = data;
    if (n == 0) {
        snprintf(r->desc, sizeof r->desc, "%s", err->desc ? err->desc : "");
        if (H5Eget_msg(err->min_num, NULL, r->minor, sizeof r->minor) < 0) r->minor[0] = '\0';
    }
    return 0;
}

/* fm_fail() with "<what>: <HDF5's innermost reason>"; clears HDF5's stack. */
static int h5_fail(fm_err *e, const char *fmt, ...) FM_PRINTF(2, 3);
static int h5_fail(fm_err *e, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    h5_reason r = {"", ""};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, first_reason, &r);
    H5Eclear2(H5E_DEFAULT);
    if (r.desc[0] && r.minor[0]) return fm_fail(e, FM_EIO, "HDF5: %s failed: %s (%s)", what, r.desc, r.minor);
    if (r.desc[0] || r.minor[0]) return fm_fail(e, FM_EIO, "HDF5: %s failed: %s", what, r.desc[0] ? r.desc : r.minor);
    return fm_fail(e, FM_EIO, "HDF5: %s failed", what);
}

static void close_id(hid_t *id, herr_t (*fn)(hid_t))
{
    if (*id >= 0) fn(*id);
    *id = H5I_INVALID_HID;
}

/* ---- element types ---- */

/* A 16-bit float derived from IEEE binary32. Order matters: the fields must
 * lie inside the precision, and the precision inside the size, after every
 * call; so fields first (inside 32 bits), then precision, then size. */
static hid_t float16_like(size_t epos, size_t esize, size_t msize, size_t ebias)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0) return H5I_INVALID_HID;
    if (H5Tset_fields(t, 15, epos, esize, 0, msize) < 0 || H5Tset_precision(t, 16) < 0 || H5Tset_offset(t, 0) < 0 ||
        H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, ebias) < 0 || H5Tset_norm(t, H5T_NORM_IMPLIED) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

hid_t h5_bf16_type(void) { return float16_like(7, 8, 7, 127); }

/* IEEE binary16: HDF5 1.10 predefines none; this is the layout h5py
 * writes for numpy.float16 (and reads back as float16). */
static hid_t f16_type(void) { return float16_like(10, 5, 10, 15); }

/* complex as h5py stores it: a compound {r, i} of two IEEE floats */
static hid_t complex_type(hid_t part, size_t half)
{
    hid_t t = H5Tcreate(H5T_COMPOUND, 2 * half);
    if (t < 0) return H5I_INVALID_HID;
    if (H5Tinsert(t, "r", 0, part) < 0 || H5Tinsert(t, "i", half, part) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

hid_t h5_file_type(dt_type t)
{
    switch (t) {
    case DT_F64: return H5Tcopy(H5T_IEEE_F64LE);
    case DT_F32: return H5Tcopy(H5T_IEEE_F32LE);
    case DT_F16: return f16_type();
    case DT_BF16: return h5_bf16_type();
    case DT_I64: return H5Tcopy(H5T_STD_I64LE);
    case DT_I32: return H5Tcopy(H5T_STD_I32LE);
    case DT_I16: return H5Tcopy(H5T_STD_I16LE);
    case DT_I8: return H5Tcopy(H5T_STD_I8LE);
    case DT_U8: return H5Tcopy(H5T_STD_U8LE);
    case DT_U16: return H5Tcopy(H5T_STD_U16LE);
    case DT_U32: return H5Tcopy(H5T_STD_U32LE);
    case DT_U64: return H5Tcopy(H5T_STD_U64LE);
    case DT_BOOL: return H5Tcopy(H5T_STD_U8LE); /* torch stores 0/1 bytes */
    case DT_C64: return complex_type(H5T_IEEE_F32LE, 4);
    case DT_C128: return complex_type(H5T_IEEE_F64LE, 8);
    /* float8 formats: e4m3fn/fnuz use the all-ones exponent for numbers, so
     * an HDF5 float type would convert them wrongly; keep the raw bits */
    case DT_F8_E4M3:
    case DT_F8_E5M2:
    case DT_F8_E4M3FNUZ:
    case DT_F8_E5M2FNUZ: return H5Tcopy(H5T_STD_U8LE);
    default: return H5I_INVALID_HID;
    }
}

/* ---- cutting pieces into sub-blocks ---- */

typedef struct geom {
    int s;          /* the cut dim */
    uint64_t inner; /* elements per index of dim s: product of the block's dims after s */
    uint64_t rows;  /* indices of dim s per sub-block */
    uint64_t per;   /* sub-blocks per index of the dims before s */
    uint64_t total; /* sub-blocks of the piece */
    bool contig;    /* each sub-block is one contiguous range of the tensor */
} geom;

static void piece_geom(const plan_tensor *t, const plan_piece *p, uint64_t cap, geom *g)
{
    int n = t->ndim;
    *g = (geom){0, 1, 1, 1, 1, true};
    if (n == 0) return;
    uint64_t suffix[TI_MAX_DIMS];
    suffix[n - 1] = 1;
    for (int d = n - 2; d >= 0; d--) suffix[d] = suffix[d + 1] * (uint64_t)p->view.shape[d + 1];
    int s = 0;
    while (suffix[s] > cap) s++; /* ends at n-1 at the latest: suffix[n-1] = 1 <= cap */
    uint64_t len = (uint64_t)p->view.shape[s], outer = 1;
    for (int d = 0; d < s; d++) outer *= (uint64_t)p->view.shape[d];
    g->s = s;
    g->inner = suffix[s];
    g->rows = FM_MAX(FM_MIN(len, cap / g->inner), (uint64_t)1);
    g->per = (len + g->rows - 1) / g->rows;
    g->total = outer * g->per;
    for (int d = s + 1; d < n; d++)
        if (p->view.shape[d] != t->shape[d]) g->contig = false;
}

typedef struct chunk {
    size_t piece;
    uint64_t lo, n;   /* elements [lo, lo+n) of the piece in row-major block order */
    uint64_t tfirst;  /* row-major index in the tensor of the first element */
    bool contig;
    hsize_t start[TI_MAX_DIMS], count[TI_MAX_DIMS];
} chunk;

/* Sub-block ci of piece pi (geometry g). */
static void chunk_at(const plan_tensor *t, size_t pi, const geom *g, uint64_t ci, chunk *c)
{
    const plan_piece *p = &t->pieces[pi];
    int s = g->s;
    c->piece = pi;
    c->contig = g->contig;
    if (t->ndim == 0) {
        c->lo = c->tfirst = 0;
        c->n = 1;
        return;
    }
    uint64_t o = ci / g->per, r0 = (ci % g->per) * g->rows, len = (uint64_t)p->view.shape[s];
    uint64_t nr = FM_MIN(g->rows, len - r0);
    c->lo = (o * len + r0) * g->inner;
    c->n = nr * g->inner;
    for (int d = s - 1; d >= 0; d--) {
        uint64_t dim = (uint64_t)p->view.shape[d];
        c->start[d] = (hsize_t)p->goff[d] + o % dim;
        c->count[d] = 1;
        o /= dim;
    }
    c->start[s] = (hsize_t)p->goff[s] + r0;
    c->count[s] = nr;
    for (int d = s + 1; d < t->ndim; d++) {
        c->start[d] = (hsize_t)p->goff[d];
        c->count[d] = (hsize_t)p->view.shape[d];
    }
    c->tfirst = 0;
    for (int d = 0; d < t->ndim; d++) c->tfirst += (uint64_t)c->start[d] * (uint64_t)t->gstride[d];
}

/* One process's sub-blocks of one tensor, piece by piece (plan order). */
typedef struct cursor {
    const plan_tensor *t;
    int me;
    uint64_t cap; /* elements per write */
    size_t piece; /* current piece, npieces at the end */
    uint64_t next;
    geom g;
} cursor;

static void seek_mine(cursor *c)
{
    while (c->piece < c->t->npieces && c->t->pieces[c->piece].proc != c->me) c->piece++;
    c->next = 0;
    if (c->piece < c->t->npieces) piece_geom(c->t, &c->t->pieces[c->piece], c->cap, &c->g);
}

static void cursor_init(cursor *c, const plan_tensor *t, int me, uint64_t cap)
{
    *c = (cursor){t, me, cap, 0, 0, {0}};
    seek_mine(c);
}

static bool cursor_peek(const cursor *c, chunk *out)
{
    if (c->piece >= c->t->npieces) return false;
    chunk_at(c->t, c->piece, &c->g, c->next, out);
    return true;
}

static void cursor_advance(cursor *c)
{
    if (++c->next < c->g.total) return;
    c->piece++;
    seek_mine(c);
}

/* The sub-blocks of one H5Dwrite. */
typedef struct batch {
    chunk *v;
    size_t n, cap;
    uint64_t elems;
} batch;

/* Several sub-blocks share a write only while each is one contiguous range
 * of the tensor and they come in increasing order: HDF5 walks a union of
 * hyperslabs in row-major order of the dataset, which is then the order in
 * which they sit in the buffer. (This joins, e.g., the pieces of a Shard(0)
 * tensor that one process reads for several ranks.) */
static bool joins(const batch *b, const chunk *c, uint64_t cap)
{
    if (b->n == 0) return true;
    const chunk *last = &b->v[b->n - 1];
    return last->contig && c->contig && c->tfirst >= last->tfirst + last->n && b->elems + c->n <= cap;
}

static int batch_push(batch *b, const chunk *c, fm_err *e)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        chunk *v = realloc(b->v, sizeof *v * cap);
        if (v == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = *c;
    b->elems += c->n;
    return 0;
}

/* The next write of this process for the cursor's tensor; empty at the end. */
static int next_batch(cursor *cur, batch *b, fm_err *e)
{
    chunk c;
    b->n = 0;
    b->elems = 0;
    while (cursor_peek(cur, &c) && joins(b, &c, cur->cap)) {
        FM_TRY(batch_push(b, &c, e));
        cursor_advance(cur);
    }
    return 0;
}

/* ---- the engine ---- */

typedef struct hctx {
    const plan *pl;
    ptz_file *const *zips;
    const h5_opts *o;
    MPI_Comm comm;
    int me, nprocs;
    size_t window;
    sg_sources src;
    uint8_t *buf;
    batch b;
    uint64_t *nwrites; /* per tensor: collective writes (the most any process needs) */
    hid_t file, dcpl, lcpl, dxpl, str_type;
    uint64_t done, written, independent;
} hctx;

static uint64_t cap_elems(const hctx *x, const plan_tensor *t) { return x->window / dt_size(t->out_dtype); }

static int count_writes(hctx *x, fm_err *e)
{
    size_t n = x->pl->ntensors;
    x->nwrites = calloc(n ? n : 1, sizeof *x->nwrites);
    if (x->nwrites == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        cursor cur;
        cursor_init(&cur, &x->pl->tensors[i], x->me, cap_elems(x, &x->pl->tensors[i]));
        for (;;) {
            FM_TRY(next_batch(&cur, &x->b, e));
            if (x->b.n == 0) break;
            x->nwrites[i]++;
        }
    }
    return 0;
}

/* Every process must make the same number of collective calls per tensor. */
static int agree_counts(hctx *x, fm_err *e)
{
    size_t n = x->pl->ntensors;
    for (size_t at = 0; at < n;) {
        int k = (int)FM_MIN(n - at, (size_t)1 << 24);
        int rc = MPI_Allreduce(MPI_IN_PLACE, x->nwrites + at, k, MPI_UINT64_T, MPI_MAX, x->comm);
        if (rc != MPI_SUCCESS) return comm_mpi_error(e, rc, "MPI_Allreduce (HDF5 write counts)");
        at += (size_t)k;
    }
    return 0;
}

/* The elements of sub-block c, converted, into dst: run by run. The piece's
 * last element carries `last`, which lets sg_read() check the record's CRC. */
static int fill_chunk(hctx *x, size_t ti, const chunk *c, uint8_t *dst, fm_err *e)
{
    const plan_tensor *t = &x->pl->tensors[ti];
    const plan_piece *p = &t->pieces[c->piece];
    size_t es = dt_size(t->out_dtype);
    for (uint64_t i = c->lo, end = c->lo + c->n; i < end;) {
        uint64_t r = i / p->run_len, j0 = i % p->run_len, n = FM_MIN(p->run_len - j0, end - i);
        sg_seg s = {ti, c->piece, r, j0, n, 0, r == p->nruns - 1 && j0 + n == p->run_len};
        FM_TRY(sg_read(&x->src, x->pl, &s, dst, e));
        dst += n * es;
        i += n;
    }
    return 0;
}

static int fill_batch(hctx *x, size_t ti, cursor *cur, fm_err *e)
{
    FM_TRY(next_batch(cur, &x->b, e));
    size_t es = dt_size(x->pl->tensors[ti].out_dtype);
    uint8_t *dst = x->buf;
    for (size_t i = 0; i < x->b.n; i++) {
        FM_TRY(fill_chunk(x, ti, &x->b.v[i], dst, e));
        dst += x->b.v[i].n * es;
    }
    return 0;
}

/* The file and memory selections of the current batch (empty ones when
 * this process has nothing for this write: it still takes part). */
static int select_batch(const hctx *x, const plan_tensor *t, hid_t fs, hid_t *ms)
{
    hsize_t n = x->b.elems ? x->b.elems : 1;
    *ms = H5Screate_simple(1, &n, NULL);
    if (*ms < 0) return -1;
    if (x->b.n == 0) return H5Sselect_none(fs) < 0 || H5Sselect_none(*ms) < 0 ? -1 : 0;
    if (t->ndim == 0) return H5Sselect_all(fs) < 0 ? -1 : 0;
    for (size_t i = 0; i < x->b.n; i++) {
        const chunk *c = &x->b.v[i];
        if (H5Sselect_hyperslab(fs, i ? H5S_SELECT_OR : H5S_SELECT_SET, c->start, NULL, c->count, NULL) < 0) return -1;
    }
    return 0;
}

/* One collective H5Dwrite; the memory type is the file type, so HDF5 does
 * no conversion (a conversion would break collective I/O). A process whose
 * selection cannot be built still takes part, with an empty one. */
static int write_batch(hctx *x, const plan_tensor *t, hid_t dset, hid_t type, fm_err *e)
{
    hid_t fs = H5Dget_space(dset), ms = H5I_INVALID_HID;
    if (fs < 0) return h5_fail(e, "dataspace of dataset '%s'", t->name);
    int rc = select_batch(x, t, fs, &ms);
    if (rc < 0) {
        h5_fail(e, "selecting the elements of dataset '%s'", t->name);
        x->b.n = x->b.elems = 0;
        close_id(&ms, H5Sclose);
        if (select_batch(x, t, fs, &ms) < 0) rc = -2; /* cannot even take part */
    }
    wd_waiting("H5Dwrite (a collective write of parallel HDF5)");
    if (rc != -2 && H5Dwrite(dset, type, ms, fs, x->dxpl, x->buf) < 0 && rc == 0) rc = -1;
    wd_waiting(NULL);
    if (rc == 0) {
        uint32_t local = 0, global = 0;
        if (H5Pget_mpio_no_collective_cause(x->dxpl, &local, &global) >= 0 && local != H5D_MPIO_COLLECTIVE)
            x->independent++;
        x->written += x->b.elems * dt_size(t->out_dtype);
    }
    close_id(&ms, H5Sclose);
    close_id(&fs, H5Sclose);
    if (rc == -1 && e->code == 0) h5_fail(e, "writing dataset '%s'", t->name);
    return e->code;
}

/* ---- attributes (metadata: same calls, same values on every process) ---- */

static int attr_write(hid_t obj, const char *name, hid_t ftype, hid_t mtype, hid_t space, const void *val, fm_err *e)
{
    hid_t a = H5Acreate2(obj, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a < 0 || H5Awrite(a, mtype, val) < 0 ? -1 : 0;
    if (a >= 0 && H5Aclose(a) < 0) rc = -1;
    return rc < 0 ? h5_fail(e, "attribute '%s'", name) : 0;
}

/* Strings are variable-length UTF-8: h5py reads them as str, h5dump and
 * MATLAB as text, and a long config.json does not hit the 64 KiB limit of
 * an attribute stored in the object header. */
static int attr_str(hctx *x, hid_t obj, const char *name, const char *value, fm_err *e)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    if (sp < 0) return h5_fail(e, "dataspace of attribute '%s'", name);
    int rc = attr_write(obj, name, x->str_type, x->str_type, sp, &value, e);
    H5Sclose(sp);
    return rc;
}

static int attr_i32(hid_t obj, const char *name, int32_t value, fm_err *e)
{
    hid_t sp = H5Screate(H5S_SCALAR);
    if (sp < 0) return h5_fail(e, "dataspace of attribute '%s'", name);
    int rc = attr_write(obj, name, H5T_STD_I32LE, H5T_NATIVE_INT32, sp, &value, e);
    H5Sclose(sp);
    return rc;
}

/* shape: int64[ndim]; a 0-d tensor gets an empty array, as torch's shape (). */
static int attr_shape(hid_t obj, const plan_tensor *t, fm_err *e)
{
    hsize_t n = (hsize_t)t->ndim;
    int64_t dims[TI_MAX_DIMS + 1] = {0};
    memcpy(dims, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    hid_t sp = H5Screate_simple(1, &n, NULL);
    if (sp < 0) return h5_fail(e, "dataspace of attribute 'shape'");
    int rc = attr_write(obj, "shape", H5T_STD_I64LE, H5T_NATIVE_INT64, sp, dims, e);
    H5Sclose(sp);
    return rc;
}

/* Keeps the first error: a process that already failed goes on taking part
 * in the collective calls, and its first message is the one that counts. */
static void keep_first(fm_err *e, const fm_err *later)
{
    if (e->code == 0 && later->code != 0) *e = *later;
}

/* Every attribute call is made even after a failure: they are metadata
 * operations, which every process must make alike. */
static int root_attrs(hctx *x, fm_err *e)
{
    const h5_opts *o = x->o;
    fm_err a[5] = {{0}};
    if (o->config) attr_str(x, x->file, "config", o->config, &a[0]);
    attr_str(x, x->file, "format_version", H5_FORMAT_VERSION, &a[1]);
    attr_i32(x->file, "source_world_size", (int32_t)o->source_world_size, &a[2]);
    attr_str(x, x->file, "producer", "fsdpmerge", &a[3]);
    attr_str(x, x->file, "producer_version", FM_VERSION, &a[4]);
    for (int i = 0; i < 5; i++) keep_first(e, &a[i]);
    return e->code;
}

/* ---- property lists and the file ---- */

static int make_plists(hctx *x, fm_err *e)
{
    x->dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (x->dcpl < 0 || H5Pset_layout(x->dcpl, H5D_CONTIGUOUS) < 0 ||
        H5Pset_alloc_time(x->dcpl, H5D_ALLOC_TIME_EARLY) < 0 || /* parallel HDF5 needs it */
        H5Pset_fill_time(x->dcpl, H5D_FILL_TIME_NEVER) < 0)     /* every element gets written */
        return h5_fail(e, "dataset creation property list (contiguous, early allocation, no fill)");
    x->lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (x->lcpl < 0 || H5Pset_char_encoding(x->lcpl, H5T_CSET_UTF8) < 0)
        return h5_fail(e, "link creation property list (UTF-8 names)");
    x->dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (x->dxpl < 0 || H5Pset_dxpl_mpio(x->dxpl, H5FD_MPIO_COLLECTIVE) < 0)
        return h5_fail(e, "dataset transfer property list (collective MPI-IO)");
    x->str_type = H5Tcopy(H5T_C_S1);
    if (x->str_type < 0 || H5Tset_size(x->str_type, H5T_VARIABLE) < 0 || H5Tset_cset(x->str_type, H5T_CSET_UTF8) < 0)
        return h5_fail(e, "string datatype (variable-length UTF-8)");
    return 0;
}

static void print_hints(hctx *x, hid_t fapl)
{
    MPI_File *fh = NULL;
    if (x->me != 0 || x->o->hints_out == NULL) return;
    if (H5Fget_vfd_handle(x->file, fapl, (void **)&fh) < 0 || fh == NULL) {
        H5Eclear2(H5E_DEFAULT);
        return;
    }
    comm_print_hints(x->o->hints_out, *fh, "the HDF5 file");
}

/* The file access list: MPI-IO with the caller's hints; metadata reads and
 * writes collective (no process reads metadata alone, and the metadata
 * cache is flushed by all in one collective write); large objects aligned. */
static int create_file(hctx *x, const char *path, fm_err *e)
{
    const h5_opts *o = x->o;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    int rc = 0;
    if (fapl < 0 || H5Pset_fapl_mpio(fapl, x->comm, o->info) < 0) rc = h5_fail(e, "file access property list (MPI-IO)");
    else if (H5Pset_all_coll_metadata_ops(fapl, 1) < 0 || H5Pset_coll_metadata_write(fapl, 1) < 0)
        rc = h5_fail(e, "file access property list (collective metadata)");
    else if (o->alignment > 1 && H5Pset_alignment(fapl, (hsize_t)o->align_threshold, (hsize_t)o->alignment) < 0)
        rc = h5_fail(e, "file access property list (alignment %" PRIu64 " for objects of %" PRIu64 " bytes or more)",
                     o->alignment, o->align_threshold);
    if (rc == 0) {
        x->file = H5Fcreate(path, o->overwrite ? H5F_ACC_TRUNC : H5F_ACC_EXCL, H5P_DEFAULT, fapl);
        if (x->file < 0) rc = h5_fail(e, "creating %s", path);
        else print_hints(x, fapl);
        /* a write that finds the disk full inside a collective can strand the peers */
        if (rc == 0 && x->me == 0) rc = fs_reserve_path(path, h5_size_estimate(x->pl, o), e);
    }
    if (fapl >= 0) H5Pclose(fapl);
    return rc;
}

/* Refused before HDF5 is asked, for a clear message (H5F_ACC_EXCL still
 * guards against a file appearing in between). */
static int check_absent(hctx *x, const char *path, fm_err *e)
{
    if (x->me == 0 && !x->o->overwrite && fm_path_exists(path))
        fm_fail(e, FM_EEXIST, "%s already exists (use --force to replace it)", path);
    return comm_agree_all(e, x->comm);
}

/* ---- one tensor ---- */

static hid_t tensor_space(const plan_tensor *t)
{
    if (t->ndim == 0) return H5Screate(H5S_SCALAR);
    hsize_t dims[TI_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) dims[d] = (hsize_t)t->shape[d];
    return H5Screate_simple(t->ndim, dims, NULL);
}

static int create_dataset(hctx *x, const plan_tensor *t, hid_t *type, hid_t *dset, fm_err *e)
{
    *type = h5_file_type(t->out_dtype);
    if (*type < 0) {
        H5Eclear2(H5E_DEFAULT);
        return fm_fail(e, FM_EUNSUPPORTED, "tensor '%s': no HDF5 type for dtype %s", t->name, dt_torch_name(t->out_dtype));
    }
    hid_t sp = tensor_space(t);
    if (sp < 0) return h5_fail(e, "dataspace of dataset '%s'", t->name);
    wd_waiting("H5Dcreate2 (collective in parallel HDF5)");
    *dset = H5Dcreate2(x->file, t->name, *type, sp, x->lcpl, x->dcpl, H5P_DEFAULT);
    wd_waiting(NULL);
    H5Sclose(sp);
    if (*dset < 0) return h5_fail(e, "creating dataset '%s'", t->name);
    fm_err ae = {0};
    attr_str(x, *dset, "dtype", dt_torch_name(t->out_dtype), e);
    attr_shape(*dset, t, &ae); /* made even after a failure, as every process makes it */
    keep_first(e, &ae);
    return e->code ? fm_context(e, "dataset '%s'", t->name) : 0;
}

static void report_progress(hctx *x, uint64_t before, uint64_t tbytes, uint64_t w, uint64_t nw, xf_progress_fn fn,
                            void *pctx)
{
    /* the same numbers on every process without a message: the plan says
     * how many bytes each tensor has */
    x->done = before + (nw ? tbytes / nw * (w + 1) + (w + 1 == nw ? tbytes % nw : 0) : tbytes);
    if (fn) fn(pctx, x->done, x->pl->total_bytes);
}

/* One tensor: the dataset with its attributes, then nwrites[t] collective
 * writes. Errors are agreed once per tensor, right after the creation, which
 * every process has then made: that agreement also covers the writes of the
 * tensor before. Until the next agreement no process may skip a collective
 * call, so one that fails to read takes part in the rest of the tensor's
 * writes with empty selections. (Agreeing around every write costs two
 * more collectives per write, which shows when processes share cores.) */
static int write_tensor(hctx *x, size_t ti, xf_progress_fn progress, void *pctx, fm_err *e)
{
    const plan_tensor *t = &x->pl->tensors[ti];
    hid_t type = H5I_INVALID_HID, dset = H5I_INVALID_HID;
    uint64_t before = x->done, tbytes = t->numel * dt_size(t->out_dtype), nw = x->nwrites[ti];
    fm_err ce = {0};
    create_dataset(x, t, &type, &dset, &ce);
    keep_first(e, &ce);
    int rc = comm_agree_all(e, x->comm);
    cursor cur;
    cursor_init(&cur, t, x->me, cap_elems(x, t));
    for (uint64_t w = 0; w < nw && rc == 0; w++) {
        if (e->code == 0) fill_batch(x, ti, &cur, e);
        if (e->code != 0) x->b.n = x->b.elems = 0; /* failed: take part with nothing */
        fm_err we = {0};
        write_batch(x, t, dset, type, &we);
        keep_first(e, &we);
        report_progress(x, before, tbytes, w, nw, progress, pctx);
    }
    if (rc == 0 && nw == 0) report_progress(x, before, tbytes, 0, 0, progress, pctx);
    if (dset >= 0 && H5Dclose(dset) < 0) {
        fm_err we = {0};
        h5_fail(&we, "closing dataset '%s'", t->name);
        keep_first(e, &we);
    }
    close_id(&type, H5Tclose);
    return rc;
}

/* ---- driver ---- */

static int setup(hctx *x, const char *path, fm_err *e)
{
    h5_check_names(x->pl, e);
    if (e->code == 0 && sg_sources_init(&x->src, x->pl, x->zips, x->me, e) == 0) {
        x->buf = malloc(x->window);
        if (x->buf == NULL) fm_fail(e, FM_ENOMEM, "out of memory (%zu-byte buffer)", x->window);
    }
    if (e->code == 0) count_writes(x, e);
    if (e->code == 0) make_plists(x, e);
    FM_TRY(comm_agree_all(e, x->comm));
    FM_TRY(agree_counts(x, e));
    return check_absent(x, path, e);
}

/* Agrees on the last tensor's writes, flushes (MPI_File_sync in the MPI-IO
 * driver) and closes; a failed file is removed. */
static int finish_file(hctx *x, const char *path, fm_err *e)
{
    if (x->file < 0) return e->code; /* never created (agreed) */
    int rc = comm_agree_all(e, x->comm);
    if (rc == 0 && x->o->fsync && H5Fflush(x->file, H5F_SCOPE_GLOBAL) < 0) h5_fail(e, "flushing %s to disk", path);
    fm_err ce = {0};
    wd_waiting("H5Fclose (parallel HDF5 flushes its metadata collectively)");
    if (H5Fclose(x->file) < 0) h5_fail(&ce, "closing %s", path);
    wd_waiting(NULL);
    keep_first(e, &ce);
    x->file = H5I_INVALID_HID;
    rc = comm_agree_all(e, x->comm);
    if (rc && x->me == 0) unlink(path); /* no half-written file is left under the name */
    MPI_Barrier(x->comm);
    return rc;
}

static void teardown(hctx *x)
{
    close_id(&x->dcpl, H5Pclose);
    close_id(&x->lcpl, H5Pclose);
    close_id(&x->dxpl, H5Pclose);
    close_id(&x->str_type, H5Tclose);
    sg_sources_free(&x->src);
    free(x->buf);
    free(x->b.v);
    free(x->nwrites);
}

int h5_write_all(const plan *pl, ptz_file *const *zips, const char *path, const h5_opts *o, xf_progress_fn progress,
                 void *pctx, MPI_Comm comm, xf_stats *stats, fm_err *e)
{
    H5E_auto2_t old_fn = NULL;
    void *old_data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* errors become fm_err, not a stack printed by every process */
    hctx x;
    memset(&x, 0, sizeof x);
    x.pl = pl;
    x.o = o;
    x.comm = comm;
    x.zips = zips;
    x.file = x.dcpl = x.lcpl = x.dxpl = x.str_type = H5I_INVALID_HID;
    x.window = FM_MIN(FM_MAX(o->window & ~(size_t)7, (size_t)4096), (size_t)1 << 30); /* one write <= 1 GiB */
    MPI_Comm_rank(comm, &x.me);
    MPI_Comm_size(comm, &x.nprocs);
    int rc = setup(&x, path, e);
    if (rc == 0) {
        create_file(&x, path, e);
        rc = comm_agree_all(e, comm);
    }
    if (rc == 0) {
        root_attrs(&x, e);
        rc = comm_agree_all(e, comm);
    }
    for (size_t i = 0; i < pl->ntensors && rc == 0; i++) rc = write_tensor(&x, i, progress, pctx, e);
    rc = finish_file(&x, path, e);
    if (stats) {
        stats->bytes_read = x.src.bytes_read;
        stats->bytes_written = x.written;
    }
    if (o->independent) *o->independent = x.independent;
    teardown(&x);
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    return rc;
}

/* ---- reading the layout back (verify) ---- */

typedef struct h5_walk {
    sr_model *m;
    const char *path;
    fm_err *e;
} h5_walk;

/* One dataset at the root: dtype from its attribute, shape, data range. */
static int layout_of(hid_t ds, const char *name, const h5_walk *w, sr_tensor *t)
{
    char dt[32] = "";
    hid_t a = H5Aopen(ds, "dtype", H5P_DEFAULT), at = a >= 0 ? H5Aget_type(a) : H5I_INVALID_HID;
    char *val = NULL;
    if (at >= 0 && H5Tis_variable_str(at) > 0 && H5Aread(a, at, &val) >= 0 && val) {
        snprintf(dt, sizeof dt, "%s", val);
        H5free_memory(val);
    }
    if (at >= 0) H5Tclose(at);
    if (a >= 0) H5Aclose(a);
    hid_t sp = H5Dget_space(ds);
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[SR_MAX_DIMS];
    if (nd >= 0 && nd <= SR_MAX_DIMS) H5Sget_simple_extent_dims(sp, dims, NULL);
    if (sp >= 0) H5Sclose(sp);
    t->dtype = dt_from_torch_name(dt);
    if (t->dtype == DT_INVALID || nd < 0 || nd > SR_MAX_DIMS)
        return fm_fail(w->e, FM_EFORMAT, "%s: dataset '%s' has no dtype attribute fsdpmerge writes, or too many dims",
                       w->path, name);
    t->ndim = nd;
    t->numel = 1;
    for (int d = 0; d < nd; d++) t->numel *= (uint64_t)(t->shape[d] = (int64_t)dims[d]);
    haddr_t off = H5Dget_offset(ds);
    uint64_t bytes = t->numel * dt_size(t->dtype);
    if (off == HADDR_UNDEF && bytes > 0)
        return fm_fail(w->e, FM_EFORMAT, "%s: dataset '%s' is not stored contiguously", w->path, name);
    t->begin = bytes ? (uint64_t)off : 0;
    t->end = t->begin + bytes;
    return (t->name = fm_strdup(name)) ? 0 : fm_fail(w->e, FM_ENOMEM, "out of memory");
}

static herr_t layout_link(hid_t group, const char *name, const H5L_info_t *info, void *ctx)
{
    (void)info;
    h5_walk *w = ctx;
    sr_model *m = w->m;
    hid_t ds = H5Dopen2(group, name, H5P_DEFAULT);
    if (ds < 0) return 0; /* not a dataset: not a tensor */
    sr_tensor *grown = realloc(m->tensors, (m->ntensors + 1) * sizeof *grown);
    int rc = grown ? 0 : fm_fail(w->e, FM_ENOMEM, "out of memory");
    if (rc == 0) {
        m->tensors = grown;
        memset(&m->tensors[m->ntensors], 0, sizeof *grown);
        rc = layout_of(ds, name, w, &m->tensors[m->ntensors]);
        if (rc == 0) m->ntensors++;
    }
    H5Dclose(ds);
    return rc ? -1 : 0;
}

int h5_read_layout(const char *path, sr_model *m, fm_err *e)
{
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) != 0) return fm_fail(e, FM_EIO, "cannot read %s: %s", path, strerror(errno));
    if ((m->files = calloc(1, sizeof *m->files)) == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    m->nfiles = 1; /* sr_free() frees what follows, also on failure */
    if ((m->files[0].name = fm_strdup("model.h5")) == NULL || (m->files[0].path = fm_strdup(path)) == NULL)
        return fm_fail(e, FM_ENOMEM, "out of memory");
    m->files[0].size = (uint64_t)st.st_size;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return fm_fail(e, FM_EFORMAT, "%s: not an HDF5 file HDF5 can open", path);
    h5_walk w = {m, path, e};
    e->code = 0;
    herr_t hr = H5Literate(f, H5_INDEX_NAME, H5_ITER_INC, NULL, layout_link, &w);
    H5Fclose(f);
    if (hr < 0 && e->code == 0) fm_fail(e, FM_EFORMAT, "%s: cannot list its datasets", path);
    for (size_t i = 0; e->code == 0 && i < m->ntensors; i++)
        if (m->tensors[i].end > m->files[0].size)
            fm_fail(e, FM_EFORMAT, "%s: dataset '%s' ends past the end of the file (truncated?)", path, m->tensors[i].name);
    return e->code ? e->code : sr_sort(m, path, e);
}

#endif /* FM_HAVE_HDF5 */
