/* st.c - the safetensors file layout (see st.h). */
#include "hf/st.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* safetensors' MAX_HEADER_SIZE: readers refuse anything larger. */
#define ST_MAX_HEADER 100000000ull
/* Integers above 2^53 do not survive cJSON's double. */
#define ST_MAX_EXACT 9007199254740992.0

uint64_t st_nbytes(const st_entry *t)
{
    uint64_t n = dt_size(t->dtype);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS) return UINT64_MAX;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || fm_mul_ovf(n, (uint64_t)t->shape[d], &n)) return UINT64_MAX;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Layout                                                                   */

/* Rust's String order is bytewise, and strcmp compares as unsigned char. */
static int name_cmp(const char *a, const char *b) { return strcmp(a, b); }

/* The safetensors writer: dtype descending (Dtype enum order), then name. */
static int layout_cmp(const void *va, const void *vb)
{
    const st_entry *a = va, *b = vb;
    int oa = dt_st_order(a->dtype), ob = dt_st_order(b->dtype);
    if (oa != ob) return oa < ob ? 1 : -1;
    return name_cmp(a->name, b->name);
}

static int ptr_name_cmp(const void *va, const void *vb)
{
    const st_entry *const *a = va, *const *b = vb;
    return name_cmp((*a)->name, (*b)->name);
}

/* Duplicates may have different dtypes, so they need their own name sort. */
static int check_unique(const st_entry *t, size_t n, fm_err *e)
{
    if (n < 2) return 0;
    const st_entry **p = malloc(n * sizeof *p);
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory checking %zu tensor names", n);
    for (size_t i = 0; i < n; i++) p[i] = &t[i];
    qsort(p, n, sizeof *p, ptr_name_cmp);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(p[i - 1]->name, p[i]->name) == 0)
            rc = fm_fail(e, FM_EFORMAT, "duplicate tensor name '%s'", p[i]->name);
    free(p);
    return rc;
}

static int check_entry(const st_entry *t, fm_err *e)
{
    if (t->name == NULL) return fm_fail(e, FM_EINTERNAL, "tensor without a name");
    if (strcmp(t->name, "__metadata__") == 0) return fm_fail(e, FM_EFORMAT, "a tensor may not be named __metadata__");
    if (dt_size(t->dtype) == 0 || dt_st_order(t->dtype) < 0)
        return fm_fail(e, FM_EFORMAT, "tensor '%s': no safetensors dtype", t->name);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return fm_fail(e, FM_EUNSUPPORTED, "tensor '%s': %d dimensions (at most %d)", t->name, t->ndim, ST_MAX_DIMS);
    if (st_nbytes(t) == UINT64_MAX) return fm_fail(e, FM_EFORMAT, "tensor '%s': size overflows", t->name);
    return 0;
}

int st_layout(st_entry *t, size_t n, fm_err *e)
{
    for (size_t i = 0; i < n; i++) FM_TRY(check_entry(&t[i], e));
    FM_TRY(check_unique(t, n, e));
    if (n > 1) qsort(t, n, sizeof *t, layout_cmp);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        t[i].begin = off;
        if (fm_add_ovf(off, st_nbytes(&t[i]), &off))
            return fm_fail(e, FM_EFORMAT, "data section size overflows at tensor '%s'", t[i].name);
        t[i].end = off;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Header writer                                                            */

/* serde_json's format_escaped_str: the short escapes for " \ \b \f \n \r \t,
 * \u00XX (lowercase) for other control bytes, everything else raw (UTF-8 and
 * DEL included). */
static void put_serde_str(fm_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    fm_buf_putc(b, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b" : c == '\f' ? "\\f"
                        : c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        if (esc) {
            fm_buf_puts(b, esc);
        } else if (c < 0x20) {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            fm_buf_append(b, u, sizeof u);
        } else {
            fm_buf_putc(b, (char)c);
        }
    }
    fm_buf_putc(b, '"');
}

/* Rust strings are UTF-8: a name that is not cannot be written. */
static bool valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p >= 0xC2 && *p <= 0xDF) ? 1 : (*p >= 0xE0 && *p <= 0xEF) ? 2
              : (*p >= 0xF0 && *p <= 0xF4) ? 3 : -1;
        if (n < 0) return false;
        static const uint32_t mask[] = {0x7F, 0x1F, 0x0F, 0x07}, min[] = {0, 0x80, 0x800, 0x10000};
        uint32_t cp = *p & mask[n];
        for (int i = 1; i <= n; i++) { /* a NUL ends the loop: it is no continuation byte */
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i] & 0x3Fu);
        }
        if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        p += n + 1;
    }
    return true;
}

