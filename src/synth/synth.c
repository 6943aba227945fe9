/* synth.c - synthetic verl/FSDP2 checkpoints; see synth.h.
 *
 * Layout of this file:
 *   1. presets, options, fault parsing
 *   2. the parameter list (transformers' Qwen2 state_dict() order)
 *   3. the value generator
 *   4. the per-rank plan: what each key's local tensor and storage are, and
 *      the injected faults
 *   5. the pickle tree, mirroring torch 2.11's data.pkl
 *   6. streaming the storages into the zip
 *   7. the json files around the shards
 *   8. the expected merge output (safetensors), from the generator
 */
#include "synth/synth.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hf/hfdir.h"
#include "hf/jsonfmt.h"
#include "torchfmt/pkl.h"
#include "torchfmt/pkw.h"
#include "torchfmt/ptzw.h"
#include "hf/st.h"

#define SYN_DEFAULT_BUFFER ((size_t)8 << 20)
#define SYN_MIN_BUFFER ((size_t)4096)
#define SYN_MAX_DIM ((int64_t)1 << 40)
#define SYN_GOLDEN 0x9e3779b97f4a7c15ULL

/* ======================================================================
 * 1. presets, options, fault parsing
 * ==================================================================== */

typedef struct syn_preset {
    const char *name;
    int64_t vocab, hidden, inter, layers, heads, kv, max_pos;
    const char *rope_theta;
    int64_t bos, eos, pad;
} syn_preset;

/* tiny is the shape of the fsdp2_ws4_tied fixture (same config.json). */
static const syn_preset SYN_PRESETS[] = {
    {"tiny", 512, 64, 176, 2, 4, 2, 256, "10000.0", -1, 2, 0},
    {"qwen2.5-0.5b", 151936, 896, 4864, 24, 14, 2, 32768, "1000000.0", 151643, 151645, 151643},
    {"qwen2.5-3b", 151936, 2048, 11008, 36, 16, 2, 32768, "1000000.0", 151643, 151645, 151643},
};

int syn_model_preset(const char *name, syn_model *m, fm_err *e)
{
    for (size_t i = 0; i < FM_ARRAY_LEN(SYN_PRESETS); i++) {
        const syn_preset *p = &SYN_PRESETS[i];
        if (strcmp(name, p->name) != 0) continue;
        memset(m, 0, sizeof *m);
        snprintf(m->preset, sizeof m->preset, "%s", p->name);
        m->vocab = p->vocab, m->hidden = p->hidden, m->intermediate = p->inter;
        m->layers = p->layers, m->heads = p->heads, m->kv_heads = p->kv;
        m->max_position_embeddings = p->max_pos;
        m->rope_theta = p->rope_theta;
        m->bos = p->bos, m->eos = p->eos, m->pad = p->pad;
        m->tied = true; /* all three presets tie the embeddings */
        return 0;
    }
    return fm_fail(e, FM_EUSAGE, "unknown model '%s' (known: tiny, qwen2.5-0.5b, qwen2.5-3b)", name);
}

void syn_default_opts(syn_opts *o)
{
    memset(o, 0, sizeof *o);
    syn_model_preset("tiny", &o->model, NULL);
    o->world_size = 1;
    o->dtype = DT_F32;
    o->placement = SYN_PLACE_SHARD0;
    o->step = 1;
    o->expected_bf16 = o->expected_fp32 = true;
    o->expected_max_shard = 5000000000ULL; /* the merger's default, 5GB (decimal) */
    o->buffer_size = SYN_DEFAULT_BUFFER;
    o->lora_alpha = 16;
    o->lora_targets = "q_proj,v_proj";
    o->lora_adapters = "default";
    o->lora_config = "adapter";
}

static const struct {
    const char *name;
    syn_fault_kind kind;
} SYN_FAULTS[] = {
    {"shape", SYN_FAULT_SHAPE},           {"dtype", SYN_FAULT_DTYPE},
    {"missing-key", SYN_FAULT_MISSING_KEY}, {"extra-key", SYN_FAULT_EXTRA_KEY},
    {"view-range", SYN_FAULT_VIEW_RANGE},   {"placement", SYN_FAULT_PLACEMENT},
};

int syn_parse_fault(const char *s, syn_fault *f, fm_err *e)
{
    memset(f, 0, sizeof *f);
    const char *c1 = strchr(s, ':');
    if (c1 == NULL) return fm_fail(e, FM_EUSAGE, "--fault '%s': expected KIND:RANK[:KEY]", s);
    size_t klen = (size_t)(c1 - s);
    for (size_t i = 0; i < FM_ARRAY_LEN(SYN_FAULTS); i++)
        if (strlen(SYN_FAULTS[i].name) == klen && strncmp(s, SYN_FAULTS[i].name, klen) == 0) f->kind = SYN_FAULTS[i].kind;
    if (f->kind == SYN_FAULT_NONE)
        return fm_fail(e, FM_EUSAGE,
                       "--fault '%s': unknown kind (shape, dtype, missing-key, extra-key, view-range, placement)", s);
    const char *c2 = strchr(c1 + 1, ':');
    char num[32];
    size_t nlen = c2 ? (size_t)(c2 - c1 - 1) : strlen(c1 + 1);
    if (nlen == 0 || nlen >= sizeof num) return fm_fail(e, FM_EUSAGE, "--fault '%s': bad rank", s);
    memcpy(num, c1 + 1, nlen);
    num[nlen] = '\0';
    uint64_t r;
    if (fm_parse_u64(num, &r, NULL) != 0 || r >= SYN_MAX_WORLD) return fm_fail(e, FM_EUSAGE, "--fault '%s': bad rank", s);
    f->rank = (int)r;
    if (c2 && (strlen(c2 + 1) == 0 || strlen(c2 + 1) >= sizeof f->key))
        return fm_fail(e, FM_EUSAGE, "--fault '%s': bad key", s);
    if (c2) snprintf(f->key, sizeof f->key, "%s", c2 + 1);
    return 0;
}

/* ======================================================================
 * 2. the parameter list
 * ==================================================================== */

typedef struct syn_job {
    dt_type dtype;
    size_t file, nfiles;
    const size_t *file_of; /* per tensor; SIZE_MAX = not written (tied lm_head) */
} syn_job;

struct syn_ctx {
    syn_opts o;
    syn_tensor *t;
    size_t n;
    char *actor;            /* <out>/global_step_N/<subdir> */
    size_t *file_of[2];     /* expected split per dtype (bf16, fp32) */
    syn_job *jobs;
    size_t njobs;
    float *fbuf;            /* the streaming buffers, made on first use */
    uint8_t *cbuf;
    size_t belems;          /* elements per buffer-full */
};

static uint64_t syn_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int syn_add(syn_ctx *c, size_t *cap, const char *name, int ndim, int64_t d0, int64_t d1, syn_kind kind)
{
    if (c->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        syn_tensor *p = realloc(c->t, ncap * sizeof *p);
        if (p == NULL) return FM_ENOMEM;
        c->t = p;
        *cap = ncap;
    }
    syn_tensor *t = &c->t[c->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = (uint64_t)d0 * (uint64_t)(ndim == 2 ? d1 : 1);
    t->kind = kind;
    t->tied_to = -1;
    snprintf(t->out_name, sizeof t->out_name, "%s", name);
    t->lora_a = t->lora_b = -1;
    /* the stream depends on the seed and the position, so every tensor differs */
    t->stream = syn_mix(c->o.seed * SYN_GOLDEN + syn_mix((uint64_t)c->n + 0x5eed));
    c->n++;
    return 0;
}

/* ---- LoRA (PEFT) names and factors ---- */

#define SYN_PEFT "base_model.model."

/* Is `item` in the comma list? */
static bool syn_in_list(const char *list, const char *item, size_t len)
{
    for (const char *p = list; p && *p;) {
        const char *q = strchr(p, ',');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == len && strncmp(p, item, len) == 0) return true;
        p = q ? q + 1 : NULL;
    }
    return false;
}

/* "KEY=V,..." -> V of the first KEY that is the module name or its dotted suffix */
static bool syn_pattern(const char *list, const char *module, double *v)
{
    size_t ml = strlen(module);
    for (const char *p = list; p && *p;) {
        const char *q = strchr(p, ','), *eq = strchr(p, '=');
        if (eq == NULL || (q && eq > q)) return false;
        size_t kl = (size_t)(eq - p);
        if (kl <= ml && strncmp(module + ml - kl, p, kl) == 0 && (kl == ml || module[ml - kl - 1] == '.')) {
            *v = strtod(eq + 1, NULL);
            return true;
        }
        p = q ? q + 1 : NULL;
    }
    return false;
}

static bool syn_lora_target(const syn_ctx *c, const char *module)
{
    const char *leaf = strrchr(module, '.');
    leaf = leaf ? leaf + 1 : module;
    return c->o.lora_r > 0 && syn_in_list(c->o.lora_targets, leaf, strlen(leaf));
}

/* lora_A [r, in] and lora_B [out, r] of every adapter after the module's
 * own parameters (PEFT's state_dict order); the first adapter's are linked
 * to the weight `w` for the expected fused output. */
