/* outdir.c - see outdir.h. */
#include "base/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "base/util.h"

/* ---- removal on a signal: every process of a run watches the folder ----
 *
 * When one process dies (SIGKILL, the OOM killer), mpirun sends SIGTERM to
 * the others; SLURM's time limit sends it to all. So every process, not only
 * the writer that made it, knows the temporary folder and removes it when a
 * signal ends it: a SIGKILLed writer leaves nothing behind either.
 *
 * Removal starts by renaming the folder to "<tmp>-removing", which is
 * atomic: of several processes signalled at once exactly one takes it (and
 * prints the one message), and a folder that the commit already renamed
 * onto the target no longer exists under the watched name, so a signal that
 * races with the commit either finds it gone (the output stays, whole) or
 * takes it first (the commit's rename then fails; no output). Nothing ever
 * deletes by the target's name or through a descriptor that could have
 * followed the folder there. The walk uses only system calls (openat,
 * getdents64, unlinkat), never follows a symbolic link, and goes at most
 * RM_DEPTH folders deep. */

#define RM_DEPTH 16
#define CLAIM_SUFFIX "-removing"

static char g_watch[4096];
static atomic_int g_watching; /* g_watch is complete and valid while set */

static int rm_entry(int dirfd, const char *name, int depth);

/* Removes everything inside the open folder fd. */
static int rm_children(int fd, int depth)
{
    char buf[2048] __attribute__((aligned(8)));
    int rc = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n <= 0) return n < 0 ? -1 : rc;
        for (long off = 0; off < n;) {
            const struct dirent64 *d = (const struct dirent64 *)(buf + off);
            off += d->d_reclen;
            const char *nm = d->d_name;
            if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0'))) continue;
            if (rm_entry(fd, nm, depth + 1) != 0) rc = -1;
        }
    }
}

/* Removes name in dirfd: a file or link by unlinking it, a folder (never
 * reached through a link: O_NOFOLLOW) by emptying it first. */
static int rm_entry(int dirfd, const char *name, int depth)
{
    if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT) return 0;
    if ((errno != EISDIR && errno != EPERM) || depth > RM_DEPTH) return -1;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = rm_children(fd, depth);
    close(fd);
    return rc == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) == 0 ? 0 : -1;
}

/* Takes dir by renaming it aside, then removes it: true when this call did
 * both (false when it was gone or taken by another process). */
static bool claim_and_remove(const char *dir)
{
    char dead[sizeof g_watch + sizeof CLAIM_SUFFIX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof g_watch) return false;
    memcpy(dead, dir, n);
    memcpy(dead + n, CLAIM_SUFFIX, sizeof CLAIM_SUFFIX);
    if (rename(dir, dead) != 0) return false;
    return rm_entry(AT_FDCWD, dead, 0) == 0;
}

static void on_signal(int sig)
{
    static const char msg[] = "fsdpmerge: stopped by a signal; temporary output folder removed\n";
    static atomic_flag busy = ATOMIC_FLAG_INIT;
    /* a second signal on another thread waits: the first one's raise ends
     * the process once its removal is done */
    if (atomic_flag_test_and_set(&busy))
        for (;;) pause();
    if (atomic_load(&g_watching) && claim_and_remove(g_watch)) {
        if (write(2, msg, sizeof msg - 1) < 0) { /* nothing to do */ }
    }
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig); /* pending until the handler returns: the exit status stays "killed by sig" */
}

static void install_handlers(void)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&sa.sa_mask, sigs[i]);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

void od_watch(const char *path)
{
    atomic_store(&g_watching, 0);
    if (path == NULL || strlen(path) >= sizeof g_watch) return;
    memcpy(g_watch, path, strlen(path) + 1);
    install_handlers();
    atomic_store(&g_watching, 1);
}

void od_unwatch(void) { atomic_store(&g_watching, 0); }

void od_emergency_cleanup(void)
{
    if (atomic_exchange(&g_watching, 0)) claim_and_remove(g_watch);
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

/* A "<tmp>-removing" folder was claimed for removal by a signal handler
 * that was itself killed before it finished (mpirun sends SIGKILL 1 s after
 * SIGTERM; a stalled file system can take longer): garbage by definition,
 * whoever made it. */
static void remove_claimed(const char *dir)
{
    fm_err e = {0};
    if (fm_rmtree(dir, &e) == 0)
        fprintf(stderr, "fsdpmerge: removed %s, a temporary folder whose removal was cut short\n", dir);
    else if (fm_path_exists(dir))
        fprintf(stderr, "fsdpmerge: warning: cannot remove %s: %s\n", dir, e.msg);
}

static void scan_leftovers(const char *parent, const char *base, bool force)
{
    char *prefix = fm_asprintf(".%s.fsdpmerge-", base);
    size_t plen = prefix ? strlen(prefix) : 0;
    DIR *d = prefix ? opendir(parent) : NULL;
    for (struct dirent *de = d ? readdir(d) : NULL; de; de = readdir(d)) {
        const char *n = de->d_name;
        size_t len = strlen(n);
        bool tmp = len == plen + 6, claimed = len == plen + 6 + strlen(CLAIM_SUFFIX) && fm_ends_with(n, CLAIM_SUFFIX);
        if (!fm_starts_with(n, prefix) || !(tmp || claimed)) continue; /* not "-old" folders */
        char *p = fm_path_join(parent, n);
        if (p && fm_path_is_dir(p)) tmp ? handle_leftover(p, force) : remove_claimed(p);
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
            od_watch(tmpl);
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
    od_unwatch(); /* after the rename: a signal in between finds the folder gone (see on_signal) */
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
    od_unwatch();
    /* claimed like a signal would, so as not to race a peer's handler; when
     * the rename itself fails (the file system refuses renames: the commit
     * failed the same way), in place: no commit can follow an abort */
    if (st->tmp && !claim_and_remove(st->tmp) && fm_path_exists(st->tmp)) rm_entry(AT_FDCWD, st->tmp, 0);
    free(st->tmp);
    free(st->target);
    memset(st, 0, sizeof *st);
}
