/* jsonfmt.c - a JSON tree that prints like Python's json.dumps() (see jsonfmt.h). */
#include "hf/jsonfmt.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jf_member {
    char *key; /* decoded, NUL-terminated */
    size_t key_len;
    char *raw_key; /* the key's token, quotes included */
    size_t raw_key_len;
    jf_node *val;
} jf_member;

struct jf_node {
    jf_kind kind;
    char *raw; /* scalars: the token */
    size_t raw_len;
    char *str; /* JF_STRING: decoded */
    size_t str_len;
    jf_node **items;    /* JF_ARRAY */
    jf_member *members; /* JF_OBJECT */
    size_t n, cap;
};

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                    */

/* Decodes one UTF-8 sequence at s[0..len). Surrogate code points (ED A0..BF)
 * are accepted only when allow_surr: decoded strings keep unpaired \uD8xx
 * escapes that way, as Python's str does. @return : bytes used, 0 if invalid. */
static size_t utf8_next(const unsigned char *s, size_t len, bool allow_surr, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) n = 2, v = c & 0x1Fu, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, v = c & 0x0Fu, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, v = c & 0x07u, min = 0x10000;
    else return 0;
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    if (v < min || v > 0x10FFFF) return 0;
    if (v >= 0xD800 && v <= 0xDFFF && !allow_surr) return 0;
    *cp = v;
    return n;
}

