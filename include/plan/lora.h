/* lora.h - PEFT LoRA checkpoints: names, hyper-parameters, fusion.
 *
 * A PEFT model's state dict holds `base_model.model.<hf name>` for untouched
 * modules, `<module>.base_layer.weight|bias` for wrapped ones and
 * `<module>.lora_A|lora_B.<adapter>.weight` ([r, in] and [out, r]). This
 * module, pure and testable in one process:
 *   - detects LoRA keys, their adapters, and what it cannot merge (DoRA,
 *     LoRA on embeddings or conv layers, LoRA biases, modules_to_save);
 *   - reads the hyper-parameters (PEFT's adapter_config.json, verl's
 *     lora_train_meta.json, or the command line);
 *   - names tensors for the fused/base model (prefix and `.base_layer`
 *     removed) and for the adapter (as PEFT's save_pretrained: without the
 *     adapter name);
 *   - links every fused weight to its A and B (plan_fuse in plan.h):
 *     W' = W + scaling * (B @ A), transposed for fan_in_fan_out, with
 *     scaling = alpha / r (alpha / sqrt(r) with use_rslora), r and alpha per
 *     module from rank_pattern / alpha_pattern.
 * The factors a process needs are fetched by engine/lorax; segment.c adds
 * the product while it reads a fused weight (see lr_delta).
 */
#ifndef FM_LORA_H
#define FM_LORA_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"
#include "plan/plan.h"
#include "torchfmt/tindex.h"

typedef enum lr_mode { LR_MODE_AUTO = 0, LR_MODE_FUSED, LR_MODE_ADAPTER, LR_MODE_BOTH } lr_mode;

typedef struct lr_pattern {
    char *key;   /* PEFT pattern: matches a module name as re.match(r"(.*\.)?(KEY)$") */
    double value;
} lr_pattern;

typedef struct lr_hparams {
    int r;                   /* 0: unknown */
    double alpha;
    bool have_alpha;
    bool rslora, fan_in_fan_out;
    lr_pattern *rank_pat, *alpha_pat;
    size_t nrank_pat, nalpha_pat;
    char *source;            /* where they came from, for the console */
    char *config_text;       /* adapter_config.json to write (NULL: generate one) */
} lr_hparams;

/* What a checkpoint's keys say about LoRA. */
typedef struct lr_found {
    bool present;            /* any lora_A/lora_B/base_layer key */
    char **adapters;         /* adapter names, in key order */
    size_t nadapters;
    char **targets;          /* module leaf names holding the chosen adapter ("q_proj") */
    size_t ntargets;
    int r;                   /* lora_A rows of the first module of the chosen adapter */
} lr_found;

/* What plan_build() makes of a LoRA checkpoint (plan_opts.lora). */
typedef enum lr_emit {
    LR_EMIT_BASE = 0, /* the base model: clean names, LoRA tensors left out */
    LR_EMIT_FUSED,    /* the base model with the adapter fused into its weights */
    LR_EMIT_ADAPTER   /* the adapter alone, named as PEFT's save_pretrained */
} lr_emit;

typedef struct lr_spec {
    const char *adapter;     /* adapter name ("default") */
    lr_emit emit;
    const lr_hparams *hp;
} lr_spec;

/*! lr_detect() : scans rank 0's keys. Errors (FM_EUNSUPPORTED, naming the
 *  key) for DoRA, LoRA on embeddings/conv layers, lora biases and
 *  modules_to_save; FM_EUSAGE when keys exist but not for `adapter`. */
int lr_detect(const ti_index *ix, const char *adapter, lr_found *out, fm_err *e);
void lr_found_free(lr_found *f);

/*! lr_hparams_parse() : from PEFT's adapter_config.json (is_meta false, the
 *  text kept for the output) or verl's lora_train_meta.json (is_meta true).
 *  `source` names the file in messages. */
int lr_hparams_parse(const char *text, size_t len, bool is_meta, const char *source, lr_hparams *hp, fm_err *e);
void lr_hparams_free(lr_hparams *hp);

/*! lr_adapter_config() : the adapter_config.json text to write: the source
 *  file as is when it carries the alpha in use, else one made from hp (PEFT
 *  keys, json.dumps(indent=2, sort_keys=True)). *out malloc'd. */
int lr_adapter_config(const lr_hparams *hp, const lr_found *f, char **out, size_t *len, fm_err *e);

/*! lr_output_name() : the output name of a state-dict key under spec (NULL
 *  name and 0 when the key is not output: another adapter, or LoRA tensors
 *  in a base model); *is_src true for the chosen adapter's lora_A/lora_B
 *  when fusing (planned as sources, not output). */
int lr_output_name(const lr_spec *spec, const char *key, char **name, bool *is_src, fm_err *e);

/*! lr_link() : with LR_EMIT_FUSED, fills pl->fuses and each fused tensor's
 *  `fuse`, checking shapes; every lora source must find its weight. */
int lr_link(plan *pl, const lr_spec *spec, fm_err *e);

/*! lr_module_scaling() : r and scaling of one module (its name without the
 *  PEFT prefix, e.g. "model.layers.0.self_attn.q_proj"); a_rows is lora_A's
 *  first dim, which must equal the rank the config gives. */
int lr_module_scaling(const lr_hparams *hp, const char *module, int a_rows, float *scaling, fm_err *e);

/*! lr_delta() : adds scaling * (B @ A)[i, j] (transposed for fan_in_fan_out)
 *  to n consecutive elements of the fused tensor t starting at tensor
 *  element `first`, from the factors of piece `piece` of this process. The
 *  sum over r is a chain of fp32 fused multiply-adds, k = 0..r-1, as torch's
 *  matmul; the delta is rounded to fp32, then added. */
void lr_delta(const plan_tensor *t, size_t piece, uint64_t first, uint64_t n, float *w);

#endif
