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
#include "hf/st.h"

/* One file's tensors, from its header (hf/st validates it: dtypes, shapes,
 * offsets contiguous and matching the file size). */
static int read_header(sr_model *m, size_t *cap, int file, fm_err *e)
{
    sr_file *f = &m->files[file];
    st_header_info h;
    FM_TRY(st_read_header(f->path, &h, e));
    struct stat sb;
    f->size = stat(f->path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    f->data_start = h.data_start;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < h.n; i++) {
        if (m->ntensors == *cap) {
            size_t nc = *cap ? *cap * 2 : 64;
            sr_tensor *p = realloc(m->tensors, nc * sizeof *p);
            if (p == NULL) {
                rc = fm_fail(e, FM_ENOMEM, "out of memory");
                break;
            }
            m->tensors = p;
            *cap = nc;
        }
        const st_entry *en = &h.entries[i];
        sr_tensor *t = &m->tensors[m->ntensors];
        memset(t, 0, sizeof *t);
        t->name = fm_strdup(en->name);
        t->dtype = en->dtype;
        t->ndim = en->ndim;
        memcpy(t->shape, en->shape, sizeof t->shape);
        t->numel = (en->end - en->begin) / dt_size(en->dtype);
        t->file = file;
        t->begin = h.data_start + en->begin;
        t->end = h.data_start + en->end;
        if (t->name == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
        else m->ntensors++;
    }
    st_header_info_free(&h);
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
    if (rc == 0) rc = sr_sort(m, dir, e);
    if (rc == 0 && map) rc = check_index(m, map, ipath, e);
    cJSON_Delete(j);
    free(ipath);
    return rc;
}

int sr_sort(sr_model *m, const char *where, fm_err *e)
{
    qsort(m->tensors, m->ntensors, sizeof *m->tensors, by_name);
    for (size_t i = 1; i < m->ntensors; i++)
        if (strcmp(m->tensors[i - 1].name, m->tensors[i].name) == 0)
            return fm_fail(e, FM_EFORMAT, "%s: tensor '%s' appears twice", where, m->tensors[i].name);
    return 0;
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
