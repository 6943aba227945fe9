/* cli.c - see cli.h. */
#include "cmd/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "base/util.h"

enum {
    OPT_CHECKPOINT = 256, OPT_OUTPUT, OPT_ACTOR, OPT_DTYPE, OPT_SHARD, OPT_BUFFER, OPT_WRITER, OPT_WORLD,
    OPT_PLAIN, OPT_ARCH, OPT_REPORT, OPT_FORCE, OPT_NOCRC, OPT_NOFSYNC, OPT_PROGRESS, OPT_QUIET, OPT_JSON,
    OPT_VALUES, OPT_HELP, OPT_VERSION, OPT_MODE, OPT_TEMPLATE, OPT_HINT, OPT_SHOWHINTS, OPT_OPTIMIZER, OPT_NODIO,
    OPT_FORMAT, OPT_MAN, OPT_LORA, OPT_LORA_NAME, OPT_LORA_ALPHA, OPT_LORA_RANK,
    OPT_DCPKEY, OPT_HFCONFIG, OPT_NOMANIFEST, OPT_VERIFY, OPT_REFERENCE, OPT_ATOL, OPT_RTOL, OPT_TIMEOUT, OPT_NOSPACE,
    OPT_PLACEMENT, OPT_MESH
};

typedef struct opt_spec {
    const char *name;
    int short_name; /* 0 = none */
    int has_arg;
    int id;
    const char *arg;  /* shown in help; NULL for flags */
    const char *help; /* NULL = alias, not listed */
} opt_spec;

