/* test_st.c - safetensors layout, header writer and header parser. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf/st.h"
#include "testutil.h"

static const char *const FIXTURES[] = {
    "fsdp2_ws4_tied",   "fsdp1_ws4_mesh",     "fsdp1_ws2_nomesh",     "fsdp2_ws8_uneven_bf16", "fsdp2_ws4_shard1",
    "fsdp2_ws2_cudarng", "fsdp2_ws4_lora",    "plain_ws2_replicated", "plain_ws2_dim0halves",
};


static st_entry tensor(const char *name, dt_type dt, int ndim, const int64_t *shape)
{
    st_entry t = {.name = name, .dtype = dt, .ndim = ndim};
    for (int d = 0; d < ndim; d++) t.shape[d] = shape[d];
    return t;
}

/* The file bytes for a header JSON: length prefix, JSON, then `data` bytes
 * of tensor data. */
static uint8_t *make_file(const char *json, size_t data, size_t *len)
{
    size_t n = strlen(json);
    uint8_t *b = calloc(1, 8 + n + data + 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, json, n);
    *len = 8 + n + data;
    return b;
}

/* Parses a hand-written header; returns the code and the message in e. */
static int parse_json(const char *json, size_t data, uint64_t file_size, st_header_info *h, fm_err *e)
{
    size_t len;
    uint8_t *b = make_file(json, data, &len);
    int rc = st_parse_header(b, len, file_size, h, e);
    free(b);
    return rc;
}

static void assert_parse_fails(const char *json, size_t data, uint64_t file_size, int code, const char *needle)
{
    st_header_info h;
    fm_err e = {0};
    assert_int_equal(parse_json(json, data, file_size, &h, &e), code);
    if (needle && strstr(e.msg, needle) == NULL) fail_msg("message '%s' lacks '%s'", e.msg, needle);
    assert_null(h.entries);
}

/* Deterministic Fisher-Yates, so that layout cannot lean on input order. */
static void shuffle(st_entry *t, size_t n, uint64_t seed)
{
    for (size_t i = n; i > 1; i--) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        size_t j = (size_t)((seed >> 33) % i);
        st_entry tmp = t[i - 1];
        t[i - 1] = t[j];
        t[j] = tmp;
    }
}

/* Re-lays out a real file's tensors and compares the header bytes. */
static int check_reference(const char *path, uint64_t seed)
{
    size_t len;
    uint8_t *file = tu_slurp(path, &len);
    if (file == NULL) return 0;
    st_header_info h;
    fm_err e = {0};
    if (st_read_header(path, &h, &e) != 0) fail_msg("%s: %s", path, e.msg);
    assert_true(h.data_start <= len);
    assert_string_equal(h.metadata_json, "{\"format\":\"pt\"}");
    st_entry *t = calloc(h.n ? h.n : 1, sizeof *t);
    for (size_t i = 0; i < h.n; i++) {
        t[i] = tensor(h.entries[i].name, h.entries[i].dtype, h.entries[i].ndim, h.entries[i].shape);
        t[i].user = i;
    }
    shuffle(t, h.n, seed);
    assert_int_equal(st_layout(t, h.n, &e), 0);
    for (size_t i = 0; i < h.n; i++) { /* same order and offsets as the file */
        assert_int_equal(t[i].user, i);
        assert_int_equal(t[i].begin, h.entries[i].begin);
        assert_int_equal(t[i].end, h.entries[i].end);
    }
    fm_buf out = {0};
    assert_int_equal(st_header(t, h.n, 0, &out, &e), 0);
    if (out.len != h.data_start || memcmp(out.data, file, out.len) != 0) fail_msg("%s: header bytes differ", path);
    fm_buf_free(&out);
    free(t);
    st_header_info_free(&h);
    free(file);
    return 1;
}

static void test_reference_headers_bytewise(void **state)
{
    (void)state;
    int done = 0;
    for (size_t f = 0; f < FM_ARRAY_LEN(FIXTURES); f++) {
        done += check_reference(tu_fixturef("%s/reference/fp32/model.safetensors", FIXTURES[f]), 1 + f);
        done += check_reference(tu_fixturef("%s/reference/bf16/model.safetensors", FIXTURES[f]), 100 + f);
    }
    /* the plain_* fixtures have an fp32 reference only */
    assert_int_equal(done, 7 * 2 + 2);
}

