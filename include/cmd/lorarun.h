/* lorarun.h - the merge command's LoRA steps (see plan/lora.h): detection,
 * hyper-parameters, what is written, the console lines. */
#ifndef FM_LORARUN_H
#define FM_LORARUN_H

#include <mpi.h>
#include <stdio.h>

#include "base/err.h"
#include "ckpt/ckpt.h"
#include "cmd/cli.h"
#include "plan/lora.h"
#include "torchfmt/tindex.h"

typedef struct lrun {
    bool active;        /* LoRA keys found */
    lr_mode mode;       /* fused, adapter or both once active */
    lr_found found;
    lr_hparams hp;
    lr_spec model;      /* for the model plan: fused or base */
    lr_spec adapter;    /* for lora_adapter/ */
} lrun;

/*! lrun_setup() : COLLECTIVE. Detects LoRA in rank 0's index (every
 *  process has it), reads the hyper-parameters on process 0 (actor/
 *  lora_adapter/adapter_config.json, else lora_train_meta.json next to
 *  fsdp_config.json; --lora-alpha/--lora-rank override), checks them and
 *  prints what will be written to out (NULL: quiet). Errors come before
 *  anything is written. */
int lrun_setup(lrun *l, const cli_opts *o, const ck_layout *layout, const ti_index *ix0, MPI_Comm comm, FILE *out,
               fm_err *e);
bool lrun_fused(const lrun *l);
bool lrun_adapter(const lrun *l);
void lrun_free(lrun *l);

#endif
