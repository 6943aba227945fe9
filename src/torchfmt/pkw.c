/* pkw.c - writes a pkl_value tree as a protocol-2 pickle (see pkw.h).
 *
 * The writer mirrors CPython's C pickler (Modules/_pickle.c) at protocol 2,
 * so that a tree read from torch.save output is written back byte for byte
 * in the common cases:
 *
 * - str, list, dict, non-empty tuple, object, set and bytes values are
 *   memoized (BINPUT/LONG_BINPUT, indices counted from 0) when first written
 *   and referenced with BINGET/LONG_BINGET afterwards. A GLOBAL is memoized
 *   under its "module name" (CPython memoizes the class object), so equal
 *   globals share one entry. Temporaries that CPython memoizes (the list of a
 *   set, the arguments of `_codecs.encode`, ...) take memo indices too.
 * - A PERSID is not memoized (CPython never memoizes the result of a
 *   persistent id), unless the same PERSID node is reached twice in the tree:
 *   then it is memoized after its first BINPERSID.
 * - A list/dict value uses the "exact container" batching: one item -> APPEND
 *   / SETITEM, else MARK ... APPENDS / SETITEMS in batches of 1000 (a last
 *   batch of one item included). An object's listitems/dictitems use the
 *   iterator batching: any batch of one item is written with APPEND/SETITEM.
 *   A dict value of a multiple of 1000 items gets the empty trailing
 *   MARK SETITEMS that CPython's batch_dict_exact() writes.
 * - An object is callable, args, REDUCE (or class, args, NEWOBJ), memo,
 *   listitems, dictitems, then state + BUILD when state != NULL.
 * - A GLOBAL whose name is dotted (a nested class, e.g. from STACK_GLOBAL at
 *   protocol 4) is written as CPython does below protocol 4:
 *   `__builtin__.getattr(parent, 'last')` REDUCEs.
 * - set/frozenset: `__builtin__ set` (frozenset) REDUCE of ([items],).
 *   bytes: `_codecs encode` REDUCE of (latin-1 text, 'latin1'); empty bytes:
 *   `__builtin__ bytes` REDUCE of (). bytearray: as CPython 3.11 does,
 *   `__builtin__ bytearray` REDUCE of (<bytes as above>,), empty: of ().
 * - PKL_NEWOBJ_EX has no protocol-2 opcode (CPython rewrites it with
 *   functools.partial): when the tree holds one, the stream starts with
 *   PROTO 4 and the object is written with NEWOBJ_EX; every other opcode is
 *   the same, and the modules __builtin__ / copy_reg are written with their
 *   Python 3 names (protocol 4 is read without fix_imports).
 * - Cycles must pass through a list, dict or object after its memo entry
 *   exists. A value reached again while its own constructor arguments are
 *   being written (a cycle through a tuple, an object's args, a set's items
 *   or a persistent id) is FM_EUNSUPPORTED.
 * - Nothing recurses on the depth of the tree: the writer runs an explicit
 *   task stack.
 */
#include "torchfmt/pkw.h"

#include <stdlib.h>
#include <string.h>

enum {
    W_MARK = '(', W_STOP = '.', W_BINFLOAT = 'G', W_BININT = 'J', W_BININT1 = 'K', W_BININT2 = 'M',
    W_NONE = 'N', W_BINPERSID = 'Q', W_REDUCE = 'R', W_BINUNICODE = 'X', W_APPEND = 'a', W_BUILD = 'b',
    W_GLOBAL = 'c', W_EMPTY_DICT = '}', W_APPENDS = 'e', W_BINGET = 'h', W_LONG_BINGET = 'j',
    W_EMPTY_LIST = ']', W_BINPUT = 'q', W_LONG_BINPUT = 'r', W_SETITEM = 's', W_TUPLE = 't',
    W_EMPTY_TUPLE = ')', W_SETITEMS = 'u', W_PROTO = 0x80, W_NEWOBJ = 0x81, W_TUPLE1 = 0x85,
    W_TUPLE2 = 0x86, W_TUPLE3 = 0x87, W_NEWTRUE = 0x88, W_NEWFALSE = 0x89, W_LONG1 = 0x8a,
    W_LONG4 = 0x8b, W_NEWOBJ_EX = 0x92
};

