/* progress.c - see progress.h. */
#include "base/progress.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/util.h"

/* Is the user looking at a terminal? Under mpirun a rank's stdout is a
 * pseudo-terminal of Open MPI's even when mpirun's own output goes to a
 * file, so ask what the launcher's (the parent's) stdout is. */
static bool on_terminal(FILE *out)
{
    const char *term = getenv("TERM");
    if (term && strcmp(term, "dumb") == 0) return false;
    if (getenv("OMPI_COMM_WORLD_SIZE") == NULL && getenv("PMIX_RANK") == NULL) return isatty(fileno(out));
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/%ld/fd/1", (long)getppid());
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return false;
    target[n] = '\0';
    return strncmp(target, "/dev/pts/", 9) == 0 || strncmp(target, "/dev/tty", 8) == 0;
}

void pg_start(pg_bar *p, FILE *out, pg_mode mode, uint64_t total)
{
    p->out = out;
    p->enabled = mode != PG_NONE;
    p->bar = mode == PG_BAR || (mode == PG_AUTO && on_terminal(out));
    p->t0 = p->last = fm_now();
    p->total = total;
    p->last_decile = -1;
}

static void draw(pg_bar *p, uint64_t done, bool final)
{
    double now = fm_now(), dt = now - p->t0;
    double rate = dt > 0 ? (double)done / dt : 0;
    double pct = p->total ? 100.0 * (double)done / (double)p->total : 100.0;
    char a[32], b[32], r[32], eta[32];
    fm_format_bytes(done, a, sizeof a);
    fm_format_bytes(p->total, b, sizeof b);
    fm_format_bytes((uint64_t)rate, r, sizeof r);
    if (final) snprintf(eta, sizeof eta, "%.1fs", dt);
    else if (rate > 0) snprintf(eta, sizeof eta, "ETA %.0fs", (double)(p->total - done) / rate);
    else snprintf(eta, sizeof eta, "ETA ?");
    if (p->bar) {
        char bar[31];
        int fill = (int)(pct * 30 / 100);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(p->out, "\r  [%s] %5.1f%%  %s / %s  %s/s  %s   %s", bar, pct, a, b, r, eta, final ? "\n" : "");
    } else {
        fprintf(p->out, "  %5.1f%%  %s / %s  %s/s  %s\n", pct, a, b, r, eta);
    }
    fflush(p->out);
    p->last = now;
}

void pg_update(pg_bar *p, uint64_t done)
{
    if (!p->enabled) return;
    double now = fm_now();
    if (p->bar) {
        if (now - p->last >= 0.1) draw(p, done, false);
        return;
    }
    int decile = p->total ? (int)(10 * done / p->total) : 10;
    if (decile > p->last_decile && now - p->last >= 5.0 && done < p->total) {
        p->last_decile = decile;
        draw(p, done, false);
    }
}

void pg_finish(pg_bar *p, uint64_t done)
{
    if (p->enabled) draw(p, done, true);
}
