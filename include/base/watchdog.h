/* watchdog.h - the last resort against a hang.
 *
 * Errors are agreed before every collective step (comm.h), but a library
 * can still leave processes stuck inside a collective (ompio after a failed
 * write, parallel HDF5 after a failure on one process, a peer stopped by a
 * debugger or a dead file server). A helper thread watches the time since
 * this process last made progress; after `timeout` seconds it prints the
 * phase and what the process was waiting for, removes the temporary output
 * folder (the registered cleanup) and calls MPI_Abort(FM_ETIMEOUT), which
 * ends every process of the job.
 *
 * Progress is reported by wd_phase() (a new phase), wd_progress() (a step
 * done: every error agreement and every window) and wd_waiting() (what a
 * blocking call waits for, a static string).
 *
 * For the tests only: with FSDPMERGE_TESTING=1 in the environment,
 * FSDPMERGE_TEST_STALL=PHASE:RANK[:SECONDS] makes process RANK stop on
 * entering PHASE, for SECONDS or forever, as a process stuck in a collective would (writing its pid
 * to FSDPMERGE_TEST_PIDFILE when set, so that the test can signal it).
 */
#ifndef FM_WATCHDOG_H
#define FM_WATCHDOG_H

#include "base/err.h"

/*! wd_start() : starts the helper thread (no-op when timeout_s <= 0). */
int wd_start(int timeout_s, int rank, fm_err *e);
/*! wd_stop() : stops and joins it. */
void wd_stop(void);
/*! wd_set_cleanup() : fn runs (once) before the abort. */
void wd_set_cleanup(void (*fn)(void));
/*! wd_phase() : enters a named phase (static string); resets the clock. */
void wd_phase(const char *phase);
/*! wd_waiting() : what this process now waits for (static string, NULL =
 *  its own work); does not reset the clock. */
void wd_waiting(const char *what);
/*! wd_progress() : a step completed; resets the clock. */
void wd_progress(void);

#endif
