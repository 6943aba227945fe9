/* testutil.h - helpers shared by the cmocka unit tests (header-only).
 *
 * tu_fixtures(): the fixtures folder: $FSDPMERGE_FIXTURES, else the first of
 * ../shared/fixtures, shared/fixtures, ../../shared/fixtures (relative to the
 * working directory, which is the repository root under `make test`) that
 * exists. A test that needs fixtures fails (never skips) when none is found.
 * tu_tmpdir(): a fresh folder under $TMPDIR (or /tmp), removed by tu_rmdir().
 */
#ifndef FM_TESTUTIL_H
#define FM_TESTUTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline const char *tu_fixtures(void)
{
    static char found[4096];
    if (found[0]) return found;
    const char *env = getenv("FSDPMERGE_FIXTURES");
    const char *cands[] = {env, "../shared/fixtures", "shared/fixtures", "../../shared/fixtures"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        struct stat st;
        if (cands[i] && stat(cands[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            snprintf(found, sizeof found, "%s", cands[i]);
            return found;
        }
    }
    fprintf(stderr, "testutil: fixtures folder not found (set FSDPMERGE_FIXTURES)\n");
    abort();
}

/* Path of a file under the fixtures folder, from a printf format; static
 * buffers big enough for any fixtures prefix, rotated 8 ways. */
static inline const char *tu_fixturef(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline const char *tu_fixturef(const char *fmt, ...)
{
    static char out[8][8192];
    static int k;
    char rel[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    char *o = out[k++ & 7];
    if (snprintf(o, sizeof out[0], "%s/%s", tu_fixtures(), rel) >= (int)sizeof out[0]) abort();
    return o;
}

static inline const char *tu_fixture(const char *rel) { return tu_fixturef("%s", rel); }

static inline char *tu_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    if (snprintf(tmpl, sizeof tmpl, "%s/fsdpmerge-test-XXXXXX", base && *base ? base : "/tmp") >= (int)sizeof tmpl)
        abort();
    char *d = mkdtemp(tmpl);
    if (d == NULL) abort();
    return strdup(d);
}

static inline void tu_rmdir(char *dir)
{
    if (dir == NULL) return;
    char cmd[4200];
    if (snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) >= (int)sizeof cmd) abort();
    if (system(cmd) != 0) fprintf(stderr, "testutil: could not remove %s\n", dir);
    free(dir);
}

/* Reads a whole file; returns malloc'd bytes (NUL-terminated) or NULL. */
static inline unsigned char *tu_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) {
        p[n] = 0;
        if (len) *len = (size_t)n;
    }
    return p;
}

#endif
