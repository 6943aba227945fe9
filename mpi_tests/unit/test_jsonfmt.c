/* test_jsonfmt.c - jsonfmt: Python json.dumps() layout, raw tokens, edits, errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf/jsonfmt.h"
#include "testutil.h"


static const char *const FIXTURES[] = {
    "fsdp2_ws4_tied",   "fsdp1_ws4_mesh",     "fsdp1_ws2_nomesh",     "fsdp2_ws8_uneven_bf16", "fsdp2_ws4_shard1",
    "fsdp2_ws2_cudarng", "fsdp2_ws4_lora",    "plain_ws2_replicated", "plain_ws2_dim0halves",
};

/* Parses json and prints it; returns the malloc'd text (NUL-terminated). */
static char *reprint(const char *json, int indent, bool sort, bool canonical)
{
    jf_node *root = NULL;
    fm_err e = {0};
    int rc = jf_parse(json, strlen(json), 0, &root, NULL, &e);
    if (rc != 0) fail_msg("parse failed: %s", e.msg);
    jf_print_opts o = {.indent = indent, .sort_keys = sort, .canonical = canonical};
    fm_buf b = {0};
    assert_int_equal(jf_print(root, &o, &b, &e), 0);
    fm_buf_terminate(&b);
    jf_free(root);
    return (char *)b.data;
}

static void assert_reprint(const char *json, int indent, bool sort, bool canonical, const char *expected)
{
    char *got = reprint(json, indent, sort, canonical);
    assert_string_equal(got, expected);
    free(got);
}

/* Expects a syntax error at byte `off`, reported as FM_EFORMAT "at byte N". */
static void assert_parse_error(const char *json, size_t len, int max_depth, size_t off)
{
    jf_node *root = (jf_node *)&root; /* must be reset to NULL */
    fm_err e = {0};
    size_t got = (size_t)-1;
    assert_int_equal(jf_parse(json, len, max_depth, &root, &got, &e), FM_EFORMAT);
    assert_null(root);
    assert_int_equal(got, off);
    char want[64];
    snprintf(want, sizeof want, "at byte %zu", off);
    if (strstr(e.msg, want) == NULL) fail_msg("message '%s' lacks '%s'", e.msg, want);
}

/* A file written by json.dumps(indent=2) must come back byte for byte, in
 * both key orders (the files are sorted) and both scalar modes. */
static int roundtrip_file(const char *path, bool trailing_newline)
{
    size_t len;
    char *text = (char *)tu_slurp(path, &len);
    if (text == NULL) return 0;
    for (int mode = 0; mode < 4; mode++) {
        jf_node *root = NULL;
        fm_err e = {0};
        if (jf_parse(text, len, 0, &root, NULL, &e) != 0) fail_msg("%s: %s", path, e.msg);
        jf_print_opts o = {.indent = 2, .sort_keys = mode & 1, .canonical = (mode & 2) != 0};
        fm_buf b = {0};
        assert_int_equal(jf_print(root, &o, &b, &e), 0);
        if (trailing_newline) fm_buf_putc(&b, '\n');
        if (b.len != len || memcmp(b.data, text, len) != 0) fail_msg("%s: round trip differs (mode %d)", path, mode);
        fm_buf_free(&b);
        jf_free(root);
    }
    free(text);
    return 1;
}

static void test_roundtrip_fixture_configs(void **state)
{
    (void)state;
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer_config.json"};
    int done = 0;
    for (size_t f = 0; f < FM_ARRAY_LEN(FIXTURES); f++) {
        for (size_t k = 0; k < FM_ARRAY_LEN(files); k++) {
            done += roundtrip_file(tu_fixturef("%s/global_step_1/actor/huggingface/%s", FIXTURES[f], files[k]), true);
            done += roundtrip_file(tu_fixturef("%s/reference/fp32/%s", FIXTURES[f], files[k]), true);
            done += roundtrip_file(tu_fixturef("%s/reference/bf16/%s", FIXTURES[f], files[k]), true);
        }
    }
    /* inputs: 7 checkpoints x 3 files + the 2 plain ones' config.json; references:
     * 7 x {fp32, bf16} x {config, generation_config} + the plain ones' fp32 pair */
    assert_int_equal(done, 7 * 3 + 2 + 7 * 2 * 2 + 2 * 2);
}

