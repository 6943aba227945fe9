/* lora.c - PEFT LoRA checkpoints (see lora.h). */
#include "plan/lora.h"

#include <cJSON.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "hf/jsonfmt.h"

#define PEFT_PREFIX "base_model.model."

/* ---- key anatomy ---- */

typedef enum kkind { K_PLAIN, K_BASE, K_A, K_B, K_OTHER } kkind;

typedef struct kparts {
    kkind kind;
    size_t mod_len;       /* key[0..mod_len) is the module path */
    const char *adapter;  /* K_A/K_B/K_OTHER: the adapter name inside the key */
    size_t adapter_len;
} kparts;

static kparts key_parts(const char *key, const char *adapter)
{
    kparts k = {K_PLAIN, 0, NULL, 0};
    const char *p = strstr(key, ".lora_A.");
    bool is_b = false;
    if (p == NULL && (p = strstr(key, ".lora_B.")) != NULL) is_b = true;
    if (p != NULL) {
        k.mod_len = (size_t)(p - key);
        k.adapter = p + strlen(".lora_A.");
        const char *dot = strchr(k.adapter, '.');
        k.adapter_len = dot ? (size_t)(dot - k.adapter) : strlen(k.adapter);
        bool mine = strlen(adapter) == k.adapter_len && strncmp(adapter, k.adapter, k.adapter_len) == 0;
        k.kind = !mine ? K_OTHER : is_b ? K_B : K_A;
        return k;
    }
    if ((p = strstr(key, ".base_layer.")) != NULL) {
        k.kind = K_BASE;
        k.mod_len = (size_t)(p - key);
    }
    return k;
}

/* "base_model.model.model.layers.0.q_proj.base_layer.weight" -> "model.layers.0.q_proj.weight" */
static char *model_name(const char *clean)
{
    const char *s = fm_starts_with(clean, PEFT_PREFIX) ? clean + strlen(PEFT_PREFIX) : clean;
    char *out = fm_strdup(s);
    if (out == NULL) return NULL;
    char *p;
    while ((p = strstr(out, ".base_layer.")) != NULL) memmove(p, p + strlen(".base_layer"), strlen(p + strlen(".base_layer")) + 1);
    return out;
}

/* PEFT's save_pretrained drops the adapter name: "...lora_A.default.weight" -> "...lora_A.weight" */
static char *adapter_name(const char *clean, const kparts *k)
{
    char *out = fm_strdup(clean);
    if (out == NULL) return NULL;
    char *a = out + (k->adapter - clean);
    size_t cut = k->adapter_len + (a[k->adapter_len] == '.' ? 1 : 0);
    memmove(a, a + cut, strlen(a + cut) + 1);
    return out;
}

