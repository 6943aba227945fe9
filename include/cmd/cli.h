/* cli.h - the command line.
 *
 * One table drives parsing (getopt_long) and --help, so they cannot drift.
 * Both converters' spellings are accepted: the torchrun one
 * (--checkpoint_path/--output_path) and the simple script's (positional
 * checkpoint, --output, --actor-dir, --dtype). Every process parses the same
 * argv and gets the same result; only rank 0 prints.
 */
#ifndef FM_CLI_H
#define FM_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "base/dtype.h"
#include "base/err.h"
#include "plan/plan.h"
#include "plan/lora.h"
#include "base/progress.h"

typedef enum cli_command {
    CLI_MERGE = 0, CLI_INSPECT, CLI_HELP, CLI_VERSION, CLI_MAN, CLI_CHECK, CLI_VERIFY, CLI_RESHARD
} cli_command;
typedef enum cli_mode { CLI_MODE_AUTO = 0, CLI_MODE_GATHER, CLI_MODE_DIRECT } cli_mode;
/* which weight files: model*.safetensors, model.h5 (parallel HDF5), or both */
typedef enum cli_format { CLI_FORMAT_SAFETENSORS = 0, CLI_FORMAT_HDF5, CLI_FORMAT_BOTH } cli_format;

#define CLI_MAX_HINTS 32

typedef struct cli_opts {
    cli_command command;
    /* merge */
    char *checkpoint;         /* step folder or actor folder */
    char *output;             /* malloc'd: --output, or <checkpoint>_merged */
    const char *output_arg;   /* --output as given (argv), NULL when absent */
    const char *actor_dir;    /* default "actor" */
    dt_type dtype;            /* DT_INVALID = auto */
    uint64_t max_shard_size;  /* default 5 GB */
    uint64_t buffer_size;     /* default 64 MiB */
    int writer;               /* default 0 */
    int world_size;           /* 0 = from the checkpoint */
    plan_plain_mode plain;
    const char *architecture; /* NULL = keep or infer */
    const char *report;       /* JSON summary path, NULL = none */
    bool force, no_crc, no_fsync, no_direct_io;
    bool optimizer;           /* also merge the optimizer state */
    cli_mode mode;
    cli_format format;        /* default safetensors */
    const char *shard_template; /* %w world size, %r rank, %k kind; NULL = next to fsdp_config.json */
    const char *hints[CLI_MAX_HINTS]; /* "key=value" MPI-IO hints */
    int nhints;
    bool show_hints;
    pg_mode progress;
    bool quiet;
    /* inspect */
    const char *inspect_file;
    bool json;
    long values;              /* tensor values to print (inspect), default 0 */
    /* LoRA (plan/lora.h) */
    lr_mode lora;             /* LR_MODE_AUTO: fused when LoRA keys are present */
    const char *lora_name;    /* adapter, default "default" */
    double lora_alpha;
    bool have_lora_alpha;
    int lora_rank;            /* 0 = from the config */
    /* DCP checkpoints */
    const char *dcp_key;      /* entry of a nested state dict; NULL = model / flat */
    const char *hf_config;    /* folder with config.json; NULL = huggingface/ next to it */
    /* check, verify, manifest */
    char *cmdline;            /* malloc'd: argv joined with spaces, for the manifest */
    bool no_manifest;         /* merge: no fsdpmerge_manifest.json */
    bool verify;              /* merge: re-read the output before the rename */
    const char *verify_dir;   /* verify: the output folder to check */
    const char *reference;    /* verify: a HuggingFace folder to compare with */
    double atol, rtol;        /* verify --reference: tolerances (both 0: bytes) */
    bool dtype_given, shard_size_given; /* --dtype, --max-shard-size on the command line */
    int timeout;              /* watchdog: seconds without progress in a phase, 0 = off */
    bool no_space_check;      /* skip the pre-flight statvfs of the output */
    /* reshard (the new world size is world_size) */
    int placement;            /* 0 = as the input shows, 1 = dim0, 2 = verl */
    int mesh_r, mesh_s;       /* --mesh R,S (0 = from the input) */
} cli_opts;

/*! cli_parse() : fills o from argv. FM_EUSAGE with a one-line message for
 *  bad usage. o->output is malloc'd (free with cli_free). */
int cli_parse(int argc, char **argv, cli_opts *o, fm_err *e);
void cli_free(cli_opts *o);
/*! cli_usage() : the --help text. */
void cli_usage(FILE *out);
/*! cli_man() : the same text as a roff manual page (fsdpmerge.1). */
void cli_man(FILE *out);

#endif