static int syn_add_lora(syn_ctx *c, size_t *cap, const char *module, size_t w, int64_t out, int64_t in)
{
    double r = c->o.lora_r, alpha = c->o.lora_alpha;
    syn_pattern(c->o.lora_rank_pattern, module, &r);
    syn_pattern(c->o.lora_alpha_pattern, module, &alpha);
    bool first = true;
    for (const char *p = c->o.lora_adapters; p && *p; first = false) {
        const char *q = strchr(p, ',');
        int al = q ? (int)(q - p) : (int)strlen(p);
        char name[2 * SYN_NAME_MAX];
        snprintf(name, sizeof name, SYN_PEFT "%s.lora_A.%.*s.weight", module, al, p);
        if (syn_add(c, cap, name, 2, (int64_t)r, in, SYN_WEIGHT)) return FM_ENOMEM;
        c->t[c->n - 1].out_name[0] = '\0';
        snprintf(name, sizeof name, SYN_PEFT "%s.lora_B.%.*s.weight", module, al, p);
        if (syn_add(c, cap, name, 2, out, (int64_t)r, SYN_WEIGHT)) return FM_ENOMEM;
        c->t[c->n - 1].out_name[0] = '\0';
        if (first) {
            c->t[w].lora_a = (int)c->n - 2;
            c->t[w].lora_b = (int)c->n - 1;
            c->t[w].lora_scaling = (float)(c->o.lora_rslora ? alpha / sqrt(r) : alpha / r);
        }
        if (c->o.lora_dora) {
            snprintf(name, sizeof name, SYN_PEFT "%s.lora_magnitude_vector.%.*s.weight", module, al, p);
            if (syn_add(c, cap, name, 1, out, 0, SYN_NORM)) return FM_ENOMEM;
            c->t[c->n - 1].out_name[0] = '\0';
        }
        p = q ? q + 1 : NULL;
    }
    return 0;
}

/* One parameter `<module>.<what>`, PEFT-named when LoRA is on. */
static int syn_add_param(syn_ctx *c, size_t *cap, const char *module, const char *what, int ndim, int64_t d0, int64_t d1,
                         syn_kind kind)
{
    char name[2 * SYN_NAME_MAX];
    bool target = syn_lora_target(c, module);
    if (target && c->o.lora_fan_in_fan_out && ndim == 2) { /* Conv1D-style weight: [in, out] */
        int64_t t = d0;
        d0 = d1, d1 = t;
    }
    snprintf(name, sizeof name, "%s%s.%s%s", c->o.lora_r > 0 ? SYN_PEFT : "", module, target ? "base_layer." : "", what);
    if (syn_add(c, cap, name, ndim, d0, d1, kind)) return FM_ENOMEM;
    if (c->o.lora_r > 0) snprintf(c->t[c->n - 1].out_name, SYN_NAME_MAX, "%s.%s", module, what);
    return 0;
}

/* One decoder layer, in Qwen2DecoderLayer's state_dict() order. */
static int syn_add_layer(syn_ctx *c, size_t *cap, int64_t i)
{
    const syn_model *m = &c->o.model;
    int64_t H = m->hidden, I = m->intermediate, KV = m->kv_heads * (m->hidden / m->heads);
    static const struct {
        const char *module;
        bool bias;
        int which; /* 0: [H,H] 2: [KV,H] 4: [I,H] 5: [H,I] 6: norm [H] */
    } L[] = {
        {"self_attn.q_proj", true, 0}, {"self_attn.k_proj", true, 2}, {"self_attn.v_proj", true, 2},
        {"self_attn.o_proj", false, 0}, {"mlp.gate_proj", false, 4}, {"mlp.up_proj", false, 4},
        {"mlp.down_proj", false, 5}, {"input_layernorm", false, 6}, {"post_attention_layernorm", false, 6},
    };
    for (size_t k = 0; k < FM_ARRAY_LEN(L); k++) {
        char module[SYN_NAME_MAX];
        snprintf(module, sizeof module, "model.layers.%" PRId64 ".%s", i, L[k].module);
        int64_t out = L[k].which == 0 ? H : L[k].which == 2 ? KV : L[k].which == 4 ? I : H;
        int64_t in = L[k].which == 5 ? I : H;
        if (L[k].which == 6) {
            if (syn_add_param(c, cap, module, "weight", 1, H, 0, SYN_NORM)) return FM_ENOMEM;
            continue;
        }
        size_t w = c->n;
        if (syn_add_param(c, cap, module, "weight", 2, out, in, SYN_WEIGHT)) return FM_ENOMEM;
        if (L[k].bias && syn_add_param(c, cap, module, "bias", 1, out, 0, SYN_WEIGHT)) return FM_ENOMEM;
        if (syn_lora_target(c, module) && syn_add_lora(c, cap, module, w, out, in)) return FM_ENOMEM;
    }
    return 0;
}

static int syn_build_tensors(syn_ctx *c, fm_err *e)
{
    const syn_model *m = &c->o.model;
    size_t cap = 0;
    int rc = syn_add_param(c, &cap, "model.embed_tokens", "weight", 2, m->vocab, m->hidden, SYN_WEIGHT);
    for (int64_t i = 0; i < m->layers && rc == 0; i++) rc = syn_add_layer(c, &cap, i);
    if (rc == 0) rc = syn_add_param(c, &cap, "model.norm", "weight", 1, m->hidden, 0, SYN_NORM);
    if (rc == 0 && m->critic) rc = syn_add_param(c, &cap, "score", "weight", 2, 1, m->hidden, SYN_WEIGHT);
    if (rc == 0 && !m->critic) {
        rc = syn_add_param(c, &cap, "lm_head", "weight", 2, m->vocab, m->hidden, SYN_WEIGHT);
        if (rc == 0 && m->tied) c->t[c->n - 1].tied_to = 0;
    }
    return rc ? fm_fail(e, FM_ENOMEM, "out of memory building the parameter list") : 0;
}

static int syn_check_model(const syn_model *m, fm_err *e)
{
    const struct {
        const char *what;
        int64_t v;
    } dims[] = {{"vocab", m->vocab},   {"hidden", m->hidden},     {"intermediate", m->intermediate},
                {"heads", m->heads},   {"kv-heads", m->kv_heads}, {"max position embeddings", m->max_position_embeddings}};
    for (size_t i = 0; i < FM_ARRAY_LEN(dims); i++)
        if (dims[i].v < 1 || dims[i].v > SYN_MAX_DIM)
            return fm_fail(e, FM_EUSAGE, "%s must be between 1 and 2^40 (got %" PRId64 ")", dims[i].what, dims[i].v);
    if (m->layers < 0 || m->layers > 100000) return fm_fail(e, FM_EUSAGE, "--layers must be between 0 and 100000");
    if (m->hidden % m->heads != 0)
        return fm_fail(e, FM_EUSAGE, "hidden size %" PRId64 " is not a multiple of the %" PRId64 " heads", m->hidden, m->heads);
    if (m->heads % m->kv_heads != 0)
        return fm_fail(e, FM_EUSAGE, "%" PRId64 " heads is not a multiple of %" PRId64 " kv heads", m->heads, m->kv_heads);
    uint64_t a, b; /* the largest matrices must stay addressable */
    if (fm_mul_ovf((uint64_t)m->vocab, (uint64_t)m->hidden, &a) || fm_mul_ovf((uint64_t)m->intermediate, (uint64_t)m->hidden, &b) ||
        FM_MAX(a, b) > ((uint64_t)1 << 50))
        return fm_fail(e, FM_EUSAGE, "model dimensions too large (a matrix above 2^50 elements)");
    return 0;
}

static int syn_check_opts(const syn_opts *o, fm_err *e)
{
    if (o->out == NULL || *o->out == '\0') return fm_fail(e, FM_EUSAGE, "--out is required");
    if (o->world_size < 1 || o->world_size > SYN_MAX_WORLD)
        return fm_fail(e, FM_EUSAGE, "--world-size must be between 1 and %d", SYN_MAX_WORLD);
    if (o->dtype != DT_F32 && o->dtype != DT_BF16) return fm_fail(e, FM_EUSAGE, "--dtype must be float32 or bfloat16");
    if (o->step < 0) return fm_fail(e, FM_EUSAGE, "--step must not be negative");
    if (o->fault.kind != SYN_FAULT_NONE && o->fault.rank >= o->world_size)
        return fm_fail(e, FM_EUSAGE, "--fault rank %d is not below the world size %d", o->fault.rank, o->world_size);
    if (o->expected && !o->expected_bf16 && !o->expected_fp32)
        return fm_fail(e, FM_EUSAGE, "--expected-dtypes selects no dtype");
    if (o->expected_max_shard == 0) return fm_fail(e, FM_EUSAGE, "--expected-max-shard-size must be positive");
    return syn_check_model(&o->model, e);
}

/* Tensors of the open shard, [from, upto), get list position pos. */
static void syn_close_shard(size_t *f, size_t from, size_t upto, size_t pos)
{
    for (size_t k = from; k < upto; k++)
        if (f[k] == SIZE_MAX - 1) f[k] = pos;
}

/* huggingface_hub's split_torch_state_dict_into_shards: state-dict order; a
 * tensor above the limit is appended to the shard list at once, as a shard
 * of its own; the open shard is appended when the next tensor would
 * overflow it, and at the end. A file's number is its list position. */
