/* pkl.c - a pickle virtual machine that only builds data (see pkl.h).
 *
 * Design notes (the choices pkl.h leaves open):
 *
 * - Memory: every node, string and item array lives in chunks of an arena
 *   owned by the pkl_doc. Item arrays grow by doubling; when the array is the
 *   newest allocation of the current chunk it grows in place, otherwise the
 *   old copy is abandoned (it is freed with the doc). The limits count values
 *   created in the doc (max_nodes) and bytes handed out by the arena plus the
 *   dict key index (max_bytes), over the whole doc. A limit that is hit is an
 *   FM_EFORMAT error whose message names the limit; a failed malloc is
 *   FM_ENOMEM.
 * - The VM keeps CPython's stack model: MARK opens a frame, and every pop
 *   (REDUCE, SETITEM, PUT, ...) may only take values above the newest mark.
 *   POP on an empty frame drops the mark, as pickle.py does.
 * - INST and OBJ (protocols 0/1) build a PKL_OBJ like pickle.py's
 *   _instantiate(): with arguments, kind PKL_REDUCE (klass(*args)); without,
 *   kind PKL_NEWOBJ (klass.__new__(klass)).
 * - BUILD needs a PKL_OBJ on the stack (anything else is FM_EFORMAT). A second
 *   BUILD on the same object merges when both states are dicts (a new dict:
 *   the old items, then the new ones, as __dict__.update() does); otherwise
 *   the last state wins.
 * - STRING/BINSTRING/SHORT_BINSTRING (Python 2 str) become PKL_STR holding the
 *   raw bytes (torch.load decodes them as UTF-8). UNICODE is decoded from
 *   raw-unicode-escape (latin-1 bytes plus \uXXXX / \UXXXXXXXX) into UTF-8.
 * - Text INT/LONG/FLOAT follow CPython's C unpickler (what torch.load runs):
 *   INT is strtol(text, 0) when that reads the whole line (a two-character
 *   line worth 0 or 1 is a bool: "00", "01", "-0"), else int(text, 0) like
 *   LONG (sign, 0x/0o/0b prefixes, underscores), up to 4300 digits, CPython's
 *   own limit for int/str conversions.
 * - Sets keep every added item in order (no de-duplication: equality of
 *   arbitrary values is not decidable here).
 * - Dict keys: pkl_dict_set() finds an equal STR or INT key through a hash
 *   index kept in the doc, so building a dict is linear; other keys append.
 * - pkl_is_global() treats "builtins" and "__builtin__" as the same module
 *   (protocol 2 writes the Python 2 name).
 * - pkl_repr() format: None/True/False, ints in decimal (ints wider than 512
 *   bytes as <int of N bytes>), floats as Python's shortest repr, 'str' with
 *   Python quoting, b'bytes', bytearray(b'...'), [list], (tuple,), {set} /
 *   set(), frozenset({...}), {k: v}, module.name for a GLOBAL, persid(pid),
 *   and an object as callable(arg, ..., key=kwarg, {dictitems}, [listitems],
 *   __state__=state), e.g. collections.OrderedDict({'a': 1},
 *   __state__={'_metadata': ...}). A value met again while it is being
 *   printed (a cycle) shows as <...>. The text stops with "..." after
 *   1 MiB: a DAG of shared values can otherwise expand exponentially.
 */
#include "torchfmt/pkl.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Arena                                                               */
/* ------------------------------------------------------------------ */

#define PKL_CHUNK_MIN ((size_t)64 * 1024)
#define PKL_CHUNK_MAX ((size_t)1024 * 1024)
#define PKL_ALIGN ((size_t)8)

typedef struct pkl_chunk {
    struct pkl_chunk *next;
    size_t used, cap;
    max_align_t data[]; /* max_align_t: any node or array fits aligned */
} pkl_chunk;

enum { FAIL_NONE = 0, FAIL_OOM, FAIL_NODES, FAIL_BYTES };

/* One entry of the dict key index: key `hash` of dict `dict` is at `idx`. */
typedef struct kx_slot {
    uint64_t hash;
    uint32_t dict; /* serial of the dict */
    uint32_t idx;  /* UINT32_MAX: empty slot */
} kx_slot;

struct pkl_doc {
    pkl_chunk *head;   /* chunk being filled; dedicated big chunks follow it */
    size_t chunk_size; /* size of the next regular chunk */
    uint8_t *last;     /* newest allocation in head (for in-place growth) */
    size_t last_size;
    size_t nodes, bytes;
    pkl_limits lim;
    int fail;          /* FAIL_*: why the last allocation returned NULL */
    kx_slot *kx;
    size_t kx_cap, kx_n;
};

pkl_limits pkl_default_limits(void)
{
    pkl_limits l;
    l.max_nodes = 50000000;
    l.max_stack = 1000000;
    l.max_memo = 50000000;
    l.max_bytes = (size_t)4 << 30;
    return l;
}

pkl_doc *pkl_doc_new(void)
{
    pkl_doc *doc = calloc(1, sizeof *doc);
    if (doc == NULL) return NULL;
    doc->chunk_size = PKL_CHUNK_MIN;
    doc->lim = pkl_default_limits();
    return doc;
}

void pkl_doc_free(pkl_doc *doc)
{
    if (doc == NULL) return;
    pkl_chunk *c = doc->head;
    while (c) {
        pkl_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(doc->kx);
    free(doc);
}

size_t pkl_doc_node_count(const pkl_doc *doc) { return doc ? doc->nodes : 0; }

/* Accounts n more bytes against max_bytes. */
static bool charge_bytes(pkl_doc *doc, size_t n)
{
    if (n > doc->lim.max_bytes || doc->bytes > doc->lim.max_bytes - n) {
        doc->fail = FAIL_BYTES;
        return false;
    }
    doc->bytes += n;
    return true;
}

static pkl_chunk *chunk_new(size_t cap)
{
    if (cap > SIZE_MAX - sizeof(pkl_chunk)) return NULL;
    pkl_chunk *c = malloc(sizeof(pkl_chunk) + cap);
    if (c == NULL) return NULL;
    c->next = NULL;
    c->used = 0;
    c->cap = cap;
    return c;
}

/* Big requests get a chunk of their own, linked after head so that the free
 * room of head is not wasted. */
static void *alloc_dedicated(pkl_doc *doc, size_t size)
{
    pkl_chunk *c = chunk_new(size);
    if (c == NULL) {
        doc->fail = FAIL_OOM;
        return NULL;
    }
    c->used = size;
    if (doc->head) {
        c->next = doc->head->next;
        doc->head->next = c;
    } else {
        doc->head = c;
        doc->last = NULL;
    }
    return c->data;
}

static void *arena_alloc(pkl_doc *doc, size_t size)
{
    if (size > SIZE_MAX - PKL_ALIGN) {
        doc->fail = FAIL_BYTES;
        return NULL;
    }
    size = (size + PKL_ALIGN - 1) & ~(PKL_ALIGN - 1);
    if (size == 0) size = PKL_ALIGN;
    if (!charge_bytes(doc, size)) return NULL;
    pkl_chunk *h = doc->head;
    if (h == NULL || h->cap - h->used < size) {
        if (size > doc->chunk_size / 4) return alloc_dedicated(doc, size);
        pkl_chunk *c = chunk_new(doc->chunk_size);
        if (c == NULL) {
            doc->fail = FAIL_OOM;
            return NULL;
        }
        if (doc->chunk_size < PKL_CHUNK_MAX) doc->chunk_size *= 2;
        c->next = h;
        doc->head = h = c;
    }
    uint8_t *p = (uint8_t *)h->data + h->used;
    h->used += size;
    doc->last = p;
    doc->last_size = size;
    return p;
}

/* Grows an arena array from old_size to new_size bytes (new_size > old_size),
 * in place when it is the newest allocation of the current chunk. */
static void *arena_grow(pkl_doc *doc, void *old, size_t old_size, size_t new_size)
{
    pkl_chunk *h = doc->head;
    size_t aligned = (new_size + PKL_ALIGN - 1) & ~(PKL_ALIGN - 1);
    if (old != NULL && old == doc->last && h != NULL && aligned >= new_size && aligned > doc->last_size &&
        (size_t)((uint8_t *)h->data + h->cap - (uint8_t *)old) >= aligned) {
        size_t extra = aligned - doc->last_size;
        if (!charge_bytes(doc, extra)) return NULL;
        h->used += extra;
        doc->last_size = aligned;
        return old;
    }
    void *p = arena_alloc(doc, new_size);
    if (p && old_size) memcpy(p, old, old_size);
    return p;
}

static char *arena_strndup(pkl_doc *doc, const void *s, size_t n)
{
    if (n == SIZE_MAX) {
        doc->fail = FAIL_BYTES;
        return NULL;
    }
    char *p = arena_alloc(doc, n + 1);
    if (p == NULL) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ------------------------------------------------------------------ */
/* Constructors                                                        */
/* ------------------------------------------------------------------ */

static pkl_value *node_new(pkl_doc *doc, pkl_type t)
{
    if (doc == NULL) return NULL;
    size_t max = doc->lim.max_nodes < UINT32_MAX ? doc->lim.max_nodes : UINT32_MAX;
    if (doc->nodes >= max) {
        doc->fail = FAIL_NODES;
        return NULL;
    }
    pkl_value *v = arena_alloc(doc, sizeof *v);
    if (v == NULL) return NULL;
    memset(v, 0, sizeof *v);
    v->type = t;
    v->serial = (uint32_t)doc->nodes++;
    return v;
}

pkl_value *pkl_new_none(pkl_doc *doc) { return node_new(doc, PKL_NONE); }

pkl_value *pkl_new_bool(pkl_doc *doc, bool b)
{
    pkl_value *v = node_new(doc, PKL_BOOL);
    if (v) v->u.b = b;
    return v;
}

pkl_value *pkl_new_int(pkl_doc *doc, int64_t x)
{
    pkl_value *v = node_new(doc, PKL_INT);
    if (v) v->u.i.v = x;
    return v;
}

/* Drops the high bytes that only repeat the sign. */
static size_t bigint_minimal_len(const uint8_t *b, size_t n)
{
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) || (b[n - 1] == 0xff && (b[n - 2] & 0x80)))) n--;
    return n;
}