#define BATCH 1000
#define NO_MEMO UINT32_MAX

/* Per-node flags. */
enum { F_ACTIVE = 1, F_SEEN = 2, F_REF1 = 4, F_SHARED = 8 };

typedef enum {
    T_SAVE,       /* write v */
    T_OP,         /* write the opcode `op` */
    T_ITEMS,      /* write items [i, end) of seq v */
    T_PAIRS,      /* write key, value for entries [i, end) of dict v */
    T_APPENDS,    /* batches of list items from i (exact: a list value) */
    T_SETITEMS,   /* batches of dict entries from i */
    T_TUPLE_END,  /* after the items of tuple v */
    T_OBJ_END,    /* after callable and args of object v */
    T_SET_END,    /* after the items of set v */
    T_PERSID_END, /* after the pid of v */
    T_BUILD       /* state of object v, then BUILD */
} task_kind;

typedef struct task {
    uint8_t kind, op;
    bool exact;
    const pkl_value *v;
    size_t i, end;
} task;

typedef struct gslot {
    char *key; /* "module\nname"; NULL: empty */
    uint32_t memo;
} gslot;

typedef struct pkw {
    fm_buf *out;
    fm_err *e;
    size_t nnodes;
    uint32_t *memo; /* per serial */
    uint8_t *flags; /* per serial */
    uint64_t next_memo;
    uint32_t latin1;  /* memo index of the shared 'latin1' str */
    uint32_t last_gl; /* memo index of the global written last */
    gslot *gl;
    size_t gl_cap, gl_n;
    task *t;
    size_t tn, tcap;
    bool proto4;
} pkw;

/* ------------------------------------------------------------------ */
/* Output primitives                                                   */
/* ------------------------------------------------------------------ */

static void op1(pkw *w, uint8_t op) { fm_buf_putc(w->out, (char)op); }

static void put_le(pkw *w, uint64_t x, size_t n)
{
    uint8_t b[8];
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(x >> (8 * i));
    fm_buf_append(w->out, b, n);
}

static int nomem(pkw *w) { return fm_fail(w->e, FM_ENOMEM, "out of memory while writing a pickle"); }

static int memo_next(pkw *w, uint32_t *idx)
{
    if (w->next_memo >= NO_MEMO) return fm_fail(w->e, FM_EUNSUPPORTED, "more than 2^32-1 memoized values");
    *idx = (uint32_t)w->next_memo++;
    if (*idx < 256) {
        op1(w, W_BINPUT);
        put_le(w, *idx, 1);
    } else {
        op1(w, W_LONG_BINPUT);
        put_le(w, *idx, 4);
    }
    return 0;
}

/* Memoizes a temporary that is not a node of the tree. */
static int memo_synth(pkw *w)
{
    uint32_t idx;
    return memo_next(w, &idx);
}

static int memo_node(pkw *w, const pkl_value *v)
{
    uint32_t idx;
    FM_TRY(memo_next(w, &idx));
    w->memo[v->serial] = idx;
    return 0;
}

static void put_get(pkw *w, uint32_t idx)
{
    if (idx < 256) {
        op1(w, W_BINGET);
        put_le(w, idx, 1);
    } else {
        op1(w, W_LONG_BINGET);
        put_le(w, idx, 4);
    }
}

static int put_str(pkw *w, const char *s, size_t n)
{
    if (n > UINT32_MAX) return fm_fail(w->e, FM_EUNSUPPORTED, "a str of %zu bytes does not fit protocol 2", n);
    op1(w, W_BINUNICODE);
    put_le(w, n, 4);
    fm_buf_append(w->out, s, n);
    return 0;
}

/* Minimal little-endian two's complement length (as pickle.encode_long). */
static size_t minimal_len(const uint8_t *b, size_t n)
{
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) || (b[n - 1] == 0xff && (b[n - 2] & 0x80)))) n--;
    return n;
}

