/* err.c - the error buffer (see err.h). */
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int fm_fail(fm_err *e, int code, const char *fmt, ...)
{
    if (e == NULL) return code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

int fm_context(fm_err *e, const char *fmt, ...)
{
    if (e == NULL) return FM_EINTERNAL;
    char prefix[FM_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[FM_ERR_MSG_MAX];
    memcpy(old, e->msg, sizeof old);
    /* a message that no longer fits is cut: the outer context matters most */
    if (snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old) < 0) memcpy(e->msg, old, sizeof old);
    if (e->code == 0) e->code = FM_EINTERNAL;
    return e->code;
}

void fm_err_clear(fm_err *e)
{
    if (e == NULL) return;
    e->code = 0;
    e->msg[0] = '\0';
}

const char *fm_code_name(int code)
{
    switch (code) {
    case FM_OK: return "success";
    case FM_EGENERIC: return "error";
    case FM_EUSAGE: return "usage error";
    case FM_EIO: return "I/O error";
    case FM_EFORMAT: return "format error";
    case FM_EUNSUPPORTED: return "unsupported input";
    case FM_EMISMATCH: return "mismatch between ranks";
    case FM_EEXIST: return "output exists";
    case FM_ENOMEM: return "out of memory";
    case FM_EMPI: return "MPI error";
    case FM_EINTERNAL: return "internal error";
    case FM_ETIMEOUT: return "timed out (watchdog)";
    default: return "unknown error";
    }
}
