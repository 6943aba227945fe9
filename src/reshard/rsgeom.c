/* rsgeom.c - see rsgeom.h. */
#include "reshard/rsgeom.h"

#include <stdio.h>
#include <string.h>

int rs_entry_shard(const ti_entry *en, int *mdim, int *dim, fm_err *e)
{
    int d = -1, n = 0;
    if (en->kind == TI_DTENSOR && en->mesh_ndim == 1 && sscanf(en->placements, "(Shard(dim=%d),)%n", &d, &n) == 1 &&
        en->placements[n] == '\0') {
        *mdim = 0;
    } else if (en->kind == TI_DTENSOR && en->mesh_ndim == 2 &&
               sscanf(en->placements, "(Replicate(),Shard(dim=%d),)%n", &d, &n) == 1 && en->placements[n] == '\0') {
        *mdim = 1;
    } else {
        return fm_fail(e, FM_EUNSUPPORTED,
                       "key '%s': %s%s cannot be resharded (only FSDP's Shard(d) on a 1-D mesh or "
                       "(Replicate(), Shard(d)) on an HSDP mesh)",
                       en->key, en->kind == TI_SHARDED ? "a ShardedTensor (FSDP1 without a device mesh)" :
                                en->kind == TI_PLAIN   ? "a plain tensor" : "placements ",
                       en->kind == TI_DTENSOR ? en->placements : "");
    }
    if (d < 0 || d >= en->ndim) return fm_fail(e, FM_EFORMAT, "key '%s': Shard(dim=%d) of a %d-D tensor", en->key, d, en->ndim);
    *dim = d;
    return 0;
}

int rs_verl_dim(int ndim, const int64_t *shape, int64_t s)
{
    for (int i = 0; i < ndim; i++)
        if (shape[i] % s == 0) return i;
    return 0;
}

int rs_detect_policy(const ti_index *ix, rs_policy *out, fm_err *e)
{
    bool any_dim = false, verl_ok = true, dim0_ok = true;
    const char *against_verl = NULL;
    for (size_t i = 0; i < ix->n; i++) {
        const ti_entry *en = &ix->entries[i];
        int mdim, d;
        FM_TRY(rs_entry_shard(en, &mdim, &d, e));
        if (d != 0) any_dim = true, dim0_ok = false;
        if (d != rs_verl_dim(en->ndim, en->gshape, en->mesh_shape[mdim])) {
            verl_ok = false;
            if (against_verl == NULL) against_verl = en->key;
        }
    }
    if (dim0_ok) *out = RS_PLACE_DIM0; /* also when verl's rule would give the same */
    else if (any_dim && verl_ok) *out = RS_PLACE_VERL;
    else
        return fm_fail(e, FM_EUNSUPPORTED,
                       "the input's placements follow neither Shard(0) nor verl's rule (key '%s'); pass --placement "
                       "dim0 or verl", against_verl ? against_verl : "?");
    return 0;
}

void rs_contig_strides(int ndim, const int64_t *shape, int64_t *stride)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= shape[i] > 1 ? shape[i] : 1;
    }
}

void rs_block_of(const rs_target *t, int64_t rank, const ti_entry *en, bool padded, rs_block *b)
{
    memset(b, 0, sizeof *b);
    int mdim = t->mesh_ndim - 1; /* the last mesh dim shards; an HSDP mesh replicates over dim 0 */
    int64_t s = t->mesh_shape[mdim];
    int64_t coord = rank % s;
    b->ndim = en->ndim;
    b->shard_dim = t->policy == RS_PLACE_VERL ? rs_verl_dim(en->ndim, en->gshape, s) : 0;
    memcpy(b->lshape, en->gshape, sizeof b->lshape);
    memcpy(b->sshape, en->gshape, sizeof b->sshape);
    int64_t start, len, l0;
    ti_chunk(en->gshape[b->shard_dim], s, coord, &start, &len);
    ti_chunk(en->gshape[b->shard_dim], s, 0, &start, &l0);
    ti_chunk(en->gshape[b->shard_dim], s, coord, &start, &len);
    b->goff[b->shard_dim] = start;
    b->lshape[b->shard_dim] = len;
    b->sshape[b->shard_dim] = padded ? l0 : len;
    b->storage_numel = 1;
    for (int i = 0; i < en->ndim; i++) b->storage_numel *= (uint64_t)b->sshape[i];
}
