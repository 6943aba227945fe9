/* dcpdir.h - finding a torch.distributed.checkpoint (DCP) folder on disk.
 *
 * A DCP folder is recognised by its `.metadata` file. Users name it, or the
 * folder above it: accelerate and the HF Trainer write
 * `pytorch_model_fsdp_0/`, torchtitan `step-N/`. DCP folders carry no
 * HuggingFace config: it comes from --hf-config, or a `huggingface/` folder
 * (or a config.json) next to the DCP folder.
 */
#ifndef FM_DCPDIR_H
#define FM_DCPDIR_H

#include "base/err.h"

/*! ck_find_dcp() : *dir = the malloc'd DCP folder of ckpt: ckpt itself,
 *  ckpt/pytorch_model_fsdp_0, or the one sub-folder holding .metadata
 *  (step-N, ...; several: FM_EUSAGE naming them). *dir = NULL (and 0) when ckpt is not a
 *  DCP checkpoint. */
int ck_find_dcp(const char *ckpt, char **dir, fm_err *e);

/*! ck_dcp_hf_dir() : *hf = the malloc'd folder holding config.json:
 *  hf_config when given (FM_EUSAGE when it has no config.json), else
 *  <dir>/huggingface, <dir>/../huggingface or <dir>/.. when they hold one;
 *  NULL when none does. */
int ck_dcp_hf_dir(const char *dir, const char *hf_config, char **hf, fm_err *e);

#endif
