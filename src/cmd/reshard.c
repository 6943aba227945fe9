/* reshard.c - the reshard command (see reshard.h). */
#include "cmd/reshard.h"

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "base/comm.h"
#include "base/outdir.h"
#include "base/util.h"
#include "ckpt/ckpt.h"
#include "hf/jsonfmt.h"
#include "plan/plan.h"
#include "reshard/rsfile.h"
#include "reshard/rsgeom.h"
#include "state/optim.h"
#include "torchfmt/ptz.h"

static const char *const KIND_NAME[] = {"model", "optim", "extra_state"};

typedef struct kindset {
    bool present;
    ptz_file **zips; /* [W] */
    ti_index *ix;    /* [W], NULL for extra_state */
} kindset;

typedef struct rrun {
    const cli_opts *o;
    MPI_Comm comm;
    FILE *out;
    int me, nprocs, W;
    ck_layout layout;
    kindset k[3];
    rs_target t;
    od_state od;
    char tmp[PATH_MAX];
    uint64_t bytes;
} rrun;

static bool talk(const rrun *r) { return r->me == 0 && !r->o->quiet; }

static int discover(rrun *r, fm_err *e)
{
    FM_TRY(ck_discover(r->o->checkpoint, r->o->actor_dir, 0, &r->layout, e));
    r->W = r->layout.world_size;
    for (int k = 0; k < 3; k++) {
        char *p = ck_rank_file(&r->layout, KIND_NAME[k], 0);
        if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        r->k[k].present = fm_path_is_file(p);
        free(p);
    }
    if (!r->k[RS_MODEL].present) return fm_fail(e, FM_EIO, "no model rank files in %s", r->layout.actor_dir);
    bool fsdp1 = r->layout.fsdp_version == 1;
    if (r->o->optimizer && fsdp1)
        return fm_fail(e, FM_EUNSUPPORTED,
                       "--optimizer: FSDP1 optimizer files hold flat per-rank shards that cannot be split per "
                       "parameter; reshard the model alone (without --optimizer)");
    if (r->o->optimizer && !r->k[RS_OPTIM].present)
        return fm_fail(e, FM_EIO, "--optimizer: no optim_world_size_%d_rank_*.pt in %s", r->W, r->layout.actor_dir);
    if (fsdp1) r->k[RS_OPTIM].present = false;
    return 0;
}

static int open_kind(rrun *r, int k, fm_err *e)
{
    kindset *ks = &r->k[k];
    ks->zips = calloc((size_t)r->W, sizeof *ks->zips);
    if (k != RS_EXTRA) ks->ix = calloc((size_t)r->W, sizeof *ks->ix);
    if (ks->zips == NULL || (k != RS_EXTRA && ks->ix == NULL)) return fm_fail(e, FM_ENOMEM, "out of memory");
    size_t rbuf = (size_t)FM_MAX(64u << 10, FM_MIN(4u << 20, r->o->buffer_size / 4 / (uint64_t)r->W));
    for (int q = 0; q < r->W; q++) {
        char *path = ck_rank_file(&r->layout, KIND_NAME[k], q);
        int rc = path ? ptz_open(path, r->o->no_crc ? PTZ_NO_CRC : 0, rbuf, &ks->zips[q], e)
                      : fm_fail(e, FM_ENOMEM, "out of memory");
        free(path);
        FM_TRY(rc);
        if (ptz_big_endian(ks->zips[q]))
            return fm_fail(e, FM_EUNSUPPORTED, "%s: big-endian files are not resharded", ptz_path(ks->zips[q]));
        int64_t np;
        if (k == RS_MODEL) rc = ti_load(ks->zips[q], q, &ks->ix[q], e);
        else if (k == RS_OPTIM) rc = op_index(ks->zips[q], q, &ks->ix[q], &np, e);
        if (rc) return fm_context(e, "%s", ptz_path(ks->zips[q]));
    }
    if (k == RS_EXTRA) return 0;
    /* the plan checks what a merge checks: same keys and shapes, blocks tiling each tensor once */
    plan pl;
    plan_opts po = {.world_size = r->W, .nprocs = 1, .out_dtype = DT_INVALID, .max_shard_size = UINT64_MAX / 4};
    FM_TRY(plan_build(ks->ix, &po, &pl, e));
    plan_free(&pl);
    return 0;
}