static const opt_spec SPECS[] = {
    {"checkpoint_path", 0, required_argument, OPT_CHECKPOINT, "PATH",
     "checkpoint step folder (global_step_N) or its actor folder; may also be given as the first argument"},
    {"checkpoint-path", 0, required_argument, OPT_CHECKPOINT, NULL, NULL},
    {"output_path", 'o', required_argument, OPT_OUTPUT, "PATH",
     "output folder (default: <checkpoint>_merged); written under a temporary name and renamed at the end"},
    {"output-path", 0, required_argument, OPT_OUTPUT, NULL, NULL},
    {"output", 0, required_argument, OPT_OUTPUT, NULL, NULL},
    {"actor-dir", 0, required_argument, OPT_ACTOR, "NAME", "sub-folder holding the rank files (default: actor; critic for a value model)"},
    {"actor_dir", 0, required_argument, OPT_ACTOR, NULL, NULL},
    {"dtype", 0, required_argument, OPT_DTYPE, "TYPE",
     "bfloat16 (default), float16, float32 or auto (keep the saved dtype); only float tensors are converted"},
    {"max-shard-size", 0, required_argument, OPT_SHARD, "SIZE",
     "split the weights into files of at most SIZE (default 5GB, as transformers 4.x)"},
    {"max_shard_size", 0, required_argument, OPT_SHARD, NULL, NULL},
    {"writer-rank", 0, required_argument, OPT_WRITER, "N", "process that writes the output files (default 0)"},
    {"buffer-size", 0, required_argument, OPT_BUFFER, "SIZE",
     "I/O buffer budget per process (default 64MiB); bounds the memory of every process"},
    {"world-size", 0, required_argument, OPT_WORLD, "N",
     "expected world size (checked against the files); reshard: the world size to write"},
    {"plain", 0, required_argument, OPT_PLAIN, "MODE",
     "plain (non-DTensor) tensors: auto (default: identical on all ranks = replicated, else dim-0 slices), "
     "replicated, or concat"},
    {"architecture", 0, required_argument, OPT_ARCH, "NAME",
     "value of config.json's architectures (default: keep it, or infer it from model_type and the head)"},
    {"report", 0, required_argument, OPT_REPORT, "FILE", "write a JSON summary (tensors, bytes, seconds per phase)"},
    {"mode", 0, required_argument, OPT_MODE, "MODE",
     "gather (the writer writes everything), direct (every process writes its own pieces with MPI-IO) or auto "
     "(default: direct when every process sees the output folder, else gather; on one machine gather is faster)"},
    {"format", 0, required_argument, OPT_FORMAT, "FORMAT",
     "safetensors (default), hdf5 (one model.h5 with a dataset per tensor, written by every process with parallel "
     "HDF5; needs a shared output folder) or both"},
    {"shard-template", 0, required_argument, OPT_TEMPLATE, "PATH",
     "where each process finds its rank files, e.g. /local/ckpt/model_world_size_%w_rank_%r.pt (%w world size, "
     "%r rank, %k file kind); for shards on node-local disks"},
    {"mpi-hint", 0, required_argument, OPT_HINT, "KEY=VALUE",
     "an MPI-IO hint for direct mode and --format hdf5 (repeatable), e.g. striping_factor=8"},
    {"show-hints", 0, no_argument, OPT_SHOWHINTS, NULL, "print the MPI-IO hints in effect (direct mode, --format hdf5)"},
    {"optimizer", 0, no_argument, OPT_OPTIMIZER, NULL,
     "also merge the optimizer state (FSDP2): optimizer/optimizer.safetensors ({name}.exp_avg, ...) and "
     "optimizer/optimizer_state.json"},
    {"force", 'f', no_argument, OPT_FORCE, NULL, "replace an existing output folder"},
    {"no-crc", 0, no_argument, OPT_NOCRC, NULL, "do not verify the CRC-32 of the records read"},
    {"no-fsync", 0, no_argument, OPT_NOFSYNC, NULL, "do not fsync the output before the final rename"},
    {"no-direct-io", 0, no_argument, OPT_NODIO, NULL,
     "gather mode: write through the page cache instead of O_DIRECT (direct I/O is skipped anyway where the "
     "file system does not support it)"},
    {"progress", 0, required_argument, OPT_PROGRESS, "MODE", "auto (default: a bar on a terminal, lines otherwise), bar, lines, none"},
    {"quiet", 'q', no_argument, OPT_QUIET, NULL, "print errors only"},
    {"json", 0, no_argument, OPT_JSON, NULL, "inspect: print JSON"},
    {"values", 0, required_argument, OPT_VALUES, "N", "inspect: print the first N values of each tensor (-1 = all)"},
    {"lora", 0, required_argument, OPT_LORA, "MODE",
     "a PEFT LoRA checkpoint: fused (default: the adapter fused into the base weights, W + alpha/r * B @ A in "
     "fp32, rounded once), adapter (the base model plus lora_adapter/ as PEFT's save_pretrained) or both"},
    {"lora-name", 0, required_argument, OPT_LORA_NAME, "NAME", "the LoRA adapter to merge (default: default)"},
    {"lora-alpha", 0, required_argument, OPT_LORA_ALPHA, "X",
     "LoRA alpha, when neither actor/lora_adapter/adapter_config.json nor lora_train_meta.json gives it (overrides them)"},
    {"lora-rank", 0, required_argument, OPT_LORA_RANK, "N", "LoRA rank r (default: from the config or lora_A's rows)"},
    {"dcp-key", 0, required_argument, OPT_DCPKEY, "NAME",
     "DCP checkpoints: the entry of the nested state dict holding the model (default: model, or the flat state "
     "dict)"},
    {"hf-config", 0, required_argument, OPT_HFCONFIG, "DIR",
     "DCP checkpoints: folder with config.json and the tokenizer (default: a huggingface/ folder next to the "
     "checkpoint)"},
    {"no-manifest", 0, no_argument, OPT_NOMANIFEST, NULL,
     "do not write fsdpmerge_manifest.json (provenance and a CRC-32C per tensor) into the output"},
    {"verify", 0, no_argument, OPT_VERIFY, NULL,
     "before the final rename, re-read the output from disk and compare it with CRC-32Cs computed as the data "
     "was converted; a difference fails the merge"},
    {"reference", 0, required_argument, OPT_REFERENCE, "DIR",
     "verify: compare OUT with another HuggingFace folder, tensor by tensor"},
    {"atol", 0, required_argument, OPT_ATOL, "X", "verify --reference: absolute tolerance (default 0: bytes must be equal)"},
    {"rtol", 0, required_argument, OPT_RTOL, "X", "verify --reference: relative tolerance (default 0)"},
    {"placement", 0, required_argument, OPT_PLACEMENT, "RULE",
     "reshard: dim0 (Shard(0) everywhere) or verl (the first dim divisible by the shard count); default: the rule "
     "the input follows"},
    {"mesh", 0, required_argument, OPT_MESH, "R,S",
     "reshard: an HSDP mesh of R replicas of S shards (default: the input's replicas, shards resized)"},
    {"help", 'h', no_argument, OPT_HELP, NULL, "show this help"},
    {"version", 'V', no_argument, OPT_VERSION, NULL, "show the version"},
    {"timeout", 0, required_argument, OPT_TIMEOUT, "SECONDS",
     "end every process (exit 12) when one makes no progress for SECONDS in a phase (default 600; 0 = never)"},
    {"no-space-check", 0, no_argument, OPT_NOSPACE, NULL,
     "skip the check of the output file system's free space (for file systems that misreport it)"},
    {"man", 0, no_argument, OPT_MAN, NULL, "print this help as a manual page (roff), as installed in fsdpmerge.1"},
};

