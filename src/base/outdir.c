/* outdir.c - see outdir.h. */
#include "base/outdir.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

/* The temporary folder to remove if the process is killed mid-run. */
static char g_cleanup[4096];

static void on_signal(int sig)
{
    /* Best effort: the folder's files are removed by a tree walk, which is
     * not async-signal-safe, but the process is about to die anyway and a
     * stale hidden folder is the only alternative. */
    static const char msg[] = "fsdpmerge: error: stopped by a signal; temporary output folder removed\n";
    if (g_cleanup[0]) {
        fm_rmtree(g_cleanup, NULL);
        g_cleanup[0] = '\0';
        if (write(2, msg, sizeof msg - 1) < 0) { /* nothing to do */ }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

void od_emergency_cleanup(void)
{
    if (g_cleanup[0]) fm_rmtree(g_cleanup, NULL);
    g_cleanup[0] = '\0';
}

int od_check(const char *target, bool force, fm_err *e)
{
    if (target == NULL || target[0] == '\0') return fm_fail(e, FM_EUSAGE, "empty output path");
    if (fm_path_exists(target) && !force)
        return fm_fail(e, FM_EEXIST, "output %s already exists (use --force to replace it)", target);
    if (fm_path_exists(target) && !fm_path_is_dir(target))
        return fm_fail(e, FM_EEXIST, "output %s exists and is not a folder: refusing to replace it", target);
    return 0;
}

int od_prepare(const char *target, bool force, od_state *st, fm_err *e)
{
    memset(st, 0, sizeof *st);
    FM_TRY(od_check(target, force, e));
    char *parent = fm_path_dirname(target), *base = fm_path_basename(target);
    int rc = parent && base ? fm_mkdir_p(parent, e) : fm_fail(e, FM_ENOMEM, "out of memory");
    if (rc == 0) {
        char *tmpl = fm_asprintf("%s/.%s.fsdpmerge-XXXXXX", parent, base);
        if (tmpl == NULL) rc = fm_fail(e, FM_ENOMEM, "out of memory");
        else if (mkdtemp(tmpl) == NULL) {
            rc = fm_fail(e, FM_EIO, "cannot create a temporary folder in %s: %s", parent, strerror(errno));
            free(tmpl);
        } else {
            /* mkdtemp makes the folder 0700: give it the mode mkdir would */
            mode_t um = umask(0);
            umask(um);
            chmod(tmpl, 0777 & ~um);
            st->tmp = tmpl;
            st->target = fm_strdup(target);
            snprintf(g_cleanup, sizeof g_cleanup, "%s", tmpl);
            signal(SIGINT, on_signal);
            signal(SIGTERM, on_signal);
            signal(SIGHUP, on_signal);
        }
    }
    free(parent);
    free(base);
    return rc;
}

const char *od_temp_path(const od_state *st) { return st->tmp; }

int od_commit(od_state *st, bool force, bool do_fsync, fm_err *e)
{
    char *old = NULL;
    if (fm_path_exists(st->target)) {
        if (!force) return fm_fail(e, FM_EEXIST, "output %s appeared while merging: not replacing it", st->target);
        old = fm_asprintf("%s.fsdpmerge-old", st->tmp);
        if (old == NULL) return fm_fail(e, FM_ENOMEM, "out of memory");
        if (rename(st->target, old) != 0) {
            int rc = fm_fail(e, FM_EIO, "cannot move the old %s aside: %s", st->target, strerror(errno));
            free(old);
            return rc;
        }
    }
    if (rename(st->tmp, st->target) != 0) {
        int rc = fm_fail(e, FM_EIO, "cannot rename %s to %s: %s", st->tmp, st->target, strerror(errno));
        if (old) rename(old, st->target); /* put the old output back */
        free(old);
        return rc;
    }
    g_cleanup[0] = '\0';
    if (old) fm_rmtree(old, NULL);
    free(old);
    free(st->tmp);
    st->tmp = NULL;
    if (do_fsync) {
        char *parent = fm_path_dirname(st->target);
        if (parent) fm_fsync_path(parent, NULL);
        free(parent);
    }
    return 0;
}

void od_abort(od_state *st)
{
    if (st->tmp) fm_rmtree(st->tmp, NULL);
    g_cleanup[0] = '\0';
    free(st->tmp);
    free(st->target);
    memset(st, 0, sizeof *st);
}