/* PEFT's adapter files go through the same writer. */
static void test_reference_adapter_headers_bytewise(void **state)
{
    (void)state;
    assert_int_equal(check_reference(tu_fixturef("fsdp2_ws4_lora/reference/fp32_adapter/adapter_model.safetensors"), 7), 1);
    assert_int_equal(check_reference(tu_fixturef("fsdp2_ws4_lora/reference/bf16_adapter/adapter_model.safetensors"), 8), 1);
    const char *actor = tu_fixturef("fsdp2_ws4_lora/global_step_1/actor/lora_adapter/adapter_model.safetensors");
    assert_int_equal(check_reference(actor, 9), 1);
}

/* Files written without __metadata__ still parse. */
static void test_parse_without_metadata(void **state)
{
    (void)state;
    st_header_info h;
    fm_err e = {0};
    if (st_read_header(tu_fixturef("fsdp2_ws4_tied/reference/optim_reference.safetensors"), &h, &e) != 0) fail_msg("%s", e.msg);
    assert_null(h.metadata_json);
    assert_true(h.n > 0);
    assert_int_equal(h.entries[0].begin, 0);
    st_header_info_free(&h);
}

static void test_nbytes(void **state)
{
    (void)state;
    int64_t s23[] = {2, 3}, s0[] = {4, 0}, big[] = {INT64_C(1) << 62, 8}, neg[] = {-1};
    st_entry t = tensor("x", DT_F32, 2, s23);
    assert_int_equal(st_nbytes(&t), 24);
    t = tensor("x", DT_BF16, 0, NULL); /* a 0-d scalar */
    assert_int_equal(st_nbytes(&t), 2);
    t = tensor("x", DT_I64, 2, s0);
    assert_int_equal(st_nbytes(&t), 0);
    t = tensor("x", DT_F32, 2, big);
    assert_true(st_nbytes(&t) == UINT64_MAX);
    t = tensor("x", DT_F32, 1, neg);
    assert_true(st_nbytes(&t) == UINT64_MAX);
}

/* Dtype enum descending, then bytewise names ("B" < "a" < "\xc3\xa9"). */
static void test_layout_order(void **state)
{
    (void)state;
    int64_t s2[] = {2};
    st_entry t[] = {
        tensor("mask", DT_BOOL, 1, s2),  tensor("a", DT_BF16, 1, s2), tensor("B", DT_BF16, 1, s2),
        tensor("\xc3\xa9", DT_BF16, 1, s2), tensor("w", DT_F32, 1, s2), tensor("h", DT_F16, 1, s2),
        tensor("ids", DT_I64, 1, s2),   tensor("u", DT_U8, 1, s2),   tensor("d", DT_F64, 1, s2),
        tensor("i", DT_I32, 1, s2),
    };
    const char *order[] = {"ids", "d", "w", "i", "B", "a", "\xc3\xa9", "h", "u", "mask"};
    const uint64_t ends[] = {16, 32, 40, 48, 52, 56, 60, 64, 66, 68};
    fm_err e = {0};
    assert_int_equal(st_layout(t, FM_ARRAY_LEN(t), &e), 0);
    for (size_t i = 0; i < FM_ARRAY_LEN(t); i++) {
        assert_string_equal(t[i].name, order[i]);
        assert_int_equal(t[i].end, ends[i]);
        assert_int_equal(t[i].begin, i ? ends[i - 1] : 0);
    }
}

static void test_layout_duplicate_names(void **state)
{
    (void)state;
    int64_t s[] = {1};
    st_entry t[] = {tensor("x", DT_F32, 1, s), tensor("y", DT_F32, 1, s), tensor("x", DT_BF16, 1, s)};
    fm_err e = {0};
    assert_int_equal(st_layout(t, 3, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "duplicate"));
}

static void test_layout_overflow(void **state)
{
    (void)state;
    int64_t big[] = {INT64_C(1) << 62, 8}, half[] = {INT64_C(1) << 60};
    st_entry t[] = {tensor("x", DT_F32, 2, big)};
    fm_err e = {0};
    assert_int_equal(st_layout(t, 1, &e), FM_EFORMAT);
    /* each fits, their sum does not */
    st_entry u[] = {tensor("a", DT_F64, 1, half), tensor("b", DT_F64, 1, half)};
    assert_int_equal(st_layout(u, 2, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "overflow"));
}

