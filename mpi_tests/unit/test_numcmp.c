/* test_numcmp.c - comparisons with tolerances across dtypes (verify --reference). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "base/numcmp.h"

static double scratch[64];

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_bytes(void **state)
{
    (void)state;
    nc_tol none = {0, 0};
    uint16_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4};
    assert_true(nc_bytewise(DT_BF16, DT_BF16, &none));
    assert_int_equal(nc_first_diff(DT_BF16, a, DT_BF16, b, 4, &none, scratch), 4);
    b[2] ^= 0x100; /* the high byte of element 2 */
    assert_int_equal(nc_first_diff(DT_BF16, a, DT_BF16, b, 4, &none, scratch), 2);
    /* across dtypes without a tolerance: not comparable */
    assert_false(nc_comparable(DT_BF16, DT_F32, &none));
    /* integers: bytes even with a tolerance */
    nc_tol tol = {1, 0};
    int64_t i1[2] = {5, 6}, i2[2] = {5, 7};
    assert_true(nc_comparable(DT_I64, DT_I64, &tol));
    assert_int_equal(nc_first_diff(DT_I64, i1, DT_I64, i2, 2, &tol, scratch), 1);
    assert_false(nc_comparable(DT_I64, DT_F32, &tol));
}

/* a bf16 output against its fp32 reference: bf16 keeps 8 significant bits,
 * so round-to-nearest is within a relative 2^-9 */
static void test_bf16_against_f32(void **state)
{
    (void)state;
    float ref[5] = {1.0f, 3.14159265f, -2.7182818f, 1e-3f, 65504.0f};
    uint16_t out[5];
    for (int i = 0; i < 5; i++) out[i] = dt_f32_to_bf16(f32_bits(ref[i]));
    nc_tol ok = {0, 1.0 / 512}, tight = {0, 1e-6};
    assert_true(nc_comparable(DT_BF16, DT_F32, &ok));
    assert_int_equal(nc_first_diff(DT_BF16, out, DT_F32, ref, 5, &ok, scratch), 5);
    assert_int_equal(nc_first_diff(DT_BF16, out, DT_F32, ref, 5, &tight, scratch), 1); /* 1.0 is exact, pi is not */
    out[3] = dt_f32_to_bf16(f32_bits(2e-3f));                                         /* twice the reference */
    assert_int_equal(nc_first_diff(DT_BF16, out, DT_F32, ref, 5, &ok, scratch), 3);
    nc_tol abs_only = {5e-4, 0};
    assert_int_equal(nc_first_diff(DT_BF16, out, DT_F32, ref, 4, &abs_only, scratch), 1); /* pi: 3.140625, off by 9.7e-4 */
}

static void test_specials(void **state)
{
    (void)state;
    nc_tol tol = {1e-3, 1e-3};
    float a[4] = {NAN, INFINITY, -INFINITY, 0.0f}, b[4] = {NAN, INFINITY, -INFINITY, -0.0f};
    assert_int_equal(nc_first_diff(DT_F32, a, DT_F32, b, 4, &tol, scratch), 4);
    float c[2] = {NAN, 1.0f}, d[2] = {1.0f, NAN};
    assert_int_equal(nc_first_diff(DT_F32, c, DT_F32, d, 2, &tol, scratch), 0);
    assert_int_equal(nc_first_diff(DT_F32, c + 1, DT_F32, d + 1, 1, &tol, scratch), 0);
    float e[1] = {INFINITY}, f[1] = {-INFINITY};
    assert_int_equal(nc_first_diff(DT_F32, e, DT_F32, f, 1, &tol, scratch), 0);
    /* f16 against f64 */
    uint16_t h[2] = {0x3c00, 0xc000}; /* 1.0, -2.0 */
    double g[2] = {1.0, -2.0005};
    assert_int_equal(nc_first_diff(DT_F16, h, DT_F64, g, 2, &tol, scratch), 2);
    double g2[2] = {1.0, -2.01};
    assert_int_equal(nc_first_diff(DT_F16, h, DT_F64, g2, 2, &tol, scratch), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_bf16_against_f32),
        cmocka_unit_test(test_specials),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
