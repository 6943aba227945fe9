/* hfdir.c - the HuggingFace side of the output folder (see hfdir.h). */
#include "hf/hfdir.h"

#include <cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf/jsonfmt.h"
#include "base/util.h"

/* ------------------------------------------------------------------------ */
/* config.json facts                                                        */

/* "5.17.0" -> 5; 0 when there is no leading number. */
static int version_major(const char *v)
{
    int major = 0;
    for (; v && *v >= '0' && *v <= '9'; v++) {
        if (major > 100000) return 0;
        major = major * 10 + (*v - '0');
    }
    return major;
}

static int copy_field(char *dst, size_t cap, const char *src, const char *what, fm_err *e)
{
    size_t n = strlen(src);
    if (n >= cap) return fm_fail(e, FM_EUNSUPPORTED, "config.json: %s is longer than %zu bytes", what, cap - 1);
    memcpy(dst, src, n + 1);
    return 0;
}

/* Python truthiness of a JSON value, which is what transformers tests. */
static bool json_truthy(const cJSON *j)
{
    if (cJSON_IsBool(j)) return cJSON_IsTrue(j);
    if (cJSON_IsNumber(j)) return j->valuedouble != 0;
    if (cJSON_IsString(j)) return j->valuestring[0] != '\0';
    if (cJSON_IsArray(j) || cJSON_IsObject(j)) return j->child != NULL;
    return false; /* null */
}

static int read_facts(const cJSON *root, hf_config_info *info, fm_err *e)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (cJSON_IsString(mt))
        FM_TRY(copy_field(info->model_type, sizeof info->model_type, mt->valuestring, "model_type", e));
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (cJSON_IsArray(arch) && cJSON_IsString(arch->child))
        FM_TRY(copy_field(info->architecture, sizeof info->architecture, arch->child->valuestring,
                          "architectures[0]", e));
    /* A class whose default differs from PretrainedConfig's (true) always
     * has the key written by save_pretrained, so absent means true. */
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    info->has_tie_word_embeddings = tie != NULL;
    info->tie_word_embeddings = tie == NULL || json_truthy(tie);
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "transformers_version");
    info->transformers_major = cJSON_IsString(ver) ? version_major(ver->valuestring) : 0;
    return 0;
}

int hf_config_read(const char *text, size_t len, hf_config_info *info, fm_err *e)
{
    memset(info, 0, sizeof *info);
    info->tie_word_embeddings = true;
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fm_fail(e, FM_EFORMAT, "config.json is not a JSON object");
    }
    int rc = read_facts(root, info, e);
    cJSON_Delete(root);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Architecture names                                                       */

/* model_type -> class-name prefix, and the suffix of the class that owns
 * "lm_head" when it is not <Prefix>ForCausalLM (multimodal models, GPT-2). */
typedef struct hf_arch {
    const char *model_type;
    const char *prefix;
    const char *lm_suffix; /* NULL: "ForCausalLM" */
} hf_arch;

#define COND_GEN "ForConditionalGeneration"