static int put_long(pkw *w, const uint8_t *raw, size_t n)
{
    n = minimal_len(raw, n);
    if (n < 256) {
        op1(w, W_LONG1);
        put_le(w, n, 1);
    } else {
        if (n > INT32_MAX) return fm_fail(w->e, FM_EUNSUPPORTED, "an int of %zu bytes is too large to pickle", n);
        op1(w, W_LONG4);
        put_le(w, n, 4);
    }
    fm_buf_append(w->out, raw, n);
    return 0;
}

static int put_int(pkw *w, const pkl_value *v)
{
    if (v->u.i.big) return put_long(w, v->u.i.raw, v->u.i.rawlen);
    int64_t x = v->u.i.v;
    if (x >= 0 && x <= 0xff) {
        op1(w, W_BININT1);
        put_le(w, (uint64_t)x, 1);
    } else if (x >= 0 && x <= 0xffff) {
        op1(w, W_BININT2);
        put_le(w, (uint64_t)x, 2);
    } else if (x >= INT32_MIN && x <= INT32_MAX) {
        op1(w, W_BININT);
        put_le(w, (uint64_t)x, 4);
    } else {
        uint8_t b[8];
        for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)x >> (8 * i));
        return put_long(w, b, 8);
    }
    return 0;
}

static void put_float(pkw *w, double f)
{
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    op1(w, W_BINFLOAT);
    for (int i = 7; i >= 0; i--) fm_buf_putc(w->out, (char)(uint8_t)(u >> (8 * i))); /* big-endian */
}

/* ------------------------------------------------------------------ */
/* Globals                                                             */
/* ------------------------------------------------------------------ */

static uint64_t str_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The slot for key (found, or the empty slot where it would go). */
static gslot *gl_slot(pkw *w, const char *key, size_t n)
{
    size_t i = (size_t)str_hash(key, n) & (w->gl_cap - 1);
    while (w->gl[i].key && !(strlen(w->gl[i].key) == n && memcmp(w->gl[i].key, key, n) == 0))
        i = (i + 1) & (w->gl_cap - 1);
    return &w->gl[i];
}

static bool gl_grow(pkw *w)
{
    if ((w->gl_n + 1) * 2 <= w->gl_cap) return true;
    size_t ncap = w->gl_cap ? w->gl_cap * 2 : 64;
    gslot *old = w->gl;
    size_t ocap = w->gl_cap;
    w->gl = calloc(ncap, sizeof *w->gl);
    if (w->gl == NULL) {
        w->gl = old;
        return false;
    }
    w->gl_cap = ncap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].key) *gl_slot(w, old[i].key, strlen(old[i].key)) = old[i];
    free(old);
    return true;
}

/* Builds "module\nname[0..nlen)" into a malloc'd key. */
static char *gl_key(const char *module, const char *name, size_t nlen)
{
    size_t ml = strlen(module);
    char *k = malloc(ml + nlen + 2);
    if (k == NULL) return NULL;
    memcpy(k, module, ml);
    k[ml] = '\n';
    memcpy(k + ml + 1, name, nlen);
    k[ml + 1 + nlen] = '\0';
    return k;
}

/* Memo index of the global (module, name[0..nlen)), or NO_MEMO. */
static uint32_t gl_find(pkw *w, const char *module, const char *name, size_t nlen)
{
    if (w->gl_cap == 0) return NO_MEMO;
    char *k = gl_key(module, name, nlen);
    if (k == NULL) return NO_MEMO; /* treated as not written: correct, just longer */
    gslot *s = gl_slot(w, k, strlen(k));
    free(k);
    return s->key ? s->memo : NO_MEMO;
}

/* Memoizes the global just written under (module, name[0..nlen)). */
static int gl_memo(pkw *w, const char *module, const char *name, size_t nlen)
{
    uint32_t idx;
    FM_TRY(memo_next(w, &idx));
    char *k = gl_key(module, name, nlen);
    if (k == NULL || !gl_grow(w)) {
        free(k);
        return nomem(w);
    }
    w->last_gl = idx;
    gslot *s = gl_slot(w, k, strlen(k));
    if (s->key) { /* cannot happen: callers look it up first */
        free(k);
        s->memo = idx;
        return 0;
    }
    s->key = k;
    s->memo = idx;
    w->gl_n++;
    return 0;
}