int lr_output_name(const lr_spec *spec, const char *key, char **name, bool *is_src, fm_err *e)
{
    *name = NULL;
    *is_src = false;
    char *clean = plan_clean_name(key);
    if (clean == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    kparts k = key_parts(clean, spec->adapter);
    bool lora = k.kind == K_A || k.kind == K_B;
    bool wanted = spec->emit == LR_EMIT_ADAPTER ? lora
                  : lora ? spec->emit == LR_EMIT_FUSED
                         : k.kind != K_OTHER;
    if (wanted && spec->emit == LR_EMIT_ADAPTER) *name = adapter_name(clean, &k);
    else if (wanted && lora) *name = fm_strdup(clean); /* a fusion source, not written */
    else if (wanted) *name = model_name(clean);
    *is_src = wanted && lora && spec->emit == LR_EMIT_FUSED;
    free(clean);
    if (wanted && *name == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    return 0;
}

/* ---- detection ---- */

static int add_unique(char ***list, size_t *n, const char *s, size_t len, fm_err *e)
{
    for (size_t i = 0; i < *n; i++)
        if (strlen((*list)[i]) == len && strncmp((*list)[i], s, len) == 0) return 0;
    char **nl = realloc(*list, sizeof *nl * (*n + 1));
    if (nl == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    *list = nl;
    if ((nl[*n] = fm_strndup(s, len)) == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    (*n)++;
    return 0;
}

static int refuse(fm_err *e, const char *key, const char *what)
{
    return fm_fail(e, FM_EUNSUPPORTED, "LoRA: '%s' is %s, which fsdpmerge cannot merge; nothing was written", key, what);
}

static int detect_key(const ti_entry *en, const char *clean, const char *adapter, lr_found *f, fm_err *e)
{
    if (strstr(clean, ".lora_magnitude_vector.")) return refuse(e, en->key, "a DoRA magnitude vector (use_dora)");
    if (strstr(clean, ".lora_embedding_A.") || strstr(clean, ".lora_embedding_B."))
        return refuse(e, en->key, "LoRA on an embedding layer");
    if (strstr(clean, ".modules_to_save.") || strstr(clean, ".original_module."))
        return refuse(e, en->key, "a PEFT modules_to_save copy");
    kparts k = key_parts(clean, adapter);
    if (k.kind == K_PLAIN) return 0;
    f->present = true;
    if (k.kind == K_BASE) return 0;
    FM_TRY(add_unique(&f->adapters, &f->nadapters, k.adapter, k.adapter_len, e));
    if (k.kind == K_OTHER) return 0;
    if (!fm_ends_with(clean, ".weight")) return refuse(e, en->key, "a LoRA bias (lora_bias)");
    if (en->ndim != 2) return refuse(e, en->key, "LoRA on a layer that is not linear (a factor that is not 2-D)");
    const char *leaf = clean + k.mod_len;
    while (leaf > clean && leaf[-1] != '.') leaf--;
    FM_TRY(add_unique(&f->targets, &f->ntargets, leaf, (size_t)(clean + k.mod_len - leaf), e));
    if (k.kind == K_A && f->r == 0) f->r = (int)en->gshape[0];
    return 0;
}

int lr_detect(const ti_index *ix, const char *adapter, lr_found *f, fm_err *e)
{
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < ix->n; i++) {
        char *clean = plan_clean_name(ix->entries[i].key);
        if (clean == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        int rc = detect_key(&ix->entries[i], clean, adapter, f, e);
        free(clean);
        FM_TRY(rc);
    }
    if (f->present && f->ntargets == 0) {
        fm_buf names = {0};
        for (size_t i = 0; i < f->nadapters; i++) fm_buf_printf(&names, "%s'%s'", i ? ", " : "", f->adapters[i]);
        fm_buf_terminate(&names);
        int rc = fm_fail(e, FM_EUSAGE, "LoRA: the checkpoint has no adapter named '%s'; it holds %s (choose one with "
                         "--lora-name NAME)", adapter, f->nadapters ? (char *)names.data : "none");
        fm_buf_free(&names);
        return rc;
    }
    return 0;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++) free(l[i]);
    free(l);
}

void lr_found_free(lr_found *f)
{
    free_list(f->adapters, f->nadapters);
    free_list(f->targets, f->ntargets);
    memset(f, 0, sizeof *f);
}

/* ---- hyper-parameters ---- */

static int parse_patterns(const cJSON *obj, const char *what, const char *source, lr_pattern **out, size_t *n,
                          fm_err *e)
{
    if (obj == NULL || cJSON_IsNull(obj)) return 0;
    if (!cJSON_IsObject(obj)) return fm_fail(e, FM_EFORMAT, "%s: %s is not an object", source, what);
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (!cJSON_IsNumber(it)) return fm_fail(e, FM_EFORMAT, "%s: %s[\"%s\"] is not a number", source, what, it->string);
        lr_pattern *np = realloc(*out, sizeof *np * (*n + 1));
        if (np == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        *out = np;
        np[*n].value = it->valuedouble;
        if ((np[*n].key = fm_strdup(it->string)) == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        (*n)++;
    }
    return 0;
}

static bool truthy(const cJSON *j) { return cJSON_IsTrue(j); }

static int parse_fields(const cJSON *root, bool is_meta, const char *source, lr_hparams *hp, fm_err *e)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "LORA") != 0)
        return fm_fail(e, FM_EUNSUPPORTED, "%s: peft_type is %s; only LORA adapters can be merged", source,
                       type->valuestring);
    if (truthy(cJSON_GetObjectItemCaseSensitive(root, "use_dora")))
        return fm_fail(e, FM_EUNSUPPORTED, "%s: use_dora is true; DoRA adapters cannot be merged (nothing was written)",
                       source);
    if (cJSON_IsNumber(r)) {
        if (r->valuedouble < 1 || r->valuedouble > 1e6 || r->valuedouble != (int)r->valuedouble)
            return fm_fail(e, FM_EFORMAT, "%s: r = %g is not a positive integer", source, r->valuedouble);
        hp->r = (int)r->valuedouble;
    }
    if (cJSON_IsNumber(alpha)) {
        hp->alpha = alpha->valuedouble;
        hp->have_alpha = true;
    }
    if (is_meta) return 0;
    hp->rslora = truthy(cJSON_GetObjectItemCaseSensitive(root, "use_rslora"));
    hp->fan_in_fan_out = truthy(cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out"));
    FM_TRY(parse_patterns(cJSON_GetObjectItemCaseSensitive(root, "rank_pattern"), "rank_pattern", source, &hp->rank_pat,
                          &hp->nrank_pat, e));
    return parse_patterns(cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern"), "alpha_pattern", source,
                          &hp->alpha_pat, &hp->nalpha_pat, e);
}

int lr_hparams_parse(const char *text, size_t len, bool is_meta, const char *source, lr_hparams *hp, fm_err *e)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fm_fail(e, FM_EFORMAT, "%s: not a JSON object", source);
    }
    int rc = parse_fields(root, is_meta, source, hp, e);
    cJSON_Delete(root);
    FM_TRY(rc);
    free(hp->source);
    hp->source = fm_strdup(source);
    if (!is_meta) {
        free(hp->config_text);
        hp->config_text = fm_strndup(text, len);
    }
    if (hp->source == NULL || (!is_meta && hp->config_text == NULL)) return fm_fail(e, FM_ENOMEM, "out of memory");
    return 0;
}

