/* check.c - see check.h. */
#include "cmd/check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "base/util.h"

int chk_read_records(ptz_file *z, uint64_t *bytes, fm_err *e)
{
    if (z == NULL) return 0;
    for (size_t i = 0; i < ptz_record_count(z); i++) {
        const char *name = ptz_record_name(z, i);
        ptz_rec *rec = NULL;
        FM_TRY(ptz_rec_open(z, name, &rec, e));
        int rc = ptz_rec_finish(rec, e); /* reads and hashes the whole record */
        *bytes += ptz_rec_size(rec);
        ptz_rec_close(rec);
        FM_TRY(rc);
    }
    return 0;
}

int chk_read_file(const char *path, bool optional, size_t read_buffer, unsigned ptz_flags, uint64_t *bytes, fm_err *e)
{
    if (optional && access(path, F_OK) != 0) return 0;
    ptz_file *z = NULL;
    int rc = ptz_open(path, ptz_flags, read_buffer, &z, e);
    if (rc == 0) rc = chk_read_records(z, bytes, e);
    ptz_close(z);
    return rc;
}

int chk_free_space(const char *path, uint64_t *avail, fm_err *e)
{
    char *p = fm_strdup(path);
    struct statvfs sv;
    while (p && statvfs(p, &sv) != 0) {
        char *up = strcmp(p, ".") == 0 || strcmp(p, "/") == 0 ? NULL : fm_path_dirname(p);
        free(p);
        p = up;
    }
    if (p == NULL) return fm_fail(e, FM_EIO, "cannot find the file system of %s", path);
    free(p);
    *avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    return 0;
}

static void file_line(FILE *out, const char *dir, const char *name, uint64_t size)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s%s", dir ? dir : "", dir ? "/" : "", name);
    fprintf(out, "    %-44s %15" PRIu64 " bytes\n", path, size);
}

/* Tensor bytes per output dtype, in the order the plan meets them. */
static void by_dtype(FILE *out, const plan *pl)
{
    uint64_t bytes[DT_COUNT] = {0};
    for (size_t i = 0; i < pl->ntensors; i++) bytes[pl->tensors[i].out_dtype] += pl->tensors[i].end - pl->tensors[i].begin;
    for (int d = 0; d < DT_COUNT; d++) {
        char sz[32];
        if (bytes[d]) fprintf(out, "    %-10s %15" PRIu64 " bytes (%s)\n", dt_torch_name((dt_type)d), bytes[d],
                              fm_format_bytes(bytes[d], sz, sizeof sz));
    }
}

static uint64_t plan_files(FILE *out, const plan *pl, const char *dir)
{
    uint64_t total = 0;
    for (size_t f = 0; f < pl->nfiles; f++) {
        file_line(out, dir, pl->files[f].name, pl->files[f].size);
        total += pl->files[f].size;
    }
    if (pl->index_json) {
        char name[96];
        snprintf(name, sizeof name, "%s.safetensors.index.json", dir ? "optimizer" : "model");
        file_line(out, dir, name, strlen(pl->index_json));
        total += strlen(pl->index_json);
    }
    return total;
}

uint64_t chk_print(FILE *out, const chk_report *r)
{
    char sz[32], sz2[32];
    const plan *m = r->model;
    fprintf(out, "\xe2\x9c\x93 Read every record of the %d rank%s' files and checked its CRC-32: %s in %.2f s (%.2f GB/s)\n\n",
            r->nfiles_read, r->nfiles_read == 1 ? "" : "s", fm_format_bytes(r->bytes_read, sz, sizeof sz), r->seconds,
            r->seconds > 0 ? (double)r->bytes_read / r->seconds / 1e9 : 0.0);
    fprintf(out, "A merge would write %s:\n", r->output);
    uint64_t total = 0;
    if (m) {
        fprintf(out, "  tensors:      %zu (%" PRIu64 " parameters)\n", m->ntensors, m->total_params);
        fprintf(out, "  tensor bytes: %" PRIu64 " (%s)\n", m->total_bytes, fm_format_bytes(m->total_bytes, sz, sizeof sz));
        by_dtype(out, m);
        fprintf(out, "  files:\n");
        if (r->safetensors) total += plan_files(out, m, NULL);
    }
    if (r->config_bytes) {
        file_line(out, NULL, "config.json", r->config_bytes);
        total += r->config_bytes;
    }
    if (r->hdf5) fprintf(out, "    %-44s %15s\n", "model.h5", "(HDF5, size not predicted)");
    if (r->optim) {
        fprintf(out, "  optimizer:    %zu tensors, %" PRIu64 " bytes\n", r->optim->ntensors, r->optim->total_bytes);
        total += plan_files(out, r->optim, "optimizer");
    }
    fprintf(out, "  total:        %" PRIu64 " bytes (%s) in the files listed, plus the tokenizer files, "
            "extra_state_merged.pt and the manifest\n", total, fm_format_bytes(total, sz, sizeof sz));
    if (r->output_given) {
        uint64_t avail = 0;
        fm_err ignore = {0};
        if (chk_free_space(r->output, &avail, &ignore) == 0)
            fprintf(out, "  free space:   %s on the output's file system%s\n", fm_format_bytes(avail, sz2, sizeof sz2),
                    avail < total ? " - NOT ENOUGH" : "");
        else
            fprintf(out, "  free space:   unknown (%s)\n", ignore.msg);
    }
    return total;
}
