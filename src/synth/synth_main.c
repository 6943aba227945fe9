/* synth_main.c - bin/fsdpsynth: the command line and the MPI work split.
 *
 * One process or `mpirun -np P`: process 0 writes the folders and json
 * files, then process p writes rank files p, p+P, ... and a share of the
 * expected safetensors files. Every phase ends with comm_agree_all(), so a
 * failure anywhere stops every process with the same message, without
 * leaving any of them blocked.
 */
#include <getopt.h>
#include <inttypes.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/comm.h"
#include "base/err.h"
#include "synth/synth.h"
#include "synth/synthdcp.h"
#include "base/util.h"

enum {
    O_OUT = 256, O_WORLD, O_MODEL, O_VOCAB, O_HIDDEN, O_INTER, O_LAYERS, O_HEADS, O_KV, O_TIED, O_UNTIED, O_CRITIC,
    O_DTYPE, O_PLACE, O_SEED, O_STEP, O_EXPECTED, O_EXP_DT, O_EXP_SHARD, O_SUBDIR, O_FAULT, O_BUFFER, O_QUIET, O_HELP,
    O_LORA, O_LALPHA, O_LTARGETS, O_LADAPTERS, O_LCONFIG, O_LRANKPAT, O_LALPHAPAT, O_LRSLORA, O_LFAN, O_LDORA,
    O_DCP, O_DCP_CHUNKS, O_DCP_HSDP, O_DCP_FAULT
};

typedef struct opt_spec {
    const char *name;
    int has_arg, id;
    const char *arg, *help;
} opt_spec;

/* One table drives both getopt_long and --help. */
static const opt_spec SPECS[] = {
    {"out", required_argument, O_OUT, "DIR", "checkpoint root (required): writes DIR/global_step_N/actor/..."},
    {"world-size", required_argument, O_WORLD, "W", "number of FSDP ranks (required)"},
    {"model", required_argument, O_MODEL, "NAME", "tiny (default), qwen2.5-0.5b or qwen2.5-3b"},
    {"vocab", required_argument, O_VOCAB, "N", "override the vocabulary size"},
    {"hidden", required_argument, O_HIDDEN, "N", "override the hidden size"},
    {"intermediate", required_argument, O_INTER, "N", "override the MLP size"},
    {"layers", required_argument, O_LAYERS, "N", "override the number of layers"},
    {"heads", required_argument, O_HEADS, "N", "override the attention heads"},
    {"kv-heads", required_argument, O_KV, "N", "override the key/value heads"},
    {"tied", no_argument, O_TIED, NULL, "tie lm_head to embed_tokens (the presets' default)"},
    {"untied", no_argument, O_UNTIED, NULL, "a separate lm_head"},
    {"critic", no_argument, O_CRITIC, NULL, "a value model (score.weight [1, H], untied) in critic/"},
    {"dtype", required_argument, O_DTYPE, "TYPE", "parameter dtype: float32 (default) or bfloat16"},
    {"placement", required_argument, O_PLACE, "MODE", "shard0 (default) or verl (first dim divisible by W)"},
    {"seed", required_argument, O_SEED, "N", "value generator seed (default 0)"},
    {"step", required_argument, O_STEP, "N", "global step (default 1)"},
    {"expected", required_argument, O_EXPECTED, "DIR", "also write the expected merge output: DIR/bf16, DIR/fp32"},
    {"expected-dtypes", required_argument, O_EXP_DT, "LIST", "bfloat16,float32 (default), or one of them"},
    {"expected-max-shard-size", required_argument, O_EXP_SHARD, "SIZE",
     "split the expected output like the merger's --max-shard-size (default 5GB)"},
    {"subdir", required_argument, O_SUBDIR, "NAME", "folder of the rank files (default actor, critic)"},
    {"fault", required_argument, O_FAULT, "KIND:RANK[:KEY]",
     "make one rank's file wrong: shape, dtype, missing-key, extra-key, view-range, placement"},
    {"buffer-size", required_argument, O_BUFFER, "SIZE", "streaming buffer per process (default 8MiB)"},
    {"lora", required_argument, O_LORA, "R", "a PEFT LoRA model of rank R (PEFT names, lora_A/lora_B); expected = fused"},
    {"lora-alpha", required_argument, O_LALPHA, "X", "LoRA alpha (default 16)"},
    {"lora-targets", required_argument, O_LTARGETS, "LIST", "LoRA target modules (default q_proj,v_proj)"},
    {"lora-adapters", required_argument, O_LADAPTERS, "LIST", "adapter names (default default); the first is fused"},
    {"lora-config", required_argument, O_LCONFIG, "KIND", "adapter (adapter_config.json, default), meta (lora_train_meta.json) or none"},
    {"lora-rank-pattern", required_argument, O_LRANKPAT, "K=N,...", "PEFT rank_pattern"},
    {"lora-alpha-pattern", required_argument, O_LALPHAPAT, "K=X,...", "PEFT alpha_pattern"},
    {"lora-rslora", no_argument, O_LRSLORA, NULL, "use_rslora (scaling alpha/sqrt(r))"},
    {"lora-fan-in-fan-out", no_argument, O_LFAN, NULL, "fan_in_fan_out: target weights stored [in, out]"},
    {"lora-dora", no_argument, O_LDORA, NULL, "add DoRA magnitude vectors (the merger must refuse them)"},
    {"dcp", required_argument, O_DCP, "LAYOUT",
     "write a torch.distributed.checkpoint folder instead: accelerate (DIR/pytorch_model_fsdp_0), titan "
     "(DIR/step-N) or flat (DIR/dcp); one __F_0.distcp per rank"},
    {"dcp-chunks", required_argument, O_DCP_CHUNKS, "MODE", "DCP chunking: shard0 (default, torch.chunk on dim 0) or 2d"},
    {"dcp-hsdp", required_argument, O_DCP_HSDP, "R", "DCP: R replica groups, each chunk stored once (default 1)"},
    {"dcp-fault", required_argument, O_DCP_FAULT, "KIND",
     "DCP: missing-file:F, truncate:F, metadata, overlap, gap or transform"},
    {"quiet", no_argument, O_QUIET, NULL, "print errors only (also -q)"},
    {"help", no_argument, O_HELP, NULL, "show this help (also -h)"},
};