/* The synopsis, description and exit codes, shared by --help and --man so
 * that the installed manual can never disagree with the program. */
static const char *const USAGE[] = {
    "mpirun -np W fsdpmerge --checkpoint_path CKPT --output_path OUT [options]",
    "mpirun -np W fsdpmerge CKPT [--output OUT] [--actor-dir actor] [--dtype bfloat16]",
    "fsdpmerge CKPT                      (one process; output CKPT_merged)",
    "fsdpmerge inspect FILE.pt [--json] [--values N]",
    "fsdpmerge inspect DCP_FOLDER/.metadata | FILE.distcp[@OFFSET]",
    "mpirun -np P fsdpmerge check CKPT [--optimizer] [--output_path OUT]   (reads all, writes nothing)",
    "mpirun -np P fsdpmerge verify OUT [--checkpoint_path CKPT]           (OUT against CKPT or its manifest)",
    "fsdpmerge verify OUT --reference DIR [--atol X --rtol Y]",
    "mpirun -np P fsdpmerge reshard CKPT --world-size N --output_path OUT [--placement dim0|verl]",
};
static const char SUMMARY[] = "merge a sharded FSDP checkpoint into one HuggingFace model, with MPI";
static const char DESCRIPTION[] =
    "CKPT is a verl checkpoint (global_step_N or its actor folder) or a torch.distributed.checkpoint folder "
    "(.metadata and *.distcp: accelerate's pytorch_model_fsdp_0, torchtitan's step-N, or above). "
    "Run one process per original rank (-np W, the world size of the checkpoint) or fewer: "
    "process p then reads ranks p, p+P, ...";
static const char EXIT_CODES[] = "0 ok, 2 usage, 3 I/O, 4 corrupt input, 5 unsupported input, 6 ranks disagree, "
                                 "7 output exists, 8 out of memory, 9 MPI, 10 internal, 11 verify found a difference, 12 watchdog timeout";

