/* ptz.c - reads torch.save files (the zip container); see ptz.h.
 *
 * Design: the central directory is parsed here, not only by libzip, because
 * libzip (1.7.3) exposes no local-header offset, and the data offset of a
 * record (local header offset + 30 + name + local extra, which holds torch's
 * "FB" alignment padding) is what every ranged read needs. The parser follows
 * torch_format.md §1.5: classic EOCD found by scanning back, ZIP64 EOCD via
 * its locator, central entries with 0xFFFFFFFF fields patched from the ZIP64
 * extra (id 0x0001). libzip then opens the same file with ZIP_CHECKCONS
 * (it compares every local header with its central entry) and its view of
 * names, sizes, CRCs and methods must equal ours: two independent parsers
 * that agree, and libzip's messages for archives it rejects. The zip_t is
 * discarded once open succeeds; all reads are pread() on our own fd.
 *
 * Reads go through one buffer per ptz_file. A ptz_rec hashes its record in
 * order (crc_next = bytes [0, crc_next) hashed): whatever a refill brings in
 * at crc_next is hashed at once, a jump forward first streams the skipped
 * bytes through the buffer, and ptz_rec_finish() streams the tail. So each
 * byte is hashed once, and sequential reading costs one pread per buffer.
 */
#include "torchfmt/ptz.h"

#include "base/crc32.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>
#include <zlib.h>

#include "base/util.h"

#define PTZ_DEFAULT_BUFFER ((size_t)4 << 20)
#define PTZ_HDR_WINDOW ((size_t)64 << 10) /* local headers are read in windows this big */

#define PTZ_SIG_LOCAL 0x04034b50u
#define PTZ_SIG_CENTRAL 0x02014b50u
#define PTZ_SIG_EOCD 0x06054b50u
#define PTZ_SIG_EOCD64 0x06064b50u
#define PTZ_SIG_LOC64 0x07064b50u

#define PTZ_LOCAL_SIZE 30
#define PTZ_CENTRAL_SIZE 46
#define PTZ_EOCD_SIZE 22
#define PTZ_LOC64_SIZE 20
#define PTZ_EOCD64_SIZE 56
#define PTZ_EXTRA_ZIP64 0x0001u

/* The pickle header of a legacy (pre-1.6) file: PROTO 2, LONG1 of 10 bytes,
 * then the magic number 0x1950a86a20f9469cfc6c little-endian. */
static const uint8_t ptz_legacy_magic[14] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                             0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

typedef struct ptz_entry {
    char *name;      /* full entry name (NUL-terminated copy) */
    const char *rel; /* name after "PREFIX/", NULL when outside the prefix */
    uint64_t size, comp_size, local_ofs, data_offset;
    uint32_t crc;
    uint16_t method, gp_flags;
} ptz_entry;

struct ptz_file {
    char *path;
    int fd;
    unsigned flags;
    uint64_t size;   /* of the archive: the file, or one item of it */
    uint64_t base;   /* file offset of the archive's first byte (0, or a DCP item's offset) */
    char *prefix;
    ptz_entry *ents; /* central-directory order */
    size_t n_ents;
    ptz_entry **index; /* entries under the prefix, sorted by rel */
    size_t n_index;
    bool big_endian;
    uint8_t *buf; /* the read-ahead buffer shared by all ptz_recs */
    size_t buf_cap;
    uint64_t buf_abs; /* file bytes [buf_abs, buf_abs + buf_len) are in buf */
    size_t buf_len;
    char scope[40];  /* ptz_open_items: lookups name records of this item ("" = none) */
    bool ranged;     /* the archive is a byte range of the file (libzip reads that range) */
};

struct ptz_rec {
    ptz_file *f;
    const ptz_entry *ent;
    bool check_crc;
    uint64_t crc_next; /* bytes [0, crc_next) of the record are hashed */
    uint32_t crc;
};

/* ---- little-endian fields --------------------------------------------- */

static uint16_t ptz_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t ptz_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t ptz_le64(const uint8_t *p) { return (uint64_t)ptz_le32(p) | ((uint64_t)ptz_le32(p + 4) << 32); }

/* ---- CRC and I/O -------------------------------------------------------- */

uint32_t ptz_crc32(uint32_t crc, const void *p, size_t n) { return crc_update(crc, p, n); }

/* Reads exactly n bytes at ofs, retrying on EINTR and short reads. */
static int ptz_pread_full(int fd, const char *path, void *buf, size_t n, uint64_t ofs, fm_err *e)
{
    uint8_t *p = buf;
    while (n > 0) {
        if (ofs > (uint64_t)INT64_MAX) return fm_fail(e, FM_EFORMAT, "%s: offset %" PRIu64 " is out of range", path, ofs);
        size_t chunk = FM_MIN(n, (size_t)1 << 30);
        ssize_t got = pread(fd, p, chunk, (off_t)ofs);
        if (got < 0) {
            if (errno == EINTR) continue;
            return fm_fail(e, FM_EIO, "cannot read %s at offset %" PRIu64 ": %s", path, ofs, strerror(errno));
        }
        if (got == 0)
            return fm_fail(e, FM_EFORMAT, "%s: unexpected end of file at offset %" PRIu64 " (truncated?)", path, ofs);
        p += got;
        n -= (size_t)got;
        ofs += (uint64_t)got;
    }
    return 0;
}

