/* test_crc32c.c - CRC-32C known values, and CRCs assembled from segments
 * in any order equal the CRC of the whole message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/crc32c.h"

static void fill(unsigned char *b, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        b[i] = (unsigned char)(seed >> 24);
    }
}

/* bit by bit, straight from the definition */
static uint32_t slow(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

static void test_known_values(void **state)
{
    (void)state;
    assert_int_equal(crc32c_update(0, "123456789", 9), 0xE3069283u); /* the CRC-32C check value */
    assert_int_equal(crc32c_update(0, NULL, 0), 0);
    unsigned char zeros[32] = {0};
    assert_int_equal(crc32c_update(0, zeros, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
    unsigned char ff[32];
    memset(ff, 0xff, sizeof ff);
    assert_int_equal(crc32c_update(0, ff, 32), 0x62A8AB43u);
}

static void test_every_length_and_alignment(void **state)
{
    (void)state;
    enum { MAX = 300 };
    unsigned char buf[MAX + 16];
    fill(buf, sizeof buf, 3);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n <= MAX; n++) assert_int_equal(crc32c_update(0, buf + off, n), slow(buf + off, n));
    /* continuing equals one call */
    assert_int_equal(crc32c_update(crc32c_update(0, buf, 100), buf + 100, 200), crc32c_update(0, buf, 300));
}

static void test_combine(void **state)
{
    (void)state;
    unsigned char buf[1000];
    fill(buf, sizeof buf, 9);
    for (size_t cut = 0; cut <= sizeof buf; cut += 37)
        assert_int_equal(crc32c_combine(crc32c_update(0, buf, cut), crc32c_update(0, buf + cut, sizeof buf - cut),
                                        sizeof buf - cut),
                         crc32c_update(0, buf, sizeof buf));
}

/* segments XORed in a scrambled order, as processes deliver them */
static void test_segments_any_order(void **state)
{
    (void)state;
    enum { N = 5000 };
    unsigned char *buf = malloc(N);
    fill(buf, N, 11);
    size_t cuts[] = {0, 1, 7, 8, 300, 301, 2048, 4095, 4999, N};
    size_t ncut = sizeof cuts / sizeof cuts[0];
    for (int pass = 0; pass < 3; pass++) {
        uint32_t acc = 0;
        for (size_t i = 0; i + 1 < ncut; i++) {
            size_t k = (i * 7 + (size_t)pass) % (ncut - 1); /* a permutation of the segments */
            acc ^= crc32c_segment(buf + cuts[k], cuts[k + 1] - cuts[k], N - cuts[k + 1]);
        }
        assert_int_equal(crc32c_finish(acc, N), crc32c_update(0, buf, N));
    }
    assert_int_equal(crc32c_finish(0, 0), 0);
    /* a large trailing length (a 10 GB tensor): shift agrees with feeding zeros in steps */
    uint32_t reg = 0x1234567u;
    unsigned char zeros[4096] = {0};
    uint32_t fed = reg;
    for (int i = 0; i < 300; i++) fed = crc32c_raw(fed, zeros, sizeof zeros);
    assert_int_equal(crc32c_shift(reg, 300 * 4096), fed);
    assert_int_equal(crc32c_shift(crc32c_shift(reg, 10000000000ull), 5), crc32c_shift(reg, 10000000005ull));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_every_length_and_alignment),
        cmocka_unit_test(test_combine),
        cmocka_unit_test(test_segments_any_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