pkl_value *pkl_new_bigint(pkl_doc *doc, const uint8_t *le, size_t n)
{
    if (le == NULL) n = 0;
    n = bigint_minimal_len(le, n);
    if (n <= 8) {
        uint64_t u = (n && (le[n - 1] & 0x80)) ? UINT64_MAX : 0;
        for (size_t i = 0; i < n; i++) {
            u &= ~((uint64_t)0xff << (8 * i));
            u |= (uint64_t)le[i] << (8 * i);
        }
        int64_t x;
        memcpy(&x, &u, sizeof x); /* two's complement reinterpretation, no UB */
        return pkl_new_int(doc, x);
    }
    pkl_value *v = node_new(doc, PKL_INT);
    if (v == NULL) return NULL;
    uint8_t *raw = arena_alloc(doc, n);
    if (raw == NULL) return NULL;
    memcpy(raw, le, n);
    v->u.i.big = true;
    v->u.i.raw = raw;
    v->u.i.rawlen = n;
    return v;
}

pkl_value *pkl_new_float(pkl_doc *doc, double f)
{
    pkl_value *v = node_new(doc, PKL_FLOAT);
    if (v) v->u.f = f;
    return v;
}

static pkl_value *new_strlike(pkl_doc *doc, pkl_type t, const void *s, size_t len)
{
    if (s == NULL) len = 0;
    pkl_value *v = node_new(doc, t);
    if (v == NULL) return NULL;
    char *p = arena_strndup(doc, s, len);
    if (p == NULL) return NULL;
    v->u.str.s = p;
    v->u.str.len = len;
    return v;
}

pkl_value *pkl_new_str(pkl_doc *doc, const char *s, size_t len) { return new_strlike(doc, PKL_STR, s, len); }

pkl_value *pkl_new_cstr(pkl_doc *doc, const char *s) { return pkl_new_str(doc, s, s ? strlen(s) : 0); }

pkl_value *pkl_new_bytes(pkl_doc *doc, const void *p, size_t len) { return new_strlike(doc, PKL_BYTES, p, len); }

pkl_value *pkl_new_list(pkl_doc *doc) { return node_new(doc, PKL_LIST); }

pkl_value *pkl_new_tuple(pkl_doc *doc, size_t n, pkl_value *const *items)
{
    pkl_value *v = node_new(doc, PKL_TUPLE);
    if (v == NULL || n == 0) return v;
    if (items == NULL || n > SIZE_MAX / sizeof(pkl_value *)) {
        doc->fail = FAIL_BYTES;
        return NULL;
    }
    pkl_value **arr = arena_alloc(doc, n * sizeof *arr);
    if (arr == NULL) return NULL;
    memcpy(arr, items, n * sizeof *arr);
    v->u.seq.items = arr;
    v->u.seq.n = v->u.seq.cap = n;
    return v;
}

pkl_value *pkl_new_set(pkl_doc *doc, bool frozen) { return node_new(doc, frozen ? PKL_FROZENSET : PKL_SET); }

pkl_value *pkl_new_dict(pkl_doc *doc) { return node_new(doc, PKL_DICT); }

pkl_value *pkl_new_global(pkl_doc *doc, const char *module, const char *name)
{
    if (module == NULL || name == NULL) return NULL;
    pkl_value *v = node_new(doc, PKL_GLOBAL);
    if (v == NULL) return NULL;
    v->u.global.module = arena_strndup(doc, module, strlen(module));
    v->u.global.name = arena_strndup(doc, name, strlen(name));
    return v->u.global.module && v->u.global.name ? v : NULL;
}

pkl_value *pkl_new_obj(pkl_doc *doc, pkl_obj_kind kind, pkl_value *callable, pkl_value *args)
{
    if (callable == NULL) return NULL;
    if (args == NULL) args = pkl_new_tuple(doc, 0, NULL);
    if (args == NULL) return NULL;
    pkl_value *v = node_new(doc, PKL_OBJ);
    if (v == NULL) return NULL;
    v->u.obj.kind = kind;
    v->u.obj.callable = callable;
    v->u.obj.args = args;
    return v;
}

pkl_value *pkl_new_persid(pkl_doc *doc, pkl_value *pid)
{
    if (pid == NULL) return NULL;
    pkl_value *v = node_new(doc, PKL_PERSID);
    if (v) v->u.persid.pid = pid;
    return v;
}

/* ------------------------------------------------------------------ */
/* Mutators                                                            */
/* ------------------------------------------------------------------ */

/* The error code that matches why the last allocation failed. */
static int fail_code(const pkl_doc *doc) { return doc->fail == FAIL_OOM ? FM_ENOMEM : FM_EFORMAT; }

/* Makes room for `extra` more items in seq (LIST/TUPLE/SET/FROZENSET). */
static int seq_reserve(pkl_doc *doc, pkl_value *seq, size_t extra)
{
    size_t n = seq->u.seq.n, cap = seq->u.seq.cap;
    const size_t lim = (SIZE_MAX / sizeof(pkl_value *)) / 2;
    if (extra <= cap - n) return 0;
    if (n > lim || extra > lim - n) {
        doc->fail = FAIL_BYTES;
        return FM_EFORMAT;
    }
    size_t want = n + extra, ncap = cap ? cap : 4;
    while (ncap < want) ncap *= 2;
    pkl_value **p = arena_grow(doc, seq->u.seq.items, n * sizeof *p, ncap * sizeof *p);
    if (p == NULL) return fail_code(doc);
    seq->u.seq.items = p;
    seq->u.seq.cap = ncap;
    return 0;
}

static int seq_extend(pkl_doc *doc, pkl_value *seq, pkl_value *const *items, size_t k)
{
    if (k == 0) return 0;
    FM_TRY(seq_reserve(doc, seq, k));
    memcpy(seq->u.seq.items + seq->u.seq.n, items, k * sizeof *items);
    seq->u.seq.n += k;
    return 0;
}

int pkl_seq_append(pkl_doc *doc, pkl_value *seq, pkl_value *item)
{
    if (doc == NULL || seq == NULL || item == NULL) return FM_EFORMAT;
    if (seq->type != PKL_LIST && seq->type != PKL_SET && seq->type != PKL_FROZENSET) return FM_EFORMAT;
    return seq_extend(doc, seq, &item, 1);
}

/* --- dict key index --- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Only str and int keys are looked up (see pkl_dict_set()). */
static bool key_hashable(const pkl_value *k) { return k->type == PKL_STR || k->type == PKL_INT; }

static uint64_t key_hash(const pkl_value *k, uint32_t dict_serial)
{
    uint64_t h;
    if (k->type == PKL_STR)
        h = fnv1a(k->u.str.s, k->u.str.len, 0xcbf29ce484222325ULL);
    else if (k->u.i.big)
        h = fnv1a(k->u.i.raw, k->u.i.rawlen, 0x84222325cbf29ce4ULL);
    else
        h = mix64((uint64_t)k->u.i.v + 0x9e3779b97f4a7c15ULL);
    return mix64(h ^ ((uint64_t)dict_serial * 0x9e3779b97f4a7c15ULL));
}

static bool key_equal(const pkl_value *a, const pkl_value *b)
{
    if (a->type != b->type) return false;
    if (a->type == PKL_STR) return a->u.str.len == b->u.str.len && memcmp(a->u.str.s, b->u.str.s, a->u.str.len) == 0;
    if (a->type != PKL_INT || a->u.i.big != b->u.i.big) return false;
    if (!a->u.i.big) return a->u.i.v == b->u.i.v;
    return a->u.i.rawlen == b->u.i.rawlen && memcmp(a->u.i.raw, b->u.i.raw, a->u.i.rawlen) == 0;
}

static void kx_place(kx_slot *slots, size_t cap, kx_slot s)
{
    size_t i = (size_t)s.hash & (cap - 1);
    while (slots[i].idx != UINT32_MAX) i = (i + 1) & (cap - 1);
    slots[i] = s;
}

/* Ensures one more entry fits at load factor <= 1/2. */
static int kx_reserve(pkl_doc *doc)
{
    if ((doc->kx_n + 1) * 2 <= doc->kx_cap) return 0;
    size_t ncap = doc->kx_cap ? doc->kx_cap * 2 : 64;
    if (ncap > SIZE_MAX / sizeof(kx_slot) || !charge_bytes(doc, (ncap - doc->kx_cap) * sizeof(kx_slot)))
        return FM_EFORMAT;
    kx_slot *ns = malloc(ncap * sizeof *ns);
    if (ns == NULL) {
        doc->fail = FAIL_OOM;
        return FM_ENOMEM;
    }
    for (size_t i = 0; i < ncap; i++) ns[i].idx = UINT32_MAX;
    for (size_t i = 0; i < doc->kx_cap; i++)
        if (doc->kx[i].idx != UINT32_MAX) kx_place(ns, ncap, doc->kx[i]);
    free(doc->kx);
    doc->kx = ns;
    doc->kx_cap = ncap;
    return 0;
}

/* Index of key k in dict d, or SIZE_MAX. */
static size_t kx_find(const pkl_doc *doc, const pkl_value *d, const pkl_value *k, uint64_t h)
{
    if (doc->kx_cap == 0) return SIZE_MAX;
    size_t i = (size_t)h & (doc->kx_cap - 1);
    for (; doc->kx[i].idx != UINT32_MAX; i = (i + 1) & (doc->kx_cap - 1)) {
        const kx_slot *s = &doc->kx[i];
        if (s->hash == h && s->dict == d->serial && s->idx < d->u.dict.n && key_equal(d->u.dict.keys[s->idx], k))
            return s->idx;
    }
    return SIZE_MAX;
}

static int dict_reserve(pkl_doc *doc, pkl_value *d)
{
    size_t n = d->u.dict.n, cap = d->u.dict.cap;
    if (n < cap) return 0;
    if (n >= UINT32_MAX - 1 || cap > (SIZE_MAX / sizeof(pkl_value *)) / 2) {
        doc->fail = FAIL_BYTES;
        return FM_EFORMAT;
    }
    size_t ncap = cap ? cap * 2 : 4;
    pkl_value **k = arena_grow(doc, d->u.dict.keys, n * sizeof *k, ncap * sizeof *k);
    if (k == NULL) return fail_code(doc);
    d->u.dict.keys = k;
    pkl_value **v = arena_grow(doc, d->u.dict.vals, n * sizeof *v, ncap * sizeof *v);
    if (v == NULL) return fail_code(doc);
    d->u.dict.vals = v;
    d->u.dict.cap = ncap;
    return 0;
}

