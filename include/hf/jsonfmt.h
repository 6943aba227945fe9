/* jsonfmt.h - a JSON tree that prints exactly like Python's json.dumps().
 *
 * transformers writes config.json (and the sharded-weights index) with
 * json.dumps(obj, indent=2, sort_keys=True) + "\n". Reproducing that byte for
 * byte needs two things cJSON cannot give: every scalar kept as the token it
 * was in the input ("10000.0" stays "10000.0", "1e-06" stays "1e-06"), and a
 * printer with Python's layout and key order. This module parses text into a
 * tree whose scalars keep their raw token, lets a caller edit objects with
 * values given as JSON text, and prints the tree as json.dumps() would.
 *
 * Parsing follows Python's json.loads(): strict JSON, plus the NaN, Infinity
 * and -Infinity tokens Python accepts; raw control characters in strings are
 * rejected; a repeated key keeps its first position and takes the last value
 * (dict semantics). Strings must be valid UTF-8. Nesting is bounded.
 * Errors are FM_EFORMAT with "at byte N" in the message and N in *err_off.
 *
 * Keys are compared and sorted as Python compares str: by code point, which
 * for the decoded UTF-8 (surrogate escapes kept as 3-byte sequences) is
 * bytewise order.
 *
 * Ownership: jf_parse() returns a tree the caller frees with jf_free().
 * Pointers returned by the accessors are borrowed and stay valid until the
 * node is edited or freed. Nothing here is thread-safe per tree; different
 * trees are independent.
 */
#ifndef FM_JSONFMT_H
#define FM_JSONFMT_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "base/util.h"

/* Default bound on nesting (objects + arrays). Python's recursion limit stops
 * json.loads near 1000; configs are a few levels deep. */
#define JF_DEFAULT_MAX_DEPTH 256
/* The parser and printer recurse once per level; this keeps the C stack safe. */
#define JF_HARD_MAX_DEPTH 4096

typedef enum jf_kind {
    JF_NULL,
    JF_FALSE,
    JF_TRUE,
    JF_NUMBER, /* also NaN, Infinity, -Infinity */
    JF_STRING,
    JF_ARRAY,
    JF_OBJECT
} jf_kind;

typedef struct jf_node jf_node;

/*! jf_parse() : parses text[0..len) (no NUL needed) into a tree. max_depth
 *  0 means JF_DEFAULT_MAX_DEPTH; above JF_HARD_MAX_DEPTH it is clamped.
 *  Whitespace (space, tab, CR, LF) around the value is allowed, anything
 *  else after the value is an error.
 *  err_off (may be NULL) gets the byte offset of a syntax error.
 *  @return : 0, FM_EFORMAT (message says what and at which byte), FM_ENOMEM. */
int jf_parse(const char *text, size_t len, int max_depth, jf_node **out, size_t *err_off, fm_err *e);

/*! jf_free() : frees a tree. Accepts NULL. */
void jf_free(jf_node *n);

jf_kind jf_kind_of(const jf_node *n);

/*! jf_raw() : the input token of a scalar, exactly as it was ("1e-06",
 *  "\"caf\\u00e9\"" with its quotes); NULL for arrays and objects. */
const char *jf_raw(const jf_node *n, size_t *len);

/*! jf_string() : the decoded value of a JF_STRING node as UTF-8 (surrogate
 *  escapes that do not pair up become 3-byte sequences), NUL-terminated,
 *  borrowed; NULL for other kinds. len (may be NULL) gets its length, which
 *  can be larger than strlen() when the string holds \u0000. */
const char *jf_string(const jf_node *n, size_t *len);

/*! jf_size() : number of items of an array or members of an object, else 0. */
size_t jf_size(const jf_node *n);

/*! jf_at() : item i of an array or value of member i of an object, in
 *  document order; NULL when out of range. */
jf_node *jf_at(const jf_node *n, size_t i);

/*! jf_key_at() : decoded key of member i of an object (borrowed), or NULL. */
const char *jf_key_at(const jf_node *n, size_t i, size_t *len);

/*! jf_get() : value of member `key` (decoded UTF-8) of an object, or NULL. */
jf_node *jf_get(const jf_node *obj, const char *key);

/*! jf_set() : sets member `key` of an object to the value parsed from
 *  json[0..len). An existing member keeps its position; a new one goes last.
 *  @return : 0, FM_EFORMAT (bad json; obj unchanged), FM_EINTERNAL (obj is
 *  not an object), FM_ENOMEM. */
int jf_set(jf_node *obj, const char *key, const char *json, size_t len, fm_err *e);

/*! jf_insert() : like jf_set() but places the member at index pos (clamped
 *  to the member count), removing any other member with that key. */
int jf_insert(jf_node *obj, size_t pos, const char *key, const char *json, size_t len, fm_err *e);

/*! jf_delete() : removes member `key` of an object. @return : true if removed. */
bool jf_delete(jf_node *obj, const char *key);

typedef struct jf_print_opts {
    int indent;     /* json.dumps indent: >= 0 pretty, < 0 None (one line, ", " and ": ") */
    bool sort_keys; /* json.dumps sort_keys */
    /* false: every scalar printed as its input token (hfdir.h's contract).
     * true: print what json.dumps(json.loads(text)) prints: strings decoded
     * and re-escaped with ensure_ascii, numbers re-printed as Python's int
     * str() or float repr() ("1E+30" -> "1e+30", "-0" -> "0", "1.0e4" ->
     * "10000.0", overflow -> "Infinity"). */
    bool canonical;
} jf_print_opts;

/*! jf_print() : appends the text of n to out, as json.dumps(n, indent=...,
 *  sort_keys=...) would (no trailing newline). opts NULL means indent 2,
 *  sorted, raw tokens.
 *  @return : 0 or FM_ENOMEM (out->oom). */
int jf_print(const jf_node *n, const jf_print_opts *opts, fm_buf *out, fm_err *e);

/*! jf_quote_py() : appends s[0..len) (UTF-8) as a Python json.dumps string
 *  literal with ensure_ascii: "\"" "\\" "\n" "\r" "\t" "\b" "\f" escaped,
 *  other characters outside 0x20..0x7e as \uXXXX (lowercase hex, surrogate
 *  pairs above U+FFFF).
 *  @return : 0, FM_EFORMAT for invalid UTF-8, FM_ENOMEM. */
int jf_quote_py(fm_buf *out, const char *s, size_t len, fm_err *e);

/*! jf_py_float_repr() : Python's repr() of a double ("1e-06", "10000.0",
 *  "-0.0", "1e+16", "inf" printed as json does: "Infinity", "NaN") into buf
 *  (32 bytes are always enough). Returns buf. */
const char *jf_py_float_repr(double v, char *buf, size_t len);

#endif