/* Protocol 4 streams are read without fix_imports: use Python 3 names. */
static const char *py3_module(const pkw *w, const char *module)
{
    if (!w->proto4) return module;
    if (strcmp(module, "__builtin__") == 0) return "builtins";
    if (strcmp(module, "copy_reg") == 0) return "copyreg";
    return module;
}

/* A plain GLOBAL opcode for a name without dots (memoized). */
static int put_plain_global(pkw *w, const char *module, const char *name, size_t nlen)
{
    uint32_t idx = gl_find(w, module, name, nlen);
    if (idx != NO_MEMO) {
        put_get(w, idx);
        w->last_gl = idx;
        return 0;
    }
    if (strchr(module, '\n') || memchr(name, '\n', nlen))
        return fm_fail(w->e, FM_EUNSUPPORTED, "a module or class name contains a newline");
    op1(w, W_GLOBAL);
    fm_buf_puts(w->out, module);
    fm_buf_putc(w->out, '\n');
    fm_buf_append(w->out, name, nlen);
    fm_buf_putc(w->out, '\n');
    return gl_memo(w, module, name, nlen);
}

/* A nested class "A.B.C": getattr(getattr(A, 'B'), 'C'), reusing the
 * deepest prefix that is already memoized, as CPython's save_global(). */
static int put_dotted_global(pkw *w, const char *module, const char *name)
{
    size_t n = strlen(name), dots = 0;
    for (size_t i = 0; i < n; i++) dots += name[i] == '.';
    size_t *ends = malloc((dots + 1) * sizeof *ends); /* ends[l]: length of the first l+1 parts */
    if (ends == NULL) return nomem(w);
    for (size_t i = 0, l = 0; i <= n; i++)
        if (i == n || name[i] == '.') ends[l++] = i;
    size_t have = 0; /* level already on the stack before the getattr chain */
    uint32_t idx = NO_MEMO;
    for (size_t l = dots; l-- > 0 && idx == NO_MEMO;) {
        idx = gl_find(w, module, name, ends[l]);
        have = l;
    }
    if (idx == NO_MEMO) have = 0;
    int rc = 0;
    for (size_t l = have; l < dots && !rc; l++) rc = put_plain_global(w, py3_module(w, "__builtin__"), "getattr", 7);
    if (rc == 0 && idx != NO_MEMO) put_get(w, idx);
    else if (rc == 0) rc = put_plain_global(w, module, name, ends[0]);
    for (size_t l = have + 1; l <= dots && !rc; l++) {
        size_t start = ends[l - 1] + 1;
        rc = put_str(w, name + start, ends[l] - start);
        if (!rc) rc = memo_synth(w);
        if (!rc) {
            op1(w, W_TUPLE2);
            rc = memo_synth(w);
        }
        if (!rc) {
            op1(w, W_REDUCE);
            rc = gl_memo(w, module, name, ends[l]);
        }
    }
    free(ends);
    return rc;
}

static int put_global(pkw *w, const char *module, const char *name)
{
    size_t n = strlen(name);
    module = py3_module(w, module);
    uint32_t idx = gl_find(w, module, name, n);
    if (idx != NO_MEMO) {
        put_get(w, idx);
        w->last_gl = idx;
        return 0;
    }
    if (strchr(name, '.')) return put_dotted_global(w, module, name);
    return put_plain_global(w, module, name, n);
}

/* ------------------------------------------------------------------ */
/* Task stack                                                          */
/* ------------------------------------------------------------------ */

static int push_task(pkw *w, task_kind kind, const pkl_value *v, size_t i, size_t end)
{
    if (w->tn == w->tcap) {
        size_t ncap = w->tcap ? w->tcap * 2 : 256;
        task *p = ncap > SIZE_MAX / sizeof *p ? NULL : realloc(w->t, ncap * sizeof *p);
        if (p == NULL) return nomem(w);
        w->t = p;
        w->tcap = ncap;
    }
    task *t = &w->t[w->tn++];
    memset(t, 0, sizeof *t);
    t->kind = (uint8_t)kind;
    t->v = v;
    t->i = i;
    t->end = end;
    return 0;
}

