#include "daemon/ops/space.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "daemon/ops/config.h"

int space_free(const char *path, long long *bytes, struct err *e)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p)
        return err_set(e, ERR_IO, path, "path too long");
    struct statvfs sv;
    /* a directory not made yet: its nearest existing ancestor */
    while (statvfs(p, &sv) != 0) {
        char *slash = strrchr(p, '/');
        if (errno != ENOENT || !slash || !p[0])
            return err_set(e, ERR_IO, path, "statvfs: %s", strerror(errno));
        if (slash == p)
            p[1] = '\0';
        else
            *slash = '\0';
        if (strcmp(p, ".") == 0 || !p[0])
            snprintf(p, sizeof p, ".");
    }
    *bytes = (long long)sv.f_bavail * (long long)sv.f_frsize;
    return 0;
}

/* "12 KB", "3.5 MB", "1.2 GB" */
static void human(long long b, char *out, size_t n)
{
    if (b < 1024 * 1024)
        snprintf(out, n, "%lld KB", b / 1024);
    else if (b < 1024LL * 1024 * 1024)
        snprintf(out, n, "%.1f MB", (double)b / (1024.0 * 1024));
    else
        snprintf(out, n, "%.1f GB", (double)b / (1024.0 * 1024 * 1024));
}

int space_short(const struct daemon_config *c, char *why, size_t n)
{
    const struct {
        const char *name, *path;
    } dirs[] = {{"spool_dir", c->spool_dir}, {"cache_dir", c->cache_dir}, {"artifact_dir", c->artifact_dir}};
    long long need = c->disk_min_free_mb * 1024LL * 1024;
    if (need <= 0)
        return 0;
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        long long got;
        if (!dirs[i].path[0] || space_free(dirs[i].path, &got, NULL) < 0 || got >= need)
            continue;
        char h[32];
        human(got, h, sizeof h);
        snprintf(why, n, "%s %s has %s free, less than disk_min_free_mb (%ld MB): free space there",
                 dirs[i].name, dirs[i].path, h, c->disk_min_free_mb);
        return 1;
    }
    return 0;
}
