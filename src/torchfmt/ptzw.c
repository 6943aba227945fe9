/* ptzw.c - writes torch.save files (the zip container); see ptzw.h.
 *
 * The layout copies what PyTorchStreamWriter + miniz 3.0.2 produce
 * (torch_format.md §1), checked against real fixtures byte for byte:
 *   local header: version needed 0, flags 0x0808 (UTF-8 + data descriptor;
 *     0x0800 for an empty entry), method 0, DOS time/date 0, CRC and sizes 0;
 *     then the name, a ZIP64 extra when needed, and the "FB" padding extra
 *     that puts the data at a multiple of 64;
 *   data, then (non-empty entries) a data descriptor 50 4B 07 08 + CRC +
 *     sizes: 32-bit, or 64-bit when the local header has a ZIP64 extra;
 *   central entries: made-by 0, needed 0, same flags, real CRC and sizes,
 *     no FB padding, a ZIP64 extra only when a size or offset needs it;
 *   ZIP64 end of central directory + locator (always), classic EOCD with
 *     saturated fields.
 * Data descriptors (not a patched local header) are what miniz writes, so the
 * local header is final the moment it is written, and an entry streams with
 * no seek back, with one exception: an entry streamed without a known size
 * that reaches 4 GiB needs a ZIP64 extra in its local header. For those,
 * ptzw_begin() makes the FB padding at least as long as that extra, and
 * ptzw_end() rewrites the padding area as ZIP64 extra + shorter FB padding
 * (same total length, so the data offset does not move).
 *
 * Writes go through a 1 MiB staging buffer (headers are small, callers may
 * stream in small pieces); every write is checked and the first failure
 * poisons the writer.
 */
#include "torchfmt/ptzw.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "torchfmt/ptz.h"
#include "base/util.h"

#define PTZW_STAGE ((size_t)1 << 20)
#define PTZW_ALIGN 64u
#define PTZW_U32_LIMIT 0xFFFFFFFFu /* miniz: 64-bit fields for values >= this */

#define PTZW_SIG_LOCAL 0x04034b50u
#define PTZW_SIG_CENTRAL 0x02014b50u
#define PTZW_SIG_DESCRIPTOR 0x08074b50u
#define PTZW_SIG_EOCD 0x06054b50u
#define PTZW_SIG_EOCD64 0x06064b50u
#define PTZW_SIG_LOC64 0x07064b50u

#define PTZW_FLAG_DESCRIPTOR 0x0008u
#define PTZW_FLAG_UTF8 0x0800u

typedef struct ptzw_entry {
    char *rel;  /* name relative to the prefix */
    uint64_t lofs, size;
    uint32_t crc;
    uint16_t flags;
} ptzw_entry;

struct ptzw {
    char *path, *prefix;
    int fd;
    bool failed;            /* a write failed: everything after fails too */
    uint64_t zip64_at;      /* values >= this get 64-bit fields */
    uint64_t pos;           /* logical end of the file */
    uint64_t base;          /* ptzw_append: where the archive starts in the file (offsets are relative) */
    bool append;            /* abort truncates back to base instead of removing the file */
    uint64_t flushed;       /* file bytes [0, flushed) were handed to write() */
    uint8_t *stage;         /* holds file bytes [flushed, pos) */
    size_t stage_len;
    ptzw_entry *ents;
    size_t n, cap;
    uint64_t *hash_set;     /* open addressing over name hashes + 1 (0 = empty) */
    size_t hash_cap;
    /* the entry being written */
    bool in_entry, size_known, local_size64;
    uint64_t known_size, extra_ofs, cur_size;
    uint16_t extra_len;
    uint32_t cur_crc;
};

/* ---- little-endian output -------------------------------------------- */

static uint8_t *ptzw_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}
static uint8_t *ptzw_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + 4;
}
static uint8_t *ptzw_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + 8;
}

static uint32_t ptzw_sat32(uint64_t v, uint64_t limit) { return v >= limit ? 0xFFFFFFFFu : (uint32_t)v; }

size_t ptzw_zip64_extra(uint64_t size, uint64_t comp, uint64_t lofs, uint64_t limit, uint8_t out[28])
{
    bool big_size = size >= limit, big_ofs = lofs >= limit;
    if (!big_size && !big_ofs) return 0;
    uint8_t *p = out + 4;
    if (big_size) {
        p = ptzw_put64(p, size);
        p = ptzw_put64(p, comp);
    }
    if (big_ofs) p = ptzw_put64(p, lofs);
    size_t len = (size_t)(p - out);
    ptzw_put16(out, 0x0001);
    ptzw_put16(out + 2, (uint16_t)(len - 4));
    return len;
}