static int push_op(pkw *w, uint8_t op)
{
    FM_TRY(push_task(w, T_OP, NULL, 0, 0));
    w->t[w->tn - 1].op = op;
    return 0;
}

static int push_batches(pkw *w, task_kind kind, const pkl_value *v, bool exact)
{
    FM_TRY(push_task(w, kind, v, 0, 0));
    w->t[w->tn - 1].exact = exact;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Values                                                              */
/* ------------------------------------------------------------------ */

/* Marks v as being written; reaching it again before it is done is a cycle
 * that protocol 2 cannot express without rebuilding the value. */
static int enter(pkw *w, const pkl_value *v)
{
    if (w->flags[v->serial] & F_ACTIVE) {
        const char *what = v->type == PKL_TUPLE    ? "a tuple"
                           : v->type == PKL_OBJ    ? "the arguments of an object"
                           : v->type == PKL_PERSID ? "a persistent id"
                                                   : "the items of a set";
        return fm_fail(w->e, FM_EUNSUPPORTED, "cannot pickle a cycle through %s", what);
    }
    w->flags[v->serial] |= F_ACTIVE;
    return 0;
}

static void leave(pkw *w, const pkl_value *v) { w->flags[v->serial] &= (uint8_t)~F_ACTIVE; }

/* _codecs.encode(<bytes as latin-1 text>, 'latin1'), as protocol 2 writes bytes. */
static int put_codecs_encode(pkw *w, const uint8_t *p, size_t n)
{
    FM_TRY(put_global(w, "_codecs", "encode"));
    size_t wide = 0;
    for (size_t i = 0; i < n; i++) wide += p[i] >= 0x80;
    if (n + wide > UINT32_MAX) return fm_fail(w->e, FM_EUNSUPPORTED, "bytes of %zu bytes do not fit protocol 2", n);
    op1(w, W_BINUNICODE);
    put_le(w, n + wide, 4);
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x80) {
            fm_buf_putc(w->out, (char)p[i]);
        } else {
            fm_buf_putc(w->out, (char)(0xc0 | (p[i] >> 6)));
            fm_buf_putc(w->out, (char)(0x80 | (p[i] & 0x3f)));
        }
    }
    FM_TRY(memo_synth(w));
    if (w->latin1 != NO_MEMO) {
        put_get(w, w->latin1); /* CPython's 'latin1' constant is one object */
    } else {
        FM_TRY(put_str(w, "latin1", 6));
        FM_TRY(memo_next(w, &w->latin1));
    }
    op1(w, W_TUPLE2);
    FM_TRY(memo_synth(w));
    op1(w, W_REDUCE);
    return 0;
}

static int save_bytes(pkw *w, const pkl_value *v)
{
    const uint8_t *p = (const uint8_t *)v->u.str.s;
    size_t n = v->u.str.len;
    if (n == 0) {
        FM_TRY(put_global(w, "__builtin__", v->u.str.bytearray ? "bytearray" : "bytes"));
        op1(w, W_EMPTY_TUPLE);
        op1(w, W_REDUCE);
    } else if (!v->u.str.bytearray) {
        FM_TRY(put_codecs_encode(w, p, n));
    } else {
        FM_TRY(put_global(w, "__builtin__", "bytearray"));
        FM_TRY(put_codecs_encode(w, p, n));
        FM_TRY(memo_synth(w)); /* the temporary bytes object */
        op1(w, W_TUPLE1);
        FM_TRY(memo_synth(w));
        op1(w, W_REDUCE);
    }
    return memo_node(w, v);
}

static int save_tuple(pkw *w, const pkl_value *v)
{
    size_t n = v->u.seq.n;
    if (n == 0) {
        op1(w, W_EMPTY_TUPLE); /* never memoized by CPython */
        return 0;
    }
    FM_TRY(enter(w, v));
    if (n > 3) op1(w, W_MARK);
    FM_TRY(push_task(w, T_TUPLE_END, v, 0, 0));
    return push_task(w, T_ITEMS, v, 0, n);
}

