/* fuzz_st.c - libFuzzer harness: the safetensors header reader (8-byte
 * length + JSON) on arbitrary bytes, the file being exactly the input. */
#include <stddef.h>
#include <stdint.h>

#include "hf/st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_header_info h;
    fm_err e = {0};
    if (st_parse_header(data, size, size, &h, &e) == 0) st_header_info_free(&h);
    return 0;
}