int pkl_dict_set(pkl_doc *doc, pkl_value *dict, pkl_value *k, pkl_value *v)
{
    if (doc == NULL || dict == NULL || k == NULL || v == NULL || dict->type != PKL_DICT) return FM_EFORMAT;
    bool hashable = key_hashable(k);
    uint64_t h = 0;
    if (hashable) {
        h = key_hash(k, dict->serial);
        size_t at = kx_find(doc, dict, k, h);
        if (at != SIZE_MAX) {
            dict->u.dict.vals[at] = v;
            return 0;
        }
        FM_TRY(kx_reserve(doc));
    }
    FM_TRY(dict_reserve(doc, dict));
    size_t at = dict->u.dict.n++;
    dict->u.dict.keys[at] = k;
    dict->u.dict.vals[at] = v;
    if (hashable) {
        kx_slot s = {h, dict->serial, (uint32_t)at};
        kx_place(doc->kx, doc->kx_cap, s);
        doc->kx_n++;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The VM                                                              */
/* ------------------------------------------------------------------ */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_FLOAT = 'F', OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L',
    OP_BININT2 = 'M', OP_NONE = 'N', OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R',
    OP_STRING = 'S', OP_BINSTRING = 'T', OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V',
    OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd',
    OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h', OP_INST = 'i',
    OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't',
    OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84,
    OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89,
    OP_LONG1 = 0x8a, OP_LONG4 = 0x8b, OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e, OP_EMPTY_SET = 0x8f,
    OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92, OP_STACK_GLOBAL = 0x93,
    OP_MEMOIZE = 0x94, OP_FRAME = 0x95, OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97,
    OP_READONLY_BUFFER = 0x98
};

static const char *op_name(uint8_t op)
{
    switch (op) {
    case OP_MARK: return "MARK";
    case OP_STOP: return "STOP";
    case OP_POP: return "POP";
    case OP_POP_MARK: return "POP_MARK";
    case OP_DUP: return "DUP";
    case OP_FLOAT: return "FLOAT";
    case OP_INT: return "INT";
    case OP_BININT: return "BININT";
    case OP_BININT1: return "BININT1";
    case OP_LONG: return "LONG";
    case OP_BININT2: return "BININT2";
    case OP_NONE: return "NONE";
    case OP_PERSID: return "PERSID";
    case OP_BINPERSID: return "BINPERSID";
    case OP_REDUCE: return "REDUCE";
    case OP_STRING: return "STRING";
    case OP_BINSTRING: return "BINSTRING";
    case OP_SHORT_BINSTRING: return "SHORT_BINSTRING";
    case OP_UNICODE: return "UNICODE";
    case OP_BINUNICODE: return "BINUNICODE";
    case OP_APPEND: return "APPEND";
    case OP_BUILD: return "BUILD";
    case OP_GLOBAL: return "GLOBAL";
    case OP_DICT: return "DICT";
    case OP_EMPTY_DICT: return "EMPTY_DICT";
    case OP_APPENDS: return "APPENDS";
    case OP_GET: return "GET";
    case OP_BINGET: return "BINGET";
    case OP_INST: return "INST";
    case OP_LONG_BINGET: return "LONG_BINGET";
    case OP_LIST: return "LIST";
    case OP_EMPTY_LIST: return "EMPTY_LIST";
    case OP_OBJ: return "OBJ";
    case OP_PUT: return "PUT";
    case OP_BINPUT: return "BINPUT";
    case OP_LONG_BINPUT: return "LONG_BINPUT";
    case OP_SETITEM: return "SETITEM";
    case OP_TUPLE: return "TUPLE";
    case OP_EMPTY_TUPLE: return "EMPTY_TUPLE";
    case OP_SETITEMS: return "SETITEMS";
    case OP_BINFLOAT: return "BINFLOAT";
    case OP_PROTO: return "PROTO";
    case OP_NEWOBJ: return "NEWOBJ";
    case OP_EXT1: return "EXT1";
    case OP_EXT2: return "EXT2";
    case OP_EXT4: return "EXT4";
    case OP_TUPLE1: return "TUPLE1";
    case OP_TUPLE2: return "TUPLE2";
    case OP_TUPLE3: return "TUPLE3";
    case OP_NEWTRUE: return "NEWTRUE";
    case OP_NEWFALSE: return "NEWFALSE";
    case OP_LONG1: return "LONG1";
    case OP_LONG4: return "LONG4";
    case OP_BINBYTES: return "BINBYTES";
    case OP_SHORT_BINBYTES: return "SHORT_BINBYTES";
    case OP_SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case OP_BINUNICODE8: return "BINUNICODE8";
    case OP_BINBYTES8: return "BINBYTES8";
    case OP_EMPTY_SET: return "EMPTY_SET";
    case OP_ADDITEMS: return "ADDITEMS";
    case OP_FROZENSET: return "FROZENSET";
    case OP_NEWOBJ_EX: return "NEWOBJ_EX";
    case OP_STACK_GLOBAL: return "STACK_GLOBAL";
    case OP_MEMOIZE: return "MEMOIZE";
    case OP_FRAME: return "FRAME";
    case OP_BYTEARRAY8: return "BYTEARRAY8";
    case OP_NEXT_BUFFER: return "NEXT_BUFFER";
    case OP_READONLY_BUFFER: return "READONLY_BUFFER";
    default: return "?";
    }
}

typedef struct vm {
    pkl_doc *doc;
    const uint8_t *buf;
    size_t len, pos; /* pos: next unread byte */
    size_t off;      /* offset of the opcode being run */
    uint8_t op;
    pkl_limits lim;
    pkl_value **st; /* the value stack; marks are kept apart in mk */
    size_t sn, scap;
    size_t *mk; /* stack heights at each MARK */
    size_t mn, mcap;
    pkl_value **memo;
    size_t memo_cap, memo_n; /* memo_n: entries set (MEMOIZE uses it) */
    fm_err *e;
} vm;

static int vm_fail(vm *m, int code, const char *fmt, ...) FM_PRINTF(3, 4);

/* Fails with "<message> in <OPCODE> at byte <offset>". */
static int vm_fail(vm *m, int code, const char *fmt, ...)
{
    char msg[FM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fm_fail(m->e, code, "%s in %s at byte %zu", msg, op_name(m->op), m->off);
}

/* Turns a NULL from an allocating call into the error that caused it. */
static int alloc_fail(vm *m)
{
    switch (m->doc->fail) {
    case FAIL_NODES:
        return vm_fail(m, FM_EFORMAT, "pickle exceeds the limit of %zu values (max_nodes)", m->lim.max_nodes);
    case FAIL_BYTES:
        return vm_fail(m, FM_EFORMAT, "pickle exceeds the limit of %zu bytes of memory (max_bytes)",
                       m->lim.max_bytes);
    default: return vm_fail(m, FM_ENOMEM, "out of memory");
    }
}

/* ---- input ---- */

static size_t left(const vm *m) { return m->len - m->pos; }

static int need(vm *m, size_t n)
{
    if (left(m) < n) return vm_fail(m, FM_EFORMAT, "truncated pickle: argument needs %zu bytes, %zu left", n, left(m));
    return 0;
}

static uint64_t rd_le(vm *m, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) x |= (uint64_t)m->buf[m->pos + i] << (8 * i);
    m->pos += n;
    return x;
}

/* Reads an n-byte little-endian unsigned argument. */
static int arg_le(vm *m, size_t n, uint64_t *out)
{
    FM_TRY(need(m, n));
    *out = rd_le(m, n);
    return 0;
}

/* Takes `n` data bytes announced by a length field. */
static int take(vm *m, uint64_t n, const uint8_t **p)
{
    if (n > left(m))
        return vm_fail(m, FM_EFORMAT, "truncated pickle: length %llu exceeds the %zu bytes left",
                       (unsigned long long)n, left(m));
    *p = m->buf + m->pos;
    m->pos += (size_t)n;
    return 0;
}

/* A text argument: the bytes up to (not including) the next newline. */
static int readline(vm *m, const char **s, size_t *n)
{
    const uint8_t *start = m->buf + m->pos;
    const uint8_t *nl = memchr(start, '\n', left(m));
    if (nl == NULL) return vm_fail(m, FM_EFORMAT, "truncated pickle: no newline after the text argument");
    *s = (const char *)start;
    *n = (size_t)(nl - start);
    m->pos += *n + 1;
    return 0;
}

/* ---- stack ---- */

static size_t frame_base(const vm *m) { return m->mn ? m->mk[m->mn - 1] : 0; }

/* Doubles a VM work array; NULL (error set) on failure. */
static void *grow_array(vm *m, void *arr, size_t *cap, size_t elem)
{
    size_t ncap = *cap ? *cap * 2 : 64;
    void *p = ncap > SIZE_MAX / elem ? NULL : realloc(arr, ncap * elem);
    if (p == NULL) {
        vm_fail(m, FM_ENOMEM, "out of memory");
        return NULL;
    }
    *cap = ncap;
    return p;
}

static int check_stack_room(vm *m)
{
    if (m->sn + m->mn >= m->lim.max_stack)
        return vm_fail(m, FM_EFORMAT, "stack exceeds the limit of %zu entries (max_stack)", m->lim.max_stack);
    return 0;
}

static int push(vm *m, pkl_value *v)
{
    if (v == NULL) return alloc_fail(m);
    FM_TRY(check_stack_room(m));
    if (m->sn == m->scap) {
        pkl_value **p = grow_array(m, m->st, &m->scap, sizeof *m->st);
        if (p == NULL) return FM_ENOMEM;
        m->st = p;
    }
    m->st[m->sn++] = v;
    return 0;
}

static int push_mark(vm *m)
{
    FM_TRY(check_stack_room(m));
    if (m->mn == m->mcap) {
        size_t *p = grow_array(m, m->mk, &m->mcap, sizeof *m->mk);
        if (p == NULL) return FM_ENOMEM;
        m->mk = p;
    }
    m->mk[m->mn++] = m->sn;
    return 0;
}

static int underflow(vm *m) { return vm_fail(m, FM_EFORMAT, "stack underflow"); }

static int pop(vm *m, pkl_value **v)
{
    if (m->sn <= frame_base(m)) return underflow(m);
    *v = m->st[--m->sn];
    return 0;
}

static int top(vm *m, pkl_value **v)
{
    if (m->sn <= frame_base(m)) return underflow(m);
    *v = m->st[m->sn - 1];
    return 0;
}

/* Closes the newest frame: its items are st[*base .. m->sn); the caller
 * uses them and then sets m->sn = *base. */
static int pop_mark(vm *m, size_t *base)
{
    if (m->mn == 0) return vm_fail(m, FM_EFORMAT, "missing MARK");
    *base = m->mk[--m->mn];
    return 0;
}

/* ---- memo ---- */

static int memo_index_ok(vm *m, uint64_t i)
{
    /* picklers number memo entries 0, 1, 2, ... as they store values, so an
     * index past the values built so far is hostile: refusing it keeps a tiny
     * file from making the memo array huge */
    if (i > pkl_doc_node_count(m->doc) + 1)
        return vm_fail(m, FM_EFORMAT, "memo index %llu is beyond the %zu values built so far", (unsigned long long)i,
                       pkl_doc_node_count(m->doc));
    if (i >= m->lim.max_memo)
        return vm_fail(m, FM_EFORMAT, "memo index %llu exceeds the limit of %zu (max_memo)", (unsigned long long)i,
                       m->lim.max_memo);
    return 0;
}

static int memo_put(vm *m, uint64_t i)
{
    pkl_value *v;
    FM_TRY(top(m, &v));
    FM_TRY(memo_index_ok(m, i));
    if (i >= m->memo_cap) {
        size_t ncap = m->memo_cap ? m->memo_cap : 64;
        while (ncap <= i) ncap = ncap > SIZE_MAX / 2 ? SIZE_MAX : ncap * 2;
        if (ncap > m->lim.max_memo) ncap = m->lim.max_memo;
        if (ncap > SIZE_MAX / sizeof *m->memo) return vm_fail(m, FM_ENOMEM, "out of memory");
        pkl_value **p = realloc(m->memo, ncap * sizeof *p);
        if (p == NULL) return vm_fail(m, FM_ENOMEM, "out of memory");
        memset(p + m->memo_cap, 0, (ncap - m->memo_cap) * sizeof *p);
        m->memo = p;
        m->memo_cap = ncap;
    }
    if (m->memo[i] == NULL) m->memo_n++;
    m->memo[i] = v;
    return 0;
}

static int memo_get(vm *m, uint64_t i)
{
    if (i >= m->memo_cap || m->memo[i] == NULL)
        return vm_fail(m, FM_EFORMAT, "memo index %llu is not set", (unsigned long long)i);
    return push(m, m->memo[i]);
}

/* ---- text numbers ---- */

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static void trim(const char **s, size_t *n)
{
    while (*n && is_space(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_space((*s)[*n - 1])) (*n)--;
}

static int digit_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'z') return c - 'a' + 10;
    if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
    return 99;
}