/* Prints text from column `indent`, wrapping at `width` on spaces. */
static void print_wrapped(FILE *out, const char *text, int indent, int width)
{
    int col = indent;
    const char *p = text;
    while (*p) {
        const char *sp = strchr(p, ' ');
        int wl = sp ? (int)(sp - p) : (int)strlen(p);
        if (col > indent && col + 1 + wl > width) {
            fprintf(out, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', out);
            col++;
        }
        fprintf(out, "%.*s", wl, p);
        col += wl;
        p += wl;
        while (*p == ' ') p++;
    }
    fputc('\n', out);
}

/* "-q, --quiet" or "--dtype TYPE": the left column of --help. */
static void spec_left(const opt_spec *s, char *buf, size_t len)
{
    char sh[8] = "";
    if (s->short_name) snprintf(sh, sizeof sh, "-%c, ", s->short_name);
    snprintf(buf, len, "%s--%s%s%s", sh, s->name, s->arg ? " " : "", s->arg ? s->arg : "");
}

void cli_usage(FILE *out)
{
    fprintf(out, "fsdpmerge %s - %s\n\nusage:\n", FM_VERSION, SUMMARY);
    for (size_t i = 0; i < FM_ARRAY_LEN(USAGE); i++) fprintf(out, "  %s\n", USAGE[i]);
    fputc('\n', out);
    print_wrapped(out, DESCRIPTION, 0, 92);
    fprintf(out, "\noptions:\n");
    for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++) {
        const opt_spec *s = &SPECS[i];
        if (s->help == NULL) continue;
        char left[64];
        spec_left(s, left, sizeof left);
        fprintf(out, "  %-30s ", left);
        print_wrapped(out, s->help, 33, 100);
    }
    fprintf(out, "\nexit codes: ");
    print_wrapped(out, EXIT_CODES, 12, 100);
}

/* Text for roff: a backslash is \e, a hyphen \- (so that man pages can be
 * searched and copied), and a line may not start with a control character. */
static void roff_text(FILE *out, const char *s)
{
    if (*s == '.' || *s == '\'') fputs("\\&", out);
    for (; *s; s++) {
        if (*s == '\\') fputs("\\e", out);
        else if (*s == '-') fputs("\\-", out);
        else fputc(*s, out);
    }
}

void cli_man(FILE *out)
{
    fprintf(out, ".TH FSDPMERGE 1 \"\" \"fsdpmerge %s\" \"User Commands\"\n.SH NAME\nfsdpmerge \\- ", FM_VERSION);
    roff_text(out, SUMMARY);
    fprintf(out, "\n.SH SYNOPSIS\n.nf\n");
    for (size_t i = 0; i < FM_ARRAY_LEN(USAGE); i++) {
        roff_text(out, USAGE[i]);
        fputc('\n', out);
    }
    fprintf(out, ".fi\n.SH DESCRIPTION\n");
    roff_text(out, DESCRIPTION);
    fprintf(out, "\n.SH OPTIONS\n");
    for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++) {
        const opt_spec *s = &SPECS[i];
        if (s->help == NULL) continue;
        char left[64];
        spec_left(s, left, sizeof left);
        fprintf(out, ".TP\n.B ");
        roff_text(out, left);
        fputc('\n', out);
        roff_text(out, s->help);
        fputc('\n', out);
    }
    fprintf(out, ".SH EXIT STATUS\n");
    roff_text(out, EXIT_CODES);
    fprintf(out, "\n.SH SEE ALSO\n.BR fsdpmerge\\-run (1),\n.BR mpirun (1),\n"
                 "/usr/share/doc/fsdpmerge/ (design, formats, cluster use, benchmarks)\n");
}

static int parse_int(const char *s, int lo, int hi, const char *what, int *out, fm_err *e)
{
    uint64_t v;
    if (fm_parse_u64(s, &v, e) || v < (uint64_t)lo || v > (uint64_t)hi)
        return fm_fail(e, FM_EUSAGE, "%s must be an integer from %d to %d, got '%s'", what, lo, hi, s);
    *out = (int)v;
    return 0;
}

static int parse_dtype(const char *s, dt_type *out, fm_err *e)
{
    if (strcmp(s, "auto") == 0) {
        *out = DT_INVALID;
        return 0;
    }
    dt_type t = dt_from_torch_name(s);
    if (t != DT_F32 && t != DT_F16 && t != DT_BF16)
        return fm_fail(e, FM_EUSAGE, "--dtype must be bfloat16, float16, float32 or auto, got '%s'", s);
    *out = t;
    return 0;
}

