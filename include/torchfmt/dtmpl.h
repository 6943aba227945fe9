/* dtmpl.h - rewrites the DTensors of an unpickled state dict for another
 * mesh, so that pkw_dump() writes what that run would have saved.
 *
 * The tree of one rank's data.pkl is the template: classes, field layout,
 * memo sharing and every field this module does not know about stay as
 * they were; only the fields that depend on the mesh and the rank are
 * replaced (new nodes, never shared ones edited in place): the local
 * tensor's view and storage size, the placements (and 2.9+'s shard_order),
 * and the DeviceMesh's shape, rank map, flattened rank list, rank,
 * coordinate and (2.6) per-dim group rank lists. DeviceMesh fields this
 * module does not recognise are refused (FM_EUNSUPPORTED): a mesh cannot be
 * resized without understanding every field that names ranks.
 */
#ifndef FM_DTMPL_H
#define FM_DTMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "torchfmt/pkl.h"
#include "torchfmt/tindex.h"

/* The parts of one pickled DTensor (all nodes of the template tree). */
typedef struct dtm_parts {
    pkl_value *slots;  /* the {'_local_tensor', '_spec'} dict */
    pkl_value *local;  /* _rebuild_tensor_v2(...) of the local tensor */
    pkl_value *spec;   /* DTensorSpec */
    pkl_value *mesh;   /* DeviceMesh */
} dtm_parts;

/* A mesh for the new run: sizes (row-major rank map 0..N-1) and this rank. */
typedef struct dtm_mesh {
    int ndim;
    int64_t shape[TI_MAX_MESH];
    int64_t rank;
} dtm_mesh;

/* A local tensor: view into a storage of storage_numel elements. */
typedef struct dtm_view {
    uint64_t storage_numel;
    int ndim;
    int64_t shape[TI_MAX_DIMS], stride[TI_MAX_DIMS];
    int64_t offset;
} dtm_view;

/*! dtm_match() : v is a pickled DTensor (_rebuild_from_type_v2 of a
 *  DTensor wrapper with _local_tensor and _spec); fills *p. */
bool dtm_match(pkl_value *v, dtm_parts *p);

/*! dtm_set_local() : the local tensor's offset, size, stride and its
 *  storage's element count. *storage_key (may be NULL) gets the record key
 *  ("0"), borrowed from the tree. */
int dtm_set_local(pkl_doc *doc, pkl_value *local, const dtm_view *v, const char **storage_key, fm_err *e);

/*! dtm_set_placements() : shard_dim[i] for mesh dim i (-1 keeps a
 *  Replicate(); d >= 0 is Shard(d)). Only Shard/Replicate may be present in
 *  the template and the kinds must stay; a changed dim gets a new Shard
 *  object (and shard_order entry) cloned from the old one. clear_hash
 *  sets the spec's cached _hash (a hash of the old mesh) to None, which
 *  torch recomputes on use. */
int dtm_set_placements(pkl_doc *doc, pkl_value *spec, const int *shard_dim, int n, bool clear_hash, fm_err *e);

/*! dtm_set_mesh() : rewrites the DeviceMesh for m (torch 2.6 layout: mesh
 *  tensor, _flatten_mesh_list, _dim_group_infos; 2.9-2.11 layout: _layout,
 *  _rank_map, _flatten_rank_map, _rank). *rank_storage_key gets the key of
 *  the storage that must now hold the ranks 0..N-1 (in *rank_dtype).
 *  @return : 0, FM_EUNSUPPORTED naming an unknown field or layout. */
int dtm_set_mesh(pkl_doc *doc, pkl_value *mesh, const dtm_mesh *m, const char **rank_storage_key, dt_type *rank_dtype,
                 fm_err *e);

/*! dtm_storage_of() : the persistent-id tuple items of a _rebuild_tensor_v2
 *  call: record key and element dtype (from the storage class). */
bool dtm_storage_of(const pkl_value *tensor, const char **key, dt_type *dtype);

#endif