static int save_set(pkw *w, const pkl_value *v)
{
    FM_TRY(enter(w, v));
    FM_TRY(put_global(w, "__builtin__", v->type == PKL_SET ? "set" : "frozenset"));
    op1(w, W_EMPTY_LIST);
    FM_TRY(memo_synth(w)); /* the temporary list(set) */
    FM_TRY(push_task(w, T_SET_END, v, 0, 0));
    return push_batches(w, T_APPENDS, v, true);
}

static int save_obj(pkw *w, const pkl_value *v)
{
    FM_TRY(enter(w, v));
    FM_TRY(push_task(w, T_OBJ_END, v, 0, 0));
    if (v->u.obj.kind == PKL_NEWOBJ_EX) FM_TRY(push_task(w, T_SAVE, v->u.obj.kwargs, 0, 0));
    FM_TRY(push_task(w, T_SAVE, v->u.obj.args, 0, 0));
    return push_task(w, T_SAVE, v->u.obj.callable, 0, 0);
}

static int save_persid(pkw *w, const pkl_value *v)
{
    FM_TRY(enter(w, v));
    FM_TRY(push_task(w, T_PERSID_END, v, 0, 0));
    return push_task(w, T_SAVE, v->u.persid.pid, 0, 0);
}

static int save_container(pkw *w, const pkl_value *v)
{
    switch (v->type) {
    case PKL_LIST:
        op1(w, W_EMPTY_LIST);
        FM_TRY(memo_node(w, v));
        return push_batches(w, T_APPENDS, v, true);
    case PKL_DICT:
        op1(w, W_EMPTY_DICT);
        FM_TRY(memo_node(w, v));
        return push_batches(w, T_SETITEMS, v, true);
    case PKL_TUPLE: return save_tuple(w, v);
    case PKL_SET:
    case PKL_FROZENSET: return save_set(w, v);
    case PKL_OBJ: return save_obj(w, v);
    case PKL_PERSID: return save_persid(w, v);
    default: return fm_fail(w->e, FM_EINTERNAL, "pkw: value of unknown type %d", (int)v->type);
    }
}

static int save(pkw *w, const pkl_value *v)
{
    if (v == NULL) {
        op1(w, W_NONE); /* a missing child reads as None */
        return 0;
    }
    if (v->serial >= w->nnodes) return fm_fail(w->e, FM_EINTERNAL, "pkw: value #%u is not from this doc", v->serial);
    if (w->memo[v->serial] != NO_MEMO) {
        put_get(w, w->memo[v->serial]);
        return 0;
    }
    switch (v->type) {
    case PKL_NONE: op1(w, W_NONE); return 0;
    case PKL_BOOL: op1(w, v->u.b ? W_NEWTRUE : W_NEWFALSE); return 0;
    case PKL_INT: return put_int(w, v);
    case PKL_FLOAT: put_float(w, v->u.f); return 0;
    case PKL_STR: FM_TRY(put_str(w, v->u.str.s, v->u.str.len)); return memo_node(w, v);
    case PKL_BYTES: return save_bytes(w, v);
    case PKL_GLOBAL: /* memoized by name; the node remembers its entry to skip the lookup */
        FM_TRY(put_global(w, v->u.global.module, v->u.global.name));
        w->memo[v->serial] = w->last_gl;
        return 0;
    default: return save_container(w, v);
    }
}

/* ------------------------------------------------------------------ */
/* Task handlers                                                       */
/* ------------------------------------------------------------------ */

static size_t entry_count(const pkl_value *v, bool dict)
{
    if (v == NULL) return 0;
    if (dict) return v->type == PKL_DICT ? v->u.dict.n : 0;
    size_t n;
    return pkl_items(v, &n) ? n : 0;
}

/* The next batch of APPENDS/SETITEMS. CPython writes a lone item with
 * APPEND/SETITEM only for a whole one-item list/dict (exact) or for any
 * one-item batch of an object's items (iterator). */