void lr_hparams_free(lr_hparams *hp)
{
    for (size_t i = 0; i < hp->nrank_pat; i++) free(hp->rank_pat[i].key);
    for (size_t i = 0; i < hp->nalpha_pat; i++) free(hp->alpha_pat[i].key);
    free(hp->rank_pat);
    free(hp->alpha_pat);
    free(hp->source);
    free(hp->config_text);
    memset(hp, 0, sizeof *hp);
}

/* PEFT's get_pattern_key: the first key k (in order) with
 * re.match(rf"(.*\.)?({k})$", module); POSIX ERE is close enough for the
 * module-name patterns seen in practice. */
static const lr_pattern *match_pattern(const lr_pattern *pat, size_t n, const char *module)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(pat[i].key, module) == 0) return &pat[i];
        char *re = fm_asprintf("^(.*\\.)?(%s)$", pat[i].key);
        regex_t rx;
        bool hit = false;
        if (re && regcomp(&rx, re, REG_EXTENDED | REG_NOSUB) == 0) {
            hit = regexec(&rx, module, 0, NULL, 0) == 0;
            regfree(&rx);
        }
        free(re);
        if (hit) return &pat[i];
    }
    return NULL;
}

int lr_module_scaling(const lr_hparams *hp, const char *module, int a_rows, float *scaling, fm_err *e)
{
    const lr_pattern *rp = match_pattern(hp->rank_pat, hp->nrank_pat, module);
    const lr_pattern *ap = match_pattern(hp->alpha_pat, hp->nalpha_pat, module);
    int r = rp ? (int)rp->value : hp->r ? hp->r : a_rows;
    if (r != a_rows)
        return fm_fail(e, FM_EMISMATCH, "LoRA module %s: lora_A has %d rows but the configuration (%s) gives r = %d%s",
                       module, a_rows, hp->source ? hp->source : "--lora-rank", r, rp ? " (rank_pattern)" : "");
    double alpha = ap ? ap->value : hp->alpha;
    /* PEFT: self.scaling = lora_alpha / r (a Python float), used as an fp32 scalar */
    *scaling = (float)(hp->rslora ? alpha / sqrt((double)r) : alpha / (double)r);
    return 0;
}

/* ---- adapter_config.json ---- */

static void put_bool(fm_buf *b, const char *k, bool v) { fm_buf_printf(b, "  \"%s\": %s,\n", k, v ? "true" : "false"); }

static void put_patterns(fm_buf *b, const char *k, const lr_pattern *p, size_t n)
{
    fm_err ignore = {0}; /* keys came from JSON: valid UTF-8 */
    char num[32];
    fm_buf_printf(b, "  \"%s\": {", k);
    for (size_t i = 0; i < n; i++) {
        fm_buf_printf(b, "%s\n    ", i ? "," : "");
        jf_quote_py(b, p[i].key, strlen(p[i].key), &ignore);
        fm_buf_printf(b, ": %s", p[i].value == (long long)p[i].value ? (snprintf(num, sizeof num, "%lld",
                      (long long)p[i].value), num) : jf_py_float_repr(p[i].value, num, sizeof num));
    }
    fm_buf_printf(b, "%s},\n", n ? "\n  " : "");
}

