/* fuzz_pkl.c - libFuzzer harness: the pickle VM on arbitrary bytes (small
 * limits, so that a pickle asking for millions of nodes fails fast). */
#include <stddef.h>
#include <stdint.h>

#include "base/util.h"
#include "torchfmt/pkl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pkl_limits lim = {.max_nodes = 100000, .max_stack = 10000, .max_memo = 100000, .max_bytes = 64u << 20};
    pkl_doc *doc = pkl_doc_new();
    pkl_value *root = NULL;
    fm_err e = {0};
    if (doc && pkl_load(doc, data, size, &lim, &root, &e) == 0 && root) {
        fm_buf out = {0};
        pkl_repr(&out, root, 8, 64); /* walks what the VM built */
        fm_buf_free(&out);
    }
    pkl_doc_free(doc);
    return 0;
}
