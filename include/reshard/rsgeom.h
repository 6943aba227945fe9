/* rsgeom.h - where a tensor's block lies for a new rank of a new mesh.
 *
 * The input's DTensors are FSDP2/FSDP1 shards: a 1-D mesh with Shard(d), or
 * an HSDP 2-D mesh with (Replicate(), Shard(d)). The new mesh keeps that
 * structure; its shard dim has S ranks. Blocks follow torch.chunk on the
 * shard dim (ceil(n/S) per rank, trailing ranks short or empty). The
 * storage behind the block is either FSDP2's padded chunk-0 buffer (model
 * parameters) or exactly the block (optimizer moments made by zeros_like).
 */
#ifndef FM_RSGEOM_H
#define FM_RSGEOM_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "torchfmt/tindex.h"

typedef enum rs_policy {
    RS_PLACE_AUTO = 0, /* as the input shows */
    RS_PLACE_DIM0,     /* Shard(0) always (FSDP2's default) */
    RS_PLACE_VERL      /* verl's shard_placement_fn: the first dim divisible by S, else 0 */
} rs_policy;

typedef struct rs_target {
    int mesh_ndim;                  /* 1, or 2 for HSDP (mesh dim 0 replicates) */
    int64_t mesh_shape[TI_MAX_MESH];
    int64_t world;                  /* product of mesh_shape */
    rs_policy policy;               /* DIM0 or VERL once decided */
} rs_target;

typedef struct rs_block {
    int ndim;
    int shard_dim;                  /* tensor dim the shard mesh dim splits */
    int64_t goff[TI_MAX_DIMS];      /* the block's offset in the global tensor */
    int64_t lshape[TI_MAX_DIMS];    /* the block's (local tensor's) shape */
    int64_t sshape[TI_MAX_DIMS];    /* the storage, row-major: padded chunk 0, or lshape */
    uint64_t storage_numel;
} rs_block;

/*! rs_entry_shard() : an input entry's shard: *mdim the mesh dim that
 *  shards, *dim the tensor dim. FM_EUNSUPPORTED for anything but Shard(d)
 *  on a 1-D mesh or (Replicate(), Shard(d)) on a 2-D one. */
int rs_entry_shard(const ti_entry *en, int *mdim, int *dim, fm_err *e);

/*! rs_verl_dim() : verl's rule: the first dim divisible by s, else 0. */
int rs_verl_dim(int ndim, const int64_t *shape, int64_t s);

/*! rs_detect_policy() : the rule the input's placements follow (its shard
 *  count is en->mesh_shape of the shard dim): RS_PLACE_VERL when some
 *  tensor is Shard(d > 0) and all agree with verl's rule, RS_PLACE_DIM0
 *  when all are Shard(0). FM_EUNSUPPORTED when neither rule explains them. */
int rs_detect_policy(const ti_index *ix, rs_policy *out, fm_err *e);

/*! rs_block_of() : the block of mesh rank `rank` for entry en. */
void rs_block_of(const rs_target *t, int64_t rank, const ti_entry *en, bool padded, rs_block *b);

/*! rs_contig_strides() : torch's contiguous strides (sizes of 0 count as 1). */
void rs_contig_strides(int ndim, const int64_t *shape, int64_t *stride);

#endif