#define PKL_MAX_INT_DIGITS 4300

/* Base and digits of an int(text, 0) literal (sign already removed). */
static bool int_literal_base(const char **s, size_t *n, int *base)
{
    *base = 10;
    if (*n >= 2 && (*s)[0] == '0') {
        char c = (*s)[1];
        int b = (c == 'x' || c == 'X') ? 16 : (c == 'o' || c == 'O') ? 8 : (c == 'b' || c == 'B') ? 2 : 0;
        if (b) {
            *base = b;
            *s += 2;
            *n -= 2;
            if (*n && **s == '_') { /* int('0x_1f', 0) is valid */
                (*s)++;
                (*n)--;
            }
            return *n > 0;
        }
    }
    return *n > 0;
}

/* Multiplies the little-endian magnitude mag[0..*len) by base, adds d. */
static void mag_muladd(uint8_t *mag, size_t *len, int base, int d)
{
    unsigned carry = (unsigned)d;
    for (size_t i = 0; i < *len; i++) {
        unsigned x = (unsigned)mag[i] * (unsigned)base + carry;
        mag[i] = (uint8_t)x;
        carry = x >> 8;
    }
    while (carry) {
        mag[(*len)++] = (uint8_t)carry;
        carry >>= 8;
    }
}

/* Parses the digits of an int literal into a two's complement value. */
static pkl_value *int_from_digits(vm *m, const char *s, size_t n, int base, bool neg, bool *bad)
{
    /* Each digit adds at most 4 bits; the +2 leaves room for the sign byte. */
    size_t cap = n / 2 + 2;
    uint8_t *mag = calloc(cap, 1);
    if (mag == NULL) {
        m->doc->fail = FAIL_OOM;
        return NULL;
    }
    size_t len = 0;
    bool prev_digit = false;
    for (size_t i = 0; i < n && !*bad; i++) {
        if (s[i] == '_' && prev_digit && i + 1 < n) {
            prev_digit = false;
            continue;
        }
        int d = digit_value(s[i]);
        if (d >= base) {
            *bad = true;
        } else {
            mag_muladd(mag, &len, base, d);
            prev_digit = true;
        }
    }
    /* int('010', 0) is an error: decimal literals may not have leading zeros. */
    if (!*bad && base == 10 && n > 1 && s[0] == '0' && len > 0) *bad = true;
    if (*bad) {
        free(mag);
        return NULL;
    }
    mag[len++] = 0; /* a zero sign byte keeps the magnitude positive */
    if (neg) {
        unsigned carry = 1;
        for (size_t i = 0; i < len; i++) {
            unsigned x = (uint8_t)~mag[i] + carry;
            mag[i] = (uint8_t)x;
            carry = x >> 8;
        }
    }
    pkl_value *v = pkl_new_bigint(m->doc, mag, len);
    free(mag);
    return v;
}

/* int(text, 0) as pickle.py uses it for INT and LONG. */
static int push_int_text(vm *m, const char *s, size_t n)
{
    trim(&s, &n);
    bool neg = false;
    if (n && (*s == '+' || *s == '-')) {
        neg = *s == '-';
        s++;
        n--;
    }
    int base;
    bool bad = !int_literal_base(&s, &n, &base) || s[0] == '_';
    if (!bad && n > PKL_MAX_INT_DIGITS)
        return vm_fail(m, FM_EUNSUPPORTED, "integer literal longer than %d digits", PKL_MAX_INT_DIGITS);
    pkl_value *v = bad ? NULL : int_from_digits(m, s, n, base, neg, &bad);
    if (bad) return vm_fail(m, FM_EFORMAT, "invalid integer literal");
    return push(m, v);
}

/* INT as CPython's C unpickler reads it: strtol(text, 0) when that
 * consumes the whole line (so "010" is octal 8), a two-character line worth
 * 0 or 1 is a bool ("00", "01", also "-0"), anything else int(text, 0). */
static int op_int(vm *m)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    char tmp[64];
    if (n > 0 && n < sizeof tmp && !memchr(s, '\0', n)) {
        memcpy(tmp, s, n);
        tmp[n] = '\0';
        char *end;
        errno = 0;
        long long x = strtoll(tmp, &end, 0);
        if (errno == 0 && end == tmp + n) {
            if (n == 2 && (x == 0 || x == 1)) return push(m, pkl_new_bool(m->doc, x == 1));
            return push(m, pkl_new_int(m->doc, (int64_t)x));
        }
    }
    return push_int_text(m, s, n);
}

static int op_long(vm *m)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    if (n && s[n - 1] == 'L') n--;
    return push_int_text(m, s, n);
}

/* FLOAT as PyOS_string_to_double(): no whitespace, no hex, overflow is an error. */
static int op_float(vm *m)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    char tmp[512];
    bool bad = n == 0 || n >= sizeof tmp || is_space(s[0]);
    for (size_t i = 0; i < n && !bad; i++) bad = s[i] == 'x' || s[i] == 'X' || s[i] == '\0';
    if (bad) return vm_fail(m, FM_EFORMAT, "invalid float literal");
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *end;
    errno = 0;
    double f = strtod(tmp, &end);
    if (end != tmp + n || (errno == ERANGE && isinf(f))) return vm_fail(m, FM_EFORMAT, "invalid float literal");
    return push(m, pkl_new_float(m->doc, f));
}

static int op_binfloat(vm *m)
{
    FM_TRY(need(m, 8));
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = (u << 8) | m->buf[m->pos++]; /* big-endian */
    double f;
    memcpy(&f, &u, sizeof f);
    return push(m, pkl_new_float(m->doc, f));
}

static int op_binint(vm *m, size_t width)
{
    uint64_t u;
    FM_TRY(arg_le(m, width, &u));
    int64_t x = (int64_t)u;
    if (width == 4) x = (int32_t)(uint32_t)u; /* BININT is signed */
    return push(m, pkl_new_int(m->doc, x));
}

static int op_long_bin(vm *m, size_t width)
{
    uint64_t n;
    FM_TRY(arg_le(m, width, &n));
    if (width == 4 && (n & 0x80000000u)) return vm_fail(m, FM_EFORMAT, "negative byte count");
    const uint8_t *p = NULL;
    FM_TRY(take(m, n, &p));
    return push(m, pkl_new_bigint(m->doc, p, (size_t)n));
}

/* ---- strings ---- */

static void put_utf8(fm_buf *b, uint32_t c)
{
    uint8_t u[4];
    size_t n = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    static const uint8_t lead[5] = {0, 0x00, 0xc0, 0xe0, 0xf0};
    for (size_t i = n - 1; i > 0; i--) {
        u[i] = (uint8_t)(0x80 | (c & 0x3f));
        c >>= 6;
    }
    u[0] = (uint8_t)(lead[n] | c);
    fm_buf_append(b, u, n);
}