static size_t *syn_split(const syn_ctx *c, dt_type dt, size_t *nfiles)
{
    const size_t OPEN = SIZE_MAX - 1; /* in the open shard, position not known yet */
    size_t *f = malloc((c->n ? c->n : 1) * sizeof *f);
    if (f == NULL) return NULL;
    size_t nlist = 0, from = 0;
    bool open = false;
    uint64_t cur = 0, lim = c->o.expected_max_shard;
    for (size_t i = 0; i < c->n; i++) {
        f[i] = SIZE_MAX;
        if (c->t[i].tied_to >= 0) continue; /* save_pretrained drops a tied lm_head */
        if (c->t[i].out_name[0] == '\0') continue; /* LoRA factors: fused, not written */
        uint64_t sz = c->t[i].numel * dt_size(dt);
        if (sz > lim) {
            f[i] = nlist++;
            continue;
        }
        if (open && cur + sz > lim) {
            syn_close_shard(f, from, i, nlist++);
            open = false;
        }
        if (!open) from = i, cur = 0, open = true;
        f[i] = OPEN;
        cur += sz;
    }
    if (open) syn_close_shard(f, from, c->n, nlist++);
    *nfiles = nlist ? nlist : 1;
    return f;
}

static int syn_plan_expected(syn_ctx *c, fm_err *e)
{
    if (c->o.expected == NULL) return 0;
    const dt_type dts[2] = {DT_BF16, DT_F32};
    const bool on[2] = {c->o.expected_bf16, c->o.expected_fp32};
    size_t nf[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        if (!on[k]) continue;
        c->file_of[k] = syn_split(c, dts[k], &nf[k]);
        if (c->file_of[k] == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    c->jobs = calloc(nf[0] + nf[1] + 1, sizeof *c->jobs);
    if (c->jobs == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    for (int k = 0; k < 2; k++)
        for (size_t j = 0; j < nf[k]; j++)
            c->jobs[c->njobs++] = (syn_job){.dtype = dts[k], .file = j, .nfiles = nf[k], .file_of = c->file_of[k]};
    return 0;
}

static int syn_check_fault(const syn_ctx *c, fm_err *e);

int syn_init(const syn_opts *o, syn_ctx **out, fm_err *e)
{
    *out = NULL;
    FM_TRY(syn_check_opts(o, e));
    syn_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    c->o = *o;
    if (c->o.model.critic) c->o.model.tied = false; /* a value head is never tied */
    if (c->o.buffer_size < SYN_MIN_BUFFER) c->o.buffer_size = SYN_MIN_BUFFER;
    const char *sub = o->subdir ? o->subdir : (c->o.model.critic ? "critic" : "actor");
    c->actor = fm_asprintf("%s/global_step_%" PRId64 "/%s", o->out, o->step, sub);
    int rc = c->actor ? syn_build_tensors(c, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = syn_plan_expected(c, e);
    if (rc == 0) rc = syn_check_fault(c, e);
    if (rc != 0) {
        syn_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void syn_free(syn_ctx *c)
{
    if (c == NULL) return;
    free(c->t);
    free(c->actor);
    free(c->file_of[0]);
    free(c->file_of[1]);
    free(c->jobs);
    free(c->fbuf);
    free(c->cbuf);
    free(c);
}

size_t syn_tensor_count(const syn_ctx *c) { return c->n; }
const syn_tensor *syn_tensor_at(const syn_ctx *c, size_t i) { return i < c->n ? &c->t[i] : NULL; }
const char *syn_actor_dir(const syn_ctx *c) { return c->actor; }

char *syn_rank_path(const syn_ctx *c, int rank)
{
    return fm_asprintf("%s/model_world_size_%d_rank_%d.pt", c->actor, c->o.world_size, rank);
}

/* ======================================================================
 * 3. the value generator
 * ==================================================================== */

/* 24 random bits, centred to [-2^23, 2^23), scaled: one multiply and one
 * add round, so the value is a pure function of the bits on every machine. */
static inline float syn_val(uint64_t bits24, float base, float scale)
{
    return base + (float)((int32_t)bits24 - (1 << 23)) * scale;
}

/* Element g takes 24 bits of splitmix64(stream + (g/2) * golden): the top
 * bits for even g, bits 8..31 for odd g (one mix serves two elements). */
void syn_fill(const syn_tensor *t, uint64_t g0, size_t n, float *out)
{
    const float scale = t->kind == SYN_NORM ? 0.01f / 8388608.0f : 0.05f / 8388608.0f;
    const float base = t->kind == SYN_NORM ? 1.0f : 0.0f;
    const uint64_t M = 0xFFFFFF;
    size_t i = 0;
    uint64_t x = t->stream + (g0 >> 1) * SYN_GOLDEN;
    if ((g0 & 1) && n > 0) {
        out[i++] = syn_val((syn_mix(x) >> 8) & M, base, scale);
        x += SYN_GOLDEN;
    }
    for (; i + 1 < n; i += 2, x += SYN_GOLDEN) {
        uint64_t z = syn_mix(x);
        out[i] = syn_val(z >> 40, base, scale);
        out[i + 1] = syn_val((z >> 8) & M, base, scale);
    }
    if (i < n) out[i] = syn_val(syn_mix(x) >> 40, base, scale);
}

/* The streaming buffers: belems floats + belems converted elements. */
static int syn_buffers(syn_ctx *c, fm_err *e)
{
    if (c->fbuf) return 0;
    c->belems = c->o.buffer_size / sizeof(float);
    c->fbuf = malloc(c->belems * sizeof(float));
    c->cbuf = malloc(c->belems * sizeof(float));
    if (c->fbuf == NULL || c->cbuf == NULL) return fm_fail(e, FM_ENOMEM, "out of memory (streaming buffers)");
    return 0;
}

/* fp32 values in fbuf[0..n) -> bytes in the file dtype `to`, after rounding
 * through the stored dtype `via` (bf16 parameters widened back for fp32
 * output stay bf16-valued). Returns the bytes to write. */
static const void *syn_convert(syn_ctx *c, size_t n, dt_type via, dt_type to)
{
    if (via == DT_F32 && to == DT_F32) return c->fbuf;
    dt_convert(DT_F32, DT_BF16, c->fbuf, c->cbuf, n, false);
    if (to == DT_BF16) return c->cbuf;
    dt_convert(DT_BF16, DT_F32, c->cbuf, c->fbuf, n, false);
    return c->fbuf;
}

/* ======================================================================
 * 4. the per-rank plan
 * ==================================================================== */

/* One state-dict key of one rank file. The storage is FSDP2's padded
 * chunk: the global shape with dim `pdim` cut to chunk rows, contiguous,
 * rows past `len` zero; the local tensor is its first `len` rows. */
typedef struct syn_ent {
    const syn_tensor *t; /* name and value stream */
    dt_type dtype;
    int ndim, pdim;
    int64_t gshape[2];
    int64_t chunk, start, len; /* along pdim, torch.chunk's rule */
    uint64_t snumel;           /* storage elements */
    int64_t vshape[2], vstride[2];
    int share;                 /* entry whose storage and DTensorSpec it reuses (tied), or -1 */
    int skey;                  /* storage key: record data/<skey> */
} syn_ent;

typedef struct syn_rank {
    int rank, world;
    syn_ent *ent;
    size_t n;
    int *owner;      /* storage key -> owning entry; -1 = the device mesh's rank map */
    size_t nstor;
    int rankmap_key;
    syn_tensor extra; /* the extra-key fault's tensor */
} syn_rank;

static void syn_rank_free(syn_rank *rk)
{
    free(rk->ent);
    free(rk->owner);
    memset(rk, 0, sizeof *rk);
}

/* Shard(0), or verl's get_shard_placement_fn: the first dim divisible by W. */
static int syn_pick_dim(const syn_ctx *c, int ndim, const int64_t *shape)
{
    if (c->o.placement != SYN_PLACE_VERL) return 0;
    for (int d = 0; d < ndim; d++)
        if (shape[d] % c->o.world_size == 0) return d;
    return 0;
}

/* torch.chunk rows of `rank` along pdim, FSDP2's padded storage, the view. */
static void syn_geometry(syn_ent *en, int world, int rank)
{
    int64_t n = en->gshape[en->pdim];
    en->chunk = (n + world - 1) / world;
    en->start = FM_MIN((int64_t)rank * en->chunk, n);
    en->len = FM_MIN(en->start + en->chunk, n) - en->start;
    int64_t padded[2] = {en->gshape[0], en->gshape[1]};
    padded[en->pdim] = en->chunk;
    en->snumel = 1;
    for (int d = 0; d < en->ndim; d++) {
        en->snumel *= (uint64_t)padded[d];
        en->vshape[d] = d == en->pdim ? en->len : en->gshape[d];
    }
    /* narrow() keeps the padded tensor's (contiguous) strides */
    en->vstride[en->ndim - 1] = 1;
    if (en->ndim == 2) en->vstride[0] = padded[1];
}

static void syn_ent_init(const syn_ctx *c, const syn_tensor *t, int rank, syn_ent *en)
{
    memset(en, 0, sizeof *en);
    en->t = t;
    en->dtype = c->o.dtype;
    en->ndim = t->ndim;
    en->gshape[0] = t->shape[0];
    en->gshape[1] = t->ndim == 2 ? t->shape[1] : 1;
    en->pdim = syn_pick_dim(c, t->ndim, t->shape);
    en->share = t->tied_to;
    syn_geometry(en, c->o.world_size, rank);
}

static int syn_find_key(const syn_rank *rk, const char *key)
{
    for (size_t i = 0; i < rk->n; i++)
        if (strcmp(rk->ent[i].t->name, key) == 0) return (int)i;
    return -1;
}

/* FSDP2 allows Shard(d > 0) only when d divides evenly. */
static bool syn_can_flip(const syn_ent *en, int world)
{
    return en->ndim == 2 && (en->pdim == 1 || en->gshape[1] % world == 0);
}

/* The key a fault changes: the one named, else the kind's default. */
static int syn_fault_target(const syn_ctx *c, const syn_rank *rk, int *out, fm_err *e)
{
    const syn_fault *f = &c->o.fault;
    int i = -1;
    if (f->key[0]) {
        i = syn_find_key(rk, f->key);
        if (i < 0) return fm_fail(e, FM_EUSAGE, "--fault: the model has no key '%s'", f->key);
    } else if (f->kind == SYN_FAULT_MISSING_KEY) {
        i = (int)rk->n - 1;
    } else if (f->kind == SYN_FAULT_VIEW_RANGE || f->kind == SYN_FAULT_PLACEMENT) {
        for (size_t k = 0; k < rk->n && i < 0; k++) {
            bool ok = f->kind == SYN_FAULT_VIEW_RANGE ? rk->ent[k].len > 0 : syn_can_flip(&rk->ent[k], rk->world);
            if (ok) i = (int)k;
        }
        if (i < 0) return fm_fail(e, FM_EUSAGE, "--fault: no key of rank %d can take this fault", rk->rank);
    } else {
        i = 0;
    }
    *out = i;
    return 0;
}

static void syn_remove(syn_rank *rk, int i)
{
    memmove(&rk->ent[i], &rk->ent[i + 1], (rk->n - (size_t)i - 1) * sizeof *rk->ent);
    rk->n--;
    for (size_t k = 0; k < rk->n; k++) {
        if (rk->ent[k].share == i) rk->ent[k].share = -1; /* it now owns its storage */
        else if (rk->ent[k].share > i) rk->ent[k].share--;
    }
}

static int syn_fault_extra(const syn_ctx *c, syn_rank *rk, fm_err *e)
{
    syn_tensor *x = &rk->extra;
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", c->o.fault.key[0] ? c->o.fault.key : "model.extra_fault.weight");
    if (syn_find_key(rk, x->name) >= 0) return fm_fail(e, FM_EUSAGE, "--fault extra-key: '%s' is already a key", x->name);
    x->ndim = 1;
    x->shape[0] = c->o.model.hidden;
    x->shape[1] = 1;
    x->numel = (uint64_t)x->shape[0];
    x->tied_to = -1;
    x->stream = syn_mix(c->o.seed ^ 0xe7a4e7a4ULL);
    syn_ent_init(c, x, rk->rank, &rk->ent[rk->n++]);
    return 0;
}

/* Makes rank rk->rank's file wrong in one way, keeping it self-consistent. */
static int syn_apply_fault(const syn_ctx *c, syn_rank *rk, fm_err *e)
{
    const syn_fault *f = &c->o.fault;
    if (f->kind == SYN_FAULT_EXTRA_KEY) return syn_fault_extra(c, rk, e);
    int i = 0;
    FM_TRY(syn_fault_target(c, rk, &i, e));
    syn_ent *en = &rk->ent[i];
    if (f->kind == SYN_FAULT_MISSING_KEY) {
        syn_remove(rk, i);
        return 0;
    }
    en->share = -1; /* a changed tied lm_head gets its own storage */
    switch (f->kind) {
    case SYN_FAULT_SHAPE: /* + W rows keeps dim 0's divisibility, so the placement stays valid */
        en->gshape[0] += rk->world;
        break;
    case SYN_FAULT_DTYPE:
        en->dtype = en->dtype == DT_F32 ? DT_BF16 : DT_F32;
        break;
    case SYN_FAULT_PLACEMENT:
        if (!syn_can_flip(en, rk->world))
            return fm_fail(e, FM_EUSAGE, "--fault placement: %s cannot be sharded on another dim", en->t->name);
        en->pdim = 1 - en->pdim;
        break;
    case SYN_FAULT_VIEW_RANGE:
        if (en->len == 0) return fm_fail(e, FM_EUSAGE, "--fault view-range: %s is empty on rank %d", en->t->name, rk->rank);
        break;
    default:
        break;
    }
    syn_geometry(en, rk->world, rk->rank);
    if (f->kind == SYN_FAULT_VIEW_RANGE) { /* the storage ends one element before the view does */
        uint64_t extent = 1;
        for (int d = 0; d < en->ndim; d++) extent += (uint64_t)(en->vshape[d] - 1) * (uint64_t)en->vstride[d];
        en->snumel = extent - 1;
    }
    return 0;
}

/* Storage keys in pickling order: the first tensor's storage is "0", the
 * device mesh's rank map (pickled inside the first DTensorSpec) is "1". */
static void syn_assign_keys(syn_rank *rk)
{
    int k = 0;
    for (size_t i = 0; i < rk->n; i++) {
        syn_ent *en = &rk->ent[i];
        if (en->share >= 0) {
            const syn_tensor *t = en->t;
            int share = en->share;
            *en = rk->ent[share]; /* same geometry, dtype and storage */
            en->t = t;
            en->share = share;
            continue;
        }
        rk->owner[k] = (int)i;
        en->skey = k++;
        if (i == 0) rk->owner[rk->rankmap_key = k++] = -1;
    }
    rk->nstor = (size_t)k;
}

static int syn_rank_plan(const syn_ctx *c, int rank, syn_rank *rk, fm_err *e)
{
    memset(rk, 0, sizeof *rk);
    rk->rank = rank;
    rk->world = c->o.world_size;
    rk->ent = calloc(c->n + 1, sizeof *rk->ent);
    rk->owner = calloc(c->n + 2, sizeof *rk->owner);
    if (rk->ent == NULL || rk->owner == NULL) {
        syn_rank_free(rk);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < c->n; i++) syn_ent_init(c, &c->t[i], rank, &rk->ent[i]);
    rk->n = c->n;
    int rc = 0;
    if (c->o.fault.kind != SYN_FAULT_NONE && c->o.fault.rank == rank) rc = syn_apply_fault(c, rk, e);
    if (rc != 0) {
        syn_rank_free(rk);
        return rc;
    }
    syn_assign_keys(rk);
    return 0;
}

/* A fault that cannot apply is a usage error before anything is written. */
static int syn_check_fault(const syn_ctx *c, fm_err *e)
{
    if (c->o.fault.kind == SYN_FAULT_NONE) return 0;
    syn_rank rk;
    FM_TRY(syn_rank_plan(c, c->o.fault.rank, &rk, e));
    syn_rank_free(&rk);
    return 0;
}

/* ======================================================================
 * 5. the pickle tree
 *
 * Node for node what torch 2.11 pickles for an FSDP2 state dict (see the
 * fsdp2_ws4_tied fixture): one DeviceMesh per file, one DTensorSpec per
 * distinct (shape, dtype, placement) (see syn_same_spec), interned
 * strings (attribute names, the storage location) shared, the strings torch
 * creates afresh (each device's "cpu", each Shard's "dim") not.
 * ==================================================================== */

typedef struct syn_pb {
    pkl_doc *doc;
    bool fail;           /* an allocation failed: checked once at the end */
    const syn_rank *rk;
    uint64_t hseed;
    pkl_value *s_storage, *s_cpu, *s_hash, *s_local, *s_spec, *s_mesh, *s_placements, *s_meta, *s_order, *s_strided;
    pkl_value *layout, *mesh;
    pkl_value **spec;    /* per entry */
    pkl_value **skey;    /* per storage key: its key string */
} syn_pb;

static pkl_value *pb_chk(syn_pb *b, pkl_value *v)
{
    if (v == NULL) b->fail = true;
    return v;
}

static pkl_value *pb_int(syn_pb *b, int64_t v) { return pb_chk(b, pkl_new_int(b->doc, v)); }
static pkl_value *pb_str(syn_pb *b, const char *s) { return pb_chk(b, pkl_new_cstr(b->doc, s)); }
static pkl_value *pb_none(syn_pb *b) { return pb_chk(b, pkl_new_none(b->doc)); }
static pkl_value *pb_false(syn_pb *b) { return pb_chk(b, pkl_new_bool(b->doc, false)); }
static pkl_value *pb_dict(syn_pb *b) { return pb_chk(b, pkl_new_dict(b->doc)); }
static pkl_value *pb_glob(syn_pb *b, const char *m, const char *n) { return pb_chk(b, pkl_new_global(b->doc, m, n)); }

static pkl_value *pb_tuple(syn_pb *b, size_t n, pkl_value *const *items)
{
    for (size_t i = 0; i < n; i++)
        if (items[i] == NULL) return pb_chk(b, NULL);
    return pb_chk(b, pkl_new_tuple(b->doc, n, items));
}

static pkl_value *pb_ints(syn_pb *b, int n, const int64_t *v)
{
    pkl_value *it[2];
    for (int i = 0; i < n; i++) it[i] = pb_int(b, v[i]);
    return pb_tuple(b, (size_t)n, it);
}

static pkl_value *pb_obj(syn_pb *b, pkl_obj_kind kind, pkl_value *callable, pkl_value *args)
{
    if (callable == NULL || args == NULL) return pb_chk(b, NULL);
    return pb_chk(b, pkl_new_obj(b->doc, kind, callable, args));
}

/* cls.__new__(cls) + BUILD(state), as copyreg's __newobj__ reduces. */
static pkl_value *pb_newobj(syn_pb *b, const char *m, const char *n, pkl_value *state)
{
    pkl_value *o = pb_obj(b, PKL_NEWOBJ, pb_glob(b, m, n), pb_tuple(b, 0, NULL));
    if (o == NULL || state == NULL) return pb_chk(b, NULL);
    o->u.obj.state = state;
    return o;
}

static void pb_set(syn_pb *b, pkl_value *dict, pkl_value *k, pkl_value *v)
{
    if (dict == NULL || k == NULL || v == NULL || pkl_dict_set(b->doc, dict, k, v) != 0) b->fail = true;
}

static void pb_setc(syn_pb *b, pkl_value *dict, const char *k, pkl_value *v) { pb_set(b, dict, pb_str(b, k), v); }

static pkl_value *pb_odict(syn_pb *b)
{
    return pb_obj(b, PKL_REDUCE, pb_glob(b, "collections", "OrderedDict"), pb_tuple(b, 0, NULL));
}

static pkl_value *pb_hash(syn_pb *b, uint64_t salt)
{
    return pb_int(b, (int64_t)syn_mix(b->hseed + salt * SYN_GOLDEN)); /* Python's hash(): any int64 */
}

/* ('storage', torch.<Type>Storage, key, 'cpu', numel) as a persistent id. */
static pkl_value *pb_persid(syn_pb *b, const char *cls, pkl_value *key, uint64_t numel)
{
    pkl_value *t[5] = {b->s_storage, pb_glob(b, "torch", cls), key, b->s_cpu, pb_int(b, (int64_t)numel)};
    return pb_chk(b, pkl_new_persid(b->doc, pb_tuple(b, 5, t)));
}

/* _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()) */
static pkl_value *pb_rebuild(syn_pb *b, pkl_value *persid, int ndim, const int64_t *shape, const int64_t *stride)
{
    pkl_value *a[6] = {persid, pb_int(b, 0), pb_ints(b, ndim, shape), pb_ints(b, ndim, stride), pb_false(b), pb_odict(b)};
    return pb_obj(b, PKL_REDUCE, pb_glob(b, "torch._utils", "_rebuild_tensor_v2"), pb_tuple(b, 6, a));
}

static const char *syn_storage_class(dt_type dt) { return dt == DT_BF16 ? "BFloat16Storage" : "FloatStorage"; }

/* DeviceMesh (torch 2.11 schema: _layout, _rank_map, ...) of a 1-D "fsdp" mesh. */
static pkl_value *pb_mesh(syn_pb *b)
{
    int64_t w = b->rk->world, r = b->rk->rank, one = 1;
    pkl_value *ls = pb_dict(b);
    pb_setc(b, ls, "shape", pb_ints(b, 1, &w));
    pb_setc(b, ls, "stride", pb_ints(b, 1, &one));
    pkl_value *layout = pb_newobj(b, "torch.distributed._mesh_layout", "_MeshLayout", ls);
    pkl_value *rmap = pb_rebuild(b, pb_persid(b, "IntStorage", b->skey[b->rk->rankmap_key], (uint64_t)w), 1, &w, &one);
    pkl_value **ranks = calloc((size_t)w, sizeof *ranks);
    if (ranks == NULL) return pb_chk(b, NULL);
    for (int64_t i = 0; i < w; i++) ranks[i] = pb_int(b, i);
    pkl_value *flat = pb_tuple(b, (size_t)w, ranks);
    free(ranks);
    pkl_value *names = pb_str(b, "fsdp"), *groups = pb_chk(b, pkl_new_list(b->doc));
    if (groups && pkl_seq_append(b->doc, groups, pb_str(b, "0")) != 0) b->fail = true;
    pkl_value *st = pb_dict(b);
    pb_setc(b, st, "_device_type", b->s_cpu);
    pb_setc(b, st, "_layout", layout);
    pb_setc(b, st, "_rank_map", rmap);
    pb_setc(b, st, "_mesh_dim_names", pb_tuple(b, 1, &names));
    pb_setc(b, st, "_root_mesh", pb_none(b));
    pb_setc(b, st, "_flatten_rank_map", flat);
    pb_setc(b, st, "_thread_id", pb_none(b));
    pb_setc(b, st, "_flatten_mapping", pb_dict(b));
    pb_setc(b, st, "_dim_group_names", groups);
    pb_setc(b, st, "_rank", pb_int(b, r));
    pkl_value *coord = pb_int(b, r);
    pb_setc(b, st, "_coordinate_on_dim", pb_tuple(b, 1, &coord));
    pb_set(b, st, b->s_hash, pb_hash(b, 0x3e54));
    return pb_newobj(b, "torch.distributed.device_mesh", "DeviceMesh", st);
}

static void syn_gstride(const syn_ent *en, int64_t *s)
{
    s[en->ndim - 1] = 1;
    if (en->ndim == 2) s[0] = en->gshape[1];
}

/* DTensorSpec(mesh, (Shard(d),), TensorMeta(Size, stride, dtype), shard_order, ...) */
static pkl_value *pb_spec(syn_pb *b, const syn_ent *en, size_t idx)
{
    const char *SPEC = "torch.distributed.tensor._dtensor_spec";
    int64_t gs[2], zero = 0;
    syn_gstride(en, gs);
    pkl_value *sd = pb_dict(b);
    pb_setc(b, sd, "dim", pb_int(b, en->pdim)); /* a new "dim" str per Shard, as pybind11 makes */
    pkl_value *shard = pb_newobj(b, "torch.distributed.tensor.placement_types", "Shard", sd);
    pkl_value *shape = pb_ints(b, en->ndim, en->gshape);
    pkl_value *size = pb_obj(b, PKL_REDUCE, pb_glob(b, "torch", "Size"), pb_tuple(b, 1, &shape));
    pkl_value *tm_args[3] = {size, pb_ints(b, en->ndim, gs), pb_glob(b, "torch", dt_torch_name(en->dtype))};
    pkl_value *tm = pb_obj(b, PKL_NEWOBJ, pb_glob(b, SPEC, "TensorMeta"), pb_tuple(b, 3, tm_args));
    pkl_value *soe_args[2] = {pb_int(b, en->pdim), pb_ints(b, 1, &zero)};
    pkl_value *soe = pb_obj(b, PKL_NEWOBJ, pb_glob(b, SPEC, "ShardOrderEntry"), pb_tuple(b, 2, soe_args));
    pkl_value *st = pb_dict(b);
    pb_set(b, st, b->s_mesh, b->mesh);
    pb_set(b, st, b->s_placements, pb_tuple(b, 1, &shard));
    pb_set(b, st, b->s_meta, tm);
    pb_set(b, st, b->s_order, pb_tuple(b, 1, &soe));
    pb_set(b, st, b->s_strided, pb_false(b));
    pb_set(b, st, b->s_hash, pb_hash(b, idx + 1));
    return pb_newobj(b, SPEC, "DTensorSpec", st);
}

/* _rebuild_from_type_v2(_rebuild_wrapper_subclass, DTensor, (DTensor, dtype,
 * size, stride, 0, strided, device('cpu'), False), (None, {_local_tensor, _spec})) */
static pkl_value *pb_dtensor(syn_pb *b, size_t i)
{
    const syn_ent *en = &b->rk->ent[i];
    int64_t gs[2];
    syn_gstride(en, gs);
    pkl_value *cpu = pb_str(b, "cpu");
    pkl_value *dev = pb_obj(b, PKL_REDUCE, pb_glob(b, "torch", "device"), pb_tuple(b, 1, &cpu));
    pkl_value *dtcls = pb_glob(b, "torch.distributed.tensor", "DTensor");
    pkl_value *wa[8] = {dtcls, pb_glob(b, "torch", dt_torch_name(en->dtype)), pb_ints(b, en->ndim, en->gshape),
                        pb_ints(b, en->ndim, gs), pb_int(b, 0), b->layout, dev, pb_false(b)};
    pkl_value *pid = pb_persid(b, syn_storage_class(en->dtype), b->skey[en->skey], en->snumel);
    pkl_value *sd = pb_dict(b);
    pb_set(b, sd, b->s_local, pb_rebuild(b, pid, en->ndim, en->vshape, en->vstride));
    pb_set(b, sd, b->s_spec, b->spec[i]);
    pkl_value *state[2] = {pb_none(b), sd};
    pkl_value *args[4] = {pb_glob(b, "torch._utils", "_rebuild_wrapper_subclass"), dtcls, pb_tuple(b, 8, wa),
                          pb_tuple(b, 2, state)};
    return pb_obj(b, PKL_REDUCE, pb_glob(b, "torch._tensor", "_rebuild_from_type_v2"), pb_tuple(b, 4, args));
}

/* state_dict()'s _metadata: {'version': 1} per module prefix, in
 * named_modules() order. */
static pkl_value *pb_metadata(syn_pb *b, const syn_model *m)
{
    static const char *const LAYER[] = {"",           ".self_attn",     ".self_attn.q_proj", ".self_attn.k_proj",
                                        ".self_attn.v_proj", ".self_attn.o_proj", ".mlp", ".mlp.gate_proj",
                                        ".mlp.up_proj", ".mlp.down_proj", ".mlp.act_fn", ".input_layernorm",
                                        ".post_attention_layernorm"};
    pkl_value *md = pb_odict(b), *items = pb_dict(b), *version = pb_str(b, "version");
    if (md) md->u.obj.dictitems = items;
    const char *head[] = {"", "model", "model.embed_tokens", "model.layers"};
    const char *tail_lm[] = {"model.norm", "model.rotary_emb", "lm_head"};
    const char *tail_critic[] = {"model.norm", "model.rotary_emb", "dropout", "score"};
    char name[SYN_NAME_MAX];
    size_t nmods = 4 + (size_t)m->layers * FM_ARRAY_LEN(LAYER) + (m->critic ? 4 : 3);
    for (size_t k = 0; k < nmods && !b->fail; k++) {
        size_t body = (size_t)m->layers * FM_ARRAY_LEN(LAYER);
        if (k < 4) snprintf(name, sizeof name, "%s", head[k]);
        else if (k - 4 < body)
            snprintf(name, sizeof name, "model.layers.%zu%s", (k - 4) / FM_ARRAY_LEN(LAYER), LAYER[(k - 4) % FM_ARRAY_LEN(LAYER)]);
        else snprintf(name, sizeof name, "%s", (m->critic ? tail_critic : tail_lm)[k - 4 - body]);
        pkl_value *v = pb_dict(b);
        pb_set(b, v, version, pb_int(b, 1));
        pb_setc(b, items, name, v);
    }
    return md;
}

static void pb_shared(syn_pb *b)
{
    b->s_storage = pb_str(b, "storage");
    b->s_cpu = pb_str(b, "cpu");
    b->s_hash = pb_str(b, "_hash");
    b->s_local = pb_str(b, "_local_tensor");
    b->s_spec = pb_str(b, "_spec");
    b->s_mesh = pb_str(b, "mesh");
    b->s_placements = pb_str(b, "placements");
    b->s_meta = pb_str(b, "tensor_meta");
    b->s_order = pb_str(b, "shard_order");
    b->s_strided = pb_str(b, "use_strided_shard_as_shard_order");
    pkl_value *strided = pb_str(b, "torch.strided");
    b->layout = pb_obj(b, PKL_REDUCE, pb_glob(b, "torch.serialization", "_get_layout"), pb_tuple(b, 1, &strided));
    for (size_t k = 0; k < b->rk->nstor; k++) {
        char key[32];
        snprintf(key, sizeof key, "%zu", k);
        b->skey[k] = pb_str(b, key);
    }
    b->mesh = pb_mesh(b);
}

/* The first entry whose DTensorSpec equals entry i's: state_dict()'s
 * detach() goes through DTensor's sharding-propagation cache, which hands
 * back one output spec object per distinct input spec, so torch pickles
 * each distinct (shape, dtype, placement) once per file (a tied lm_head
 * therefore also reuses the embedding's). */
static size_t syn_same_spec(const syn_rank *rk, size_t i)
{
    const syn_ent *a = &rk->ent[i];
    if (a->share >= 0) return (size_t)a->share;
    for (size_t j = 0; j < i; j++) {
        const syn_ent *x = &rk->ent[j];
        if (x->ndim == a->ndim && x->pdim == a->pdim && x->dtype == a->dtype && x->gshape[0] == a->gshape[0] &&
            (a->ndim == 1 || x->gshape[1] == a->gshape[1]))
            return j;
    }
    return i;
}

/* The whole data.pkl tree: OrderedDict of key -> DTensor, + BUILD _metadata. */
static pkl_value *pb_root(syn_pb *b, const syn_model *m)
{
    pb_shared(b);
    pkl_value *root = pb_odict(b), *items = pb_dict(b);
    if (root) root->u.obj.dictitems = items;
    for (size_t i = 0; i < b->rk->n && !b->fail; i++) {
        const syn_ent *en = &b->rk->ent[i];
        size_t j = syn_same_spec(b->rk, i);
        b->spec[i] = j < i ? b->spec[j] : pb_spec(b, en, i);
        pb_setc(b, items, en->t->name, pb_dtensor(b, i));
    }
    pkl_value *state = pb_dict(b);
    pb_setc(b, state, "_metadata", pb_metadata(b, m));
    if (root) root->u.obj.state = state;
    return b->fail ? NULL : root;
}

static int syn_pickle(const syn_ctx *c, const syn_rank *rk, fm_buf *out, fm_err *e)
{
    syn_pb b = {.rk = rk, .hseed = syn_mix(c->o.seed + 0x4a5f) ^ (uint64_t)rk->rank};
    b.doc = pkl_doc_new();
    b.spec = calloc(rk->n + 1, sizeof *b.spec);
    b.skey = calloc(rk->nstor + 1, sizeof *b.skey);
    int rc = 0;
    if (b.doc == NULL || b.spec == NULL || b.skey == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    pkl_value *root = rc == 0 ? pb_root(&b, &c->o.model) : NULL;
    if (rc == 0 && root == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory building the pickle");
    if (rc == 0) rc = pkw_dump(b.doc, root, out, e);
    if (rc == 0 && out->oom) rc = fm_fail(e, FM_ENOMEM, "out of memory writing the pickle");
    free(b.spec);
    free(b.skey);
    pkl_doc_free(b.doc);
    return rc;
}

int syn_rank_pickle(syn_ctx *c, int rank, fm_buf *out, fm_err *e)
{
    if (rank < 0 || rank >= c->o.world_size) return fm_fail(e, FM_EUSAGE, "rank %d is outside the world size", rank);
    syn_rank rk;
    FM_TRY(syn_rank_plan(c, rank, &rk, e));
    int rc = syn_pickle(c, &rk, out, e);
    syn_rank_free(&rk);
    return rc;
}

/* ======================================================================
 * 6. streaming the storages
 * ==================================================================== */

/* Storage elements [p, p+n) of en into out (fp32): the storage is
 * outer x chunk x inner (row-major, chunk along pdim); chunk rows below len
 * hold global rows start.., the padding rows are zero. Whole runs go to
 * syn_fill at once, so the per-element cost is the generator's alone. */
static void syn_gather(const syn_ent *en, uint64_t p, size_t n, float *out)
{
    uint64_t inner = en->ndim == 2 && en->pdim == 0 ? (uint64_t)en->gshape[1] : 1;
    uint64_t np = (uint64_t)en->gshape[en->pdim], chunk = (uint64_t)en->chunk, len = (uint64_t)en->len;
    size_t done = 0;
    while (done < n) {
        uint64_t at = p + done, k = at % inner, q = at / inner, cc = q % chunk, o = q / chunk;
        bool data = cc < len;
        uint64_t run = ((data ? len : chunk) - cc) * inner - k;
        size_t m = (size_t)FM_MIN(run, (uint64_t)(n - done));
        if (data) syn_fill(en->t, (o * np + (uint64_t)en->start + cc) * inner + k, m, out + done);
        else memset(out + done, 0, m * sizeof *out);
        done += m;
    }
}

static int syn_stream_entry(syn_ctx *c, ptzw *w, const syn_ent *en, uint64_t *bytes, fm_err *e)
{
    size_t es = dt_size(en->dtype);
    for (uint64_t p = 0; p < en->snumel;) {
        size_t n = (size_t)FM_MIN((uint64_t)c->belems, en->snumel - p);
        syn_gather(en, p, n, c->fbuf);
        FM_TRY(ptzw_write(w, syn_convert(c, n, en->dtype, en->dtype), n * es, e));
        *bytes += n * es;
        p += n;
    }
    return 0;
}

/* The mesh's _rank_map: int32 ranks 0..W-1. */
static int syn_stream_rankmap(syn_ctx *c, ptzw *w, int world, uint64_t *bytes, fm_err *e)
{
    int32_t *v = (int32_t *)(void *)c->cbuf;
    size_t per = c->o.buffer_size / sizeof *v;
    for (int r = 0; r < world;) {
        size_t n = FM_MIN(per, (size_t)(world - r));
        for (size_t i = 0; i < n; i++) { /* little-endian, as torch writes on x86 */
            uint32_t x = (uint32_t)(r + (int)i);
            uint8_t *q = (uint8_t *)&v[i];
            q[0] = (uint8_t)x, q[1] = (uint8_t)(x >> 8), q[2] = (uint8_t)(x >> 16), q[3] = (uint8_t)(x >> 24);
        }
        FM_TRY(ptzw_write(w, v, n * sizeof *v, e));
        *bytes += n * sizeof *v;
        r += (int)n;
    }
    return 0;
}

static int syn_write_storages(syn_ctx *c, ptzw *w, const syn_rank *rk, uint64_t *bytes, fm_err *e)
{
    for (size_t k = 0; k < rk->nstor; k++) {
        char name[40];
        snprintf(name, sizeof name, "data/%zu", k);
        FM_TRY(ptzw_begin(w, name, e));
        int rc = rk->owner[k] < 0 ? syn_stream_rankmap(c, w, rk->world, bytes, e)
                                  : syn_stream_entry(c, w, &rk->ent[rk->owner[k]], bytes, e);
        if (rc == 0) rc = ptzw_end(w, e);
        if (rc != 0) return rk->owner[k] < 0 ? rc : fm_context(e, "%s", rk->ent[rk->owner[k]].t->name);
    }
    return 0;
}

static int syn_write_zip(syn_ctx *c, const syn_rank *rk, const char *path, const fm_buf *pkl, uint64_t *bytes, fm_err *e)
{
    char *prefix = fm_asprintf("model_world_size_%d_rank_%d", rk->world, rk->rank);
    if (prefix == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    ptzw *w = NULL;
    int rc = ptzw_create(path, prefix, &w, e);
    free(prefix);
    if (rc == 0) rc = ptzw_add_preamble(w, pkl->data, pkl->len, e);
    if (rc == 0) rc = syn_write_storages(c, w, rk, bytes, e);
    if (rc == 0) return ptzw_close(w, e); /* frees w and removes the file on error */
    ptzw_abort(w);
    return rc;
}

int syn_write_rank(syn_ctx *c, int rank, uint64_t *bytes, fm_err *e)
{
    uint64_t dummy = 0;
    if (bytes == NULL) bytes = &dummy;
    if (rank < 0 || rank >= c->o.world_size) return fm_fail(e, FM_EUSAGE, "rank %d is outside the world size", rank);
    FM_TRY(syn_buffers(c, e));
    char *path = syn_rank_path(c, rank);
    if (path == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    syn_rank rk;
    fm_buf pkl = {0};
    int rc = syn_rank_plan(c, rank, &rk, e);
    if (rc == 0) {
        rc = syn_pickle(c, &rk, &pkl, e);
        if (rc == 0) rc = syn_write_zip(c, &rk, path, &pkl, bytes, e);
        syn_rank_free(&rk);
    }
    if (rc != 0) fm_context(e, "rank %d: %s", rank, path);
    fm_buf_free(&pkl);
    free(path);
    return rc;
}

/* ======================================================================
 * 7. the json files around the shards
 * ==================================================================== */

static void syn_json_id(fm_buf *b, const char *key, int64_t v)
{
    if (v < 0) fm_buf_printf(b, "\"%s\": null, ", key);
    else fm_buf_printf(b, "\"%s\": %" PRId64 ", ", key, v);
}

/* config.json as a bare Qwen2Config.save_pretrained() of transformers 5
 * writes it (no architectures, no dtype; the critic's carries its head). */
static void syn_config_text(const syn_model *m, fm_buf *b)
{
    fm_buf_puts(b, "{");
    if (m->critic)
        fm_buf_puts(b, "\"architectures\": [\"Qwen2ForTokenClassification\"], \"id2label\": {\"0\": \"LABEL_0\"}, "
                       "\"label2id\": {\"LABEL_0\": 0}, ");
    fm_buf_puts(b, "\"attention_dropout\": 0.0, ");
    syn_json_id(b, "bos_token_id", m->bos);
    syn_json_id(b, "eos_token_id", m->eos);
    fm_buf_printf(b, "\"hidden_act\": \"silu\", \"hidden_size\": %" PRId64 ", \"initializer_range\": 0.02, "
                     "\"intermediate_size\": %" PRId64 ", \"layer_types\": [",
                  m->hidden, m->intermediate);
    for (int64_t i = 0; i < m->layers; i++) fm_buf_puts(b, i ? ", \"full_attention\"" : "\"full_attention\"");
    fm_buf_printf(b, "], \"max_position_embeddings\": %" PRId64 ", \"max_window_layers\": 28, \"model_type\": \"qwen2\", "
                     "\"num_attention_heads\": %" PRId64 ", \"num_hidden_layers\": %" PRId64 ", "
                     "\"num_key_value_heads\": %" PRId64 ", ",
                  m->max_position_embeddings, m->heads, m->layers, m->kv_heads);
    syn_json_id(b, "pad_token_id", m->pad);
    fm_buf_printf(b, "\"rms_norm_eps\": 1e-06, \"rope_parameters\": {\"rope_theta\": %s, \"rope_type\": \"default\"}, "
                     "\"sliding_window\": null, \"tie_word_embeddings\": %s, \"transformers_version\": \"5.17.0\", "
                     "\"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": %" PRId64 "}",
                  m->rope_theta ? m->rope_theta : "1000000.0", m->tied ? "true" : "false", m->vocab);
}

/* Writes text (compact JSON) as json.dumps(indent=2, sort_keys=True) + "\n". */
static int syn_write_pyjson(const char *dir, const char *name, const fm_buf *text, fm_err *e)
{
    if (text->oom) return fm_fail(e, FM_ENOMEM, "out of memory");
    jf_node *n = NULL;
    fm_buf out = {0};
    int rc = jf_parse((const char *)text->data, text->len, 0, &n, NULL, e);
    if (rc == 0) rc = jf_print(n, NULL, &out, e);
    fm_buf_putc(&out, '\n');
    char *path = fm_path_join(dir, name);
    if (rc == 0 && (path == NULL || out.oom)) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = fm_write_file(path, out.data, out.len, e);
    free(path);
    fm_buf_free(&out);
    jf_free(n);
    return rc;
}

static int syn_write_hf(const syn_ctx *c, const char *hf, fm_err *e)
{
    const syn_model *m = &c->o.model;
    fm_buf b = {0};
    syn_config_text(m, &b);
    int rc = syn_write_pyjson(hf, "config.json", &b, e);
    b.len = 0;
    if (rc == 0 && !m->critic) { /* verl saves a generation config only for models that generate */
        fm_buf_puts(&b, "{\"do_sample\": true, ");
        syn_json_id(&b, "eos_token_id", m->eos);
        syn_json_id(&b, "pad_token_id", m->pad);
        fm_buf_puts(&b, "\"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.8, \"transformers_version\": \"5.17.0\"}");
        rc = syn_write_pyjson(hf, "generation_config.json", &b, e);
    }
    b.len = 0;
    fm_buf_printf(&b, "{\"backend\": \"tokenizers\", \"eos_token\": \"<|im_end|>\", \"model_max_length\": %" PRId64 ", "
                      "\"pad_token\": \"<|endoftext|>\", \"tokenizer_class\": \"TokenizersBackend\"}",
                  m->max_position_embeddings);
    if (rc == 0) rc = syn_write_pyjson(hf, "tokenizer_config.json", &b, e);
    fm_buf_free(&b);
    return rc;
}

/* fsdp_config.json (json.dump(indent=4), no newline) and the step marker. */
static int syn_write_verl(const syn_ctx *c, fm_err *e)
{
    char text[128], *p = fm_path_join(c->actor, "fsdp_config.json");
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    int n = snprintf(text, sizeof text, "{\n    \"FSDP_version\": 2,\n    \"world_size\": %d\n}", c->o.world_size);
    int rc = fm_write_file(p, text, (size_t)n, e);
    free(p);
    p = fm_path_join(c->o.out, "latest_checkpointed_iteration.txt");
    if (rc == 0 && p == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    n = snprintf(text, sizeof text, "%" PRId64, c->o.step);
    if (rc == 0) rc = fm_write_file(p, text, (size_t)n, e);
    free(p);
    return rc;
}

static const char *syn_dt_dir(dt_type dt) { return dt == DT_BF16 ? "bf16" : "fp32"; }

/* "KEY=V,..." as a JSON object */
static void syn_json_patterns(fm_buf *b, const char *list)
{
    fm_buf_putc(b, '{');
    for (const char *p = list; p && *p;) {
        const char *q = strchr(p, ','), *eq = strchr(p, '=');
        if (eq == NULL) break;
        int kl = (int)(eq - p), vl = q ? (int)(q - eq - 1) : (int)strlen(eq + 1);
        fm_buf_printf(b, "%s\"%.*s\": %.*s", p == list ? "" : ", ", kl, p, vl, eq + 1);
        p = q ? q + 1 : NULL;
    }
    fm_buf_putc(b, '}');
}

/* actor/lora_adapter/adapter_config.json (PEFT's keys) or verl's
 * lora_train_meta.json next to fsdp_config.json, or nothing. */
static int syn_write_lora_config(const syn_ctx *c, fm_err *e)
{
    const syn_opts *o = &c->o;
    if (o->lora_r <= 0 || strcmp(o->lora_config, "none") == 0) return 0;
    bool meta = strcmp(o->lora_config, "meta") == 0;
    fm_buf b = {0};
    char alpha[32];
    jf_py_float_repr(o->lora_alpha, alpha, sizeof alpha);
    if (meta) {
        fm_buf_printf(&b, "{\"r\": %d, \"lora_alpha\": %s, \"task_type\": \"CAUSAL_LM\"}", o->lora_r, alpha);
    } else {
        fm_buf_printf(&b, "{\n  \"alpha_pattern\": ");
        syn_json_patterns(&b, o->lora_alpha_pattern);
        fm_buf_printf(&b, ",\n  \"fan_in_fan_out\": %s,\n  \"lora_alpha\": %s,\n  \"peft_type\": \"LORA\",\n  \"r\": %d,\n"
                      "  \"rank_pattern\": ", o->lora_fan_in_fan_out ? "true" : "false", alpha, o->lora_r);
        syn_json_patterns(&b, o->lora_rank_pattern);
        fm_buf_puts(&b, ",\n  \"target_modules\": [");
        for (const char *p = o->lora_targets; p && *p;) {
            const char *q = strchr(p, ',');
            fm_buf_printf(&b, "%s\"%.*s\"", p == o->lora_targets ? "" : ", ", q ? (int)(q - p) : (int)strlen(p), p);
            p = q ? q + 1 : NULL;
        }
        fm_buf_printf(&b, "],\n  \"task_type\": \"CAUSAL_LM\",\n  \"use_dora\": %s,\n  \"use_rslora\": %s\n}",
                      o->lora_dora ? "true" : "false", o->lora_rslora ? "true" : "false");
    }
    char *dir = meta ? fm_strdup(c->actor) : fm_path_join(c->actor, "lora_adapter");
    char *path = dir ? fm_path_join(dir, meta ? "lora_train_meta.json" : "adapter_config.json") : NULL;
    int rc = path && !b.oom ? fm_mkdir_p(dir, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = fm_write_file(path, b.data, b.len, e);
    free(dir);
    free(path);
    fm_buf_free(&b);
    return rc;
}

int syn_write_meta(syn_ctx *c, fm_err *e)
{
    char *hf = fm_path_join(c->actor, "huggingface");
    if (hf == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    int rc = syn_write_hf_dir(c, hf, e);
    if (rc == 0) rc = syn_write_verl(c, e);
    if (rc == 0) rc = syn_write_lora_config(c, e);
    free(hf);
    return rc ? rc : syn_make_expected_dirs(c, e);
}

int syn_write_hf_dir(const syn_ctx *c, const char *dir, fm_err *e)
{
    FM_TRY(fm_mkdir_p(dir, e));
    return syn_write_hf(c, dir, e);
}

int syn_make_expected_dirs(const syn_ctx *c, fm_err *e)
{
    int rc = 0;
    for (size_t j = 0; j < c->njobs && rc == 0; j++) {
        if (c->jobs[j].file != 0) continue;
        char *d = fm_asprintf("%s/%s", c->o.expected, syn_dt_dir(c->jobs[j].dtype));
        rc = d ? fm_mkdir_p(d, e) : fm_fail(e, FM_ENOMEM, "out of memory");
        free(d);
    }
    return rc;
}

/* ======================================================================
 * 8. the expected merge output
 * ==================================================================== */

size_t syn_expected_jobs(const syn_ctx *c) { return c->njobs; }

static char *syn_st_name(size_t k, size_t n)
{
    return n == 1 ? fm_strdup("model.safetensors") : fm_asprintf("model-%05zu-of-%05zu.safetensors", k + 1, n);
}

static int syn_write_fd(int fd, const void *p, size_t n, const char *path, fm_err *e)
{
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t k = write(fd, q, FM_MIN(n, (size_t)1 << 30));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return fm_fail(e, FM_EIO, "cannot write %s: %s", path, k < 0 ? strerror(errno) : "short write");
        q += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One element of a tensor as stored (rounded through the parameter dtype). */
static float syn_stored(const syn_ctx *c, const syn_tensor *t, uint64_t g)
{
    float v;
    syn_fill(t, g, 1, &v);
    if (c->o.dtype == DT_BF16) {
        uint32_t u;
        memcpy(&u, &v, 4);
        u = dt_bf16_to_f32(dt_f32_to_bf16(u));
        memcpy(&v, &u, 4);
    }
    return v;
}

/* The expected fused weight, computed here from the generator (not from
 * the merger's code): the stored W, plus scaling * sum_k B[i,k] A[k,j] as
 * an fp32 fused multiply-add chain from k = 0 (torch's matmul), the delta
 * rounded to fp32 before the addition; fbuf then holds fp32 values that
 * syn_convert must not round through bf16 again: they are exact results. */
static void syn_fuse(syn_ctx *c, const syn_tensor *t, uint64_t g0, size_t n)
{
    const syn_tensor *A = &c->t[t->lora_a], *B = &c->t[t->lora_b];
    int64_t r = A->shape[0], cols = t->shape[1];
    for (size_t q = 0; q < n; q++) {
        int64_t i = (int64_t)(g0 + q) / cols, j = (int64_t)(g0 + q) % cols;
        int64_t brow = c->o.lora_fan_in_fan_out ? j : i, acol = c->o.lora_fan_in_fan_out ? i : j;
        float acc = 0.0f, w = syn_stored(c, t, g0 + q);
        for (int64_t k = 0; k < r; k++)
            acc = fmaf(syn_stored(c, B, (uint64_t)(brow * r + k)), syn_stored(c, A, (uint64_t)(k * A->shape[1] + acol)), acc);
        float d = acc * t->lora_scaling;
        c->fbuf[q] = w + d;
    }
}

/* One tensor's values, rounded through the parameter dtype, in dtype dt. */
static int syn_stream_expected(syn_ctx *c, int fd, const syn_tensor *t, dt_type dt, const char *path, uint64_t *bytes,
                               fm_err *e)
{
    for (uint64_t g = 0; g < t->numel;) {
        size_t n = (size_t)FM_MIN((uint64_t)c->belems, t->numel - g);
        syn_fill(t, g, n, c->fbuf);
        if (t->lora_a >= 0) syn_fuse(c, t, g, n);
        FM_TRY(syn_write_fd(fd, syn_convert(c, n, t->lora_a >= 0 ? DT_F32 : c->o.dtype, dt), n * dt_size(dt), path, e));
        *bytes += n * dt_size(dt);
        g += n;
    }
    return 0;
}

/* The tensors of file jb->file, laid out as the safetensors library does. */
static int syn_expected_layout(const syn_ctx *c, const syn_job *jb, st_entry **out, size_t *n, fm_buf *hdr, fm_err *e)
{
    st_entry *ent = calloc(c->n + 1, sizeof *ent);
    if (ent == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (jb->file_of[i] != jb->file) continue;
        const syn_tensor *t = &c->t[i];
        ent[k] = (st_entry){.name = t->out_name, .dtype = jb->dtype, .ndim = t->ndim, .user = i};
        for (int d = 0; d < t->ndim; d++) ent[k].shape[d] = t->shape[d];
        k++;
    }
    int rc = st_layout(ent, k, e);
    if (rc == 0) rc = st_header(ent, k, 0, hdr, e);
    if (rc == 0 && hdr->oom) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc != 0) {
        free(ent);
        return rc;
    }
    *out = ent;
    *n = k;
    return 0;
}

static int syn_expected_file(syn_ctx *c, const syn_job *jb, const char *path, uint64_t *bytes, fm_err *e)
{
    st_entry *ent = NULL;
    size_t n = 0;
    fm_buf hdr = {0};
    FM_TRY(syn_expected_layout(c, jb, &ent, &n, &hdr, e));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? fm_fail(e, FM_EIO, "cannot create %s: %s", path, strerror(errno)) : 0;
    if (rc == 0) rc = syn_write_fd(fd, hdr.data, hdr.len, path, e);
    for (size_t i = 0; i < n && rc == 0; i++) rc = syn_stream_expected(c, fd, &c->t[ent[i].user], jb->dtype, path, bytes, e);
    if (fd >= 0 && close(fd) != 0 && rc == 0) rc = fm_fail(e, FM_EIO, "cannot close %s: %s", path, strerror(errno));
    if (rc != 0 && fd >= 0) unlink(path);
    fm_buf_free(&hdr);
    free(ent);
    return rc;
}

/* model.safetensors.index.json of a split output, as the merger writes it. */
static int syn_expected_index(const syn_ctx *c, const syn_job *jb, const char *dir, fm_err *e)
{
    hf_index_entry *ie = calloc(c->n + 1, sizeof *ie);
    char **names = calloc(jb->nfiles, sizeof *names);
    int rc = ie && names ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t k = 0; k < jb->nfiles && rc == 0; k++)
        if ((names[k] = syn_st_name(k, jb->nfiles)) == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    size_t m = 0;
    uint64_t size = 0, params = 0;
    for (size_t i = 0; i < c->n && rc == 0; i++) {
        if (jb->file_of[i] == SIZE_MAX) continue;
        ie[m++] = (hf_index_entry){.tensor = c->t[i].out_name, .file = names[jb->file_of[i]]};
        size += c->t[i].numel * dt_size(jb->dtype);
        params += c->t[i].numel;
    }
    char *text = NULL, *path = NULL;
    size_t len = 0;
    if (rc == 0) rc = hf_index_json(ie, m, size, params, &text, &len, e);
    if (rc == 0 && (path = fm_path_join(dir, "model.safetensors.index.json")) == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) rc = fm_write_file(path, text, len, e);
    for (size_t k = 0; names && k < jb->nfiles; k++) free(names[k]);
    free(names);
    free(ie);
    free(text);
    free(path);
    return rc;
}

int syn_write_expected(syn_ctx *c, size_t job, uint64_t *bytes, fm_err *e)
{
    uint64_t dummy = 0;
    if (bytes == NULL) bytes = &dummy;
    if (job >= c->njobs) return fm_fail(e, FM_EINTERNAL, "expected job %zu of %zu", job, c->njobs);
    FM_TRY(syn_buffers(c, e));
    const syn_job *jb = &c->jobs[job];
    char *dir = fm_asprintf("%s/%s", c->o.expected, syn_dt_dir(jb->dtype));
    char *name = syn_st_name(jb->file, jb->nfiles);
    char *path = dir && name ? fm_path_join(dir, name) : NULL;
    int rc = path ? syn_expected_file(c, jb, path, bytes, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0 && jb->nfiles > 1 && jb->file == 0) rc = syn_expected_index(c, jb, dir, e);
    if (rc != 0 && path) fm_context(e, "expected output %s", path);
    free(dir);
    free(name);
    free(path);
    return rc;
}