static void test_layout_rejects_bad_entries(void **state)
{
    (void)state;
    int64_t s[] = {1};
    fm_err e = {0};
    st_entry t[] = {tensor("__metadata__", DT_F32, 1, s)};
    assert_int_equal(st_layout(t, 1, &e), FM_EFORMAT);
    st_entry u[] = {tensor("x", DT_INVALID, 1, s)};
    assert_int_equal(st_layout(u, 1, &e), FM_EFORMAT);
    st_entry v[] = {tensor("x", DT_F32, 1, s)};
    v[0].ndim = ST_MAX_DIMS + 1;
    assert_int_equal(st_layout(v, 1, &e), FM_EUNSUPPORTED);
    assert_int_equal(st_layout(NULL, 0, &e), 0);
}

/* Names escaped as serde_json does: short escapes, \u00XX (lowercase) for
 * other control bytes, DEL and UTF-8 raw. */
static void test_header_escapes_names(void **state)
{
    (void)state;
    int64_t s[] = {1};
    st_entry t[] = {tensor("q\"b\\s\n\r\t\b\f\x01\x1f\x7f \xc3\xa9/", DT_F32, 1, s)};
    fm_err e = {0};
    assert_int_equal(st_layout(t, 1, &e), 0);
    fm_buf out = {0};
    assert_int_equal(st_header(t, 1, 0, &out, &e), 0);
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"q\\\"b\\\\s\\n\\r\\t\\b\\f\\u0001\\u001f\x7f \xc3\xa9/\":"
                       "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    assert_int_equal(out.len, 8 + padded);
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = (len << 8) | out.data[i];
    assert_int_equal(len, padded);
    assert_memory_equal(out.data + 8, json, n);
    for (size_t i = 8 + n; i < out.len; i++) assert_int_equal(out.data[i], ' ');
    /* and it reads back to the same name */
    fm_buf_append(&out, "\0\0\0\0", 4);
    st_header_info h;
    assert_int_equal(st_parse_header(out.data, out.len, out.len, &h, &e), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.entries[0].name, t[0].name);
    st_header_info_free(&h);
    fm_buf_free(&out);
}

static void test_header_shapes_and_empty(void **state)
{
    (void)state;
    int64_t s0[] = {0, 5}, big[] = {3000000000LL};
    st_entry t[] = {tensor("scalar", DT_I64, 0, NULL), tensor("empty", DT_I64, 2, s0), tensor("v", DT_U8, 1, big)};
    fm_err e = {0};
    assert_int_equal(st_layout(t, 3, &e), 0);
    fm_buf out = {0};
    assert_int_equal(st_header(t, 3, 0, &out, &e), 0);
    fm_buf_terminate(&out);
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"empty\":{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                       "\"scalar\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                       "\"v\":{\"dtype\":\"U8\",\"shape\":[3000000000],\"data_offsets\":[8,3000000008]}}";
    assert_memory_equal(out.data + 8, json, strlen(json));
    fm_buf_free(&out);
    fm_buf empty = {0};
    assert_int_equal(st_header(NULL, 0, 0, &empty, &e), 0);
    assert_int_equal(empty.len, 8 + 32); /* {"__metadata__":{"format":"pt"}} is 32 bytes */
    fm_buf_free(&empty);
}

/* The header is appended after what the buffer held. */
static void test_header_appends(void **state)
{
    (void)state;
    fm_buf out = {0};
    fm_buf_puts(&out, "xyz");
    assert_int_equal(st_header(NULL, 0, 0, &out, NULL), 0);
    assert_memory_equal(out.data, "xyz\x20\0\0\0\0\0\0\0{", 12);
    fm_buf_free(&out);
}