static void usage(FILE *out)
{
    fprintf(out, "fsdpsynth %s - synthesize a verl FSDP2 checkpoint (and its expected merge)\n\n"
                 "usage: [mpirun -np P] fsdpsynth --out DIR --world-size W [options]\n\noptions:\n",
            FM_VERSION);
    for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", SPECS[i].name, SPECS[i].arg ? " " : "", SPECS[i].arg ? SPECS[i].arg : "");
        fprintf(out, "  %-34s %s\n", left, SPECS[i].help);
    }
}

typedef struct cli {
    syn_opts o;
    const char *model;
    int64_t dims[6];  /* vocab, hidden, intermediate, layers, heads, kv-heads; -1 = preset */
    int tied;         /* -1 preset, 0 untied, 1 tied */
    bool critic, quiet, help;
    syd_opts dcp;     /* layout SYD_NONE: a verl checkpoint */
} cli;

static const char *spec_name(int id)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++)
        if (SPECS[i].id == id) return SPECS[i].name;
    return "?";
}

static int parse_i64(const char *opt, const char *s, int64_t *v, fm_err *e)
{
    uint64_t u;
    if (fm_parse_u64(s, &u, NULL) != 0 || u > INT64_MAX) return fm_fail(e, FM_EUSAGE, "--%s: '%s' is not a number", opt, s);
    *v = (int64_t)u;
    return 0;
}

static int parse_expected_dtypes(const char *s, syn_opts *o, fm_err *e)
{
    o->expected_bf16 = o->expected_fp32 = false;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        dt_type dt = dt_from_torch_name(tok);
        if (strcmp(tok, "bf16") == 0) dt = DT_BF16;
        if (strcmp(tok, "fp32") == 0) dt = DT_F32;
        if (dt == DT_BF16) o->expected_bf16 = true;
        else if (dt == DT_F32) o->expected_fp32 = true;
        else return fm_fail(e, FM_EUSAGE, "--expected-dtypes: '%s' is not bfloat16 or float32", tok);
    }
    return 0;
}

