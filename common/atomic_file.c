#include "common/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* fsync the directory holding path ("." for a bare name). */
static int sync_dir(const char *path, struct err *e)
{
    char dir[ATOMIC_FILE_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return err_set(e, ERR_IO, dir, "cannot open the directory to sync it: %s", strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL) /* EINVAL: a file system that cannot sync directories */
        rc = err_set(e, ERR_IO, dir, "fsync of the directory failed: %s", strerror(errno));
    close(fd);
    return rc;
}

static unsigned counter; /* with the pid: the temporaries' names are unique on the machine */

/* The next temporary name beside path; -1 when it does not fit. */
static int tmp_name(char *out, size_t n, const char *path)
{
    return (size_t)snprintf(out, n, "%s.tmp%ld.%u", path, (long)getpid(), counter++) < n ? 0 : -1;
}

int atomic_file_open(struct atomic_file *af, const char *path, struct err *e)
{
    af->f = NULL;
    af->path[0] = af->tmp[0] = '\0';
    if ((size_t)snprintf(af->path, sizeof af->path, "%s", path) >= sizeof af->path)
        return err_set(e, ERR_INVALID, path, "path too long");
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 100; tries++) {
        if (tmp_name(af->tmp, sizeof af->tmp, path) < 0) {
            af->tmp[0] = '\0';
            return err_set(e, ERR_INVALID, path, "path too long");
        }
        fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int rc = err_set(e, ERR_IO, path, "cannot create %s: %s", af->tmp, strerror(errno));
        af->tmp[0] = '\0';
        return rc;
    }
    if (!(af->f = fdopen(fd, "wb"))) {
        int rc = err_set(e, ERR_IO, path, "cannot open %s: %s", af->tmp, strerror(errno));
        close(fd);
        unlink(af->tmp);
        af->tmp[0] = '\0';
        return rc;
    }
    return 0;
}

void atomic_file_abort(struct atomic_file *af)
{
    if (!af->f)
        return;
    fclose(af->f);
    af->f = NULL;
    unlink(af->tmp);
}

int atomic_file_commit(struct atomic_file *af, struct err *e)
{
    if (!af->f)
        return err_set(e, ERR_INVALID, af->path, "not open for writing");
    FILE *f = af->f;
    af->f = NULL;
    const char *step = fflush(f) != 0 || ferror(f) ? "write"
                       : fsync(fileno(f)) != 0     ? "fsync"
                                                   : NULL;
    int er = errno;
    if (fclose(f) != 0 && !step) {
        step = "close";
        er = errno;
    }
    if (!step && rename(af->tmp, af->path) != 0) {
        step = "rename";
        er = errno;
    }
    if (step) {
        unlink(af->tmp);
        return err_set(e, ERR_IO, af->path, "%s of %s failed: %s", step, af->tmp, strerror(er));
    }
    return sync_dir(af->path, e);
}

int atomic_file_write(const char *path, const void *data, size_t n, struct err *e)
{
    struct atomic_file af;
    int rc = atomic_file_open(&af, path, e);
    if (rc < 0)
        return rc;
    if (n > 0 && fwrite(data, 1, n, af.f) != n) {
        rc = err_set(e, ERR_IO, path, "write of %s failed: %s", af.tmp, strerror(errno));
        atomic_file_abort(&af);
        return rc;
    }
    return atomic_file_commit(&af, e);
}

int atomic_file_place(const char *src, const char *path, struct err *e)
{
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(e, ERR_IO, src, "cannot open: %s", strerror(errno));
    int synced = fsync(fd) == 0, er = errno;
    close(fd);
    if (!synced)
        return err_set(e, ERR_IO, src, "fsync failed: %s", strerror(er));
    if (rename(src, path) != 0)
        return err_set(e, ERR_IO, path, "cannot move %s here: %s", src, strerror(errno));
    return sync_dir(path, e);
}

int atomic_file_link(const char *target, const char *path, int symbolic, struct err *e)
{
    char tmp[ATOMIC_FILE_PATH_MAX];
    int made = -1;
    for (int tries = 0; made != 0 && tries < 100; tries++) {
        if (tmp_name(tmp, sizeof tmp, path) < 0)
            return err_set(e, ERR_INVALID, path, "path too long");
        made = symbolic ? symlink(target, tmp) : link(target, tmp);
        if (made != 0 && errno != EEXIST)
            break;
    }
    if (made != 0)
        return err_set(e, ERR_IO, path, "cannot link %s to %s: %s", tmp, target, strerror(errno));
    if (rename(tmp, path) != 0) {
        int rc = err_set(e, ERR_IO, path, "cannot rename %s into place: %s", tmp, strerror(errno));
        unlink(tmp);
        return rc;
    }
    return sync_dir(path, e);
}