static void put_tensor(fm_buf *b, const st_entry *t)
{
    put_serde_str(b, t->name);
    fm_buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", dt_st_name(t->dtype));
    for (int d = 0; d < t->ndim; d++) fm_buf_printf(b, "%s%" PRId64, d ? "," : "", t->shape[d]);
    fm_buf_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->begin, t->end);
}

/* Header length N: the JSON padded to 8 bytes, then (extra_align) so that
 * the data section, at file offset 8 + N, starts on an extra_align boundary. */
static int padded_len(size_t json_len, size_t extra_align, uint64_t *n, fm_err *e)
{
    uint64_t len = ((uint64_t)json_len + 7) & ~(uint64_t)7;
    if (extra_align > 8) {
        uint64_t a = extra_align, start = 8 + len;
        len = (start + a - 1) / a * a - 8;
    }
    if (len > ST_MAX_HEADER)
        return fm_fail(e, FM_EUNSUPPORTED, "safetensors header of %" PRIu64 " bytes exceeds the readers' limit of %llu",
                       len, ST_MAX_HEADER);
    *n = len;
    return 0;
}

static int check_laid_out(const st_entry *t, size_t n, fm_err *e)
{
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        FM_TRY(check_entry(&t[i], e));
        if (!valid_utf8(t[i].name)) return fm_fail(e, FM_EFORMAT, "tensor name '%s' is not valid UTF-8", t[i].name);
        if (t[i].begin != off || t[i].end < t[i].begin || t[i].end - t[i].begin != st_nbytes(&t[i]))
            return fm_fail(e, FM_EINTERNAL, "tensor '%s' is not laid out (call st_layout first)", t[i].name);
        off = t[i].end;
    }
    return 0;
}

int st_header(const st_entry *t, size_t n, size_t extra_align, fm_buf *out, fm_err *e)
{
    return st_header_ex(t, n, extra_align, true, out, e);
}

int st_header_ex(const st_entry *t, size_t n, size_t extra_align, bool pt_metadata, fm_buf *out, fm_err *e)
{
    if (extra_align & (extra_align - 1))
        return fm_fail(e, FM_EUSAGE, "alignment %zu is not a power of two", extra_align);
    FM_TRY(check_laid_out(t, n, e));
    fm_buf json = {0};
    fm_buf_putc(&json, '{');
    if (pt_metadata) fm_buf_puts(&json, "\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        if (pt_metadata || i > 0) fm_buf_putc(&json, ',');
        put_tensor(&json, &t[i]);
    }
    fm_buf_putc(&json, '}');
    uint64_t len = 0;
    int rc = json.oom ? fm_fail(e, FM_ENOMEM, "out of memory building a safetensors header")
                      : padded_len(json.len, extra_align, &len, e);
    if (rc == 0 && !fm_buf_reserve(out, 8 + (size_t)len))
        rc = fm_fail(e, FM_ENOMEM, "out of memory building a safetensors header");
    if (rc == 0) {
        uint8_t le[8];
        for (int i = 0; i < 8; i++) le[i] = (uint8_t)(len >> (8 * i));
        fm_buf_append(out, le, 8);
        fm_buf_append(out, json.data, json.len);
        memset(out->data + out->len, ' ', (size_t)len - json.len);
        out->len += (size_t)len - json.len;
    }
    fm_buf_free(&json);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Header parser                                                            */

/* A non-negative integer from a cJSON number, read through valuedouble
 * (valueint saturates) and required to be exact. */
static int json_u64(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0) || v > ST_MAX_EXACT || floor(v) != v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_shape(const cJSON *shape, st_entry *t, fm_err *e)
{
    if (!cJSON_IsArray(shape)) return fm_fail(e, FM_EFORMAT, "tensor '%s': shape is not a list", t->name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS)
        return fm_fail(e, FM_EUNSUPPORTED, "tensor '%s': %d dimensions (at most %d)", t->name, nd, ST_MAX_DIMS);
    t->ndim = 0;
    for (const cJSON *d = shape->child; d; d = d->next) {
        uint64_t v;
        if (json_u64(d, &v) != 0 || v > INT64_MAX)
            return fm_fail(e, FM_EFORMAT, "tensor '%s': shape holds something other than a size", t->name);
        t->shape[t->ndim++] = (int64_t)v;
    }
    return 0;
}

static int parse_offsets(const cJSON *offs, st_entry *t, fm_err *e)
{
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || json_u64(offs->child, &t->begin) != 0 ||
        json_u64(offs->child->next, &t->end) != 0)
        return fm_fail(e, FM_EFORMAT, "tensor '%s': data_offsets is not [begin, end]", t->name);
    return 0;
}

