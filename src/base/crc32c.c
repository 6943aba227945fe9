/* crc32c.c - see crc32c.h. */
#include "base/crc32c.h"

#include <stdbool.h>
#include <string.h>

#define POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static uint32_t x2n[64]; /* x^(2^k) mod P */
static bool ready, hw;

static void init(void)
{
    if (ready) return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    hw = __builtin_cpu_supports("sse4.2");
#endif
    ready = true; /* the tables are identical whoever builds them first */
}

/* a * b modulo P, both reflected (bit 31 is x^0) */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
    }
    return p;
}

static void init_x2n(void)
{
    static bool done;
    if (done) return;
    uint32_t p = 1u << 30; /* x^1 */
    for (int k = 0; k < 64; k++) {
        x2n[k] = p;
        p = multmodp(p, p);
    }
    done = true;
}

static uint32_t raw_sw(uint32_t c, const uint8_t *p, size_t n)
{
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c; /* little-endian hosts only: the build targets x86-64 and arm64 */
        c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
            table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static uint32_t raw_hw(uint32_t c, const uint8_t *p, size_t n)
{
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = _mm_crc32_u64(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = _mm_crc32_u8(c, *p++);
    return c;
}
#endif

uint32_t crc32c_raw(uint32_t reg, const void *p, size_t n)
{
    init();
#if defined(__x86_64__) && defined(__GNUC__)
    if (hw) return raw_hw(reg, p, n);
#endif
    return raw_sw(reg, p, n);
}

uint32_t crc32c_update(uint32_t crc, const void *p, size_t n)
{
    return ~crc32c_raw(~crc, p, n);
}

uint32_t crc32c_shift(uint32_t reg, uint64_t n)
{
    init_x2n();
    uint32_t p = 1u << 31; /* x^0 */
    for (int k = 3; n; n >>= 1, k++) /* n bytes = 8n bits: start at x^(2^3) */
        if (n & 1) p = multmodp(x2n[k & 63], p);
    return multmodp(p, reg);
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    return crc32c_shift(crc_a, len_b) ^ crc_b;
}

uint32_t crc32c_segment(const void *p, size_t n, uint64_t trailing)
{
    return crc32c_shift(crc32c_raw(0, p, n), trailing);
}

uint32_t crc32c_finish(uint32_t acc, uint64_t len)
{
    return ~(crc32c_shift(0xffffffffu, len) ^ acc);
}

int crc32c_hw(void)
{
    init();
    return hw;
}