static const hf_arch ARCHS[] = {
    {"llama", "Llama", NULL},
    {"llama4", "Llama4", COND_GEN},
    {"llama4_text", "Llama4", NULL},
    {"mistral", "Mistral", NULL},
    {"mistral3", "Mistral3", COND_GEN},
    {"mixtral", "Mixtral", NULL},
    {"qwen2", "Qwen2", NULL},
    {"qwen2_moe", "Qwen2Moe", NULL},
    {"qwen3", "Qwen3", NULL},
    {"qwen3_moe", "Qwen3Moe", NULL},
    {"qwen3_next", "Qwen3Next", NULL},
    {"qwen2_vl", "Qwen2VL", COND_GEN},
    {"qwen2_5_vl", "Qwen2_5_VL", COND_GEN},
    {"qwen3_vl", "Qwen3VL", COND_GEN},
    {"qwen3_vl_moe", "Qwen3VLMoe", COND_GEN},
    {"qwen2_audio", "Qwen2Audio", COND_GEN},
    {"gemma", "Gemma", NULL},
    {"gemma2", "Gemma2", NULL},
    {"gemma3", "Gemma3", COND_GEN}, /* the multimodal config; text-only is gemma3_text */
    {"gemma3_text", "Gemma3", NULL},
    {"paligemma", "PaliGemma", COND_GEN},
    {"llava", "Llava", COND_GEN},
    {"mllama", "Mllama", COND_GEN},
    {"idefics3", "Idefics3", COND_GEN},
    {"phi", "Phi", NULL},
    {"phi3", "Phi3", NULL},
    {"phimoe", "PhiMoE", NULL},
    {"gpt2", "GPT2", "LMHeadModel"},
    {"gpt_neo", "GPTNeo", NULL},
    {"gpt_neox", "GPTNeoX", NULL},
    {"gpt_bigcode", "GPTBigCode", NULL},
    {"gptj", "GPTJ", NULL},
    {"gpt_oss", "GptOss", NULL},
    {"codegen", "CodeGen", NULL},
    {"falcon", "Falcon", NULL},
    {"falcon_h1", "FalconH1", NULL},
    {"deepseek_v2", "DeepseekV2", NULL},
    {"deepseek_v3", "DeepseekV3", NULL},
    {"olmo", "Olmo", NULL},
    {"olmo2", "Olmo2", NULL},
    {"olmo3", "Olmo3", NULL},
    {"olmoe", "Olmoe", NULL},
    {"starcoder2", "Starcoder2", NULL},
    {"internlm2", "InternLM2", NULL},
    {"baichuan", "Baichuan", NULL},
    {"chatglm", "ChatGLM", COND_GEN},
    {"glm", "Glm", NULL},
    {"glm4", "Glm4", NULL},
    {"glm4_moe", "Glm4Moe", NULL},
    {"glm4v", "Glm4v", COND_GEN},
    {"granite", "Granite", NULL},
    {"granitemoe", "GraniteMoe", NULL},
    {"cohere", "Cohere", NULL},
    {"cohere2", "Cohere2", NULL},
    {"stablelm", "StableLm", NULL},
    {"mpt", "Mpt", NULL},
    {"bloom", "Bloom", NULL},
    {"opt", "OPT", NULL},
    {"xglm", "XGLM", NULL},
    {"dbrx", "Dbrx", NULL},
    {"jamba", "Jamba", NULL},
    {"mamba", "Mamba", NULL},
    {"mamba2", "Mamba2", NULL},
    {"nemotron", "Nemotron", NULL},
    {"persimmon", "Persimmon", NULL},
    {"recurrent_gemma", "RecurrentGemma", NULL},
    {"minicpm", "MiniCPM", NULL},
    {"minicpm3", "MiniCPM3", NULL},
    {"ernie4_5", "Ernie4_5", NULL},
    {"ernie4_5_moe", "Ernie4_5_Moe", NULL},
    {"seed_oss", "SeedOss", NULL},
    {"smollm3", "SmolLM3", NULL},
    {"exaone4", "Exaone4", NULL},
    {"bitnet", "BitNet", NULL},
    {"helium", "Helium", NULL},
    {"arcee", "Arcee", NULL},
};

static const hf_arch *arch_lookup(const char *model_type)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(ARCHS); i++)
        if (strcmp(ARCHS[i].model_type, model_type) == 0) return &ARCHS[i];
    return NULL;
}

/* Unknown types: CamelCase on '_' ("foo_bar2" -> "FooBar2"), the rule most
 * transformers class names follow. */
static bool camel_case(const char *model_type, char *buf, size_t len)
{
    size_t w = 0;
    bool up = true;
    for (const char *p = model_type; *p; p++) {
        if (*p == '_' || *p == '-') {
            up = true;
            continue;
        }
        if (w + 1 >= len) return false;
        buf[w++] = up ? (char)toupper((unsigned char)*p) : *p;
        up = false;
    }
    buf[w] = '\0';
    return w > 0;
}

static const char *head_suffix(const hf_arch *a, const char *head)
{
    if (head == NULL) return "Model";
    if (strcmp(head, "lm_head") == 0) return a && a->lm_suffix ? a->lm_suffix : "ForCausalLM";
    if (strcmp(head, "score") == 0) return "ForTokenClassification";
    return NULL;
}

