#include "common/path.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/atomic_file.h"

int path_mkdir_p(const char *dir, struct err *e)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return err_set(e, ERR_INVALID, dir, "path too long");
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return err_set(e, ERR_IO, buf, "cannot create directory: %s", strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return err_set(e, ERR_IO, buf, "cannot create directory: %s", strerror(errno));
    return 0;
}

int path_write_atomic(const char *path, const char *text, struct err *e)
{
    return atomic_file_write(path, text, strlen(text), e);
}
