/* readahead.h - reads byte ranges of a file in a helper thread, one request
 * ahead of the caller, with O_DIRECT where the file system allows it.
 *
 * verify spends its time reading an output file it did not write in this
 * run: buffered reads of a cold file ran at a third of the disk's speed on
 * the development machine, and a read that waits for the disk stops the
 * conversion of the shards that it is compared with. The reader overlaps
 * the two and reads aligned spans with O_DIRECT (no page cache churn, full
 * speed); where O_DIRECT is refused (tmpfs, some network file systems) it
 * falls back to plain pread().
 *
 * A request is up to RA_MAX_RANGES ranges of one file, read into one of two
 * slots of `cap` bytes each: as one covering span when the ranges are dense
 * (the span fits and is at most twice their bytes), else range by range.
 * The pattern is post, post, then get / use / done / post, so that the
 * thread reads one request while the caller works on the other.
 */
#ifndef FM_READAHEAD_H
#define FM_READAHEAD_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define RA_ALIGN 4096u
#define RA_MAX_RANGES 512

/* One file, opened twice: buffered, and with O_DIRECT (dfd -1 when refused). */
typedef struct ra_file {
    int fd, dfd;
    const char *path; /* not owned; outlives the reads */
} ra_file;

/*! ra_file_open() : opens path for both kinds of read. */
int ra_file_open(ra_file *f, const char *path, fm_err *e);
/*! ra_file_close() : accepts a zeroed or failed ra_file. */
void ra_file_close(ra_file *f);

typedef struct ra_range {
    uint64_t off, len;
} ra_range;

typedef struct ra_reader ra_reader;

/*! ra_open() : starts the thread and allocates two slots of cap bytes (cap
 *  bounds each request's bytes, and its span when read as one). */
int ra_open(ra_reader **r, size_t cap, fm_err *e);
/*! ra_post() : queues a read of n ranges of f (each range at most cap bytes
 *  in all). Needs a free slot: at most two requests outstanding (posted and
 *  not yet done). The ranges are copied. */
int ra_post(ra_reader *r, ra_file *f, const ra_range *ranges, size_t n, fm_err *e);
/*! ra_get() : waits for the oldest posted request; at[k] points at range k's
 *  bytes, valid until ra_done(). A range that ends past the end of the file
 *  is FM_EFORMAT "PATH ends at byte N, before ...". */
int ra_get(ra_reader *r, const uint8_t *const **at, fm_err *e);
/*! ra_done() : the request ra_get() returned is used; its slot is free. */
void ra_done(ra_reader *r);
/*! ra_drain() : waits for every request posted and not yet done and frees
 *  its slot, so that the files they read may be closed (a caller that stops
 *  at an error with a request still in flight). */
void ra_drain(ra_reader *r);
/*! ra_close() : waits for the thread and frees everything; accepts NULL. */
void ra_close(ra_reader *r);

#endif
