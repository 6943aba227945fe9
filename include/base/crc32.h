/* crc32.h - CRC-32 (the zip/zlib polynomial), fast.
 *
 * Every byte of every tensor record is checked against the CRC-32 torch
 * stored in the zip, so the CRC runs at the volume of the whole model. On
 * x86-64 CPUs with PCLMULQDQ it folds 64 bytes per step with carry-less
 * multiplication (Intel's "Fast CRC Computation Using PCLMULQDQ"), several
 * times faster than zlib's table code; elsewhere, and for short or
 * unaligned tails, zlib's crc32() does the work. The result is the same.
 */
#ifndef FM_CRC32_H
#define FM_CRC32_H

#include <stddef.h>
#include <stdint.h>

/*! crc_update() : continues crc (0 to start) over p[0..n). */
uint32_t crc_update(uint32_t crc, const void *p, size_t n);

/*! crc_update_portable() : the same with zlib only (for tests and comparison). */
uint32_t crc_update_portable(uint32_t crc, const void *p, size_t n);

/*! crc_accelerated() : the carry-less multiplication path is in use. */
int crc_accelerated(void);

#endif