static bool hex_run(const char *s, size_t n, uint32_t *out)
{
    uint32_t x = 0;
    for (size_t i = 0; i < n; i++) {
        int d = digit_value(s[i]);
        if (d >= 16) return false;
        x = x * 16 + (uint32_t)d;
    }
    *out = x;
    return true;
}

/* raw-unicode-escape: latin-1 text where \uXXXX and \UXXXXXXXX (after an odd
 * number of backslashes) are code points. Output is UTF-8. */
static bool decode_raw_unicode_escape(const char *s, size_t n, fm_buf *out)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = (uint8_t)s[i];
        if (c != '\\') {
            put_utf8(out, c);
            i++;
            continue;
        }
        size_t run = 0;
        while (i + run < n && s[i + run] == '\\') run++;
        char nx = i + run < n ? s[i + run] : 0;
        if (!(run & 1) || (nx != 'u' && nx != 'U')) {
            fm_buf_append(out, s + i, run);
            i += run;
            continue;
        }
        fm_buf_append(out, s + i, run - 1);
        i += run + 1;
        size_t w = nx == 'u' ? 4 : 8;
        uint32_t cp;
        if (n - i < w || !hex_run(s + i, w, &cp) || cp > 0x10ffff) return false;
        put_utf8(out, cp);
        i += w;
    }
    return true;
}

/* Python's bytes escapes (codecs.escape_decode) for the STRING opcode. */
static bool decode_escape(const char *s, size_t n, fm_buf *out)
{
    static const char simple_in[] = "\\'\"abfnrtv", simple_out[] = "\\'\"\a\b\f\n\r\t\v";
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') {
            fm_buf_putc(out, s[i]);
            continue;
        }
        if (++i == n) return false; /* trailing backslash */
        const char *hit = s[i] ? strchr(simple_in, s[i]) : NULL;
        uint32_t x;
        if (hit) fm_buf_putc(out, simple_out[hit - simple_in]);
        else if (s[i] == '\n') continue;
        else if (s[i] == 'x') {
            if (n - i < 3 || !hex_run(s + i + 1, 2, &x)) return false;
            fm_buf_putc(out, (char)x);
            i += 2;
        } else if (s[i] >= '0' && s[i] <= '7') {
            x = 0;
            size_t k = 0;
            while (k < 3 && i + k < n && s[i + k] >= '0' && s[i + k] <= '7') x = x * 8 + (uint32_t)(s[i + k++] - '0');
            fm_buf_putc(out, (char)(x & 0xff));
            i += k - 1;
        } else {
            fm_buf_putc(out, '\\');
            fm_buf_putc(out, s[i]);
        }
    }
    return true;
}

static int push_decoded(vm *m, bool ok, fm_buf *b)
{
    if (b->oom) {
        fm_buf_free(b);
        return vm_fail(m, FM_ENOMEM, "out of memory");
    }
    pkl_value *v = ok ? pkl_new_str(m->doc, (const char *)b->data, b->len) : NULL;
    fm_buf_free(b);
    if (!ok) return vm_fail(m, FM_EFORMAT, "invalid escape sequence in string");
    return push(m, v);
}

static int op_string(vm *m)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
        return vm_fail(m, FM_EFORMAT, "the STRING argument must be quoted");
    fm_buf b = {0};
    bool ok = decode_escape(s + 1, n - 2, &b);
    return push_decoded(m, ok, &b);
}

static int op_unicode(vm *m)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    fm_buf b = {0};
    bool ok = decode_raw_unicode_escape(s, n, &b);
    return push_decoded(m, ok, &b);
}

/* A length-prefixed str/bytes: the length field is `width` bytes. */
static int op_counted(vm *m, size_t width, pkl_type t, bool bytearray)
{
    uint64_t n;
    FM_TRY(arg_le(m, width, &n));
    if (m->op == OP_BINSTRING && (n & 0x80000000u)) return vm_fail(m, FM_EFORMAT, "negative byte count");
    const uint8_t *p = NULL;
    FM_TRY(take(m, n, &p));
    pkl_value *v = new_strlike(m->doc, t, p, (size_t)n);
    if (v) v->u.str.bytearray = bytearray;
    return push(m, v);
}

/* ---- containers ---- */

static int push_tuple_top(vm *m, size_t n)
{
    if (m->sn - frame_base(m) < n) return underflow(m);
    pkl_value *t = pkl_new_tuple(m->doc, n, m->st + m->sn - n);
    if (t == NULL) return alloc_fail(m);
    m->sn -= n;
    return push(m, t);
}

static int op_tuple_mark(vm *m)
{
    size_t base = 0;
    FM_TRY(pop_mark(m, &base));
    pkl_value *t = pkl_new_tuple(m->doc, m->sn - base, m->st + base);
    if (t == NULL) return alloc_fail(m);
    m->sn = base;
    return push(m, t);
}

/* LIST and FROZENSET: a new sequence of the items since MARK. */
static int op_seq_mark(vm *m, pkl_value *seq)
{
    size_t base = 0;
    if (seq == NULL) return alloc_fail(m);
    FM_TRY(pop_mark(m, &base));
    if (seq_extend(m->doc, seq, m->st + base, m->sn - base)) return alloc_fail(m);
    m->sn = base;
    return push(m, seq);
}

/* Where APPEND(S)/ADDITEMS put items: the list/set, or an object's listitems. */
static int append_target(vm *m, pkl_value *target, bool set_op, pkl_value **seq)
{
    if (target->type == PKL_OBJ) {
        if (target->u.obj.listitems == NULL) {
            target->u.obj.listitems = pkl_new_list(m->doc);
            if (target->u.obj.listitems == NULL) return alloc_fail(m);
        }
        *seq = target->u.obj.listitems;
        return 0;
    }
    if (target->type == (set_op ? PKL_SET : PKL_LIST)) {
        *seq = target;
        return 0;
    }
    return vm_fail(m, FM_EFORMAT, "cannot add items to a %s", pkl_type_name(target->type));
}

static int op_append(vm *m)
{
    pkl_value *item, *target, *seq;
    FM_TRY(pop(m, &item));
    FM_TRY(top(m, &target));
    FM_TRY(append_target(m, target, false, &seq));
    return seq_extend(m->doc, seq, &item, 1) ? alloc_fail(m) : 0;
}

/* APPENDS and ADDITEMS: the items since MARK go into the value below it. */
static int op_appends(vm *m, bool set_op)
{
    size_t base = 0;
    pkl_value *target, *seq;
    FM_TRY(pop_mark(m, &base));
    if (base <= frame_base(m)) return underflow(m);
    target = m->st[base - 1];
    FM_TRY(append_target(m, target, set_op, &seq));
    if (seq_extend(m->doc, seq, m->st + base, m->sn - base)) return alloc_fail(m);
    m->sn = base;
    return 0;
}

static int dict_target(vm *m, pkl_value *target, pkl_value **dict)
{
    if (target->type == PKL_DICT) {
        *dict = target;
        return 0;
    }
    if (target->type != PKL_OBJ) return vm_fail(m, FM_EFORMAT, "cannot set items on a %s", pkl_type_name(target->type));
    if (target->u.obj.dictitems == NULL) {
        target->u.obj.dictitems = pkl_new_dict(m->doc);
        if (target->u.obj.dictitems == NULL) return alloc_fail(m);
    }
    *dict = target->u.obj.dictitems;
    return 0;
}

static int set_pairs(vm *m, pkl_value *dict, pkl_value *const *kv, size_t n)
{
    if (n % 2) return vm_fail(m, FM_EFORMAT, "odd number of items (%zu) for key/value pairs", n);
    for (size_t i = 0; i < n; i += 2)
        if (pkl_dict_set(m->doc, dict, kv[i], kv[i + 1])) return alloc_fail(m);
    return 0;
}

static int op_setitem(vm *m)
{
    pkl_value *kv[2], *target, *dict;
    FM_TRY(pop(m, &kv[1]));
    FM_TRY(pop(m, &kv[0]));
    FM_TRY(top(m, &target));
    FM_TRY(dict_target(m, target, &dict));
    return set_pairs(m, dict, kv, 2);
}

static int op_setitems(vm *m)
{
    size_t base = 0;
    pkl_value *dict;
    FM_TRY(pop_mark(m, &base));
    if (base <= frame_base(m)) return underflow(m);
    FM_TRY(dict_target(m, m->st[base - 1], &dict));
    FM_TRY(set_pairs(m, dict, m->st + base, m->sn - base));
    m->sn = base;
    return 0;
}

static int op_dict_mark(vm *m)
{
    size_t base = 0;
    FM_TRY(pop_mark(m, &base));
    pkl_value *dict = pkl_new_dict(m->doc);
    if (dict == NULL) return alloc_fail(m);
    FM_TRY(set_pairs(m, dict, m->st + base, m->sn - base));
    m->sn = base;
    return push(m, dict);
}

/* ---- globals and objects ---- */

static int push_global(vm *m, const char *mod, size_t mlen, const char *name, size_t nlen)
{
    if (memchr(mod, '\0', mlen) || memchr(name, '\0', nlen))
        return vm_fail(m, FM_EFORMAT, "NUL byte in a module or class name");
    char *ms = arena_strndup(m->doc, mod, mlen);
    char *ns = ms ? arena_strndup(m->doc, name, nlen) : NULL;
    pkl_value *g = ns ? node_new(m->doc, PKL_GLOBAL) : NULL;
    if (g == NULL) return alloc_fail(m);
    g->u.global.module = ms;
    g->u.global.name = ns;
    return push(m, g);
}

static int read_global_lines(vm *m, const char **mod, size_t *ml, const char **name, size_t *nl)
{
    FM_TRY(readline(m, mod, ml));
    return readline(m, name, nl);
}

static int op_global(vm *m)
{
    const char *mod, *name;
    size_t ml, nl;
    FM_TRY(read_global_lines(m, &mod, &ml, &name, &nl));
    return push_global(m, mod, ml, name, nl);
}

static int op_stack_global(vm *m)
{
    pkl_value *mod, *name;
    FM_TRY(pop(m, &name));
    FM_TRY(pop(m, &mod));
    if (mod->type != PKL_STR || name->type != PKL_STR)
        return vm_fail(m, FM_EFORMAT, "module and name must be str, not %s and %s", pkl_type_name(mod->type),
                       pkl_type_name(name->type));
    return push_global(m, mod->u.str.s, mod->u.str.len, name->u.str.s, name->u.str.len);
}

