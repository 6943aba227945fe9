/* fuzz_ptz.c - libFuzzer harness: a torch.save zip on arbitrary bytes: the
 * zip reader (ptz_open: end records, central directory, prefix), then the
 * tensor index (data.pkl through the pickle VM, storages, views) and the
 * CRC of every piece, as a merge reads a rank file. The bytes are given as a
 * memfd, so no file is written. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/util.h"
#include "torchfmt/ptz.h"
#include "torchfmt/tindex.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.pt", 0);
    if (fd < 0) return 0;
    if (fm_pwrite_all(fd, data, size, 0) != 0) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ptz_file *z = NULL;
    fm_err e = {0};
    if (ptz_open(path, 0, 1u << 16, &z, &e) == 0) {
        ti_index ix;
        if (ti_load(z, 0, &ix, &e) == 0) {
            for (size_t i = 0; i < ix.n; i++)
                for (size_t k = 0; k < ix.entries[i].npieces; k++) {
                    uint32_t crc;
                    ti_piece_crc(z, &ix.entries[i].pieces[k], &crc, &e);
                }
            ti_index_free(&ix);
        }
        ptz_close(z);
    }
    close(fd);
    return 0;
}
