/* inspectdcp.c - see inspectdcp.h. */
#include "cmd/inspectdcp.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "torchfmt/dcp.h"

static bool is_distcp(const char *path) { return fm_ends_with(path, ".distcp"); }

bool ind_listing(const char *path)
{
    if (fm_ends_with(path, DCP_METADATA) || is_distcp(path)) return true;
    char *p = fm_path_join(path, DCP_METADATA);
    bool dir = p && fm_path_is_dir(path) && fm_path_is_file(p);
    free(p);
    return dir;
}

/* The folder holding .metadata for a path inside it (or the folder). */
static char *folder_of(const char *path)
{
    return fm_path_is_dir(path) ? fm_strdup(path) : fm_path_dirname(path);
}

static int load_meta(const char *dir, dcp_meta *m, fm_err *e)
{
    char *path = fm_path_join(dir, DCP_METADATA), *buf = NULL;
    size_t len = 0;
    int rc = path ? fm_read_file(path, (size_t)1 << 30, &buf, &len, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = dcp_meta_parse((const uint8_t *)buf, len, path, m, e);
    free(buf);
    free(path);
    return rc;
}

static void print_chunk(FILE *out, const dcp_meta *m, const dcp_key *k, const dcp_chunk *c)
{
    char a[160], b[160];
    if (k->bytes) fprintf(out, "    object");
    else fprintf(out, "    at %s size %s", ti_format_shape(k->ndim, c->offsets, a, sizeof a), ti_format_shape(k->ndim, c->sizes, b, sizeof b));
    fprintf(out, " -> %s @%" PRIu64 " +%" PRIu64 "%s%s\n", c->file >= 0 ? m->files[c->file] : "?", c->offset, c->length,
            c->transforms ? " transforms=" : "", c->transforms ? c->transforms : "");
}

static void print_text(FILE *out, const char *what, const dcp_meta *m, int only_file)
{
    size_t nt = 0;
    for (size_t i = 0; i < m->n; i++) nt += !m->keys[i].bytes;
    fprintf(out, "%s: torch.distributed.checkpoint metadata, %zu keys (%zu tensors, %zu objects), %zu data files, "
            "state dict %s\n", what, m->n, nt, m->n - nt, m->nfiles, m->nested ? "nested" : "flat");
    for (size_t f = 0; f < m->nfiles; f++) fprintf(out, "  file %zu: %s\n", f, m->files[f]);
    for (size_t i = 0; i < m->n; i++) {
        const dcp_key *k = &m->keys[i];
        bool mine = only_file < 0;
        for (size_t c = 0; c < k->nchunks && !mine; c++) mine = k->chunks[c].file == only_file;
        if (!mine) continue;
        char sh[160];
        if (k->bytes) fprintf(out, "%s: object (BytesStorageMetadata)\n", k->fqn);
        else fprintf(out, "%s: %s %s, %zu chunks\n", k->fqn, dt_torch_name(k->dtype), ti_format_shape(k->ndim, k->size, sh, sizeof sh),
                     k->nchunks);
        for (size_t c = 0; c < k->nchunks; c++)
            if (only_file < 0 || k->chunks[c].file == only_file) print_chunk(out, m, k, &k->chunks[c]);
    }
}

static cJSON *int_array(int n, const int64_t *v)
{
    cJSON *a = cJSON_CreateArray();
    for (int d = 0; a && d < n; d++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v[d]));
    return a;
}

