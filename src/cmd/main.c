/* main.c - fsdpmerge's entry point: MPI set-up and the command dispatch. */
#include <mpi.h>
#include <stdio.h>

#include "cmd/cli.h"
#include "base/comm.h"
#include "base/err.h"
#include "cmd/inspect.h"
#include "cmd/merge.h"
#include "cmd/verify.h"
#include "cmd/reshard.h"

int main(int argc, char **argv)
{
    int provided, me = 0;
    /* FUNNELED: only the main thread calls MPI; the writer's I/O thread does pwrite only */
    comm_prefer_shared_memory();
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    fm_err e = {0};
    cli_opts o;
    int rc = cli_parse(argc, argv, &o, &e);
    if (rc == 0) {
        switch (o.command) {
        case CLI_HELP:
            if (me == 0) cli_usage(stdout);
            break;
        case CLI_MAN:
            if (me == 0) cli_man(stdout);
            break;
        case CLI_VERSION:
            if (me == 0) printf("fsdpmerge %s\n", FM_VERSION);
            break;
        case CLI_INSPECT:
            if (me == 0) rc = ins_run(&o, stdout, &e);
            break;
        case CLI_VERIFY:
            if (o.checkpoint) vf_manifest_defaults(&o); /* the merge's --dtype and --max-shard-size */
            rc = o.checkpoint ? mg_run_all(&o, MPI_COMM_WORLD, stdout, &e) : vf_run_all(&o, MPI_COMM_WORLD, stdout, &e);
            break;
        case CLI_MERGE:
        case CLI_CHECK:
            rc = mg_run_all(&o, MPI_COMM_WORLD, stdout, &e);
            break;
        case CLI_RESHARD:
            rc = rs_run_all(&o, MPI_COMM_WORLD, stdout, &e);
            break;
        }
    }
    if (rc != 0 && me == 0) {
        fprintf(stderr, "fsdpmerge: error: %s\n", e.msg);
        if (rc == FM_EUSAGE) fprintf(stderr, "Try 'fsdpmerge --help'.\n");
    }
    cli_free(&o);
    MPI_Finalize();
    return rc;
}