/* The new mesh: N ranks, 1-D; an HSDP input keeps its replica count unless --mesh. */
static int target(rrun *r, fm_err *e)
{
    const ti_index *ix0 = &r->k[RS_MODEL].ix[0];
    if (ix0->n == 0) return fm_fail(e, FM_EFORMAT, "%s holds no tensors", ix0->path);
    const ti_entry *en = &ix0->entries[0];
    int mdim, d, N = r->o->world_size;
    FM_TRY(rs_entry_shard(en, &mdim, &d, e));
    rs_target *t = &r->t;
    t->mesh_ndim = en->mesh_ndim;
    t->world = N;
    if (en->mesh_ndim == 1) {
        if (r->o->mesh_r > 1) return fm_fail(e, FM_EUSAGE, "--mesh: the input's mesh is 1-D (not HSDP)");
        t->mesh_shape[0] = N;
    } else {
        int64_t rep = r->o->mesh_r ? r->o->mesh_r : en->mesh_shape[0];
        if (r->o->mesh_r && (int64_t)r->o->mesh_r * r->o->mesh_s != N)
            return fm_fail(e, FM_EUSAGE, "--mesh %d,%d does not have --world-size %d ranks", r->o->mesh_r, r->o->mesh_s, N);
        if (N % rep != 0)
            return fm_fail(e, FM_EUSAGE, "the input's HSDP mesh has %" PRId64 " replicas, which do not divide %d ranks; "
                           "pass --mesh R,S", rep, N);
        t->mesh_shape[0] = rep;
        t->mesh_shape[1] = N / rep;
    }
    if (r->o->placement) t->policy = r->o->placement == 1 ? RS_PLACE_DIM0 : RS_PLACE_VERL;
    else FM_TRY(rs_detect_policy(ix0, &t->policy, e));
    return 0;
}

static int prepare_out(rrun *r, fm_err *e)
{
    int rc = 0;
    if (r->me == 0) {
        rc = od_prepare(r->o->output, r->o->force, &r->od, e);
        if (rc == 0) {
            char *base = fm_path_basename(r->layout.actor_dir);
            char *dir = base ? fm_path_join(od_temp_path(&r->od), base) : NULL;
            rc = dir ? fm_mkdir_p(dir, e) : fm_fail(e, FM_ENOMEM, "out of memory");
            if (rc == 0) snprintf(r->tmp, sizeof r->tmp, "%s", dir);
            free(base);
            free(dir);
        }
    }
    FM_TRY(comm_agree_all(e, r->comm));
    MPI_Bcast(r->tmp, (int)sizeof r->tmp, MPI_CHAR, 0, r->comm);
    return 0;
}

static int write_mine(rrun *r, fm_err *e)
{
    int N = r->o->world_size;
    size_t buf = (size_t)FM_MAX(64u << 10, r->o->buffer_size / 4);
    /* FSDP2 saves parameters as views of padded chunk-0 buffers; FSDP1's
     * chunks and the optimizer's zeros_like moments are exact (rs_padded
     * follows the input where a short block shows which) */
    for (int n = r->me; n < N; n += r->nprocs)
        for (int k = 0; k < 3; k++) {
            if (!r->k[k].present) continue;
            rs_source s = {.kind = (rs_kind)k, .world = r->W, .zips = r->k[k].zips, .ix = r->k[k].ix,
                           .padded_default = k == RS_MODEL && r->layout.fsdp_version != 1};
            char *prefix = fm_asprintf("%s_world_size_%d_rank_%d", KIND_NAME[k], N, n);
            char *name = prefix ? fm_asprintf("%s.pt", prefix) : NULL;
            char *path = name ? fm_path_join(r->tmp, name) : NULL;
            int rc = path ? rs_write_rank(&s, &r->t, n, path, prefix, buf, &r->bytes, e)
                          : fm_fail(e, FM_ENOMEM, "out of memory");
            free(prefix);
            free(name);
            free(path);
            FM_TRY(rc);
        }
    return 0;
}