/* PEFT writes adapter_config.json with indent=2, sorted, no newline. */
static void test_roundtrip_adapter_config(void **state)
{
    (void)state;
    const char *path = tu_fixturef("fsdp2_ws4_lora/global_step_1/actor/lora_adapter/adapter_config.json");
    assert_int_equal(roundtrip_file(path, false), 1);
}

static void test_raw_tokens_preserved(void **state)
{
    (void)state;
    const char *in = "{\"theta\":10000.0,\"eps\":1e-06,\"z\":-0.0,\"big\":1E+30,\"s\":\"caf\\u00e9 \\/\",\"i\":-0,"
                     "\"n\":{\"b\":[[],{}],\"a\":{}},\"l\":[],\"t\":true,\"f\":false,\"u\":null,"
                     "\"x\":12345678901234567890123}";
    const char *want = "{\n"
                       "  \"big\": 1E+30,\n"
                       "  \"eps\": 1e-06,\n"
                       "  \"f\": false,\n"
                       "  \"i\": -0,\n"
                       "  \"l\": [],\n"
                       "  \"n\": {\n"
                       "    \"a\": {},\n"
                       "    \"b\": [\n"
                       "      [],\n"
                       "      {}\n"
                       "    ]\n"
                       "  },\n"
                       "  \"s\": \"caf\\u00e9 \\/\",\n"
                       "  \"t\": true,\n"
                       "  \"theta\": 10000.0,\n"
                       "  \"u\": null,\n"
                       "  \"x\": 12345678901234567890123,\n"
                       "  \"z\": -0.0\n"
                       "}";
    assert_reprint(in, 2, true, false, want);
}

static void test_unsorted_keeps_document_order(void **state)
{
    (void)state;
    assert_reprint("{\"b\":1,\"a\":[1,2]}", 2, false, false, "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2\n  ]\n}");
}

/* indent=None: one line with ", " and ": ". */
static void test_indent_none(void **state)
{
    (void)state;
    assert_reprint("{\"b\":[1,2,{\"y\":{}}],\"a\":{}}", -1, true, false, "{\"a\": {}, \"b\": [1, 2, {\"y\": {}}]}");
    assert_reprint("[]", -1, true, false, "[]");
}

/* indent=0: newlines without indentation. */
static void test_indent_zero(void **state)
{
    (void)state;
    assert_reprint("[1,[2]]", 0, true, false, "[\n1,\n[\n2\n]\n]");
}

static void test_scalar_roots(void **state)
{
    (void)state;
    assert_reprint("  \"x\"\n", 2, true, false, "\"x\"");
    assert_reprint("-1.5e3", 2, true, false, "-1.5e3");
    assert_reprint("null", 2, true, false, "null");
}

/* Python's extensions: NaN, Infinity, -Infinity are accepted and printed. */
static void test_nan_infinity(void **state)
{
    (void)state;
    assert_reprint("[NaN,Infinity,-Infinity]", -1, true, false, "[NaN, Infinity, -Infinity]");
    assert_reprint("[NaN,Infinity,-Infinity]", -1, true, true, "[NaN, Infinity, -Infinity]");
}

/* Python str order is by code point: Z < z < U+00E9 < U+FFFF < U+1F600. */
static void test_sort_by_code_point(void **state)
{
    (void)state;
    const char *in = "{\"\\ud83d\\ude00\":1,\"\\uffff\":2,\"\\u00e9\":3,\"z\":4,\"Z\":5}";
    assert_reprint(in, -1, true, false, "{\"Z\": 5, \"z\": 4, \"\\u00e9\": 3, \"\\uffff\": 2, \"\\ud83d\\ude00\": 1}");
    /* a raw UTF-8 key sorts by what it decodes to */
    assert_reprint("{\"\xc3\xa9\":1,\"\\u00e8\":2}", -1, true, false, "{\"\\u00e8\": 2, \"\xc3\xa9\": 1}");
}

