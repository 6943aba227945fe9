/* synth.h - synthetic verl/FSDP2 checkpoints of any size (bin/fsdpsynth).
 *
 * A model spec (Qwen2-style decoder: embed_tokens, L layers, norm, lm_head,
 * or a value model with `score`) is turned into the list of its parameters
 * in transformers' state_dict() order. Every element has a deterministic,
 * counter-based value (splitmix64 of the seed, the tensor and the global
 * element index), so any rank can produce its slice without the rest, and
 * the expected merge result can be produced from the same generator without
 * reading the shards back (an independent oracle for the merger).
 *
 * A rank file is what torch 2.11 writes for torch.save(model.state_dict())
 * under FSDP2 (fully_shard on a 1-D mesh named "fsdp"): an OrderedDict of
 * DTensors whose local tensors are narrow() views into padded storages of
 * chunk-0 size (torch_format.md §5.4), with the same pickle structure,
 * memo sharing, GLOBAL names and storage record order as the real files.
 * Storages are streamed through one fixed buffer: memory does not grow with
 * the model.
 *
 * Nothing here calls MPI: synth_main.c hands out the rank files and the
 * expected files to the processes.
 */
#ifndef FM_SYNTH_H
#define FM_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/err.h"
#include "base/util.h"

#define SYN_MAX_WORLD 65536
#define SYN_NAME_MAX 160

typedef struct syn_model {
    char preset[32];          /* "tiny", "qwen2.5-0.5b", "qwen2.5-3b" */
    int64_t vocab, hidden, intermediate, layers, heads, kv_heads;
    int64_t max_position_embeddings;
    bool tied;                /* tie_word_embeddings (never for a critic) */
    bool critic;              /* Qwen2ForTokenClassification: score.weight [1, H], no lm_head */
    const char *rope_theta;   /* JSON token, e.g. "1000000.0" */
    int64_t bos, eos, pad;    /* token ids; -1 = null */
} syn_model;

typedef enum syn_placement {
    SYN_PLACE_SHARD0 = 0, /* Shard(0) everywhere (FSDP2's default) */
    SYN_PLACE_VERL        /* verl's shard_placement_fn: first dim divisible by W, else 0 */
} syn_placement;

typedef enum syn_fault_kind {
    SYN_FAULT_NONE = 0,
    SYN_FAULT_SHAPE,       /* the key's global shape (dim 0 + W) differs on one rank */
    SYN_FAULT_DTYPE,       /* the key is bf16 (fp32 when --dtype bfloat16) on one rank */
    SYN_FAULT_MISSING_KEY, /* one rank lacks the key (default: the last) */
    SYN_FAULT_EXTRA_KEY,   /* one rank has one more key (default model.extra_fault.weight) */
    SYN_FAULT_VIEW_RANGE,  /* the local view reaches past the end of its storage */
    SYN_FAULT_PLACEMENT    /* Shard(1) where the others say Shard(0) (or the reverse) */
} syn_fault_kind;

typedef struct syn_fault {
    syn_fault_kind kind;
    int rank;
    char key[SYN_NAME_MAX]; /* "" = the default key of the kind */
} syn_fault;

typedef struct syn_opts {
    const char *out;           /* checkpoint root: global_step_N/<subdir>/ goes under it */
    const char *subdir;        /* NULL: "actor" ("critic" for a value model) */
    int world_size;
    syn_model model;
    dt_type dtype;             /* DT_F32 or DT_BF16: parameter (storage) dtype */
    syn_placement placement;
    uint64_t seed;
    int64_t step;
    const char *expected;      /* NULL, or the folder for <dt>/model*.safetensors */
    bool expected_bf16, expected_fp32;
    uint64_t expected_max_shard; /* split expected output like the merger (default 5GB) */
    syn_fault fault;
    size_t buffer_size;        /* streaming buffer bytes (default 8 MiB) */
    /* a PEFT LoRA model (lora_r > 0): PEFT key names, lora_A/lora_B per
     * target module and adapter; the expected output is the base model with
     * the first adapter fused (W + scaling * B @ A, fp32 FMA chain, one
     * rounding), clean names */
    int lora_r;
    double lora_alpha;
    const char *lora_targets;  /* comma list of module leaf names (default q_proj,v_proj) */
    const char *lora_adapters; /* comma list (default "default"); the first is the fused one */
    const char *lora_config;   /* adapter (default: adapter_config.json), meta (lora_train_meta.json), none */
    const char *lora_rank_pattern, *lora_alpha_pattern; /* "KEY=V,..." (PEFT patterns, suffix match) */
    bool lora_rslora, lora_fan_in_fan_out, lora_dora;
} syn_opts;