static int ptz_not_zip(const ptz_file *f, fm_err *e)
{
    return fm_fail(e, FM_EFORMAT, "%s: not a torch.save zip archive (or truncated)", f->path);
}

static int ptz_corrupt(const ptz_file *f, const char *what, fm_err *e)
{
    return fm_fail(e, FM_EFORMAT, "%s: corrupt zip directory: %s", f->path, what);
}

/* ---- the first bytes: zip, legacy torch format, or something else ------- */

static int ptz_check_magic(ptz_file *f, fm_err *e)
{
    uint8_t head[sizeof ptz_legacy_magic];
    size_t n = (size_t)FM_MIN(f->size, (uint64_t)sizeof head);
    FM_TRY(ptz_pread_full(f->fd, f->path, head, n, f->base, e));
    if (n >= 4 && ptz_le32(head) == PTZ_SIG_LOCAL) return 0;
    if (n == sizeof head && memcmp(head, ptz_legacy_magic, sizeof head) == 0)
        return fm_fail(e, FM_EUNSUPPORTED,
                       "%s is in the legacy (pre-1.6) torch.save format; re-save it with a recent PyTorch "
                       "(torch.save(torch.load(f), f))",
                       f->path);
    return ptz_not_zip(f, e);
}

/* ---- end of central directory ------------------------------------------- */

typedef struct ptz_dirloc {
    uint64_t n_entries, cd_size, cd_ofs;
    uint64_t cd_limit; /* the central directory must end at or before this */
} ptz_dirloc;

/* Finds the classic EOCD in the tail (it may be followed by a comment). */
static int ptz_find_eocd(ptz_file *f, const uint8_t *tail, size_t tail_len, size_t *pos, fm_err *e)
{
    if (tail_len < PTZ_EOCD_SIZE) return ptz_not_zip(f, e);
    for (size_t i = tail_len - PTZ_EOCD_SIZE + 1; i-- > 0;) {
        if (ptz_le32(tail + i) != PTZ_SIG_EOCD) continue;
        if (i + PTZ_EOCD_SIZE + ptz_le16(tail + i + 20) > tail_len) continue; /* comment overruns */
        *pos = i;
        return 0;
    }
    return ptz_not_zip(f, e);
}

/* Takes the counts and offsets from the ZIP64 EOCD whose locator sits right
 * before the classic EOCD at eocd_abs. Saturated classic fields defer to it;
 * the others must agree with it. */
static int ptz_read_eocd64(ptz_file *f, const uint8_t *loc, uint64_t eocd_abs, ptz_dirloc *d, fm_err *e)
{
    uint64_t z_ofs = ptz_le64(loc + 8);
    uint64_t loc_abs = eocd_abs - PTZ_LOC64_SIZE;
    if (ptz_le32(loc + 4) != 0 || ptz_le32(loc + 16) > 1)
        return fm_fail(e, FM_EUNSUPPORTED, "%s: multi-disk zip archives are not supported", f->path);
    if (z_ofs > loc_abs || loc_abs - z_ofs < PTZ_EOCD64_SIZE)
        return ptz_corrupt(f, "ZIP64 end-of-directory offset out of range", e);
    uint8_t z[PTZ_EOCD64_SIZE];
    FM_TRY(ptz_pread_full(f->fd, f->path, z, sizeof z, f->base + z_ofs, e));
    if (ptz_le32(z) != PTZ_SIG_EOCD64) return ptz_corrupt(f, "bad ZIP64 end-of-directory signature", e);
    if (ptz_le32(z + 16) != 0 || ptz_le32(z + 20) != 0)
        return fm_fail(e, FM_EUNSUPPORTED, "%s: multi-disk zip archives are not supported", f->path);
    uint64_t n = ptz_le64(z + 32), size = ptz_le64(z + 40), ofs = ptz_le64(z + 48);
    if ((d->n_entries != 0xFFFF && d->n_entries != n) || (d->cd_size != 0xFFFFFFFFu && d->cd_size != size) ||
        (d->cd_ofs != 0xFFFFFFFFu && d->cd_ofs != ofs))
        return ptz_corrupt(f, "the classic and ZIP64 end-of-directory records disagree", e);
    d->n_entries = n;
    d->cd_size = size;
    d->cd_ofs = ofs;
    d->cd_limit = z_ofs;
    return 0;
}

