/* crc32c.h - CRC-32C (Castagnoli), and combining CRCs of pieces of a message.
 *
 * The manifest of a merge holds a CRC-32C per output tensor. No process
 * converts a whole tensor, and a process's segments of it arrive in any
 * order, so the CRC is built from pieces: a CRC register is linear over
 * GF(2), so the register of a message that is zero outside a segment S
 * followed by t zero bytes is shift(raw(S), t), and the register of the
 * whole tensor is the XOR of those of its segments. Each process XORs its
 * segments' terms into one word per tensor, the words are XOR-reduced across
 * processes, and crc32c_finish() adds the initial value and final inversion.
 * shift() multiplies by x^(8t) modulo the polynomial (zlib's
 * crc32_combine method), O(log t).
 *
 * SSE4.2's crc32 instruction does the bytes when the CPU has it; a table
 * otherwise. Same results.
 */
#ifndef FM_CRC32C_H
#define FM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/*! crc32c_update() : the standard CRC-32C, continued from crc (0 to start). */
uint32_t crc32c_update(uint32_t crc, const void *p, size_t n);

/*! crc32c_raw() : the bare register update (no inversions). */
uint32_t crc32c_raw(uint32_t reg, const void *p, size_t n);

/*! crc32c_shift() : the register after feeding n zero bytes to reg. */
uint32_t crc32c_shift(uint32_t reg, uint64_t n);

/*! crc32c_combine() : CRC of A then B from crc(A), crc(B) and len(B). */
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/*! crc32c_segment() : the term a segment p[0..n) followed by `trailing`
 *  bytes of the message adds (XOR) into the message's accumulator. */
uint32_t crc32c_segment(const void *p, size_t n, uint64_t trailing);

/*! crc32c_finish() : the CRC-32C of a len-byte message whose segments'
 *  terms XOR to acc (acc 0 and len 0: the empty message, CRC 0). */
uint32_t crc32c_finish(uint32_t acc, uint64_t len);

/*! crc32c_hw() : the SSE4.2 instruction is in use. */
int crc32c_hw(void);

#endif
