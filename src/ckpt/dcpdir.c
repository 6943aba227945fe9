/* dcpdir.c - see dcpdir.h. */
#include "ckpt/dcpdir.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

static bool has_metadata(const char *dir)
{
    char *p = fm_path_join(dir, ".metadata");
    bool ok = p && fm_path_is_file(p);
    free(p);
    return ok;
}

/* The sub-folders of ckpt that hold .metadata: one is the checkpoint. */
static int find_sub(const char *ckpt, char **dir, fm_err *e)
{
    DIR *d = opendir(ckpt);
    if (d == NULL) return 0;
    fm_buf names = {0};
    int count = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char *p = fm_path_join(ckpt, de->d_name);
        if (p && has_metadata(p)) {
            fm_buf_printf(&names, "%s%s", count ? ", " : "", de->d_name);
            if (count++ == 0) *dir = p, p = NULL;
        }
        free(p);
    }
    closedir(d);
    fm_buf_terminate(&names);
    if (count > 1) {
        rc = fm_fail(e, FM_EUSAGE, "%s holds several DCP checkpoints (%s): name the one to merge", ckpt,
                     names.data ? (char *)names.data : "");
        free(*dir);
        *dir = NULL;
    }
    fm_buf_free(&names);
    return rc;
}

int ck_find_dcp(const char *ckpt, char **dir, fm_err *e)
{
    *dir = NULL;
    if (has_metadata(ckpt)) {
        *dir = fm_strdup(ckpt);
        return *dir ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    }
    /* the HF Trainer's checkpoint-N holds the model's and the optimizer's (optimizer_0/) */
    char *p = fm_path_join(ckpt, "pytorch_model_fsdp_0");
    if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
    if (has_metadata(p)) {
        *dir = p;
        return 0;
    }
    free(p);
    return find_sub(ckpt, dir, e);
}

static bool has_config(const char *dir)
{
    char *p = fm_path_join(dir, "config.json");
    bool ok = p && fm_path_is_file(p);
    free(p);
    return ok;
}

int ck_dcp_hf_dir(const char *dir, const char *hf_config, char **hf, fm_err *e)
{
    *hf = NULL;
    if (hf_config) {
        if (!has_config(hf_config)) return fm_fail(e, FM_EUSAGE, "--hf-config %s: no config.json there", hf_config);
        *hf = fm_strdup(hf_config);
        return *hf ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    }
    char *parent = fm_path_dirname(dir);
    char *cand[3] = {fm_path_join(dir, "huggingface"), parent ? fm_path_join(parent, "huggingface") : NULL, parent};
    int rc = (cand[0] && cand[1] && parent) ? 0 : fm_fail(e, FM_ENOMEM, "out of memory");
    for (int i = 0; i < 3 && rc == 0 && *hf == NULL; i++)
        if (has_config(cand[i])) *hf = fm_strdup(cand[i]);
    for (int i = 0; i < 3; i++) free(cand[i]);
    return rc;
}