static void test_header_extra_align(void **state)
{
    (void)state;
    int64_t s[] = {3, 5};
    st_entry t[] = {tensor("a", DT_F32, 2, s), tensor("b", DT_BF16, 2, s), tensor("c", DT_BOOL, 1, s)};
    fm_err e = {0};
    assert_int_equal(st_layout(t, 3, &e), 0);
    size_t aligns[] = {4096, 1 << 20, 8, 4, 1};
    for (size_t k = 0; k < FM_ARRAY_LEN(aligns); k++) {
        fm_buf out = {0};
        assert_int_equal(st_header(t, 3, aligns[k], &out, &e), 0);
        assert_int_equal(out.len % aligns[k], 0);
        assert_int_equal(out.len % 8, 0);
        size_t data = (size_t)t[2].end;
        fm_buf_reserve(&out, data);
        memset(out.data + out.len, 0, data);
        out.len += data;
        st_header_info h;
        assert_int_equal(st_parse_header(out.data, out.len, out.len, &h, &e), 0);
        assert_int_equal(h.data_start % aligns[k], 0);
        assert_int_equal(h.n, 3);
        st_header_info_free(&h);
        fm_buf_free(&out);
    }
    fm_buf out = {0};
    assert_int_equal(st_header(t, 3, 3000, &out, &e), FM_EUSAGE);
    assert_int_equal(st_header(t, 3, (size_t)1 << 30, &out, &e), FM_EUNSUPPORTED); /* over 100 MB */
    fm_buf_free(&out);
}

static void test_header_rejects_bad_input(void **state)
{
    (void)state;
    int64_t s[] = {1};
    fm_err e = {0};
    fm_buf out = {0};
    st_entry t[] = {tensor("\xff", DT_F32, 1, s)};
    assert_int_equal(st_layout(t, 1, &e), 0);
    assert_int_equal(st_header(t, 1, 0, &out, &e), FM_EFORMAT); /* not UTF-8 */
    st_entry u[] = {tensor("a", DT_F32, 1, s)};
    u[0].begin = 4, u[0].end = 8;                                  /* never laid out */
    assert_int_equal(st_header(u, 1, 0, &out, &e), FM_EINTERNAL);
    assert_int_equal(out.len, 0);
    fm_buf_free(&out);
}

static void test_parse_valid(void **state)
{
    (void)state;
    const char *json = "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"},"
                       "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                       "\"a\":{\"data_offsets\":[0,8],\"shape\":[1,2],\"dtype\":\"F32\",\"extra\":1},"
                       "\"z\":{\"dtype\":\"BOOL\",\"shape\":[0],\"data_offsets\":[12,12]}}   ";
    st_header_info h;
    fm_err e = {0};
    size_t n = strlen(json);
    assert_int_equal(parse_json(json, 12, 8 + n + 12, &h, &e), 0);
    assert_int_equal(h.data_start, 8 + n);
    assert_int_equal(h.n, 3);
    assert_string_equal(h.entries[0].name, "a"); /* offset order */
    assert_int_equal(h.entries[0].user, 1);      /* position in the JSON */
    assert_int_equal(h.entries[0].dtype, DT_F32);
    assert_int_equal(h.entries[0].ndim, 2);
    assert_int_equal(h.entries[0].shape[1], 2);
    assert_string_equal(h.entries[1].name, "b");
    assert_string_equal(h.entries[2].name, "z");
    assert_string_equal(h.metadata_json, "{\"format\":\"pt\",\"k\":\"v\"}");
    st_header_info_free(&h);
    /* file_size 0 means unknown */
    assert_int_equal(parse_json(json, 0, 0, &h, &e), 0);
    st_header_info_free(&h);
}

static void test_parse_header_too_large(void **state)
{
    (void)state;
    uint8_t b[16] = {0};
    uint64_t n = 100000001;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
    st_header_info h;
    fm_err e = {0};
    assert_int_equal(st_parse_header(b, sizeof b, 0, &h, &e), FM_EFORMAT);
    memset(b, 0xff, 8);
    assert_int_equal(st_parse_header(b, sizeof b, 0, &h, &e), FM_EFORMAT);
}

static void test_parse_truncated(void **state)
{
    (void)state;
    st_header_info h;
    fm_err e = {0};
    uint8_t b[8] = {0};
    assert_int_equal(st_parse_header(b, 7, 0, &h, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "truncated"));
    size_t len;
    uint8_t *f = make_file("{\"__metadata__\":{}}", 0, &len);
    assert_int_equal(st_parse_header(f, len - 1, 0, &h, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "truncated"));
    free(f);
}

static void test_parse_gap(void **state)
{
    (void)state;
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[20,36]}}",
                       36, 0, FM_EFORMAT, "gap");
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, 0, FM_EFORMAT, "gap");
}

static void test_parse_overlap(void **state)
{
    (void)state;
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                       24, 0, FM_EFORMAT, "overlap");
}

