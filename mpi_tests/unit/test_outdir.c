/* test_outdir.c - the temporary output folder and signals: a watched folder
 * is removed (files, subfolders, links, never what a link points to) when
 * SIGTERM, SIGINT or SIGHUP ends the process, with one message and the exit
 * status of that signal; an unwatched, aborted or committed one is not.
 * Each case runs in a forked child, which the signal ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "base/outdir.h"
#include "testutil.h"

#define MSG "fsdpmerge: stopped by a signal; temporary output folder removed\n"

typedef struct child {
    int status;     /* from waitpid */
    char err[1024]; /* what it wrote on stderr */
} child;

static const char *g_dir;   /* the folder a case works on */
static const char *g_other; /* a second path: the target, or outside the folder */
static int g_sig;           /* the signal the child raises */

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void put(const char *dir, const char *name)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("data\n", f);
    fclose(f);
}

/* A folder like a merge's: files, a subfolder with a file, a link to a file
 * and one to a folder outside (g_other), which must survive. */
static void fill(const char *dir)
{
    char p[4200], q[4200];
    put(dir, "model.safetensors");
    snprintf(p, sizeof p, "%s/optimizer", dir);
    assert_int_equal(mkdir(p, 0777), 0);
    put(p, "optimizer_state.json");
    snprintf(p, sizeof p, "%s/link-dir", dir);
    assert_int_equal(symlink(g_other, p), 0);
    snprintf(p, sizeof p, "%s/link-file", dir);
    snprintf(q, sizeof q, "%s/keep", g_other);
    assert_int_equal(symlink(q, p), 0);
}

/* Runs body in a child with stderr captured; the parent waits for it. */
static void run_child(void (*body)(void), child *c)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        body();
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t k;
    while ((k = read(fds[0], c->err + n, sizeof c->err - 1 - n)) > 0) n += (size_t)k;
    c->err[n] = '\0';
    close(fds[0]);
    assert_int_equal(waitpid(pid, &c->status, 0), pid);
}

static void assert_killed_by(const child *c, int sig)
{
    assert_true(WIFSIGNALED(c->status));
    assert_int_equal(WTERMSIG(c->status), sig);
}

/* a fresh folder "tmp" and a folder "outside" holding "keep" */
static int setup(void **state)
{
    char *base = tu_tmpdir();
    static char dir[4200], other[4200];
    snprintf(dir, sizeof dir, "%s/tmp", base);
    snprintf(other, sizeof other, "%s/outside", base);
    assert_int_equal(mkdir(dir, 0777), 0);
    assert_int_equal(mkdir(other, 0777), 0);
    g_dir = dir;
    g_other = other;
    put(other, "keep");
    fill(dir);
    *state = base;
    return 0;
}

static int teardown(void **state)
{
    tu_rmdir(*state);
    return 0;
}

static void body_watch_raise(void)
{
    od_watch(g_dir);
    raise(g_sig);
}

static void test_signal_removes(void **state)
{
    (void)state;
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < 3; i++) {
        g_sig = sigs[i];
        child c;
        run_child(body_watch_raise, &c);
        assert_killed_by(&c, sigs[i]);
        assert_string_equal(c.err, MSG);
        assert_false(exists(g_dir));
        char claimed[4300];
        snprintf(claimed, sizeof claimed, "%s-removing", g_dir);
        assert_false(exists(claimed));
        /* the links went, not what they point to */
        char keep[4300];
        snprintf(keep, sizeof keep, "%s/keep", g_other);
        assert_true(exists(keep));
        assert_int_equal(mkdir(g_dir, 0777), 0); /* again, for the next signal */
        fill(g_dir);
    }
}

static void body_unwatch_raise(void)
{
    od_watch(g_dir);
    od_unwatch();
    raise(SIGTERM);
}

static void test_unwatch_keeps(void **state)
{
    (void)state;
    child c;
    run_child(body_unwatch_raise, &c);
    assert_killed_by(&c, SIGTERM);
    assert_string_equal(c.err, "");
    assert_true(exists(g_dir));
}

/* the commit renamed the folder onto the target before the signal came:
 * nothing is removed, nothing said */
static void body_renamed_raise(void)
{
    od_watch(g_dir);
    if (rename(g_dir, g_other) != 0 && (errno != ENOTEMPTY || rmdir(g_other) || rename(g_dir, g_other))) _exit(3);
    raise(SIGTERM);
}

static void test_renamed_is_kept(void **state)
{
    (void)state;
    char keep[4300];
    snprintf(keep, sizeof keep, "%s/keep", g_other);
    unlink(keep); /* g_other becomes the target */
    child c;
    run_child(body_renamed_raise, &c);
    assert_killed_by(&c, SIGTERM);
    assert_string_equal(c.err, "");
    char f[4300];
    snprintf(f, sizeof f, "%s/model.safetensors", g_other);
    assert_true(exists(f));
}

/* in a child: od_prepare of g_other/merged, or exit 3 */
static void prepare_merged(od_state *st)
{
    fm_err e = {0};
    char target[4300];
    snprintf(target, sizeof target, "%s/merged", g_other);
    if (od_prepare(target, false, st, &e) != 0) _exit(3);
}

