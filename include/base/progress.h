/* progress.h - rank 0's progress display.
 *
 * On a terminal: one line redrawn in place (at most 10 times a second) with
 * a bar, bytes done of total, throughput and ETA. Otherwise (logs, SLURM
 * output files): a plain line at every 10% and at most every 5 seconds.
 */
#ifndef FM_PROGRESS_H
#define FM_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum pg_mode { PG_AUTO = 0, PG_BAR, PG_LINES, PG_NONE } pg_mode;

typedef struct pg_bar {
    FILE *out;
    bool bar;       /* redraw in place */
    bool enabled;
    double t0, last;
    uint64_t total;
    int last_decile;
} pg_bar;

void pg_start(pg_bar *p, FILE *out, pg_mode mode, uint64_t total);
void pg_update(pg_bar *p, uint64_t done);
/*! pg_finish() : prints the final state (100%) and ends the line. */
void pg_finish(pg_bar *p, uint64_t done);

#endif