/* json.loads keeps a repeated key at its first position with the last value. */
static void test_duplicate_keys(void **state)
{
    (void)state;
    assert_reprint("{\"d\":1,\"x\":2,\"d\":{\"k\":[1]},\"d\":3}", -1, false, false, "{\"d\": 3, \"x\": 2}");
}

static void test_canonical_numbers(void **state)
{
    (void)state;
    assert_reprint("[1E+30,1.0e4,-0,-0.0,0.1E-3,1e400,-1e400,1e-400,2.5e-5,100,1.5,1e16,1e15]", -1, true, true,
                   "[1e+30, 10000.0, 0, -0.0, 0.0001, Infinity, -Infinity, 0.0, 2.5e-05, 100, 1.5, 1e+16, "
                   "1000000000000000.0]");
}

static void test_canonical_strings(void **state)
{
    (void)state;
    /* raw UTF-8, \/ and uppercase hex come out as json.dumps escapes them */
    assert_reprint("[\"caf\xc3\xa9 \\/ \\u00E9 \\ud83d\\ude00 \xf0\x9f\x98\x80 \\ud800 \x7f \\u0000\"]", -1, true, true,
                   "[\"caf\\u00e9 / \\u00e9 \\ud83d\\ude00 \\ud83d\\ude00 \\ud800 \\u007f \\u0000\"]");
    assert_reprint("{\"\xc3\xa9\":1}", -1, true, true, "{\"\\u00e9\": 1}");
}

static void test_float_repr(void **state)
{
    (void)state;
    static const struct {
        double v;
        const char *s;
    } cases[] = {
        {1e-06, "1e-06"}, {10000.0, "10000.0"}, {0.02, "0.02"}, {0.1, "0.1"}, {0.0001, "0.0001"},
        {1e-05, "1e-05"}, {1e16, "1e+16"}, {1e15, "1000000000000000.0"}, {-0.0, "-0.0"}, {0.0, "0.0"},
        {5e-324, "5e-324"}, {1.7976931348623157e308, "1.7976931348623157e+308"},
        {0.30000000000000004, "0.30000000000000004"}, {123456789.0, "123456789.0"}, {-2.5, "-2.5"},
        {1.5e300, "1.5e+300"}, {0.7, "0.7"}, {1234.5678, "1234.5678"},
    };
    char buf[40];
    for (size_t i = 0; i < FM_ARRAY_LEN(cases); i++)
        assert_string_equal(jf_py_float_repr(cases[i].v, buf, sizeof buf), cases[i].s);
}

static void test_quote_py(void **state)
{
    (void)state;
    fm_buf b = {0};
    fm_err e = {0};
    const char s[] = "a\"b\\c\n\r\t\b\f\x01\x1f\x7f \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    assert_int_equal(jf_quote_py(&b, s, sizeof s - 1, &e), 0);
    fm_buf_terminate(&b);
    assert_string_equal((char *)b.data,
                        "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f \\u00e9\\u20ac\\ud83d\\ude00\"");
    b.len = 0;
    assert_int_equal(jf_quote_py(&b, "\xc3", 1, &e), FM_EFORMAT);      /* truncated sequence */
    assert_int_equal(jf_quote_py(&b, "\xed\xa0\x80", 3, &e), FM_EFORMAT); /* a surrogate in UTF-8 */
    assert_int_equal(jf_quote_py(&b, "\xc0\xaf", 2, &e), FM_EFORMAT);   /* overlong */
    fm_buf_free(&b);
}

static void test_string_decoding(void **state)
{
    (void)state;
    jf_node *root = NULL;
    const char *in = "[\"caf\\u00e9\\n\\ud83d\\ude00\\u0000x\", \"\\ud800\"]";
    assert_int_equal(jf_parse(in, strlen(in), 0, &root, NULL, NULL), 0);
    size_t len;
    const char *s = jf_string(jf_at(root, 0), &len);
    assert_int_equal(len, 12);
    assert_memory_equal(s, "caf\xc3\xa9\n\xf0\x9f\x98\x80\0x", 12);
    s = jf_string(jf_at(root, 1), &len);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "\xed\xa0\x80", 3); /* kept as Python keeps a lone surrogate */
    assert_null(jf_string(root, NULL));
    jf_free(root);
}

