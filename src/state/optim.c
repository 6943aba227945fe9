/* optim.c - see optim.h. */
#include "state/optim.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/pkl.h"
#include "torchfmt/pyjson.h"

#define OP_MAX_PKL (1u << 30)

typedef struct op_doc {
    pkl_doc *doc;
    pkl_value *root;
} op_doc;

static int load(ptz_file *zip, op_doc *d, fm_err *e)
{
    uint8_t *buf;
    size_t len;
    FM_TRY(ptz_read_record(zip, "data.pkl", OP_MAX_PKL, &buf, &len, e));
    d->doc = pkl_doc_new();
    int rc = d->doc ? pkl_load(d->doc, buf, len, NULL, &d->root, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    free(buf);
    if (rc) return fm_context(e, "data.pkl");
    if (pkl_as_dict(pkl_dict_get(pkl_as_dict(d->root), "state")) == NULL)
        return fm_fail(e, FM_EFORMAT, "not an optimizer state dict (no 'state' dict)");
    return 0;
}

static int64_t count_params(const pkl_value *root)
{
    size_t ng, np;
    pkl_value *const *groups = pkl_items(pkl_dict_get(pkl_as_dict(root), "param_groups"), &ng);
    int64_t n = 0;
    for (size_t g = 0; groups && g < ng; g++)
        if (pkl_items(pkl_dict_get(pkl_as_dict(groups[g]), "params"), &np)) n += (int64_t)np;
    return n;
}

static int add_state(ptz_file *zip, int rank, int64_t idx, const char *name, const pkl_value *v, ti_index *out,
                     fm_err *e)
{
    ti_entry en;
    memset(&en, 0, sizeof en);
    if (ti_parse(v, zip, rank, &en, e)) {
        ti_entry_free(&en);
        return fm_context(e, "state %" PRId64 " '%s'", idx, name);
    }
    if (en.ndim == 0) { /* step counters: they go to optimizer_state.json */
        ti_entry_free(&en);
        return 0;
    }
    en.key = fm_asprintf("%" PRId64 "/%s", idx, name);
    ti_entry *grown = realloc(out->entries, sizeof *grown * (out->n + 1));
    if (en.key == NULL || grown == NULL) {
        ti_entry_free(&en);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    out->entries = grown;
    out->entries[out->n++] = en;
    return 0;
}

int op_index(ptz_file *zip, int rank, ti_index *out, int64_t *nparams, fm_err *e)
{
    memset(out, 0, sizeof *out);
    op_doc d = {0};
    int rc = load(zip, &d, e);
    out->rank = rank;
    out->path = fm_strdup(ptz_path(zip));
    out->big_endian = ptz_big_endian(zip);
    const pkl_value *state = rc ? NULL : pkl_as_dict(pkl_dict_get(pkl_as_dict(d.root), "state"));
    for (size_t i = 0; state && i < state->u.dict.n && rc == 0; i++) {
        int64_t idx;
        const pkl_value *per = pkl_as_dict(state->u.dict.vals[i]);
        if (!pkl_get_int(state->u.dict.keys[i], &idx) || per == NULL) {
            rc = fm_fail(e, FM_EFORMAT, "optimizer state entry %zu is not {index: {name: value}}", i);
            break;
        }
        for (size_t k = 0; k < per->u.dict.n && rc == 0; k++) {
            const char *name = pkl_get_str(per->u.dict.keys[k]);
            if (name && ti_is_tensor(per->u.dict.vals[k])) rc = add_state(zip, rank, idx, name, per->u.dict.vals[k], out, e);
        }
    }
    *nparams = rc ? 0 : count_params(d.root);
    pkl_doc_free(d.doc);
    if (rc) ti_index_free(out);
    return rc;
}

/* ---- names ---- */

static int64_t index_of_key(const char *key, const char **state)
{
    char *slash;
    long long v = strtoll(key, &slash, 10);
    if (*slash != '/') return -1;
    *state = slash + 1;
    return (int64_t)v;
}

/* The global shape of index i's states (from rank 0's index), if it has any. */
static const ti_entry *state_of(const ti_index *opt0, int64_t i)
{
    for (size_t k = 0; k < opt0->n; k++) {
        const char *st;
        if (index_of_key(opt0->entries[k].key, &st) == i) return &opt0->entries[k];
    }
    return NULL;
}

static bool same_shape(const ti_entry *a, const ti_entry *b)
{
    return a->ndim == b->ndim && memcmp(a->gshape, b->gshape, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

/* Parameters of the model, in order: every key but a tied duplicate. */
static const ti_entry **model_params(const ti_index *model0, const char *dropped, size_t *n)
{
    const ti_entry **p = malloc(sizeof *p * (model0->n ? model0->n : 1));
    *n = 0;
    for (size_t i = 0; p && i < model0->n; i++)
        if (dropped == NULL || strcmp(model0->entries[i].key, dropped) != 0) p[(*n)++] = &model0->entries[i];
    return p;
}

static int match(const ti_index *opt0, const ti_entry **params, size_t np, int64_t nparams, const char **names,
                 char *warning, size_t wlen, fm_err *e)
{
    size_t j = 0;
    bool by_shape = (size_t)nparams != np;
    if ((size_t)nparams > np)
        return fm_fail(e, FM_EMISMATCH, "the optimizer has %" PRId64 " parameters but the model only %zu", nparams, np);
    for (int64_t i = 0; i < nparams; i++) {
        const ti_entry *s = state_of(opt0, i);
        if (!by_shape) {
            if (s && !same_shape(s, params[i])) {
                char a[128], b[128];
                return fm_fail(e, FM_EMISMATCH,
                               "optimizer parameter %" PRId64 " has shape %s but the model's parameter %" PRId64
                               " ('%s') has shape %s", i, ti_format_shape(s->ndim, s->gshape, a, sizeof a), i,
                               params[i]->key, ti_format_shape(params[i]->ndim, params[i]->gshape, b, sizeof b));
            }
            names[i] = params[i]->key;
            continue;
        }
        while (s && j < np && !same_shape(s, params[j])) j++;
        if (s && j == np)
            return fm_fail(e, FM_EMISMATCH, "optimizer parameter %" PRId64 " matches no remaining model parameter by shape", i);
        names[i] = s ? params[j++]->key : NULL;
    }
    if (by_shape)
        snprintf(warning, wlen,
                 "the optimizer covers %" PRId64 " of the model's %zu parameters (frozen ones have no state): "
                 "matched to parameters by shape, in order", nparams, np);
    return 0;
}

int op_name_states(ti_index *opt, int W, const ti_index *model0, const char *dropped, int64_t nparams,
                   const char ***names_out, char *warning, size_t wlen, fm_err *e)
{
    warning[0] = '\0';
    size_t np;
    const ti_entry **params = model_params(model0, dropped, &np);
    const char **names = calloc((size_t)(nparams > 0 ? nparams : 1), sizeof *names);
    int rc = (params && names) ? match(&opt[0], params, np, nparams, names, warning, wlen, e)
                               : fm_fail(e, FM_ENOMEM, "out of memory");
    for (int r = 0; r < W && rc == 0; r++) {
        for (size_t k = 0; k < opt[r].n && rc == 0; k++) {
            const char *st;
            int64_t i = index_of_key(opt[r].entries[k].key, &st);
            if (i < 0 || i >= nparams || names[i] == NULL) {
                rc = fm_fail(e, FM_EMISMATCH, "rank %d: optimizer state '%s' belongs to no known parameter", r,
                             opt[r].entries[k].key);
                break;
            }
            char *key = fm_asprintf("%s.%s", names[i], st);
            if (key == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
            else {
                free(opt[r].entries[k].key);
                opt[r].entries[k].key = key;
            }
        }
    }
    free(params);
    if (rc) {
        free(names);
        names = NULL;
    }
    *names_out = names;
    return rc;
}

/* ---- optimizer_state.json ---- */

static cJSON *groups_json(const pkl_value *root, const pj_opts *po, const char *const *names, int64_t nparams, fm_err *e)
{
    size_t ng;
    pkl_value *const *groups = pkl_items(pkl_dict_get(pkl_as_dict(root), "param_groups"), &ng);
    cJSON *arr = cJSON_CreateArray();
    for (size_t g = 0; arr && groups && g < ng; g++) {
        cJSON *gj = pj_convert(groups[g], po, e);
        if (gj == NULL) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON *params = cJSON_GetObjectItemCaseSensitive(gj, "params"), *named = cJSON_CreateArray();
        for (cJSON *p = params ? params->child : NULL; p; p = p->next) {
            long long i = strtoll(p->valuestring ? p->valuestring : "-1", NULL, 10); /* ints are raw tokens */
            const char *n = i >= 0 && i < nparams ? names[i] : NULL;
            cJSON_AddItemToArray(named, n ? cJSON_CreateString(n) : cJSON_CreateNull());
        }
        if (params) cJSON_ReplaceItemInObjectCaseSensitive(gj, "params", named);
        else cJSON_Delete(named);
        cJSON_AddItemToArray(arr, gj);
    }
    return arr;
}

static cJSON *scalar_states_json(const pkl_value *root, const pj_opts *po, const char *const *names, int64_t nparams,
                                 fm_err *e)
{
    const pkl_value *state = pkl_as_dict(pkl_dict_get(pkl_as_dict(root), "state"));
    cJSON *out = cJSON_CreateObject();
    for (size_t i = 0; out && state && i < state->u.dict.n; i++) {
        int64_t idx;
        const pkl_value *per = pkl_as_dict(state->u.dict.vals[i]);
        if (!pkl_get_int(state->u.dict.keys[i], &idx) || per == NULL || idx < 0 || idx >= nparams || !names[idx]) continue;
        cJSON *pj = cJSON_CreateObject();
        for (size_t k = 0; k < per->u.dict.n; k++) {
            const pkl_value *v = per->u.dict.vals[k];
            const char *sn = pkl_get_str(per->u.dict.keys[k]);
            ti_entry en;
            memset(&en, 0, sizeof en);
            bool scalar = !ti_is_tensor(v) || (ti_parse(v, po->zip, 0, &en, e) == 0 && en.ndim == 0);
            ti_entry_free(&en);
            fm_err_clear(e);
            if (!sn || !scalar) continue;
            cJSON *x = pj_convert(v, po, e);
            if (x) cJSON_AddItemToObject(pj, sn, x);
        }
        cJSON_AddItemToObject(out, names[idx], pj);
    }
    return out;
}

int op_state_json(ptz_file *zip0, const char *const *names, int64_t nparams, fm_buf *out, fm_err *e)
{
    op_doc d = {0};
    FM_TRY(load(zip0, &d, e));
    pj_opts po = {zip0, 0, -1, true, pkl_doc_node_count(d.doc)};
    cJSON *j = cJSON_CreateObject();
    cJSON *g = groups_json(d.root, &po, names, nparams, e);
    cJSON *s = g ? scalar_states_json(d.root, &po, names, nparams, e) : NULL;
    int rc = 0;
    if (j && g && s) {
        cJSON_AddItemToObject(j, "param_groups", g);
        cJSON_AddItemToObject(j, "state", s);
        char *text = pj_print(j);
        if (text) fm_buf_puts(out, text);
        else rc = fm_fail(e, FM_ENOMEM, "out of memory");
        free(text);
    } else {
        cJSON_Delete(g);
        cJSON_Delete(s);
        rc = e->code ? e->code : fm_fail(e, FM_ENOMEM, "out of memory");
    }
    cJSON_Delete(j);
    pkl_doc_free(d.doc);
    return rc;
}
