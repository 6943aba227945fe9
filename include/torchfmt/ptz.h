/* ptz.h - reads torch.save files (the zip container) without PyTorch.
 *
 * The central directory (EOCD, ZIP64 EOCD, entries with ZIP64 extras) is
 * parsed here, because libzip gives no local-header or data offsets; libzip
 * opens the same file with ZIP_CHECKCONS as a second opinion and must agree
 * on every name, size, CRC-32 and method. The offset of each record's bytes
 * is computed from its local header, after which records are read by byte
 * range with pread(): a multi-GB storage is never loaded whole.
 *
 * Records are found by name relative to the archive prefix (the folder name
 * torch puts in front of every entry, taken from the entry holding
 * "data.pkl"), e.g. "data.pkl", "byteorder", "data/17".
 *
 * CRC-32: torch writes the CRC of each record in the directory (zero means
 * none was written). A ptz_rec checks it as its bytes stream through: every
 * byte of the record is hashed exactly once, bytes the caller never asked
 * for are read by ptz_rec_finish(), and a mismatch is an FM_EFORMAT error
 * naming the record. PTZ_NO_CRC turns the check off.
 *
 * The legacy pre-1.6 format (a bare pickle stream, not a zip) is recognised
 * and refused with a message saying how to convert it.
 */
#ifndef FM_PTZ_H
#define FM_PTZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct ptz_file ptz_file;
typedef struct ptz_rec ptz_rec;

enum {
    PTZ_NO_CRC = 1u << 0 /* do not verify CRC-32 */
};

typedef struct ptz_record_info {
    const char *name;     /* full entry name, borrowed from the ptz_file */
    uint64_t size;        /* bytes (stored: compressed size == size) */
    uint64_t data_offset; /* absolute file offset of the first byte */
    uint32_t crc;         /* from the central directory; 0 = not written */
} ptz_record_info;

/*! ptz_open() : opens path, reads the directory and finds the prefix.
 *  read_buffer is the size of the read-ahead buffer shared by this file's
 *  ptz_rec objects (0 picks 4 MiB). Errors name the path: missing file,
 *  not a zip / truncated, legacy format, no data.pkl, a deflated (not
 *  stored) data.pkl or byteorder, an entry whose data lies outside the file.
 *  Other compressed records are refused when opened (ptz_rec_open,
 *  ptz_read_record: FM_EUNSUPPORTED naming the record).
 *  @return : 0 or an fm_code; *out is owned by the caller (ptz_close). */
int ptz_open(const char *path, unsigned flags, size_t read_buffer, ptz_file **out, fm_err *e);
/*! ptz_close() : accepts NULL. Open ptz_rec objects must be closed first. */
void ptz_close(ptz_file *f);

const char *ptz_path(const ptz_file *f);
const char *ptz_prefix(const ptz_file *f);   /* e.g. "model_world_size_4_rank_0" */
bool ptz_big_endian(const ptz_file *f);       /* "byteorder" record says big */
uint64_t ptz_file_size(const ptz_file *f);
size_t ptz_record_count(const ptz_file *f);
/*! ptz_record_name() : record i's name relative to the prefix (0 <= i < count), NULL past the end. */
const char *ptz_record_name(const ptz_file *f, size_t i);

/*! ptz_find() : looks a record up by its name relative to the prefix.
 *  @return : true and fills *info when present. */
bool ptz_find(const ptz_file *f, const char *name, ptz_record_info *info);

/*! ptz_read_record() : reads a whole (small) record into a malloc'd buffer
 *  (NUL-terminated, the NUL not counted), CRC-checked. Records larger than
 *  max_len are an FM_EFORMAT error. */
int ptz_read_record(ptz_file *f, const char *name, size_t max_len, uint8_t **out, size_t *len, fm_err *e);

/*! ptz_rec_open() : a ranged reader over one record. */
int ptz_rec_open(ptz_file *f, const char *name, ptz_rec **out, fm_err *e);
/*! ptz_rec_size() : the record's size in bytes. */
uint64_t ptz_rec_size(const ptz_rec *r);
/*! ptz_rec_get() : makes bytes [off, off+len) of the record available and
 *  points *p at them. The pointer is valid until the next call on any
 *  ptz_rec of the same file. len must not exceed the file's read buffer;
 *  off+len must not exceed the record size (FM_EFORMAT otherwise).
 *  Sequential access costs one pread per buffer-full. */
int ptz_rec_get(ptz_rec *r, uint64_t off, size_t len, const uint8_t **p, fm_err *e);
/*! ptz_rec_finish() : hashes the bytes not yet seen and compares the CRC.
 *  Call once when done with the record. */
int ptz_rec_finish(ptz_rec *r, fm_err *e);
/*! ptz_rec_close() : accepts NULL. Does not check the CRC. */
void ptz_rec_close(ptz_rec *r);
/*! ptz_buffer_size() : the read-ahead buffer size (the largest ptz_rec_get()). */
size_t ptz_buffer_size(const ptz_file *f);

/*! ptz_crc32() : CRC-32 (zip/zlib polynomial) of a buffer, continuing crc. */
uint32_t ptz_crc32(uint32_t crc, const void *p, size_t n);

/* ---- archives inside a larger file ----------------------------------------
 * torch.distributed.checkpoint writes each tensor chunk as a complete
 * torch.save archive at [offset, offset+length) of a .distcp file. */

typedef struct ptz_item {
    uint64_t offset, length;
} ptz_item;

/*! ptz_open_at() : opens the archive at [offset, offset+length) of path as
 *  ptz_open() opens a file (offsets inside it are relative to offset). */
int ptz_open_at(const char *path, unsigned flags, size_t read_buffer, uint64_t offset, uint64_t length, ptz_file **out,
                fm_err *e);

/*! ptz_open_items() : opens the n archives items[] of path as ONE ptz_file
 *  (one fd, one read buffer) whose records are named "<offset>/<name>",
 *  e.g. "4096/data/0" (offset in decimal, name relative to the item's
 *  prefix). Each item is checked as ptz_open() checks a file; errors name
 *  the item's byte range. */
int ptz_open_items(const char *path, unsigned flags, size_t read_buffer, const ptz_item *items, size_t n, ptz_file **out,
                   fm_err *e);

/*! ptz_scope() : makes lookups (ptz_find, ptz_read_record, ptz_rec_open)
 *  resolve names inside the item at item_offset, so that a tensor parser
 *  can read "data.pkl" and "data/0" of that item; UINT64_MAX ends it. */
int ptz_scope(ptz_file *f, uint64_t item_offset, fm_err *e);

#endif