static int parse_tol(const char *s, const char *what, double *out, fm_err *e)
{
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno || !(*out >= 0) || *out > 1e30)
        return fm_fail(e, FM_EUSAGE, "%s must be a number >= 0, got '%s'", what, s);
    return 0;
}

static int pick(const char *s, const char *const *names, int n, const char *what, int *out, fm_err *e)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return fm_fail(e, FM_EUSAGE, "unknown %s '%s'", what, s);
}

static int apply(cli_opts *o, int id, const char *arg, fm_err *e)
{
    static const char *const plain[] = {"auto", "replicated", "concat"};
    static const char *const prog[] = {"auto", "bar", "lines", "none"};
    static const char *const modes[] = {"auto", "gather", "direct"};
    static const char *const formats[] = {"safetensors", "hdf5", "both"};
    int v = 0;
    switch (id) {
    case OPT_CHECKPOINT: o->checkpoint = (char *)arg; return 0;
    case OPT_OUTPUT: o->output_arg = arg; return 0;
    case OPT_ACTOR: o->actor_dir = arg; return 0;
    case OPT_DTYPE: o->dtype_given = true; return parse_dtype(arg, &o->dtype, e);
    case OPT_SHARD: o->shard_size_given = true; return fm_parse_size(arg, &o->max_shard_size, e);
    case OPT_BUFFER: FM_TRY(fm_parse_size(arg, &o->buffer_size, e));
        return o->buffer_size < (64u << 10) ? fm_fail(e, FM_EUSAGE, "--buffer-size must be at least 64KiB") : 0;
    case OPT_WRITER: return parse_int(arg, 0, 1 << 24, "--writer-rank", &o->writer, e);
    case OPT_WORLD: return parse_int(arg, 1, 1000000, "--world-size", &o->world_size, e);
    case OPT_PLAIN: FM_TRY(pick(arg, plain, 3, "--plain mode", &v, e)); o->plain = (plan_plain_mode)v; return 0;
    case OPT_ARCH: o->architecture = arg; return 0;
    case OPT_REPORT: o->report = arg; return 0;
    case OPT_FORCE: o->force = true; return 0;
    case OPT_NOCRC: o->no_crc = true; return 0;
    case OPT_NOFSYNC: o->no_fsync = true; return 0;
    case OPT_PROGRESS: FM_TRY(pick(arg, prog, 4, "--progress mode", &v, e)); o->progress = (pg_mode)v; return 0;
    case OPT_QUIET: o->quiet = true; o->progress = PG_NONE; return 0;
    case OPT_JSON: o->json = true; return 0;
    case OPT_VALUES: {
        if (strcmp(arg, "-1") == 0) o->values = -1;
        else if (parse_int(arg, 0, 1 << 30, "--values", &v, e)) return e->code;
        else o->values = v;
        return 0;
    }
    case OPT_MODE: FM_TRY(pick(arg, modes, 3, "--mode", &v, e)); o->mode = (cli_mode)v; return 0;
    case OPT_FORMAT: FM_TRY(pick(arg, formats, 3, "--format", &v, e)); o->format = (cli_format)v; return 0;
    case OPT_TEMPLATE:
        if (strstr(arg, "%r") == NULL) return fm_fail(e, FM_EUSAGE, "--shard-template must contain %%r (the rank)");
        o->shard_template = arg;
        return 0;
    case OPT_HINT:
        if (strchr(arg, '=') == NULL || arg[0] == '=') return fm_fail(e, FM_EUSAGE, "--mpi-hint takes KEY=VALUE, got '%s'", arg);
        if (o->nhints == CLI_MAX_HINTS) return fm_fail(e, FM_EUSAGE, "more than %d --mpi-hint options", CLI_MAX_HINTS);
        o->hints[o->nhints++] = arg;
        return 0;
    case OPT_SHOWHINTS: o->show_hints = true; return 0;
    case OPT_OPTIMIZER: o->optimizer = true; return 0;
    case OPT_NODIO: o->no_direct_io = true; return 0;
    case OPT_LORA: {
        static const char *const lm[] = {"auto", "fused", "adapter", "both"};
        FM_TRY(pick(arg, lm + 1, 3, "--lora mode", &v, e));
        o->lora = (lr_mode)(v + 1);
        return 0;
    }
    case OPT_LORA_NAME: o->lora_name = arg; return 0;
    case OPT_LORA_ALPHA: {
        char *end;
        o->lora_alpha = strtod(arg, &end);
        if (*arg == '\0' || *end != '\0' || !isfinite(o->lora_alpha))
            return fm_fail(e, FM_EUSAGE, "--lora-alpha must be a number, got '%s'", arg);
        o->have_lora_alpha = true;
        return 0;
    }
    case OPT_LORA_RANK: return parse_int(arg, 1, 1000000, "--lora-rank", &o->lora_rank, e);
    case OPT_DCPKEY: o->dcp_key = arg; return 0;
    case OPT_HFCONFIG: o->hf_config = arg; return 0;
    case OPT_NOMANIFEST: o->no_manifest = true; return 0;
    case OPT_VERIFY: o->verify = true; return 0;
    case OPT_REFERENCE: o->reference = arg; return 0;
    case OPT_ATOL: return parse_tol(arg, "--atol", &o->atol, e);
    case OPT_RTOL: return parse_tol(arg, "--rtol", &o->rtol, e);
    case OPT_TIMEOUT: return parse_int(arg, 0, 1 << 30, "--timeout", &o->timeout, e);
    case OPT_NOSPACE: o->no_space_check = true; return 0;
    case OPT_PLACEMENT: {
        static const char *const rules[] = {"dim0", "verl"};
        FM_TRY(pick(arg, rules, 2, "--placement rule", &v, e));
        o->placement = v + 1;
        return 0;
    }
    case OPT_MESH: {
        char tail;
        if (sscanf(arg, "%d,%d%c", &o->mesh_r, &o->mesh_s, &tail) != 2 || o->mesh_r < 1 || o->mesh_s < 1)
            return fm_fail(e, FM_EUSAGE, "--mesh takes R,S (two positive integers), got '%s'", arg);
        return 0;
    }
    case OPT_HELP: o->command = CLI_HELP; return 0;
    case OPT_VERSION: o->command = CLI_VERSION; return 0;
    case OPT_MAN: o->command = CLI_MAN; return 0;
    default: return fm_fail(e, FM_EINTERNAL, "unhandled option %d", id);
    }
}

