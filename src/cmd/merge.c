/* merge.c - the merge command (see merge.h). */
#include "cmd/merge.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt/ckpt.h"
#include "base/comm.h"
#include "base/fsspace.h"
#include "base/watchdog.h"
#include "state/extrastate.h"
#include "engine/h5out.h"
#include "hf/hfdir.h"
#include "state/optim.h"
#include "base/outdir.h"
#include "plan/plan.h"
#include "base/progress.h"
#include "torchfmt/ptz.h"
#include "cmd/report.h"
#include "torchfmt/tindex.h"
#include "base/util.h"
#include "engine/xfer.h"
#include "cmd/lorarun.h"
#include "engine/lorax.h"
#include "cmd/dcpmerge.h"
#include "cmd/check.h"
#include "cmd/manifest.h"
#include "cmd/verify.h"
#include "base/crc32c.h"

#define RULE "======================================================================"

typedef struct run {
    const cli_opts *o;
    MPI_Comm comm;
    FILE *out;
    int me, nprocs, writer;
    bool talk;              /* rank 0 and not --quiet */
    bool direct;            /* direct (MPI-IO by every process) or gather mode */
    const char *why;        /* why the mode was chosen, for the banner */
    char *tmpdir;           /* the temporary output folder, known to every process */
    MPI_Info info;          /* MPI-IO hints */
    ck_layout layout;
    ptz_file **zips;        /* [W], open for my ranks */
    ti_index *ix;           /* [W], all ranks after the exchange */
    char *config;           /* config.json text, NULL when there is none */
    size_t config_len;
    hf_config_info cfg;
    plan pl;
    od_state od;
    pg_bar bar;
    rp_times times;
    xf_stats xs;
    lrun lora;              /* a PEFT LoRA checkpoint (cmd/lorarun.h) */
    dm_state dcp;           /* a DCP checkpoint (dcp.on) */
    bool dry;               /* the check command: read and plan, write nothing */
    uint32_t *crc;          /* per tensor of pl: CRC-32C as converted (manifest, --verify), or NULL */
} run;

static void say(run *r, const char *fmt, ...) FM_PRINTF(2, 3);
static void say(run *r, const char *fmt, ...)
{
    if (!r->talk) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(r->out, fmt, ap);
    va_end(ap);
    fflush(r->out);
}

/* ---- broadcasting small things from one process ---- */

static int bcast_bytes(char **buf, size_t *len, int root, MPI_Comm comm, fm_err *e)
{
    int me;
    MPI_Comm_rank(comm, &me);
    uint64_t n = me == root ? (*buf ? *len + 1 : 0) : 0;
    MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm);
    if (me != root) {
        *buf = NULL;
        *len = 0;
        if (n) {
            *buf = malloc(n);
            if (*buf == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        }
    }
    if (n > (uint64_t)INT32_MAX) return fm_fail(e, FM_EUNSUPPORTED, "metadata over 2 GiB");
    if (n) MPI_Bcast(*buf, (int)n, MPI_CHAR, root, comm);
    if (me != root && n) *len = n - 1;
    return 0;
}

static int bcast_str(char **s, int root, MPI_Comm comm, fm_err *e)
{
    size_t len = *s ? strlen(*s) : 0;
    return bcast_bytes(s, &len, root, comm, e);
}

/* ---- phase 1: discover ---- */

/* Can every process see the writer's temporary folder? (direct mode needs
 * it: a shared file system). The writer drops a file with a random token in
 * it; every process reads it back. */
static int probe_shared(run *r, bool *shared, fm_err *e)
{
    char token[64] = "", *path = NULL;
    if (r->me == r->writer) {
        snprintf(token, sizeof token, "%ld-%.0f", (long)getpid(), MPI_Wtime() * 1e6);
        path = fm_path_join(r->tmpdir, ".fsdpmerge-probe");
        if (path == NULL || fm_write_file(path, token, strlen(token), e)) fm_context(e, "probing the output folder");
    }
    FM_TRY(comm_agree_all(e, r->comm));
    MPI_Bcast(token, sizeof token, MPI_CHAR, r->writer, r->comm);
    if (path == NULL) path = fm_path_join(r->tmpdir, ".fsdpmerge-probe");
    char *seen = NULL;
    size_t len = 0;
    fm_err ignore = {0};
    int mine = path && fm_read_file(path, 256, &seen, &len, &ignore) == 0 && strcmp(seen, token) == 0;
    free(seen);
    int all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, r->comm);
    MPI_Barrier(r->comm);
    if (r->me == r->writer && path) unlink(path);
    free(path);
    *shared = all != 0;
    return 0;
}

static bool wants_hdf5(const run *r) { return r->o->format != CLI_FORMAT_SAFETENSORS; }
static bool wants_safetensors(const run *r) { return r->o->format != CLI_FORMAT_HDF5; }

/* How many hosts the processes run on (by MPI_Get_processor_name). */
static int count_hosts(run *r)
{
    char name[MPI_MAX_PROCESSOR_NAME + 1] = "", *all = malloc((size_t)r->nprocs * sizeof name);
    int len = 0, hosts = 1;
    MPI_Get_processor_name(name, &len);
    if (all == NULL) return 2; /* cannot tell: assume several (direct stays possible) */
    MPI_Allgather(name, (int)sizeof name, MPI_CHAR, all, (int)sizeof name, MPI_CHAR, r->comm);
    for (int q = 1; q < r->nprocs; q++) {
        bool seen = false;
        for (int p = 0; p < q && !seen; p++) seen = strcmp(all + (size_t)p * sizeof name, all + (size_t)q * sizeof name) == 0;
        hosts += !seen;
    }
    free(all);
    return hosts;
}

/* auto = the measured fast path (docs/benchmarks.md): gather on one host,
 * where the writer's O_DIRECT writes beat collective MPI-IO 2-3x, and when
 * only the writer sees the output folder; direct when the processes span
 * hosts that all see it, so that write bandwidth grows with the nodes. */
static const char *auto_reason(run *r, bool shared, int hosts)
{
    static char why[160];
    if (!shared) return "gather (auto: not every process sees the output folder)";
    if (hosts == 1) return "gather (auto: every process runs on one host, where gather is the fastest)";
    snprintf(why, sizeof why, "direct (auto: processes on %d hosts, all see the output folder)", hosts);
    (void)r;
    return why;
}

