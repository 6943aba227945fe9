/* test_manifest.c - fsdpmerge_manifest.json: built from a plan, printed like
 * json.dumps(indent=2), read back by mf_parse; malformed ones refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cmd/manifest.h"

static void test_round_trip(void **state)
{
    (void)state;
    char n0[] = "model.embed_tokens.weight", n1[] = "caf\xc3\xa9.bias";
    char f0[] = "model-00001-of-00002.safetensors", f1[] = "model-00002-of-00002.safetensors";
    plan_tensor t[2];
    plan_file f[2];
    memset(t, 0, sizeof t);
    memset(f, 0, sizeof f);
    t[0] = (plan_tensor){.name = n0, .out_dtype = DT_BF16, .ndim = 2, .shape = {4, 3}, .file = 0,
                         .begin = 0, .end = 24};
    t[1] = (plan_tensor){.name = n1, .out_dtype = DT_I64, .ndim = 0, .file = 1, .begin = 0, .end = 8};
    f[0] = (plan_file){.name = f0, .size = 100};
    f[1] = (plan_file){.name = f1, .size = 80};
    plan pl = {.tensors = t, .ntensors = 2, .files = f, .nfiles = 2, .total_bytes = 32};
    uint32_t crc[2] = {0xdeadbeefu, 0x00000001u};
    mf_info in = {.command_line = "fsdpmerge ck --output \"o\"", .source = "ck", .actor_dir = "ck/actor", .world_size = 4,
                  .fsdp_version = 2, .nprocs = 2, .dtype = "bfloat16", .mode = "gather", .format = "safetensors",
                  .max_shard_size = 100000};
    fm_buf out = {0};
    fm_err e = {0};
    assert_int_equal(mf_build(&in, &pl, crc, &out, &e), 0);
    fm_buf_putc(&out, '\0');
    const char *text = (const char *)out.data;
    assert_true(strncmp(text, "{\n  \"manifest\": \"fsdpmerge/1\",\n  \"tool_version\": ", 48) == 0);
    assert_non_null(strstr(text, "\"command_line\": \"fsdpmerge ck --output \\\"o\\\"\""));
    assert_non_null(strstr(text, "\"torch_version\": null"));
    assert_non_null(strstr(text, "\"caf\\u00e9.bias\""));           /* ensure_ascii, as Python */
    assert_non_null(strstr(text, "\"crc32c\": \"00000001\""));      /* 8 digits */
    assert_int_equal(text[strlen(text) - 1], '\n');
    mf_manifest m;
    assert_int_equal(mf_parse(text, strlen(text), &m, &e), 0);
    assert_int_equal(m.ntensors, 2);
    assert_string_equal(m.dtype, "bfloat16");
    assert_int_equal(m.max_shard_size, 100000);
    assert_string_equal(m.tensors[0].name, "model.embed_tokens.weight");
    assert_string_equal(m.tensors[0].file, "model-00001-of-00002.safetensors");
    assert_string_equal(m.tensors[0].dtype, "BF16");
    assert_int_equal(m.tensors[0].crc32c, 0xdeadbeefu);
    assert_string_equal(m.tensors[1].name, "caf\xc3\xa9.bias");
    assert_string_equal(m.tensors[1].dtype, "I64");
    assert_int_equal(m.tensors[1].crc32c, 1);
    mf_free(&m);
    fm_buf_free(&out);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{}",
        "[]",
        "{\"tensors\": []}",
        "{\"tensors\": {\"a\": {\"file\": \"f\", \"dtype\": \"F32\"}}}",
        "{\"tensors\": {\"a\": {\"file\": \"f\", \"dtype\": \"F32\", \"crc32c\": \"12345\"}}}",
        "{\"tensors\": {\"a\": {\"file\": \"f\", \"dtype\": \"F32\", \"crc32c\": \"1234567g\"}}}",
        "{\"tensors\": {\"a\": {\"file\": 3, \"dtype\": \"F32\", \"crc32c\": \"12345678\"}}}",
        "{\"tensors\": {\"a\": 5}}",
        "{\"tensors\": {",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mf_manifest m;
        fm_err e = {0};
        assert_int_equal(mf_parse(bad[i], strlen(bad[i]), &m, &e), FM_EFORMAT);
        mf_free(&m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