static void defaults(cli_opts *o)
{
    memset(o, 0, sizeof *o);
    o->actor_dir = "actor";
    o->dtype = DT_BF16;
    o->max_shard_size = 5000000000ull;
    o->buffer_size = 64ull << 20;
    o->lora_name = "default";
    o->timeout = 600;
}

static int positionals(int argc, char **argv, cli_opts *o, fm_err *e)
{
    int i = optind;
    if (i < argc && strcmp(argv[i], "inspect") == 0 && o->command == CLI_MERGE) {
        o->command = CLI_INSPECT;
        i++;
        if (i >= argc) return fm_fail(e, FM_EUSAGE, "inspect needs a .pt file");
        o->inspect_file = argv[i++];
    } else if (i < argc && strcmp(argv[i], "merge") == 0) {
        i++;
    } else if (i < argc && strcmp(argv[i], "check") == 0 && o->command == CLI_MERGE) {
        o->command = CLI_CHECK;
        i++;
    } else if (i < argc && strcmp(argv[i], "verify") == 0 && o->command == CLI_MERGE) {
        o->command = CLI_VERIFY;
        if (++i >= argc) return fm_fail(e, FM_EUSAGE, "verify needs the output folder to check");
        o->verify_dir = argv[i++];
    } else if (i < argc && strcmp(argv[i], "reshard") == 0 && o->command == CLI_MERGE) {
        o->command = CLI_RESHARD;
        i++;
    }
    if ((o->command == CLI_MERGE || o->command == CLI_CHECK || o->command == CLI_RESHARD) && i < argc &&
        o->checkpoint == NULL)
        o->checkpoint = argv[i++];
    if (i < argc) return fm_fail(e, FM_EUSAGE, "unexpected argument '%s'", argv[i]);
    return 0;
}

