/* ckpt.c - see ckpt.h. */
#include "ckpt/ckpt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

#define MAX_WORLD 1000000

/* "model_world_size_W_rank_R.pt" -> W, R. */
static bool parse_rank_name(const char *name, long *w, long *r)
{
    int n = 0;
    if (sscanf(name, "model_world_size_%ld_rank_%ld.pt%n", w, r, &n) != 2 || name[n] != '\0') return false;
    return *w > 0 && *w <= MAX_WORLD && *r >= 0 && *r <= MAX_WORLD;
}

/* Scans dir for rank files: their single world size, and which ranks exist. */
static int scan_ranks(const char *dir, long *world, unsigned char **seen, long *max_rank, fm_err *e)
{
    DIR *d = opendir(dir);
    if (d == NULL) return fm_fail(e, FM_EIO, "cannot list %s", dir);
    *world = 0;
    *max_rank = -1;
    *seen = NULL;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        long w, r;
        if (!parse_rank_name(de->d_name, &w, &r)) continue;
        if (*world && w != *world)
            rc = fm_fail(e, FM_EMISMATCH, "%s holds rank files of two world sizes (%ld and %ld): remove the stale ones",
                         dir, *world, w);
        *world = w;
        if (*seen == NULL) *seen = calloc((size_t)MAX_WORLD + 1, 1);
        if (*seen == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
        else (*seen)[r] = 1;
        if (r > *max_rank) *max_rank = r;
    }
    closedir(d);
    return rc;
}

static bool has_rank_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) return false;
    struct dirent *de;
    bool found = false;
    long w, r;
    while (!found && (de = readdir(d)) != NULL) found = parse_rank_name(de->d_name, &w, &r);
    closedir(d);
    return found;
}

int ck_read_fsdp_config(const char *path, int *world_size, int *fsdp_version, fm_err *e)
{
    char *text;
    size_t len;
    *world_size = *fsdp_version = 0;
    FM_TRY(fm_read_file(path, 1 << 20, &text, &len, e));
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return fm_fail(e, FM_EFORMAT, "%s is not a JSON object", path);
    }
    const cJSON *ws = cJSON_GetObjectItemCaseSensitive(j, "world_size");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(j, "FSDP_version");
    int rc = 0;
    if (ws && (!cJSON_IsNumber(ws) || ws->valuedouble < 1 || ws->valuedouble > MAX_WORLD ||
               ws->valuedouble != (double)(long)ws->valuedouble))
        rc = fm_fail(e, FM_EFORMAT, "%s: world_size is not a positive integer", path);
    else if (ws)
        *world_size = (int)ws->valuedouble;
    if (rc == 0 && cJSON_IsNumber(ver)) *fsdp_version = (int)ver->valuedouble;
    cJSON_Delete(j);
    return rc;
}

