/* test_lora.c - PEFT LoRA names, hyper-parameters and scaling (plan/lora). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "plan/lora.h"

static char *name_of(lr_emit emit, const char *key, bool *is_src)
{
    lr_hparams hp = {0};
    lr_spec spec = {"default", emit, &hp};
    char *name = NULL;
    fm_err e = {0};
    assert_int_equal(lr_output_name(&spec, key, &name, is_src, &e), 0);
    return name;
}

static void test_names(void **state)
{
    (void)state;
    bool src;
    const char *base = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight";
    const char *a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight";
    const char *other = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.second.weight";
    char *n = name_of(LR_EMIT_FUSED, base, &src);
    assert_string_equal(n, "model.layers.0.self_attn.q_proj.weight");
    assert_false(src);
    free(n);
    n = name_of(LR_EMIT_FUSED, "_fsdp_wrapped_module.base_model.model.lm_head.weight", &src);
    assert_string_equal(n, "lm_head.weight");
    free(n);
    n = name_of(LR_EMIT_FUSED, a, &src);
    assert_non_null(n);
    assert_true(src);
    free(n);
    assert_null(name_of(LR_EMIT_BASE, a, &src));
    assert_null(name_of(LR_EMIT_FUSED, other, &src));
    assert_null(name_of(LR_EMIT_ADAPTER, base, &src));
    n = name_of(LR_EMIT_ADAPTER, a, &src);
    assert_string_equal(n, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    free(n);
}

static void test_hparams_and_scaling(void **state)
{
    (void)state;
    const char *cfg = "{\"r\": 8, \"lora_alpha\": 16, \"use_rslora\": true, \"rank_pattern\": "
                      "{\"v_proj\": 4}, \"alpha_pattern\": {\"layers\\\\.1\\\\.self_attn\\\\.q_proj\": 32}}";
    lr_hparams hp = {0};
    fm_err e = {0};
    assert_int_equal(lr_hparams_parse(cfg, strlen(cfg), false, "adapter_config.json", &hp, &e), 0);
    assert_int_equal(hp.r, 8);
    assert_true(hp.have_alpha && hp.rslora);
    float s = 0;
    assert_int_equal(lr_module_scaling(&hp, "model.layers.0.self_attn.q_proj", 8, &s, &e), 0);
    assert_true(s == (float)(16.0 / 2.8284271247461903));
    assert_int_equal(lr_module_scaling(&hp, "model.layers.0.self_attn.v_proj", 4, &s, &e), 0);
    assert_true(s == 8.0f);
    assert_int_equal(lr_module_scaling(&hp, "model.layers.1.self_attn.q_proj", 8, &s, &e), 0);
    assert_true(s == (float)(32.0 / 2.8284271247461903));
    /* "proj" must not match "q_proj" as a pattern: whole dotted components */
    assert_int_equal(lr_module_scaling(&hp, "model.layers.0.self_attn.v_proj", 8, &s, &e), FM_EMISMATCH);
    assert_non_null(strstr(e.msg, "lora_A has 8 rows"));
    lr_hparams_free(&hp);
}

static void test_refusals(void **state)
{
    (void)state;
    lr_hparams hp = {0};
    fm_err e = {0};
    const char *dora = "{\"r\": 4, \"lora_alpha\": 8, \"use_dora\": true}";
    assert_int_equal(lr_hparams_parse(dora, strlen(dora), false, "x.json", &hp, &e), FM_EUNSUPPORTED);
    assert_non_null(strstr(e.msg, "DoRA"));
    const char *ia3 = "{\"peft_type\": \"IA3\"}";
    assert_int_equal(lr_hparams_parse(ia3, strlen(ia3), false, "x.json", &hp, &e), FM_EUNSUPPORTED);
    const char *meta = "{\"r\": 4, \"task_type\": \"CAUSAL_LM\"}";
    assert_int_equal(lr_hparams_parse(meta, strlen(meta), true, "meta.json", &hp, &e), 0);
    assert_false(hp.have_alpha);
    lr_hparams_free(&hp);

    ti_index ix = {0};
    ti_entry ent[2] = {0};
    char k1[] = "base_model.model.model.layers.0.mlp.up_proj.lora_magnitude_vector.default.weight";
    char k2[] = "base_model.model.model.embed_tokens.lora_embedding_A.default";
    char k3[] = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight";
    ent[0].key = k1;
    ent[0].ndim = 1;
    ix.entries = ent;
    ix.n = 1;
    lr_found f;
    assert_int_equal(lr_detect(&ix, "default", &f, &e), FM_EUNSUPPORTED);
    assert_non_null(strstr(e.msg, "lora_magnitude_vector"));
    lr_found_free(&f);
    ent[0].key = k2;
    assert_int_equal(lr_detect(&ix, "default", &f, &e), FM_EUNSUPPORTED);
    lr_found_free(&f);
    ent[0].key = k3;
    ent[0].ndim = 2;
    assert_int_equal(lr_detect(&ix, "default", &f, &e), FM_EUSAGE);
    assert_non_null(strstr(e.msg, "'other'"));
    lr_found_free(&f);
}

static void test_adapter_config(void **state)
{
    (void)state;
    lr_hparams hp = {.r = 4, .alpha = 8, .have_alpha = true};
    char t0[] = "q_proj", t1[] = "v_proj";
    char *targets[] = {t0, t1};
    lr_found f = {.present = true, .targets = targets, .ntargets = 2, .r = 4};
    char *text = NULL;
    size_t len = 0;
    fm_err e = {0};
    assert_int_equal(lr_adapter_config(&hp, &f, &text, &len, &e), 0);
    assert_non_null(strstr(text, "\"lora_alpha\": 8,"));
    assert_non_null(strstr(text, "\"peft_type\": \"LORA\""));
    assert_non_null(strstr(text, "\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]"));
    free(text);
    /* a source config whose alpha differs (verl's lora_alpha 0, --lora-alpha given): patched */
    hp.config_text = strdup("{\n  \"lora_alpha\": 0,\n  \"r\": 4,\n  \"peft_type\": \"LORA\"\n}");
    assert_int_equal(lr_adapter_config(&hp, &f, &text, &len, &e), 0);
    assert_non_null(strstr(text, "\"lora_alpha\": 8"));
    free(text);
    free(hp.config_text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_hparams_and_scaling),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_adapter_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
