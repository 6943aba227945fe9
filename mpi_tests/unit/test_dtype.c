/* test_dtype.c - dtype table and torch-exact float conversions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <immintrin.h>

#include "base/dtype.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float flt(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Spot values quoted in torch_format.md section 7.2. */
static void test_f16_spot_values(void **state)
{
    (void)state;
    assert_int_equal(dt_f32_to_f16(bits(65504.0f)), 0x7BFF);
    assert_int_equal(dt_f32_to_f16(bits(65519.99f)), 0x7BFF);
    assert_int_equal(dt_f32_to_f16(bits(65520.0f)), 0x7C00);
    assert_int_equal(dt_f32_to_f16(bits(0x1p-24f)), 0x0001);
    assert_int_equal(dt_f32_to_f16(bits(0x1p-25f)), 0x0000); /* tie to even */
    assert_int_equal(dt_f32_to_f16(bits(3.0e-8f)), 0x0001);
    assert_int_equal(dt_f32_to_f16(bits(0x1p-149f)), 0x0000);
    assert_int_equal(dt_f32_to_f16(bits(-1.0f)), 0xBC00);
    assert_int_equal(dt_f32_to_f16(bits(-0.0f)), 0x8000);
    assert_int_equal(dt_f32_to_f16(0x7F800000u), 0x7C00);
    assert_int_equal(dt_f32_to_f16(0x7FC00000u), 0x7E00);
    assert_int_equal(dt_f32_to_f16(0xFFFFFFFFu), 0xFFFF); /* F16C keeps sign and payload */
}

static void test_bf16_spot_values(void **state)
{
    (void)state;
    assert_int_equal(dt_f32_to_bf16(0x7F7FFFFFu), 0x7F80); /* rounds up to inf */
    assert_int_equal(dt_f32_to_bf16(0x3F808000u), 0x3F80); /* tie, even stays */
    assert_int_equal(dt_f32_to_bf16(0x3F818000u), 0x3F82); /* tie, odd rounds up */
    assert_int_equal(dt_f32_to_bf16(0x3F808001u), 0x3F81);
    assert_int_equal(dt_f32_to_bf16(0x00008001u), 0x0001); /* subnormal rounded, not flushed */
    assert_int_equal(dt_f32_to_bf16(0x80000000u), 0x8000);
    assert_int_equal(dt_f32_to_bf16(0xFF800000u), 0xFF80);
    assert_int_equal(dt_f32_to_bf16(0x7FC00000u), 0xFFFF); /* torch's vectorised CPU kernel */
    assert_int_equal(dt_f32_to_bf16(0xFF812345u), 0xFFFF);
    assert_int_equal(dt_f32_to_bf16(bits(1.0f)), 0x3F80);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* The vectorisable bulk path must equal the scalar reference everywhere. */
static void test_bulk_equals_scalar(void **state)
{
    (void)state;
    enum { N = 1 << 16 };
    static uint32_t src[N];
    static uint16_t dst[N];
    for (int round = 0; round < 32; round++) {
        for (int i = 0; i < N; i++) src[i] = next32();
        src[0] = 0x7FC00000u;
        src[1] = 0x00000001u;
        assert_true(dt_convert(DT_F32, DT_BF16, src, dst, N, false));
        for (int i = 0; i < N; i++) assert_int_equal(dst[i], dt_f32_to_bf16(src[i]));
        assert_true(dt_convert(DT_F32, DT_F16, src, dst, N, false));
        for (int i = 0; i < N; i++) assert_int_equal(dst[i], dt_f32_to_f16(src[i]));
    }
}

/* The software fp16 rounding against the F16C instruction (RNE) on every
 * exponent and many mantissas: they must agree except on NaN payloads. */
__attribute__((target("f16c"))) static uint16_t hw_f16(uint32_t u)
{
    return (uint16_t)_cvtss_sh(flt(u), _MM_FROUND_TO_NEAREST_INT);
}

static void test_f16_matches_f16c(void **state)
{
    (void)state;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("f16c")) {
        /* no hardware reference here: compare with widening round trips instead */
        for (uint32_t h = 0; h < 0x10000; h++)
            if ((h & 0x7C00) != 0x7C00 || (h & 0x3FF) == 0) assert_int_equal(dt_f32_to_f16(dt_f16_to_f32((uint16_t)h)), h);
        return;
    }
    for (uint32_t e = 0; e < 256; e++) {
        for (uint32_t k = 0; k < 4096; k++) {
            uint32_t m = (k < 64) ? (k << 7) | (k & 1) : next32() & 0x7FFFFFu;
            uint32_t u = (e << 23) | m | ((k & 2) ? 0x80000000u : 0);
            if ((u & 0x7FFFFFFFu) > 0x7F800000u) continue;
            assert_int_equal(dt_f32_to_f16(u), hw_f16(u));
        }
    }
}