static int parse_dtype(const char *s, dt_type *dt, fm_err *e)
{
    *dt = strcmp(s, "bf16") == 0 ? DT_BF16 : strcmp(s, "fp32") == 0 ? DT_F32 : dt_from_torch_name(s);
    if (*dt != DT_F32 && *dt != DT_BF16) return fm_fail(e, FM_EUSAGE, "--dtype: '%s' is not float32 or bfloat16", s);
    return 0;
}

static int parse_one(cli *c, int id, const char *arg, fm_err *e)
{
    syn_opts *o = &c->o;
    int64_t v = 0;
    switch (id) {
    case O_OUT: o->out = arg; return 0;
    case O_WORLD:
        FM_TRY(parse_i64("world-size", arg, &v, e));
        if (v < 1 || v > SYN_MAX_WORLD) return fm_fail(e, FM_EUSAGE, "--world-size must be 1..%d", SYN_MAX_WORLD);
        o->world_size = (int)v;
        return 0;
    case O_MODEL: c->model = arg; return 0;
    case O_VOCAB: case O_HIDDEN: case O_INTER: case O_LAYERS: case O_HEADS: case O_KV:
        return parse_i64(spec_name(id), arg, &c->dims[id - O_VOCAB], e);
    case O_TIED: c->tied = 1; return 0;
    case O_UNTIED: c->tied = 0; return 0;
    case O_CRITIC: c->critic = true; return 0;
    case O_DTYPE: return parse_dtype(arg, &o->dtype, e);
    case O_PLACE:
        if (strcmp(arg, "shard0") == 0) o->placement = SYN_PLACE_SHARD0;
        else if (strcmp(arg, "verl") == 0) o->placement = SYN_PLACE_VERL;
        else return fm_fail(e, FM_EUSAGE, "--placement: '%s' is not shard0 or verl", arg);
        return 0;
    case O_SEED: return fm_parse_u64(arg, &o->seed, e);
    case O_STEP: return parse_i64("step", arg, &o->step, e);
    case O_EXPECTED: o->expected = arg; return 0;
    case O_EXP_DT: return parse_expected_dtypes(arg, o, e);
    case O_EXP_SHARD: return fm_parse_size(arg, &o->expected_max_shard, e);
    case O_SUBDIR: o->subdir = arg; return 0;
    case O_FAULT: return syn_parse_fault(arg, &o->fault, e);
    case O_BUFFER: {
        uint64_t b;
        FM_TRY(fm_parse_size(arg, &b, e));
        if (b < 4096 || b > ((uint64_t)1 << 32)) return fm_fail(e, FM_EUSAGE, "--buffer-size must be 4KiB..4GiB");
        o->buffer_size = (size_t)b;
        return 0;
    }
    case O_LORA:
        FM_TRY(parse_i64("lora", arg, &v, e));
        if (v < 1 || v > 65536) return fm_fail(e, FM_EUSAGE, "--lora must be a rank from 1 to 65536");
        o->lora_r = (int)v;
        return 0;
    case O_LALPHA: {
        char *end;
        o->lora_alpha = strtod(arg, &end);
        return *arg && *end == '\0' ? 0 : fm_fail(e, FM_EUSAGE, "--lora-alpha: '%s' is not a number", arg);
    }
    case O_LTARGETS: o->lora_targets = arg; return 0;
    case O_LADAPTERS: o->lora_adapters = arg; return 0;
    case O_LCONFIG:
        if (strcmp(arg, "adapter") && strcmp(arg, "meta") && strcmp(arg, "none"))
            return fm_fail(e, FM_EUSAGE, "--lora-config: '%s' is not adapter, meta or none", arg);
        o->lora_config = arg;
        return 0;
    case O_LRANKPAT: o->lora_rank_pattern = arg; return 0;
    case O_LALPHAPAT: o->lora_alpha_pattern = arg; return 0;
    case O_LRSLORA: o->lora_rslora = true; return 0;
    case O_LFAN: o->lora_fan_in_fan_out = true; return 0;
    case O_LDORA: o->lora_dora = true; return 0;
    case O_QUIET: c->quiet = true; return 0;
    case O_HELP: c->help = true; return 0;
    case O_DCP: return syd_parse_layout(arg, &c->dcp, e);
    case O_DCP_CHUNKS: return syd_parse_chunking(arg, &c->dcp, e);
    case O_DCP_HSDP: FM_TRY(parse_i64("dcp-hsdp", arg, &v, e)); c->dcp.hsdp = (int)FM_MIN(FM_MAX(v, 0), 1 << 20); return 0;
    case O_DCP_FAULT: return syd_parse_fault(arg, &c->dcp, e);
    default: return fm_fail(e, FM_EUSAGE, "unknown option");
    }
}