static int choose_mode(run *r, fm_err *e)
{
    bool shared = false;
    if (r->o->mode == CLI_MODE_GATHER && !wants_hdf5(r)) {
        r->direct = false;
        r->why = "gather (the writer writes the files)";
        return 0;
    }
    FM_TRY(probe_shared(r, &shared, e));
    /* parallel HDF5 writes model.h5 from every process */
    if (wants_hdf5(r) && !shared)
        return fm_fail(e, FM_EUSAGE, "--format %s: not every process can see the output folder %s (parallel HDF5 "
                       "writes from every process; use --format safetensors with --mode gather)",
                       r->o->format == CLI_FORMAT_HDF5 ? "hdf5" : "both", r->tmpdir);
    if (r->o->mode == CLI_MODE_DIRECT && !shared)
        return fm_fail(e, FM_EUSAGE, "--mode direct: not every process can see the output folder %s (use --mode gather)",
                       r->tmpdir);
    int hosts = count_hosts(r);
    r->direct = r->o->mode == CLI_MODE_DIRECT || (r->o->mode == CLI_MODE_AUTO && shared && hosts > 1);
    r->why = r->o->mode == CLI_MODE_DIRECT ? "direct (every process writes its own pieces with MPI-IO)"
             : r->o->mode == CLI_MODE_GATHER ? "gather (the writer writes the files)"
             : auto_reason(r, shared, hosts);
    if (r->o->format == CLI_FORMAT_HDF5) r->why = "parallel HDF5 (every process writes its pieces of model.h5)";
    return 0;
}

static int make_info(run *r, fm_err *e)
{
    r->info = MPI_INFO_NULL;
    if (r->o->nhints == 0) return 0;
    MPI_Info_create(&r->info);
    for (int i = 0; i < r->o->nhints; i++) {
        char key[MPI_MAX_INFO_KEY + 1];
        const char *eq = strchr(r->o->hints[i], '=');
        size_t kl = (size_t)(eq - r->o->hints[i]);
        if (kl > MPI_MAX_INFO_KEY) return fm_fail(e, FM_EUSAGE, "--mpi-hint key too long: %s", r->o->hints[i]);
        memcpy(key, r->o->hints[i], kl);
        key[kl] = '\0';
        MPI_Info_set(r->info, key, eq + 1);
    }
    return 0;
}

static int discover(run *r, fm_err *e)
{
    const cli_opts *o = r->o;
    FM_TRY(dm_discover_all(o, r->comm, &r->layout, &r->dcp, e));
    if (r->me == 0 && r->dcp.on && o->shard_template)
        fm_fail(e, FM_EUNSUPPORTED, "--shard-template: not supported for DCP checkpoints");
    else if (r->me == 0 && r->dcp.on)
        ; /* dm_discover_all filled the layout */
    else if (r->me == 0 && o->shard_template)
        ck_discover_template(o->checkpoint, o->actor_dir, o->shard_template, o->world_size, &r->layout, e);
    else if (r->me == 0)
        ck_discover(o->checkpoint, o->actor_dir, o->world_size, &r->layout, e);
    if (r->me == 0 && e->code == 0 && r->writer >= r->nprocs)
        fm_fail(e, FM_EUSAGE, "--writer-rank %d but only %d processes", r->writer, r->nprocs);
    FM_TRY(comm_agree_all(e, r->comm));
    int ints[2] = {r->layout.world_size, r->layout.fsdp_version};
    MPI_Bcast(ints, 2, MPI_INT, 0, r->comm);
    r->layout.world_size = ints[0];
    r->layout.fsdp_version = ints[1];
    if (!r->dcp.on) FM_TRY(bcast_str(&r->layout.actor_dir, 0, r->comm, e)); /* DCP: every process has them */
    if (!r->dcp.on) FM_TRY(bcast_str(&r->layout.hf_dir, 0, r->comm, e));
    FM_TRY(bcast_str(&r->layout.shard_template, 0, r->comm, e));
    if (r->nprocs > r->layout.world_size)
        return fm_fail(e, FM_EUSAGE, "%d processes for a checkpoint of world size %d: run at most -np %d",
                       r->nprocs, r->layout.world_size, r->layout.world_size);
    if (o->optimizer && r->layout.fsdp_version == 1)
        return fm_fail(e, FM_EUNSUPPORTED,
                       "--optimizer: this is an FSDP1 checkpoint (fsdp_config.json), whose optimizer state is flat "
                       "per-rank shards of FlatParameters that cannot be split per parameter; merge without --optimizer");
    if (wants_hdf5(r) && !h5_available())
        return fm_fail(e, FM_EUNSUPPORTED, "--format %s: this fsdpmerge was built without parallel HDF5 "
                       "(install libhdf5-openmpi-dev and rebuild)", o->format == CLI_FORMAT_HDF5 ? "hdf5" : "both");
    FM_TRY(make_info(r, e));
    if (r->dry) {
        if (r->me == 0 && o->output_arg) od_check(o->output, o->force, e);
        r->why = o->command == CLI_VERIFY ? "verify (re-derives every tensor, compares, writes nothing)"
                                          : "check (reads every record, writes nothing)";
        return comm_agree_all(e, r->comm);
    }
    /* the writer creates the temporary output folder */
    if (r->me == r->writer && od_prepare(o->output, o->force, &r->od, e) == 0) r->tmpdir = fm_strdup(od_temp_path(&r->od));
    FM_TRY(comm_agree_all(e, r->comm));
    FM_TRY(bcast_str(&r->tmpdir, r->writer, r->comm, e));
    od_watch(r->tmpdir); /* every process removes it on a signal: the writer may be the one SIGKILLed */
    FM_TRY(choose_mode(r, e));
    return comm_agree_all(e, r->comm);
}

static void banner(run *r)
{
    const cli_opts *o = r->o;
    int W = r->layout.world_size;
    say(r, RULE "\nfsdpmerge %s: FSDP checkpoint -> HuggingFace model\n" RULE "\n", FM_VERSION);
    say(r, "Checkpoint:    %s\nActor dir:     %s\nOutput:        %s\nDtype:         %s\n", o->checkpoint,
        r->layout.actor_dir, o->output, o->dtype == DT_INVALID ? "auto (as saved)" : dt_torch_name(o->dtype));
    say(r, "Format:        %s\n", r->o->format == CLI_FORMAT_HDF5 ? "hdf5 (model.h5, parallel HDF5)"
                                : r->o->format == CLI_FORMAT_BOTH ? "safetensors and hdf5 (model.h5)" : "safetensors");
    say(r, "Processes:     %d%s, writer: process %d\nMode:          %s\n" RULE "\n", r->nprocs,
        r->nprocs == W ? " (one per rank)" : "", r->writer, r->why);
    if (r->dcp.on)
        say(r, "\xe2\x9c\x93 Detected a torch.distributed.checkpoint folder: %d data files, %zu keys%s%s%s\n\n", W,
            r->dcp.meta.n, r->dcp.prefix[0] ? " (model: the '" : "", r->dcp.prefix, r->dcp.prefix[0] ? "' keys)" : "");
    else if (r->layout.fsdp_version)
        say(r, "\xe2\x9c\x93 Detected world_size=%d from checkpoint (fsdp_config.json, FSDP%d)\n\n", W,
            r->layout.fsdp_version);
    else
        say(r, "\xe2\x9c\x93 Detected world_size=%d from checkpoint (file names)\n\n", W);
}

/* ---- phase 2: open my shards, index them ---- */

static bool has_replicate(const ti_entry *en) { return strstr(en->placements, "Replicate") != NULL; }

static const ti_entry *find_entry(const ti_index *ix, const char *key)
{
    for (size_t i = 0; i < ix->n; i++)
        if (strcmp(ix->entries[i].key, key) == 0) return &ix->entries[i];
    return NULL;
}