/* argv as given (getopt permutes it), for the manifest */
static char *join_args(int argc, char **argv)
{
    fm_buf b = {0};
    for (int i = 0; i < argc; i++) {
        if (i) fm_buf_append(&b, " ", 1);
        fm_buf_append(&b, argv[i], strlen(argv[i]));
    }
    fm_buf_append(&b, "", 1);
    return (char *)b.data;
}

int cli_parse(int argc, char **argv, cli_opts *o, fm_err *e)
{
    defaults(o);
    o->cmdline = join_args(argc, argv);
    struct option longs[FM_ARRAY_LEN(SPECS) + 1];
    char shorts[64];
    size_t ns = 0;
    for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++) {
        longs[i] = (struct option){SPECS[i].name, SPECS[i].has_arg, NULL, SPECS[i].id};
        if (SPECS[i].short_name) {
            shorts[ns++] = (char)SPECS[i].short_name;
            if (SPECS[i].has_arg) shorts[ns++] = ':';
        }
    }
    longs[FM_ARRAY_LEN(SPECS)] = (struct option){0};
    shorts[ns] = '\0';
    /* leading ':' makes getopt report a missing value as ':'; GNU getopt
     * permutes argv, so options may come after the checkpoint */
    char optstr[70];
    snprintf(optstr, sizeof optstr, ":%s", shorts);
    optind = 1;
    opterr = 0;
    int c, idx;
    while ((c = getopt_long(argc, argv, optstr, longs, &idx)) != -1) {
        if (c == '?' || c == ':') {
            const char *bad = argv[optind - 1];
            return fm_fail(e, FM_EUSAGE, "%s '%s' (see --help)", c == ':' ? "missing value for" : "unknown option", bad);
        }
        int id = c;
        for (size_t i = 0; i < FM_ARRAY_LEN(SPECS); i++)
            if (SPECS[i].short_name == c) id = SPECS[i].id;
        FM_TRY(apply(o, id, optarg, e));
    }
    FM_TRY(positionals(argc, argv, o, e));
    if (o->command == CLI_VERIFY && o->reference && o->checkpoint)
        return fm_fail(e, FM_EUSAGE, "verify: give --checkpoint_path or --reference, not both");
    if (o->command == CLI_VERIFY && o->checkpoint == NULL) return 0;
    if (o->command != CLI_MERGE && o->command != CLI_CHECK && o->command != CLI_VERIFY && o->command != CLI_RESHARD)
        return 0;
    if (o->checkpoint == NULL) return fm_fail(e, FM_EUSAGE, "no checkpoint given (see --help)");
    if (o->command == CLI_RESHARD && (o->world_size == 0 || o->output_arg == NULL))
        return fm_fail(e, FM_EUSAGE, "reshard needs --world-size N and --output_path OUT");
    size_t n = strlen(o->checkpoint);
    while (n > 1 && o->checkpoint[n - 1] == '/') o->checkpoint[--n] = '\0';
    if (o->command == CLI_VERIFY) o->output_arg = NULL; /* the folder to verify is the output */
    o->output = o->command == CLI_VERIFY ? fm_strdup(o->verify_dir)
                : o->output_arg            ? fm_strdup(o->output_arg)
                                           : fm_asprintf("%s_merged", o->checkpoint);
    if (o->output == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    return 0;
}

void cli_free(cli_opts *o)
{
    free(o->output); /* only ever malloc'd by cli_parse, NULL otherwise */
    o->output = NULL;
    free(o->cmdline);
    o->cmdline = NULL;
}
