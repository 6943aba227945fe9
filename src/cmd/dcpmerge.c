/* dcpmerge.c - see dcpmerge.h. */
#include "cmd/dcpmerge.h"

#include <stdlib.h>
#include <string.h>

#include "base/comm.h"
#include "base/util.h"
#include "ckpt/dcpdir.h"
#include "state/optimdcp.h"

#define DM_MAX_METADATA ((size_t)1 << 30)

typedef struct found {
    char *dir, *hf, *meta;
    size_t meta_len;
} found;

static int find_at_root(const cli_opts *o, found *f, fm_err *e)
{
    FM_TRY(ck_find_dcp(o->checkpoint, &f->dir, e));
    if (f->dir == NULL) {
        if (o->dcp_key || o->hf_config)
            return fm_fail(e, FM_EUSAGE, "--%s: %s is not a DCP checkpoint (no .metadata)",
                           o->dcp_key ? "dcp-key" : "hf-config", o->checkpoint);
        return 0;
    }
    char *path = fm_path_join(f->dir, DCP_METADATA);
    int rc = path ? fm_read_file(path, DM_MAX_METADATA, &f->meta, &f->meta_len, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    free(path);
    if (rc == 0) rc = ck_dcp_hf_dir(f->dir, o->hf_config, &f->hf, e);
    return rc;
}

static int bcast_text(char **s, size_t *len, MPI_Comm comm, fm_err *e)
{
    int me;
    MPI_Comm_rank(comm, &me);
    uint64_t n = me == 0 ? (*s ? *len + 1 : 0) : 0;
    MPI_Bcast(&n, 1, MPI_UINT64_T, 0, comm);
    if (n > (uint64_t)INT32_MAX) return fm_fail(e, FM_EUNSUPPORTED, ".metadata over 2 GiB");
    if (me != 0) {
        *s = n ? malloc(n) : NULL;
        if (n && *s == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    if (n) MPI_Bcast(*s, (int)n, MPI_CHAR, 0, comm);
    *len = n ? n - 1 : 0;
    return 0;
}

static int share(found *f, MPI_Comm comm, fm_err *e)
{
    size_t n = f->dir ? strlen(f->dir) : 0, h = f->hf ? strlen(f->hf) : 0;
    FM_TRY(bcast_text(&f->dir, &n, comm, e));
    FM_TRY(bcast_text(&f->hf, &h, comm, e));
    return bcast_text(&f->meta, &f->meta_len, comm, e);
}

static int fill_layout(const cli_opts *o, found *f, ck_layout *l, dm_state *d, fm_err *e)
{
    char *what = fm_path_join(f->dir, DCP_METADATA);
    if (what == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    int rc = dcp_meta_parse((const uint8_t *)f->meta, f->meta_len, what, &d->meta, e);
    free(what);
    FM_TRY(rc);
    FM_TRY(dcp_select(&d->meta, o->dcp_key, &d->prefix, e));
    if (d->meta.nfiles == 0) return fm_fail(e, FM_EFORMAT, "%s/.metadata names no data files", f->dir);
    if (o->world_size && (size_t)o->world_size != d->meta.nfiles)
        return fm_fail(e, FM_EMISMATCH, "--world-size %d but %s holds %zu data files", o->world_size, f->dir,
                       d->meta.nfiles);
    l->actor_dir = f->dir;
    l->hf_dir = f->hf;
    f->dir = f->hf = NULL;
    l->world_size = (int)d->meta.nfiles;
    d->on = true;
    return 0;
}

int dm_discover_all(const cli_opts *o, MPI_Comm comm, ck_layout *l, dm_state *d, fm_err *e)
{
    int me;
    MPI_Comm_rank(comm, &me);
    found f = {0};
    memset(d, 0, sizeof *d);
    if (me == 0) find_at_root(o, &f, e);
    int rc = comm_agree_all(e, comm);
    if (rc == 0) rc = share(&f, comm, e);
    if (rc == 0 && f.dir) fill_layout(o, &f, l, d, e);
    if (rc == 0) rc = comm_agree_all(e, comm);
    free(f.dir);
    free(f.hf);
    free(f.meta);
    return rc;
}

int dm_open(const cli_opts *o, const ck_layout *l, const dm_state *d, const char *prefix, int k, size_t read_buffer,
            ptz_file **zip, ti_index *ix, fm_err *e)
{
    int rc = dcp_file_index(&d->meta, l->actor_dir, k, prefix, o->no_crc ? PTZ_NO_CRC : 0, read_buffer, zip, ix, e);
    return rc ? fm_context(e, "data file %d", k) : 0;
}

/* 0-d states (step) go to optimizer_state.json, as on the verl path */
static void drop_scalars(ti_index *ix)
{
    size_t k = 0;
    for (size_t i = 0; i < ix->n; i++) {
        if (ix->entries[i].ndim == 0) ti_entry_free(&ix->entries[i]);
        else ix->entries[k++] = ix->entries[i];
    }
    ix->n = k;
}

int dm_open_optim(const cli_opts *o, const ck_layout *l, const dm_state *d, int k, ptz_file **zip, ti_index *ix, fm_err *e)
{
    FM_TRY(dm_open(o, l, d, DM_OPTIM_STATE, k, 1u << 20, zip, ix, e));
    drop_scalars(ix);
    if (ix->n == 0 && k == 0) /* every file has every key (possibly without chunks) */
        return fm_fail(e, FM_EUNSUPPORTED, "--optimizer: %s holds no optimizer state ('%s' keys)", l->actor_dir,
                       DM_OPTIM_STATE);
    return 0;
}

int dm_optim_json(const cli_opts *o, const ck_layout *l, const dm_state *d, fm_buf *out, fm_err *e)
{
    return odcp_state_json(&d->meta, l->actor_dir, DM_OPTIM_ENTRY, o->no_crc ? PTZ_NO_CRC : 0, out, e);
}

void dm_free(dm_state *d)
{
    dcp_meta_free(&d->meta);
    free(d->prefix);
    memset(d, 0, sizeof *d);
}