static void test_accessors(void **state)
{
    (void)state;
    jf_node *root = NULL;
    const char *in = "{\"a\": [1, \"two\", null], \"b\": 1e-06}";
    assert_int_equal(jf_parse(in, strlen(in), 0, &root, NULL, NULL), 0);
    assert_int_equal(jf_kind_of(root), JF_OBJECT);
    assert_int_equal(jf_size(root), 2);
    size_t len;
    assert_string_equal(jf_key_at(root, 1, &len), "b");
    assert_null(jf_key_at(root, 2, NULL));
    jf_node *a = jf_get(root, "a");
    assert_int_equal(jf_kind_of(a), JF_ARRAY);
    assert_int_equal(jf_size(a), 3);
    assert_int_equal(jf_kind_of(jf_at(a, 2)), JF_NULL);
    assert_null(jf_at(a, 3));
    assert_string_equal(jf_raw(jf_at(a, 1), &len), "\"two\"");
    assert_string_equal(jf_raw(jf_get(root, "b"), &len), "1e-06");
    assert_int_equal(len, 5);
    assert_null(jf_raw(a, NULL));
    assert_null(jf_get(root, "missing"));
    assert_null(jf_get(a, "a"));
    jf_free(root);
}

static char *print_unsorted(const jf_node *n)
{
    jf_print_opts o = {.indent = -1, .sort_keys = false};
    fm_buf b = {0};
    assert_int_equal(jf_print(n, &o, &b, NULL), 0);
    fm_buf_terminate(&b);
    return (char *)b.data;
}

static void test_edits(void **state)
{
    (void)state;
    jf_node *root = NULL;
    fm_err e = {0};
    const char *in = "{\"b\": 1, \"a\": 2}";
    assert_int_equal(jf_parse(in, strlen(in), 0, &root, NULL, &e), 0);
    assert_int_equal(jf_set(root, "b", "[\"x\"]", 5, &e), 0);        /* keeps its place */
    assert_int_equal(jf_set(root, "c", "1.50", 4, &e), 0);           /* goes last */
    assert_int_equal(jf_insert(root, 0, "\xc3\xa9", "{}", 2, &e), 0); /* first, key escaped */
    assert_int_equal(jf_insert(root, 99, "b", "true", 4, &e), 0);    /* moved to the end */
    char *s = print_unsorted(root);
    assert_string_equal(s, "{\"\\u00e9\": {}, \"a\": 2, \"c\": 1.50, \"b\": true}");
    free(s);
    assert_true(jf_delete(root, "a"));
    assert_false(jf_delete(root, "a"));
    assert_int_equal(jf_set(root, "c", "[1,", 3, &e), FM_EFORMAT); /* bad value: unchanged */
    s = print_unsorted(root);
    assert_string_equal(s, "{\"\\u00e9\": {}, \"c\": 1.50, \"b\": true}");
    free(s);
    assert_int_equal(jf_set(jf_get(root, "b"), "k", "1", 1, &e), FM_EINTERNAL);
    assert_int_equal(jf_set(root, "\xff", "1", 1, &e), FM_EFORMAT); /* key not UTF-8 */
    jf_free(root);
}

static void test_error_trailing_comma(void **state)
{
    (void)state;
    assert_parse_error("[1, 2,]", 7, 0, 5);
    assert_parse_error("{\"a\": 1,}", 9, 0, 7);
    assert_parse_error("{\"a\": 1, }", 10, 0, 7);
}

static void test_error_unterminated_string(void **state)
{
    (void)state;
    assert_parse_error("\"abc", 4, 0, 0);
    assert_parse_error("{\"a\": \"b\\", 9, 0, 8);
    /* the length bounds the parse even when a NUL-terminated string goes on */
    assert_parse_error("\"abc\"", 3, 0, 0);
}