static int ptz_locate_directory(ptz_file *f, ptz_dirloc *d, fm_err *e)
{
    /* EOCD (22) + the longest comment + a ZIP64 locator right before it. */
    size_t tail_len = (size_t)FM_MIN(f->size, (uint64_t)(PTZ_EOCD_SIZE + 0xFFFF + PTZ_LOC64_SIZE));
    uint64_t tail_abs = f->size - tail_len;
    uint8_t *tail = malloc(tail_len ? tail_len : 1);
    if (tail == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
    size_t pos = 0;
    int rc = ptz_pread_full(f->fd, f->path, tail, tail_len, f->base + tail_abs, e);
    if (rc == 0) rc = ptz_find_eocd(f, tail, tail_len, &pos, e);
    if (rc == 0) {
        const uint8_t *q = tail + pos;
        d->n_entries = ptz_le16(q + 10);
        d->cd_size = ptz_le32(q + 12);
        d->cd_ofs = ptz_le32(q + 16);
        d->cd_limit = tail_abs + pos;
        if ((ptz_le16(q + 4) != 0 && ptz_le16(q + 4) != 0xFFFF) || (ptz_le16(q + 6) != 0 && ptz_le16(q + 6) != 0xFFFF))
            rc = fm_fail(e, FM_EUNSUPPORTED, "%s: multi-disk zip archives are not supported", f->path);
        else if (pos >= PTZ_LOC64_SIZE && ptz_le32(q - PTZ_LOC64_SIZE) == PTZ_SIG_LOC64)
            rc = ptz_read_eocd64(f, q - PTZ_LOC64_SIZE, tail_abs + pos, d, e);
    }
    free(tail);
    if (rc != 0) return rc;
    if (d->cd_ofs > d->cd_limit || d->cd_size > d->cd_limit - d->cd_ofs)
        return ptz_corrupt(f, "central directory lies outside the file", e);
    /* Each central entry takes at least 46 bytes: bounds the allocation. */
    if (d->n_entries > d->cd_size / PTZ_CENTRAL_SIZE) return ptz_corrupt(f, "entry count exceeds the directory size", e);
    return 0;
}

/* ---- central directory entries ----------------------------------------- */

/* Replaces the saturated 32-bit fields of an entry from its ZIP64 extra, in
 * the standard order: uncompressed, compressed, local header offset. */
static int ptz_apply_zip64(ptz_file *f, ptz_entry *en, const uint8_t *ex, size_t ex_len, fm_err *e)
{
    bool need_u = en->size == 0xFFFFFFFFu, need_c = en->comp_size == 0xFFFFFFFFu, need_o = en->local_ofs == 0xFFFFFFFFu;
    if (!need_u && !need_c && !need_o) return 0;
    size_t i = 0;
    while (i + 4 <= ex_len) {
        uint16_t id = ptz_le16(ex + i), len = ptz_le16(ex + i + 2);
        if (len > ex_len - i - 4) break;
        if (id == PTZ_EXTRA_ZIP64) {
            const uint8_t *p = ex + i + 4;
            size_t need = 8u * ((size_t)need_u + need_c + need_o);
            if (len < need) return ptz_corrupt(f, "ZIP64 extra field too short", e);
            if (need_u) en->size = ptz_le64(p), p += 8;
            if (need_c) en->comp_size = ptz_le64(p), p += 8;
            if (need_o) en->local_ofs = ptz_le64(p);
            return 0;
        }
        i += 4u + len;
    }
    return fm_fail(e, FM_EFORMAT, "%s: corrupt zip directory: entry %s has 32-bit fields saturated but no ZIP64 extra",
                   f->path, en->name);
}

/* Parses one central entry at cd[*pos], advancing *pos. */
static int ptz_parse_central(ptz_file *f, const uint8_t *cd, size_t cd_len, size_t *pos, ptz_entry *en, fm_err *e)
{
    size_t p = *pos;
    if (cd_len - p < PTZ_CENTRAL_SIZE || ptz_le32(cd + p) != PTZ_SIG_CENTRAL)
        return ptz_corrupt(f, "bad central directory entry", e);
    const uint8_t *h = cd + p;
    size_t name_len = ptz_le16(h + 28), extra_len = ptz_le16(h + 30), comment_len = ptz_le16(h + 32);
    if (cd_len - p - PTZ_CENTRAL_SIZE < name_len + extra_len + comment_len)
        return ptz_corrupt(f, "central directory entry overruns the directory", e);
    const uint8_t *name = h + PTZ_CENTRAL_SIZE;
    if (memchr(name, '\0', name_len) != NULL) return ptz_corrupt(f, "entry name contains a NUL byte", e);
    en->name = fm_strndup((const char *)name, name_len);
    if (en->name == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
    en->gp_flags = ptz_le16(h + 8);
    en->method = ptz_le16(h + 10);
    en->crc = ptz_le32(h + 16);
    en->comp_size = ptz_le32(h + 20);
    en->size = ptz_le32(h + 24);
    en->local_ofs = ptz_le32(h + 42);
    *pos = p + PTZ_CENTRAL_SIZE + name_len + extra_len + comment_len;
    return ptz_apply_zip64(f, en, name + name_len, extra_len, e);
}

static int ptz_read_central(ptz_file *f, const ptz_dirloc *d, fm_err *e)
{
    if (d->cd_size > SIZE_MAX) return fm_fail(e, FM_ENOMEM, "%s: central directory too large", f->path);
    uint8_t *cd = malloc(d->cd_size ? (size_t)d->cd_size : 1);
    f->ents = calloc(d->n_entries ? (size_t)d->n_entries : 1, sizeof *f->ents);
    int rc = 0;
    if (cd == NULL || f->ents == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
    if (rc == 0) rc = ptz_pread_full(f->fd, f->path, cd, (size_t)d->cd_size, f->base + d->cd_ofs, e);
    size_t pos = 0;
    for (uint64_t i = 0; rc == 0 && i < d->n_entries; i++) {
        rc = ptz_parse_central(f, cd, (size_t)d->cd_size, &pos, &f->ents[i], e);
        f->n_ents = (size_t)i + 1; /* so that ptz_close frees the name */
    }
    free(cd);
    return rc;
}

/* ---- local headers: data offsets ----------------------------------------- */

/* A window over the file, so that the local headers of many small records
 * (often a few hundred bytes apart) cost one pread per 64 KiB, not one each. */
typedef struct ptz_window {
    uint8_t *buf;
    uint64_t abs;
    size_t len;
} ptz_window;

static int ptz_window_get(ptz_file *f, ptz_window *w, uint64_t ofs, size_t n, const uint8_t **p, fm_err *e)
{
    if (ofs > f->size || n > f->size - ofs) return fm_fail(e, FM_EFORMAT, "%s: unexpected end of file (truncated?)", f->path);
    if (!(ofs >= w->abs && ofs - w->abs + n <= w->len)) {
        size_t want = (size_t)FM_MIN(f->size - ofs, (uint64_t)FM_MAX(n, PTZ_HDR_WINDOW));
        if (want > PTZ_HDR_WINDOW) { /* a very long name: grow */
            uint8_t *nb = realloc(w->buf, want);
            if (nb == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
            w->buf = nb;
        }
        w->len = 0;
        FM_TRY(ptz_pread_full(f->fd, f->path, w->buf, want, f->base + ofs, e));
        w->abs = ofs;
        w->len = want;
    }
    *p = w->buf + (ofs - w->abs);
    return 0;
}

static int ptz_locate_data(ptz_file *f, ptz_window *w, ptz_entry *en, fm_err *e)
{
    const uint8_t *h = NULL;
    size_t name_len = strlen(en->name);
    if (en->local_ofs > f->size || PTZ_LOCAL_SIZE + name_len > f->size - en->local_ofs)
        return fm_fail(e, FM_EFORMAT, "%s: the local header of %s (offset %" PRIu64 ") lies outside the file: truncated or corrupt",
                       f->path, en->name, en->local_ofs);
    FM_TRY(ptz_window_get(f, w, en->local_ofs, PTZ_LOCAL_SIZE + name_len, &h, e));
    if (ptz_le32(h) != PTZ_SIG_LOCAL ||
        ptz_le16(h + 26) != name_len || memcmp(h + PTZ_LOCAL_SIZE, en->name, name_len) != 0)
        return fm_fail(e, FM_EFORMAT, "%s: corrupt zip: bad local header for %s at offset %" PRIu64, f->path, en->name,
                       en->local_ofs);
    en->data_offset = en->local_ofs + PTZ_LOCAL_SIZE + name_len + ptz_le16(h + 28);
    if (en->data_offset > f->size || en->comp_size > f->size - en->data_offset)
        return fm_fail(e, FM_EFORMAT,
                       "%s: the data of %s ([%" PRIu64 ", +%" PRIu64 ")) lies outside the file (size %" PRIu64
                       "): truncated or corrupt",
                       f->path, en->name, en->data_offset, en->comp_size, f->size);
    return 0;
}

static int ptz_locate_all_data(ptz_file *f, fm_err *e)
{
    ptz_window w = {malloc(PTZ_HDR_WINDOW), 0, 0};
    if (w.buf == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < f->n_ents; i++) rc = ptz_locate_data(f, &w, &f->ents[i], e);
    for (size_t i = 0; rc == 0 && i < f->n_ents; i++) f->ents[i].data_offset += f->base; /* reads are absolute */
    free(w.buf);
    return rc;
}

/* ---- libzip cross-check ---------------------------------------------------- */

static int ptz_libzip_error(const ptz_file *f, int zerr, fm_err *e)
{
    zip_error_t ze;
    zip_error_init_with_code(&ze, zerr);
    int code = FM_EFORMAT;
    if (zerr == ZIP_ER_OPEN || zerr == ZIP_ER_READ || zerr == ZIP_ER_SEEK || zerr == ZIP_ER_NOENT) code = FM_EIO;
    if (zerr == ZIP_ER_MEMORY) code = FM_ENOMEM;
    if (code == FM_EFORMAT)
        fm_fail(e, code, "%s: not a torch.save zip archive (or truncated): libzip: %s", f->path, zip_error_strerror(&ze));
    else
        fm_fail(e, code, "%s: libzip: %s", f->path, zip_error_strerror(&ze));
    zip_error_fini(&ze);
    return code;
}

static int ptz_libzip_compare(ptz_file *f, zip_t *za, fm_err *e)
{
    zip_int64_t n = zip_get_num_entries(za, 0);
    if (n < 0 || (uint64_t)n != f->n_ents) return ptz_corrupt(f, "libzip counts a different number of entries", e);
    for (size_t i = 0; i < f->n_ents; i++) {
        const ptz_entry *en = &f->ents[i];
        zip_stat_t st;
        zip_stat_init(&st);
        if (zip_stat_index(za, i, ZIP_FL_ENC_RAW, &st) != 0)
            return fm_fail(e, FM_EFORMAT, "%s: libzip: %s", f->path, zip_strerror(za));
        const zip_uint64_t need = ZIP_STAT_NAME | ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_CRC | ZIP_STAT_COMP_METHOD;
        if ((st.valid & need) != need || strcmp(st.name, en->name) != 0 || st.size != en->size ||
            st.comp_size != en->comp_size || st.crc != en->crc || st.comp_method != en->method)
            return fm_fail(e, FM_EFORMAT, "%s: corrupt zip directory: libzip reads entry %zu (%s) differently", f->path, i,
                           en->name);
    }
    return 0;
}

/* libzip opens the file first: archives it rejects get its diagnosis. */
static int ptz_libzip_open(ptz_file *f, zip_t **za, fm_err *e)
{
    int zerr = 0;
    if (!f->ranged) {
        *za = zip_open(f->path, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
        return *za ? 0 : ptz_libzip_error(f, zerr, e);
    }
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_file_create(f->path, f->base, (zip_int64_t)f->size, &ze);
    *za = src ? zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze) : NULL;
    if (*za == NULL && src) zip_source_free(src);
    zerr = zip_error_code_zip(&ze);
    zip_error_fini(&ze);
    return *za ? 0 : ptz_libzip_error(f, zerr, e);
}

/* ---- prefix and index -------------------------------------------------------- */

static int ptz_cmp_rel(const void *a, const void *b)
{
    return strcmp((*(ptz_entry *const *)a)->rel, (*(ptz_entry *const *)b)->rel);
}

/* The prefix is the folder of the first "X/data.pkl" entry (X without '/'). */
static int ptz_find_prefix(ptz_file *f, fm_err *e)
{
    for (size_t i = 0; i < f->n_ents; i++) {
        const char *nm = f->ents[i].name, *slash = strchr(nm, '/');
        if (slash != NULL && slash != nm && strcmp(slash, "/data.pkl") == 0) {
            f->prefix = fm_strndup(nm, (size_t)(slash - nm));
            if (f->prefix == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
            return 0;
        }
    }
    return fm_fail(e, FM_EFORMAT, "%s: no data.pkl record: not a torch.save archive", f->path);
}

static int ptz_build_index(ptz_file *f, fm_err *e)
{
    FM_TRY(ptz_find_prefix(f, e));
    size_t plen = strlen(f->prefix);
    f->index = malloc((f->n_ents ? f->n_ents : 1) * sizeof *f->index);
    if (f->index == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", f->path);
    for (size_t i = 0; i < f->n_ents; i++) {
        ptz_entry *en = &f->ents[i];
        if (strncmp(en->name, f->prefix, plen) != 0 || en->name[plen] != '/') continue;
        en->rel = en->name + plen + 1;
        f->index[f->n_index++] = en;
    }
    qsort(f->index, f->n_index, sizeof *f->index, ptz_cmp_rel);
    for (size_t i = 1; i < f->n_index; i++)
        if (strcmp(f->index[i - 1]->rel, f->index[i]->rel) == 0)
            return fm_fail(e, FM_EFORMAT, "%s: record %s appears twice in the archive", f->path, f->index[i]->rel);
    return 0;
}

static const ptz_entry *ptz_lookup(const ptz_file *f, const char *name)
{
    char scoped[512];
    if (f->scope[0]) { /* an item of a DCP file: its records are "<scope>/<name>" */
        if ((size_t)snprintf(scoped, sizeof scoped, "%s/%s", f->scope, name) >= sizeof scoped) return NULL;
        name = scoped;
    }
    size_t lo = 0, hi = f->n_index;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->index[mid]->rel);
        if (c == 0) return f->index[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

/* A record we are about to read must be stored (torch never compresses). */
static int ptz_check_readable(const ptz_file *f, const ptz_entry *en, fm_err *e)
{
    if (en->gp_flags & 1u) return fm_fail(e, FM_EUNSUPPORTED, "record %s of %s is encrypted", en->rel, f->path);
    if (en->method != ZIP_CM_STORE)
        return fm_fail(e, FM_EUNSUPPORTED,
                       "record %s of %s is compressed (zip method %u%s); torch.save writes stored records only: "
                       "re-save the file with torch.save",
                       en->rel, f->path, en->method, en->method == ZIP_CM_DEFLATE ? ", deflate" : "");
    if (en->comp_size != en->size)
        return fm_fail(e, FM_EFORMAT, "%s: corrupt zip directory: stored record %s has compressed size %" PRIu64
                       " but size %" PRIu64, f->path, en->rel, en->comp_size, en->size);
    return 0;
}

static int ptz_find_readable(const ptz_file *f, const char *name, const ptz_entry **out, fm_err *e)
{
    const ptz_entry *en = ptz_lookup(f, name);
    if (en == NULL) return fm_fail(e, FM_EFORMAT, "%s has no record %s", f->path, name);
    FM_TRY(ptz_check_readable(f, en, e));
    *out = en;
    return 0;
}

static int ptz_crc_mismatch(const ptz_file *f, const ptz_entry *en, uint32_t got, fm_err *e)
{
    return fm_fail(e, FM_EFORMAT, "CRC-32 mismatch in record %s of %s (expected 0x%08" PRIx32 ", computed 0x%08" PRIx32
                   "): the file is corrupt", en->rel, f->path, en->crc, got);
}

static int ptz_read_byteorder(ptz_file *f, fm_err *e)
{
    const ptz_entry *en = ptz_lookup(f, "byteorder");
    if (en == NULL) return 0; /* absent: little, as torch.load assumes */
    uint8_t *v = NULL;
    size_t len = 0;
    FM_TRY(ptz_read_record(f, "byteorder", 64, &v, &len, e));
    int rc = 0;
    if (len == 3 && memcmp(v, "big", 3) == 0) f->big_endian = true;
    else if (!(len == 6 && memcmp(v, "little", 6) == 0)) {
        for (size_t i = 0; i < len; i++)
            if (v[i] < 0x20 || v[i] > 0x7e) v[i] = '?';
        rc = fm_fail(e, FM_EFORMAT, "%s: the byteorder record says \"%s\"; expected \"little\" or \"big\"", f->path,
                     (char *)v);
    }
    free(v);
    return rc;
}

/* ---- open / close ------------------------------------------------------------- */

static int ptz_open_fd(ptz_file *f, fm_err *e)
{
    f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0) return fm_fail(e, FM_EIO, "cannot stat %s: %s", f->path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return fm_fail(e, FM_EIO, "%s is not a regular file", f->path);
    f->size = (uint64_t)st.st_size;
    return 0;
}

static int ptz_read_directory(ptz_file *f, fm_err *e)
{
    zip_t *za = NULL;
    ptz_dirloc d = {0};
    int rc = ptz_libzip_open(f, &za, e);
    if (rc == 0) rc = ptz_locate_directory(f, &d, e);
    if (rc == 0) rc = ptz_read_central(f, &d, e);
    if (rc == 0) rc = ptz_libzip_compare(f, za, e);
    if (za != NULL) zip_discard(za);
    return rc;
}

static int ptz_parse_archive(ptz_file *f, fm_err *e);

static int ptz_open_steps(ptz_file *f, size_t read_buffer, fm_err *e)
{
    FM_TRY(ptz_open_fd(f, e));
    f->buf_cap = read_buffer ? read_buffer : PTZ_DEFAULT_BUFFER;
    f->buf = malloc(f->buf_cap);
    if (f->buf == NULL) return fm_fail(e, FM_ENOMEM, "cannot allocate a %zu-byte read buffer for %s", f->buf_cap, f->path);
    return ptz_parse_archive(f, e);
}

int ptz_open(const char *path, unsigned flags, size_t read_buffer, ptz_file **out, fm_err *e)
{
    *out = NULL;
    ptz_file *f = calloc(1, sizeof *f);
    if (f == NULL) return fm_fail(e, FM_ENOMEM, "out of memory opening %s", path);
    f->fd = -1;
    f->flags = flags;
    f->path = fm_strdup(path);
    int rc = f->path ? ptz_open_steps(f, read_buffer, e) : fm_fail(e, FM_ENOMEM, "out of memory opening %s", path);
    if (rc != 0) {
        ptz_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void ptz_close(ptz_file *f)
{
    if (f == NULL) return;
    if (f->fd >= 0) close(f->fd);
    for (size_t i = 0; i < f->n_ents; i++) free(f->ents[i].name);
    free(f->ents);
    free(f->index);
    free(f->buf);
    free(f->prefix);
    free(f->path);
    free(f);
}

const char *ptz_path(const ptz_file *f) { return f->path; }
const char *ptz_prefix(const ptz_file *f) { return f->prefix; }
bool ptz_big_endian(const ptz_file *f) { return f->big_endian; }
uint64_t ptz_file_size(const ptz_file *f) { return f->size; }
size_t ptz_record_count(const ptz_file *f) { return f->n_index; }
const char *ptz_record_name(const ptz_file *f, size_t i) { return i < f->n_index ? f->index[i]->rel : NULL; }
size_t ptz_buffer_size(const ptz_file *f) { return f->buf_cap; }

bool ptz_find(const ptz_file *f, const char *name, ptz_record_info *info)
{
    const ptz_entry *en = ptz_lookup(f, name);
    if (en == NULL) return false;
    if (info != NULL) {
        info->name = en->name;
        info->size = en->size;
        info->data_offset = en->data_offset;
        info->crc = en->crc;
    }
    return true;
}

/* ---- whole records ----------------------------------------------------------- */

int ptz_read_record(ptz_file *f, const char *name, size_t max_len, uint8_t **out, size_t *len, fm_err *e)
{
    *out = NULL;
    *len = 0;
    const ptz_entry *en;
    FM_TRY(ptz_find_readable(f, name, &en, e));
    if (en->size > max_len)
        return fm_fail(e, FM_EFORMAT, "record %s of %s is %" PRIu64 " bytes, more than the %zu expected", name, f->path,
                       en->size, max_len);
    size_t n = (size_t)en->size;
    uint8_t *p = malloc(n + 1);
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading record %s of %s", name, f->path);
    int rc = ptz_pread_full(f->fd, f->path, p, n, en->data_offset, e);
    if (rc == 0 && en->crc != 0 && !(f->flags & PTZ_NO_CRC)) {
        uint32_t got = ptz_crc32(0, p, n);
        if (got != en->crc) rc = ptz_crc_mismatch(f, en, got, e);
    }
    if (rc != 0) {
        free(p);
        return rc;
    }
    p[n] = '\0';
    *out = p;
    *len = n;
    return 0;
}

/* ---- ranged reader -------------------------------------------------------- */

int ptz_rec_open(ptz_file *f, const char *name, ptz_rec **out, fm_err *e)
{
    *out = NULL;
    const ptz_entry *en;
    FM_TRY(ptz_find_readable(f, name, &en, e));
    ptz_rec *r = calloc(1, sizeof *r);
    if (r == NULL) return fm_fail(e, FM_ENOMEM, "out of memory opening record %s of %s", name, f->path);
    r->f = f;
    r->ent = en;
    r->check_crc = en->crc != 0 && !(f->flags & PTZ_NO_CRC);
    *out = r;
    return 0;
}

uint64_t ptz_rec_size(const ptz_rec *r) { return r->ent->size; }

void ptz_rec_close(ptz_rec *r) { free(r); }

/* Whether record bytes [off, off+len) are in the file's buffer. */
static bool ptz_rec_buffered(const ptz_rec *r, uint64_t off, size_t len)
{
    const ptz_file *f = r->f;
    uint64_t abs = r->ent->data_offset + off;
    return abs >= f->buf_abs && abs - f->buf_abs <= f->buf_len && f->buf_len - (abs - f->buf_abs) >= len;
}

/* Hashes whatever the buffer holds of this record from crc_next on. */
static void ptz_rec_hash_buffered(ptz_rec *r)
{
    const ptz_file *f = r->f;
    if (!r->check_crc || r->crc_next >= r->ent->size) return;
    uint64_t abs = r->ent->data_offset + r->crc_next;
    if (abs < f->buf_abs || abs - f->buf_abs >= f->buf_len) return;
    size_t from = (size_t)(abs - f->buf_abs);
    size_t n = (size_t)FM_MIN((uint64_t)(f->buf_len - from), r->ent->size - r->crc_next);
    r->crc = ptz_crc32(r->crc, f->buf + from, n);
    r->crc_next += n;
}

/* ONE pread of up to a buffer-full starting at record byte off. */
static int ptz_rec_fill(ptz_rec *r, uint64_t off, fm_err *e)
{
    ptz_file *f = r->f;
    size_t n = (size_t)FM_MIN((uint64_t)f->buf_cap, r->ent->size - off);
    f->buf_len = 0; /* invalid while (and if) the read fails */
    FM_TRY(ptz_pread_full(f->fd, f->path, f->buf, n, r->ent->data_offset + off, e));
    f->buf_abs = r->ent->data_offset + off;
    f->buf_len = n;
    ptz_rec_hash_buffered(r);
    return 0;
}

/* Streams record bytes [crc_next, upto) through the buffer into the CRC.
 * Stops early once [off, off+len) happens to be buffered as well. */
static int ptz_rec_hash_until(ptz_rec *r, uint64_t upto, uint64_t off, size_t len, fm_err *e)
{
    while (r->crc_next < upto) {
        FM_TRY(ptz_rec_fill(r, r->crc_next, e));
        if (len > 0 && ptz_rec_buffered(r, off, len)) return 0;
    }
    return 0;
}

int ptz_rec_get(ptz_rec *r, uint64_t off, size_t len, const uint8_t **p, fm_err *e)
{
    ptz_file *f = r->f;
    const ptz_entry *en = r->ent;
    *p = NULL;
    if (len > f->buf_cap)
        return fm_fail(e, FM_EINTERNAL, "read of %zu bytes from record %s of %s exceeds the %zu-byte buffer", len, en->rel,
                       f->path, f->buf_cap);
    if (off > en->size || len > en->size - off)
        return fm_fail(e, FM_EFORMAT, "read of bytes [%" PRIu64 ", %" PRIu64 ") is past the end of record %s of %s (%" PRIu64
                       " bytes)", off, off + len, en->rel, f->path, en->size);
    if (len == 0) {
        *p = f->buf;
        return 0;
    }
    if (!ptz_rec_buffered(r, off, len)) {
        if (r->check_crc && r->crc_next < off) FM_TRY(ptz_rec_hash_until(r, off, off, len, e));
        if (!ptz_rec_buffered(r, off, len)) FM_TRY(ptz_rec_fill(r, off, e));
    } else {
        ptz_rec_hash_buffered(r);
    }
    *p = f->buf + (en->data_offset + off - f->buf_abs);
    return 0;
}

int ptz_rec_finish(ptz_rec *r, fm_err *e)
{
    if (!r->check_crc) return 0;
    ptz_rec_hash_buffered(r);
    FM_TRY(ptz_rec_hash_until(r, r->ent->size, 0, 0, e));
    if (r->crc != r->ent->crc) return ptz_crc_mismatch(r->f, r->ent, r->crc, e);
    return 0;
}

/* ---- archives inside a larger file (DCP items) ------------------------------ */

/* The directory of one archive at [base, base+size) of f's file. */
static int ptz_parse_archive(ptz_file *f, fm_err *e)
{
    FM_TRY(ptz_check_magic(f, e));
    FM_TRY(ptz_read_directory(f, e));
    FM_TRY(ptz_locate_all_data(f, e));
    FM_TRY(ptz_build_index(f, e));
    const ptz_entry *pkl;
    FM_TRY(ptz_find_readable(f, "data.pkl", &pkl, e));
    return ptz_read_byteorder(f, e);
}

static int ptz_check_range(const ptz_file *f, uint64_t offset, uint64_t length, fm_err *e)
{
    if (offset > f->size || length > f->size - offset)
        return fm_fail(e, FM_EFORMAT, "%s: the item at [%" PRIu64 ", %" PRIu64 ") lies past the end of the file (%" PRIu64
                       " bytes): truncated", f->path, offset, offset + length, f->size);
    if (length == 0) return fm_fail(e, FM_EFORMAT, "%s: the item at offset %" PRIu64 " is empty", f->path, offset);
    return 0;
}

static ptz_file *ptz_alloc(const char *path, unsigned flags)
{
    ptz_file *f = calloc(1, sizeof *f);
    if (f == NULL) return NULL;
    f->fd = -1;
    f->flags = flags;
    f->path = fm_strdup(path);
    if (f->path == NULL) {
        free(f);
        return NULL;
    }
    return f;
}

static int ptz_alloc_buffer(ptz_file *f, size_t read_buffer, fm_err *e)
{
    f->buf_cap = read_buffer ? read_buffer : PTZ_DEFAULT_BUFFER;
    f->buf = malloc(f->buf_cap);
    if (f->buf == NULL) return fm_fail(e, FM_ENOMEM, "cannot allocate a %zu-byte read buffer for %s", f->buf_cap, f->path);
    return 0;
}

int ptz_open_at(const char *path, unsigned flags, size_t read_buffer, uint64_t offset, uint64_t length, ptz_file **out,
                fm_err *e)
{
    *out = NULL;
    ptz_file *f = ptz_alloc(path, flags);
    if (f == NULL) return fm_fail(e, FM_ENOMEM, "out of memory opening %s", path);
    int rc = ptz_open_fd(f, e);
    if (rc == 0) rc = ptz_check_range(f, offset, length, e);
    if (rc == 0) {
        f->base = offset;
        f->size = length;
        f->ranged = true;
        rc = ptz_parse_archive(f, e);
    }
    if (rc == 0) rc = ptz_alloc_buffer(f, read_buffer, e);
    if (rc != 0) {
        ptz_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

/* Moves the records of the item archive `sub` into `all`, renamed
 * "<offset>/<name>" (the index is rebuilt once every item is in). */
static int ptz_adopt(ptz_file *all, ptz_file *sub, size_t *cap, fm_err *e)
{
    if (all->n_ents + sub->n_index > *cap) {
        size_t ncap = FM_MAX(*cap * 2, all->n_ents + sub->n_index);
        ptz_entry *ne = realloc(all->ents, ncap * sizeof *ne);
        if (ne == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", all->path);
        all->ents = ne;
        *cap = ncap;
    }
    for (size_t i = 0; i < sub->n_index; i++) {
        ptz_entry en = *sub->index[i];
        en.name = fm_asprintf("%" PRIu64 "/%s", sub->base, sub->index[i]->rel);
        if (en.name == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", all->path);
        en.rel = en.name;
        all->ents[all->n_ents++] = en;
    }
    return 0;
}

static int ptz_open_item(ptz_file *all, const ptz_item *it, size_t k, size_t *cap, fm_err *e)
{
    FM_TRY(ptz_check_range(all, it->offset, it->length, e));
    ptz_file *sub = ptz_alloc(all->path, all->flags);
    if (sub == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", all->path);
    sub->fd = all->fd;
    sub->base = it->offset;
    sub->size = it->length;
    sub->ranged = true;
    int rc = ptz_parse_archive(sub, e);
    if (rc == 0 && k > 0 && sub->big_endian != all->big_endian)
        rc = fm_fail(e, FM_EUNSUPPORTED, "%s: items with different byte orders", all->path);
    all->big_endian = sub->big_endian;
    if (rc == 0) rc = ptz_adopt(all, sub, cap, e);
    if (rc) fm_context(e, "item at [%" PRIu64 ", +%" PRIu64 ")", it->offset, it->length);
    sub->fd = -1; /* all's */
    ptz_close(sub);
    return rc;
}

static int ptz_index_items(ptz_file *all, fm_err *e)
{
    all->index = malloc((all->n_ents ? all->n_ents : 1) * sizeof *all->index);
    if (all->index == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading %s", all->path);
    for (size_t i = 0; i < all->n_ents; i++) all->index[i] = &all->ents[i];
    all->n_index = all->n_ents;
    qsort(all->index, all->n_index, sizeof *all->index, ptz_cmp_rel);
    for (size_t i = 1; i < all->n_index; i++)
        if (strcmp(all->index[i - 1]->rel, all->index[i]->rel) == 0)
            return fm_fail(e, FM_EFORMAT, "%s: two items at the same offset (%s)", all->path, all->index[i]->rel);
    all->prefix = fm_strdup("");
    return all->prefix ? 0 : fm_fail(e, FM_ENOMEM, "out of memory reading %s", all->path);
}

int ptz_open_items(const char *path, unsigned flags, size_t read_buffer, const ptz_item *items, size_t n, ptz_file **out,
                   fm_err *e)
{
    *out = NULL;
    ptz_file *f = ptz_alloc(path, flags);
    if (f == NULL) return fm_fail(e, FM_ENOMEM, "out of memory opening %s", path);
    size_t cap = 0;
    int rc = ptz_open_fd(f, e);
    for (size_t k = 0; rc == 0 && k < n; k++) rc = ptz_open_item(f, &items[k], k, &cap, e);
    if (rc == 0) rc = ptz_index_items(f, e);
    if (rc == 0) rc = ptz_alloc_buffer(f, read_buffer, e);
    if (rc != 0) {
        ptz_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int ptz_scope(ptz_file *f, uint64_t item_offset, fm_err *e)
{
    f->scope[0] = '\0';
    if (item_offset == UINT64_MAX) return 0;
    snprintf(f->scope, sizeof f->scope, "%" PRIu64, item_offset);
    if (ptz_lookup(f, "data.pkl") == NULL) {
        f->scope[0] = '\0';
        return fm_fail(e, FM_EINTERNAL, "%s: no item at offset %" PRIu64, f->path, item_offset);
    }
    return 0;
}
