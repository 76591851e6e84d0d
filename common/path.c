#include "common/path.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid()) >= (int)sizeof tmp)
        return err_set(e, ERR_INVALID, path, "path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, ERR_IO, tmp, "cannot create: %s", strerror(errno));
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int er = w < 0 ? errno : EIO;
            close(fd);
            unlink(tmp);
            return err_set(e, ERR_IO, tmp, "write failed: %s", strerror(er));
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        int er = errno;
        close(fd);
        unlink(tmp);
        return err_set(e, ERR_IO, tmp, "fsync failed: %s", strerror(er));
    }
    if (close(fd) != 0) {
        int er = errno;
        unlink(tmp);
        return err_set(e, ERR_IO, tmp, "close failed: %s", strerror(er));
    }
    if (rename(tmp, path) != 0) {
        int er = errno;
        unlink(tmp);
        return err_set(e, ERR_IO, path, "rename failed: %s", strerror(er));
    }
    return 0;
}
