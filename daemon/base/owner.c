#include "daemon/base/owner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/path.h"

#define OWNER_TEXT_MAX 256
#define LOCK_SUFFIX ".lock"

struct owner {
    char dir[PATH_MAX];     /* the shared directory */
    char odir[PATH_MAX];    /* dir/.owners */
    char tag[OWNER_TAG_MAX];
    char path[PATH_MAX];    /* odir/<tag>.lock */
    int fd;                 /* holds LOCK_EX on path */
};

void owner_make_tag(char *out, size_t n, const char *node, long pid)
{
    char clean[64];
    size_t o = 0;
    for (const char *p = node; *p && o + 1 < sizeof clean; p++) {
        unsigned char ch = (unsigned char)*p;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '_' || ch == '-';
        clean[o++] = ok ? (char)ch : '_';
    }
    clean[o] = '\0';
    snprintf(out, n, "%s.%ld", o ? clean : "node", pid);
}

const char *owner_tag(const struct owner *o) { return o->tag; }
const char *owner_dir(const struct owner *o) { return o->dir; }

int owner_remove_tagged(const char *dir, const char *tag)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t tl = strlen(tag);
    int n = 0;
    struct dirent *de;
    char p[PATH_MAX * 2];
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, tag, tl) != 0 || de->d_name[tl] != '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && !S_ISDIR(st.st_mode) && unlink(p) == 0)
            n++;
    }
    closedir(d);
    return n;
}

/* The tag of a lock file name, or 0 when the name is not one. */
static int tag_of_name(const char *name, char *tag, size_t n)
{
    size_t len = strlen(name), sl = strlen(LOCK_SUFFIX);
    if (name[0] == '.' || len <= sl || len - sl >= n || strcmp(name + len - sl, LOCK_SUFFIX) != 0)
        return 0;
    memcpy(tag, name, len - sl);
    tag[len - sl] = '\0';
    return 1;
}

/* Take the lock at path if nobody holds it: 1 taken (fd returned in *fd,
 * the path still names the file locked), 0 held by a live owner (or it
 * vanished), negative when flock cannot tell. */
static int take_if_dead(const char *path, int *fd_out)
{
    *fd_out = -1;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        close(fd);
        return err == EWOULDBLOCK ? 0 : -1;
    }
    struct stat a, b;
    if (fstat(fd, &a) != 0 || stat(path, &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
        close(fd); /* swept by someone else meanwhile */
        return 0;
    }
    *fd_out = fd;
    return 1;
}

/* A dead owner's leftovers, then its lock file. */
static void bury(const char *dir, const char *path, const char *tag, int fd, owner_dead_fn on_dead,
                 void *arg)
{
    if (on_dead)
        on_dead(dir, tag, arg);
    unlink(path);
    close(fd);
    log_debug("leftovers of a dead daemon removed", "dir=%s owner=%s", log_quote(dir), tag);
}

/* Walk the lock files but `skip`: dead ones are buried, live ones passed
 * to live_fn with their text.  *ndead and *nlive (may be NULL) count. */
static int walk(const char *dir, const char *odir, const char *skip, owner_dead_fn on_dead,
                void *dead_arg, owner_live_fn live_fn, void *live_arg, int *ndead, int *nlive,
                struct err *e)
{
    DIR *d = opendir(odir);
    if (!d) {
        if (errno == ENOENT)
            return 0;
        return err_set(e, ERR_IO, odir, "cannot list owners: %s", strerror(errno));
    }
    struct dirent *de;
    char tag[OWNER_TAG_MAX], path[PATH_MAX * 2];
    while ((de = readdir(d))) {
        if (!tag_of_name(de->d_name, tag, sizeof tag) || (skip && strcmp(tag, skip) == 0))
            continue;
        snprintf(path, sizeof path, "%s/%s", odir, de->d_name);
        int fd, got = take_if_dead(path, &fd);
        if (got > 0) {
            bury(dir, path, tag, fd, on_dead, dead_arg);
            if (ndead)
                (*ndead)++;
            continue;
        }
        if (got < 0 || !live_fn)
            continue;
        char text[OWNER_TEXT_MAX] = "";
        int rfd = open(path, O_RDONLY | O_CLOEXEC);
        if (rfd >= 0) {
            ssize_t r = pread(rfd, text, sizeof text - 1, 0);
            text[r > 0 ? r : 0] = '\0';
            close(rfd);
        }
        live_fn(tag, text, live_arg);
        if (nlive)
            (*nlive)++;
    }
    closedir(d);
    return 0;
}

