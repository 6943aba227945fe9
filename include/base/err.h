/* err.h - error codes and the error buffer every module fills.
 *
 * Functions return an fm_code (0 = success) and, on failure, write a human
 * sentence into a caller-provided fm_err. Callers add context (file, rank,
 * tensor) with fm_context() on the way up, so the final message reads from
 * the outermost context to the root cause:
 *   "rank 3: model_world_size_4_rank_3.pt: data/7: CRC mismatch (...)".
 * fm_err is plain data of fixed size so that it can cross ranks in one
 * MPI_Bcast. The code values are the process exit codes and never change.
 */
#ifndef FM_ERR_H
#define FM_ERR_H

#include <stddef.h>

typedef enum fm_code {
    FM_OK = 0,
    FM_EGENERIC = 1,     /* anything not listed below */
    FM_EUSAGE = 2,       /* bad command line */
    FM_EIO = 3,          /* open/read/write/rename failed */
    FM_EFORMAT = 4,      /* malformed or corrupt input file */
    FM_EUNSUPPORTED = 5, /* well-formed input this tool does not handle */
    FM_EMISMATCH = 6,    /* ranks or files disagree with each other */
    FM_EEXIST = 7,       /* output already exists (see --force) */
    FM_ENOMEM = 8,       /* allocation failed */
    FM_EMPI = 9,         /* an MPI call failed */
    FM_EINTERNAL = 10,   /* a bug: an invariant did not hold */
    FM_EDIFFER = 11,     /* verify (or merge --verify): the output differs from what it should hold */
    FM_ETIMEOUT = 12     /* the watchdog ended a process stuck in one phase (--timeout) */
} fm_code;

#define FM_ERR_MSG_MAX 1024

typedef struct fm_err {
    int code;
    char msg[FM_ERR_MSG_MAX];
} fm_err;

#if defined(__GNUC__)
#define FM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FM_PRINTF(a, b)
#endif

/*! fm_fail() : sets e->code and e->msg (printf format). e may be NULL.
 *  @return : code, so that `return fm_fail(e, FM_EIO, "...")` reads naturally. */
int fm_fail(fm_err *e, int code, const char *fmt, ...) FM_PRINTF(3, 4);

/*! fm_context() : prefixes e->msg with "<context>: ". e may be NULL.
 *  @return : e->code (or FM_EINTERNAL when e is NULL). */
int fm_context(fm_err *e, const char *fmt, ...) FM_PRINTF(2, 3);

/*! fm_err_clear() : resets e to success. */
void fm_err_clear(fm_err *e);

/*! fm_code_name() : short stable name of a code, e.g. "format error". */
const char *fm_code_name(int code);

/* Return early when a call fails; the callee already filled the error. */
#define FM_TRY(expr)                                                          \
    do {                                                                      \
        int fm_try_rc_ = (expr);                                              \
        if (fm_try_rc_ != 0) return fm_try_rc_;                               \
    } while (0)

#endif