static int push_obj(vm *m, pkl_obj_kind kind, pkl_value *callable, pkl_value *args, pkl_value *kwargs)
{
    pkl_value *o = pkl_new_obj(m->doc, kind, callable, args);
    if (o == NULL) return alloc_fail(m);
    o->u.obj.kwargs = kwargs;
    return push(m, o);
}

static int op_reduce(vm *m)
{
    pkl_value *args, *callable;
    FM_TRY(pop(m, &args));
    FM_TRY(pop(m, &callable));
    return push_obj(m, PKL_REDUCE, callable, args, NULL);
}

static int op_newobj(vm *m, bool ex)
{
    pkl_value *kwargs = NULL, *args, *cls;
    if (ex) FM_TRY(pop(m, &kwargs));
    FM_TRY(pop(m, &args));
    FM_TRY(pop(m, &cls));
    return push_obj(m, ex ? PKL_NEWOBJ_EX : PKL_NEWOBJ, cls, args, kwargs);
}

/* INST/OBJ: pickle.py's _instantiate() calls klass(*args), or klass.__new__
 * when there are no arguments. The args are st[first .. sn); the stack is
 * then cut back to `base`. */
static int push_instance(vm *m, pkl_value *cls, size_t first, size_t base)
{
    size_t n = m->sn - first;
    pkl_value *args = pkl_new_tuple(m->doc, n, m->st + first);
    if (args == NULL) return alloc_fail(m);
    m->sn = base;
    return push_obj(m, n ? PKL_REDUCE : PKL_NEWOBJ, cls, args, NULL);
}

static int op_inst(vm *m)
{
    const char *mod, *name;
    size_t ml, nl, base = 0;
    FM_TRY(read_global_lines(m, &mod, &ml, &name, &nl));
    FM_TRY(push_global(m, mod, ml, name, nl));
    pkl_value *cls = m->st[--m->sn];
    FM_TRY(pop_mark(m, &base));
    return push_instance(m, cls, base, base);
}

static int op_obj(vm *m)
{
    size_t base = 0;
    FM_TRY(pop_mark(m, &base));
    if (m->sn == base) return vm_fail(m, FM_EFORMAT, "no class after MARK");
    return push_instance(m, m->st[base], base + 1, base);
}

/* A second dict state is merged into a copy of the first (__dict__.update). */
static int merge_states(vm *m, pkl_value *old, pkl_value *add, pkl_value **out)
{
    pkl_value *d = pkl_new_dict(m->doc);
    if (d == NULL) return alloc_fail(m);
    for (size_t i = 0; i < old->u.dict.n; i++)
        if (pkl_dict_set(m->doc, d, old->u.dict.keys[i], old->u.dict.vals[i])) return alloc_fail(m);
    for (size_t i = 0; i < add->u.dict.n; i++)
        if (pkl_dict_set(m->doc, d, add->u.dict.keys[i], add->u.dict.vals[i])) return alloc_fail(m);
    *out = d;
    return 0;
}

static int op_build(vm *m)
{
    pkl_value *state, *obj;
    FM_TRY(pop(m, &state));
    FM_TRY(top(m, &obj));
    if (obj->type != PKL_OBJ) return vm_fail(m, FM_EFORMAT, "cannot set the state of a %s", pkl_type_name(obj->type));
    pkl_value *old = obj->u.obj.state;
    if (old && old->type == PKL_DICT && state->type == PKL_DICT) FM_TRY(merge_states(m, old, state, &state));
    obj->u.obj.state = state;
    return 0;
}

static int op_persid(vm *m)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    pkl_value *pid = pkl_new_str(m->doc, s, n);
    if (pid == NULL) return alloc_fail(m);
    return push(m, pkl_new_persid(m->doc, pid));
}

static int op_binpersid(vm *m)
{
    pkl_value *pid;
    FM_TRY(pop(m, &pid));
    return push(m, pkl_new_persid(m->doc, pid));
}

/* ---- control ---- */

static int op_proto(vm *m)
{
    uint64_t p;
    FM_TRY(arg_le(m, 1, &p));
    if (p > 5) return vm_fail(m, FM_EUNSUPPORTED, "unsupported pickle protocol %u", (unsigned)p);
    return 0;
}

/* Frames only group opcodes for buffered readers: check the length, go on. */
static int op_frame(vm *m)
{
    uint64_t n;
    FM_TRY(arg_le(m, 8, &n));
    if (n > left(m))
        return vm_fail(m, FM_EFORMAT, "truncated pickle: frame length %llu exceeds the %zu bytes left",
                       (unsigned long long)n, left(m));
    return 0;
}

static int op_pop(vm *m)
{
    if (m->sn > frame_base(m)) {
        m->sn--;
        return 0;
    }
    if (m->mn == 0) return underflow(m);
    m->mn--; /* pickle.py: POP on an empty frame discards the mark */
    return 0;
}

static int op_pop_mark(vm *m)
{
    size_t base = 0;
    FM_TRY(pop_mark(m, &base));
    m->sn = base;
    return 0;
}

static int op_dup(vm *m)
{
    pkl_value *v;
    FM_TRY(top(m, &v));
    return push(m, v);
}

/* PUT/GET: a decimal index on its own line. */
static int text_index(vm *m, uint64_t *i)
{
    const char *s;
    size_t n;
    FM_TRY(readline(m, &s, &n));
    trim(&s, &n);
    if (n && *s == '+') {
        s++;
        n--;
    }
    uint64_t x = 0;
    if (n == 0) return vm_fail(m, FM_EFORMAT, "invalid memo index");
    for (size_t k = 0; k < n; k++) {
        if (s[k] < '0' || s[k] > '9') return vm_fail(m, FM_EFORMAT, "invalid memo index");
        if (x > (UINT64_MAX - 9) / 10) return vm_fail(m, FM_EFORMAT, "memo index too large");
        x = x * 10 + (uint64_t)(s[k] - '0');
    }
    *i = x;
    return 0;
}

static int op_memo(vm *m, bool put, int width)
{
    uint64_t i = 0;
    if (width == 0) FM_TRY(text_index(m, &i));
    else FM_TRY(arg_le(m, (size_t)width, &i));
    return put ? memo_put(m, i) : memo_get(m, i);
}

static int op_unsupported(vm *m)
{
    const char *why = (m->op == OP_EXT1 || m->op == OP_EXT2 || m->op == OP_EXT4) ? "the copyreg extension registry"
                                                                                : "out-of-band buffers";
    return fm_fail(m->e, FM_EUNSUPPORTED, "%s at byte %zu is not supported (%s)", op_name(m->op), m->off, why);
}

static int step_scalar(vm *m, bool *done)
{
    *done = true;
    switch (m->op) {
    case OP_NONE: return push(m, pkl_new_none(m->doc));
    case OP_NEWTRUE: return push(m, pkl_new_bool(m->doc, true));
    case OP_NEWFALSE: return push(m, pkl_new_bool(m->doc, false));
    case OP_INT: return op_int(m);
    case OP_BININT: return op_binint(m, 4);
    case OP_BININT1: return op_binint(m, 1);
    case OP_BININT2: return op_binint(m, 2);
    case OP_LONG: return op_long(m);
    case OP_LONG1: return op_long_bin(m, 1);
    case OP_LONG4: return op_long_bin(m, 4);
    case OP_FLOAT: return op_float(m);
    case OP_BINFLOAT: return op_binfloat(m);
    case OP_STRING: return op_string(m);
    case OP_BINSTRING: return op_counted(m, 4, PKL_STR, false);
    case OP_SHORT_BINSTRING: return op_counted(m, 1, PKL_STR, false);
    case OP_UNICODE: return op_unicode(m);
    case OP_BINUNICODE: return op_counted(m, 4, PKL_STR, false);
    case OP_SHORT_BINUNICODE: return op_counted(m, 1, PKL_STR, false);
    case OP_BINUNICODE8: return op_counted(m, 8, PKL_STR, false);
    case OP_BINBYTES: return op_counted(m, 4, PKL_BYTES, false);
    case OP_SHORT_BINBYTES: return op_counted(m, 1, PKL_BYTES, false);
    case OP_BINBYTES8: return op_counted(m, 8, PKL_BYTES, false);
    case OP_BYTEARRAY8: return op_counted(m, 8, PKL_BYTES, true);
    default: *done = false; return 0;
    }
}

static int step_container(vm *m, bool *done)
{
    *done = true;
    switch (m->op) {
    case OP_EMPTY_LIST: return push(m, pkl_new_list(m->doc));
    case OP_LIST: return op_seq_mark(m, pkl_new_list(m->doc));
    case OP_APPEND: return op_append(m);
    case OP_APPENDS: return op_appends(m, false);
    case OP_EMPTY_TUPLE: return push(m, pkl_new_tuple(m->doc, 0, NULL));
    case OP_TUPLE: return op_tuple_mark(m);
    case OP_TUPLE1: return push_tuple_top(m, 1);
    case OP_TUPLE2: return push_tuple_top(m, 2);
    case OP_TUPLE3: return push_tuple_top(m, 3);
    case OP_EMPTY_DICT: return push(m, pkl_new_dict(m->doc));
    case OP_DICT: return op_dict_mark(m);
    case OP_SETITEM: return op_setitem(m);
    case OP_SETITEMS: return op_setitems(m);
    case OP_EMPTY_SET: return push(m, pkl_new_set(m->doc, false));
    case OP_ADDITEMS: return op_appends(m, true);
    case OP_FROZENSET: return op_seq_mark(m, pkl_new_set(m->doc, true));
    default: *done = false; return 0;
    }
}

static int step_object(vm *m, bool *done)
{
    *done = true;
    switch (m->op) {
    case OP_GLOBAL: return op_global(m);
    case OP_STACK_GLOBAL: return op_stack_global(m);
    case OP_INST: return op_inst(m);
    case OP_OBJ: return op_obj(m);
    case OP_REDUCE: return op_reduce(m);
    case OP_NEWOBJ: return op_newobj(m, false);
    case OP_NEWOBJ_EX: return op_newobj(m, true);
    case OP_BUILD: return op_build(m);
    case OP_PERSID: return op_persid(m);
    case OP_BINPERSID: return op_binpersid(m);
    default: *done = false; return 0;
    }
}

