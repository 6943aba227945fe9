/* ckpt.h - finding the pieces of a verl checkpoint on disk.
 *
 * A step folder (global_step_N) holds actor/ (or critic/ ...) with
 * model_world_size_W_rank_R.pt for R = 0..W-1, fsdp_config.json
 * ({"FSDP_version": 1|2, "world_size": W}) and huggingface/ (config,
 * tokenizer). Older verl wrote config.json straight into actor/ and no
 * fsdp_config.json. The user may name the step folder or the actor folder.
 */
#ifndef FM_CKPT_H
#define FM_CKPT_H

#include <stdbool.h>

#include "base/err.h"

typedef struct ck_layout {
    char *actor_dir;    /* folder holding the rank files */
    char *hf_dir;       /* folder with config.json, NULL when there is none */
    int world_size;
    int fsdp_version;   /* from fsdp_config.json, 0 when unknown */
    bool ws_from_config;/* fsdp_config.json gave the world size */
    char *shard_template; /* NULL, or where the rank files are (%w, %r, %k) */
} ck_layout;

/*! ck_discover() : resolves ckpt (step or actor folder) and checks that the
 *  rank files 0..W-1 all exist, that no other world size or extra rank is
 *  there, and that fsdp_config.json and world_size (0 = not given) agree
 *  with the file names. Errors name the folder and the missing rank
 *  ("missing checkpoint for rank 2: ... does not exist"). */
int ck_discover(const char *ckpt, const char *actor_name, int world_size, ck_layout *out, fm_err *e);

/*! ck_discover_template() : for rank files that are not next to the
 *  checkpoint (--shard-template): finds the actor folder (for config and
 *  tokenizer) and the world size from world_size or fsdp_config.json; the
 *  rank files themselves are checked by the processes that open them. */
int ck_discover_template(const char *ckpt, const char *actor_name, const char *tmpl, int world_size, ck_layout *out,
                         fm_err *e);

/*! ck_read_fsdp_config() : world_size and FSDP_version from a
 *  fsdp_config.json (0 for absent fields); FM_EFORMAT when malformed. */
int ck_read_fsdp_config(const char *path, int *world_size, int *fsdp_version, fm_err *e);

/*! ck_rank_file() : malloc'd "<actor>/<kind>_world_size_W_rank_R.pt" for
 *  kind "model", "optim" or "extra_state", or the template expanded. */
char *ck_rank_file(const ck_layout *l, const char *kind, int rank);

void ck_layout_free(ck_layout *l);

#endif