static void test_widening_is_exact(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint32_t f = dt_f16_to_f32((uint16_t)h);
        bool nan = (h & 0x7C00) == 0x7C00 && (h & 0x3FF);
        if (!nan) assert_int_equal(dt_f32_to_f16(f), h);
        assert_int_equal(dt_bf16_to_f32((uint16_t)h), h << 16);
    }
    assert_true(flt(dt_f16_to_f32(0x0001)) == 0x1p-24f);
    assert_true(flt(dt_f16_to_f32(0x3C00)) == 1.0f);
}

static void test_big_endian_and_identity(void **state)
{
    (void)state;
    uint8_t be[8] = {0x3F, 0x80, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00}; /* 1.0f, -2.0f */
    uint16_t out[2];
    assert_true(dt_convert(DT_F32, DT_BF16, be, out, 2, true));
    assert_int_equal(out[0], 0x3F80);
    assert_int_equal(out[1], 0xC000);
    uint8_t i64be[8] = {0, 0, 0, 0, 0, 0, 1, 2};
    int64_t v;
    assert_true(dt_convert(DT_I64, DT_I64, i64be, &v, 1, true));
    assert_int_equal(v, 0x0102);
    assert_false(dt_convert(DT_I64, DT_F32, i64be, &v, 1, false)); /* ints are never converted */
    /* a big-endian complex64 is two big-endian floats */
    uint8_t cbe[8] = {0x3F, 0x80, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00};
    float cf[2];
    assert_true(dt_convert(DT_C64, DT_C64, cbe, cf, 1, true));
    assert_true(cf[0] == 1.0f && cf[1] == -2.0f);
    double d = 1.0 + 0x1p-30;
    float f;
    assert_true(dt_convert(DT_F64, DT_F32, &d, &f, 1, false));
    assert_true(f == 1.0f);
}

static void test_names(void **state)
{
    (void)state;
    assert_int_equal(dt_from_torch_name("torch.bfloat16"), DT_BF16);
    assert_int_equal(dt_from_torch_name("half"), DT_F16);
    assert_int_equal(dt_from_torch_name("float"), DT_F32);
    assert_int_equal(dt_from_torch_name("nope"), DT_INVALID);
    assert_int_equal(dt_from_storage_class("BFloat16Storage"), DT_BF16);
    assert_int_equal(dt_from_storage_class("LongStorage"), DT_I64);
    assert_int_equal(dt_from_storage_class("UntypedStorage"), DT_INVALID);
    assert_string_equal(dt_st_name(DT_BF16), "BF16");
    assert_int_equal(dt_from_st_name("F16"), DT_F16);
    assert_int_equal(dt_size(DT_C64), 8);
    /* safetensors orders by descending Dtype enum: I64 > F64 > F32 > BF16 > F16 > U8 > BOOL */
    assert_true(dt_st_order(DT_I64) > dt_st_order(DT_F64));
    assert_true(dt_st_order(DT_F64) > dt_st_order(DT_F32));
    assert_true(dt_st_order(DT_F32) > dt_st_order(DT_BF16));
    assert_true(dt_st_order(DT_BF16) > dt_st_order(DT_F16));
    assert_true(dt_st_order(DT_U8) > dt_st_order(DT_BOOL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_spot_values),   cmocka_unit_test(test_bf16_spot_values),
        cmocka_unit_test(test_bulk_equals_scalar), cmocka_unit_test(test_f16_matches_f16c),
        cmocka_unit_test(test_widening_is_exact),  cmocka_unit_test(test_big_endian_and_identity),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