static int step_control(vm *m)
{
    switch (m->op) {
    case OP_PROTO: return op_proto(m);
    case OP_FRAME: return op_frame(m);
    case OP_MARK: return push_mark(m);
    case OP_POP: return op_pop(m);
    case OP_POP_MARK: return op_pop_mark(m);
    case OP_DUP: return op_dup(m);
    case OP_PUT: return op_memo(m, true, 0);
    case OP_BINPUT: return op_memo(m, true, 1);
    case OP_LONG_BINPUT: return op_memo(m, true, 4);
    case OP_MEMOIZE: return memo_put(m, m->memo_n);
    case OP_GET: return op_memo(m, false, 0);
    case OP_BINGET: return op_memo(m, false, 1);
    case OP_LONG_BINGET: return op_memo(m, false, 4);
    case OP_EXT1:
    case OP_EXT2:
    case OP_EXT4:
    case OP_NEXT_BUFFER:
    case OP_READONLY_BUFFER: return op_unsupported(m);
    default: return fm_fail(m->e, FM_EFORMAT, "unknown opcode 0x%02x at byte %zu", m->op, m->off);
    }
}

static int vm_step(vm *m)
{
    bool done;
    int rc = step_scalar(m, &done);
    if (!done) rc = step_container(m, &done);
    if (!done) rc = step_object(m, &done);
    if (!done) rc = step_control(m);
    return rc;
}

static int op_stop(vm *m, pkl_value **root)
{
    if (m->mn) return vm_fail(m, FM_EFORMAT, "%zu MARK(s) left open", m->mn);
    if (m->sn != 1) return vm_fail(m, FM_EFORMAT, "%zu values on the stack (expected 1)", m->sn);
    *root = m->st[0];
    return 0;
}

static int vm_run(vm *m, pkl_value **root)
{
    for (;;) {
        if (m->pos >= m->len)
            return fm_fail(m->e, FM_EFORMAT, "truncated pickle: input ended at byte %zu without STOP", m->len);
        m->off = m->pos;
        m->op = m->buf[m->pos++];
        if (m->op == OP_STOP) return op_stop(m, root);
        FM_TRY(vm_step(m));
    }
}

int pkl_load(pkl_doc *doc, const uint8_t *buf, size_t len, const pkl_limits *lim, pkl_value **root, fm_err *e)
{
    if (root) *root = NULL;
    if (doc == NULL || root == NULL || (buf == NULL && len > 0))
        return fm_fail(e, FM_EINTERNAL, "pkl_load: invalid arguments");
    vm m;
    memset(&m, 0, sizeof m);
    m.doc = doc;
    m.buf = buf;
    m.len = len;
    m.lim = lim ? *lim : pkl_default_limits();
    m.e = e;
    pkl_limits saved = doc->lim;
    doc->lim = m.lim;
    doc->fail = FAIL_NONE;
    /* never NULL, so that `m.st + base` is defined even for an empty stack */
    m.st = grow_array(&m, NULL, &m.scap, sizeof *m.st);
    int rc = m.st ? vm_run(&m, root) : FM_ENOMEM;
    doc->lim = saved;
    free(m.st);
    free(m.mk);
    free(m.memo);
    if (rc) *root = NULL;
    return rc;
}

/* ------------------------------------------------------------------ */
/* Queries                                                             */
/* ------------------------------------------------------------------ */

static bool module_matches(const char *have, const char *want)
{
    size_t wl = strlen(want);
    if (wl && want[wl - 1] == '*') return strncmp(have, want, wl - 1) == 0;
    if (strcmp(have, want) == 0) return true;
    bool hb = strcmp(have, "builtins") == 0 || strcmp(have, "__builtin__") == 0;
    bool wb = strcmp(want, "builtins") == 0 || strcmp(want, "__builtin__") == 0;
    return hb && wb;
}

bool pkl_is_global(const pkl_value *v, const char *module, const char *name)
{
    if (v == NULL || v->type != PKL_GLOBAL) return false;
    if (name && strcmp(v->u.global.name, name) != 0) return false;
    return module == NULL || module_matches(v->u.global.module, module);
}

bool pkl_obj_is(const pkl_value *v, const char *module, const char *name)
{
    return v && v->type == PKL_OBJ && pkl_is_global(v->u.obj.callable, module, name);
}

/* A nested class written as getattr(Outer, 'Inner') at protocol < 4. */
static bool nested_class(const pkl_value *c, const pkl_value **outer, const char **inner)
{
    size_t n;
    pkl_value *const *a = pkl_args(c, &n);
    if (!pkl_obj_is(c, "builtins", "getattr") || n != 2 || a[1]->type != PKL_STR) return false;
    *outer = a[0];
    *inner = a[1]->u.str.s;
    return true;
}

const char *pkl_obj_class_name(const pkl_value *v, char *buf, size_t len)
{
    if (buf == NULL || len == 0) return "";
    const pkl_value *c = (v && v->type == PKL_OBJ) ? v->u.obj.callable : v;
    const pkl_value *outer;
    const char *inner;
    if (c && c->type == PKL_GLOBAL)
        snprintf(buf, len, "%s.%s", c->u.global.module, c->u.global.name);
    else if (c && nested_class(c, &outer, &inner) && outer->type == PKL_GLOBAL)
        snprintf(buf, len, "%s.%s.%s", outer->u.global.module, outer->u.global.name, inner);
    else
        snprintf(buf, len, "<%s>", c ? pkl_type_name(c->type) : "null");
    return buf;
}

const pkl_value *pkl_as_dict(const pkl_value *v)
{
    if (v == NULL) return NULL;
    if (v->type == PKL_DICT) return v;
    if (v->type == PKL_OBJ) return v->u.obj.dictitems;
    return NULL;
}

pkl_value *pkl_dict_get(const pkl_value *dict, const char *key)
{
    const pkl_value *d = pkl_as_dict(dict);
    if (d == NULL || key == NULL) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < d->u.dict.n; i++) {
        const pkl_value *k = d->u.dict.keys[i];
        if (k->type == PKL_STR && k->u.str.len == kl && memcmp(k->u.str.s, key, kl) == 0) return d->u.dict.vals[i];
    }
    return NULL;
}

pkl_value *pkl_attr(const pkl_value *obj, const char *name)
{
    if (obj == NULL || obj->type != PKL_OBJ || obj->u.obj.state == NULL) return NULL;
    const pkl_value *st = obj->u.obj.state;
    if (st->type == PKL_DICT) return pkl_dict_get(st, name);
    if (st->type != PKL_TUPLE || st->u.seq.n != 2) return NULL;
    pkl_value *v = pkl_dict_get(st->u.seq.items[0], name);
    return v ? v : pkl_dict_get(st->u.seq.items[1], name);
}

pkl_value *const *pkl_items(const pkl_value *seq, size_t *n)
{
    if (n) *n = 0;
    if (seq == NULL) return NULL;
    switch (seq->type) {
    case PKL_LIST:
    case PKL_TUPLE:
    case PKL_SET:
    case PKL_FROZENSET:
        if (n) *n = seq->u.seq.n;
        return seq->u.seq.items;
    default: return NULL;
    }
}

pkl_value *const *pkl_args(const pkl_value *obj, size_t *n)
{
    if (n) *n = 0;
    if (obj == NULL || obj->type != PKL_OBJ) return NULL;
    return pkl_items(obj->u.obj.args, n);
}

bool pkl_get_int(const pkl_value *v, int64_t *out)
{
    if (v == NULL) return false;
    if (v->type == PKL_BOOL) {
        if (out) *out = v->u.b;
        return true;
    }
    if (v->type != PKL_INT || v->u.i.big) return false;
    if (out) *out = v->u.i.v;
    return true;
}

bool pkl_get_bool(const pkl_value *v, bool *out)
{
    if (v == NULL) return false;
    if (v->type == PKL_BOOL) {
        if (out) *out = v->u.b;
        return true;
    }
    if (v->type != PKL_INT || v->u.i.big || (v->u.i.v != 0 && v->u.i.v != 1)) return false;
    if (out) *out = v->u.i.v == 1;
    return true;
}

bool pkl_get_float(const pkl_value *v, double *out)
{
    if (v == NULL) return false;
    if (v->type == PKL_FLOAT) {
        if (out) *out = v->u.f;
        return true;
    }
    if (v->type != PKL_INT || v->u.i.big) return false;
    if (out) *out = (double)v->u.i.v;
    return true;
}

const char *pkl_get_str(const pkl_value *v) { return v && v->type == PKL_STR ? v->u.str.s : NULL; }

int pkl_get_int_seq(const pkl_value *v, int64_t *out, int max)
{
    if (v && pkl_obj_is(v, "torch", "Size")) {
        size_t na;
        pkl_value *const *a = pkl_args(v, &na);
        if (na != 1) return -1;
        v = a[0];
    }
    if (v == NULL || (v->type != PKL_LIST && v->type != PKL_TUPLE)) return -1;
    size_t n = v->u.seq.n;
    if (max < 0 || n > (size_t)max) return -1;
    for (size_t i = 0; i < n; i++) {
        int64_t x;
        if (!pkl_get_int(v->u.seq.items[i], &x)) return -1;
        if (out) out[i] = x;
    }
    return (int)n;
}