static cJSON *to_json(const dcp_meta *m)
{
    cJSON *j = cJSON_CreateObject(), *files = cJSON_AddArrayToObject(j, "files"), *keys = cJSON_AddArrayToObject(j, "keys");
    cJSON_AddBoolToObject(j, "nested", m->nested);
    for (size_t f = 0; f < m->nfiles; f++) cJSON_AddItemToArray(files, cJSON_CreateString(m->files[f]));
    for (size_t i = 0; i < m->n; i++) {
        const dcp_key *k = &m->keys[i];
        cJSON *o = cJSON_CreateObject(), *chunks;
        cJSON_AddStringToObject(o, "key", k->fqn);
        cJSON_AddStringToObject(o, "kind", k->bytes ? "object" : "tensor");
        if (!k->bytes) {
            cJSON_AddStringToObject(o, "dtype", dt_torch_name(k->dtype));
            cJSON_AddItemToObject(o, "shape", int_array(k->ndim, k->size));
        }
        chunks = cJSON_AddArrayToObject(o, "chunks");
        for (size_t c = 0; c < k->nchunks; c++) {
            const dcp_chunk *ch = &k->chunks[c];
            cJSON *co = cJSON_CreateObject();
            if (!k->bytes) {
                cJSON_AddItemToObject(co, "offsets", int_array(k->ndim, ch->offsets));
                cJSON_AddItemToObject(co, "sizes", int_array(k->ndim, ch->sizes));
            }
            cJSON_AddStringToObject(co, "file", ch->file >= 0 ? m->files[ch->file] : "");
            cJSON_AddNumberToObject(co, "offset", (double)ch->offset);
            cJSON_AddNumberToObject(co, "length", (double)ch->length);
            if (ch->transforms) cJSON_AddStringToObject(co, "transforms", ch->transforms);
            cJSON_AddItemToArray(chunks, co);
        }
        cJSON_AddItemToArray(keys, o);
    }
    return j;
}

static int file_index(const dcp_meta *m, const char *path)
{
    char *base = fm_path_basename(path);
    int k = -1;
    for (size_t f = 0; base && f < m->nfiles && k < 0; f++)
        if (strcmp(m->files[f], base) == 0) k = (int)f;
    free(base);
    return k;
}

int ind_run(const cli_opts *o, FILE *out, fm_err *e)
{
    char *dir = folder_of(o->inspect_file);
    dcp_meta m;
    memset(&m, 0, sizeof m);
    int rc = dir ? load_meta(dir, &m, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    int only = -1;
    if (rc == 0 && is_distcp(o->inspect_file) && (only = file_index(&m, o->inspect_file)) < 0)
        rc = fm_fail(e, FM_EUSAGE, "%s: .metadata names no such data file", o->inspect_file);
    if (rc == 0 && o->json) {
        cJSON *j = to_json(&m);
        char *text = j ? cJSON_Print(j) : NULL;
        if (text) fprintf(out, "%s\n", text);
        else rc = fm_fail(e, FM_ENOMEM, "out of memory");
        cJSON_free(text);
        cJSON_Delete(j);
    } else if (rc == 0) {
        print_text(out, o->inspect_file, &m, only);
    }
    dcp_meta_free(&m);
    free(dir);
    return rc;
}

int ind_open(const char *path, ptz_file **zip, fm_err *e)
{
    const char *at = strrchr(path, '@');
    if (at == NULL || at == path || !fm_starts_with(at - 7 > path ? at - 7 : path, ".distcp"))
        return ptz_open(path, 0, 0, zip, e);
    uint64_t off = 0;
    FM_TRY(fm_parse_u64(at + 1, &off, e));
    char *file = fm_strndup(path, (size_t)(at - path)), *dir = file ? fm_path_dirname(file) : NULL;
    dcp_meta m;
    memset(&m, 0, sizeof m);
    int rc = dir ? load_meta(dir, &m, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    int k = rc == 0 ? file_index(&m, file) : -1;
    uint64_t len = 0;
    for (size_t i = 0; rc == 0 && i < m.n && len == 0; i++)
        for (size_t c = 0; c < m.keys[i].nchunks; c++)
            if (m.keys[i].chunks[c].file == k && m.keys[i].chunks[c].offset == off) len = m.keys[i].chunks[c].length;
    if (rc == 0 && len == 0) rc = fm_fail(e, FM_EUSAGE, "%s: .metadata names no item at offset %" PRIu64, file, off);
    if (rc == 0) rc = ptz_open_at(file, 0, 0, off, len, zip, e);
    dcp_meta_free(&m);
    free(dir);
    free(file);
    return rc;
}