struct owner *owner_open(const char *dir, const char *node, owner_dead_fn on_dead, void *arg,
                         struct err *e)
{
    struct owner *o = calloc(1, sizeof *o);
    char tmp[PATH_MAX + OWNER_TAG_MAX + 32];
    if (!o) {
        err_set(e, ERR_NOMEM, dir, "out of memory");
        return NULL;
    }
    o->fd = -1;
    owner_make_tag(o->tag, sizeof o->tag, node, (long)getpid());
    if (snprintf(o->dir, sizeof o->dir, "%s", dir) >= (int)sizeof o->dir ||
        snprintf(o->odir, sizeof o->odir, "%s/.owners", dir) >= (int)sizeof o->odir ||
        snprintf(o->path, sizeof o->path, "%s/%s" LOCK_SUFFIX, o->odir, o->tag) >=
            (int)sizeof o->path) {
        err_set(e, ERR_INVALID, dir, "path too long");
        goto fail;
    }
    if (path_mkdir_p(o->odir, e) < 0)
        goto fail;
    /* the dead first: a predecessor with our very tag (same node, same pid
     * after a restart in a fresh pid namespace) included */
    if (walk(o->dir, o->odir, NULL, on_dead, arg, NULL, NULL, NULL, NULL, e) < 0)
        goto fail;
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", o->odir, o->tag);
    o->fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o->fd < 0) {
        err_set(e, ERR_IO, tmp, "cannot create the owner lock: %s", strerror(errno));
        goto fail;
    }
    if (flock(o->fd, LOCK_EX | LOCK_NB) != 0 || rename(tmp, o->path) != 0) {
        err_set(e, ERR_IO, o->path, "cannot take the owner lock: %s", strerror(errno));
        unlink(tmp);
        goto fail;
    }
    return o;
fail:
    if (o->fd >= 0)
        close(o->fd);
    free(o);
    return NULL;
}

void owner_close(struct owner *o)
{
    if (!o)
        return;
    if (o->fd >= 0) {
        unlink(o->path); /* while locked: nobody sweeps it meanwhile */
        close(o->fd);
    }
    free(o);
}

int owner_sweep(struct owner *o, owner_dead_fn on_dead, void *arg, struct err *e)
{
    int ndead = 0;
    int rc = walk(o->dir, o->odir, o->tag, on_dead, arg, NULL, NULL, &ndead, NULL, e);
    return rc < 0 ? rc : ndead;
}

int owner_each_live(struct owner *o, owner_live_fn fn, void *arg, owner_dead_fn on_dead,
                    void *dead_arg, struct err *e)
{
    int nlive = 0;
    int rc = walk(o->dir, o->odir, o->tag, on_dead, dead_arg, fn, arg, NULL, &nlive, e);
    return rc < 0 ? rc : nlive;
}

int owner_alive(const struct owner *o, const char *tag)
{
    char path[PATH_MAX * 2];
    if (strcmp(tag, o->tag) == 0)
        return 1;
    if (strchr(tag, '/') || tag[0] == '.')
        return 0;
    snprintf(path, sizeof path, "%s/%s" LOCK_SUFFIX, o->odir, tag);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    int rc = 0;
    if (flock(fd, LOCK_SH | LOCK_NB) != 0)
        rc = errno == EWOULDBLOCK ? 1 : -1;
    close(fd); /* releases the shared lock if it was taken */
    return rc;
}

int owner_write(struct owner *o, const char *text, struct err *e)
{
    size_t len = strlen(text);
    if (len >= OWNER_TEXT_MAX)
        return err_set(e, ERR_INVALID, o->path, "owner text too long");
    if (pwrite(o->fd, text, len, 0) != (ssize_t)len || ftruncate(o->fd, (off_t)len) != 0)
        return err_set(e, ERR_IO, o->path, "cannot write the owner lock: %s", strerror(errno));
    return 0;
}
