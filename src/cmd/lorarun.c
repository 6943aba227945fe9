/* lorarun.c - the merge command's LoRA steps (see lorarun.h). */
#include "cmd/lorarun.h"

#include <stdlib.h>
#include <string.h>

#include "base/comm.h"
#include "base/util.h"

bool lrun_fused(const lrun *l) { return l->active && l->mode != LR_MODE_ADAPTER; }
bool lrun_adapter(const lrun *l) { return l->active && l->mode != LR_MODE_FUSED; }

/* Process 0 finds the hyper-parameter file; its text and kind go to all. */
static int read_source(const ck_layout *layout, char **text, size_t *len, int *kind, char **path, fm_err *e)
{
    static const char *const names[] = {"lora_adapter/adapter_config.json", "lora_train_meta.json"};
    for (int k = 0; k < 2; k++) {
        char *p = fm_path_join(layout->actor_dir, names[k]);
        if (p == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        if (fm_path_is_file(p)) {
            *kind = k;
            *path = p;
            return fm_read_file(p, 16u << 20, text, len, e);
        }
        free(p);
    }
    return 0;
}

static int bcast_text(char **text, size_t *len, int *kind, char **path, MPI_Comm comm, fm_err *e)
{
    int me;
    MPI_Comm_rank(comm, &me);
    uint64_t n[3] = {*text ? *len + 1 : 0, (uint64_t)(*kind + 1), *path ? strlen(*path) + 1 : 0};
    MPI_Bcast(n, 3, MPI_UINT64_T, 0, comm);
    if (n[0] > (1u << 24) || n[2] > (1u << 16)) return fm_fail(e, FM_EINTERNAL, "LoRA config too large");
    if (me != 0) {
        *kind = (int)n[1] - 1;
        *len = n[0] ? n[0] - 1 : 0;
        *text = n[0] ? malloc(n[0]) : NULL;
        *path = n[2] ? malloc(n[2]) : NULL;
        if ((n[0] && *text == NULL) || (n[2] && *path == NULL)) return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    if (n[0]) MPI_Bcast(*text, (int)n[0], MPI_CHAR, 0, comm);
    if (n[2]) MPI_Bcast(*path, (int)n[2], MPI_CHAR, 0, comm);
    return 0;
}

static int hparams(lrun *l, const cli_opts *o, const ck_layout *layout, MPI_Comm comm, fm_err *e)
{
    int me, kind = -1;
    MPI_Comm_rank(comm, &me);
    char *text = NULL, *path = NULL;
    size_t len = 0;
    if (me == 0) read_source(layout, &text, &len, &kind, &path, e);
    int rc = comm_agree_all(e, comm);
    if (rc == 0) rc = bcast_text(&text, &len, &kind, &path, comm, e);
    if (rc == 0 && text) rc = lr_hparams_parse(text, len, kind == 1, path, &l->hp, e);
    free(text);
    if (rc == 0 && o->have_lora_alpha) {
        l->hp.alpha = o->lora_alpha;
        l->hp.have_alpha = true;
    }
    if (rc == 0 && o->lora_rank) l->hp.r = o->lora_rank;
    if (rc == 0 && !l->hp.have_alpha)
        rc = fm_fail(e, FM_EUSAGE, "LoRA: lora_alpha is not known: %s%s; pass it with --lora-alpha X (and --lora-rank N "
                     "if r is not %d), or put PEFT's adapter_config.json in %s/lora_adapter/",
                     path ? path : "neither lora_adapter/adapter_config.json nor lora_train_meta.json exists",
                     path ? " has no lora_alpha" : "", l->found.r, layout->actor_dir);
    free(path);
    return rc;
}

static void print_list(FILE *out, char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++) fprintf(out, "%s%s", i ? ", " : "", v[i]);
}

static void report(const lrun *l, const cli_opts *o, FILE *out)
{
    if (out == NULL) return;
    const lr_hparams *hp = &l->hp;
    fprintf(out, "\xe2\x9c\x93 LoRA adapter '%s' found: r=%d, alpha=%g%s%s, targets: ", o->lora_name,
            hp->r ? hp->r : l->found.r, hp->alpha, hp->rslora ? " (rslora: scaling alpha/sqrt(r))" : "",
            hp->fan_in_fan_out ? ", fan_in_fan_out" : "");
    print_list(out, l->found.targets, l->found.ntargets);
    fprintf(out, "\n  hyper-parameters from %s%s\n", hp->source ? hp->source : "the command line",
            hp->source && o->have_lora_alpha ? " (alpha from --lora-alpha)" : "");
    if (hp->nrank_pat || hp->nalpha_pat)
        fprintf(out, "  per-module rank_pattern (%zu) / alpha_pattern (%zu) applied\n", hp->nrank_pat, hp->nalpha_pat);
    if (l->found.nadapters > 1) {
        fprintf(out, "  the checkpoint holds %zu adapters (", l->found.nadapters);
        print_list(out, l->found.adapters, l->found.nadapters);
        fprintf(out, "); only '%s' is merged (--lora-name)\n", o->lora_name);
    }
    if (lrun_fused(l))
        fprintf(out, "  writing the fused model: W + scaling * (B @ A) in fp32, rounded once; PEFT names removed\n");
    else fprintf(out, "  writing the base model (LoRA not applied) with clean names\n");
    if (lrun_adapter(l)) fprintf(out, "  writing the adapter to lora_adapter/ (PEFT's save_pretrained layout)\n");
    fprintf(out, "\n");
    fflush(out);
}

int lrun_setup(lrun *l, const cli_opts *o, const ck_layout *layout, const ti_index *ix0, MPI_Comm comm, FILE *out,
               fm_err *e)
{
    memset(l, 0, sizeof *l);
    FM_TRY(lr_detect(ix0, o->lora_name, &l->found, e));
    if (!l->found.present) {
        if (o->lora != LR_MODE_AUTO)
            return fm_fail(e, FM_EUSAGE, "--lora: the checkpoint holds no LoRA keys (lora_A/lora_B/base_layer)");
        return 0;
    }
    l->active = true;
    l->mode = o->lora == LR_MODE_AUTO ? LR_MODE_FUSED : o->lora;
    FM_TRY(hparams(l, o, layout, comm, e));
    l->model = (lr_spec){o->lora_name, lrun_fused(l) ? LR_EMIT_FUSED : LR_EMIT_BASE, &l->hp};
    l->adapter = (lr_spec){o->lora_name, LR_EMIT_ADAPTER, &l->hp};
    report(l, o, out);
    return 0;
}

void lrun_free(lrun *l)
{
    lr_found_free(&l->found);
    lr_hparams_free(&l->hp);
}
