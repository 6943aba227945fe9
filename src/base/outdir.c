/* outdir.c - see outdir.h. */
#include "base/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <time.h>
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
    static const char msg[] = "fsdpmerge: stopped by a signal; temporary output folder removed\n";
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

/* ---- who made a temporary folder: ".fsdpmerge-owner" inside it ---- */

#define OWNER_FILE ".fsdpmerge-owner"

static int g_stale_after = 3600; /* seconds without a change before another host's folder is stale */

void od_set_stale_after(int seconds) { g_stale_after = seconds > 0 ? seconds : 3600; }

/* The start time of process pid in clock ticks since boot (field 22 of
 * /proc/PID/stat), 0 when there is no such process: with the pid it names
 * one process, even after the pid is reused. */
static unsigned long long proc_start(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long start = 0;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                            &start) != 1)
        return 0;
    return start;
}

static void command_line(char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/self/cmdline", "r");
    if (f == NULL) return;
    size_t n = fread(out, 1, len - 1, f);
    fclose(f);
    out[n] = '\0';
    for (size_t i = 0; i + 1 < n; i++)
        if (out[i] == '\0' || out[i] == '\n') out[i] = ' ';
}

static void write_owner(const char *tmp)
{
    char host[256] = "", cmd[2048];
    gethostname(host, sizeof host - 1);
    command_line(cmd, sizeof cmd);
    char *path = fm_path_join(tmp, OWNER_FILE);
    char *text = fm_asprintf("host=%s\npid=%ld\nstart=%llu\ntime=%lld\ncommand=%s\n", host, (long)getpid(),
                             proc_start((long)getpid()), (long long)time(NULL), cmd);
    if (path && text) fm_write_file(path, text, strlen(text), NULL);
    free(path);
    free(text);
}

typedef struct owner {
    char host[256], cmd[2048];
    long pid;
    unsigned long long start;
    long long time;
} owner;

static bool read_owner(const char *dir, owner *o)
{
    memset(o, 0, sizeof *o);
    char *path = fm_path_join(dir, OWNER_FILE), *text = NULL;
    size_t len = 0;
    bool ok = path && fm_read_file(path, 8192, &text, &len, NULL) == 0;
    free(path);
    for (char *line = ok ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        if (sscanf(line, "host=%255s", o->host) == 1) continue;
        if (sscanf(line, "pid=%ld", &o->pid) == 1) continue;
        if (sscanf(line, "start=%llu", &o->start) == 1) continue;
        if (sscanf(line, "time=%lld", &o->time) == 1) continue;
        if (strncmp(line, "command=", 8) == 0) snprintf(o->cmd, sizeof o->cmd, "%s", line + 8);
    }
    free(text);
    return ok && o->host[0] && o->pid > 0;
}

/* Seconds since anything in dir (or the files right inside it) changed. */
static double idle_seconds(const char *dir)
{
    struct stat st;
    time_t newest = stat(dir, &st) == 0 ? st.st_mtime : 0;
    DIR *d = opendir(dir);
    for (struct dirent *de = d ? readdir(d) : NULL; de; de = readdir(d)) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        char *p = fm_path_join(dir, de->d_name);
        if (p && stat(p, &st) == 0 && st.st_mtime > newest) newest = st.st_mtime;
        free(p);
    }
    if (d) closedir(d);
    return difftime(time(NULL), newest);
}

/* One ".NAME.fsdpmerge-XXXXXX" left next to the target: removed when its
 * owner is gone (this host: no such process; another host: untouched for
 * longer than a live run can stay silent, and --force), else named. */
static void handle_leftover(const char *dir, bool force)
{
    char host[256] = "", when[64] = "?";
    gethostname(host, sizeof host - 1);
    owner o;
    bool known = read_owner(dir, &o);
    time_t t = (time_t)o.time;
    if (known && o.time > 0) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&t));
    bool here = known && strcmp(o.host, host) == 0;
    bool gone = here && (proc_start(o.pid) == 0 || proc_start(o.pid) != o.start);
    bool old = known && !here && force && idle_seconds(dir) > g_stale_after;
    if (gone || old) {
        fm_err e = {0};
        if (fm_rmtree(dir, &e) == 0) {
            fprintf(stderr, "fsdpmerge: removed %s, left by an earlier run that is gone (process %ld on %s, "
                    "started %s)\n", dir, o.pid, o.host, when);
            return;
        }
        fprintf(stderr, "fsdpmerge: warning: cannot remove the stale %s: %s\n", dir, e.msg);
        return;
    }
    if (!known)
        fprintf(stderr, "fsdpmerge: warning: %s was left by an earlier run (no owner recorded); if no merge into "
                "this output is running, remove it: rm -rf '%s'\n", dir, dir);
    else if (here)
        fprintf(stderr, "fsdpmerge: warning: %s belongs to a merge still running here (process %ld, started %s); "
                "leaving it\n", dir, o.pid, when);
    else
        fprintf(stderr, "fsdpmerge: warning: %s was made by process %ld on host %s (started %s); if that run is "
                "over, remove it (rm -rf '%s') or rerun with --force once it is %d s old\n", dir, o.pid, o.host,
                when, dir, g_stale_after);
}

static void scan_leftovers(const char *parent, const char *base, bool force)
{
    char *prefix = fm_asprintf(".%s.fsdpmerge-", base);
    DIR *d = prefix ? opendir(parent) : NULL;
    for (struct dirent *de = d ? readdir(d) : NULL; de; de = readdir(d)) {
        const char *n = de->d_name;
        if (!fm_starts_with(n, prefix) || strlen(n) != strlen(prefix) + 6) continue; /* not "-old" folders */
        char *p = fm_path_join(parent, n);
        if (p && fm_path_is_dir(p)) handle_leftover(p, force);
        free(p);
    }
    if (d) closedir(d);
    free(prefix);
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
    if (rc == 0) scan_leftovers(parent, base, force);
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
            write_owner(tmpl);
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
    char *old = NULL, *own = fm_path_join(st->tmp, OWNER_FILE);
    if (own) unlink(own); /* not part of the output */
    free(own);
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
