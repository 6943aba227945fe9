/* test_hfdir.c - config.json rewrite, architecture names, assets, index. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf/hfdir.h"
#include "testutil.h"
#include "base/util.h"

static const char *const FIXTURES[] = {
    "fsdp2_ws4_tied",   "fsdp1_ws4_mesh",     "fsdp1_ws2_nomesh",     "fsdp2_ws8_uneven_bf16", "fsdp2_ws4_shard1",
    "fsdp2_ws2_cudarng", "fsdp2_ws4_lora",    "plain_ws2_replicated", "plain_ws2_dim0halves",
};


static char *rewrite(const char *text, const char *dtype, const char *arch, const char *arch_default)
{
    char *out = NULL;
    size_t len = 0;
    fm_err e = {0};
    int rc = hf_config_rewrite(text, strlen(text), dtype, arch, arch_default, &out, &len, &e);
    if (rc != 0) fail_msg("hf_config_rewrite: %s", e.msg);
    assert_int_equal(strlen(out), len);
    return out;
}

static void assert_rewrite(const char *text, const char *dtype, const char *arch, const char *arch_default,
                           const char *expected)
{
    char *out = rewrite(text, dtype, arch, arch_default);
    assert_string_equal(out, expected);
    free(out);
}

/* Returns 1 when the reference exists and the rewrite matches it. The LoRA
 * fixture needs no exception: its reference (LoRA fused into the base, then
 * save_pretrained) has the same config as the others. */
static int check_fixture(const char *name, const char *dir, const char *dtype)
{
    size_t ref_len = 0, in_len = 0;
    char *ref = (char *)tu_slurp(tu_fixturef("%s/reference/%s/config.json", name, dir), &ref_len);
    if (ref == NULL) return 0;
    char *in = (char *)tu_slurp(tu_fixturef("%s/global_step_1/actor/huggingface/config.json", name), &in_len);
    assert_non_null(in);
    char *out = NULL;
    size_t out_len = 0;
    fm_err e = {0};
    if (hf_config_rewrite(in, in_len, dtype, NULL, "Qwen2ForCausalLM", &out, &out_len, &e) != 0)
        fail_msg("%s: %s", name, e.msg);
    if (out_len != ref_len || memcmp(out, ref, ref_len) != 0) fail_msg("%s %s: config.json differs", name, dir);
    free(out);
    free(in);
    free(ref);
    return 1;
}

static void test_rewrite_matches_fixture_references(void **state)
{
    (void)state;
    int done = 0;
    for (size_t f = 0; f < FM_ARRAY_LEN(FIXTURES); f++) {
        done += check_fixture(FIXTURES[f], "fp32", "float32");
        done += check_fixture(FIXTURES[f], "bf16", "bfloat16");
    }
    /* plain_* have an fp32 reference only (and an input that already names
     * the architecture and dtype, which the rewrite keeps) */
    assert_int_equal(done, 7 * 2 + 2);
}

static const char CFG5[] = "{\"model_type\":\"qwen2\",\"rms_norm_eps\":1e-06,\"rope_theta\":10000.0,"
                           "\"transformers_version\":\"5.17.0\",\"empty\":{}}";

static void test_rewrite_sets_architecture_and_dtype(void **state)
{
    (void)state;
    assert_rewrite(CFG5, "bfloat16", NULL, "Qwen2ForCausalLM",
                   "{\n"
                   "  \"architectures\": [\n"
                   "    \"Qwen2ForCausalLM\"\n"
                   "  ],\n"
                   "  \"dtype\": \"bfloat16\",\n"
                   "  \"empty\": {},\n"
                   "  \"model_type\": \"qwen2\",\n"
                   "  \"rms_norm_eps\": 1e-06,\n"
                   "  \"rope_theta\": 10000.0,\n"
                   "  \"transformers_version\": \"5.17.0\"\n"
                   "}\n");
}

static void test_rewrite_architecture_override(void **state)
{
    (void)state;
    assert_rewrite("{\"architectures\":[\"Old\",\"Other\"],\"dtype\":\"float32\"}", "float16", "NewForCausalLM",
                   "Default",
                   "{\n  \"architectures\": [\n    \"NewForCausalLM\"\n  ],\n  \"dtype\": \"float16\"\n}\n");
}

