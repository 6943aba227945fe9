/* hfdir.h - the HuggingFace side of the output folder.
 *
 * config.json: rewritten as transformers writes it (json.dumps(indent=2,
 * sort_keys=True) + "\n" of the loaded dict: Python's float repr and ASCII
 * escapes, whatever the input's spelling), with "architectures" filled in when missing (or
 * overridden) and the dtype key set to the output dtype: "torch_dtype" when
 * the config already has it or was written by transformers < 5, else "dtype".
 * Other files of huggingface/ (generation config, tokenizer, remote code) are
 * copied unchanged. The sharded-weights index is written as transformers 5
 * writes it.
 */
#ifndef FM_HFDIR_H
#define FM_HFDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct hf_config_info {
    char model_type[128];      /* "" when absent */
    char architecture[256];    /* architectures[0], "" when absent/empty/null */
    bool has_tie_word_embeddings;
    bool tie_word_embeddings;  /* transformers' default is true when absent */
    int transformers_major;    /* from "transformers_version", 0 when absent */
} hf_config_info;

/*! hf_config_read() : facts from config.json text (cJSON). FM_EFORMAT if not a JSON object. */
int hf_config_read(const char *text, size_t len, hf_config_info *info, fm_err *e);

/*! hf_infer_architecture() : class name from model_type and the head found in
 *  the weights: head "lm_head" -> "<Prefix>ForCausalLM", "score" ->
 *  "<Prefix>ForTokenClassification", NULL -> "<Prefix>Model". Prefix from a
 *  table of known model types (qwen2 -> Qwen2, llama -> Llama, gpt_neox ->
 *  GPTNeoX, ...) else CamelCase of the model type. Writes into buf; returns
 *  false when model_type is empty. */
bool hf_infer_architecture(const char *model_type, const char *head, char *buf, size_t len);

/*! hf_config_rewrite() : see the file comment. architecture NULL keeps an
 *  existing non-empty "architectures" and otherwise writes [arch_default].
 *  dtype_name is a torch dtype name ("bfloat16"). *out is malloc'd. */
int hf_config_rewrite(const char *text, size_t len, const char *dtype_name, const char *architecture,
                      const char *arch_default, char **out, size_t *out_len, fm_err *e);

/*! hf_copy_assets() : copies every regular file (and sub-folder) of src_dir
 *  into dst_dir except a top-level config.json. *copied gets the number of
 *  files copied (may be NULL). */
int hf_copy_assets(const char *src_dir, const char *dst_dir, int *copied, fm_err *e);
/*! hf_copy_assets_from_actor() : the same for the older verl layout whose
 *  HuggingFace files sit in the actor folder next to the checkpoint (and for
 *  a DCP checkpoint's config folder): only top-level files, and not weights
 *  (*.pt, *.bin, *.safetensors, *.index.json, ...) nor fsdp_config.json. */
int hf_copy_assets_from_actor(const char *actor_dir, const char *dst_dir, int *copied, fm_err *e);

typedef struct hf_index_entry {
    const char *tensor; /* tensor name */
    const char *file;   /* "model-00001-of-00003.safetensors" */
} hf_index_entry;

/*! hf_index_json() : the text of model.safetensors.index.json:
 *  {"metadata": {"total_parameters": P, "total_size": S}, "weight_map": {...}}
 *  with keys sorted, indent 2, ASCII-escaped, trailing newline. *out malloc'd. */
int hf_index_json(const hf_index_entry *entries, size_t n, uint64_t total_size, uint64_t total_parameters,
                  char **out, size_t *out_len, fm_err *e);

#endif