static void test_error_bad_escape(void **state)
{
    (void)state;
    assert_parse_error("\"a\\qb\"", 6, 0, 2);
    assert_parse_error("\"\\u12G4\"", 8, 0, 1);
    assert_parse_error("\"\\u12\"", 6, 0, 1);
    assert_parse_error("\"a\x01\"", 4, 0, 2);     /* raw control character */
    assert_parse_error("\"a\xff\"", 4, 0, 2);     /* invalid UTF-8 */
    assert_parse_error("\"\xed\xa0\x80\"", 5, 0, 1); /* encoded surrogate */
}

static void test_error_trailing_garbage(void **state)
{
    (void)state;
    assert_parse_error("{\"a\": 1} x", 10, 0, 9);
    assert_parse_error("01", 2, 0, 1);
    assert_parse_error("[1] [2]", 7, 0, 4);
    assert_parse_error("{}\0", 3, 0, 2);
}

static void test_error_syntax(void **state)
{
    (void)state;
    assert_parse_error("", 0, 0, 0);
    assert_parse_error("   ", 3, 0, 3);
    assert_parse_error("{\"a\" 1}", 7, 0, 5);
    assert_parse_error("[1 2]", 5, 0, 3);
    assert_parse_error("{1: 2}", 6, 0, 1);
    assert_parse_error("-", 1, 0, 0);
    assert_parse_error("1.", 2, 0, 0);
    assert_parse_error("1e+", 3, 0, 0);
    assert_parse_error("nul", 3, 0, 0);
    assert_parse_error("[", 1, 0, 1);
    assert_parse_error("{\"a\":", 5, 0, 5);
    assert_parse_error("\xef\xbb\xbf{}", 5, 0, 0); /* a BOM, which json.loads refuses too */
    assert_parse_error("'a'", 3, 0, 0);
}

static char *nested(size_t depth)
{
    char *s = malloc(2 * depth + 1);
    memset(s, '[', depth);
    memset(s + depth, ']', depth);
    s[2 * depth] = '\0';
    return s;
}

static void test_depth_limit(void **state)
{
    (void)state;
    jf_node *root = NULL;
    char *s = nested(JF_DEFAULT_MAX_DEPTH);
    assert_int_equal(jf_parse(s, strlen(s), 0, &root, NULL, NULL), 0);
    jf_free(root);
    free(s);
    s = nested(JF_DEFAULT_MAX_DEPTH + 1);
    assert_parse_error(s, strlen(s), 0, JF_DEFAULT_MAX_DEPTH);
    free(s);
    s = nested(5);
    assert_parse_error(s, strlen(s), 4, 4);
    free(s);
    /* a caller's limit never exceeds the hard bound */
    s = nested(JF_HARD_MAX_DEPTH + 1);
    assert_parse_error(s, strlen(s), 1 << 30, JF_HARD_MAX_DEPTH);
    free(s);
    const char *obj = "{\"a\":{\"b\":{}}}";
    assert_parse_error(obj, strlen(obj), 2, 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_fixture_configs),
        cmocka_unit_test(test_roundtrip_adapter_config),
        cmocka_unit_test(test_raw_tokens_preserved),
        cmocka_unit_test(test_unsorted_keeps_document_order),
        cmocka_unit_test(test_indent_none),
        cmocka_unit_test(test_indent_zero),
        cmocka_unit_test(test_scalar_roots),
        cmocka_unit_test(test_nan_infinity),
        cmocka_unit_test(test_sort_by_code_point),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_canonical_numbers),
        cmocka_unit_test(test_canonical_strings),
        cmocka_unit_test(test_float_repr),
        cmocka_unit_test(test_quote_py),
        cmocka_unit_test(test_string_decoding),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_edits),
        cmocka_unit_test(test_error_trailing_comma),
        cmocka_unit_test(test_error_unterminated_string),
        cmocka_unit_test(test_error_bad_escape),
        cmocka_unit_test(test_error_trailing_garbage),
        cmocka_unit_test(test_error_syntax),
        cmocka_unit_test(test_depth_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