static void test_rewrite_keeps_existing_architectures(void **state)
{
    (void)state;
    assert_rewrite("{\"architectures\":[\"Old\",\"Other\"],\"transformers_version\":\"5.0.0\"}", "bfloat16", NULL,
                   "Default",
                   "{\n  \"architectures\": [\n    \"Old\",\n    \"Other\"\n  ],\n  \"dtype\": \"bfloat16\",\n"
                   "  \"transformers_version\": \"5.0.0\"\n}\n");
    /* empty or null architectures count as missing */
    assert_rewrite("{\"architectures\":[]}", "bfloat16", NULL, "D",
                   "{\n  \"architectures\": [\n    \"D\"\n  ],\n  \"dtype\": \"bfloat16\"\n}\n");
    assert_rewrite("{\"architectures\":null}", "bfloat16", NULL, "D",
                   "{\n  \"architectures\": [\n    \"D\"\n  ],\n  \"dtype\": \"bfloat16\"\n}\n");
    /* no default: left out */
    assert_rewrite("{}", "bfloat16", NULL, NULL, "{\n  \"dtype\": \"bfloat16\"\n}\n");
}

/* transformers < 5 wrote "torch_dtype". */
static void test_rewrite_transformers4_uses_torch_dtype(void **state)
{
    (void)state;
    assert_rewrite("{\"torch_dtype\":\"float32\",\"transformers_version\":\"4.57.1\"}", "bfloat16", NULL, "A",
                   "{\n  \"architectures\": [\n    \"A\"\n  ],\n  \"torch_dtype\": \"bfloat16\",\n"
                   "  \"transformers_version\": \"4.57.1\"\n}\n");
    /* a 4.x config without the key gets "torch_dtype" too */
    assert_rewrite("{\"transformers_version\":\"4.46.0\"}", "float32", NULL, NULL,
                   "{\n  \"torch_dtype\": \"float32\",\n  \"transformers_version\": \"4.46.0\"\n}\n");
    /* a 5.x config that still has "torch_dtype" keeps that key */
    assert_rewrite("{\"torch_dtype\":\"float32\",\"transformers_version\":\"5.1.0\"}", "bfloat16", NULL, NULL,
                   "{\n  \"torch_dtype\": \"bfloat16\",\n  \"transformers_version\": \"5.1.0\"\n}\n");
    /* both keys present: both follow the output dtype */
    assert_rewrite("{\"dtype\":\"float32\",\"torch_dtype\":\"float32\"}", "bfloat16", NULL, NULL,
                   "{\n  \"dtype\": \"bfloat16\",\n  \"torch_dtype\": \"bfloat16\"\n}\n");
}

/* Tokens stay as they were; nested structure prints as json.dumps does. */
/* As json.dumps(json.loads(text), indent=2, sort_keys=True): Python's float
 * repr (1E-5 -> 1e-05, 10000.0 stays a float), ASCII escapes, ints kept. */
static void test_rewrite_is_pythons_dump(void **state)
{
    (void)state;
    assert_rewrite("{\"t\":10000.0,\"i\":7,\"u\":\"\u00e9\"}", NULL, NULL, NULL,
                   "{\n  \"i\": 7,\n  \"t\": 10000.0,\n  \"u\": \"\\u00e9\"\n}\n");
    assert_rewrite("{\"a\":1E-5,\"b\":\"caf\\u00e9\",\"c\":{\"y\":[1,{}],\"x\":null}}", "float32", NULL, NULL,
                   "{\n  \"a\": 1e-05,\n  \"b\": \"caf\\u00e9\",\n  \"c\": {\n    \"x\": null,\n    \"y\": [\n      1,\n"
                   "      {}\n    ]\n  },\n  \"dtype\": \"float32\"\n}\n");
}

static void test_rewrite_errors(void **state)
{
    (void)state;
    char *out = (char *)&out;
    fm_err e = {0};
    assert_int_equal(hf_config_rewrite("[1]", 3, "float32", NULL, NULL, &out, NULL, &e), FM_EFORMAT);
    assert_null(out);
    assert_int_equal(hf_config_rewrite("{\"a\":1,}", 8, "float32", NULL, NULL, &out, NULL, &e), FM_EFORMAT);
    assert_non_null(strstr(e.msg, "config.json"));
    assert_non_null(strstr(e.msg, "at byte 6"));
}

static void test_config_read_fixture(void **state)
{
    (void)state;
    size_t len = 0;
    char *text = (char *)tu_slurp(tu_fixturef("fsdp2_ws4_tied/global_step_1/actor/huggingface/config.json"), &len);
    assert_non_null(text);
    hf_config_info info;
    fm_err e = {0};
    assert_int_equal(hf_config_read(text, len, &info, &e), 0);
    assert_string_equal(info.model_type, "qwen2");
    assert_string_equal(info.architecture, "");
    assert_true(info.has_tie_word_embeddings);
    assert_true(info.tie_word_embeddings);
    assert_int_equal(info.transformers_major, 5);
    free(text);
    text = (char *)tu_slurp(tu_fixturef("fsdp1_ws2_nomesh/global_step_1/actor/huggingface/config.json"), &len);
    assert_int_equal(hf_config_read(text, len, &info, &e), 0);
    assert_false(info.tie_word_embeddings); /* the untied fixture */
    free(text);
}

