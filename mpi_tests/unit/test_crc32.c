/* test_crc32.c - the folded CRC-32 equals zlib's on every length and alignment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "base/crc32.h"

static void fill(unsigned char *b, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        b[i] = (unsigned char)(seed >> 24);
    }
}

static void test_known_value(void **state)
{
    (void)state;
    /* the CRC-32 check value of "123456789" */
    assert_int_equal(crc_update(0, "123456789", 9), 0xCBF43926u);
    unsigned char zeros[4096] = {0};
    assert_int_equal(crc_update(0, zeros, sizeof zeros), crc_update_portable(0, zeros, sizeof zeros));
    assert_int_equal(crc_update(0, NULL, 0), 0);
}

static void test_every_length_and_alignment(void **state)
{
    (void)state;
    enum { MAX = 1200 };
    unsigned char *buf = malloc(MAX + 64);
    fill(buf, MAX + 64, 7);
    for (size_t off = 0; off < 17; off++)
        for (size_t n = 0; n <= MAX; n++)
            assert_int_equal(crc_update(0x12345678u, buf + off, n), crc_update_portable(0x12345678u, buf + off, n));
    free(buf);
}

/* Streaming in uneven pieces gives the CRC of the whole. */
static void test_streaming(void **state)
{
    (void)state;
    size_t n = (3u << 20) + 77;
    unsigned char *buf = malloc(n);
    fill(buf, n, 99);
    uint32_t whole = crc_update_portable(0, buf, n), c = 0;
    size_t pos = 0, step = 1;
    while (pos < n) {
        size_t take = step < n - pos ? step : n - pos;
        c = crc_update(c, buf + pos, take);
        pos += take;
        step = step * 3 + 5;
    }
    assert_int_equal(c, whole);
    assert_int_equal(crc_update(0, buf, n), whole);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_value),
        cmocka_unit_test(test_every_length_and_alignment),
        cmocka_unit_test(test_streaming),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