static int parse_tensor(const cJSON *j, st_entry *t, fm_err *e)
{
    if (!cJSON_IsObject(j)) return fm_fail(e, FM_EFORMAT, "tensor '%s': not an object", t->name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    if (!cJSON_IsString(dtype)) return fm_fail(e, FM_EFORMAT, "tensor '%s': no dtype", t->name);
    t->dtype = dt_from_st_name(dtype->valuestring);
    if (t->dtype == DT_INVALID)
        return fm_fail(e, FM_EFORMAT, "tensor '%s': unknown dtype '%s'", t->name, dtype->valuestring);
    FM_TRY(parse_shape(cJSON_GetObjectItemCaseSensitive(j, "shape"), t, e));
    FM_TRY(parse_offsets(cJSON_GetObjectItemCaseSensitive(j, "data_offsets"), t, e));
    uint64_t nb = st_nbytes(t);
    if (nb == UINT64_MAX) return fm_fail(e, FM_EFORMAT, "tensor '%s': size overflows", t->name);
    if (t->end < t->begin || t->end - t->begin != nb)
        return fm_fail(e, FM_EFORMAT, "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] do not hold %" PRIu64
                       " bytes", t->name, t->begin, t->end, nb);
    return 0;
}

/* __metadata__ is a string -> string map in safetensors. */
static int parse_metadata(const cJSON *j, st_header_info *out, fm_err *e)
{
    if (!cJSON_IsObject(j)) return fm_fail(e, FM_EFORMAT, "__metadata__ is not an object");
    for (const cJSON *c = j->child; c; c = c->next)
        if (!cJSON_IsString(c)) return fm_fail(e, FM_EFORMAT, "__metadata__ value '%s' is not a string", c->string);
    free(out->metadata_json);
    out->metadata_json = cJSON_PrintUnformatted(j);
    if (out->metadata_json == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading __metadata__");
    return 0;
}

static int offset_cmp(const void *va, const void *vb)
{
    const st_entry *a = va, *b = vb;
    if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
    return (a->end > b->end) - (a->end < b->end);
}

/* safetensors' Metadata::validate: sorted by offset, no gaps or overlaps. */
static int check_offsets(st_header_info *h, uint64_t file_size, fm_err *e)
{
    qsort(h->entries, h->n, sizeof *h->entries, offset_cmp);
    uint64_t off = 0;
    for (size_t i = 0; i < h->n; i++) {
        const st_entry *t = &h->entries[i];
        if (t->begin != off)
            return fm_fail(e, FM_EFORMAT, "tensor '%s' starts at %" PRIu64 ", expected %" PRIu64 " (%s)", t->name,
                           t->begin, off, t->begin > off ? "gap" : "overlap");
        off = t->end;
    }
    uint64_t total;
    if (fm_add_ovf(h->data_start, off, &total)) return fm_fail(e, FM_EFORMAT, "data section size overflows");
    if (file_size != 0 && file_size != total)
        return fm_fail(e, FM_EFORMAT, "file is %" PRIu64 " bytes, header describes %" PRIu64, file_size, total);
    return 0;
}

/* Name storage: one block (priv_) holding every name, NUL-separated. */
static int collect_names(const cJSON *root, st_header_info *h, fm_err *e)
{
    size_t count = 0, bytes = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) continue;
        count++;
        bytes += strlen(c->string) + 1;
    }
    h->entries = calloc(count ? count : 1, sizeof *h->entries);
    h->priv_ = malloc(bytes ? bytes : 1);
    if (h->entries == NULL || h->priv_ == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading a header");
    char *w = h->priv_;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) continue;
        size_t l = strlen(c->string) + 1;
        memcpy(w, c->string, l);
        h->entries[h->n] = (st_entry){.name = w, .user = h->n};
        h->n++;
        w += l;
    }
    return 0;
}

