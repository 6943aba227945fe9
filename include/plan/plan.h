/* plan.h - the global merge plan.
 *
 * plan_build() is a pure function of every rank's tensor index and the
 * options: all processes run it on the same inputs and get the same plan,
 * so no plan has to be broadcast. It checks that the ranks agree (same keys,
 * dtypes, global shapes; pieces that tile each tensor exactly once; replicas
 * byte-equal), decides plain tensors (replicated, or dim-0 slices), cleans
 * wrapper prefixes from names, drops a tied lm_head, picks output dtypes,
 * splits the output into safetensors files like transformers, and lays out
 * each file like the safetensors library.
 *
 * Geometry: a piece is a block of the global tensor. Its elements form
 * `nruns` runs that are contiguous in the output tensor (row-major), each
 * `run_len` elements long: the dims after `k` are whole in the block.
 */
#ifndef FM_PLAN_H
#define FM_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/err.h"
#include "torchfmt/tindex.h"
#include "base/util.h"

typedef enum plan_plain_mode {
    PLAN_PLAIN_AUTO = 0,   /* identical on all ranks: replicated; else dim-0 concat (warns) */
    PLAN_PLAIN_REPLICATED, /* take rank 0's copy */
    PLAN_PLAIN_CONCAT      /* concatenate on dim 0 in rank order */
} plan_plain_mode;

typedef struct plan_opts {
    int world_size;             /* W: number of rank files */
    int nprocs;                 /* P: processes reading them (rank r is read by r % P) */
    dt_type out_dtype;          /* for float tensors; DT_INVALID keeps the source dtype */
    uint64_t max_shard_size;    /* bytes per output file (decimal GB as transformers) */
    bool tie_word_embeddings;   /* from config.json */
    plan_plain_mode plain;
    size_t header_align;        /* 0, or pad headers so data starts at a multiple */
    const char *file_stem;      /* "model" (NULL) -> model.safetensors, model-00001-of-... */
    bool no_metadata;           /* omit __metadata__ {"format": "pt"} from the headers */
    const struct lr_spec *lora; /* a PEFT LoRA checkpoint (plan/lora.h), NULL otherwise */
} plan_opts;

typedef struct plan_piece {
    int rank;                    /* original rank whose file holds it */
    int proc;                    /* process that reads it */
    ti_view view;                /* view.storage owned by the plan */
    bool big_endian;             /* byte order of the file */
    int64_t goff[TI_MAX_DIMS];
    int k;                       /* runs vary over dims < k; dims > k are whole */
    uint64_t run_len, nruns;     /* elements per run, number of runs */
    uint64_t first;              /* tensor-relative element index of run 0 */
    bool src_contig;             /* each run is contiguous in the storage */
} plan_piece;

/* A fused LoRA weight (plan/lora.h): W' = W + scaling * (B @ A). */
typedef struct plan_factors {   /* the part of A and B one piece of W needs */
    float *a;                   /* A[:, a0 : a0 + na], r x na, row-major */
    float *b;                   /* B[b0 : b0 + nb, :], nb x r, row-major */
    int64_t a0, na, b0, nb;
} plan_factors;

typedef struct plan_fuse {
    size_t a, b;                /* lora_A and lora_B in pl->lora_src */
    int r;
    float scaling;
    bool fan_in_fan_out;        /* W is [in, out]: the delta is (B @ A)^T */
    plan_factors *local;        /* per piece of W (nlocal): filled on the process that reads the
                                 * piece by lx_prepare_all() (engine/lorax), after the plan is built */
    size_t nlocal;
} plan_fuse;

typedef struct plan_tensor {
    char *name;                  /* output name (wrapper prefixes removed) */
    char *key;                   /* state-dict key */
    dt_type src_dtype, out_dtype;
    int ndim;
    int64_t shape[TI_MAX_DIMS];
    int64_t gstride[TI_MAX_DIMS];/* row-major strides of the output tensor */
    uint64_t numel;
    int file;
    uint64_t begin, end;         /* byte range in the file's data section */
    plan_piece *pieces;          /* sources, sorted by `first` */
    size_t npieces;
    bool sharded;                /* the ranks held different blocks */
    plan_fuse *fuse;             /* a LoRA-fused weight, NULL otherwise */
} plan_tensor;

typedef struct plan_file {
    char *name;                  /* "model.safetensors" or "model-00001-of-00003.safetensors" */
    fm_buf header;               /* 8-byte length + JSON + padding */
    uint64_t data_start;         /* == header.len */
    uint64_t size;               /* whole file */
    size_t first, count;         /* its tensors in plan order */
} plan_file;

typedef struct plan {
    plan_tensor *tensors;        /* grouped by file, in data offset order */
    size_t ntensors;
    plan_file *files;
    size_t nfiles;
    uint64_t total_bytes;        /* tensor bytes written */
    uint64_t total_params;
    uint64_t input_bytes;        /* bytes read from the shards for the sources */
    size_t n_replicated, n_sharded, n_dropped;
    char **warnings;
    size_t nwarnings;
    char *index_json;            /* model.safetensors.index.json text, NULL for one file */
    char head[16];               /* "lm_head", "score" or "" (for the architecture) */
    char *dropped_key;           /* state-dict key of the dropped tied tensor, or NULL */
    plan_tensor *lora_src;       /* LoRA A/B tensors read for fusion, not written */
    size_t nlora_src;
    plan_fuse *fuses;
    size_t nfuses;
} plan;

/*! plan_build() : ix[r] is rank r's index (r = 0..W-1). Errors name the key
 *  and the ranks that disagree. */
int plan_build(const ti_index *ix, const plan_opts *o, plan *out, fm_err *e);
void plan_free(plan *p);

/*! plan_clean_name() : removes "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."
 *  and "_orig_mod." components. Returns malloc'd text. */
char *plan_clean_name(const char *key);

/*! plan_run_first() : tensor-relative element index of run r's first element. */
uint64_t plan_run_first(const plan_tensor *t, const plan_piece *p, uint64_t r);
/*! plan_run_src() : storage element index of run r's first element. */
int64_t plan_run_src(const plan_piece *p, uint64_t r);
/*! plan_src_elem() : storage element index of element j (0..run_len) of run r. */
int64_t plan_src_elem(const plan_piece *p, uint64_t r, uint64_t j);
/*! plan_first_run_after() : the first run whose end is past element index e. */
uint64_t plan_first_run_after(const plan_tensor *t, const plan_piece *p, uint64_t e);

#endif
