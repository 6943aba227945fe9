/* check.h - the check command's own parts: reading every record of the
 * rank files, and printing what a merge would write.
 *
 * `fsdpmerge check CKPT` is a merge (cmd/merge.c) that stops after the
 * plan: it reads every record of every rank file once (the CRC-32 of each is
 * checked as it streams), builds the same plan a merge builds, and prints
 * the files and sizes a merge would write, without creating anything.
 */
#ifndef FM_CHECK_H
#define FM_CHECK_H

#include <stdint.h>
#include <stdio.h>

#include "base/err.h"
#include "plan/plan.h"
#include "torchfmt/ptz.h"

/*! chk_read_records() : streams every record of z through its CRC-32 check
 *  (ptz_rec_finish); adds the bytes to *bytes. NULL z does nothing. */
int chk_read_records(ptz_file *z, uint64_t *bytes, fm_err *e);

/*! chk_read_file() : opens path, reads every record, closes it. A missing
 *  file is not an error when optional (extra_state files). */
int chk_read_file(const char *path, bool optional, size_t read_buffer, unsigned ptz_flags, uint64_t *bytes, fm_err *e);

typedef struct chk_report {
    const char *output;      /* the output folder a merge would write */
    bool output_given;       /* --output_path: print its file system's free space */
    const plan *model;       /* the weights (NULL with --format hdf5) */
    const plan *optim;       /* optimizer/ (NULL without --optimizer) */
    uint64_t config_bytes;   /* config.json as written, 0 when none */
    bool safetensors;        /* the model*.safetensors files (not with --format hdf5) */
    bool hdf5;               /* model.h5 too (size not predicted) */
    uint64_t bytes_read;     /* all processes */
    double seconds;          /* reading */
    int nfiles_read;
} chk_report;

/*! chk_print() : the summary (rank 0). Returns the bytes a merge would write. */
uint64_t chk_print(FILE *out, const chk_report *r);

/*! chk_free_space() : bytes free for an unprivileged user on the file
 *  system that would hold path (its nearest existing ancestor). */
int chk_free_space(const char *path, uint64_t *avail, fm_err *e);

#endif