/* The preset first, then the overrides, whatever their order on the line. */
static int apply_model(cli *c, fm_err *e)
{
    syn_model *m = &c->o.model;
    FM_TRY(syn_model_preset(c->model ? c->model : "tiny", m, e));
    int64_t *f[6] = {&m->vocab, &m->hidden, &m->intermediate, &m->layers, &m->heads, &m->kv_heads};
    for (int i = 0; i < 6; i++)
        if (c->dims[i] >= 0) *f[i] = c->dims[i];
    if (c->tied >= 0) m->tied = c->tied == 1;
    m->critic = c->critic;
    if (c->critic && c->tied == 1) return fm_fail(e, FM_EUSAGE, "--critic and --tied do not go together");
    return 0;
}

static int parse_args(int argc, char **argv, cli *c, fm_err *e)
{
    memset(c, 0, sizeof *c);
    syn_default_opts(&c->o);
    for (int i = 0; i < 6; i++) c->dims[i] = -1;
    c->tied = -1;
    c->dcp.hsdp = 1;
    struct option lo[FM_ARRAY_LEN(SPECS) + 1];
    memset(lo, 0, sizeof lo);
    for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++)
        lo[i] = (struct option){SPECS[i].name, SPECS[i].has_arg, NULL, SPECS[i].id};
    opterr = 0;
    optind = 1;
    int id;
    while ((id = getopt_long(argc, argv, ":hq", lo, NULL)) != -1) {
        if (id == 'h') id = O_HELP;
        if (id == 'q') id = O_QUIET;
        if (id == '?' || id == ':')
            return fm_fail(e, FM_EUSAGE, "%s: %s", argv[optind - 1], id == ':' ? "needs a value" : "unknown option");
        FM_TRY(parse_one(c, id, optarg, e));
    }
    if (optind < argc) return fm_fail(e, FM_EUSAGE, "unexpected argument '%s'", argv[optind]);
    if (c->help) return 0;
    if (c->o.world_size == 0) return fm_fail(e, FM_EUSAGE, "--world-size is required (1..%d)", SYN_MAX_WORLD);
    return apply_model(c, e);
}

typedef struct tally {
    uint64_t shard_bytes, expected_bytes;
} tally;

/* Rank files p, p+P, ... then expected files offset by W so that processes
 * with fewer rank files take them first. */
static int write_share(syn_ctx *ctx, const syn_opts *o, int me, int np, tally *t, fm_err *e)
{
    for (int r = me; r < o->world_size; r += np) FM_TRY(syn_write_rank(ctx, r, &t->shard_bytes, e));
    size_t jobs = syn_expected_jobs(ctx);
    for (size_t j = 0; j < jobs; j++)
        if ((j + (size_t)o->world_size) % (size_t)np == (size_t)me) FM_TRY(syn_write_expected(ctx, j, &t->expected_bytes, e));
    return 0;
}

/* DCP: data files p, p+P, ... and expected files; process 0 writes .metadata
 * from every process's item locations. */
