/* fuzz_json.c - libFuzzer harness: the config.json reader and the rewrite
 * that writes the output's config.json. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "hf/hfdir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hf_config_info info;
    fm_err e = {0};
    const char *text = (const char *)data;
    if (hf_config_read(text, size, &info, &e) == 0) {
        char *out = NULL;
        size_t len = 0;
        if (hf_config_rewrite(text, size, "bfloat16", NULL, "Qwen2ForCausalLM", &out, &len, &e) == 0) free(out);
    }
    return 0;
}
