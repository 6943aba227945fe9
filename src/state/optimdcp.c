/* optimdcp.c - see optimdcp.h. */
#include "state/optimdcp.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "torchfmt/pkl.h"
#include "torchfmt/pyjson.h"

#define ODCP_MAX_PKL ((size_t)64 << 20)

/* The value of one item (a torch.save'd object or a 0-d tensor) as JSON. */
static cJSON *item_json(const dcp_meta *m, const char *dir, const dcp_chunk *c, unsigned flags, fm_err *e)
{
    char *path = dcp_file_path(m, dir, c->file);
    ptz_file *zip = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    pkl_doc *doc = pkl_doc_new();
    pkl_value *root = NULL;
    cJSON *j = NULL;
    int rc = path && doc ? ptz_open_at(path, flags, 0, c->offset, c->length, &zip, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = ptz_read_record(zip, "data.pkl", ODCP_MAX_PKL, &buf, &len, e);
    if (rc == 0) rc = pkl_load(doc, buf, len, NULL, &root, e);
    if (rc == 0) {
        pj_opts po = {zip, -1, -1, true, pkl_doc_node_count(doc)};
        j = pj_convert(root, &po, e);
    }
    free(buf);
    pkl_doc_free(doc);
    ptz_close(zip);
    free(path);
    return j;
}

static cJSON *group_of(cJSON *groups, long g)
{
    while (cJSON_GetArraySize(groups) <= g) cJSON_AddItemToArray(groups, cJSON_CreateObject());
    return cJSON_GetArrayItem(groups, (int)g);
}

/* "state.<fqn>.<st>" or "param_groups.<g>.<field>": where its JSON goes. */
static int place(const char *rest, cJSON *groups, cJSON *state, cJSON *v, fm_err *e)
{
    if (fm_starts_with(rest, "param_groups.")) {
        char *end = NULL;
        long g = strtol(rest + 13, &end, 10);
        if (end == rest + 13 || *end != '.' || g < 0 || g > 100000) return fm_fail(e, FM_EFORMAT, "bad param group key '%s'", rest);
        cJSON_AddItemToObject(group_of(groups, g), end + 1, v);
        return 0;
    }
    const char *dot = strrchr(rest, '.');
    if (!fm_starts_with(rest, "state.") || dot == NULL || dot <= rest + 6) {
        cJSON_Delete(v);
        return 0; /* something else under the entry: not part of the optimizer's state dict */
    }
    char *fqn = fm_strndup(rest + 6, (size_t)(dot - rest - 6));
    if (fqn == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    cJSON *per = cJSON_GetObjectItemCaseSensitive(state, fqn);
    if (per == NULL) cJSON_AddItemToObject(state, fqn, per = cJSON_CreateObject());
    cJSON_AddItemToObject(per, dot + 1, v);
    free(fqn);
    return 0;
}

int odcp_state_json(const dcp_meta *m, const char *dir, const char *entry, unsigned ptz_flags, fm_buf *out, fm_err *e)
{
    cJSON *j = cJSON_CreateObject(), *groups = cJSON_AddArrayToObject(j, "param_groups"),
          *state = cJSON_AddObjectToObject(j, "state");
    size_t el = strlen(entry);
    int rc = j && groups && state ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const dcp_key *k = &m->keys[i];
        if (strncmp(k->fqn, entry, el) != 0 || k->fqn[el] != '.' || (!k->bytes && k->ndim > 0) || k->nchunks != 1) continue;
        cJSON *v = item_json(m, dir, &k->chunks[0], ptz_flags, e);
        rc = v ? place(k->fqn + el + 1, groups, state, v, e) : fm_context(e, "key '%s'", k->fqn);
    }
    char *text = rc == 0 ? pj_print(j) : NULL;
    if (rc == 0 && text == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (text) fm_buf_puts(out, text);
    free(text);
    cJSON_Delete(j);
    return rc;
}
