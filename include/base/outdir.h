/* outdir.h - the output folder appears whole or not at all.
 *
 * Everything is written into a hidden temporary folder next to the target
 * (".<name>.fsdpmerge-XXXXXX" in the same parent, hence the same file
 * system), and renamed onto the target at the very end. An existing target
 * is refused unless force is set; then it is moved aside, replaced, and
 * removed only after the new folder is in place. A failed run removes its
 * temporary folder, so no half-written output is ever left under the name.
 *
 * SIGTERM, SIGINT and SIGHUP remove the temporary folder before the process
 * ends, in every process that watches it (od_watch): the writer from
 * od_prepare() on, the others once they learn its path, so that when the
 * writer is SIGKILLed the peers that mpirun then sends SIGTERM remove it.
 * Exactly one process removes it and prints "fsdpmerge: stopped by a signal;
 * temporary output folder removed".
 *
 * A run killed outright with no peer left to clean up (SIGKILL of a
 * single-process run, a lost node) leaves its folder: each
 * temporary folder records its owner (.fsdpmerge-owner: host, pid, process
 * start time, command), and od_prepare() removes a leftover one of the same
 * target whose owner is gone (on this host: that process no longer exists;
 * on another: only with force, when nothing in it changed for the stale age)
 * and says so on stderr; otherwise it names it and how to remove it.
 */
#ifndef FM_OUTDIR_H
#define FM_OUTDIR_H

#include <stdbool.h>

#include "base/err.h"

typedef struct od_state {
    char *target;
    char *tmp;
} od_state;

/*! od_check() : the target does not exist (or force), and its parent can be
 *  created. No side effect. */
int od_check(const char *target, bool force, fm_err *e);
/*! od_prepare() : od_check() + creates the parent (like mkdir -p) and the
 *  temporary folder. */
int od_prepare(const char *target, bool force, od_state *st, fm_err *e);
/*! od_commit() : renames the temporary folder onto the target (fsyncing the
 *  parent when do_fsync). */
int od_commit(od_state *st, bool force, bool do_fsync, fm_err *e);
/*! od_abort() : removes the temporary folder and unwatches. Accepts a
 *  zeroed state. */
void od_abort(od_state *st);
/*! od_set_stale_after() : a temporary folder of another host, untouched for
 *  this many seconds, is stale (removed with force). Default 3600. */
void od_set_stale_after(int seconds);
/*! od_watch() : from now on SIGTERM, SIGINT and SIGHUP remove the folder
 *  path (if it still exists, never following a link out of it) before the
 *  signal ends the process; the exit status stays "killed by that signal".
 *  Installs the handlers; od_prepare() calls it for the folder it makes. */
void od_watch(const char *path);
/*! od_unwatch() : a signal now just ends the process. od_commit() and
 *  od_abort() call it; a signal racing with the commit's rename cannot
 *  remove the committed output (outdir.c says why). */
void od_unwatch(void);
/*! od_emergency_cleanup() : removes the watched folder (if any) without
 *  freeing anything: for the watchdog, just before it ends the job. */
void od_emergency_cleanup(void);
/*! od_temp_path() : the temporary folder, or NULL before od_prepare(). */
const char *od_temp_path(const od_state *st);

#endif