static void test_config_read_defaults(void **state)
{
    (void)state;
    hf_config_info info;
    fm_err e = {0};
    const char *t = "{\"architectures\":[\"LlamaForCausalLM\"],\"transformers_version\":\"4.57.1\"}";
    assert_int_equal(hf_config_read(t, strlen(t), &info, &e), 0);
    assert_string_equal(info.architecture, "LlamaForCausalLM");
    assert_string_equal(info.model_type, "");
    assert_false(info.has_tie_word_embeddings);
    assert_true(info.tie_word_embeddings); /* absent means true */
    assert_int_equal(info.transformers_major, 4);
    t = "{\"tie_word_embeddings\":false,\"architectures\":[],\"transformers_version\":\"dev\"}";
    assert_int_equal(hf_config_read(t, strlen(t), &info, &e), 0);
    assert_true(info.has_tie_word_embeddings);
    assert_false(info.tie_word_embeddings);
    assert_string_equal(info.architecture, "");
    assert_int_equal(info.transformers_major, 0);
    t = "{\"architectures\":null}";
    assert_int_equal(hf_config_read(t, strlen(t), &info, &e), 0);
    assert_string_equal(info.architecture, "");
    assert_int_equal(info.transformers_major, 0);
}

static void test_config_read_errors(void **state)
{
    (void)state;
    hf_config_info info;
    fm_err e = {0};
    assert_int_equal(hf_config_read("[]", 2, &info, &e), FM_EFORMAT);
    assert_int_equal(hf_config_read("{", 1, &info, &e), FM_EFORMAT);
    assert_int_equal(hf_config_read("{} {", 2, &info, &e), 0); /* only len bytes are read */
    char big[400];
    snprintf(big, sizeof big, "{\"model_type\":\"%0300d\"}", 0);
    assert_int_equal(hf_config_read(big, strlen(big), &info, &e), FM_EUNSUPPORTED);
}

static void assert_arch(const char *model_type, const char *head, const char *expected)
{
    char buf[256];
    if (!hf_infer_architecture(model_type, head, buf, sizeof buf)) fail_msg("no name for %s", model_type);
    assert_string_equal(buf, expected);
}

static void test_infer_architecture_heads(void **state)
{
    (void)state;
    assert_arch("qwen2", "lm_head", "Qwen2ForCausalLM");
    assert_arch("qwen2", "score", "Qwen2ForTokenClassification");
    assert_arch("qwen2", NULL, "Qwen2Model");
    assert_arch("gpt_neox", "lm_head", "GPTNeoXForCausalLM");
    assert_arch("gpt2", "lm_head", "GPT2LMHeadModel");
    assert_arch("gpt2", NULL, "GPT2Model");
    assert_arch("qwen2_vl", "lm_head", "Qwen2VLForConditionalGeneration");
    assert_arch("qwen2_5_vl", "lm_head", "Qwen2_5_VLForConditionalGeneration");
    assert_arch("gemma3_text", "lm_head", "Gemma3ForCausalLM");
    assert_arch("gemma3", "lm_head", "Gemma3ForConditionalGeneration");
}

/* The prefixes every model type in the brief must get. */
static void test_infer_architecture_table(void **state)
{
    (void)state;
    static const char *const pairs[][2] = {
        {"llama", "Llama"},           {"mistral", "Mistral"},       {"mixtral", "Mixtral"},
        {"qwen2", "Qwen2"},           {"qwen2_moe", "Qwen2Moe"},    {"qwen3", "Qwen3"},
        {"qwen3_moe", "Qwen3Moe"},    {"gemma", "Gemma"},           {"gemma2", "Gemma2"},
        {"gemma3_text", "Gemma3"},    {"phi", "Phi"},               {"phi3", "Phi3"},
        {"gpt_neox", "GPTNeoX"},      {"gptj", "GPTJ"},             {"falcon", "Falcon"},
        {"deepseek_v2", "DeepseekV2"}, {"deepseek_v3", "DeepseekV3"}, {"olmo", "Olmo"},
        {"olmo2", "Olmo2"},           {"starcoder2", "Starcoder2"}, {"internlm2", "InternLM2"},
        {"baichuan", "Baichuan"},     {"glm", "Glm"},               {"glm4", "Glm4"},
        {"granite", "Granite"},       {"cohere", "Cohere"},         {"stablelm", "StableLm"},
        {"mpt", "Mpt"},               {"bloom", "Bloom"},           {"opt", "OPT"},
    };
    char want[256];
    for (size_t i = 0; i < FM_ARRAY_LEN(pairs); i++) {
        snprintf(want, sizeof want, "%sForCausalLM", pairs[i][1]);
        assert_arch(pairs[i][0], "lm_head", want);
        snprintf(want, sizeof want, "%sModel", pairs[i][1]);
        assert_arch(pairs[i][0], NULL, want);
    }
    assert_arch("chatglm", NULL, "ChatGLMModel");
    assert_arch("chatglm", "lm_head", "ChatGLMForConditionalGeneration");
    assert_arch("gemma3", NULL, "Gemma3Model");
}