bool hf_infer_architecture(const char *model_type, const char *head, char *buf, size_t len)
{
    if (model_type == NULL || model_type[0] == '\0' || len == 0) return false;
    const hf_arch *a = arch_lookup(model_type);
    const char *suffix = head_suffix(a, head);
    char prefix[256];
    if (suffix == NULL) return false;
    if (a) snprintf(prefix, sizeof prefix, "%s", a->prefix);
    else if (!camel_case(model_type, prefix, sizeof prefix)) return false;
    int n = snprintf(buf, len, "%s%s", prefix, suffix);
    return n > 0 && (size_t)n < len;
}

/* ------------------------------------------------------------------------ */
/* config.json rewrite                                                      */

/* "torch_dtype" when the config has it or predates transformers 5. */
static const char *dtype_key(const jf_node *root)
{
    if (jf_get(root, "torch_dtype")) return "torch_dtype";
    const jf_node *ver = jf_get(root, "transformers_version");
    const char *v = ver ? jf_string(ver, NULL) : NULL;
    int major = version_major(v);
    return (major > 0 && major < 5) ? "torch_dtype" : "dtype";
}

/* Sets key to the JSON string (or one-string list) of value. */
static int set_string(jf_node *root, const char *key, const char *value, bool as_list, fm_err *e)
{
    fm_buf q = {0};
    if (as_list) fm_buf_putc(&q, '[');
    int rc = jf_quote_py(&q, value, strlen(value), e);
    if (as_list) fm_buf_putc(&q, ']');
    if (rc == 0 && q.oom) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = jf_set(root, key, (const char *)q.data, q.len, e);
    fm_buf_free(&q);
    return rc;
}

static int set_dtype(jf_node *root, const char *dtype_name, fm_err *e)
{
    const char *key = dtype_key(root);
    FM_TRY(set_string(root, key, dtype_name, false, e));
    /* A config carrying both keys keeps them in agreement. */
    const char *other = strcmp(key, "dtype") == 0 ? "torch_dtype" : "dtype";
    if (jf_get(root, other)) FM_TRY(set_string(root, other, dtype_name, false, e));
    return 0;
}

static int set_architecture(jf_node *root, const char *architecture, const char *arch_default, fm_err *e)
{
    if (architecture) return set_string(root, "architectures", architecture, true, e);
    const jf_node *have = jf_get(root, "architectures");
    bool present = have && jf_kind_of(have) == JF_ARRAY && jf_size(have) > 0;
    if (present || arch_default == NULL) return 0;
    return set_string(root, "architectures", arch_default, true, e);
}

static int rewrite_tree(jf_node *root, const char *dtype_name, const char *architecture, const char *arch_default,
                        fm_buf *out, fm_err *e)
{
    if (jf_kind_of(root) != JF_OBJECT) return fm_fail(e, FM_EFORMAT, "config.json is not a JSON object");
    if (dtype_name) FM_TRY(set_dtype(root, dtype_name, e));
    FM_TRY(set_architecture(root, architecture, arch_default, e));
    /* transformers: json.dumps(config_dict, indent=2, sort_keys=True) + "\n" of
     * the loaded dict; canonical printing is what that gives for any input
     * (Python float repr, ASCII escapes), hand-edited configs included */
    jf_print_opts opts = {.indent = 2, .sort_keys = true, .canonical = true};
    FM_TRY(jf_print(root, &opts, out, e));
    fm_buf_putc(out, '\n');
    fm_buf_terminate(out);
    return out->oom ? fm_fail(e, FM_ENOMEM, "out of memory writing config.json") : 0;
}