/* The keys PEFT needs to load a LoRA adapter, sorted as json.dumps(sort_keys=True). */
static int make_config(const lr_hparams *hp, const lr_found *f, fm_buf *b, fm_err *e)
{
    char num[32];
    fm_buf_puts(b, "{\n");
    double a = hp->alpha;
    put_patterns(b, "alpha_pattern", hp->alpha_pat, hp->nalpha_pat);
    fm_buf_puts(b, "  \"base_model_name_or_path\": null,\n  \"bias\": \"none\",\n");
    put_bool(b, "fan_in_fan_out", hp->fan_in_fan_out);
    put_bool(b, "inference_mode", true);
    fm_buf_printf(b, "  \"lora_alpha\": %s,\n", a == (long long)a ? (snprintf(num, sizeof num, "%lld", (long long)a), num)
                                                                    : jf_py_float_repr(a, num, sizeof num));
    fm_buf_puts(b, "  \"lora_dropout\": 0.0,\n  \"peft_type\": \"LORA\",\n");
    fm_buf_printf(b, "  \"r\": %d,\n", hp->r ? hp->r : f->r);
    put_patterns(b, "rank_pattern", hp->rank_pat, hp->nrank_pat);
    fm_buf_puts(b, "  \"target_modules\": [");
    for (size_t i = 0; i < f->ntargets; i++) {
        fm_buf_printf(b, "%s\n    ", i ? "," : "");
        FM_TRY(jf_quote_py(b, f->targets[i], strlen(f->targets[i]), e));
    }
    fm_buf_printf(b, "%s],\n  \"task_type\": \"CAUSAL_LM\",\n", f->ntargets ? "\n  " : "");
    fm_buf_printf(b, "  \"use_dora\": false,\n  \"use_rslora\": %s\n}", hp->rslora ? "true" : "false");
    fm_buf_terminate(b);
    return b->oom ? fm_fail(e, FM_ENOMEM, "out of memory") : 0;
}

/* The source config with lora_alpha and r set to the values in use. */
static int patch_config(const lr_hparams *hp, const lr_found *f, fm_buf *b, fm_err *e)
{
    jf_node *root = NULL;
    size_t off = 0;
    char num[64];
    FM_TRY(jf_parse(hp->config_text, strlen(hp->config_text), JF_DEFAULT_MAX_DEPTH, &root, &off, e));
    double a = hp->alpha;
    if (a == (long long)a) snprintf(num, sizeof num, "%lld", (long long)a);
    else jf_py_float_repr(a, num, sizeof num);
    int rc = jf_set(root, "lora_alpha", num, strlen(num), e);
    snprintf(num, sizeof num, "%d", hp->r ? hp->r : f->r);
    if (rc == 0) rc = jf_set(root, "r", num, strlen(num), e);
    if (rc == 0) rc = jf_print(root, NULL, b, e);
    jf_free(root);
    fm_buf_terminate(b);
    return rc;
}

int lr_adapter_config(const lr_hparams *hp, const lr_found *f, char **out, size_t *len, fm_err *e)
{
    fm_buf b = {0};
    bool same = false;
    if (hp->config_text) {
        lr_hparams src = {0};
        fm_err ignore = {0};
        same = lr_hparams_parse(hp->config_text, strlen(hp->config_text), false, "x", &src, &ignore) == 0 &&
               src.have_alpha && src.alpha == hp->alpha && src.r == (hp->r ? hp->r : f->r);
        lr_hparams_free(&src);
    }
    int rc = 0;
    if (same) fm_buf_puts(&b, hp->config_text), fm_buf_terminate(&b);
    else rc = hp->config_text ? patch_config(hp, f, &b, e) : make_config(hp, f, &b, e);
    if (rc == 0 && b.oom) rc = fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc) {
        fm_buf_free(&b);
        return rc;
    }
    *out = (char *)b.data;
    *len = b.len;
    return 0;
}

/* ---- fusion ---- */

static size_t find_src(const plan *pl, const char *clean_key_prefix, size_t plen, kkind want, const char *adapter)
{
    for (size_t i = 0; i < pl->nlora_src; i++) {
        const char *n = pl->lora_src[i].name; /* the cleaned key */
        kparts k = key_parts(n, adapter);
        if (k.kind == want && k.mod_len == plen && strncmp(n, clean_key_prefix, plen) == 0) return i;
    }
    return SIZE_MAX;
}

