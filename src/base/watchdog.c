/* watchdog.c - see watchdog.h. */
#include "base/watchdog.h"

#include <mpi.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool running, stop;
    int timeout, rank;
    _Atomic long long last_ms;
    _Atomic(const char *) phase;
    _Atomic(const char *) waiting;
    void (*cleanup)(void);
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void expire(long long idle_ms)
{
    const char *phase = atomic_load(&g.phase), *what = atomic_load(&g.waiting);
    fprintf(stderr,
            "fsdpmerge: error: process %d made no progress for %.0f s in phase '%s', waiting for %s (--timeout %d): "
            "ending every process\n",
            g.rank, (double)idle_ms / 1000.0, phase ? phase : "start", what ? what : "its own work", g.timeout);
    fflush(stderr);
    if (g.cleanup) g.cleanup();
    MPI_Abort(MPI_COMM_WORLD, FM_ETIMEOUT);
    _exit(FM_ETIMEOUT); /* not reached */
}

static void *wd_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g.mu);
    while (!g.stop) {
        long long idle = now_ms() - atomic_load(&g.last_ms);
        /* process 0 fires first, so that one message, not one per process, is the rule */
        if (idle >= (long long)g.timeout * 1000 + (g.rank ? 2000 : 0)) {
            pthread_mutex_unlock(&g.mu);
            expire(idle);
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 250 * 1000000L; /* a quarter second: exit promptly, cost nothing */
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g.cv, &g.mu, &until);
    }
    pthread_mutex_unlock(&g.mu);
    return NULL;
}

int wd_start(int timeout_s, int rank, fm_err *e)
{
    g.rank = rank;
    atomic_store(&g.last_ms, now_ms());
    if (timeout_s <= 0 || g.running) return 0;
    g.timeout = timeout_s;
    g.stop = false;
    if (pthread_create(&g.th, NULL, wd_main, NULL) != 0) return fm_fail(e, FM_EGENERIC, "cannot start the watchdog thread");
    g.running = true;
    return 0;
}

void wd_stop(void)
{
    if (!g.running) return;
    pthread_mutex_lock(&g.mu);
    g.stop = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    pthread_join(g.th, NULL);
    g.running = false;
}

void wd_set_cleanup(void (*fn)(void)) { g.cleanup = fn; }

/* The test hook: only with FSDPMERGE_TESTING=1, so that a stray variable in
 * a user's environment can never stop a real run. */
static void test_stall(const char *phase)
{
    const char *on = getenv("FSDPMERGE_TESTING"), *spec = getenv("FSDPMERGE_TEST_STALL");
    if (on == NULL || strcmp(on, "1") != 0 || spec == NULL) return;
    char want[64];
    int rank = -1, seconds = 0;
    if (sscanf(spec, "%63[^:]:%d:%d", want, &rank, &seconds) < 2 || rank != g.rank || strcmp(want, phase) != 0) return;
    if (seconds > 0) { /* a pause, e.g. to change a file under a running merge */
        sleep((unsigned)seconds);
        atomic_store(&g.last_ms, now_ms());
        return;
    }
    atomic_store(&g.waiting, "nothing (stalled by FSDPMERGE_TEST_STALL)");
    const char *pidfile = getenv("FSDPMERGE_TEST_PIDFILE"); /* so that a test can signal this process */
    FILE *f = pidfile ? fopen(pidfile, "w") : NULL;
    if (f) {
        fprintf(f, "%ld\n", (long)getpid());
        fclose(f);
    }
    for (;;) pause();
}

void wd_phase(const char *phase)
{
    atomic_store(&g.phase, phase);
    atomic_store(&g.waiting, NULL);
    atomic_store(&g.last_ms, now_ms());
    test_stall(phase);
}

void wd_waiting(const char *what) { atomic_store(&g.waiting, what); }

void wd_progress(void) { atomic_store(&g.last_ms, now_ms()); }
