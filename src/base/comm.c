/* comm.c - see comm.h. */
#include "base/comm.h"

#include "base/util.h"
#include "base/watchdog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int comm_mpi_error(fm_err *e, int mpi_rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpi_rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", mpi_rc);
    return fm_fail(e, FM_EMPI, "%s failed: %s", what, text);
}

int comm_agree_all(fm_err *e, MPI_Comm comm)
{
    int me;
    MPI_Comm_rank(comm, &me);
    struct {
        int ok;
        int rank;
    } in = {e->code == 0 ? 1 : 0, me}, out;
    wd_waiting("the other processes to finish the step (error agreement, MPI_Allreduce)");
    int rc = MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MINLOC, comm);
    wd_waiting(NULL);
    if (rc != MPI_SUCCESS) return comm_mpi_error(e, rc, "MPI_Allreduce (error agreement)");
    wd_progress();
    if (out.ok == 1) return 0;
    rc = MPI_Bcast(e, (int)sizeof *e, MPI_BYTE, out.rank, comm);
    if (rc != MPI_SUCCESS) return comm_mpi_error(e, rc, "MPI_Bcast (error message)");
    if (e->code == 0) e->code = FM_EGENERIC;
    return e->code;
}

int comm_allgather_blobs_all(const void *buf, size_t len, MPI_Comm comm, uint8_t **all, uint64_t **offs, fm_err *e)
{
    int n;
    MPI_Comm_size(comm, &n);
    *all = NULL;
    *offs = NULL;
    int mylen = len > (size_t)INT32_MAX ? -1 : (int)len;
    int *lens = malloc(sizeof(int) * (size_t)n), *displs = malloc(sizeof(int) * (size_t)n);
    uint64_t *o = malloc(sizeof(uint64_t) * ((size_t)n + 1));
    if (lens == NULL || displs == NULL || o == NULL) {
        free(lens);
        free(displs);
        free(o);
        return fm_fail(e, FM_ENOMEM, "out of memory");
    }
    int rc = MPI_Allgather(&mylen, 1, MPI_INT, lens, 1, MPI_INT, comm);
    uint64_t total = 0;
    for (int i = 0; i < n && rc == MPI_SUCCESS; i++) {
        if (lens[i] < 0) total = UINT64_MAX;
        o[i] = total;
        displs[i] = (int)total;
        if (total != UINT64_MAX) total += (uint64_t)lens[i];
    }
    o[n] = total;
    int result = 0;
    if (rc != MPI_SUCCESS) result = comm_mpi_error(e, rc, "MPI_Allgather");
    else if (total > (uint64_t)INT32_MAX) result = fm_fail(e, FM_EUNSUPPORTED, "metadata exchange over 2 GiB");
    uint8_t *a = result ? NULL : malloc(total ? total : 1);
    if (result == 0 && a == NULL) result = fm_fail(e, FM_ENOMEM, "out of memory");
    if (result == 0) {
        rc = MPI_Allgatherv(buf, mylen, MPI_BYTE, a, lens, displs, MPI_BYTE, comm);
        if (rc != MPI_SUCCESS) result = comm_mpi_error(e, rc, "MPI_Allgatherv");
    }
    free(lens);
    free(displs);
    if (result) {
        free(a);
        free(o);
        return result;
    }
    *all = a;
    *offs = o;
    return 0;
}

int comm_write_at_writer_all(const void *buf, size_t len, int from, int writer, const char *dir, const char *name,
                             MPI_Comm comm, fm_err *e)
{
    int me;
    MPI_Comm_rank(comm, &me);
    uint64_t n = len;
    const void *data = buf;
    void *own = NULL;
    if (from != writer && me == from) {
        MPI_Send(&n, 1, MPI_UINT64_T, writer, 71, comm);
        MPI_Send(buf, (int)n, MPI_BYTE, writer, 72, comm);
    } else if (from != writer && me == writer) {
        MPI_Recv(&n, 1, MPI_UINT64_T, from, 71, comm, MPI_STATUS_IGNORE);
        own = malloc(n ? n : 1);
        if (own == NULL) { /* still take the message, or the sender waits forever */
            char dummy;
            MPI_Recv(&dummy, 0, MPI_BYTE, from, 72, comm, MPI_STATUS_IGNORE);
            return fm_fail(e, FM_ENOMEM, "out of memory");
        }
        MPI_Recv(own, (int)n, MPI_BYTE, from, 72, comm, MPI_STATUS_IGNORE);
        data = own;
    }
    int rc = 0;
    if (me == writer) {
        char *path = fm_path_join(dir, name);
        rc = path ? fm_write_file(path, data, n, e) : fm_fail(e, FM_ENOMEM, "out of memory");
        free(path);
    }
    free(own);
    return rc;
}

void comm_print_hints(FILE *out, MPI_File fh, const char *what)
{
    MPI_Info info;
    if (MPI_File_get_info(fh, &info) != MPI_SUCCESS) return;
    int n = 0;
    MPI_Info_get_nkeys(info, &n);
    fprintf(out, "  MPI-IO hints in effect for %s (%d):\n", what, n);
    for (int i = 0; i < n; i++) {
        char key[MPI_MAX_INFO_KEY + 1], val[1024];
        int flag = 0;
        MPI_Info_get_nthkey(info, i, key);
        MPI_Info_get(info, key, (int)sizeof val - 1, val, &flag);
        if (flag) fprintf(out, "    %s = %s\n", key, val);
    }
    MPI_Info_free(&info);
}

void comm_prefer_shared_memory(void)
{
    const char *size = getenv("OMPI_COMM_WORLD_SIZE"), *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    static const char *const chosen[] = {"OMPI_MCA_pml", "OMPI_MCA_btl", "OMPI_MCA_mtl", "FSDPMERGE_KEEP_MPI_TRANSPORTS"};
    for (size_t k = 0; k < sizeof chosen / sizeof *chosen; k++)
        if (getenv(chosen[k])) return;
    /* started by another launcher (srun, a PMI): the host count is not known here */
    if (size == NULL && (getenv("SLURM_PROCID") || getenv("PMIX_RANK") || getenv("PMI_RANK"))) return;
    if (size != NULL && (local == NULL || strcmp(size, local) != 0)) return;
    setenv("OMPI_MCA_pml", "ob1", 0);
    setenv("OMPI_MCA_btl", "self,vader", 0);
}