static int link_one(plan *pl, plan_tensor *t, const lr_spec *spec, bool *used, fm_err *e)
{
    char *clean = plan_clean_name(t->key);
    if (clean == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    kparts k = key_parts(clean, spec->adapter);
    int rc = 0;
    if (k.kind == K_BASE && fm_ends_with(clean, ".base_layer.weight")) {
        size_t a = find_src(pl, clean, k.mod_len, K_A, spec->adapter), b = find_src(pl, clean, k.mod_len, K_B, spec->adapter);
        if (a != SIZE_MAX && b != SIZE_MAX) {
            const plan_tensor *A = &pl->lora_src[a], *B = &pl->lora_src[b];
            bool fan = spec->hp->fan_in_fan_out;
            int64_t out = fan ? t->shape[1] : t->shape[0], in = fan ? t->shape[0] : t->shape[1];
            if (t->ndim != 2 || A->ndim != 2 || B->ndim != 2 || A->shape[1] != in || B->shape[0] != out ||
                B->shape[1] != A->shape[0]) {
                rc = fm_fail(e, FM_EMISMATCH, "LoRA module %.*s: shapes do not fit W' = W + B @ A%s (W %lldx%lld, A "
                             "%lldx%lld, B %lldx%lld)", (int)k.mod_len, clean, fan ? "^T (fan_in_fan_out)" : "",
                             (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)A->shape[0],
                             (long long)A->shape[1], (long long)B->shape[0], (long long)B->shape[1]);
            } else {
                plan_fuse *f = &pl->fuses[pl->nfuses];
                char *mod = model_name(clean);
                if (mod == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
                else mod[strlen(mod) - strlen(".weight")] = '\0';
                if (rc == 0) rc = lr_module_scaling(spec->hp, mod, (int)A->shape[0], &f->scaling, e);
                free(mod);
                if (rc == 0) {
                    f->a = a;
                    f->b = b;
                    f->r = (int)A->shape[0];
                    f->fan_in_fan_out = fan;
                    t->fuse = f;
                    pl->nfuses++;
                    used[a] = used[b] = true;
                }
            }
        }
    }
    free(clean);
    return rc;
}

int lr_link(plan *pl, const lr_spec *spec, fm_err *e)
{
    if (spec->emit != LR_EMIT_FUSED) return 0;
    pl->fuses = calloc(pl->ntensors ? pl->ntensors : 1, sizeof *pl->fuses);
    bool *used = calloc(pl->nlora_src ? pl->nlora_src : 1, sizeof *used);
    int rc = pl->fuses && used ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    for (size_t i = 0; i < pl->ntensors && rc == 0; i++) rc = link_one(pl, &pl->tensors[i], spec, used, e);
    for (size_t i = 0; i < pl->nlora_src && rc == 0; i++)
        if (!used[i])
            rc = fm_fail(e, FM_EMISMATCH, "LoRA: '%s' has no matching lora_A/lora_B and base_layer.weight to fuse into",
                         pl->lora_src[i].key);
    free(used);
    return rc;
}

/* n <= DELTA_SPAN elements of one row of the fused tensor, from (i, j).
 * The sum over k is a chain of fused multiply-adds from zero, k = 0..r-1:
 * what torch's matmul does (the fixture's fp32 merge_and_unload is matched
 * bit for bit that way, a plain sum is not); fmaf is correctly rounded, so
 * the FMA clone and the libm fallback give the same bits. */
#define DELTA_SPAN 256
__attribute__((target_clones("fma", "default"), optimize("O3")))
static void delta_span(const plan_fuse *f, const plan_factors *fc, int64_t i, int64_t j, uint64_t n, float *w)
{
    float acc[DELTA_SPAN] = {0};
    int r = f->r;
    for (int k = 0; k < r; k++) {
        if (!f->fan_in_fan_out) { /* B[i, k] * A[k, j..] */
            float bk = fc->b[(i - fc->b0) * r + k];
            const float *a = fc->a + (int64_t)k * fc->na + (j - fc->a0);
            for (uint64_t q = 0; q < n; q++) acc[q] = fmaf(bk, a[q], acc[q]);
        } else { /* W is [in, out]: B[j.., k] * A[k, i] */
            float ak = fc->a[(int64_t)k * fc->na + (i - fc->a0)];
            const float *b = fc->b + (j - fc->b0) * r + k;
            for (uint64_t q = 0; q < n; q++) acc[q] = fmaf(b[q * (uint64_t)r], ak, acc[q]);
        }
    }
    for (uint64_t q = 0; q < n; q++) {
        float d = acc[q] * f->scaling; /* delta rounded, then added: as PEFT's W += (B @ A) * scaling */
        w[q] += d;
    }
}

void lr_delta(const plan_tensor *t, size_t piece, uint64_t first, uint64_t n, float *w)
{
    const plan_fuse *f = t->fuse;
    uint64_t cols = (uint64_t)t->shape[1];
    for (uint64_t q = 0; q < n;) {
        uint64_t e = first + q, j = e % cols;
        uint64_t len = FM_MIN(FM_MIN(n - q, cols - j), (uint64_t)DELTA_SPAN);
        delta_span(f, &f->local[piece], (int64_t)(e / cols), (int64_t)j, len, w + q);
        q += len;
    }
}