/* ---- checked output ----------------------------------------------------- */

static int ptzw_io_fail(ptzw *w, const char *what, fm_err *e)
{
    int err = errno;
    w->failed = true;
    return fm_fail(e, FM_EIO, "cannot %s %s: %s", what, w->path, strerror(err));
}

static int ptzw_write_all(ptzw *w, const void *data, size_t len, fm_err *e)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = write(w->fd, p, FM_MIN(len, (size_t)1 << 30));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO;
            return ptzw_io_fail(w, "write", e);
        }
        p += n;
        len -= (size_t)n;
        w->flushed += (uint64_t)n;
    }
    return 0;
}

static int ptzw_pwrite_all(ptzw *w, const void *data, size_t len, uint64_t ofs, fm_err *e)
{
    int err = fm_pwrite_all(w->fd, data, len, w->base + ofs);
    if (err == 0) return 0;
    errno = err;
    return ptzw_io_fail(w, "write", e);
}

static int ptzw_flush(ptzw *w, fm_err *e)
{
    size_t n = w->stage_len;
    w->stage_len = 0;
    return ptzw_write_all(w, w->stage, n, e);
}

/* Appends bytes at the end of the file (through the staging buffer). */
static int ptzw_put(ptzw *w, const void *p, size_t n, fm_err *e)
{
    if (w->failed) return fm_fail(e, FM_EIO, "%s: an earlier write failed", w->path);
    if (n == 0) return 0;
    if (w->stage_len + n > PTZW_STAGE) FM_TRY(ptzw_flush(w, e));
    if (n >= PTZW_STAGE) FM_TRY(ptzw_write_all(w, p, n, e));
    else {
        memcpy(w->stage + w->stage_len, p, n);
        w->stage_len += n;
    }
    w->pos += n;
    return 0;
}

/* Overwrites bytes already appended (in the stage, or on disk). */
static int ptzw_patch(ptzw *w, uint64_t ofs, const void *p, size_t n, fm_err *e)
{
    if (ofs >= w->flushed) {
        memcpy(w->stage + (ofs - w->flushed), p, n);
        return 0;
    }
    FM_TRY(ptzw_flush(w, e));
    return ptzw_pwrite_all(w, p, n, ofs, e);
}

/* ---- names ------------------------------------------------------------------ */

static uint64_t ptzw_fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3u;
    return h;
}

static bool ptzw_has(const ptzw *w, const char *rel)
{
    if (w->hash_cap == 0) return false;
    uint64_t h = ptzw_fnv1a(rel) | 1u; /* never 0 */
    for (size_t i = (size_t)h & (w->hash_cap - 1);; i = (i + 1) & (w->hash_cap - 1)) {
        if (w->hash_set[i] == 0) return false;
        if (w->hash_set[i] != h) continue;
        for (size_t k = 0; k < w->n; k++) /* hash hit: confirm (rare) */
            if (strcmp(w->ents[k].rel, rel) == 0) return true;
    }
}

static void ptzw_hash_insert(uint64_t *set, size_t cap, uint64_t h)
{
    size_t i = (size_t)h & (cap - 1);
    while (set[i] != 0) i = (i + 1) & (cap - 1);
    set[i] = h;
}

static bool ptzw_remember(ptzw *w, const char *rel)
{
    if (2 * (w->n + 1) > w->hash_cap) {
        size_t cap = w->hash_cap ? 2 * w->hash_cap : 64;
        uint64_t *set = calloc(cap, sizeof *set);
        if (set == NULL) return false;
        for (size_t i = 0; i < w->hash_cap; i++)
            if (w->hash_set[i]) ptzw_hash_insert(set, cap, w->hash_set[i]);
        free(w->hash_set);
        w->hash_set = set;
        w->hash_cap = cap;
    }
    ptzw_hash_insert(w->hash_set, w->hash_cap, ptzw_fnv1a(rel) | 1u);
    return true;
}

