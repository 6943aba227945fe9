/* pkl.h - a pickle virtual machine that only builds data.
 *
 * pkl_load() runs the opcodes of a pickle stream (protocols 0 to 5) and
 * returns a tree of inert values. Nothing is ever imported, called or
 * executed: GLOBAL/STACK_GLOBAL push a (module, name) pair, REDUCE/NEWOBJ/
 * NEWOBJ_EX build an inert PKL_OBJ that records the callable and its
 * arguments, BUILD stores the state in that object, and SETITEM(S)/APPEND(S)
 * applied to an object are recorded in it. Persistent ids become PKL_PERSID.
 * Interpreting the tree (tensors, DTensor, ...) is the caller's job.
 *
 * Every length, count and memo index read from the stream is checked against
 * the remaining input and the limits before use. Values may be shared (memo)
 * and, through objects, cyclic: walkers must use the node serial numbers to
 * detect revisits (see pkl_doc_node_count()).
 *
 * All nodes and strings live in a pkl_doc arena and are freed together with
 * pkl_doc_free(). The same constructors serve the VM and code that builds
 * pickles to write with pkw_dump().
 */
#ifndef FM_PKL_H
#define FM_PKL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "base/util.h"

typedef enum pkl_type {
    PKL_NONE = 0,
    PKL_BOOL,
    PKL_INT,
    PKL_FLOAT,
    PKL_STR,       /* text (UTF-8 bytes, may contain NUL) */
    PKL_BYTES,     /* bytes / bytearray (protocol 3+, or SHORT_BINBYTES ...) */
    PKL_LIST,
    PKL_TUPLE,
    PKL_SET,
    PKL_FROZENSET,
    PKL_DICT,      /* insertion-ordered */
    PKL_GLOBAL,    /* a class or function reference: module + name */
    PKL_OBJ,       /* an inert object built by REDUCE / NEWOBJ / NEWOBJ_EX */
    PKL_PERSID     /* persistent_load(pid) */
} pkl_type;

typedef enum pkl_obj_kind {
    PKL_REDUCE = 0, /* callable(*args) */
    PKL_NEWOBJ,     /* cls.__new__(cls, *args) */
    PKL_NEWOBJ_EX   /* cls.__new__(cls, *args, **kwargs) */
} pkl_obj_kind;

typedef struct pkl_value pkl_value;

struct pkl_value {
    pkl_type type;
    uint32_t serial; /* 0..pkl_doc_node_count()-1, unique per node */
    union {
        bool b;
        struct {
            int64_t v;         /* valid when !big */
            bool big;          /* does not fit in int64: raw holds it */
            const uint8_t *raw; /* little-endian two's complement, as LONG1/LONG4 */
            size_t rawlen;
        } i;
        double f;
        struct {
            const char *s; /* NUL-terminated copy; len excludes the NUL */
            size_t len;
            bool bytearray; /* PKL_BYTES from BYTEARRAY8 */
        } str;
        struct {
            pkl_value **items;
            size_t n, cap;
        } seq; /* LIST, TUPLE, SET, FROZENSET */
        struct {
            pkl_value **keys, **vals;
            size_t n, cap;
        } dict;
        struct {
            const char *module, *name;
        } global;
        struct {
            pkl_obj_kind kind;
            pkl_value *callable;  /* REDUCE: the callable; NEWOBJ*: the class */
            pkl_value *args;      /* a PKL_TUPLE (normally) */
            pkl_value *kwargs;    /* NEWOBJ_EX only, else NULL */
            pkl_value *state;     /* from BUILD, else NULL */
            pkl_value *dictitems; /* PKL_DICT of SETITEM(S) applied to the object, else NULL */
            pkl_value *listitems; /* PKL_LIST of APPEND(S) applied to the object, else NULL */
        } obj;
        struct {
            pkl_value *pid;
        } persid;
    } u;
};

typedef struct pkl_doc pkl_doc;

typedef struct pkl_limits {
    size_t max_nodes;  /* values created (default 50,000,000) */
    size_t max_stack;  /* values on the VM stack, marks included (default 1,000,000) */
    size_t max_memo;   /* highest memo index + 1 (default 50,000,000) */
    size_t max_bytes;  /* arena bytes: nodes + strings (default 4 GiB) */
} pkl_limits;

/*! pkl_default_limits() : the defaults above. */
pkl_limits pkl_default_limits(void);

/*! pkl_doc_new() : an empty arena. @return : NULL on allocation failure. */
pkl_doc *pkl_doc_new(void);
/*! pkl_doc_free() : frees the arena and every value in it. Accepts NULL. */
void pkl_doc_free(pkl_doc *doc);
/*! pkl_doc_node_count() : number of values created so far (serials are below it). */
size_t pkl_doc_node_count(const pkl_doc *doc);

/*! pkl_load() : runs the pickle in buf[0..len) and stores the value left by STOP
 *  in *root (owned by doc). lim may be NULL for the defaults.
 *  Errors (FM_EFORMAT, FM_EUNSUPPORTED, FM_ENOMEM) name the opcode and its byte
 *  offset, e.g. "unknown opcode 0xd3 at byte 1234". */