static int find_actor(const char *ckpt, const char *actor_name, char **actor, fm_err *e)
{
    if (fm_path_is_file(ckpt))
        return fm_fail(e, FM_EUSAGE, "%s is a file: give the checkpoint's step folder (global_step_N) or its actor folder",
                       ckpt);
    if (!fm_path_is_dir(ckpt)) return fm_fail(e, FM_EIO, "checkpoint folder %s does not exist", ckpt);
    if (has_rank_files(ckpt)) {
        *actor = fm_strdup(ckpt);
        return *actor ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    }
    char *sub = fm_path_join(ckpt, actor_name);
    if (sub == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    if (has_rank_files(sub)) {
        *actor = sub;
        return 0;
    }
    int rc = fm_fail(e, FM_EIO,
                     "no model_world_size_*_rank_*.pt files in %s or %s (use --actor-dir to name another sub-folder, "
                     "e.g. critic)", ckpt, sub);
    free(sub);
    return rc;
}

static int check_world(ck_layout *l, int ws_opt, fm_err *e)
{
    long world = 0, max_rank = -1;
    unsigned char *seen = NULL;
    FM_TRY(scan_ranks(l->actor_dir, &world, &seen, &max_rank, e));
    char *cfg = fm_path_join(l->actor_dir, "fsdp_config.json");
    int cws = 0, rc = 0;
    if (cfg && fm_path_exists(cfg)) rc = ck_read_fsdp_config(cfg, &cws, &l->fsdp_version, e);
    if (rc == 0 && cws && cws != world)
        rc = fm_fail(e, FM_EMISMATCH, "world size mismatch: %s says %d but the files are model_world_size_%ld_rank_*.pt",
                     cfg, cws, world);
    if (rc == 0 && ws_opt && ws_opt != world)
        rc = fm_fail(e, FM_EMISMATCH, "world size mismatch: --world-size %d but the files are model_world_size_%ld_rank_*.pt",
                     ws_opt, world);
    for (long r = 0; rc == 0 && r < world; r++) {
        if (seen[r]) continue;
        char *p = ck_rank_file(&(ck_layout){.actor_dir = l->actor_dir, .world_size = (int)world}, "model", (int)r);
        rc = fm_fail(e, FM_EIO, "missing checkpoint for rank %ld: %s does not exist (world size %ld needs ranks 0..%ld)",
                     r, p ? p : "?", world, world - 1);
        free(p);
    }
    if (rc == 0 && max_rank >= world)
        rc = fm_fail(e, FM_EMISMATCH, "extra checkpoint file model_world_size_%ld_rank_%ld.pt in %s: rank %ld does not "
                     "exist in world size %ld", world, max_rank, l->actor_dir, max_rank, world);
    l->world_size = (int)world;
    l->ws_from_config = cws != 0;
    free(cfg);
    free(seen);
    return rc;
}

static char *find_hf_dir(const char *actor)
{
    char *hf = fm_path_join(actor, "huggingface");
    char *cfg = hf ? fm_path_join(hf, "config.json") : NULL;
    if (cfg && fm_path_is_file(cfg)) {
        free(cfg);
        return hf;
    }
    free(cfg);
    free(hf);
    cfg = fm_path_join(actor, "config.json");
    bool here = cfg && fm_path_is_file(cfg);
    free(cfg);
    return here ? fm_strdup(actor) : NULL;
}

int ck_discover(const char *ckpt, const char *actor_name, int world_size, ck_layout *out, fm_err *e)
{
    memset(out, 0, sizeof *out);
    FM_TRY(find_actor(ckpt, actor_name, &out->actor_dir, e));
    FM_TRY(check_world(out, world_size, e));
    out->hf_dir = find_hf_dir(out->actor_dir);
    return 0;
}

/* Expands %w, %r, %k and %% of a --shard-template. */
static char *expand_template(const char *t, const char *kind, int world, int rank)
{
    fm_buf b = {0};
    for (const char *p = t; *p; p++) {
        if (*p != '%' || p[1] == '\0') {
            fm_buf_putc(&b, *p);
            continue;
        }
        switch (*++p) {
        case 'w': fm_buf_printf(&b, "%d", world); break;
        case 'r': fm_buf_printf(&b, "%d", rank); break;
        case 'k': fm_buf_puts(&b, kind); break;
        default: fm_buf_putc(&b, *p); break;
        }
    }
    fm_buf_terminate(&b);
    if (b.oom) {
        fm_buf_free(&b);
        return NULL;
    }
    return (char *)b.data;
}

char *ck_rank_file(const ck_layout *l, const char *kind, int rank)
{
    if (l->shard_template) {
        /* a template written for model files also serves optim/extra_state ones */
        char *p = expand_template(l->shard_template, kind, l->world_size, rank);
        if (p && strcmp(kind, "model") != 0 && strstr(l->shard_template, "%k") == NULL) {
            char *m = strstr(p, "model_world_size_");
            char *q = m ? fm_asprintf("%.*s%s_%s", (int)(m - p), p, kind, m + strlen("model_")) : NULL;
            free(p);
            p = q;
        }
        return p;
    }
    return fm_asprintf("%s/%s_world_size_%d_rank_%d.pt", l->actor_dir, kind, l->world_size, rank);
}

int ck_discover_template(const char *ckpt, const char *actor_name, const char *tmpl, int world_size, ck_layout *out,
                         fm_err *e)
{
    memset(out, 0, sizeof *out);
    if (!fm_path_is_dir(ckpt)) return fm_fail(e, FM_EIO, "checkpoint folder %s does not exist", ckpt);
    char *sub = fm_path_join(ckpt, actor_name);
    if (sub == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    out->actor_dir = fm_path_is_dir(sub) ? sub : fm_strdup(ckpt);
    if (out->actor_dir != sub) free(sub);
    out->shard_template = fm_strdup(tmpl);
    if (out->actor_dir == NULL || out->shard_template == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    char *cfg = fm_path_join(out->actor_dir, "fsdp_config.json");
    int cws = 0, rc = 0;
    if (cfg && fm_path_exists(cfg)) rc = ck_read_fsdp_config(cfg, &cws, &out->fsdp_version, e);
    if (rc == 0 && cws && world_size && cws != world_size)
        rc = fm_fail(e, FM_EMISMATCH, "world size mismatch: %s says %d but --world-size is %d", cfg, cws, world_size);
    if (rc == 0 && !cws && !world_size)
        rc = fm_fail(e, FM_EUSAGE, "--shard-template needs the world size: give --world-size (no fsdp_config.json in %s)",
                     out->actor_dir);
    out->world_size = world_size ? world_size : cws;
    out->ws_from_config = cws != 0;
    free(cfg);
    out->hf_dir = find_hf_dir(out->actor_dir);
    return rc;
}

void ck_layout_free(ck_layout *l)
{
    if (l == NULL) return;
    free(l->shard_template);
    free(l->actor_dir);
    free(l->hf_dir);
    memset(l, 0, sizeof *l);
}