static int ptzw_check_name(ptzw *w, const char *name, fm_err *e)
{
    if (name == NULL || name[0] == '\0' || name[0] == '/')
        return fm_fail(e, FM_EINTERNAL, "%s: invalid record name \"%s\"", w->path, name ? name : "(null)");
    if (strlen(w->prefix) + 1 + strlen(name) > 0xFFFF)
        return fm_fail(e, FM_EINTERNAL, "%s: record name too long: %.64s...", w->path, name);
    if (ptzw_has(w, name)) return fm_fail(e, FM_EINTERNAL, "%s: record %s written twice", w->path, name);
    return 0;
}

/* ---- create ------------------------------------------------------------------ */

static int ptzw_open(const char *path, const char *prefix, bool append, ptzw **out, fm_err *e);

int ptzw_create(const char *path, const char *prefix, ptzw **out, fm_err *e)
{
    return ptzw_open(path, prefix, false, out, e);
}

int ptzw_append(const char *path, const char *prefix, ptzw **out, fm_err *e)
{
    FM_TRY(ptzw_open(path, prefix, true, out, e));
    off_t end = lseek((*out)->fd, 0, SEEK_END);
    if (end < 0) {
        int rc = fm_fail(e, FM_EIO, "cannot seek in %s: %s", path, strerror(errno));
        ptzw_abort(*out);
        *out = NULL;
        return rc;
    }
    (*out)->base = (uint64_t)end;
    return 0;
}