/* The plan compares some blocks by content: plain tensors across ranks,
 * replicas, and an lm_head that is not the embedding's storage. */
static bool needs_crc(const run *r, const ti_index *ix, const ti_entry *en)
{
    int W = r->layout.world_size;
    if (en->kind == TI_PLAIN) return W > 1 && r->o->plain != PLAN_PLAIN_REPLICATED;
    if (has_replicate(en)) return true;
    const ti_entry *head = find_entry(ix, "lm_head.weight");
    if (head == NULL) head = find_entry(ix, "base_model.model.lm_head.weight"); /* PEFT (LoRA) names */
    if (head == NULL) return false;
    const ti_entry *emb = find_entry(ix, "model.embed_tokens.weight");
    if (emb == NULL) emb = find_entry(ix, "base_model.model.model.embed_tokens.weight");
    bool shared = emb && head->npieces == emb->npieces && head->npieces > 0 &&
                  strcmp(head->pieces[0].view.storage, emb->pieces[0].view.storage) == 0;
    if (shared) return false;
    return en == head || fm_ends_with(en->key, "embed_tokens.weight") || fm_ends_with(en->key, "wte.weight") ||
           fm_ends_with(en->key, "word_embeddings.weight");
}

static int hash_pieces(run *r, ti_index *ix, ptz_file *z, fm_err *e)
{
    for (size_t i = 0; i < ix->n; i++) {
        ti_entry *en = &ix->entries[i];
        if (!needs_crc(r, ix, en)) continue;
        for (size_t k = 0; k < en->npieces; k++) {
            FM_TRY(ti_piece_crc(z, &en->pieces[k], &en->pieces[k].crc, e));
            en->pieces[k].has_crc = true;
        }
    }
    return 0;
}

static size_t my_rank_count(const run *r)
{
    int W = r->layout.world_size;
    return (size_t)((W - r->me + r->nprocs - 1) / r->nprocs);
}

static int open_mine(run *r, fm_err *e)
{
    int W = r->layout.world_size;
    size_t mine = my_rank_count(r);
    size_t rbuf = (size_t)(r->o->buffer_size / 4 / (mine ? mine : 1));
    rbuf = FM_MIN(FM_MAX(rbuf, (size_t)1 << 20), (size_t)64 << 20);
    r->zips = calloc((size_t)W, sizeof *r->zips);
    r->ix = calloc((size_t)W, sizeof *r->ix);
    if (r->zips == NULL || r->ix == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (int k = r->me; k < W; k += r->nprocs) {
        if (r->dcp.on) {
            FM_TRY(dm_open(r->o, &r->layout, &r->dcp, r->dcp.prefix, k, rbuf, &r->zips[k], &r->ix[k], e));
            FM_TRY(hash_pieces(r, &r->ix[k], r->zips[k], e));
            continue;
        }
        char *path = ck_rank_file(&r->layout, "model", k);
        if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        int rc = ptz_open(path, r->o->no_crc ? PTZ_NO_CRC : 0, rbuf, &r->zips[k], e);
        if (rc == 0) rc = ti_load_ws(r->zips[k], k, W, &r->ix[k], e);
        if (rc == 0) rc = hash_pieces(r, &r->ix[k], r->zips[k], e);
        if (rc) fm_context(e, "rank %d: %s", k, path);
        free(path);
        if (rc) return rc;
    }
    return 0;
}

/* ---- phase 3: exchange indexes ---- */

static int exchange(run *r, ti_index *ix, fm_err *e)
{
    int W = r->layout.world_size;
    fm_buf mine = {0};
    for (int k = r->me; k < W; k += r->nprocs) {
        int rc = ti_pack(&ix[k], &mine, e);
        if (rc) {
            fm_buf_free(&mine);
            return rc;
        }
    }
    uint8_t *all;
    uint64_t *offs;
    int rc = comm_allgather_blobs_all(mine.data, mine.len, r->comm, &all, &offs, e);
    fm_buf_free(&mine);
    if (rc) return rc;
    for (int q = 0; q < r->nprocs && rc == 0; q++) {
        if (q == r->me) continue; /* own indexes are already here */
        /* process q's blob: the packed indexes of ranks q, q+P, ... back to back */
        const uint8_t *p = all + offs[q], *end = all + offs[q + 1];
        for (int k = q; k < W && rc == 0; k += r->nprocs) rc = ti_unpack_next(&p, end, &ix[k], e);
    }
    free(all);
    free(offs);
    return rc;
}

/* ---- phase 4: config and plan ---- */

static int read_config(run *r, fm_err *e)
{
    if (r->me == 0 && r->layout.hf_dir) {
        char *path = fm_path_join(r->layout.hf_dir, "config.json");
        if (path == NULL || fm_read_file(path, 64u << 20, &r->config, &r->config_len, e)) {
            if (path) fm_context(e, "rank 0");
        } else if (hf_config_read(r->config, r->config_len, &r->cfg, e)) {
            fm_context(e, "%s", path);
        }
        free(path);
    }
    FM_TRY(comm_agree_all(e, r->comm));
    FM_TRY(bcast_bytes(&r->config, &r->config_len, 0, r->comm, e));
    if (r->config && r->me != 0) FM_TRY(hf_config_read(r->config, r->config_len, &r->cfg, e));
    return 0;
}

static void print_loaded(run *r)
{
    int W = r->layout.world_size;
    say(r, "Loading %d checkpoint shards...\n", W);
    for (int k = 0; k < W; k++) {
        char *base = fm_path_basename(r->ix[k].path);
        if (k < 8 || k == W - 1) say(r, "  [%d/%d] %s (%zu keys)\n", k + 1, W, base ? base : "?", r->ix[k].n);
        else if (k == 8) say(r, "  ...\n");
        free(base);
    }
    say(r, "\n");
}

static int make_plan(run *r, fm_err *e)
{
    plan_opts po = {
        .world_size = r->layout.world_size,
        .nprocs = r->nprocs,
        .out_dtype = r->o->dtype,
        .max_shard_size = r->o->max_shard_size,
        .tie_word_embeddings = r->config ? r->cfg.tie_word_embeddings : false,
        .plain = r->o->plain,
        .lora = r->lora.active ? &r->lora.model : NULL,
    };
    plan_build(r->ix, &po, &r->pl, e);
    FM_TRY(comm_agree_all(e, r->comm));
    if (lrun_fused(&r->lora)) {
        uint64_t held = 0;
        char sz[32];
        FM_TRY(lx_prepare_all(&r->pl, r->zips, r->comm, &held, e));
        say(r, "\xe2\x9c\x93 LoRA fused into %zu weights (factors held per process: at most %s)\n", r->pl.nfuses,
            fm_format_bytes(held, sz, sizeof sz));
    }
    say(r, "Merging shards into full state dict...\n");
    say(r, "\xe2\x9c\x93 Merged %zu parameters:\n  - %zu replicated parameters\n  - %zu sharded parameters\n",
        r->pl.ntensors, r->pl.n_replicated, r->pl.n_sharded);
    if (r->pl.n_dropped) say(r, "  - lm_head.weight dropped: tied to the input embedding (tie_word_embeddings)\n");
    for (size_t i = 0; i < r->pl.nwarnings && i < 20; i++) say(r, "  warning: %s\n", r->pl.warnings[i]);
    if (r->pl.nwarnings > 20) say(r, "  warning: ... and %zu more\n", r->pl.nwarnings - 20);
    say(r, "\n");
    return 0;
}

/* Before any data moves: does the output fit? Every process that writes
 * checks (the writer in gather mode; all in direct mode and for HDF5: a
 * per-node quota can differ). The side files (config, tokenizer) are small
 * and not counted; each weight file also reserves its blocks on creation. */
static int check_space(run *r, fm_err *e)
{
    /* check and verify write nothing (check prints the free space itself) */
    if (r->o->no_space_check || r->dry) return 0;
    uint64_t need = 0;
    for (size_t f = 0; f < r->pl.nfiles && wants_safetensors(r); f++) need += r->pl.files[f].size;
    if (wants_hdf5(r)) {
        h5_opts ho;
        h5_opts_init(&ho);
        need += h5_size_estimate(&r->pl, &ho);
    }
    if (r->me == r->writer || r->direct || wants_hdf5(r)) {
        if (fs_check_space(r->tmpdir, need, e)) fm_context(e, "process %d", r->me);
    }
    return comm_agree_all(e, r->comm);
}

/* ---- phase 5: data ---- */

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    (void)total;
    run *r = ctx;
    wd_progress();
    if (r->talk) pg_update(&r->bar, done);
}