const char *pkl_type_name(pkl_type t)
{
    switch (t) {
    case PKL_NONE: return "None";
    case PKL_BOOL: return "bool";
    case PKL_INT: return "int";
    case PKL_FLOAT: return "float";
    case PKL_STR: return "str";
    case PKL_BYTES: return "bytes";
    case PKL_LIST: return "list";
    case PKL_TUPLE: return "tuple";
    case PKL_SET: return "set";
    case PKL_FROZENSET: return "frozenset";
    case PKL_DICT: return "dict";
    case PKL_GLOBAL: return "global";
    case PKL_OBJ: return "object";
    case PKL_PERSID: return "persid";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------------ */
/* repr                                                                */
/* ------------------------------------------------------------------ */

#define REPR_MAX_DEPTH 200
#define REPR_MAX_BYTES ((size_t)1 << 20)

typedef struct repr_ctx {
    fm_buf *out;
    size_t start; /* out->len when pkl_repr() began */
    bool cut;     /* the output budget is spent */
    int max_depth;
    size_t max_items;
    uint32_t path[REPR_MAX_DEPTH + 1]; /* serials being printed */
    int depth;
} repr_ctx;

static void repr_value(repr_ctx *c, const pkl_value *v);

/* Python's repr of a float: the shortest text that reads back exactly. */
static void repr_float(fm_buf *out, double f)
{
    if (isnan(f)) {
        fm_buf_puts(out, "nan");
        return;
    }
    if (isinf(f)) {
        fm_buf_puts(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, f);
        if (strtod(tmp, NULL) == f) break;
    }
    fm_buf_puts(out, tmp);
    if (!strpbrk(tmp, ".en")) fm_buf_puts(out, ".0");
}

/* Decimal text of a little-endian two's complement integer. */
static void repr_bigint(fm_buf *out, const uint8_t *raw, size_t n);

void pkl_int_text(fm_buf *out, const pkl_value *v)
{
    if (v == NULL || v->type != PKL_INT) return;
    if (v->u.i.big) repr_bigint(out, v->u.i.raw, v->u.i.rawlen);
    else fm_buf_printf(out, "%lld", (long long)v->u.i.v);
}

static void repr_bigint(fm_buf *out, const uint8_t *raw, size_t n)
{
    if (n > 512) {
        fm_buf_printf(out, "<int of %zu bytes>", n);
        return;
    }
    uint8_t mag[512];
    bool neg = raw[n - 1] & 0x80;
    unsigned carry = 1;
    for (size_t i = 0; i < n; i++) {
        unsigned x = neg ? (uint8_t)~raw[i] + carry : raw[i];
        mag[i] = (uint8_t)x;
        carry = x >> 8;
    }
    char digits[1300];
    size_t nd = 0, len = n;
    while (len) { /* divide by 10 until zero, collecting remainders */
        unsigned rem = 0;
        for (size_t i = len; i-- > 0;) {
            unsigned cur = (rem << 8) | mag[i];
            mag[i] = (uint8_t)(cur / 10);
            rem = cur % 10;
        }
        digits[nd++] = (char)('0' + rem);
        while (len && mag[len - 1] == 0) len--;
    }
    if (neg) fm_buf_putc(out, '-');
    if (nd == 0) fm_buf_putc(out, '0');
    while (nd) fm_buf_putc(out, digits[--nd]);
}

static void repr_text(fm_buf *out, const char *s, size_t n, bool bytes)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    fm_buf_putc(out, q);
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = (uint8_t)s[i];
        if (ch == (uint8_t)q || ch == '\\') fm_buf_printf(out, "\\%c", ch);
        else if (ch == '\n') fm_buf_puts(out, "\\n");
        else if (ch == '\r') fm_buf_puts(out, "\\r");
        else if (ch == '\t') fm_buf_puts(out, "\\t");
        else if (ch < 0x20 || ch == 0x7f || (bytes && ch >= 0x80)) fm_buf_printf(out, "\\x%02x", ch);
        else if (!bytes && ch == 0xc2 && i + 1 < n && ((uint8_t)s[i + 1] < 0xa1 || (uint8_t)s[i + 1] == 0xad))
            fm_buf_printf(out, "\\x%02x", (uint8_t)s[++i]); /* U+0080..U+00A0, U+00AD: not printable */
        else fm_buf_putc(out, (char)ch);
    }
    fm_buf_putc(out, q);
}

/* Items of a sequence, separated by ", ", cut after max_items. */
static void repr_items(repr_ctx *c, pkl_value *const *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i) fm_buf_puts(c->out, ", ");
        if (i >= c->max_items) {
            fm_buf_puts(c->out, "...");
            return;
        }
        repr_value(c, items[i]);
    }
}

static void repr_dict_body(repr_ctx *c, const pkl_value *d)
{
    fm_buf_putc(c->out, '{');
    for (size_t i = 0; i < d->u.dict.n; i++) {
        if (i) fm_buf_puts(c->out, ", ");
        if (i >= c->max_items) {
            fm_buf_puts(c->out, "...");
            break;
        }
        repr_value(c, d->u.dict.keys[i]);
        fm_buf_puts(c->out, ": ");
        repr_value(c, d->u.dict.vals[i]);
    }
    fm_buf_putc(c->out, '}');
}

static void repr_seq(repr_ctx *c, const pkl_value *v)
{
    size_t n = v->u.seq.n;
    switch (v->type) {
    case PKL_LIST:
        fm_buf_putc(c->out, '[');
        repr_items(c, v->u.seq.items, n);
        fm_buf_putc(c->out, ']');
        break;
    case PKL_TUPLE:
        fm_buf_putc(c->out, '(');
        repr_items(c, v->u.seq.items, n);
        fm_buf_puts(c->out, n == 1 ? ",)" : ")");
        break;
    default: /* sets */
        if (v->type == PKL_FROZENSET) fm_buf_puts(c->out, "frozenset(");
        else if (n == 0) fm_buf_puts(c->out, "set(");
        if (n) fm_buf_putc(c->out, '{');
        repr_items(c, v->u.seq.items, n);
        if (n) fm_buf_putc(c->out, '}');
        if (v->type == PKL_FROZENSET || n == 0) fm_buf_putc(c->out, ')');
    }
}

static void repr_sep(repr_ctx *c, bool *first)
{
    if (!*first) fm_buf_puts(c->out, ", ");
    *first = false;
}

static void repr_obj(repr_ctx *c, const pkl_value *v)
{
    const pkl_value *callable = v->u.obj.callable, *args = v->u.obj.args, *kw = v->u.obj.kwargs;
    bool first = true;
    repr_value(c, callable);
    fm_buf_putc(c->out, '(');
    if (args && (args->type == PKL_TUPLE || args->type == PKL_LIST) && args->u.seq.n) {
        repr_items(c, args->u.seq.items, args->u.seq.n);
        first = false;
    } else if (args && args->type != PKL_TUPLE && args->type != PKL_LIST) {
        fm_buf_putc(c->out, '*');
        repr_value(c, args);
        first = false;
    }
    for (size_t i = 0; kw && kw->type == PKL_DICT && i < kw->u.dict.n && i < c->max_items; i++) {
        repr_sep(c, &first);
        const pkl_value *k = kw->u.dict.keys[i];
        if (k->type == PKL_STR) fm_buf_append(c->out, k->u.str.s, k->u.str.len);
        else repr_value(c, k);
        fm_buf_putc(c->out, '=');
        repr_value(c, kw->u.dict.vals[i]);
    }
    const pkl_value *more[2] = {v->u.obj.dictitems, v->u.obj.listitems};
    for (int i = 0; i < 2; i++) {
        if (more[i] == NULL) continue;
        repr_sep(c, &first);
        repr_value(c, more[i]);
    }
    if (v->u.obj.state) {
        repr_sep(c, &first);
        fm_buf_puts(c->out, "__state__=");
        repr_value(c, v->u.obj.state);
    }
    fm_buf_putc(c->out, ')');
}

static void repr_scalar(fm_buf *out, const pkl_value *v)
{
    switch (v->type) {
    case PKL_NONE: fm_buf_puts(out, "None"); break;
    case PKL_BOOL: fm_buf_puts(out, v->u.b ? "True" : "False"); break;
    case PKL_INT:
        if (v->u.i.big) repr_bigint(out, v->u.i.raw, v->u.i.rawlen);
        else fm_buf_printf(out, "%lld", (long long)v->u.i.v);
        break;
    case PKL_FLOAT: repr_float(out, v->u.f); break;
    case PKL_STR: repr_text(out, v->u.str.s, v->u.str.len, false); break;
    case PKL_BYTES:
        fm_buf_puts(out, v->u.str.bytearray ? "bytearray(b" : "b");
        repr_text(out, v->u.str.s, v->u.str.len, true);
        if (v->u.str.bytearray) fm_buf_putc(out, ')');
        break;
    case PKL_GLOBAL: fm_buf_printf(out, "%s.%s", v->u.global.module, v->u.global.name); break;
    default: break;
    }
}

static bool on_path(const repr_ctx *c, uint32_t serial)
{
    for (int i = 0; i < c->depth; i++)
        if (c->path[i] == serial) return true;
    return false;
}

static void repr_value(repr_ctx *c, const pkl_value *v)
{
    if (c->cut) return;
    if (c->out->len - c->start >= REPR_MAX_BYTES) { /* shared subtrees can multiply the text */
        fm_buf_puts(c->out, "...");
        c->cut = true;
        return;
    }
    if (v == NULL) {
        fm_buf_puts(c->out, "<null>");
        return;
    }
    bool container = v->type >= PKL_LIST && v->type != PKL_GLOBAL;
    if (!container) {
        repr_scalar(c->out, v);
        return;
    }
    if (on_path(c, v->serial)) {
        fm_buf_puts(c->out, "<...>");
        return;
    }
    if (c->depth >= c->max_depth) {
        fm_buf_puts(c->out, "...");
        return;
    }
    c->path[c->depth++] = v->serial;
    if (v->type == PKL_DICT) repr_dict_body(c, v);
    else if (v->type == PKL_OBJ) repr_obj(c, v);
    else if (v->type == PKL_PERSID) {
        fm_buf_puts(c->out, "persid(");
        repr_value(c, v->u.persid.pid);
        fm_buf_putc(c->out, ')');
    } else repr_seq(c, v);
    c->depth--;
}

void pkl_repr(fm_buf *out, const pkl_value *v, int max_depth, size_t max_items)
{
    if (out == NULL) return;
    repr_ctx c;
    c.out = out;
    c.start = out->len;
    c.cut = false;
    c.max_depth = max_depth < 0 ? 0 : max_depth > REPR_MAX_DEPTH ? REPR_MAX_DEPTH : max_depth;
    c.max_items = max_items;
    c.depth = 0;
    repr_value(&c, v);
    fm_buf_terminate(out);
}
