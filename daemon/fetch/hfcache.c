#include "daemon/fetch/hfcache.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/path.h"
#include "daemon/fetch/hub.h"

/* ---- the environment ---- */

void hfcache_expand(const char *in, char *out, size_t n)
{
    size_t o = 0;
    const char *p = in;
    if (n == 0)
        return;
    const char *home = getenv("HOME");
    if (p[0] == '~' && (p[1] == '/' || !p[1]) && home && *home) {
        o = (size_t)snprintf(out, n, "%s", home);
        if (o >= n)
            o = n - 1;
        p++;
    }
    while (*p && o + 1 < n) {
        if (*p == '$' && (p[1] == '{' || isalpha((unsigned char)p[1]) || p[1] == '_')) {
            int braced = p[1] == '{';
            const char *s = p + 1 + braced;
            size_t len = 0;
            while (isalnum((unsigned char)s[len]) || s[len] == '_')
                len++;
            char name[256];
            const char *val = NULL;
            if (len > 0 && len < sizeof name && (!braced || s[len] == '}')) {
                memcpy(name, s, len);
                name[len] = '\0';
                val = getenv(name);
            }
            if (val) {
                for (; *val && o + 1 < n; val++)
                    out[o++] = *val;
                p = s + len + braced;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

void hfcache_home(char *out, size_t n)
{
    const char *v = env_nonempty("HF_HOME");
    char tmp[PATH_MAX];
    if (v)
        snprintf(tmp, sizeof tmp, "%s", v);
    else if ((v = env_nonempty("XDG_CACHE_HOME")))
        snprintf(tmp, sizeof tmp, "%s/huggingface", v);
    else if (env_nonempty("HOME"))
        snprintf(tmp, sizeof tmp, "~/.cache/huggingface");
    else
        tmp[0] = '\0';
    hfcache_expand(tmp, out, n);
}

void hfcache_dir(char *out, size_t n)
{
    const char *v = env_nonempty("HF_HUB_CACHE");
    if (!v)
        v = env_nonempty("HUGGINGFACE_HUB_CACHE");
    if (v) {
        hfcache_expand(v, out, n);
        return;
    }
    char home[PATH_MAX];
    hfcache_home(home, sizeof home);
    if (home[0])
        snprintf(out, n, "%s/hub", home);
    else if (n)
        out[0] = '\0';
}

static int truthy(const char *v)
{
    return v && (strcmp(v, "1") == 0 || strcasecmp(v, "on") == 0 || strcasecmp(v, "yes") == 0 ||
                 strcasecmp(v, "true") == 0);
}

int hfcache_offline(void)
{
    /* huggingface_hub: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, as strings:
     * a set HF_HUB_OFFLINE decides, even when it says no */
    const char *v = env_nonempty("HF_HUB_OFFLINE");
    return truthy(v ? v : env_nonempty("TRANSFORMERS_OFFLINE"));
}

/* Remove line breaks, then surrounding blanks: huggingface_hub's cleaning. */
static void clean_token(const char *in, char *out, size_t n)
{
    size_t o = 0;
    for (const char *p = in; *p && o + 1 < n; p++)
        if (*p != '\r' && *p != '\n')
            out[o++] = *p;
    out[o] = '\0';
    size_t s = 0;
    while (out[s] && isspace((unsigned char)out[s]))
        s++;
    memmove(out, out + s, o - s + 1);
    o -= s;
    while (o > 0 && isspace((unsigned char)out[o - 1]))
        out[--o] = '\0';
}

int hfcache_token(char *out, size_t n, char *from, size_t from_n)
{
    const char *names[2] = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"};
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(names[i]);
        if (!v)
            continue;
        clean_token(v, out, n);
        if (out[0]) {
            snprintf(from, from_n, "%s", names[i]);
            return 1;
        }
    }
    char path[PATH_MAX + 16], home[PATH_MAX];
    const char *tp = env_nonempty("HF_TOKEN_PATH");
    if (tp)
        hfcache_expand(tp, path, sizeof path);
    else {
        hfcache_home(home, sizeof home);
        if (!home[0])
            return 0;
        snprintf(path, sizeof path, "%s/token", home);
    }
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[1024];
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = '\0';
    clean_token(buf, out, n);
    if (!out[0])
        return 0;
    snprintf(from, from_n, "%s", path);
    return 1;
}

/* ---- the layout ---- */

int hfcache_repo_dir(const char *hub_dir, const char *repo, char *out, size_t n, struct err *e)
{
    const char *slash = strchr(repo, '/');
    if (!hub_dir || !*hub_dir)
        return err_set(e, ERR_INVALID, repo, "no HuggingFace cache directory");
    if (!slash || slash == repo || !slash[1] || strchr(slash + 1, '/') || strstr(repo, "..") ||
        repo[0] == '.' || slash[1] == '.')
        return err_set(e, ERR_INVALID, repo, "a hub repository is ORG/NAME");
    int w = snprintf(out, n, "%s/models--%.*s--%s", hub_dir, (int)(slash - repo), repo, slash + 1);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, repo, "HuggingFace cache path too long");
    return 0;
}

/* A revision usable as a path under refs/: huggingface_hub allows "/"
 * (refs/pr/1); no empty, "." or ".." component. */
static int revision_ok(const char *rev)
{
    if (!*rev || rev[0] == '/' || strlen(rev) > 255)
        return 0;
    for (const char *p = rev; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\')
            return 0;
    for (const char *p = rev; *p;) {
        size_t len = strcspn(p, "/");
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += len;
        if (*p == '/')
            p++;
    }
    return 1;
}

int hfcache_ref(const char *hub_dir, const char *repo, const char *revision, char *commit, size_t n)
{
    char base[PATH_MAX], p[PATH_MAX + 300], c[128] = "";
    if (hub_commit_ok(revision)) {
        snprintf(commit, n, "%s", revision);
        return 1;
    }
    if (!revision_ok(revision) || hfcache_repo_dir(hub_dir, repo, base, sizeof base, NULL) < 0)
        return 0;
    snprintf(p, sizeof p, "%s/refs/%s", base, revision);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    if (!fgets(c, sizeof c, f))
        c[0] = '\0';
    fclose(f);
    c[strcspn(c, " \r\n")] = '\0';
    if (!hub_commit_ok(c))
        return 0;
    snprintf(commit, n, "%s", c);
    return 1;
}

/* ---- writing ---- */

static int mkdirs(const char *dir, struct err *e) { return path_mkdir_p(dir, e); }

/* The parent directory of a path, made. */
static int mkparent(const char *path, struct err *e)
{
    char d[PATH_MAX * 2];
    snprintf(d, sizeof d, "%s", path);
    char *s = strrchr(d, '/');
    if (!s)
        return 0;
    *s = '\0';
    return mkdirs(d, e);
}

/* Copy src to dst (a new file), synced. */
static int copy_file(const char *src, const char *dst, struct err *e)
{
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = 0;
    char buf[1 << 16];
    if (in < 0)
        return err_set(e, ERR_IO, src, "cannot read: %s", strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = err_set(e, ERR_IO, dst, "cannot create: %s", strerror(errno));
        goto out;
    }
    for (;;) {
        ssize_t got = read(in, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = err_set(e, ERR_IO, src, "cannot read: %s", strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        for (ssize_t off = 0; off < got;) {
            ssize_t w = write(out, buf + off, (size_t)(got - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = err_set(e, ERR_IO, dst, "cannot write: %s", strerror(errno));
                goto out;
            }
            off += w;
        }
    }
    if (fsync(out) != 0)
        rc = err_set(e, ERR_IO, dst, "cannot sync: %s", strerror(errno));
out:
    if (out >= 0 && close(out) != 0 && rc == 0)
        rc = err_set(e, ERR_IO, dst, "cannot write: %s", strerror(errno));
    close(in);
    if (rc < 0 && out >= 0)
        unlink(dst);
    return rc;
}

/* flock(LOCK_EX) on a lock file, giving up after HFCACHE_LOCK_WAIT_S. */
static int lock_blob(const char *path, struct err *e)
{
    int rc = mkparent(path, e);
    if (rc < 0)
        return rc;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, ERR_IO, path, "cannot open the lock: %s", strerror(errno));
    struct timespec nap = {0, 10 * 1000 * 1000};
    for (int i = 0; i * 0.01 < HFCACHE_LOCK_WAIT_S; i++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            rc = err_set(e, ERR_IO, path, "cannot lock: %s", strerror(errno));
            close(fd);
            return rc;
        }
        nanosleep(&nap, NULL);
    }
    close(fd);
    return err_set(e, ERR_IO, path, "held by another process for over %.0f s (writing the same blob)",
                   HFCACHE_LOCK_WAIT_S);
}

static int name_ok(const char *file)
{
    struct hub_files chk = {0};
    int ok = hub_files_add(&chk, file, -1, "", NULL) == 0;
    hub_files_free(&chk);
    return ok;
}

/* The CACHEDIR.TAG huggingface_hub leaves at the top of its cache, so
 * backup tools skip it. */
static void cachedir_tag(const char *hub_dir)
{
    char p[PATH_MAX + 20];
    struct stat st;
    snprintf(p, sizeof p, "%s/CACHEDIR.TAG", hub_dir);
    if (stat(p, &st) == 0)
        return;
    if (path_write_atomic(p, "Signature: 8a477f597d28d172789f06886806bc55\n"
                             "# This file is a cache directory tag: the HuggingFace hub cache (written by ckptd).\n"
                             "# For information about cache directory tags, see:\n"
                             "#\thttps://bford.info/cachedir/\n", NULL) < 0)
        return; /* a nicety: the cache works without it */
}

int hfcache_put(const char *hub_dir, const char *repo, const char *commit, const char *file, const char *etag,
                const char *src, struct err *e)
{
    char base[PATH_MAX], blob[PATH_MAX + 200], tmp[PATH_MAX + 300], lock[PATH_MAX + 400];
    char link_path[PATH_MAX * 2], link_tmp[PATH_MAX * 2 + 40], target[PATH_MAX], real[PATH_MAX];
    int rc, lk = -1;
    if (!hub_commit_ok(commit) || !hub_etag_ok(etag) || !name_ok(file))
        return err_set(e, ERR_INVALID, file, "cannot name it in the HuggingFace cache (commit '%s', etag '%s')",
                       commit, etag);
    if ((rc = hfcache_repo_dir(hub_dir, repo, base, sizeof base, e)) < 0)
        return rc;
    const char *slash = strchr(repo, '/');
    snprintf(blob, sizeof blob, "%s/blobs/%s", base, etag);
    snprintf(lock, sizeof lock, "%s/.locks/models--%.*s--%s/%s.lock", hub_dir, (int)(slash - repo), repo,
             slash + 1, etag);
    if (snprintf(link_path, sizeof link_path, "%s/snapshots/%s/%s", base, commit, file) >= (int)sizeof link_path)
        return err_set(e, ERR_INVALID, file, "HuggingFace cache path too long");
    if ((rc = mkparent(blob, e)) < 0 || (rc = mkparent(link_path, e)) < 0)
        return rc;
    cachedir_tag(hub_dir);
    if ((lk = lock_blob(lock, e)) < 0)
        return lk;
    struct stat st;
    if (lstat(blob, &st) != 0) {
        if (!realpath(src, real)) {
            rc = err_set(e, ERR_IO, src, "cannot resolve: %s", strerror(errno));
            goto out;
        }
        snprintf(tmp, sizeof tmp, "%s/blobs/%s.%d.incomplete", base, etag, (int)getpid());
        unlink(tmp);
        if (link(real, tmp) != 0 && (rc = copy_file(real, tmp, e)) < 0)
            goto out;
        if (rename(tmp, blob) != 0) {
            rc = err_set(e, ERR_IO, blob, "cannot place the blob: %s", strerror(errno));
            unlink(tmp);
            goto out;
        }
    } else if (!S_ISREG(st.st_mode)) {
        rc = err_set(e, ERR_IO, blob, "exists and is not a regular file");
        goto out;
    }
    /* ../../blobs/<etag>, one ../ more per directory of the file's name */
    size_t o = 0;
    o += (size_t)snprintf(target + o, sizeof target - o, "../../");
    for (const char *p = file; *p; p++)
        if (*p == '/')
            o += (size_t)snprintf(target + o, sizeof target - o, "../");
    snprintf(target + o, sizeof target - o, "blobs/%s", etag);
    char cur[PATH_MAX];
    ssize_t cl = readlink(link_path, cur, sizeof cur - 1);
    if (cl >= 0) {
        cur[cl] = '\0';
        if (strcmp(cur, target) == 0)
            goto out; /* already there */
    }
    char *b = strrchr(link_path, '/');
    snprintf(link_tmp, sizeof link_tmp, "%.*s/.%s.%d.tmp", (int)(b - link_path), link_path, b + 1, (int)getpid());
    unlink(link_tmp);
    if (symlink(target, link_tmp) != 0 || rename(link_tmp, link_path) != 0) {
        rc = err_set(e, ERR_IO, link_path, "cannot link the snapshot file: %s", strerror(errno));
        unlink(link_tmp);
    }
out:
    if (lk >= 0)
        close(lk); /* releases the flock */
    return rc;
}

int hfcache_set_ref(const char *hub_dir, const char *repo, const char *revision, const char *commit,
                    struct err *e)
{
    char base[PATH_MAX], p[PATH_MAX + 300], cur[64];
    int rc;
    if (!hub_commit_ok(commit) || !revision_ok(revision))
        return err_set(e, ERR_INVALID, revision, "cannot write a ref for commit '%s'", commit);
    if (hub_commit_ok(revision))
        return 0; /* huggingface_hub never writes a commit as a ref */
    if ((rc = hfcache_repo_dir(hub_dir, repo, base, sizeof base, e)) < 0)
        return rc;
    if (hfcache_ref(hub_dir, repo, revision, cur, sizeof cur) && strcmp(cur, commit) == 0)
        return 0;
    snprintf(p, sizeof p, "%s/refs/%s", base, revision);
    if ((rc = mkparent(p, e)) < 0)
        return rc;
    return path_write_atomic(p, commit, e);
}

int hfcache_git_sha1(const char *path, char *out, struct err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
    if (fd < 0)
        return err_set(e, ERR_IO, path, "cannot read: %s", strerror(errno));
    struct stat st;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) {
        close(fd);
        return err_set(e, ERR_NOMEM, path, "out of memory");
    }
    char head[64], buf[1 << 16];
    if (fstat(fd, &st) != 0 || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1) {
        rc = err_set(e, ERR_IO, path, "cannot hash");
        goto out;
    }
    int hl = snprintf(head, sizeof head, "blob %lld", (long long)st.st_size);
    EVP_DigestUpdate(ctx, head, (size_t)hl + 1); /* the NUL is part of the header */
    for (;;) {
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = err_set(e, ERR_IO, path, "cannot read: %s", strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)got);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    for (unsigned i = 0; i < mdlen && i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
out:
    EVP_MD_CTX_free(ctx);
    close(fd);
    return rc;
}