/* memory per process: gather keeps 3 windows at the writer (2 being
 * written/filled + 1 received), direct 1; read buffers get a quarter */
static int run_engine(run *r, const plan *pl, ptz_file *const *zips, const char *dir, bool hints, xf_stats *xs, fm_err *e)
{
    xf_opts xo = {.writer = r->writer, .fsync = !r->o->no_fsync, .direct_io = !r->o->no_direct_io, .info = r->info,
                  .hints_out = hints && r->talk ? r->out : NULL, .crc32c = pl == &r->pl ? r->crc : NULL};
    if (r->direct) {
        xo.window = (size_t)(r->o->buffer_size / 2);
        return xf_direct_all(pl, zips, dir, &xo, on_progress, r, r->comm, xs, e);
    }
    xo.window = (size_t)(r->o->buffer_size / 4);
    return xf_gather_all(pl, zips, dir, &xo, on_progress, r, r->comm, xs, e);
}

static int config_text(run *r, char **text, size_t *len, fm_err *e);

/* model.h5 in the temporary folder, written by every process; the same
 * buffer budget as direct mode (one window of half the budget). */
static int write_hdf5(run *r, fm_err *e)
{
    char *config = NULL, *path = NULL;
    size_t len = 0;
    int rc = r->config ? config_text(r, &config, &len, e) : 0;
    if (rc == 0 && (path = fm_path_join(r->tmpdir, "model.h5")) == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) {
        h5_opts ho;
        h5_opts_init(&ho);
        ho.window = (size_t)(r->o->buffer_size / 2);
        ho.info = r->info;
        ho.fsync = !r->o->no_fsync;
        ho.config = config;
        ho.source_world_size = r->layout.world_size;
        ho.hints_out = r->o->show_hints && r->talk ? r->out : NULL;
        xf_stats xs = {0};
        rc = h5_write_all(&r->pl, r->zips, path, &ho, on_progress, r, r->comm, &xs, e);
        r->xs.bytes_read += xs.bytes_read;
        r->xs.bytes_written += xs.bytes_written;
    }
    free(path);
    free(config);
    return rc;
}

/* Every process XORs the CRC-32C terms of the segments it converts into
 * r->crc; the XOR over processes is each tensor's register (crc32c.h). */
static int start_crcs(run *r, fm_err *e)
{
    r->crc = calloc(r->pl.ntensors ? r->pl.ntensors : 1, sizeof *r->crc);
    FM_TRY(r->crc ? 0 : fm_fail(e, FM_ENOMEM, "out of memory"));
    return comm_agree_all(e, r->comm);
}

static int finish_crcs(run *r, fm_err *e)
{
    for (size_t i = 0; i < r->pl.ntensors; i += 1u << 20) {
        int n = (int)FM_MIN(r->pl.ntensors - i, (size_t)1 << 20);
        if (MPI_Allreduce(MPI_IN_PLACE, r->crc + i, n, MPI_UINT32_T, MPI_BXOR, r->comm) != MPI_SUCCESS)
            return fm_fail(e, FM_EMPI, "MPI_Allreduce of the tensor CRCs failed");
    }
    for (size_t i = 0; i < r->pl.ntensors; i++)
        r->crc[i] = crc32c_finish(r->crc[i], r->pl.tensors[i].end - r->pl.tensors[i].begin);
    return 0;
}

static const char *mode_name(const run *r)
{
    return r->o->format == CLI_FORMAT_HDF5 ? "hdf5" : r->direct ? "direct" : "gather";
}