static bool is_rank_file(const char *name)
{
    for (int k = 0; k < 3; k++)
        if (fm_starts_with(name, KIND_NAME[k]) && strstr(name, "_world_size_") && strstr(name, "_rank_") &&
            fm_ends_with(name, ".pt"))
            return true;
    return false;
}

/* Copies src into dst: regular files, and folders recursively when deep. */
static int copy_tree(const char *src, const char *dst, bool deep, bool skip_ranks, fm_err *e)
{
    DIR *d = opendir(src);
    if (d == NULL) return fm_fail(e, FM_EIO, "cannot read folder %s", src);
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0) continue;
        if (skip_ranks && (is_rank_file(n) || strcmp(n, "fsdp_config.json") == 0)) continue;
        char *s = fm_path_join(src, n), *t = fm_path_join(dst, n);
        if (s == NULL || t == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
        else if (fm_path_is_file(s)) rc = fm_copy_file(s, t, e);
        else if (deep && fm_path_is_dir(s)) {
            rc = fm_mkdir_p(t, e);
            if (rc == 0) rc = copy_tree(s, t, true, false, e);
        }
        free(s);
        free(t);
    }
    closedir(d);
    return rc;
}

static int write_fsdp_config(rrun *r, fm_err *e)
{
    char *in = fm_path_join(r->layout.actor_dir, "fsdp_config.json");
    char *text = NULL, *outp = fm_path_join(r->tmp, "fsdp_config.json");
    size_t len = 0, off = 0;
    jf_node *root = NULL;
    fm_buf b = {0};
    char num[24];
    snprintf(num, sizeof num, "%d", r->o->world_size);
    int rc = in && outp ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0 && fm_path_is_file(in)) {
        rc = fm_read_file(in, 1 << 20, &text, &len, e);
        if (rc == 0) rc = jf_parse(text, len, JF_DEFAULT_MAX_DEPTH, &root, &off, e);
        if (rc == 0) rc = jf_set(root, "world_size", num, strlen(num), e);
        jf_print_opts po = {.indent = 4};
        if (rc == 0) rc = jf_print(root, &po, &b, e);
        if (rc == 0) rc = fm_write_file(outp, b.data, b.len, e);
        if (rc) fm_context(e, "%s", in);
    }
    jf_free(root);
    fm_buf_free(&b);
    free(text);
    free(in);
    free(outp);
    return rc;
}

/* verl's tracker file next to a step folder, so that training resumes from OUT's parent. */
static int write_tracker(rrun *r, fm_err *e)
{
    char *base = fm_path_basename(r->o->output);
    bool step = base && fm_starts_with(base, "global_step_");
    free(base);
    char *step_in = fm_path_dirname(r->layout.actor_dir);
    char *root_in = step_in ? fm_path_dirname(step_in) : NULL;
    char *src = root_in ? fm_path_join(root_in, "latest_checkpointed_iteration.txt") : NULL;
    char *root_out = fm_path_dirname(r->o->output);
    char *dst = root_out ? fm_path_join(root_out, "latest_checkpointed_iteration.txt") : NULL;
    int rc = 0;
    if (step && src && dst && fm_path_is_file(src) && (r->o->force || !fm_path_exists(dst))) rc = fm_copy_file(src, dst, e);
    free(step_in);
    free(root_in);
    free(src);
    free(root_out);
    free(dst);
    return rc;
}