static void test_infer_architecture_fallback(void **state)
{
    (void)state;
    assert_arch("foo_bar2_baz", "lm_head", "FooBar2BazForCausalLM");
    assert_arch("x", "score", "XForTokenClassification");
    char buf[16];
    assert_false(hf_infer_architecture("", "lm_head", buf, sizeof buf));
    assert_false(hf_infer_architecture(NULL, "lm_head", buf, sizeof buf));
    assert_false(hf_infer_architecture("qwen2", "classifier", buf, sizeof buf)); /* unknown head */
    assert_false(hf_infer_architecture("qwen2", "lm_head", buf, 8));            /* too small */
    assert_false(hf_infer_architecture("___", "lm_head", buf, sizeof buf));
}

static void write_text(const char *dir, const char *rel, const char *text)
{
    char path[8192];
    snprintf(path, sizeof path, "%.4000s/%.4000s", dir, rel);
    assert_int_equal(fm_write_file(path, text, strlen(text), NULL), 0);
}

static void assert_file(const char *dir, const char *rel, const char *text)
{
    char path[8192];
    snprintf(path, sizeof path, "%.4000s/%.4000s", dir, rel);
    size_t len;
    char *got = (char *)tu_slurp(path, &len);
    if (got == NULL) fail_msg("%s is missing", path);
    assert_string_equal(got, text);
    free(got);
}

static bool exists(const char *dir, const char *rel)
{
    char path[8192];
    snprintf(path, sizeof path, "%.4000s/%.4000s", dir, rel);
    return fm_path_exists(path);
}

static void test_copy_assets_tree(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    char src[8192], dst[8192];
    snprintf(src, sizeof src, "%s/src", tmp);
    snprintf(dst, sizeof dst, "%s/out/hf", tmp);
    assert_int_equal(fm_mkdir_p(src, NULL), 0);
    write_text(src, "config.json", "{}");
    write_text(src, "tokenizer.json", "tok");
    write_text(src, "empty.txt", "");
    char sub[8300];
    snprintf(sub, sizeof sub, "%s/sub", src);
    assert_int_equal(fm_mkdir_p(sub, NULL), 0);
    write_text(src, "sub/config.json", "nested"); /* only the top-level one is skipped */
    int copied = -1;
    fm_err e = {0};
    assert_int_equal(hf_copy_assets(src, dst, &copied, &e), 0);
    assert_int_equal(copied, 3);
    assert_false(exists(dst, "config.json"));
    assert_file(dst, "tokenizer.json", "tok");
    assert_file(dst, "empty.txt", "");
    assert_file(dst, "sub/config.json", "nested");
    tu_rmdir(tmp);
}

static void test_copy_assets_fixture(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    const char *src = tu_fixturef("fsdp2_ws4_tied/global_step_1/actor/huggingface");
    int copied = 0;
    fm_err e = {0};
    if (hf_copy_assets(src, tmp, &copied, &e) != 0) fail_msg("%s", e.msg);
    assert_int_equal(copied, 5); /* generation_config, merges, tokenizer, tokenizer_config, vocab */
    assert_false(exists(tmp, "config.json"));
    size_t a, b;
    unsigned char *x = tu_slurp(tu_fixturef("fsdp2_ws4_tied/global_step_1/actor/huggingface/vocab.json"), &a);
    char path[8300];
    snprintf(path, sizeof path, "%s/vocab.json", tmp);
    unsigned char *y = tu_slurp(path, &b);
    assert_non_null(y);
    assert_int_equal(a, b);
    assert_memory_equal(x, y, a);
    free(x);
    free(y);
    tu_rmdir(tmp);
}

