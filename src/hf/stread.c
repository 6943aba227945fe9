/* stread.c - see stread.h. */
#include "hf/stread.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

#define MAX_HEADER (100u << 20) /* the safetensors library's own limit */

static int add_tensor(sr_model *m, size_t *cap, const cJSON *t, int file, uint64_t data_start, uint64_t size,
                      const char *path, fm_err *e)
{
    if (m->ntensors == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        sr_tensor *p = realloc(m->tensors, nc * sizeof *p);
        if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        m->tensors = p;
        *cap = nc;
    }
    sr_tensor *st = &m->tensors[m->ntensors];
    memset(st, 0, sizeof *st);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 ||
        cJSON_GetArraySize(sh) > SR_MAX_DIMS)
        return fm_fail(e, FM_EFORMAT, "%s: tensor '%s': malformed header entry", path, t->string);
    st->dtype = dt_from_st_name(dt->valuestring);
    if (st->dtype == DT_INVALID) return fm_fail(e, FM_EFORMAT, "%s: tensor '%s': unknown dtype %s", path, t->string, dt->valuestring);
    st->numel = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh)
    {
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9e15)
            return fm_fail(e, FM_EFORMAT, "%s: tensor '%s': bad shape", path, t->string);
        st->shape[st->ndim++] = (int64_t)d->valuedouble;
        if (st->shape[st->ndim - 1] && st->numel > UINT64_MAX / (uint64_t)st->shape[st->ndim - 1])
            return fm_fail(e, FM_EFORMAT, "%s: tensor '%s': shape overflows", path, t->string);
        st->numel *= (uint64_t)st->shape[st->ndim - 1];
    }
    double b = cJSON_GetArrayItem(of, 0)->valuedouble, en = cJSON_GetArrayItem(of, 1)->valuedouble;
    uint64_t room = size - data_start;
    if (!(b >= 0 && b <= en && en <= (double)room) || (uint64_t)(en - b) / dt_size(st->dtype) != st->numel ||
        (uint64_t)(en - b) % dt_size(st->dtype))
        return fm_fail(e, FM_EFORMAT, "%s: tensor '%s': data_offsets [%.0f, %.0f] do not fit its shape or the file (%" PRIu64
                       " data bytes)", path, t->string, b, en, room);
    st->begin = data_start + (uint64_t)b;
    st->end = data_start + (uint64_t)en;
    st->file = file;
    st->name = fm_strdup(t->string);
    if (st->name == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    m->ntensors++;
    return 0;
}

static int read_header(sr_model *m, size_t *cap, int file, fm_err *e)
{
    sr_file *f = &m->files[file];
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", f->path, strerror(errno));
    struct stat sb;
    uint8_t len8[8];
    int rc = 0;
    char *text = NULL;
    uint64_t n = 0;
    if (fstat(fd, &sb) != 0 || pread(fd, len8, 8, 0) != 8) rc = fm_fail(e, FM_EFORMAT, "%s: shorter than 8 bytes", f->path);
    for (int i = 7; rc == 0 && i >= 0; i--) n = n << 8 | len8[i];
    if (rc == 0) f->size = (uint64_t)sb.st_size;
    if (rc == 0 && (n > MAX_HEADER || n > f->size - 8))
        rc = fm_fail(e, FM_EFORMAT, "%s: header length %" PRIu64 " past the end of the file (%" PRIu64 " bytes): truncated?",
                     f->path, n, f->size);
    if (rc == 0 && (text = malloc(n + 1)) == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0 && pread(fd, text, n, 8) != (ssize_t)n) rc = fm_fail(e, FM_EIO, "%s: cannot read the header", f->path);
    close(fd);
    cJSON *j = NULL;
    if (rc == 0) {
        text[n] = '\0';
        j = cJSON_ParseWithLength(text, n);
        if (!cJSON_IsObject(j)) rc = fm_fail(e, FM_EFORMAT, "%s: the header is not a JSON object", f->path);
    }
    f->data_start = 8 + n;
    const cJSON *t;
    if (rc == 0) cJSON_ArrayForEach(t, j)
    {
        if (strcmp(t->string, "__metadata__") == 0) continue;
        if ((rc = add_tensor(m, cap, t, file, f->data_start, f->size, f->path, e))) break;
    }
    cJSON_Delete(j);
    free(text);
    return rc;
}

