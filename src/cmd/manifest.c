/* manifest.c - see manifest.h. */
#include "cmd/manifest.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hf/jsonfmt.h"

static void key_str(fm_buf *b, const char *key, const char *val, fm_err *e)
{
    fm_buf_printf(b, "\"%s\": ", key);
    if (val == NULL || jf_quote_py(b, val, strlen(val), e)) fm_buf_puts(b, "null");
    fm_buf_puts(b, ", ");
}

static void tensors(fm_buf *b, const plan *pl, const uint32_t *crc, fm_err *e)
{
    fm_buf_puts(b, "\"tensors\": {");
    for (size_t i = 0; i < pl->ntensors; i++) {
        const plan_tensor *t = &pl->tensors[i];
        if (i) fm_buf_puts(b, ", ");
        jf_quote_py(b, t->name, strlen(t->name), e);
        fm_buf_puts(b, ": {");
        key_str(b, "file", pl->files[t->file].name, e);
        key_str(b, "dtype", dt_st_name(t->out_dtype), e);
        fm_buf_puts(b, "\"shape\": [");
        for (int d = 0; d < t->ndim; d++) fm_buf_printf(b, "%s%" PRId64, d ? ", " : "", t->shape[d]);
        fm_buf_printf(b, "], \"data_offsets\": [%" PRIu64 ", %" PRIu64 "], \"crc32c\": \"%08" PRIx32 "\"}", t->begin,
                      t->end, crc[i]);
    }
    fm_buf_puts(b, "}");
}

int mf_build(const mf_info *in, const plan *pl, const uint32_t *crc, fm_buf *out, fm_err *e)
{
    fm_buf b = {0};
    fm_err qe = {0}; /* a name that is not UTF-8 prints as null */
    fm_buf_puts(&b, "{\"manifest\": \"fsdpmerge/1\", ");
    key_str(&b, "tool_version", FM_VERSION, &qe);
    key_str(&b, "command_line", in->command_line, &qe);
    key_str(&b, "source", in->source, &qe);
    key_str(&b, "actor_dir", in->actor_dir, &qe);
    fm_buf_printf(&b, "\"world_size\": %d, \"fsdp_version\": ", in->world_size);
    if (in->fsdp_version) fm_buf_printf(&b, "%d, ", in->fsdp_version);
    else fm_buf_puts(&b, "null, ");
    /* torch writes no version of its own into the zip or the pickles of these files */
    fm_buf_printf(&b, "\"torch_version\": null, \"processes\": %d, ", in->nprocs);
    key_str(&b, "dtype", in->dtype, &qe);
    key_str(&b, "mode", in->mode, &qe);
    key_str(&b, "format", in->format, &qe);
    fm_buf_printf(&b, "\"max_shard_size\": %" PRIu64 ", ", in->max_shard_size);
    fm_buf_printf(&b, "\"tensor_count\": %zu, \"total_size\": %" PRIu64 ", \"checksum\": \"crc32c\", \"files\": {",
                  crc ? pl->ntensors : 0, crc ? pl->total_bytes : 0);
    for (size_t f = 0; crc && f < pl->nfiles; f++) {
        if (f) fm_buf_puts(&b, ", ");
        jf_quote_py(&b, pl->files[f].name, strlen(pl->files[f].name), &qe);
        fm_buf_printf(&b, ": {\"size\": %" PRIu64 "}", pl->files[f].size);
    }
    fm_buf_puts(&b, "}, ");
    if (crc) tensors(&b, pl, crc, &qe);
    else fm_buf_puts(&b, "\"tensors\": {}");
    fm_buf_puts(&b, "}");
    jf_node *tree = NULL;
    int rc = b.oom ? fm_fail(e, FM_ENOMEM, "out of memory") : jf_parse((char *)b.data, b.len, 0, &tree, NULL, e);
    if (rc == 0) {
        jf_print_opts po = {.indent = 2, .sort_keys = false};
        rc = jf_print(tree, &po, out, e);
        fm_buf_putc(out, '\n');
    }
    if (rc) fm_context(e, "building " MF_NAME);
    jf_free(tree);
    fm_buf_free(&b);
    return rc;
}

static const char *str_of(const jf_node *obj, const char *key)
{
    const jf_node *v = jf_get(obj, key);
    return v && jf_kind_of(v) == JF_STRING ? jf_string(v, NULL) : NULL;
}

static int bad(fm_err *e, const char *what, const char *name)
{
    return fm_fail(e, FM_EFORMAT, MF_NAME ": %s%s%s", what, name ? " of tensor " : "", name ? name : "");
}

int mf_parse(const char *text, size_t len, mf_manifest *m, fm_err *e)
{
    memset(m, 0, sizeof m[0]);
    jf_node *tree = NULL;
    FM_TRY(jf_parse(text, len, 0, &tree, NULL, e));
    m->tree = tree;
    jf_node *ts = jf_get(tree, "tensors");
    if (ts == NULL || jf_kind_of(ts) != JF_OBJECT) return bad(e, "no \"tensors\" object", NULL);
    m->dtype = str_of(tree, "dtype");
    const jf_node *mss = jf_get(tree, "max_shard_size");
    size_t rl = 0;
    const char *raw = mss && jf_kind_of(mss) == JF_NUMBER ? jf_raw(mss, &rl) : NULL;
    m->max_shard_size = raw ? strtoull(raw, NULL, 10) : 0;
    m->ntensors = jf_size(ts);
    m->tensors = calloc(m->ntensors ? m->ntensors : 1, sizeof *m->tensors);
    if (m->tensors == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->ntensors; i++) {
        mf_tensor *t = &m->tensors[i];
        const jf_node *v = jf_at(ts, i);
        t->name = jf_key_at(ts, i, NULL);
        t->file = str_of(v, "file");
        t->dtype = str_of(v, "dtype");
        const char *c = str_of(v, "crc32c");
        char *end = NULL;
        unsigned long x = c ? strtoul(c, &end, 16) : 0;
        if (t->file == NULL || t->dtype == NULL || c == NULL || strlen(c) != 8 || *end != '\0')
            return bad(e, "missing or malformed file, dtype or crc32c", t->name);
        t->crc32c = (uint32_t)x;
    }
    return 0;
}

void mf_free(mf_manifest *m)
{
    jf_free(m->tree);
    free(m->tensors);
    memset(m, 0, sizeof m[0]);
}