static void test_copy_assets_errors(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    char missing[8192], inner[8192];
    snprintf(missing, sizeof missing, "%s/missing", tmp);
    fm_err e = {0};
    assert_int_equal(hf_copy_assets(missing, tmp, NULL, &e), FM_EIO);
    assert_int_equal(hf_copy_assets(tmp, tmp, NULL, &e), FM_EUSAGE); /* would truncate its own files */
    /* a destination inside the source is not copied into itself */
    write_text(tmp, "a.txt", "a");
    snprintf(inner, sizeof inner, "%s/out", tmp);
    int copied = 0;
    assert_int_equal(hf_copy_assets(tmp, inner, &copied, &e), 0);
    assert_int_equal(copied, 1);
    assert_false(exists(inner, "out"));
    tu_rmdir(tmp);
}

static char *index_text(const hf_index_entry *en, size_t n, uint64_t size, uint64_t params)
{
    char *out = NULL;
    size_t len = 0;
    fm_err e = {0};
    if (hf_index_json(en, n, size, params, &out, &len, &e) != 0) fail_msg("%s", e.msg);
    assert_int_equal(strlen(out), len);
    return out;
}

/* What Python prints for json.dumps({"metadata": {"total_parameters": 1234,
 * "total_size": 5678}, "weight_map": {...}}, indent=2, sort_keys=True) + "\n". */
static void test_index_json(void **state)
{
    (void)state;
    const hf_index_entry en[] = {
        {"model.norm.weight", "model-00002-of-00002.safetensors"},
        {"lm_head.weight", "model-00002-of-00002.safetensors"},
        {"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
        {"model.layers.10.mlp.up_proj.weight", "model-00001-of-00002.safetensors"},
        {"model.layers.9.mlp.up_proj.weight", "model-00001-of-00002.safetensors"},
        {"caf\xc3\xa9\"q", "model-00001-of-00002.safetensors"},
    };
    char *out = index_text(en, FM_ARRAY_LEN(en), 5678, 1234);
    assert_string_equal(out, "{\n"
                             "  \"metadata\": {\n"
                             "    \"total_parameters\": 1234,\n"
                             "    \"total_size\": 5678\n"
                             "  },\n"
                             "  \"weight_map\": {\n"
                             "    \"caf\\u00e9\\\"q\": \"model-00001-of-00002.safetensors\",\n"
                             "    \"lm_head.weight\": \"model-00002-of-00002.safetensors\",\n"
                             "    \"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"
                             "    \"model.layers.10.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\",\n"
                             "    \"model.layers.9.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\",\n"
                             "    \"model.norm.weight\": \"model-00002-of-00002.safetensors\"\n"
                             "  }\n"
                             "}\n");
    free(out);
}

static void test_index_json_edges(void **state)
{
    (void)state;
    char *out = index_text(NULL, 0, 0, UINT64_MAX);
    assert_string_equal(out, "{\n  \"metadata\": {\n    \"total_parameters\": 18446744073709551615,\n"
                             "    \"total_size\": 0\n  },\n  \"weight_map\": {}\n}\n");
    free(out);
    const hf_index_entry dup[] = {{"a", "x"}, {"b", "x"}, {"a", "y"}};
    char *o = (char *)&o;
    fm_err e = {0};
    assert_int_equal(hf_index_json(dup, 3, 1, 1, &o, NULL, &e), FM_EINTERNAL);
    assert_null(o);
    const hf_index_entry bad[] = {{"\xff", "x"}};
    assert_int_equal(hf_index_json(bad, 1, 1, 1, &o, NULL, &e), FM_EFORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rewrite_matches_fixture_references),
        cmocka_unit_test(test_rewrite_sets_architecture_and_dtype),
        cmocka_unit_test(test_rewrite_architecture_override),
        cmocka_unit_test(test_rewrite_keeps_existing_architectures),
        cmocka_unit_test(test_rewrite_transformers4_uses_torch_dtype),
        cmocka_unit_test(test_rewrite_is_pythons_dump),
        cmocka_unit_test(test_rewrite_errors),
        cmocka_unit_test(test_config_read_fixture),
        cmocka_unit_test(test_config_read_defaults),
        cmocka_unit_test(test_config_read_errors),
        cmocka_unit_test(test_infer_architecture_heads),
        cmocka_unit_test(test_infer_architecture_table),
        cmocka_unit_test(test_infer_architecture_fallback),
        cmocka_unit_test(test_copy_assets_tree),
        cmocka_unit_test(test_copy_assets_fixture),
        cmocka_unit_test(test_copy_assets_errors),
        cmocka_unit_test(test_index_json),
        cmocka_unit_test(test_index_json_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