int hf_config_rewrite(const char *text, size_t len, const char *dtype_name, const char *architecture,
                      const char *arch_default, char **out, size_t *out_len, fm_err *e)
{
    *out = NULL;
    jf_node *root = NULL;
    int rc = jf_parse(text, len, 0, &root, NULL, e);
    if (rc != 0) {
        if (e) fm_context(e, "config.json");
        return rc;
    }
    fm_buf b = {0};
    rc = rewrite_tree(root, dtype_name, architecture, arch_default, &b, e);
    jf_free(root);
    if (rc != 0) {
        fm_buf_free(&b);
        return rc;
    }
    *out = (char *)b.data;
    if (out_len) *out_len = b.len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Assets                                                                   */

/* Symlinked folders could loop; real asset trees are shallow. */
#define HF_MAX_TREE_DEPTH 32

typedef struct copy_ctx {
    dev_t dst_dev; /* the destination root, never copied into itself */
    ino_t dst_ino;
    int copied;
    bool actor_layout; /* the source is the actor folder itself (verl before June 2025) */
    fm_err *e;
} copy_ctx;

/* In an actor folder, the HuggingFace files sit next to the checkpoint:
 * leave the rank files, fsdp_config.json and sub-folders (lora_adapter/...),
 * and weights of any format (a DCP checkpoint's config may come from the
 * original model folder, --hf-config, or the HF Trainer's checkpoint-N). */
static bool skip_in_actor(const char *name, bool is_dir)
{
    static const char *weights[] = {".pt", ".pth", ".bin", ".safetensors", ".h5", ".msgpack", ".gguf", ".distcp",
                                    ".index.json", ".metadata"};
    for (size_t i = 0; i < FM_ARRAY_LEN(weights); i++)
        if (fm_ends_with(name, weights[i])) return true;
    return is_dir || strcmp(name, "fsdp_config.json") == 0;
}

static int copy_tree(copy_ctx *c, const char *src, const char *dst, int depth);

static int copy_entry(copy_ctx *c, const char *src, const char *dst, const char *name, int depth)
{
    char *s = fm_path_join(src, name), *d = fm_path_join(dst, name);
    int rc = 0;
    struct stat sb;
    if (s == NULL || d == NULL) rc = fm_fail(c->e, FM_ENOMEM, "out of memory");
    else if (stat(s, &sb) != 0) rc = fm_fail(c->e, FM_EIO, "cannot stat %s: %s", s, strerror(errno));
    else if (depth == 0 && c->actor_layout && skip_in_actor(name, S_ISDIR(sb.st_mode))) {
        /* not a HuggingFace file */
    } else if (S_ISDIR(sb.st_mode) && !(sb.st_dev == c->dst_dev && sb.st_ino == c->dst_ino))
        rc = copy_tree(c, s, d, depth + 1);
    else if (S_ISREG(sb.st_mode) && !(depth == 0 && strcmp(name, "config.json") == 0)) {
        rc = fm_copy_file(s, d, c->e);
        if (rc == 0) c->copied++;
    }
    free(s);
    free(d);
    return rc;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The entries of a folder, sorted so that copies happen in a stable order. */
static int list_dir(const char *path, char ***names, size_t *n, fm_err *e)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(path);
    if (d == NULL) return fm_fail(e, FM_EIO, "cannot open folder %s: %s", path, strerror(errno));
    size_t cap = 0;
    int rc = 0;
    for (struct dirent *de; rc == 0 && (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if (*n == cap) {
            char **p = realloc(*names, (cap = cap ? cap * 2 : 16) * sizeof *p);
            if (p == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory listing %s", path);
            else *names = p;
        }
        if (rc == 0 && ((*names)[*n] = fm_strdup(de->d_name)) == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
        if (rc == 0) (*n)++;
    }
    closedir(d);
    if (rc == 0 && *n > 1) qsort(*names, *n, sizeof **names, name_cmp);
    return rc;
}

static int copy_tree(copy_ctx *c, const char *src, const char *dst, int depth)
{
    if (depth > HF_MAX_TREE_DEPTH)
        return fm_fail(c->e, FM_EUNSUPPORTED, "%s: folders nested deeper than %d (a symlink loop?)", src,
                       HF_MAX_TREE_DEPTH);
    FM_TRY(fm_mkdir_p(dst, c->e));
    char **names;
    size_t n;
    int rc = list_dir(src, &names, &n, c->e);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) rc = copy_entry(c, src, dst, names[i], depth);
        free(names[i]);
    }
    free(names);
    return rc;
}

static int copy_assets(const char *src_dir, const char *dst_dir, bool actor_layout, int *copied, fm_err *e);

int hf_copy_assets(const char *src_dir, const char *dst_dir, int *copied, fm_err *e)
{
    return copy_assets(src_dir, dst_dir, false, copied, e);
}

int hf_copy_assets_from_actor(const char *actor_dir, const char *dst_dir, int *copied, fm_err *e)
{
    return copy_assets(actor_dir, dst_dir, true, copied, e);
}

static int copy_assets(const char *src_dir, const char *dst_dir, bool actor_layout, int *copied, fm_err *e)
{
    if (copied) *copied = 0;
    struct stat ss, ds;
    if (stat(src_dir, &ss) != 0 || !S_ISDIR(ss.st_mode)) return fm_fail(e, FM_EIO, "%s is not a folder", src_dir);
    FM_TRY(fm_mkdir_p(dst_dir, e));
    if (stat(dst_dir, &ds) != 0) return fm_fail(e, FM_EIO, "cannot stat %s: %s", dst_dir, strerror(errno));
    if (ss.st_dev == ds.st_dev && ss.st_ino == ds.st_ino)
        return fm_fail(e, FM_EUSAGE, "%s and %s are the same folder", src_dir, dst_dir);
    copy_ctx c = {.dst_dev = ds.st_dev, .dst_ino = ds.st_ino, .actor_layout = actor_layout, .e = e};
    int rc = copy_tree(&c, src_dir, dst_dir, 0);
    if (copied) *copied = c.copied;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* model.safetensors.index.json                                             */

/* Python sorts str keys by code point: bytewise on UTF-8. */
static int entry_cmp(const void *va, const void *vb)
{
    const hf_index_entry *a = va, *b = vb;
    return strcmp(a->tensor, b->tensor);
}

static int put_weight_map(fm_buf *b, const hf_index_entry *s, size_t n, fm_err *e)
{
    if (n == 0) {
        fm_buf_puts(b, "  \"weight_map\": {}\n");
        return 0;
    }
    fm_buf_puts(b, "  \"weight_map\": {\n");
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(s[i - 1].tensor, s[i].tensor) == 0)
            return fm_fail(e, FM_EINTERNAL, "tensor '%s' listed twice in the index", s[i].tensor);
        fm_buf_puts(b, "    ");
        FM_TRY(jf_quote_py(b, s[i].tensor, strlen(s[i].tensor), e));
        fm_buf_puts(b, ": ");
        FM_TRY(jf_quote_py(b, s[i].file, strlen(s[i].file), e));
        fm_buf_puts(b, i + 1 < n ? ",\n" : "\n");
    }
    fm_buf_puts(b, "  }\n");
    return 0;
}

int hf_index_json(const hf_index_entry *entries, size_t n, uint64_t total_size, uint64_t total_parameters,
                  char **out, size_t *out_len, fm_err *e)
{
    *out = NULL;
    hf_index_entry *s = malloc((n ? n : 1) * sizeof *s);
    if (s == NULL) return fm_fail(e, FM_ENOMEM, "out of memory building the index");
    if (n) memcpy(s, entries, n * sizeof *s);
    qsort(s, n, sizeof *s, entry_cmp);
    /* json.dumps({"metadata": {...}, "weight_map": {...}}, indent=2, sort_keys=True) + "\n" */
    fm_buf b = {0};
    fm_buf_printf(&b, "{\n  \"metadata\": {\n    \"total_parameters\": %" PRIu64 ",\n", total_parameters);
    fm_buf_printf(&b, "    \"total_size\": %" PRIu64 "\n  },\n", total_size);
    int rc = put_weight_map(&b, s, n, e);
    free(s);
    fm_buf_puts(&b, "}\n");
    fm_buf_terminate(&b);
    if (rc == 0 && b.oom) rc = fm_fail(e, FM_ENOMEM, "out of memory building the index");
    if (rc != 0) {
        fm_buf_free(&b);
        return rc;
    }
    *out = (char *)b.data;
    if (out_len) *out_len = b.len;
    return 0;
}