/* Appends a code point as UTF-8 (surrogates as 3-byte sequences). */
static void utf8_put(fm_buf *b, uint32_t cp)
{
    unsigned char t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (unsigned char)(0xC0 | (cp >> 6));
        t[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (unsigned char)(0xE0 | (cp >> 12));
        t[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        t[0] = (unsigned char)(0xF0 | (cp >> 18));
        t[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        t[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    fm_buf_append(b, t, n);
}

/* ------------------------------------------------------------------------ */
/* Python-style string quoting                                              */

static void put_u16_escape(fm_buf *b, uint32_t unit) { fm_buf_printf(b, "\\u%04x", (unsigned)unit); }

/* Python's json ESCAPE_ASCII: the short escapes, else \uXXXX for anything
 * outside ' '..'~' (so DEL is escaped too). */
static void put_py_char(fm_buf *b, uint32_t cp)
{
    switch (cp) {
    case '"': fm_buf_puts(b, "\\\""); return;
    case '\\': fm_buf_puts(b, "\\\\"); return;
    case '\n': fm_buf_puts(b, "\\n"); return;
    case '\r': fm_buf_puts(b, "\\r"); return;
    case '\t': fm_buf_puts(b, "\\t"); return;
    case '\b': fm_buf_puts(b, "\\b"); return;
    case '\f': fm_buf_puts(b, "\\f"); return;
    default: break;
    }
    if (cp >= 0x20 && cp <= 0x7E) {
        fm_buf_putc(b, (char)cp);
    } else if (cp < 0x10000) {
        put_u16_escape(b, cp);
    } else {
        uint32_t v = cp - 0x10000;
        put_u16_escape(b, 0xD800 | (v >> 10));
        put_u16_escape(b, 0xDC00 | (v & 0x3FF));
    }
}

/* @return : 0, or 1 + the offset of the first invalid byte. */
static size_t quote_py(fm_buf *out, const char *s, size_t len, bool allow_surr)
{
    const unsigned char *p = (const unsigned char *)s;
    fm_buf_putc(out, '"');
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = utf8_next(p + i, len - i, allow_surr, &cp);
        if (k == 0) return i + 1;
        put_py_char(out, cp);
        i += k;
    }
    fm_buf_putc(out, '"');
    return 0;
}

int jf_quote_py(fm_buf *out, const char *s, size_t len, fm_err *e)
{
    size_t bad = quote_py(out, s, len, false);
    if (bad) return fm_fail(e, FM_EFORMAT, "invalid UTF-8 at byte %zu of a string", bad - 1);
    if (out->oom) return fm_fail(e, FM_ENOMEM, "out of memory formatting JSON");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Python float repr                                                        */

/* Shortest digits that read back as v: the first precision that round-trips
 * is the one Python's repr (David Gay's shortest mode) picks, and %.*e rounds
 * to the nearest decimal of that length as Gay does. */
static int shortest_digits(double v, char *dig, int *exp10)
{
    char tmp[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, v);
        if (strtod(tmp, NULL) == v) break;
    }
    int nd = 0;
    const char *c = tmp + (tmp[0] == '-');
    for (; *c && *c != 'e'; c++)
        if (*c >= '0' && *c <= '9') dig[nd++] = *c;
    *exp10 = (int)strtol(c + 1, NULL, 10);
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    dig[nd] = '\0';
    return nd;
}

const char *jf_py_float_repr(double v, char *buf, size_t len)
{
    const char *special = isnan(v) ? "NaN" : isinf(v) ? (v > 0 ? "Infinity" : "-Infinity")
                        : v == 0 ? (signbit(v) ? "-0.0" : "0.0") : NULL;
    if (special) {
        snprintf(buf, len, "%s", special);
        return buf;
    }
    char dig[24];
    int e10;
    int nd = shortest_digits(v, dig, &e10);
    int decpt = e10 + 1; /* v = 0.DIGITS * 10^decpt */
    const char *sign = v < 0 ? "-" : "";
    /* float_repr_style 'short', mode 'r': exponent form when decpt <= -4 or
     * decpt > 16, else positional with at least one digit after the dot. */
    if (decpt <= -4 || decpt > 16) {
        int x = decpt - 1;
        snprintf(buf, len, "%s%c%s%se%c%02d", sign, dig[0], nd > 1 ? "." : "", dig + 1, x < 0 ? '-' : '+',
                 x < 0 ? -x : x);
    } else if (decpt <= 0) {
        snprintf(buf, len, "%s0.%.*s%s", sign, -decpt, "0000", dig);
    } else if (decpt >= nd) {
        snprintf(buf, len, "%s%s%.*s.0", sign, dig, decpt - nd, "0000000000000000");
    } else {
        snprintf(buf, len, "%s%.*s.%s", sign, decpt, dig, dig + decpt);
    }
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Nodes                                                                    */

static void member_free(jf_member *m)
{
    free(m->key);
    free(m->raw_key);
    jf_free(m->val);
}

void jf_free(jf_node *n)
{
    if (n == NULL) return;
    for (size_t i = 0; n->kind == JF_ARRAY && i < n->n; i++) jf_free(n->items[i]);
    for (size_t i = 0; n->kind == JF_OBJECT && i < n->n; i++) member_free(&n->members[i]);
    free(n->items);
    free(n->members);
    free(n->raw);
    free(n->str);
    free(n);
}

jf_kind jf_kind_of(const jf_node *n) { return n->kind; }

const char *jf_raw(const jf_node *n, size_t *len)
{
    if (n->kind == JF_ARRAY || n->kind == JF_OBJECT) return NULL;
    if (len) *len = n->raw_len;
    return n->raw;
}

const char *jf_string(const jf_node *n, size_t *len)
{
    if (n->kind != JF_STRING) return NULL;
    if (len) *len = n->str_len;
    return n->str;
}

size_t jf_size(const jf_node *n) { return (n->kind == JF_ARRAY || n->kind == JF_OBJECT) ? n->n : 0; }

jf_node *jf_at(const jf_node *n, size_t i)
{
    if (n->kind == JF_ARRAY && i < n->n) return n->items[i];
    if (n->kind == JF_OBJECT && i < n->n) return n->members[i].val;
    return NULL;
}

const char *jf_key_at(const jf_node *n, size_t i, size_t *len)
{
    if (n->kind != JF_OBJECT || i >= n->n) return NULL;
    if (len) *len = n->members[i].key_len;
    return n->members[i].key;
}

static bool key_eq(const jf_member *m, const char *key, size_t len)
{
    return m->key_len == len && memcmp(m->key, key, len) == 0;
}

static ptrdiff_t find_member(const jf_node *obj, const char *key)
{
    size_t len = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (key_eq(&obj->members[i], key, len)) return (ptrdiff_t)i;
    return -1;
}

jf_node *jf_get(const jf_node *obj, const char *key)
{
    if (obj == NULL || obj->kind != JF_OBJECT) return NULL;
    ptrdiff_t i = find_member(obj, key);
    return i < 0 ? NULL : obj->members[i].val;
}

/* Grows items/members so one more fits. */
static bool node_grow(jf_node *n)
{
    if (n->n < n->cap) return true;
    size_t cap = n->cap ? n->cap * 2 : 4;
    size_t elem = n->kind == JF_ARRAY ? sizeof(jf_node *) : sizeof(jf_member);
    if (cap > SIZE_MAX / elem) return false;
    void *old = n->kind == JF_ARRAY ? (void *)n->items : (void *)n->members;
    void *p = realloc(old, cap * elem);
    if (p == NULL) return false;
    if (n->kind == JF_ARRAY) n->items = p;
    else n->members = p;
    n->cap = cap;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Parser                                                                   */

typedef struct jparser {
    const unsigned char *s;
    size_t len, pos;
    int depth, max_depth;
    size_t *err_off;
    fm_err *e;
    fm_buf scratch; /* decoded string being built */
} jparser;

static int jp_fail(jparser *p, size_t at, const char *what)
{
    if (p->err_off) *p->err_off = at;
    return fm_fail(p->e, FM_EFORMAT, "JSON: %s at byte %zu", what, at);
}

static int jp_oom(jparser *p) { return fm_fail(p->e, FM_ENOMEM, "out of memory parsing JSON"); }

static void jp_skip_ws(jparser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static bool jp_peek(const jparser *p, char c) { return p->pos < p->len && p->s[p->pos] == (unsigned char)c; }

static bool jp_match(const jparser *p, const char *word)
{
    size_t n = strlen(word);
    return p->len - p->pos >= n && memcmp(p->s + p->pos, word, n) == 0;
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(const unsigned char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(s[i]);
        if (d < 0) return -1;
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* \uXXXX at p->pos (pointing at 'u'); joins a high surrogate with a
 * following \uDC00-\uDFFF escape, as Python's scanstring does. */
static int jp_unicode_escape(jparser *p)
{
    size_t at = p->pos - 1;
    uint32_t cp;
    if (p->len - p->pos < 5 || hex4(p->s + p->pos + 1, &cp) != 0) return jp_fail(p, at, "invalid \\uXXXX escape");
    p->pos += 5;
    if (cp >= 0xD800 && cp <= 0xDBFF && p->len - p->pos >= 6 && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
        uint32_t lo;
        if (hex4(p->s + p->pos + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p->pos += 6;
        }
    }
    utf8_put(&p->scratch, cp);
    return 0;
}

static int jp_escape(jparser *p)
{
    size_t at = p->pos;
    p->pos++; /* the backslash */
    if (p->pos >= p->len) return jp_fail(p, at, "unterminated string");
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    unsigned char c = p->s[p->pos];
    if (c == 'u') return jp_unicode_escape(p);
    const char *k = c ? strchr(from, c) : NULL;
    if (k == NULL) return jp_fail(p, at, "invalid escape");
    fm_buf_putc(&p->scratch, to[k - from]);
    p->pos++;
    return 0;
}

/* Scans a string token at p->pos ('"'); the decoded text goes to p->scratch. */
static int jp_string(jparser *p, size_t *tok_start)
{
    *tok_start = p->pos;
    p->scratch.len = 0;
    p->pos++;
    for (;;) {
        if (p->pos >= p->len) return jp_fail(p, *tok_start, "unterminated string");
        unsigned char c = p->s[p->pos];
        if (c == '"') break;
        if (c < 0x20) return jp_fail(p, p->pos, "control character in string");
        if (c == '\\') {
            FM_TRY(jp_escape(p));
            continue;
        }
        uint32_t cp;
        size_t k = utf8_next(p->s + p->pos, p->len - p->pos, false, &cp);
        if (k == 0) return jp_fail(p, p->pos, "invalid UTF-8 in string");
        fm_buf_append(&p->scratch, p->s + p->pos, k);
        p->pos += k;
    }
    p->pos++;
    fm_buf_terminate(&p->scratch);
    return p->scratch.oom ? jp_oom(p) : 0;
}

static char *dup_scratch(jparser *p, size_t *len)
{
    *len = p->scratch.len;
    return fm_strndup(p->scratch.len ? (const char *)p->scratch.data : "", p->scratch.len);
}

static size_t jp_digits(jparser *p)
{
    size_t n = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++, n++;
    return n;
}

/* Python's NUMBER_RE: -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?, and -Infinity. */
static int jp_number(jparser *p)
{
    size_t start = p->pos;
    if (jp_peek(p, '-')) p->pos++;
    if (jp_match(p, "Infinity")) {
        p->pos += 8;
        return 0;
    }
    if (jp_peek(p, '0')) p->pos++;
    else if (jp_digits(p) == 0) return jp_fail(p, start, "invalid number");
    if (jp_peek(p, '.')) {
        p->pos++;
        if (jp_digits(p) == 0) return jp_fail(p, start, "invalid number");
    }
    if (jp_peek(p, 'e') || jp_peek(p, 'E')) {
        p->pos++;
        if (jp_peek(p, '+') || jp_peek(p, '-')) p->pos++;
        if (jp_digits(p) == 0) return jp_fail(p, start, "invalid number");
    }
    return 0;
}

static int jp_value(jparser *p, jf_node **out);

static jf_node *node_new(jf_kind kind)
{
    jf_node *n = calloc(1, sizeof *n);
    if (n) n->kind = kind;
    return n;
}

static int jp_scalar(jparser *p, jf_node *n, size_t start)
{
    n->raw_len = p->pos - start;
    n->raw = fm_strndup((const char *)p->s + start, n->raw_len);
    if (n->raw == NULL) return jp_oom(p);
    if (n->kind == JF_STRING && (n->str = dup_scratch(p, &n->str_len)) == NULL) return jp_oom(p);
    return 0;
}

static int jp_literal(jparser *p, jf_kind *kind)
{
    static const struct {
        const char *word;
        jf_kind kind;
    } lits[] = {{"null", JF_NULL}, {"true", JF_TRUE}, {"false", JF_FALSE}, {"NaN", JF_NUMBER}, {"Infinity", JF_NUMBER}};
    for (size_t i = 0; i < FM_ARRAY_LEN(lits); i++) {
        if (jp_match(p, lits[i].word)) {
            p->pos += strlen(lits[i].word);
            *kind = lits[i].kind;
            return 0;
        }
    }
    return jp_fail(p, p->pos, p->pos < p->len ? "expected a value" : "unexpected end of input");
}

/* A scalar token at p->pos into a new node. */
static int jp_scalar_node(jparser *p, jf_node **out)
{
    size_t start = p->pos;
    jf_kind kind = JF_NULL;
    unsigned char c = p->s[p->pos];
    if (c == '"') {
        kind = JF_STRING;
        FM_TRY(jp_string(p, &start));
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        kind = JF_NUMBER;
        FM_TRY(jp_number(p));
    } else {
        FM_TRY(jp_literal(p, &kind));
    }
    jf_node *n = node_new(kind);
    if (n == NULL) return jp_oom(p);
    int rc = jp_scalar(p, n, start);
    if (rc != 0) {
        jf_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

static int jp_enter(jparser *p)
{
    if (p->depth >= p->max_depth) return jp_fail(p, p->pos, "nesting too deep");
    p->depth++;
    p->pos++; /* the bracket */
    jp_skip_ws(p);
    return 0;
}

/* After an item: ',' (then not the closer) or the closer. *done at the closer. */
static int jp_after_item(jparser *p, char closer, bool *done)
{
    jp_skip_ws(p);
    if (jp_peek(p, closer)) {
        p->pos++;
        *done = true;
        return 0;
    }
    if (!jp_peek(p, ',')) {
        if (p->pos >= p->len) return jp_fail(p, p->pos, "unexpected end of input");
        return jp_fail(p, p->pos, closer == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    size_t comma = p->pos++;
    jp_skip_ws(p);
    if (jp_peek(p, closer)) return jp_fail(p, comma, "trailing comma");
    *done = false;
    return 0;
}

static int jp_array(jparser *p, jf_node *n)
{
    FM_TRY(jp_enter(p));
    bool done = jp_peek(p, ']');
    if (done) p->pos++;
    while (!done) {
        jf_node *item = NULL;
        FM_TRY(jp_value(p, &item));
        if (!node_grow(n)) {
            jf_free(item);
            return jp_oom(p);
        }
        n->items[n->n++] = item;
        FM_TRY(jp_after_item(p, ']', &done));
    }
    p->depth--;
    return 0;
}

/* One "key": value pair appended to n. */
static int jp_member(jparser *p, jf_node *n)
{
    if (!jp_peek(p, '"'))
        return jp_fail(p, p->pos, p->pos < p->len ? "expected a string key" : "unexpected end of input");
    size_t start;
    FM_TRY(jp_string(p, &start));
    if (!node_grow(n)) return jp_oom(p);
    jf_member *m = &n->members[n->n];
    memset(m, 0, sizeof *m);
    m->raw_key_len = p->pos - start;
    m->raw_key = fm_strndup((const char *)p->s + start, m->raw_key_len);
    m->key = dup_scratch(p, &m->key_len);
    n->n++; /* counted now so that jf_free releases a partial member */
    if (m->raw_key == NULL || m->key == NULL) return jp_oom(p);
    jp_skip_ws(p);
    if (!jp_peek(p, ':')) return jp_fail(p, p->pos, "expected ':'");
    p->pos++;
    return jp_value(p, &m->val);
}

typedef struct key_ref {
    const char *key;
    size_t len, idx;
} key_ref;

/* Python's str order is code-point order, which is byte order on UTF-8. */
static int key_cmp(const char *a, size_t la, const char *b, size_t lb)
{
    int c = memcmp(a, b, la < lb ? la : lb);
    return c != 0 ? c : (la > lb) - (la < lb);
}

static int key_ref_cmp(const void *va, const void *vb)
{
    const key_ref *a = va, *b = vb;
    int c = key_cmp(a->key, a->len, b->key, b->len);
    return c != 0 ? c : (a->idx > b->idx) - (a->idx < b->idx);
}

static key_ref *sorted_keys(const jf_node *n)
{
    key_ref *r = malloc((n->n ? n->n : 1) * sizeof *r);
    if (r == NULL) return NULL;
    for (size_t i = 0; i < n->n; i++) r[i] = (key_ref){n->members[i].key, n->members[i].key_len, i};
    qsort(r, n->n, sizeof *r, key_ref_cmp);
    return r;
}

/* dict(pairs) semantics for repeated keys: the first position, the last
 * value. Sorting keeps it O(n log n) for objects like vocab.json. */
static int dedupe_members(jf_node *n)
{
    if (n->n < 2) return 0;
    key_ref *r = sorted_keys(n);
    if (r == NULL) return FM_ENOMEM;
    bool any = false;
    for (size_t i = 0, j; i < n->n; i = j) {
        for (j = i + 1; j < n->n && key_cmp(r[i].key, r[i].len, r[j].key, r[j].len) == 0; j++) {}
        if (j - i == 1) continue;
        any = true;
        jf_member *keep = &n->members[r[i].idx], *last = &n->members[r[j - 1].idx];
        jf_node *v = last->val;
        last->val = keep->val;
        keep->val = v;
        for (size_t k = i + 1; k < j; k++) {
            member_free(&n->members[r[k].idx]);
            n->members[r[k].idx].key = NULL; /* mark removed */
        }
    }
    free(r);
    if (!any) return 0;
    size_t w = 0;
    for (size_t i = 0; i < n->n; i++)
        if (n->members[i].key != NULL) n->members[w++] = n->members[i];
    n->n = w;
    return 0;
}

static int jp_object(jparser *p, jf_node *n)
{
    FM_TRY(jp_enter(p));
    bool done = jp_peek(p, '}');
    if (done) p->pos++;
    while (!done) {
        FM_TRY(jp_member(p, n));
        FM_TRY(jp_after_item(p, '}', &done));
    }
    p->depth--;
    if (dedupe_members(n) != 0) return jp_oom(p);
    return 0;
}

static int jp_value(jparser *p, jf_node **out)
{
    jp_skip_ws(p);
    if (p->pos >= p->len) return jp_fail(p, p->pos, "unexpected end of input");
    unsigned char c = p->s[p->pos];
    if (c != '{' && c != '[') return jp_scalar_node(p, out);
    jf_node *n = node_new(c == '{' ? JF_OBJECT : JF_ARRAY);
    if (n == NULL) return jp_oom(p);
    int rc = c == '{' ? jp_object(p, n) : jp_array(p, n);
    if (rc != 0) {
        jf_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

int jf_parse(const char *text, size_t len, int max_depth, jf_node **out, size_t *err_off, fm_err *e)
{
    *out = NULL;
    if (max_depth <= 0) max_depth = JF_DEFAULT_MAX_DEPTH;
    if (max_depth > JF_HARD_MAX_DEPTH) max_depth = JF_HARD_MAX_DEPTH;
    jparser p = {.s = (const unsigned char *)text, .len = len, .max_depth = max_depth, .err_off = err_off, .e = e};
    jf_node *root = NULL;
    int rc = jp_value(&p, &root);
    if (rc == 0) {
        jp_skip_ws(&p);
        if (p.pos < p.len) rc = jp_fail(&p, p.pos, "extra data after the value");
    }
    fm_buf_free(&p.scratch);
    if (rc != 0) {
        jf_free(root);
        return rc;
    }
    *out = root;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Editing                                                                  */

static int check_object(const jf_node *obj, fm_err *e)
{
    if (obj == NULL || obj->kind != JF_OBJECT) return fm_fail(e, FM_EINTERNAL, "JSON edit on a non-object");
    return 0;
}

/* A new member {key, parsed json}; the key's token is Python-quoted. */
static int member_make(jf_member *m, const char *key, const char *json, size_t len, fm_err *e)
{
    memset(m, 0, sizeof *m);
    fm_buf q = {0};
    int rc = jf_quote_py(&q, key, strlen(key), e);
    if (rc == 0) rc = jf_parse(json, len, 0, &m->val, NULL, e);
    if (rc != 0) {
        fm_buf_free(&q);
        return rc;
    }
    m->key_len = strlen(key);
    m->key = fm_strdup(key);
    m->raw_key_len = q.len;
    m->raw_key = fm_strndup((const char *)q.data, q.len);
    fm_buf_free(&q);
    if (m->key == NULL || m->raw_key == NULL) {
        member_free(m);
        return fm_fail(e, FM_ENOMEM, "out of memory editing JSON");
    }
    return 0;
}

int jf_set(jf_node *obj, const char *key, const char *json, size_t len, fm_err *e)
{
    FM_TRY(check_object(obj, e));
    ptrdiff_t i = find_member(obj, key);
    if (i >= 0) {
        jf_node *v;
        FM_TRY(jf_parse(json, len, 0, &v, NULL, e));
        jf_free(obj->members[i].val);
        obj->members[i].val = v;
        return 0;
    }
    return jf_insert(obj, obj->n, key, json, len, e);
}

int jf_insert(jf_node *obj, size_t pos, const char *key, const char *json, size_t len, fm_err *e)
{
    FM_TRY(check_object(obj, e));
    jf_member m;
    FM_TRY(member_make(&m, key, json, len, e));
    while (jf_delete(obj, key)) {}
    if (!node_grow(obj)) {
        member_free(&m);
        return fm_fail(e, FM_ENOMEM, "out of memory editing JSON");
    }
    if (pos > obj->n) pos = obj->n;
    memmove(&obj->members[pos + 1], &obj->members[pos], (obj->n - pos) * sizeof m);
    obj->members[pos] = m;
    obj->n++;
    return 0;
}

bool jf_delete(jf_node *obj, const char *key)
{
    if (obj == NULL || obj->kind != JF_OBJECT) return false;
    ptrdiff_t i = find_member(obj, key);
    if (i < 0) return false;
    member_free(&obj->members[i]);
    memmove(&obj->members[i], &obj->members[i + 1], (obj->n - (size_t)i - 1) * sizeof(jf_member));
    obj->n--;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Printing                                                                 */

/* An integer token as Python's str(int()) prints it: only "-0" changes. */
static void put_canon_int(fm_buf *out, const char *raw, size_t len)
{
    if (len == 2 && raw[0] == '-' && raw[1] == '0') fm_buf_putc(out, '0');
    else fm_buf_append(out, raw, len);
}

static void put_canon_number(fm_buf *out, const jf_node *n)
{
    if (memchr(n->raw, 'I', n->raw_len) || memchr(n->raw, 'N', n->raw_len)) {
        fm_buf_append(out, n->raw, n->raw_len);
        return;
    }
    if (!memchr(n->raw, '.', n->raw_len) && !memchr(n->raw, 'e', n->raw_len) && !memchr(n->raw, 'E', n->raw_len)) {
        put_canon_int(out, n->raw, n->raw_len);
        return;
    }
    char buf[40];
    fm_buf_puts(out, jf_py_float_repr(strtod(n->raw, NULL), buf, sizeof buf));
}

static void put_scalar(fm_buf *out, const jf_node *n, bool canonical)
{
    if (canonical && n->kind == JF_STRING) quote_py(out, n->str, n->str_len, true);
    else if (canonical && n->kind == JF_NUMBER) put_canon_number(out, n);
    else fm_buf_append(out, n->raw, n->raw_len);
}

static void put_newline(fm_buf *out, const jf_print_opts *o, int level)
{
    fm_buf_putc(out, '\n');
    for (long i = 0; i < (long)o->indent * level; i++) fm_buf_putc(out, ' ');
}

/* json.dumps separators: "," + newline/indent when indented, ", " otherwise. */
static void put_item_sep(fm_buf *out, const jf_print_opts *o, int level, bool first)
{
    if (!first) fm_buf_putc(out, ',');
    if (o->indent >= 0) put_newline(out, o, level);
    else if (!first) fm_buf_putc(out, ' ');
}

static void put_node(fm_buf *out, const jf_node *n, const jf_print_opts *o, int level);

static void put_member(fm_buf *out, const jf_member *m, const jf_print_opts *o, int level)
{
    if (o->canonical) quote_py(out, m->key, m->key_len, true);
    else fm_buf_append(out, m->raw_key, m->raw_key_len);
    fm_buf_puts(out, ": ");
    put_node(out, m->val, o, level);
}

static void put_object(fm_buf *out, const jf_node *n, const jf_print_opts *o, int level)
{
    key_ref *order = o->sort_keys ? sorted_keys(n) : NULL;
    if (o->sort_keys && order == NULL) {
        out->oom = true;
        return;
    }
    fm_buf_putc(out, '{');
    for (size_t i = 0; i < n->n; i++) {
        put_item_sep(out, o, level + 1, i == 0);
        put_member(out, &n->members[order ? order[i].idx : i], o, level + 1);
    }
    if (o->indent >= 0) put_newline(out, o, level);
    fm_buf_putc(out, '}');
    free(order);
}

static void put_node(fm_buf *out, const jf_node *n, const jf_print_opts *o, int level)
{
    if (n->kind != JF_ARRAY && n->kind != JF_OBJECT) {
        put_scalar(out, n, o->canonical);
        return;
    }
    if (n->n == 0) { /* Python prints empty containers as {} / [] at any indent */
        fm_buf_puts(out, n->kind == JF_ARRAY ? "[]" : "{}");
        return;
    }
    if (n->kind == JF_OBJECT) {
        put_object(out, n, o, level);
        return;
    }
    fm_buf_putc(out, '[');
    for (size_t i = 0; i < n->n; i++) {
        put_item_sep(out, o, level + 1, i == 0);
        put_node(out, n->items[i], o, level + 1);
    }
    if (o->indent >= 0) put_newline(out, o, level);
    fm_buf_putc(out, ']');
}

int jf_print(const jf_node *n, const jf_print_opts *opts, fm_buf *out, fm_err *e)
{
    static const jf_print_opts defaults = {.indent = 2, .sort_keys = true, .canonical = false};
    put_node(out, n, opts ? opts : &defaults, 0);
    if (out->oom) return fm_fail(e, FM_ENOMEM, "out of memory formatting JSON");
    return 0;
}