/* the real sequence: od_prepare, od_commit, then a late signal */
static void body_commit_raise(void)
{
    od_state st;
    prepare_merged(&st);
    fm_err e = {0};
    put(od_temp_path(&st), "model.safetensors");
    if (od_commit(&st, false, false, &e) != 0) _exit(4);
    raise(SIGTERM);
}

static void test_committed_is_kept(void **state)
{
    (void)state;
    child c;
    run_child(body_commit_raise, &c);
    assert_killed_by(&c, SIGTERM);
    assert_string_equal(c.err, "");
    char f[4300];
    snprintf(f, sizeof f, "%s/merged/model.safetensors", g_other);
    assert_true(exists(f));
    snprintf(f, sizeof f, "%s/merged/.fsdpmerge-owner", g_other);
    assert_false(exists(f));
}

/* od_prepare watches what it made: a signal before the commit removes it */
static void body_prepare_raise(void)
{
    od_state st;
    prepare_merged(&st);
    put(od_temp_path(&st), "model.safetensors");
    raise(SIGHUP);
}

static void test_prepared_is_removed(void **state)
{
    (void)state;
    child c;
    run_child(body_prepare_raise, &c);
    assert_killed_by(&c, SIGHUP);
    assert_string_equal(c.err, MSG);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q fsdpmerge", g_other);
    assert_int_not_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/merged", g_other);
    assert_false(exists(cmd));
}

/* od_abort removes the folder quietly, and a later signal finds nothing */
static void body_abort_raise(void)
{
    od_state st;
    prepare_merged(&st);
    fill(od_temp_path(&st));
    od_abort(&st);
    raise(SIGTERM);
}

static void test_abort_removes(void **state)
{
    (void)state;
    child c;
    run_child(body_abort_raise, &c);
    assert_killed_by(&c, SIGTERM);
    assert_string_equal(c.err, "");
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q fsdpmerge", g_other);
    assert_int_not_equal(system(cmd), 0);
}

/* two processes watching the same folder, signalled at once (SLURM's time
 * limit): exactly one removes it and says so */
static int g_go[2];

static void body_wait_raise(void)
{
    char b;
    od_watch(g_dir);
    close(g_go[1]);
    if (read(g_go[0], &b, 1) < 0) _exit(3); /* returns at EOF: all children start together */
    raise(SIGTERM);
}

static void test_one_of_two(void **state)
{
    (void)state;
    for (int round = 0; round < 5; round++) {
        assert_int_equal(pipe(g_go), 0);
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pids[2];
        for (int k = 0; k < 2; k++) {
            pids[k] = fork();
            assert_true(pids[k] >= 0);
            if (pids[k] == 0) {
                dup2(fds[1], 2);
                close(fds[0]);
                close(fds[1]);
                body_wait_raise();
                _exit(0);
            }
        }
        close(fds[1]);
        close(g_go[0]);
        close(g_go[1]); /* go */
        char err[1024];
        size_t n = 0;
        ssize_t k;
        while ((k = read(fds[0], err + n, sizeof err - 1 - n)) > 0) n += (size_t)k;
        err[n] = '\0';
        close(fds[0]);
        for (int j = 0; j < 2; j++) {
            int status;
            assert_int_equal(waitpid(pids[j], &status, 0), pids[j]);
            assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
        }
        assert_string_equal(err, MSG);
        assert_false(exists(g_dir));
        assert_int_equal(mkdir(g_dir, 0777), 0);
        fill(g_dir);
    }
}

/* a folder claimed by a handler that was killed mid-removal is removed by
 * the next run on the same target, which says so */
static char g_claimed[4300];

static void body_prepare_abort(void)
{
    od_state st;
    prepare_merged(&st);
    od_abort(&st);
}

static void test_claimed_leftover_removed(void **state)
{
    (void)state;
    snprintf(g_claimed, sizeof g_claimed, "%s/.merged.fsdpmerge-AbC123-removing", g_other);
    assert_int_equal(rename(g_dir, g_claimed), 0);
    child c;
    run_child(body_prepare_abort, &c);
    assert_true(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0);
    assert_false(exists(g_claimed));
    assert_non_null(strstr(c.err, "fsdpmerge: removed "));
    assert_non_null(strstr(c.err, "-removing, a temporary folder whose removal was cut short\n"));
    char keep[4300];
    snprintf(keep, sizeof keep, "%s/keep", g_other);
    assert_true(exists(keep)); /* its links were not followed */
}

/* the watchdog's cleanup removes the watched folder without a message */
static void body_emergency(void)
{
    od_watch(g_dir);
    od_emergency_cleanup();
    raise(SIGTERM);
}

static void test_emergency_cleanup(void **state)
{
    (void)state;
    child c;
    run_child(body_emergency, &c);
    assert_killed_by(&c, SIGTERM);
    assert_string_equal(c.err, "");
    assert_false(exists(g_dir));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_signal_removes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwatch_keeps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renamed_is_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_committed_is_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared_is_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_removes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_of_two, setup, teardown),
        cmocka_unit_test_setup_teardown(test_emergency_cleanup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claimed_leftover_removed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