static int parse_root(const cJSON *root, st_header_info *h, uint64_t file_size, fm_err *e)
{
    if (!cJSON_IsObject(root)) return fm_fail(e, FM_EFORMAT, "safetensors header is not a JSON object");
    FM_TRY(collect_names(root, h, e));
    size_t i = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (h->metadata_json) return fm_fail(e, FM_EFORMAT, "duplicate __metadata__");
            FM_TRY(parse_metadata(c, h, e));
            continue;
        }
        FM_TRY(parse_tensor(c, &h->entries[i++], e));
    }
    FM_TRY(check_unique(h->entries, h->n, e));
    return check_offsets(h, file_size, e);
}

static bool only_ws(const uint8_t *p, const uint8_t *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') return false;
    return true;
}

static int read_len(const uint8_t *buf, size_t len, uint64_t *n, fm_err *e)
{
    if (len < 8) return fm_fail(e, FM_EFORMAT, "truncated: %zu bytes, no header length", len);
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | buf[i];
    if (v > ST_MAX_HEADER) return fm_fail(e, FM_EFORMAT, "header length %" PRIu64 " exceeds %llu", v, ST_MAX_HEADER);
    *n = v;
    return 0;
}

int st_parse_header(const uint8_t *buf, size_t len, uint64_t file_size, st_header_info *out, fm_err *e)
{
    memset(out, 0, sizeof *out);
    uint64_t n = 0;
    FM_TRY(read_len(buf, len, &n, e));
    if (len - 8 < n) return fm_fail(e, FM_EFORMAT, "truncated: header of %" PRIu64 " bytes, %zu available", n, len - 8);
    if (n == 0 || buf[8] != '{') return fm_fail(e, FM_EFORMAT, "header does not start with '{'");
    out->data_start = 8 + n;
    const char *json = (const char *)buf + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)n, &end, 0);
    if (root == NULL) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= json && at <= json + n ? (size_t)(at - json) : 0;
        return fm_fail(e, FM_EFORMAT, "header is not valid JSON (near byte %zu of the header)", off);
    }
    int rc = only_ws((const uint8_t *)end, buf + 8 + n) ? parse_root(root, out, file_size, e)
                                                        : fm_fail(e, FM_EFORMAT, "garbage after the header JSON");
    cJSON_Delete(root);
    if (rc != 0) st_header_info_free(out);
    return rc;
}

static int read_exact(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        off += (uint64_t)r;
        len -= (size_t)r;
    }
    return 0;
}

/* Reads only 8 + N bytes: the tensors can be many gigabytes. */
static int read_header_fd(int fd, st_header_info *out, fm_err *e)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0) return fm_fail(e, FM_EIO, "cannot stat: %s", strerror(errno));
    uint8_t head[8];
    if ((uint64_t)sb.st_size < 8)
        return fm_fail(e, FM_EFORMAT, "truncated: %lld bytes, no header length", (long long)sb.st_size);
    if (read_exact(fd, head, 8, 0) != 0) return fm_fail(e, FM_EIO, "cannot read: %s", strerror(errno));
    uint64_t n = 0;
    FM_TRY(read_len(head, 8, &n, e));
    if ((uint64_t)sb.st_size - 8 < n)
        return fm_fail(e, FM_EFORMAT, "truncated: header of %" PRIu64 " bytes, file of %lld", n, (long long)sb.st_size);
    uint8_t *buf = malloc((size_t)n + 8);
    if (buf == NULL) return fm_fail(e, FM_ENOMEM, "out of memory reading a header of %" PRIu64 " bytes", n);
    int rc = read_exact(fd, buf, (size_t)n + 8, 0) != 0
                 ? fm_fail(e, FM_EIO, "cannot read: %s", strerror(errno))
                 : st_parse_header(buf, (size_t)n + 8, (uint64_t)sb.st_size, out, e);
    free(buf);
    return rc;
}

int st_read_header(const char *path, st_header_info *out, fm_err *e)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fm_fail(e, FM_EIO, "cannot open %s: %s", path, strerror(errno));
    int rc = read_header_fd(fd, out, e);
    close(fd);
    if (rc != 0 && e != NULL) fm_context(e, "%s", path);
    return rc;
}

void st_header_info_free(st_header_info *h)
{
    if (h == NULL) return;
    free(h->entries);
    free(h->metadata_json);
    free(h->priv_);
    memset(h, 0, sizeof *h);
}
