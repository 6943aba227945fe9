/* report.c - see report.h. */
#include "cmd/report.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

/* cJSON prints large integers in exponent form: write them as raw tokens. */
static void add_u64(cJSON *o, const char *name, uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    cJSON_AddRawToObject(o, name, buf);
}

static cJSON *files_json(const plan *pl)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < pl->nfiles; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "name", pl->files[i].name);
        add_u64(f, "bytes", pl->files[i].size);
        add_u64(f, "tensors", pl->files[i].count);
        cJSON_AddItemToArray(a, f);
    }
    return a;
}

static cJSON *times_json(const rp_times *t)
{
    cJSON *s = cJSON_CreateObject();
    cJSON_AddNumberToObject(s, "discover", t->discover);
    cJSON_AddNumberToObject(s, "index", t->index);
    cJSON_AddNumberToObject(s, "plan", t->plan);
    cJSON_AddNumberToObject(s, "data", t->data);
    cJSON_AddNumberToObject(s, "finalize", t->finalize);
    cJSON_AddNumberToObject(s, "total", t->total);
    return s;
}

int rp_write(const char *path, const cli_opts *o, const char *mode, int world_size, int nprocs, int writer, const plan *pl,
             const rp_times *t, uint64_t bytes_read, fm_err *e)
{
    cJSON *r = cJSON_CreateObject();
    if (r == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    uint64_t file_bytes = 0;
    for (size_t i = 0; i < pl->nfiles; i++) file_bytes += pl->files[i].size;
    cJSON_AddStringToObject(r, "fsdpmerge_version", FM_VERSION);
    cJSON_AddStringToObject(r, "checkpoint", o->checkpoint);
    cJSON_AddStringToObject(r, "output", o->output);
    cJSON_AddNumberToObject(r, "world_size", world_size);
    cJSON_AddNumberToObject(r, "processes", nprocs);
    cJSON_AddNumberToObject(r, "writer", writer);
    cJSON_AddStringToObject(r, "mode", mode);
    cJSON_AddStringToObject(r, "dtype", o->dtype == DT_INVALID ? "auto" : dt_torch_name(o->dtype));
    add_u64(r, "tensors", pl->ntensors);
    add_u64(r, "replicated", pl->n_replicated);
    add_u64(r, "sharded", pl->n_sharded);
    add_u64(r, "dropped_tied", pl->n_dropped);
    add_u64(r, "parameters", pl->total_params);
    add_u64(r, "tensor_bytes", pl->total_bytes);
    add_u64(r, "bytes_written", file_bytes);
    add_u64(r, "bytes_read", bytes_read);
    cJSON_AddItemToObject(r, "files", files_json(pl));
    cJSON_AddItemToObject(r, "seconds", times_json(t));
    cJSON_AddNumberToObject(r, "throughput_MBps", t->total > 0 ? (double)file_bytes / t->total / 1e6 : 0.0);
    cJSON *w = cJSON_AddArrayToObject(r, "warnings");
    for (size_t i = 0; w && i < pl->nwarnings; i++) cJSON_AddItemToArray(w, cJSON_CreateString(pl->warnings[i]));
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    if (text == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    fm_buf b = {0};
    fm_buf_puts(&b, text);
    fm_buf_putc(&b, '\n');
    free(text);
    int rc = b.oom ? fm_fail(e, FM_ENOMEM, "out of memory") : fm_write_file(path, b.data, b.len, e);
    fm_buf_free(&b);
    return rc ? fm_context(e, "--report") : 0;
}