static int finish(rrun *r, fm_err *e)
{
    int rc = 0;
    if (r->me == 0) {
        rc = write_fsdp_config(r, e);
        if (rc == 0) rc = copy_tree(r->layout.actor_dir, r->tmp, true, true, e);
        char *step = fm_path_dirname(r->layout.actor_dir);
        char *given = fm_strdup(r->o->checkpoint);
        /* the step folder's own files (data.pt), when the checkpoint was named by its step folder */
        if (rc == 0 && step && given && strcmp(given, r->layout.actor_dir) != 0 && fm_path_is_dir(step))
            rc = copy_tree(step, od_temp_path(&r->od), false, false, e);
        free(step);
        free(given);
        if (rc == 0) rc = od_commit(&r->od, r->o->force, !r->o->no_fsync, e);
        if (rc == 0) rc = write_tracker(r, e);
    }
    return comm_agree_all(e, r->comm);
}

static void cleanup(rrun *r)
{
    for (int k = 0; k < 3; k++) {
        for (int q = 0; r->k[k].zips && q < r->W; q++) ptz_close(r->k[k].zips[q]);
        for (int q = 0; r->k[k].ix && q < r->W; q++) ti_index_free(&r->k[k].ix[q]);
        free(r->k[k].zips);
        free(r->k[k].ix);
    }
    od_abort(&r->od);
    ck_layout_free(&r->layout);
}

int rs_run_all(const cli_opts *o, MPI_Comm comm, FILE *out, fm_err *e)
{
    rrun r = {.o = o, .comm = comm, .out = out};
    MPI_Comm_rank(comm, &r.me);
    MPI_Comm_size(comm, &r.nprocs);
    double t0 = MPI_Wtime();
    discover(&r, e);
    int rc = comm_agree_all(e, comm);
    if (rc == 0 && r.nprocs > FM_MAX(r.W, o->world_size))
        rc = fm_fail(e, FM_EUSAGE, "%d processes for %d input and %d output ranks: use at most %d", r.nprocs, r.W,
                     o->world_size, FM_MAX(r.W, o->world_size));
    for (int k = 0; rc == 0 && k < 3; k++) {
        if (r.k[k].present) open_kind(&r, k, e);
        rc = comm_agree_all(e, comm);
    }
    if (rc == 0) {
        target(&r, e);
        rc = comm_agree_all(e, comm);
    }
    if (rc == 0 && talk(&r)) {
        char mesh[64];
        int n = snprintf(mesh, sizeof mesh, "%" PRId64, r.t.mesh_shape[0]);
        if (r.t.mesh_ndim == 2) snprintf(mesh + n, sizeof mesh - (size_t)n, ",%" PRId64, r.t.mesh_shape[1]);
        fprintf(out, "resharding %s: %d -> %d ranks (mesh [%s], %s placement)%s%s\n", r.layout.actor_dir, r.W,
                o->world_size, mesh, r.t.policy == RS_PLACE_VERL ? "verl" : "dim0",
                r.k[RS_OPTIM].present ? ", optimizer" : "", r.k[RS_EXTRA].present ? ", extra_state" : "");
    }
    if (rc == 0) rc = prepare_out(&r, e);
    if (rc == 0) {
        write_mine(&r, e);
        rc = comm_agree_all(e, comm);
    }
    if (rc == 0) rc = finish(&r, e);
    uint64_t total = 0;
    if (rc == 0) MPI_Reduce(&r.bytes, &total, 1, MPI_UINT64_T, MPI_SUM, 0, comm);
    if (rc == 0 && talk(&r)) {
        char b[32];
        fprintf(out, "wrote %s: %d ranks, %s of storages in %.2f s\n", o->output, o->world_size,
                fm_format_bytes(total, b, sizeof b), MPI_Wtime() - t0);
        if (r.layout.fsdp_version == 1 && !o->optimizer)
            fprintf(out, "note: FSDP1 optimizer files (flat shards) were not resharded\n");
    }
    cleanup(&r);
    return rc;
}