static int run_batches(pkw *w, const task *t, bool dict)
{
    size_t n = entry_count(t->v, dict), i = t->i;
    if (i >= n) {
        /* batch_dict_exact() loops while a batch came out full, so a dict
         * of a multiple of 1000 items ends with an empty MARK SETITEMS. */
        if (dict && t->exact && n >= BATCH && n % BATCH == 0) {
            op1(w, W_MARK);
            op1(w, W_SETITEMS);
        }
        return 0;
    }
    size_t k = n - i < BATCH ? n - i : BATCH;
    bool lone = t->exact ? n == 1 : k == 1;
    FM_TRY(push_task(w, dict ? T_SETITEMS : T_APPENDS, t->v, i + k, 0));
    w->t[w->tn - 1].exact = t->exact;
    FM_TRY(push_op(w, dict ? (lone ? W_SETITEM : W_SETITEMS) : (lone ? W_APPEND : W_APPENDS)));
    FM_TRY(push_task(w, dict ? T_PAIRS : T_ITEMS, t->v, i, i + k));
    if (!lone) op1(w, W_MARK);
    return 0;
}

static int run_items(pkw *w, const task *t)
{
    if (t->i >= t->end) return 0;
    size_t n;
    pkl_value *const *items = pkl_items(t->v, &n);
    FM_TRY(push_task(w, T_ITEMS, t->v, t->i + 1, t->end));
    return push_task(w, T_SAVE, items[t->i], 0, 0);
}

static int run_pairs(pkw *w, const task *t)
{
    if (t->i >= t->end) return 0;
    const pkl_value *d = t->v;
    FM_TRY(push_task(w, T_PAIRS, d, t->i + 1, t->end));
    FM_TRY(push_task(w, T_SAVE, d->u.dict.vals[t->i], 0, 0));
    return push_task(w, T_SAVE, d->u.dict.keys[t->i], 0, 0);
}

static int run_tuple_end(pkw *w, const pkl_value *v)
{
    static const uint8_t small[4] = {0, W_TUPLE1, W_TUPLE2, W_TUPLE3};
    leave(w, v);
    op1(w, v->u.seq.n <= 3 ? small[v->u.seq.n] : W_TUPLE);
    return memo_node(w, v);
}

static int run_obj_end(pkw *w, const pkl_value *v)
{
    static const uint8_t ops[3] = {W_REDUCE, W_NEWOBJ, W_NEWOBJ_EX};
    leave(w, v);
    op1(w, ops[v->u.obj.kind <= PKL_NEWOBJ_EX ? v->u.obj.kind : 0]);
    FM_TRY(memo_node(w, v));
    if (v->u.obj.state) FM_TRY(push_task(w, T_BUILD, v, 0, 0));
    if (v->u.obj.dictitems) FM_TRY(push_batches(w, T_SETITEMS, v->u.obj.dictitems, false));
    if (v->u.obj.listitems) FM_TRY(push_batches(w, T_APPENDS, v->u.obj.listitems, false));
    return 0;
}

static int run_set_end(pkw *w, const pkl_value *v)
{
    leave(w, v);
    op1(w, W_TUPLE1);
    FM_TRY(memo_synth(w)); /* the temporary ([items],) */
    op1(w, W_REDUCE);
    return memo_node(w, v);
}

static int run_persid_end(pkw *w, const pkl_value *v)
{
    leave(w, v);
    op1(w, W_BINPERSID);
    return (w->flags[v->serial] & F_SHARED) ? memo_node(w, v) : 0;
}

static int run_task(pkw *w, task t)
{
    switch ((task_kind)t.kind) {
    case T_SAVE: return save(w, t.v);
    case T_OP: op1(w, t.op); return 0;
    case T_ITEMS: return run_items(w, &t);
    case T_PAIRS: return run_pairs(w, &t);
    case T_APPENDS: return run_batches(w, &t, false);
    case T_SETITEMS: return run_batches(w, &t, true);
    case T_TUPLE_END: return run_tuple_end(w, t.v);
    case T_OBJ_END: return run_obj_end(w, t.v);
    case T_SET_END: return run_set_end(w, t.v);
    case T_PERSID_END: return run_persid_end(w, t.v);
    case T_BUILD:
        FM_TRY(push_op(w, W_BUILD));
        return push_task(w, T_SAVE, t.v->u.obj.state, 0, 0);
    }
    return fm_fail(w->e, FM_EINTERNAL, "pkw: bad task %d", t.kind);
}

/* ------------------------------------------------------------------ */
/* Pre-scan: persistent ids reached twice, NEWOBJ_EX                   */
/* ------------------------------------------------------------------ */