static void test_parse_unknown_dtype(void **state)
{
    (void)state;
    assert_parse_fails("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, FM_EFORMAT, "F33");
    assert_parse_fails("{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, FM_EFORMAT, "dtype");
    assert_parse_fails("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0, FM_EFORMAT, "dtype");
}

static void test_parse_size_mismatch(void **state)
{
    (void)state;
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12, 0, FM_EFORMAT,
                       "do not hold 16 bytes");
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, 0, FM_EFORMAT, NULL);
}

static void test_parse_file_size_mismatch(void **state)
{
    (void)state;
    const char *json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t n = strlen(json);
    assert_parse_fails(json, 4, 8 + n + 5, FM_EFORMAT, "header describes");
    assert_parse_fails(json, 4, 8 + n + 3, FM_EFORMAT, "header describes");
    st_header_info h;
    assert_int_equal(parse_json(json, 4, 8 + n + 4, &h, NULL), 0);
    st_header_info_free(&h);
}

static void test_parse_duplicate_names(void **state)
{
    (void)state;
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                       8, 0, FM_EFORMAT, "duplicate");
    assert_parse_fails("{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, FM_EFORMAT, "duplicate");
}

static void test_parse_bad_json(void **state)
{
    (void)state;
    assert_parse_fails("[1,2]", 0, 0, FM_EFORMAT, "'{'");
    assert_parse_fails("{\"a\":", 0, 0, FM_EFORMAT, "not valid JSON");
    assert_parse_fails("{} x", 0, 0, FM_EFORMAT, "after");
    assert_parse_fails("{\"a\":[]}", 0, 0, FM_EFORMAT, "not an object");
    assert_parse_fails("{\"__metadata__\":{\"k\":1}}", 0, 0, FM_EFORMAT, "not a string");
    assert_parse_fails("{\"__metadata__\":[]}", 0, 0, FM_EFORMAT, "__metadata__");
}

static void test_parse_bad_numbers(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1125899906842624,1125899906842624],\"data_offsets\":[0,4]}}",
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(bad); i++) assert_parse_fails(bad[i], 4, 0, FM_EFORMAT, NULL);
    assert_parse_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"
                       "\"data_offsets\":[0,4]}}",
                       4, 0, FM_EUNSUPPORTED, NULL);
}

static void test_read_header_files(void **state)
{
    (void)state;
    st_header_info h;
    fm_err e = {0};
    char *dir = tu_tmpdir();
    char path[8192];
    snprintf(path, sizeof path, "%s/missing.safetensors", dir);
    assert_int_equal(st_read_header(path, &h, &e), FM_EIO);
    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    size_t len;
    uint8_t *f = make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &len);
    assert_int_equal(fm_write_file(path, f, len - 1, &e), 0); /* one data byte short */
    assert_int_equal(st_read_header(path, &h, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, path));
    assert_int_equal(fm_write_file(path, f, 20, &e), 0); /* cut inside the header */
    assert_int_equal(st_read_header(path, &h, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "truncated"));
    assert_int_equal(fm_write_file(path, f, len, &e), 0);
    assert_int_equal(st_read_header(path, &h, &e), 0);
    assert_int_equal(h.n, 1);
    st_header_info_free(&h);
    st_header_info_free(NULL);
    free(f);
    tu_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_headers_bytewise),
        cmocka_unit_test(test_reference_adapter_headers_bytewise),
        cmocka_unit_test(test_parse_without_metadata),
        cmocka_unit_test(test_nbytes),
        cmocka_unit_test(test_layout_order),
        cmocka_unit_test(test_layout_duplicate_names),
        cmocka_unit_test(test_layout_overflow),
        cmocka_unit_test(test_layout_rejects_bad_entries),
        cmocka_unit_test(test_header_escapes_names),
        cmocka_unit_test(test_header_shapes_and_empty),
        cmocka_unit_test(test_header_appends),
        cmocka_unit_test(test_header_extra_align),
        cmocka_unit_test(test_header_rejects_bad_input),
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_header_too_large),
        cmocka_unit_test(test_parse_truncated),
        cmocka_unit_test(test_parse_gap),
        cmocka_unit_test(test_parse_overlap),
        cmocka_unit_test(test_parse_unknown_dtype),
        cmocka_unit_test(test_parse_size_mismatch),
        cmocka_unit_test(test_parse_file_size_mismatch),
        cmocka_unit_test(test_parse_duplicate_names),
        cmocka_unit_test(test_parse_bad_json),
        cmocka_unit_test(test_parse_bad_numbers),
        cmocka_unit_test(test_read_header_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