static int add_file(sr_model *m, const char *dir, const char *name, fm_err *e)
{
    for (size_t i = 0; i < m->nfiles; i++)
        if (strcmp(m->files[i].name, name) == 0) return (int)i;
    if (strchr(name, '/') || strcmp(name, "..") == 0) return -fm_fail(e, FM_EFORMAT, "index names a file outside the folder: %s", name);
    sr_file *p = realloc(m->files, (m->nfiles + 1) * sizeof *p);
    if (p == NULL) return -fm_fail(e, FM_ENOMEM, "out of memory");
    m->files = p;
    sr_file *f = &m->files[m->nfiles];
    memset(f, 0, sizeof *f);
    f->name = fm_strdup(name);
    f->path = fm_path_join(dir, name);
    m->nfiles++;
    if (f->name == NULL || f->path == NULL) return -fm_fail(e, FM_ENOMEM, "out of memory");
    return (int)m->nfiles - 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const sr_tensor *)a)->name, ((const sr_tensor *)b)->name);
}

/* Every weight_map entry is in the file it names, and nothing else is there. */
static int check_index(const sr_model *m, const cJSON *map, const char *ipath, fm_err *e)
{
    if ((size_t)cJSON_GetArraySize(map) != m->ntensors)
        return fm_fail(e, FM_EFORMAT, "%s lists %d tensors but its files hold %zu", ipath, cJSON_GetArraySize(map), m->ntensors);
    const cJSON *it;
    cJSON_ArrayForEach(it, map)
    {
        const sr_tensor *t = sr_find(m, it->string);
        if (t == NULL || strcmp(m->files[t->file].name, it->valuestring) != 0)
            return fm_fail(e, FM_EFORMAT, "%s: tensor '%s' is not in %s", ipath, it->string, it->valuestring);
    }
    return 0;
}

int sr_open(const char *dir, const char *stem, sr_model *m, fm_err *e)
{
    memset(m, 0, sizeof *m);
    char single[256], index[256];
    snprintf(single, sizeof single, "%s.safetensors", stem);
    snprintf(index, sizeof index, "%s.safetensors.index.json", stem);
    char *ipath = fm_path_join(dir, index);
    size_t cap = 0, len = 0;
    int rc = 0;
    cJSON *j = NULL;
    const cJSON *map = NULL;
    if (ipath && access(ipath, F_OK) == 0) {
        if ((rc = fm_read_file(ipath, 256u << 20, &m->index_text, &len, e)) == 0) {
            j = cJSON_ParseWithLength(m->index_text, len);
            map = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
            if (!cJSON_IsObject(map)) rc = fm_fail(e, FM_EFORMAT, "%s: no weight_map object", ipath);
        }
        const cJSON *it;
        if (rc == 0) cJSON_ArrayForEach(it, map)
        {
            int k = cJSON_IsString(it) ? add_file(m, dir, it->valuestring, e)
                                       : -fm_fail(e, FM_EFORMAT, "%s: weight_map['%s'] is not a file name", ipath, it->string);
            if (k < 0) {
                rc = -k;
                break;
            }
        }
    } else {
        int k = add_file(m, dir, single, e);
        if (k < 0) rc = -k;
        else if (access(m->files[0].path, F_OK) != 0)
            rc = fm_fail(e, FM_EIO, "%s holds neither %s nor %s", dir, single, index);
    }
    for (size_t f = 0; rc == 0 && f < m->nfiles; f++) rc = read_header(m, &cap, (int)f, e);
    if (rc == 0) qsort(m->tensors, m->ntensors, sizeof *m->tensors, by_name);
    for (size_t i = 1; rc == 0 && i < m->ntensors; i++)
        if (strcmp(m->tensors[i - 1].name, m->tensors[i].name) == 0)
            rc = fm_fail(e, FM_EFORMAT, "%s: tensor '%s' appears twice", dir, m->tensors[i].name);
    if (rc == 0 && map) rc = check_index(m, map, ipath, e);
    cJSON_Delete(j);
    free(ipath);
    return rc;
}

const sr_tensor *sr_find(const sr_model *m, const char *name)
{
    size_t lo = 0, hi = m->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->tensors[mid].name);
        if (c == 0) return &m->tensors[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

void sr_free(sr_model *m)
{
    for (size_t i = 0; i < m->ntensors; i++) free(m->tensors[i].name);
    for (size_t i = 0; i < m->nfiles; i++) {
        free(m->files[i].name);
        free(m->files[i].path);
    }
    free(m->tensors);
    free(m->files);
    free(m->index_text);
    memset(m, 0, sizeof *m);
}