static int write_dcp(syn_ctx *ctx, const cli *c, int me, int np, tally *t, fm_err *e)
{
    const syn_opts *o = &c->o;
    fm_buf locs = {0};
    for (int f = me; f < o->world_size && e->code == 0; f += np) syd_write_file(ctx, o, &c->dcp, f, &locs, &t->shard_bytes, e);
    size_t jobs = syn_expected_jobs(ctx);
    for (size_t j = 0; j < jobs && e->code == 0; j++)
        if ((j + (size_t)o->world_size) % (size_t)np == (size_t)me) syn_write_expected(ctx, j, &t->expected_bytes, e);
    uint8_t *all = NULL;
    uint64_t *offs = NULL;
    int rc = comm_agree_all(e, MPI_COMM_WORLD);
    if (rc == 0) rc = comm_allgather_blobs_all(locs.data, locs.len, MPI_COMM_WORLD, &all, &offs, e);
    if (rc == 0 && me == 0) syd_write_metadata(ctx, o, &c->dcp, all, (size_t)offs[np], e);
    fm_buf_free(&locs);
    free(all);
    free(offs);
    return rc ? rc : comm_agree_all(e, MPI_COMM_WORLD);
}

static void report(const syn_ctx *ctx, const syn_opts *o, const tally *sum, double secs)
{
    char a[32], b[32];
    uint64_t params = 0;
    for (size_t i = 0; i < syn_tensor_count(ctx); i++)
        if (syn_tensor_at(ctx, i)->tied_to < 0) params += syn_tensor_at(ctx, i)->numel;
    const syn_model *m = &o->model;
    printf("fsdpsynth: %s V=%" PRId64 " H=%" PRId64 " I=%" PRId64 " L=%" PRId64 " heads=%" PRId64 "/%" PRId64 "%s%s, %s\n",
           m->preset, m->vocab, m->hidden, m->intermediate, m->layers, m->heads, m->kv_heads, m->tied ? " tied" : "",
           m->critic ? " critic" : "", dt_torch_name(o->dtype));
    printf("fsdpsynth: %" PRIu64 " parameters, %d rank files (%s of storages) in %s\n", params, o->world_size,
           fm_format_bytes(sum->shard_bytes, a, sizeof a), syn_actor_dir(ctx));
    if (o->expected) printf("fsdpsynth: expected output %s in %s\n", fm_format_bytes(sum->expected_bytes, b, sizeof b), o->expected);
    double total = (double)(sum->shard_bytes + sum->expected_bytes);
    printf("fsdpsynth: %.2f s, %.0f MB/s\n", secs, secs > 0 ? total / secs / 1e6 : 0.0);
}

static int run_all(const cli *c, int me, int np, fm_err *e)
{
    syn_ctx *ctx = NULL;
    double t0 = MPI_Wtime();
    syn_init(&c->o, &ctx, e); /* every process validates the same options */
    if (comm_agree_all(e, MPI_COMM_WORLD)) {
        syn_free(ctx);
        return e->code;
    }
    if (me == 0) c->dcp.layout ? syd_write_meta(ctx, &c->o, &c->dcp, e) : syn_write_meta(ctx, e);
    tally t = {0, 0}, sum = {0, 0};
    if (c->dcp.layout && comm_agree_all(e, MPI_COMM_WORLD) == 0) {
        write_dcp(ctx, c, me, np, &t, e);
    } else if (!c->dcp.layout && comm_agree_all(e, MPI_COMM_WORLD) == 0) {
        write_share(ctx, &c->o, me, np, &t, e);
        comm_agree_all(e, MPI_COMM_WORLD);
    }
    MPI_Reduce(&t, &sum, 2, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    if (e->code == 0 && me == 0 && !c->quiet) report(ctx, &c->o, &sum, MPI_Wtime() - t0);
    syn_free(ctx);
    return e->code;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int me = 0, np = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &np);
    fm_err e = {0};
    cli c;
    int rc = parse_args(argc, argv, &c, &e);
    if (rc == 0 && c.help) {
        if (me == 0) usage(stdout);
    } else if (rc == 0) {
        rc = run_all(&c, me, np, &e);
    }
    if (rc != 0 && me == 0) {
        fprintf(stderr, "fsdpsynth: error: %s\n", e.msg);
        if (rc == FM_EUSAGE) fprintf(stderr, "Try 'fsdpsynth --help'.\n");
    }
    MPI_Finalize();
    return rc;
}