int pkl_load(pkl_doc *doc, const uint8_t *buf, size_t len, const pkl_limits *lim, pkl_value **root,
             fm_err *e);

/* ---- constructors (return NULL only on allocation failure or limit) ---- */
pkl_value *pkl_new_none(pkl_doc *doc);
pkl_value *pkl_new_bool(pkl_doc *doc, bool b);
pkl_value *pkl_new_int(pkl_doc *doc, int64_t v);
pkl_value *pkl_new_bigint(pkl_doc *doc, const uint8_t *le_bytes, size_t n); /* normalises to int64 when it fits */
pkl_value *pkl_new_float(pkl_doc *doc, double f);
pkl_value *pkl_new_str(pkl_doc *doc, const char *s, size_t len);
pkl_value *pkl_new_cstr(pkl_doc *doc, const char *s);
pkl_value *pkl_new_bytes(pkl_doc *doc, const void *p, size_t len);
pkl_value *pkl_new_list(pkl_doc *doc);
pkl_value *pkl_new_tuple(pkl_doc *doc, size_t n, pkl_value *const *items);
pkl_value *pkl_new_set(pkl_doc *doc, bool frozen);
pkl_value *pkl_new_dict(pkl_doc *doc);
pkl_value *pkl_new_global(pkl_doc *doc, const char *module, const char *name);
/* callable/cls must be non-NULL; args NULL means an empty tuple. */
pkl_value *pkl_new_obj(pkl_doc *doc, pkl_obj_kind kind, pkl_value *callable, pkl_value *args);
pkl_value *pkl_new_persid(pkl_doc *doc, pkl_value *pid);

/* Mutators: return 0, FM_ENOMEM, or FM_EFORMAT when the target has the wrong type. */
int pkl_seq_append(pkl_doc *doc, pkl_value *seq, pkl_value *item);          /* LIST, SET, FROZENSET */
int pkl_dict_set(pkl_doc *doc, pkl_value *dict, pkl_value *k, pkl_value *v); /* DICT (replaces equal str/int key) */

/* ---- queries (all accept NULL and then return NULL/false) ---- */

/*! pkl_is_global() : v is a PKL_GLOBAL named `name` whose module is `module`
 *  or, when module ends with '*', starts with the part before it
 *  (e.g. pkl_is_global(v, "torch.distributed.*", "DTensor")). module NULL = any. */
bool pkl_is_global(const pkl_value *v, const char *module, const char *name);
/*! pkl_obj_is() : v is a PKL_OBJ whose callable/class satisfies pkl_is_global(). */
bool pkl_obj_is(const pkl_value *v, const char *module, const char *name);
/*! pkl_obj_class_name() : "module.name" of the callable/class of an OBJ,
 *  written into buf (for messages). */
const char *pkl_obj_class_name(const pkl_value *v, char *buf, size_t len);

/*! pkl_as_dict() : the DICT of v: v itself, or the dictitems of an OBJ
 *  (e.g. an OrderedDict built by REDUCE + SETITEMS). */
const pkl_value *pkl_as_dict(const pkl_value *v);
/*! pkl_dict_get() : value for a str key in a DICT or dict-like OBJ. */
pkl_value *pkl_dict_get(const pkl_value *dict, const char *key);
/*! pkl_attr() : attribute `name` of an OBJ's state, where the state is a
 *  dict, or a (dict_or_None, slots_dict) tuple as CPython writes for classes
 *  with __slots__. */
pkl_value *pkl_attr(const pkl_value *obj, const char *name);
/*! pkl_args() : the items of an OBJ's args tuple; *n gets the count. */
pkl_value *const *pkl_args(const pkl_value *obj, size_t *n);
/*! pkl_items() : the items of a LIST/TUPLE/SET/FROZENSET; *n gets the count. */
pkl_value *const *pkl_items(const pkl_value *seq, size_t *n);

bool pkl_get_int(const pkl_value *v, int64_t *out);   /* INT that fits, or BOOL */
bool pkl_get_bool(const pkl_value *v, bool *out);     /* BOOL, or INT 0/1 */
bool pkl_get_float(const pkl_value *v, double *out);  /* FLOAT, or INT */
const char *pkl_get_str(const pkl_value *v);          /* STR (NUL-terminated) */
/*! pkl_get_int_seq() : a LIST/TUPLE of ints (or a torch.Size REDUCE wrapping
 *  one) into out[0..max); @return : count, or -1 if not such a sequence or longer than max. */
int pkl_get_int_seq(const pkl_value *v, int64_t *out, int max);

const char *pkl_type_name(pkl_type t);

/*! pkl_int_text() : appends the decimal text of a PKL_INT of any size (ints
 *  over 512 bytes show as "<int of N bytes>"). */
void pkl_int_text(fm_buf *out, const pkl_value *v);

/*! pkl_repr() : appends a Python-like repr of v to out: dicts, lists,
 *  tuples, strings with Python quoting, objects as module.name(args...)
 *  with state shown as {...}; shared/cyclic values already being printed
 *  show as <...>; nesting deeper than max_depth shows as ...; sequences
 *  longer than max_items are cut with ", ...". */
void pkl_repr(fm_buf *out, const pkl_value *v, int max_depth, size_t max_items);

#endif