static int write_manifest(run *r, const char *dir, fm_err *e)
{
    const cli_opts *o = r->o;
    static const char *const formats[] = {"safetensors", "hdf5", "both"};
    mf_info in = {.command_line = o->cmdline, .source = o->checkpoint, .actor_dir = r->layout.actor_dir,
                  .world_size = r->layout.world_size, .fsdp_version = r->layout.fsdp_version, .nprocs = r->nprocs,
                  .dtype = o->dtype == DT_INVALID ? "auto" : dt_torch_name(o->dtype), .mode = mode_name(r),
                  .format = formats[o->format], .max_shard_size = o->max_shard_size};
    fm_buf text = {0};
    char *path = fm_path_join(dir, MF_NAME);
    int rc = path ? mf_build(&in, &r->pl, r->crc, &text, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = fm_write_file(path, text.data, text.len, e);
    free(path);
    fm_buf_free(&text);
    return rc;
}

static int move_data(run *r, fm_err *e)
{
    char sz[32];
    int rc = 0;
    fm_format_bytes(r->pl.total_bytes, sz, sizeof sz);
    const char *dt = r->o->dtype == DT_INVALID ? "dtype as saved" : dt_torch_name(r->o->dtype);
    if (wants_safetensors(r)) {
        say(r, "Saving merged model to %s\n  Writing %zu file%s (%s, %s)...\n", r->o->output, r->pl.nfiles,
            r->pl.nfiles == 1 ? "" : "s", sz, dt);
        if (r->talk) pg_start(&r->bar, r->out, r->o->progress, r->pl.total_bytes);
        if (!r->o->no_manifest || r->o->verify) rc = start_crcs(r, e);
        if (rc == 0) rc = run_engine(r, &r->pl, r->zips, r->tmpdir, r->o->show_hints, &r->xs, e);
        if (rc == 0 && r->crc) rc = finish_crcs(r, e);
        if (rc == 0 && r->talk) pg_finish(&r->bar, r->pl.total_bytes);
    }
    if (rc == 0 && wants_hdf5(r)) {
        say(r, "Saving merged model to %s/model.h5\n  Writing %zu datasets (%s, %s) with parallel HDF5...\n",
            r->o->output, r->pl.ntensors, sz, dt);
        if (r->talk) pg_start(&r->bar, r->out, r->o->progress, r->pl.total_bytes);
        rc = write_hdf5(r, e);
        if (rc == 0 && r->talk) pg_finish(&r->bar, r->pl.total_bytes);
    }
    return rc;
}

/* ---- phase 6: the HuggingFace side files, then the rename ---- */

/* The dtype config.json names with --dtype auto: that of the float weights. */
static dt_type main_dtype(const plan *pl)
{
    for (size_t i = 0; i < pl->ntensors; i++)
        if (dt_is_float(pl->tensors[i].src_dtype)) return pl->tensors[i].src_dtype;
    return pl->ntensors ? pl->tensors[0].src_dtype : DT_F32;
}

/* config.json as written to the output (dtype and architectures set); a
 * pure function of the broadcast config, so any process can make it. */
static int config_text(run *r, char **text, size_t *len, fm_err *e)
{
    char arch[256] = "";
    const char *head = r->pl.head[0] ? r->pl.head : NULL;
    hf_infer_architecture(r->cfg.model_type, head, arch, sizeof arch);
    const char *dtype = dt_torch_name(r->o->dtype == DT_INVALID ? main_dtype(&r->pl) : r->o->dtype);
    return hf_config_rewrite(r->config, r->config_len, dtype, r->o->architecture, arch[0] ? arch : NULL, text, len, e);
}

static int write_side_files(run *r, fm_err *e)
{
    const char *dir = od_temp_path(&r->od);
    int copied = 0;
    if (r->config) {
        char *text = NULL;
        size_t len = 0;
        FM_TRY(config_text(r, &text, &len, e));
        char *path = fm_path_join(dir, "config.json");
        int rc = path ? fm_write_file(path, text, len, e) : fm_fail(e, FM_ENOMEM, "out of memory");
        free(path);
        free(text);
        FM_TRY(rc);
        bool in_actor = strcmp(r->layout.hf_dir, r->layout.actor_dir) == 0 || r->dcp.on; /* DCP: maybe a model folder */
        FM_TRY(in_actor ? hf_copy_assets_from_actor(r->layout.hf_dir, dir, &copied, e)
                        : hf_copy_assets(r->layout.hf_dir, dir, &copied, e));
    }
    if (!r->o->no_manifest) FM_TRY(write_manifest(r, dir, e));
    if (r->pl.index_json && wants_safetensors(r)) {
        char *path = fm_path_join(dir, "model.safetensors.index.json");
        int rc = path ? fm_write_file(path, r->pl.index_json, strlen(r->pl.index_json), e)
                      : fm_fail(e, FM_ENOMEM, "out of memory");
        free(path);
        FM_TRY(rc);
    }
    return 0;
}

/* lora_adapter/: adapter_model.safetensors (the chosen adapter's A and B,
 * named and laid out as PEFT's save_pretrained) and adapter_config.json. */
static int adapter_phase(run *r, fm_err *e)
{
    if (!lrun_adapter(&r->lora)) return 0;
    plan apl;
    plan_opts po = {.world_size = r->layout.world_size, .nprocs = r->nprocs, .out_dtype = r->o->dtype,
                    .max_shard_size = UINT64_MAX, .plain = r->o->plain, .file_stem = "adapter_model",
                    .lora = &r->lora.adapter};
    char *dir = NULL, *cfg = NULL;
    size_t cfg_len = 0;
    xf_stats xs;
    plan_build(r->ix, &po, &apl, e);
    int rc = comm_agree_all(e, r->comm);
    if (rc == 0) lr_adapter_config(&r->lora.hp, &r->lora.found, &cfg, &cfg_len, e);
    if (rc == 0 && (dir = fm_path_join(r->tmpdir, "lora_adapter")) == NULL) fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0 && r->me == r->writer && dir) fm_mkdir_p(dir, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    if (rc == 0) rc = run_engine(r, &apl, r->zips, dir, false, &xs, e);
    if (rc == 0) rc = comm_write_at_writer_all(cfg, cfg_len, r->writer, r->writer, dir, "adapter_config.json", r->comm, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    if (rc == 0) {
        char sz[32];
        say(r, "\xe2\x9c\x93 Saved the LoRA adapter '%s' (%zu tensors, %s) to %s/lora_adapter/\n", r->o->lora_name,
            apl.ntensors, fm_format_bytes(apl.total_bytes, sz, sizeof sz), r->o->output);
    }
    plan_free(&apl);
    free(dir);
    free(cfg);
    return rc;
}

/* extra_state_merged.pt + lr_scheduler_state.json, next to the weights */
static int training_state(run *r, fm_err *e)
{
    es_result res;
    if (r->dcp.on) return 0; /* a DCP folder's train_state is not a verl extra_state */
    say(r, "\nMerging extra_state files...\n");
    FM_TRY(es_merge_all(&r->layout, r->tmpdir, r->writer, r->o->no_crc, r->comm, &res, e));
    if (!res.present) {
        say(r, "  no extra_state files: no training state to merge\n");
        return 0;
    }
    if (res.warning[0]) say(r, "  warning: %s\n", res.warning);
    say(r, "\xe2\x9c\x93 Saved extra_state to %s/extra_state_merged.pt%s%s%s\n", r->o->output,
        res.device[0] ? " (" : "", res.device, res.device[0] ? " RNG states of every rank)" : "");
    say(r, "\xe2\x9c\x93 Saved lr_scheduler state to %s/lr_scheduler_state.json\n", r->o->output);
    return 0;
}

/* ---- phase 7 (--optimizer): the optimizer state, merged like the weights ---- */

typedef struct optrun {
    ptz_file **zips;
    ti_index *ix;
    int64_t nparams;
    const char **names;
    plan pl;
    char *dir;
} optrun;

static int open_optim(run *r, optrun *op, fm_err *e)
{
    int W = r->layout.world_size;
    op->zips = calloc((size_t)W, sizeof *op->zips);
    op->ix = calloc((size_t)W, sizeof *op->ix);
    if (op->zips == NULL || op->ix == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (int k = r->me; k < W && r->dcp.on; k += r->nprocs)
        FM_TRY(dm_open_optim(r->o, &r->layout, &r->dcp, k, &op->zips[k], &op->ix[k], e));
    for (int k = r->me; k < W && !r->dcp.on; k += r->nprocs) {
        char *path = ck_rank_file(&r->layout, "optim", k);
        int64_t np = 0;
        if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        int rc = ptz_open(path, r->o->no_crc ? PTZ_NO_CRC : 0, 1u << 20, &op->zips[k], e);
        if (rc == 0) rc = op_index(op->zips[k], k, &op->ix[k], &np, e);
        if (rc == 0 && k == 0) op->nparams = np;
        for (size_t i = 0; rc == 0 && i < op->ix[k].n; i++)
            if (op->ix[k].entries[i].kind == TI_PLAIN && r->ix[k].n && r->ix[k].entries[0].kind != TI_PLAIN)
                rc = fm_fail(e, FM_EUNSUPPORTED, "optimizer state '%s' is a plain (flat) tensor while the weights are "
                             "sharded: an FSDP1-style flat optimizer cannot be split per parameter", op->ix[k].entries[i].key);
        if (rc == 0) rc = hash_pieces(r, &op->ix[k], op->zips[k], e);
        if (rc) fm_context(e, "rank %d: %s", k, path);
        free(path);
        if (rc) return rc;
    }
    return 0;
}

static int plan_optim(run *r, optrun *op, char *warning, size_t wlen, fm_err *e)
{
    if (!r->dcp.on) MPI_Bcast(&op->nparams, 1, MPI_INT64_T, 0, r->comm);
    if (!r->dcp.on) /* DCP keys are named already */
        FM_TRY(op_name_states(op->ix, r->layout.world_size, &r->ix[0], r->pl.dropped_key, op->nparams, &op->names, warning,
                          wlen, e));
    plan_opts po = {.world_size = r->layout.world_size, .nprocs = r->nprocs, .out_dtype = DT_INVALID,
                    .max_shard_size = UINT64_MAX, .plain = r->o->plain, .file_stem = "optimizer", .no_metadata = true};
    return plan_build(op->ix, &po, &op->pl, e);
}

/* open, index, exchange and plan the optimizer files (merge and check) */
static int prepare_optim(run *r, optrun *op, char *warning, size_t wlen, fm_err *e)
{
    open_optim(r, op, e);
    int rc = comm_agree_all(e, r->comm);
    if (rc == 0) rc = exchange(r, op->ix, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    if (rc == 0) plan_optim(r, op, warning, wlen, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    return rc;
}

static void free_optim(run *r, optrun *op)
{
    for (int k = 0; k < r->layout.world_size; k++) {
        if (op->zips) ptz_close(op->zips[k]);
        if (op->ix) ti_index_free(&op->ix[k]);
    }
    free(op->zips);
    free(op->ix);
    free(op->names);
    free(op->dir);
    plan_free(&op->pl);
}

/* optimizer_state.json's text (process 0: it reads rank 0's optimizer file). */
static int optim_json(run *r, const optrun *op, fm_buf *json, fm_err *e)
{
    return r->dcp.on ? dm_optim_json(r->o, &r->layout, &r->dcp, json, e)
                     : op_state_json(op->zips[0], op->names, op->nparams, json, e);
}

static int optimizer_phase(run *r, fm_err *e)
{
    if (!r->o->optimizer) return 0;
    optrun op;
    memset(&op, 0, sizeof op);
    char warning[512] = "";
    say(r, "\nMerging the optimizer state...\n");
    int rc = prepare_optim(r, &op, warning, sizeof warning, e);
    op.dir = rc == 0 ? fm_path_join(r->tmpdir, "optimizer") : NULL;
    if (rc == 0 && r->me == r->writer) fm_mkdir_p(op.dir, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    xf_stats xs;
    if (rc == 0) rc = run_engine(r, &op.pl, op.zips, op.dir, false, &xs, e);
    fm_buf json = {0};
    if (rc == 0 && r->me == 0) optim_json(r, &op, &json, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    if (rc == 0) rc = comm_write_at_writer_all(json.data, json.len, 0, r->writer, op.dir, "optimizer_state.json", r->comm, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    if (rc == 0) {
        char sz[32];
        if (warning[0]) say(r, "  warning: %s\n", warning);
        say(r, "\xe2\x9c\x93 Saved %zu optimizer tensors (%s) to %s/optimizer/optimizer.safetensors and "
            "optimizer_state.json\n", op.pl.ntensors, fm_format_bytes(op.pl.total_bytes, sz, sizeof sz), r->o->output);
    }
    fm_buf_free(&json);
    free_optim(r, &op);
    return rc;
}

/* ---- verify OUT --checkpoint_path CKPT: the plan against what OUT holds ---- */

static void verify_config(run *r, vf_report *rep)
{
    char *path = NULL, *have = NULL, *want = NULL;
    size_t hlen = 0, wlen = 0;
    fm_err ignore = {0};
    if (r->config && config_text(r, &want, &wlen, &ignore) == 0 && (path = fm_path_join(r->o->output, "config.json"))) {
        if (fm_read_file(path, 64u << 20, &have, &hlen, &ignore)) have = NULL;
        vf_check_text(rep, "config.json", want, wlen, have, hlen);
    }
    free(path);
    free(have);
    free(want);
}

/* The output's file NAME against the same file written into scratch by a
 * merge: bytes, the first differing offset when they differ. */
static void verify_side_file(const run *r, const char *scratch, const char *name, vf_report *v)
{
    char *want_path = fm_path_join(scratch, name), *have_path = fm_path_join(r->o->output, name);
    char *want = NULL, *have = NULL;
    size_t wlen = 0, hlen = 0;
    fm_err ignore = {0};
    if (want_path && have_path && fm_read_file(want_path, 1u << 30, &want, &wlen, &ignore) == 0) {
        if (fm_read_file(have_path, 1u << 30, &have, &hlen, &ignore)) have = NULL;
        if (fm_ends_with(name, ".json")) {
            vf_check_text(v, name, want, wlen, have, hlen);
        } else if (have == NULL) {
            vf_bad(v, "%s: a merge writes it, the output lacks it", name);
        } else if (hlen != wlen || memcmp(have, want, wlen) != 0) {
            size_t i = 0;
            while (i < hlen && i < wlen && have[i] == want[i]) i++;
            vf_bad(v, "%s: %zu bytes in the output, a merge writes %zu; first difference at byte %zu", name, hlen, wlen, i);
        }
    }
    free(want);
    free(have);
    free(want_path);
    free(have_path);
}

/* extra_state_merged.pt and lr_scheduler_state.json: merged again into a
 * scratch folder (the writer's) and compared byte for byte. */
static int verify_training_state(run *r, vf_report *v, fm_err *e)
{
    if (r->dcp.on) return 0; /* a DCP folder has no verl extra_state */
    char *scratch = NULL;
    if (r->me == 0) { /* rank 0 reports (verify_phase) */
        char tmpl[] = "/tmp/fsdpmerge-verify-XXXXXX";
        if (mkdtemp(tmpl) == NULL) fm_fail(e, FM_EIO, "cannot create a scratch folder in /tmp: %s", strerror(errno));
        else if ((scratch = fm_strdup(tmpl)) == NULL) fm_fail(e, FM_ENOMEM, "out of memory");
    }
    int rc = comm_agree_all(e, r->comm);
    es_result res;
    memset(&res, 0, sizeof res);
    if (rc == 0) rc = es_merge_all(&r->layout, scratch, 0, r->o->no_crc, r->comm, &res, e);
    if (rc == 0 && r->me == 0 && res.present) {
        verify_side_file(r, scratch, "extra_state_merged.pt", v);
        verify_side_file(r, scratch, "lr_scheduler_state.json", v);
    }
    if (scratch) {
        fm_err ignore = {0};
        fm_rmtree(scratch, &ignore);
        free(scratch);
    }
    return rc;
}

/* optimizer/optimizer_state.json against the text a merge writes (process 0). */
static void verify_optim_json(run *r, const optrun *op, vf_report *v)
{
    fm_buf want = {0};
    fm_err ignore = {0};
    char *path = fm_path_join(op->dir, "optimizer_state.json"), *have = NULL;
    size_t hlen = 0;
    if (path && optim_json(r, op, &want, &ignore) == 0 && !want.oom) {
        if (fm_read_file(path, 256u << 20, &have, &hlen, &ignore)) have = NULL;
        vf_check_text(v, "optimizer/optimizer_state.json", (const char *)want.data, want.len, have, hlen);
    } else { /* not skipped silently: a verify that compared nothing must not pass */
        vf_bad(v, "optimizer/optimizer_state.json: cannot build what a merge writes (%s)",
               ignore.code ? ignore.msg : "out of memory");
    }
    free(path);
    free(have);
    fm_buf_free(&want);
}

static int verify_phase(run *r, fm_err *e)
{
    vf_report v;
    memset(&v, 0, sizeof v);
    optrun op;
    memset(&op, 0, sizeof op);
    char warning[512] = "";
    double t = MPI_Wtime();
    uint64_t bytes = 0, all = 0;
    size_t ntensors = r->pl.ntensors;
    say(r, "Comparing %s with the checkpoint (every tensor re-derived from the shards)...\n", r->o->output);
    char *h5 = fm_path_join(r->o->output, "model.h5");
    char *st1 = fm_path_join(r->o->output, "model.safetensors"), *sti = fm_path_join(r->o->output, "model.safetensors.index.json");
    bool has_h5 = h5 && fm_path_is_file(h5);
    /* a --format hdf5 output has no safetensors: model.h5 alone is compared */
    bool has_st = !has_h5 || (st1 && fm_path_exists(st1)) || (sti && fm_path_exists(sti));
    free(st1);
    free(sti);
    int rc = has_st ? vf_plan_all(&r->pl, r->zips, r->o->output, "model", r->comm, &v, &bytes, e) : 0;
    if (rc == 0 && r->o->optimizer) {
        op.dir = fm_path_join(r->o->output, "optimizer");
        rc = prepare_optim(r, &op, warning, sizeof warning, e);
        if (rc == 0) rc = vf_plan_all(&op.pl, op.zips, op.dir, "optimizer", r->comm, &v, &bytes, e);
        if (rc == 0 && r->me == 0) verify_optim_json(r, &op, &v);
        ntensors += op.pl.ntensors;
    }
    free_optim(r, &op);
    if (rc == 0 && has_h5) rc = vf_plan_h5(&r->pl, r->zips, h5, r->comm, &v, &bytes, e);
    free(h5);
    if (rc == 0) rc = verify_training_state(r, &v, e);
    MPI_Reduce(&bytes, &all, 1, MPI_UINT64_T, MPI_SUM, 0, r->comm);
    if (rc == 0 && r->me == 0) {
        verify_config(r, &v);
        char sz[32];
        if (r->talk && v.lines.len) fwrite(v.lines.data, 1, v.lines.len, r->out);
        say(r, "%s %zu tensors checked against the checkpoint, %s compared in %.2f s: %" PRIu64 " mismatch%s\n",
            v.bad ? "\xe2\x9c\x97" : "\xe2\x9c\x85", ntensors, fm_format_bytes(all, sz, sizeof sz), MPI_Wtime() - t, v.bad,
            v.bad == 1 ? "" : "es");
        if (has_h5) say(r, "  model.h5 compared too (every dataset's bytes, dtype and shape)\n");
        if (v.bad) fm_fail(e, FM_EDIFFER, "%s differs from what a merge of %s writes: %" PRIu64 " mismatch%s (listed above)",
                           r->o->output, r->o->checkpoint, v.bad, v.bad == 1 ? "" : "es");
    }
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    fm_buf_free(&v.lines);
    return rc;
}

/* ---- the check command: read everything, plan, print, write nothing ---- */

static int read_everything(run *r, const optrun *op, uint64_t *bytes, fm_err *e)
{
    for (int k = r->me; k < r->layout.world_size; k++) {
        if ((k - r->me) % r->nprocs) continue;
        char *path = ck_rank_file(&r->layout, "extra_state", k);
        const char *bad = ptz_path(r->zips[k]); /* errors name the rank and the file, as the merge's do */
        int rc = chk_read_records(r->zips[k], bytes, e);
        if (rc == 0 && op && (bad = ptz_path(op->zips[k])) != NULL) rc = chk_read_records(op->zips[k], bytes, e);
        if (rc == 0 && path && (bad = path) != NULL)
            rc = chk_read_file(path, true, 1u << 20, r->o->no_crc ? PTZ_NO_CRC : 0, bytes, e);
        if (rc) fm_context(e, "rank %d: %s", k, bad);
        free(path);
        if (rc) return rc;
    }
    return 0;
}

static int check_phase(run *r, fm_err *e)
{
    optrun op;
    memset(&op, 0, sizeof op);
    char warning[512] = "";
    int rc = r->o->optimizer ? prepare_optim(r, &op, warning, sizeof warning, e) : 0;
    say(r, "Reading every record of every rank file...\n");
    double t = MPI_Wtime();
    uint64_t mine = 0, all = 0;
    if (rc == 0) read_everything(r, r->o->optimizer ? &op : NULL, &mine, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    char *config = NULL;
    size_t config_len = 0;
    if (rc == 0 && r->config && r->me == 0) config_text(r, &config, &config_len, e);
    if (rc == 0) rc = comm_agree_all(e, r->comm);
    MPI_Reduce(&mine, &all, 1, MPI_UINT64_T, MPI_SUM, 0, r->comm);
    if (rc == 0 && r->talk) {
        if (warning[0]) say(r, "  warning: %s\n", warning);
        int W = r->layout.world_size;
        chk_report cr = {.output = r->o->output, .output_given = r->o->output_arg != NULL, .model = &r->pl,
                         .optim = r->o->optimizer ? &op.pl : NULL, .config_bytes = config_len,
                         .safetensors = wants_safetensors(r), .hdf5 = wants_hdf5(r), .bytes_read = all,
                         .seconds = MPI_Wtime() - t, .nfiles_read = W};
        chk_print(r->out, &cr);
        say(r, "\n\xe2\x9c\x85 Check passed: the checkpoint is complete and readable (nothing was written)\n");
    }
    free(config);
    free_optim(r, &op);
    return rc;
}

/* --verify: the weights read back from disk before the rename, by every
 * process in direct mode (they all see the folder), by the writer in gather */
static int verify_written(run *r, fm_err *e)
{
    if (!r->o->verify) return 0;
    if (r->crc == NULL) {
        say(r, "  --verify: only the safetensors files are re-read; model.h5 is not\n");
        return 0;
    }
    double t = MPI_Wtime();
    uint64_t mine = 0, bytes = 0;
    if (r->direct) vf_reread_all(r->tmpdir, &r->pl, r->crc, r->comm, &mine, e);
    else if (r->me == r->writer) vf_reread_all(r->tmpdir, &r->pl, r->crc, MPI_COMM_SELF, &mine, e);
    FM_TRY(comm_agree_all(e, r->comm));
    MPI_Reduce(&mine, &bytes, 1, MPI_UINT64_T, MPI_SUM, 0, r->comm);
    char sz[32];
    say(r, "\xe2\x9c\x93 Verified: read %s back from disk in %.2f s, every tensor's CRC-32C equals the one computed "
        "as it was converted\n", fm_format_bytes(bytes, sz, sizeof sz), MPI_Wtime() - t);
    return 0;
}

static int finalize(run *r, fm_err *e)
{
    if (r->me == r->writer) write_side_files(r, e);
    /* every process agrees before the rename: one that failed or stopped
     * (killed, stalled) now leaves no output under the name */
    FM_TRY(comm_agree_all(e, r->comm));
    FM_TRY(verify_written(r, e));
    if (r->me == r->writer) od_commit(&r->od, r->o->force, !r->o->no_fsync, e);
    FM_TRY(comm_agree_all(e, r->comm));
    od_unwatch(); /* committed: a late signal has nothing to remove */
    if (r->config) say(r, "  Copied config.json%s and the tokenizer files from %s\n",
                       r->o->architecture || !r->cfg.architecture[0] ? " (architectures set)" : "", r->layout.hf_dir);
    else if (r->dcp.on)
        say(r, "  note: no config.json (--hf-config DIR, or a huggingface/ folder next to the checkpoint): the output "
            "holds the weights only\n");
    else say(r, "  warning: no config.json found next to the shards: the output holds the weights only\n");
    say(r, "\xe2\x9c\x93 Model saved successfully\n");
    return 0;
}

static void summary(run *r)
{
    double total = r->times.total;
    char sz[32], files[64];
    if (r->o->format == CLI_FORMAT_HDF5) snprintf(files, sizeof files, "model.h5");
    else snprintf(files, sizeof files, "%zu file%s%s", r->pl.nfiles, r->pl.nfiles == 1 ? "" : "s",
                  r->o->format == CLI_FORMAT_BOTH ? " and model.h5" : "");
    say(r, "\n" RULE "\n\xe2\x9c\x85 Conversion complete: %zu tensors, %s in %s, %.2f s (%.1f MB/s)\n" RULE "\n",
        r->pl.ntensors, fm_format_bytes(r->pl.total_bytes, sz, sizeof sz), files, total,
        total > 0 ? (double)r->pl.total_bytes / total / 1e6 : 0.0);
}

static void cleanup(run *r)
{
    od_abort(&r->od); /* removes the temporary folder; after a commit it only frees */
    int W = r->layout.world_size;
    for (int k = 0; k < W && r->zips; k++) ptz_close(r->zips[k]);
    for (int k = 0; k < W && r->ix; k++) ti_index_free(&r->ix[k]);
    free(r->zips);
    free(r->ix);
    free(r->config);
    free(r->tmpdir);
    free(r->crc);
    if (r->info != MPI_INFO_NULL) MPI_Info_free(&r->info);
    plan_free(&r->pl);
    lrun_free(&r->lora);
    ck_layout_free(&r->layout);
    dm_free(&r->dcp);
}

int mg_run_all(const cli_opts *o, MPI_Comm comm, FILE *out, fm_err *e)
{
    run r;
    memset(&r, 0, sizeof r);
    r.info = MPI_INFO_NULL; /* not necessarily a null pointer */
    r.o = o;
    r.comm = comm;
    r.out = out;
    r.writer = o->writer;
    MPI_Comm_rank(comm, &r.me);
    MPI_Comm_size(comm, &r.nprocs);
    r.talk = r.me == 0 && !o->quiet;
    r.dry = o->command == CLI_CHECK || o->command == CLI_VERIFY;
    double t0 = MPI_Wtime(), t;
    /* files opened from now on (ours and parallel HDF5's) return errors
     * instead of aborting; MPI_COMM_WORLD stays fatal on errors: a peer that
     * died ends the job at once, which is what we want there */
    MPI_File_set_errhandler(MPI_FILE_NULL, MPI_ERRORS_RETURN);
    wd_set_cleanup(od_emergency_cleanup);
    od_set_stale_after(FM_MAX(3600, 2 * o->timeout)); /* a live run never stays silent that long */
    wd_start(o->timeout, r.me, e);
    wd_phase("discover");
    int rc = e->code ? e->code : discover(&r, e);
    r.times.discover = MPI_Wtime() - t0;
    if (rc == 0) {
        banner(&r);
        t = MPI_Wtime();
        wd_phase("read");
        open_mine(&r, e);
        rc = comm_agree_all(e, comm);
        if (rc == 0) rc = exchange(&r, r.ix, e);
        if (rc == 0) rc = comm_agree_all(e, comm);
        r.times.index = MPI_Wtime() - t;
    }
    if (rc == 0) {
        print_loaded(&r);
        t = MPI_Wtime();
        wd_phase("plan");
        rc = read_config(&r, e);
        if (rc == 0) lrun_setup(&r.lora, o, &r.layout, &r.ix[0], comm, r.talk ? out : NULL, e);
        if (rc == 0) rc = comm_agree_all(e, comm);
        if (rc == 0) rc = make_plan(&r, e);
        if (rc == 0) rc = check_space(&r, e);
        r.times.plan = MPI_Wtime() - t;
    }
    if (rc == 0 && r.dry) rc = o->command == CLI_VERIFY ? verify_phase(&r, e) : check_phase(&r, e);
    if (rc == 0 && !r.dry) {
        t = MPI_Wtime();
        wd_phase("write");
        rc = move_data(&r, e);
        if (rc == 0) rc = adapter_phase(&r, e);
        r.times.data = MPI_Wtime() - t;
    }
    if (rc == 0 && !r.dry) {
        t = MPI_Wtime();
        rc = training_state(&r, e);
        if (rc == 0) rc = optimizer_phase(&r, e);
        if (rc == 0) wd_phase("commit");
        if (rc == 0) rc = finalize(&r, e);
        r.times.finalize = MPI_Wtime() - t;
    }
    r.times.total = MPI_Wtime() - t0;
    if (rc == 0 && !r.dry) {
        summary(&r);
        uint64_t read_total = 0;
        MPI_Reduce(&r.xs.bytes_read, &read_total, 1, MPI_UINT64_T, MPI_SUM, 0, comm);
        if (o->report && r.me == 0)
            rp_write(o->report, o, mode_name(&r),
                     r.layout.world_size, r.nprocs, r.writer, &r.pl, &r.times, read_total, e);
        rc = comm_agree_all(e, comm);
    }
    wd_stop();
    cleanup(&r);
    return rc;
}
