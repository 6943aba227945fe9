/* ptzw.h - writes torch.save files (the zip container).
 *
 * Writes the layout PyTorch's PyTorchStreamWriter produces, so that
 * torch.load() (any version since 1.6) reads the result:
 *   PREFIX/data.pkl, PREFIX/.format_version ("1"), PREFIX/.storage_alignment
 *   ("64"), PREFIX/byteorder ("little"), PREFIX/data/0 ..., PREFIX/version
 *   ("3\n"), PREFIX/.data/serialization_id
 * Entries are stored (never compressed), the data of every entry starts at a
 * multiple of 64 bytes (padding in an "FB" local extra field, as torch does),
 * ZIP64 records are written as torch does (always a ZIP64 end of central
 * directory; per-entry ZIP64 extras only when a size or offset needs them),
 * and each entry carries its real CRC-32. Entries can be streamed: the local
 * header is patched with the CRC and size when the entry ends.
 */
#ifndef FM_PTZW_H
#define FM_PTZW_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct ptzw ptzw;

/*! ptzw_create() : creates path (must not exist unless it is a regular file
 *  to truncate) with the given archive prefix (e.g. "extra_state_merged");
 *  writes nothing until the first entry. */
int ptzw_create(const char *path, const char *prefix, ptzw **out, fm_err *e);

/*! ptzw_append() : like ptzw_create(), but the archive is appended to path
 *  (created when absent), as torch.distributed.checkpoint writes its items
 *  one after the other into a .distcp file; offsets inside the archive are
 *  relative to its start. ptzw_abort() truncates the file back. */
int ptzw_append(const char *path, const char *prefix, ptzw **out, fm_err *e);

/*! ptzw_add() : one whole entry; name relative to the prefix ("data.pkl"). */
int ptzw_add(ptzw *w, const char *name, const void *data, size_t len, fm_err *e);

/* Streaming: begin, any number of writes, end. One entry at a time. */
int ptzw_begin(ptzw *w, const char *name, fm_err *e);
int ptzw_write(ptzw *w, const void *data, size_t len, fm_err *e);
int ptzw_end(ptzw *w, fm_err *e);
/*! ptzw_begin_sized() : ptzw_begin() for a record whose size is known:
 *  the local header is then the one torch writes (no room reserved for a
 *  late ZIP64 extra); ptzw_end() checks that exactly size bytes came. */
int ptzw_begin_sized(ptzw *w, const char *name, uint64_t size, fm_err *e);

/*! ptzw_add_preamble() : the records torch.save writes before the storages:
 *  data.pkl (the given pickle), .format_version "1", .storage_alignment "64",
 *  byteorder "little". Add the storages next as "data/0", "data/1", ...
 *  (ptzw_add or streaming), then ptzw_close(). */
int ptzw_add_preamble(ptzw *w, const void *pkl, size_t pkl_len, fm_err *e);

/*! ptzw_close() : writes version, .data/serialization_id (if any torch
 *  records were written; also byteorder "little" when missing, as torch's
 *  writeEndOfFile() does), the central directory and the end records; closes
 *  the file (no fsync). Frees w even on error, and then removes the partial
 *  file as ptzw_abort() does. */
int ptzw_close(ptzw *w, fm_err *e);
/*! ptzw_abort() : closes and removes the partial file. Accepts NULL. */
void ptzw_abort(ptzw *w);

/* ---- exposed for the unit tests -------------------------------------- */

/*! ptzw_zip64_extra() : the ZIP64 extended-information extra field (id
 *  0x0001) miniz writes for an entry of `size` bytes (`comp` is what goes in
 *  the compressed-size slot: 0 in a local header, size in the central
 *  directory) whose local header is at `lofs`: [uncompressed, compressed]
 *  when size >= limit, then [local header offset] when lofs >= limit.
 *  limit is 0xFFFFFFFF in real files.
 *  @return : its length in bytes, 0 when none is needed (at most 28). */
size_t ptzw_zip64_extra(uint64_t size, uint64_t comp, uint64_t lofs, uint64_t limit, uint8_t out[28]);

/*! ptzw_set_zip64_threshold() : tests only: use 64-bit (ZIP64) fields for
 *  sizes, offsets and counts >= threshold instead of >= 0xFFFFFFFF, so that
 *  the ZIP64 paths can be exercised with small files (0 restores). Call
 *  before the first entry. */
void ptzw_set_zip64_threshold(ptzw *w, uint64_t threshold);

#endif