typedef struct scan {
    const pkl_value **st;
    size_t n, cap;
} scan;

/* Notes an edge to v and queues v when first seen. */
static int scan_edge(pkw *w, scan *s, const pkl_value *v)
{
    if (v == NULL) return 0;
    if (v->serial >= w->nnodes) return fm_fail(w->e, FM_EINTERNAL, "pkw: value #%u is not from this doc", v->serial);
    uint8_t *f = &w->flags[v->serial];
    if (v->type == PKL_PERSID) *f |= (*f & F_REF1) ? F_SHARED : F_REF1;
    if (*f & F_SEEN) return 0;
    *f |= F_SEEN;
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 256;
        const pkl_value **p = ncap > SIZE_MAX / sizeof *p ? NULL : realloc(s->st, ncap * sizeof *p);
        if (p == NULL) return nomem(w);
        s->st = p;
        s->cap = ncap;
    }
    s->st[s->n++] = v;
    return 0;
}

static int scan_children(pkw *w, scan *s, const pkl_value *v)
{
    size_t n;
    pkl_value *const *items = pkl_items(v, &n);
    for (size_t i = 0; i < n; i++) FM_TRY(scan_edge(w, s, items[i]));
    if (v->type == PKL_DICT)
        for (size_t i = 0; i < v->u.dict.n; i++) {
            FM_TRY(scan_edge(w, s, v->u.dict.keys[i]));
            FM_TRY(scan_edge(w, s, v->u.dict.vals[i]));
        }
    if (v->type == PKL_PERSID) FM_TRY(scan_edge(w, s, v->u.persid.pid));
    if (v->type != PKL_OBJ) return 0;
    if (v->u.obj.kind == PKL_NEWOBJ_EX) w->proto4 = true;
    const pkl_value *kids[6] = {v->u.obj.callable, v->u.obj.args,      v->u.obj.kwargs,
                                v->u.obj.state,    v->u.obj.dictitems, v->u.obj.listitems};
    for (size_t i = 0; i < 6; i++) FM_TRY(scan_edge(w, s, kids[i]));
    return 0;
}

static int prescan(pkw *w, const pkl_value *root)
{
    scan s = {0};
    int rc = scan_edge(w, &s, root);
    while (rc == 0 && s.n) rc = scan_children(w, &s, s.st[--s.n]);
    free(s.st);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Entry point                                                         */
/* ------------------------------------------------------------------ */

static int dump_all(pkw *w, const pkl_value *root)
{
    FM_TRY(prescan(w, root));
    op1(w, W_PROTO);
    fm_buf_putc(w->out, w->proto4 ? 4 : 2);
    FM_TRY(push_task(w, T_SAVE, root, 0, 0));
    while (w->tn) {
        FM_TRY(run_task(w, w->t[--w->tn]));
        if (w->out->oom) return nomem(w);
    }
    op1(w, W_STOP);
    return w->out->oom ? nomem(w) : 0;
}

int pkw_dump(const pkl_doc *doc, const pkl_value *root, fm_buf *out, fm_err *e)
{
    if (doc == NULL || out == NULL) return fm_fail(e, FM_EINTERNAL, "pkw_dump: invalid arguments");
    pkw w;
    memset(&w, 0, sizeof w);
    w.out = out;
    w.e = e;
    w.nnodes = pkl_doc_node_count(doc);
    w.latin1 = NO_MEMO;
    size_t nn = w.nnodes ? w.nnodes : 1;
    w.memo = nn > SIZE_MAX / sizeof *w.memo ? NULL : malloc(nn * sizeof *w.memo);
    w.flags = calloc(nn, 1);
    int rc;
    if (w.memo == NULL || w.flags == NULL) {
        rc = nomem(&w);
    } else {
        memset(w.memo, 0xff, nn * sizeof *w.memo);
        size_t start = out->len;
        rc = dump_all(&w, root);
        if (rc) out->len = start; /* leave no half-written pickle behind */
    }
    for (size_t i = 0; i < w.gl_cap; i++) free(w.gl[i].key);
    free(w.gl);
    free(w.t);
    free(w.memo);
    free(w.flags);
    return rc;
}