/* Value classes: weights ~U[-0.05, 0.05), norm weights ~1 + U[-0.01, 0.01). */
typedef enum syn_kind { SYN_WEIGHT = 0, SYN_NORM = 1 } syn_kind;

typedef struct syn_tensor {
    char name[SYN_NAME_MAX];
    int ndim;                  /* 1 or 2 */
    int64_t shape[2];
    uint64_t numel;
    syn_kind kind;
    int tied_to;               /* index of the tensor whose storage it shares, or -1 */
    uint64_t stream;           /* per-tensor generator key */
    char out_name[SYN_NAME_MAX]; /* name in the expected output, "" = not written there (LoRA factors) */
    int lora_a, lora_b;        /* a fused weight: its factors (first adapter), else -1 */
    float lora_scaling;
} syn_tensor;

typedef struct syn_ctx syn_ctx;

/*! syn_model_preset() : fills m with a named preset (tiny, qwen2.5-0.5b,
 *  qwen2.5-3b). @return : 0 or FM_EUSAGE naming the known presets. */
int syn_model_preset(const char *name, syn_model *m, fm_err *e);

/*! syn_default_opts() : tiny model, W=1, float32, Shard(0), seed 0, step 1,
 *  expected bf16 + fp32, 5GB expected shards, 8 MiB buffer. */
void syn_default_opts(syn_opts *o);

/*! syn_parse_fault() : "KIND:RANK[:KEY]" with KIND one of shape, dtype,
 *  missing-key, extra-key, view-range, placement. @return : 0 or FM_EUSAGE. */
int syn_parse_fault(const char *s, syn_fault *f, fm_err *e);

/*! syn_init() : validates o (shapes, world size, fault) and builds the
 *  tensor list and the expected-file split. o's strings must outlive the
 *  context. @return : 0, FM_EUSAGE, FM_ENOMEM. */
int syn_init(const syn_opts *o, syn_ctx **out, fm_err *e);
void syn_free(syn_ctx *c);

size_t syn_tensor_count(const syn_ctx *c);
const syn_tensor *syn_tensor_at(const syn_ctx *c, size_t i);
/*! syn_actor_dir() : "<out>/global_step_<N>/<subdir>" (borrowed). */
const char *syn_actor_dir(const syn_ctx *c);
/*! syn_rank_path() : malloc'd path of rank r's model file. */
char *syn_rank_path(const syn_ctx *c, int rank);

/*! syn_fill() : fp32 values of elements [g0, g0+n) (row-major global index)
 *  of tensor t: a pure function of (t->stream, index). */
void syn_fill(const syn_tensor *t, uint64_t g0, size_t n, float *out);

/*! syn_write_meta() : the folders, fsdp_config.json, huggingface/ (config,
 *  generation config, tokenizer config), latest_checkpointed_iteration.txt
 *  and the expected folders. Run once (process 0) before the rest. */
int syn_write_meta(syn_ctx *c, fm_err *e);

/*! syn_write_hf_dir() : config.json, generation and tokenizer configs in dir
 *  (created). syn_make_expected_dirs() : the expected output folders. Both
 *  are parts of syn_write_meta(), for the DCP layout (synthdcp.h). */
int syn_write_hf_dir(const syn_ctx *c, const char *dir, fm_err *e);
int syn_make_expected_dirs(const syn_ctx *c, fm_err *e);

/*! syn_rank_pickle() : appends rank r's data.pkl to out (for tests). */
int syn_rank_pickle(syn_ctx *c, int rank, fm_buf *out, fm_err *e);

/*! syn_write_rank() : writes model_world_size_W_rank_<rank>.pt; *bytes (may
 *  be NULL) gets the storage bytes written. Errors name the file. */
int syn_write_rank(syn_ctx *c, int rank, uint64_t *bytes, fm_err *e);

/*! syn_expected_jobs() : number of expected safetensors files, all dtypes
 *  together (0 without --expected). Job j can run in any process. */
size_t syn_expected_jobs(const syn_ctx *c);
/*! syn_write_expected() : writes expected file j (and, for the first file of
 *  a split output, model.safetensors.index.json). */
int syn_write_expected(syn_ctx *c, size_t job, uint64_t *bytes, fm_err *e);

#endif
