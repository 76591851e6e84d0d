#include "fuzz/fuzz_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern volatile unsigned fuzz_sink;

static char scratch[PATH_MAX];

static void remove_tree(const char *dir)
{
    char cmd[PATH_MAX + 32];
    /* the directory is ours and its name has no quote (mkdtemp) */
    if (strchr(dir, '\'') == NULL && snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) < (int)sizeof cmd)
        if (system(cmd) != 0)
            fprintf(stderr, "fuzz: could not remove %s\n", dir);
}

static void cleanup(void)
{
    if (scratch[0])
        remove_tree(scratch);
}

const char *fuzz_dir(void)
{
    if (scratch[0])
        return scratch;
    const char *base = getenv("TMPDIR");
    struct stat sb;
    if (!base || !*base)
        base = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : "/tmp";
    if (snprintf(scratch, sizeof scratch, "%s/ckptd-fuzz-XXXXXX", base) >= (int)sizeof scratch ||
        !mkdtemp(scratch))
        fuzz_fail("cannot make a scratch directory under %s: %s", base, strerror(errno));
    atexit(cleanup);
    return scratch;
}

const char *fuzz_write(const char *name, const void *data, size_t size)
{
    static char path[PATH_MAX];
    const char *dir = fuzz_dir();
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        fuzz_fail("scratch path too long for %s", name);
    const char *slash = strchr(name, '/');
    if (slash) {
        char sub[PATH_MAX];
        snprintf(sub, sizeof sub, "%s/%.*s", dir, (int)(slash - name), name);
        if (mkdir(sub, 0700) != 0 && errno != EEXIST)
            fuzz_fail("mkdir %s: %s", sub, strerror(errno));
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fuzz_fail("open %s: %s", path, strerror(errno));
    const char *p = data;
    for (size_t left = size; left > 0;) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fuzz_fail("write %s: %s", path, strerror(errno));
        p += w;
        left -= (size_t)w;
    }
    close(fd);
    return path;
}

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz: invariant broken: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

void fuzz_check_err(const char *what, int rc, const struct err *e)
{
    if (rc >= 0)
        fuzz_fail("%s: expected a failure, got %d", what, rc);
    if (e->code != rc)
        fuzz_fail("%s returned %d but its error says %d (%s)", what, rc, e->code, e->msg);
    if (!e->msg[0])
        fuzz_fail("%s failed (%d) without a message", what, rc);
}

volatile unsigned fuzz_sink;

void fuzz_touch(const void *p, size_t n)
{
    const unsigned char *b = p;
    unsigned s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    fuzz_sink += s;
}