static int ptzw_open(const char *path, const char *prefix, bool append, ptzw **out, fm_err *e)
{
    *out = NULL;
    if (prefix == NULL || prefix[0] == '\0' || strchr(prefix, '/') != NULL || strlen(prefix) > 4096)
        return fm_fail(e, FM_EINTERNAL, "invalid archive prefix \"%s\" for %s", prefix ? prefix : "(null)", path);
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return fm_fail(e, FM_EIO, "cannot create %s: it exists and is not a regular file", path);
    ptzw *w = calloc(1, sizeof *w);
    if (w == NULL) return fm_fail(e, FM_ENOMEM, "out of memory creating %s", path);
    w->fd = -1;
    w->append = append;
    w->zip64_at = PTZW_U32_LIMIT;
    w->path = fm_strdup(path);
    w->prefix = fm_strdup(prefix);
    w->stage = malloc(PTZW_STAGE);
    if (w->path == NULL || w->prefix == NULL || w->stage == NULL) {
        ptzw_abort(w);
        return fm_fail(e, FM_ENOMEM, "out of memory creating %s", path);
    }
    w->fd = open(path, O_WRONLY | O_CREAT | (w->append ? 0 : O_TRUNC) | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int rc = fm_fail(e, FM_EIO, "cannot create %s: %s", path, strerror(errno));
        free(w->path);
        w->path = NULL; /* nothing of ours to remove */
        ptzw_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

void ptzw_set_zip64_threshold(ptzw *w, uint64_t threshold)
{
    w->zip64_at = (threshold == 0 || threshold > PTZW_U32_LIMIT) ? PTZW_U32_LIMIT : threshold;
}

/* ---- entries ------------------------------------------------------------------ */

/* Bytes of FB padding (after its 4-byte header) that put the data of an entry
 * at a multiple of 64, as torch's getOffset()/getPadding() compute it. */
static size_t ptzw_padding(uint64_t lofs, size_t full_name_len, size_t zip64_len)
{
    uint64_t start = lofs + 30 + full_name_len + 4 + zip64_len;
    return (size_t)((PTZW_ALIGN - start % PTZW_ALIGN) % PTZW_ALIGN);
}

static int ptzw_put_local_header(ptzw *w, const char *name, bool size_known, uint64_t size, fm_err *e)
{
    size_t plen = strlen(w->prefix), nlen = strlen(name), full = plen + 1 + nlen;
    uint64_t lofs = w->pos;
    uint8_t z64[28];
    size_t z64_len = ptzw_zip64_extra(size_known ? size : 0, 0, lofs, w->zip64_at, z64);
    size_t pad = ptzw_padding(lofs, full, z64_len);
    if (!size_known) { /* leave room to turn padding into the size fields */
        size_t room = z64_len ? 16 : 20;
        while (pad < room) pad += PTZW_ALIGN;
    }
    uint16_t flags = PTZW_FLAG_UTF8 | ((!size_known || size > 0) ? PTZW_FLAG_DESCRIPTOR : 0);
    uint8_t h[30] = {0}, *p = h;
    p = ptzw_put32(p, PTZW_SIG_LOCAL);
    p = ptzw_put16(p, 0);     /* version needed: miniz writes 0 for stored */
    p = ptzw_put16(p, flags); /* time, date, CRC, sizes stay 0 (descriptor) */
    ptzw_put16(h + 26, (uint16_t)full);
    ptzw_put16(h + 28, (uint16_t)(z64_len + 4 + pad));
    uint8_t fb[4 + 2 * PTZW_ALIGN];
    memset(fb, 'Z', sizeof fb);
    fb[0] = 'F', fb[1] = 'B';
    ptzw_put16(fb + 2, (uint16_t)pad);
    w->extra_ofs = lofs + 30 + full;
    w->extra_len = (uint16_t)(z64_len + 4 + pad);
    w->local_size64 = size_known && size >= w->zip64_at;
    FM_TRY(ptzw_put(w, h, sizeof h, e));
    FM_TRY(ptzw_put(w, w->prefix, plen, e));
    FM_TRY(ptzw_put(w, "/", 1, e));
    FM_TRY(ptzw_put(w, name, nlen, e));
    FM_TRY(ptzw_put(w, z64, z64_len, e));
    return ptzw_put(w, fb, 4 + pad, e);
}

static int ptzw_begin_entry(ptzw *w, const char *name, bool size_known, uint64_t size, fm_err *e)
{
    if (w->in_entry) return fm_fail(e, FM_EINTERNAL, "%s: record %s begun inside another", w->path, name);
    FM_TRY(ptzw_check_name(w, name, e));
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        ptzw_entry *ents = realloc(w->ents, cap * sizeof *ents);
        if (ents == NULL) return fm_fail(e, FM_ENOMEM, "out of memory writing %s", w->path);
        w->ents = ents;
        w->cap = cap;
    }
    ptzw_entry *en = &w->ents[w->n];
    memset(en, 0, sizeof *en);
    en->rel = fm_strdup(name);
    if (en->rel == NULL || !ptzw_remember(w, name)) {
        free(en->rel);
        return fm_fail(e, FM_ENOMEM, "out of memory writing %s", w->path);
    }
    en->lofs = w->pos;
    w->n++;
    w->in_entry = true;
    w->size_known = size_known;
    w->known_size = size;
    w->cur_size = 0;
    w->cur_crc = 0;
    return ptzw_put_local_header(w, name, size_known, size, e);
}

int ptzw_begin(ptzw *w, const char *name, fm_err *e) { return ptzw_begin_entry(w, name, false, 0, e); }

int ptzw_begin_sized(ptzw *w, const char *name, uint64_t size, fm_err *e)
{
    return ptzw_begin_entry(w, name, true, size, e);
}

int ptzw_write(ptzw *w, const void *data, size_t len, fm_err *e)
{
    if (!w->in_entry) return fm_fail(e, FM_EINTERNAL, "%s: ptzw_write outside a record", w->path);
    FM_TRY(ptzw_put(w, data, len, e));
    w->cur_crc = ptz_crc32(w->cur_crc, data, len);
    w->cur_size += len;
    return 0;
}

/* A streamed entry reached 4 GiB: its FB padding becomes ZIP64 extra + FB. */
static int ptzw_upgrade_local(ptzw *w, const ptzw_entry *en, fm_err *e)
{
    uint8_t area[4 + 2 * PTZW_ALIGN + 28];
    size_t z64_len = ptzw_zip64_extra(en->size, 0, en->lofs, w->zip64_at, area);
    if (z64_len + 4 > w->extra_len) return fm_fail(e, FM_EINTERNAL, "%s: no room for a ZIP64 extra", w->path);
    size_t pad = w->extra_len - z64_len - 4;
    uint8_t *fb = area + z64_len;
    fb[0] = 'F', fb[1] = 'B';
    ptzw_put16(fb + 2, (uint16_t)pad);
    memset(fb + 4, 'Z', pad);
    w->local_size64 = true;
    return ptzw_patch(w, w->extra_ofs, area, w->extra_len, e);
}

int ptzw_end(ptzw *w, fm_err *e)
{
    if (!w->in_entry) return fm_fail(e, FM_EINTERNAL, "%s: ptzw_end outside a record", w->path);
    w->in_entry = false;
    ptzw_entry *en = &w->ents[w->n - 1];
    en->size = w->cur_size;
    en->crc = w->cur_crc;
    if (w->size_known && w->known_size != en->size)
        return fm_fail(e, FM_EINTERNAL, "%s: record %s: %" PRIu64 " bytes written, %" PRIu64 " announced", w->path, en->rel,
                       en->size, w->known_size);
    en->flags = PTZW_FLAG_UTF8 | (en->size > 0 ? PTZW_FLAG_DESCRIPTOR : 0);
    if (!w->size_known && en->size == 0) { /* as miniz: no descriptor for an empty entry */
        uint8_t fl[2];
        ptzw_put16(fl, en->flags);
        return ptzw_patch(w, en->lofs + 6, fl, 2, e);
    }
    if (!w->size_known && en->size >= w->zip64_at) FM_TRY(ptzw_upgrade_local(w, en, e));
    if (en->size == 0) return 0;
    /* 64-bit sizes in the descriptor iff the local header has a ZIP64 extra. */
    bool wide = w->local_size64 || en->lofs >= w->zip64_at;
    uint8_t d[24], *p = d;
    p = ptzw_put32(p, PTZW_SIG_DESCRIPTOR);
    p = ptzw_put32(p, en->crc);
    if (wide) {
        p = ptzw_put64(p, en->size);
        p = ptzw_put64(p, en->size);
    } else {
        p = ptzw_put32(p, (uint32_t)en->size);
        p = ptzw_put32(p, (uint32_t)en->size);
    }
    return ptzw_put(w, d, (size_t)(p - d), e);
}

int ptzw_add(ptzw *w, const char *name, const void *data, size_t len, fm_err *e)
{
    FM_TRY(ptzw_begin_entry(w, name, true, len, e));
    FM_TRY(ptzw_write(w, data, len, e));
    return ptzw_end(w, e);
}

static int ptzw_add_str(ptzw *w, const char *name, const char *s, fm_err *e)
{
    return ptzw_add(w, name, s, strlen(s), e);
}

int ptzw_add_preamble(ptzw *w, const void *pkl, size_t pkl_len, fm_err *e)
{
    FM_TRY(ptzw_add(w, "data.pkl", pkl, pkl_len, e));
    FM_TRY(ptzw_add_str(w, ".format_version", "1", e));
    FM_TRY(ptzw_add_str(w, ".storage_alignment", "64", e));
    return ptzw_add_str(w, "byteorder", "little", e);
}

/* ---- end of archive --------------------------------------------------------- */

/* 20 + 20 zero-padded digits like torch's writeSerializationId(): a combined
 * hash of the record names, then a combined hash of their CRC-32s (torch uses
 * std::hash for the names; any deterministic value will do, torch does not
 * check it). */
static void ptzw_serialization_id(const ptzw *w, char out[41])
{
    uint64_t names = 0, crcs = 0;
    for (size_t i = 0; i < w->n; i++) {
        uint64_t h = ptzw_fnv1a(w->ents[i].rel), c = w->ents[i].crc;
        names ^= h + 0x9e3779b9u + (names << 6) + (names >> 2); /* c10::hash_combine */
        crcs ^= c + 0x9e3779b9u + (crcs << 6) + (crcs >> 2);
    }
    snprintf(out, 41, "%020" PRIu64 "%020" PRIu64, names, crcs);
}

/* The records torch's writeEndOfFile() adds when they are missing. */
static int ptzw_add_trailer(ptzw *w, fm_err *e)
{
    if (w->n == 0) return 0;
    if (!ptzw_has(w, "version") && !ptzw_has(w, ".data/version")) FM_TRY(ptzw_add_str(w, "version", "3\n", e));
    if (!ptzw_has(w, "byteorder")) FM_TRY(ptzw_add_str(w, "byteorder", "little", e));
    if (ptzw_has(w, ".data/serialization_id")) return 0;
    char id[41];
    ptzw_serialization_id(w, id);
    return ptzw_add_str(w, ".data/serialization_id", id, e);
}

static int ptzw_put_central(ptzw *w, const ptzw_entry *en, fm_err *e)
{
    uint8_t z64[28];
    size_t z64_len = ptzw_zip64_extra(en->size, en->size, en->lofs, w->zip64_at, z64);
    size_t plen = strlen(w->prefix), nlen = strlen(en->rel);
    uint8_t h[46] = {0}, *p = h;
    p = ptzw_put32(p, PTZW_SIG_CENTRAL);
    p = ptzw_put16(p, 0); /* made by */
    p = ptzw_put16(p, 0); /* needed */
    p = ptzw_put16(p, en->flags);
    p = ptzw_put16(p, 0); /* method: stored */
    p = ptzw_put32(p, 0); /* DOS time and date */
    p = ptzw_put32(p, en->crc);
    p = ptzw_put32(p, ptzw_sat32(en->size, w->zip64_at));
    p = ptzw_put32(p, ptzw_sat32(en->size, w->zip64_at));
    p = ptzw_put16(p, (uint16_t)(plen + 1 + nlen));
    p = ptzw_put16(p, (uint16_t)z64_len);
    ptzw_put32(h + 42, ptzw_sat32(en->lofs, w->zip64_at)); /* comment, disk, attributes stay 0 */
    FM_TRY(ptzw_put(w, h, sizeof h, e));
    FM_TRY(ptzw_put(w, w->prefix, plen, e));
    FM_TRY(ptzw_put(w, "/", 1, e));
    FM_TRY(ptzw_put(w, en->rel, nlen, e));
    return ptzw_put(w, z64, z64_len, e);
}

static int ptzw_put_end_records(ptzw *w, uint64_t cd_ofs, uint64_t cd_size, fm_err *e)
{
    uint64_t z_ofs = w->pos, n = w->n;
    uint8_t b[56 + 20 + 22] = {0}, *p = b;
    p = ptzw_put32(p, PTZW_SIG_EOCD64);
    p = ptzw_put64(p, 44);     /* size of the rest of this record */
    p = ptzw_put16(p, 0x031E); /* made by: miniz's value */
    p = ptzw_put16(p, 0x002D); /* needed: 4.5 (ZIP64) */
    p = ptzw_put32(p, 0);      /* this disk */
    p = ptzw_put32(p, 0);      /* disk of the central directory */
    p = ptzw_put64(p, n);
    p = ptzw_put64(p, n);
    p = ptzw_put64(p, cd_size);
    p = ptzw_put64(p, cd_ofs);
    p = ptzw_put32(p, PTZW_SIG_LOC64);
    p = ptzw_put32(p, 0);
    p = ptzw_put64(p, z_ofs);
    p = ptzw_put32(p, 1); /* total disks */
    p = ptzw_put32(p, PTZW_SIG_EOCD);
    p = ptzw_put32(p, 0); /* disk numbers */
    uint16_t n16 = n >= FM_MIN(w->zip64_at, (uint64_t)0xFFFF) ? 0xFFFF : (uint16_t)n;
    p = ptzw_put16(p, n16);
    p = ptzw_put16(p, n16);
    p = ptzw_put32(p, ptzw_sat32(cd_size, w->zip64_at));
    p = ptzw_put32(p, ptzw_sat32(cd_ofs, w->zip64_at));
    p = ptzw_put16(p, 0); /* comment length */
    return ptzw_put(w, b, (size_t)(p - b), e);
}

static int ptzw_finish(ptzw *w, fm_err *e)
{
    if (w->in_entry) return fm_fail(e, FM_EINTERNAL, "%s: closed inside record %s", w->path, w->ents[w->n - 1].rel);
    FM_TRY(ptzw_add_trailer(w, e));
    uint64_t cd_ofs = w->pos;
    for (size_t i = 0; i < w->n; i++) FM_TRY(ptzw_put_central(w, &w->ents[i], e));
    FM_TRY(ptzw_put_end_records(w, cd_ofs, w->pos - cd_ofs, e));
    FM_TRY(ptzw_flush(w, e));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) return ptzw_io_fail(w, "close", e);
    return 0;
}

static void ptzw_free(ptzw *w)
{
    for (size_t i = 0; i < w->n; i++) free(w->ents[i].rel);
    free(w->ents);
    free(w->hash_set);
    free(w->stage);
    free(w->prefix);
    free(w->path);
    free(w);
}

int ptzw_close(ptzw *w, fm_err *e)
{
    if (w == NULL) return 0;
    int rc = ptzw_finish(w, e);
    if (rc != 0) {
        ptzw_abort(w); /* a half-written archive is of no use to anyone */
        return rc;
    }
    ptzw_free(w);
    return 0;
}

void ptzw_abort(ptzw *w)
{
    if (w == NULL) return;
    if (w->append && w->fd >= 0 && ftruncate(w->fd, (off_t)w->base) != 0) { /* best effort */ }
    if (w->fd >= 0) close(w->fd);
    if (w->path != NULL && !w->append) unlink(w->path);
    ptzw_free(w);
}
