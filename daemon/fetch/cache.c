#include "daemon/fetch/cache.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/log.h"
#include "common/path.h"
#include "common/sha256.h"
#include "daemon/base/owner.h"
#include "daemon/fetch/hfcache.h"

#define STALE_INCOMPLETE_S 3600

struct pin {
    char key[CACHE_KEY_MAX];
    int fd;
    int count;
};

struct cache {
    char root[2048];
    long long budget;
    long long reserved;     /* bytes promised to downloads in progress (this process) */
    struct pin pins[CACHE_PINS_MAX];
    struct owner *owner;    /* our tag on partials; our reservations, for the others */
};

/* The text of an owner's lock file: its reserved bytes. */
#define RESERVED_FMT "reserved %lld\n"

static int pathf(char *out, size_t n, struct err *e, const char *fmt, ...) CK_PRINTF(4, 5);
static int pathf(char *out, size_t n, struct err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, "cache", "path too long");
    return 0;
}

/* Keys are "<slug>/<rev>": two safe components. */
static int key_ok(const char *key)
{
    const char *slash = strchr(key, '/');
    if (!slash || slash == key || !slash[1] || strchr(slash + 1, '/') || strlen(key) >= CACHE_KEY_MAX)
        return 0;
    for (const char *p = key; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-/", *p))
            return 0;
    return key[0] != '.' && slash[1] != '.';
}

/* A dead daemon's temporary files: its partial downloads (its
 * reservation went with its lock file). */
static void remove_dead_partials(const char *root, const char *tag, void *arg)
{
    (void)arg;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/partial", root);
    int n = owner_remove_tagged(p, tag);
    if (n > 0)
        log_info("cache: partial downloads of a dead daemon removed", "owner=%s files=%d", tag, n);
}

struct cache *cache_open_as(const char *root, long long budget_bytes, const char *node,
                            struct err *e)
{
    struct cache *c = calloc(1, sizeof *c);
    if (!c) {
        err_set(e, ERR_NOMEM, root, "out of memory");
        return NULL;
    }
    const char *subs[] = {"blobs", "snapshots", "manifests", "partial", "pins"};
    char p[PATH_MAX];
    char real[PATH_MAX];
    char host[256] = "node";
    if (e)
        err_clear(e);
    if (path_mkdir_p(root, e) < 0 || !realpath(root, real) || strlen(real) >= sizeof c->root) {
        if (e && e->code == 0)
            err_set(e, ERR_IO, root, "cannot use the cache directory: %s", errno ? strerror(errno) : "path too long");
        free(c);
        return NULL;
    }
    memcpy(c->root, real, strlen(real) + 1);
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++)
        if (pathf(p, sizeof p, e, "%s/%s", c->root, subs[i]) < 0 || path_mkdir_p(p, e) < 0) {
            free(c);
            return NULL;
        }
    c->budget = budget_bytes;
    for (int i = 0; i < CACHE_PINS_MAX; i++)
        c->pins[i].fd = -1;
    if (!node) {
        gethostname(host, sizeof host - 1);
        node = host;
    }
    if (!(c->owner = owner_open(c->root, node, remove_dead_partials, NULL, e)) ||
        owner_write(c->owner, "reserved 0\n", e) < 0) {
        owner_close(c->owner);
        free(c);
        return NULL;
    }
    return c;
}

struct cache *cache_open(const char *root, long long budget_bytes, struct err *e)
{
    return cache_open_as(root, budget_bytes, NULL, e);
}

void cache_close(struct cache *c)
{
    if (!c)
        return;
    for (int i = 0; i < CACHE_PINS_MAX; i++)
        if (c->pins[i].fd >= 0)
            close(c->pins[i].fd);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/partial", c->root);
    owner_remove_tagged(p, owner_tag(c->owner)); /* nobody else could resume them */
    owner_close(c->owner);
    free(c);
}

const char *cache_root(const struct cache *c) { return c->root; }

int cache_key(const char *source, const char *revision, char *out, size_t n, struct err *e)
{
    char slug[80];
    size_t o = 0;
    const char *s = source;
    if (strncmp(s, "file://", 7) == 0 || strncmp(s, "http://", 7) == 0)
        s += 7;
    else if (strncmp(s, "https://", 8) == 0)
        s += 8;
    else if (strncmp(s, "hf://", 5) == 0) {
        s += 5;
        o = (size_t)snprintf(slug, sizeof slug, "hf-");
    }
    for (; *s && o < 60; s++) {
        char ch = isalnum((unsigned char)*s) || *s == '.' || *s == '_' ? *s : '-';
        if (ch == '-' && (o == 0 || slug[o - 1] == '-'))
            continue;
        if (ch == '.' && o == 0)
            continue;
        slug[o++] = ch;
    }
    while (o && slug[o - 1] == '-')
        o--;
    slug[o] = '\0';
    struct sha256 h;
    char hex[SHA256_HEX];
    int rc = sha256_init(&h, e);
    if (rc < 0)
        return rc;
    sha256_update(&h, source, strlen(source));
    sha256_final(&h, hex);
    for (const char *r = revision; *r; r++)
        if (!isalnum((unsigned char)*r) && !strchr("._-", *r))
            return err_set(e, ERR_INVALID, revision, "revision has characters a cache key cannot hold");
    if (!*revision || revision[0] == '.')
        return err_set(e, ERR_INVALID, revision, "bad revision");
    return pathf(out, n, e, "%s%s%.12s/%s", slug, o ? "-" : "", hex, revision);
}

int cache_snapshot_dir(const struct cache *c, const char *key, char *out, size_t n, struct err *e)
{
    if (!key_ok(key))
        return err_set(e, ERR_INVALID, key, "bad cache key");
    return pathf(out, n, e, "%s/snapshots/%s", c->root, key);
}

int cache_partial_path(const struct cache *c, const char *name, char *out, size_t n, struct err *e)
{
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
            return err_set(e, ERR_INVALID, name, "bad partial name");
    if (!*name || name[0] == '.')
        return err_set(e, ERR_INVALID, name, "bad partial name");
    return pathf(out, n, e, "%s/partial/%s.%s.part", c->root, owner_tag(c->owner), name);
}

static void blob_path(const struct cache *c, const char *sha, char *out, size_t n)
{
    snprintf(out, n, "%s/blobs/%s", c->root, sha);
}

int cache_has_blob(const struct cache *c, const char *sha256)
{
    char p[PATH_MAX];
    struct stat st;
    if (!sha256_is_hex(sha256))
        return 0;
    blob_path(c, sha256, p, sizeof p);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- the lock and the manifests ---- */

static int lock_cache(const struct cache *c, struct err *e)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/.lock", c->root);
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, ERR_IO, p, "cannot open the cache lock: %s", strerror(errno));
    while (flock(fd, LOCK_EX) != 0)
        if (errno != EINTR) {
            close(fd);
            return err_set(e, ERR_IO, p, "cannot lock the cache: %s", strerror(errno));
        }
    return fd;
}

static void unlock_cache(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

static void manifest_path(const struct cache *c, const char *key, char *out, size_t n)
{
    snprintf(out, n, "%s/manifests/%s.json", c->root, key);
}

static json_t *manifest_load(const struct cache *c, const char *key)
{
    char p[PATH_MAX];
    manifest_path(c, key, p, sizeof p);
    return json_load_file(p, 0, NULL);
}


static int manifest_save(const struct cache *c, const char *key, json_t *m, struct err *e)
{
    char p[PATH_MAX], dir[PATH_MAX];
    manifest_path(c, key, p, sizeof p);
    snprintf(dir, sizeof dir, "%s", p);
    *strrchr(dir, '/') = '\0';
    int rc = path_mkdir_p(dir, e);
    if (rc < 0)
        return rc;
    char *text = json_dumps(m, JSON_INDENT(1) | JSON_SORT_KEYS);
    if (!text)
        return err_set(e, ERR_NOMEM, key, "out of memory");
    rc = path_write_atomic(p, text, e);
    free(text);
    return rc;
}

static json_t *manifest_new(const char *key)
{
    return json_pack("{s:s, s:b, s:b, s:I, s:[]}", "key", key, "complete", 0, "analysed", 0,
                     "last_used", (json_int_t)time(NULL), "files");
}

/* The process working on a snapshot: while it lives, a snapshot it has not
 * analysed is kept; once it is dead, the snapshot is evictable. */
static void manifest_set_owner(const struct cache *c, json_t *m)
{
    json_object_set_new(m, "owner", json_string(owner_tag(c->owner)));
}

/* An unpinned snapshot may go when analysed, when whoever staged it gave
 * it up unanalysed (released: a lost lease, a failure, a shutdown) or is
 * dead (a daemon killed before it was analysed: nobody will), or, left
 * incomplete without an owner, after STALE_INCOMPLETE_S. */
static int manifest_evictable(const struct cache *c, json_t *m, long long last_used)
{
    const char *ow = json_string_value(json_object_get(m, "owner"));
    int gone = json_is_true(json_object_get(m, "released")) || (ow && owner_alive(c->owner, ow) == 0);
    if (json_is_true(json_object_get(m, "complete")))
        return json_is_true(json_object_get(m, "analysed")) || gone;
    return gone || time(NULL) - last_used > STALE_INCOMPLETE_S;
}

int cache_lookup(struct cache *c, const char *key, struct hub_files *files, struct err *e)
{
    if (!key_ok(key))
        return err_set(e, ERR_INVALID, key, "bad cache key");
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    int rc = 0;
    json_t *m = manifest_load(c, key);
    if (!m || !json_is_true(json_object_get(m, "complete")))
        goto out;
    json_t *fs = json_object_get(m, "files"), *f;
    size_t i;
    char snap[PATH_MAX], link[PATH_MAX * 2];
    if (cache_snapshot_dir(c, key, snap, sizeof snap, NULL) < 0)
        goto out;
    json_array_foreach(fs, i, f) {
        const char *sha = json_string_value(json_object_get(f, "sha256"));
        const char *name = json_string_value(json_object_get(f, "name"));
        struct stat st;
        snprintf(link, sizeof link, "%s/%s", snap, name ? name : "");
        if (!sha || !name || !cache_has_blob(c, sha) || stat(link, &st) != 0)
            goto out; /* a damaged snapshot: fetch again */
    }
    if (files) {
        json_array_foreach(fs, i, f) {
            if ((rc = hub_files_add(files, json_string_value(json_object_get(f, "name")),
                                    (long long)json_integer_value(json_object_get(f, "size")),
                                    json_string_value(json_object_get(f, "sha256")), e)) < 0)
                goto out;
            const char *etag = json_string_value(json_object_get(f, "etag"));
            if (etag && hub_etag_ok(etag))
                snprintf(files->f[files->n - 1].etag, sizeof files->f[files->n - 1].etag, "%s", etag);
        }
        const char *commit = json_string_value(json_object_get(m, "commit"));
        snprintf(files->commit, sizeof files->commit, "%s", commit && hub_commit_ok(commit) ? commit : "");
    }
    json_object_set_new(m, "last_used", json_integer((json_int_t)time(NULL)));
    if ((rc = manifest_save(c, key, m, e)) < 0)
        goto out;
    rc = 1;
out:
    json_decref(m);
    unlock_cache(lk);
    return rc;
}

int cache_put_blob(struct cache *c, const char *path, const char *sha256, struct err *e)
{
    char p[PATH_MAX];
    if (!sha256_is_hex(sha256))
        return err_set(e, ERR_INVALID, path, "not a sha256: %s", sha256);
    blob_path(c, sha256, p, sizeof p);
    if (cache_has_blob(c, sha256)) {
        unlink(path);
        return 0;
    }
    return atomic_file_place(path, p, e);
}

int cache_link_blob(struct cache *c, const char *path, const char *sha256, struct err *e)
{
    char p[PATH_MAX], tmp[PATH_MAX * 2];
    if (!sha256_is_hex(sha256))
        return err_set(e, ERR_INVALID, path, "not a sha256: %s", sha256);
    if (cache_has_blob(c, sha256))
        return 0;
    blob_path(c, sha256, p, sizeof p);
    /* a hard link, else (another file system) a symbolic one, made under
     * this daemon's name in partial/ (a crash leaves it to the sweep of
     * dead owners' files), then put in place */
    snprintf(tmp, sizeof tmp, "%s/partial/%s.link-%s", c->root, owner_tag(c->owner), sha256);
    unlink(tmp);
    if (link(path, tmp) != 0 && symlink(path, tmp) != 0)
        return err_set(e, ERR_IO, path, "cannot link into the cache: %s", strerror(errno));
    int rc = atomic_file_place(tmp, p, e);
    if (rc < 0)
        unlink(tmp);
    return rc;
}

int cache_snapshot_add(struct cache *c, const char *key, const char *name, long long size,
                       const char *sha256, struct err *e)
{
    char snap[PATH_MAX], link_path[PATH_MAX * 2], target[PATH_MAX];
    int rc = cache_snapshot_dir(c, key, snap, sizeof snap, e);
    if (rc < 0)
        return rc;
    struct hub_files chk = {0};
    rc = hub_files_add(&chk, name, size, sha256, e); /* the name's safety check */
    hub_files_free(&chk);
    if (rc < 0)
        return rc;
    if (!cache_has_blob(c, sha256))
        return err_set(e, ERR_NOTFOUND, name, "blob %s is not in the cache", sha256);
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    json_t *m = manifest_load(c, key);
    if (!m && !(m = manifest_new(key))) {
        unlock_cache(lk);
        return err_set(e, ERR_NOMEM, key, "out of memory");
    }
    json_t *fs = json_object_get(m, "files"), *f;
    size_t i, at = (size_t)-1;
    json_array_foreach(fs, i, f)
        if (strcmp(json_string_value(json_object_get(f, "name")), name) == 0)
            at = i;
    json_t *entry = json_pack("{s:s, s:I, s:s}", "name", name, "size", (json_int_t)size, "sha256", sha256);
    if (at != (size_t)-1)
        json_array_set_new(fs, at, entry);
    else
        json_array_append_new(fs, entry);
    json_object_set_new(m, "complete", json_false());
    json_object_set_new(m, "last_used", json_integer((json_int_t)time(NULL)));
    manifest_set_owner(c, m);
    rc = manifest_save(c, key, m, e);
    json_decref(m);
    if (rc == 0) {
        snprintf(link_path, sizeof link_path, "%s/%s", snap, name);
        char parent[PATH_MAX * 2];
        snprintf(parent, sizeof parent, "%s", link_path);
        *strrchr(parent, '/') = '\0';
        blob_path(c, sha256, target, sizeof target);
        if ((rc = path_mkdir_p(parent, e)) == 0 && (rc = atomic_file_link(target, link_path, 1, e)) < 0)
            err_wrap(e, "cannot link the snapshot file");
    }
    unlock_cache(lk);
    return rc;
}

static int manifest_set(struct cache *c, const char *key, const char *field, struct err *e)
{
    if (!key_ok(key))
        return err_set(e, ERR_INVALID, key, "bad cache key");
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    json_t *m = manifest_load(c, key);
    int rc;
    if (!m)
        rc = err_set(e, ERR_NOTFOUND, key, "no such snapshot in the cache");
    else {
        json_object_set_new(m, field, json_true());
        json_object_set_new(m, "last_used", json_integer((json_int_t)time(NULL)));
        if (strcmp(field, "complete") == 0)
            manifest_set_owner(c, m);
        rc = manifest_save(c, key, m, e);
    }
    json_decref(m);
    unlock_cache(lk);
    return rc;
}

int cache_snapshot_complete(struct cache *c, const char *key, struct err *e)
{
    return manifest_set(c, key, "complete", e);
}

int cache_snapshot_identity(struct cache *c, const char *key, const struct hub_files *files, struct err *e)
{
    if (!key_ok(key))
        return err_set(e, ERR_INVALID, key, "bad cache key");
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    json_t *m = manifest_load(c, key);
    int rc = 0;
    if (!m) {
        rc = err_set(e, ERR_NOTFOUND, key, "no such snapshot in the cache");
        goto out;
    }
    if (hub_commit_ok(files->commit))
        json_object_set_new(m, "commit", json_string(files->commit));
    else
        json_object_del(m, "commit");
    json_t *fs = json_object_get(m, "files"), *f;
    size_t i;
    json_array_foreach(fs, i, f) {
        const struct hub_file *hf = hub_files_find(files, json_string_value(json_object_get(f, "name")));
        if (hf && hub_etag_ok(hf->etag))
            json_object_set_new(f, "etag", json_string(hf->etag));
    }
    rc = manifest_save(c, key, m, e);
out:
    json_decref(m);
    unlock_cache(lk);
    return rc;
}

int cache_mark_analysed(struct cache *c, const char *key, struct err *e)
{
    return manifest_set(c, key, "analysed", e);
}

/* ---- pins ---- */

static int pin_lock_open(const struct cache *c, const char *key, struct err *e)
{
    char p[PATH_MAX], dir[PATH_MAX];
    if (pathf(p, sizeof p, e, "%s/pins/%s.lock", c->root, key) < 0)
        return ERR_INVALID;
    snprintf(dir, sizeof dir, "%s", p);
    *strrchr(dir, '/') = '\0';
    if (path_mkdir_p(dir, e) < 0)
        return ERR_IO;
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, ERR_IO, p, "cannot open the pin: %s", strerror(errno));
    return fd;
}

int cache_pin(struct cache *c, const char *key, struct err *e)
{
    if (!key_ok(key))
        return err_set(e, ERR_INVALID, key, "bad cache key");
    struct pin *free_slot = NULL;
    for (int i = 0; i < CACHE_PINS_MAX; i++) {
        if (c->pins[i].count > 0 && strcmp(c->pins[i].key, key) == 0) {
            c->pins[i].count++;
            return 0;
        }
        if (!free_slot && c->pins[i].count == 0)
            free_slot = &c->pins[i];
    }
    if (!free_slot)
        return err_set(e, ERR_INVALID, key, "more than %d snapshots pinned", CACHE_PINS_MAX);
    int fd = pin_lock_open(c, key, e);
    if (fd < 0)
        return fd;
    while (flock(fd, LOCK_SH) != 0)
        if (errno != EINTR) {
            close(fd);
            return err_set(e, ERR_IO, key, "cannot pin: %s", strerror(errno));
        }
    snprintf(free_slot->key, sizeof free_slot->key, "%s", key);
    free_slot->fd = fd;
    free_slot->count = 1;
    return 0;
}

/* Our snapshot given up before it was analysed: evictable from now on. */
static void release_unanalysed(struct cache *c, const char *key)
{
    int lk = lock_cache(c, NULL);
    if (lk < 0)
        return;
    json_t *m = manifest_load(c, key);
    const char *ow = json_string_value(json_object_get(m, "owner"));
    if (m && !json_is_true(json_object_get(m, "analysed")) && ow && strcmp(ow, owner_tag(c->owner)) == 0) {
        json_object_set_new(m, "released", json_true());
        if (manifest_save(c, key, m, NULL) < 0)
            log_warn("cache: snapshot not released", "snapshot=%s", key);
    }
    json_decref(m);
    unlock_cache(lk);
}

void cache_unpin(struct cache *c, const char *key)
{
    for (int i = 0; c && i < CACHE_PINS_MAX; i++)
        if (c->pins[i].count > 0 && strcmp(c->pins[i].key, key) == 0) {
            if (--c->pins[i].count == 0) {
                close(c->pins[i].fd);
                c->pins[i].fd = -1;
                c->pins[i].key[0] = '\0';
                release_unanalysed(c, key);
            }
            return;
        }
}

/* Pinned by anyone (this process included: flock conflicts between open
 * file descriptions of one process too). */
static int pinned(const struct cache *c, const char *key)
{
    int fd = pin_lock_open(c, key, NULL);
    if (fd < 0)
        return 0;
    int busy = flock(fd, LOCK_EX | LOCK_NB) != 0;
    close(fd);
    return busy;
}

/* ---- eviction ---- */

struct snap {
    char key[CACHE_KEY_MAX];
    json_t *m;
    long long last_used;
    int evictable;
};

struct ref {
    char sha[SHA256_HEX];
    int count;
    int held;               /* named by a snapshot that stays */
    long long size;
};

static int cmp_snap(const void *a, const void *b)
{
    const struct snap *x = a, *y = b;
    return x->last_used < y->last_used ? -1 : x->last_used > y->last_used;
}

static struct ref *ref_find(struct ref *refs, int n, const char *sha)
{
    for (int i = 0; i < n; i++)
        if (strcmp(refs[i].sha, sha) == 0)
            return &refs[i];
    return NULL;
}

long long cache_usage(const struct cache *c)
{
    char p[PATH_MAX], f[PATH_MAX * 2];
    snprintf(p, sizeof p, "%s/blobs", c->root);
    DIR *d = opendir(p);
    long long total = 0;
    struct dirent *de;
    struct stat st;
    while (d && (de = readdir(d))) {
        if (!sha256_is_hex(de->d_name))
            continue;
        snprintf(f, sizeof f, "%s/%s", p, de->d_name);
        if (lstat(f, &st) == 0)
            total += (long long)st.st_size;
    }
    if (d)
        closedir(d);
    return total;
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[PATH_MAX * 2];
    struct stat st;
    while (d && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* With the cache locked: 1 when a manifest other than `skip` names the
 * blob. */
static int blob_named(const struct cache *c, const char *sha, const char *skip)
{
    char mdir[PATH_MAX], p[PATH_MAX * 2], key[CACHE_KEY_MAX];
    snprintf(mdir, sizeof mdir, "%s/manifests", c->root);
    DIR *d1 = opendir(mdir);
    struct dirent *s1;
    int found = 0;
    while (!found && d1 && (s1 = readdir(d1))) {
        if (s1->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", mdir, s1->d_name);
        DIR *d2 = opendir(p);
        struct dirent *s2;
        while (!found && d2 && (s2 = readdir(d2))) {
            size_t len = strlen(s2->d_name);
            if (s2->d_name[0] == '.' || len < 6 || strcmp(s2->d_name + len - 5, ".json") != 0 ||
                snprintf(key, sizeof key, "%s/%.*s", s1->d_name, (int)(len - 5), s2->d_name) >= (int)sizeof key ||
                strcmp(key, skip) == 0)
                continue;
            json_t *m = manifest_load(c, key), *f;
            size_t i;
            json_array_foreach(json_object_get(m, "files"), i, f) {
                const char *fs = json_string_value(json_object_get(f, "sha256"));
                if (fs && strcmp(fs, sha) == 0)
                    found = 1;
            }
            json_decref(m);
        }
        if (d2)
            closedir(d2);
    }
    if (d1)
        closedir(d1);
    return found;
}

int cache_snapshot_prune(struct cache *c, const char *key, const struct hub_files *keep,
                         const struct hub_files *old, struct err *e)
{
    if (!key_ok(key))
        return err_set(e, ERR_INVALID, key, "bad cache key");
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    char snap[PATH_MAX], p[PATH_MAX * 2];
    json_t *m = manifest_load(c, key);
    size_t i;
    int rc = 0;
    long long freed = 0;
    if (m && cache_snapshot_dir(c, key, snap, sizeof snap, NULL) == 0) {
        json_t *fs = json_object_get(m, "files");
        for (i = json_array_size(fs); i-- > 0;) {
            const char *name = json_string_value(json_object_get(json_array_get(fs, i), "name"));
            if (name && hub_files_find(keep, name))
                continue;
            if (name && snprintf(p, sizeof p, "%s/%s", snap, name) < (int)sizeof p)
                unlink(p);
            json_array_remove(fs, i);
        }
        if ((rc = manifest_save(c, key, m, e)) < 0)
            goto out;
    }
    for (int k = 0; old && k < old->n; k++) {
        const char *sha = old->f[k].sha256;
        struct stat st;
        if (!sha256_is_hex(sha) || blob_named(c, sha, ""))
            continue;
        blob_path(c, sha, p, sizeof p);
        if (lstat(p, &st) == 0 && unlink(p) == 0)
            freed += (long long)st.st_size;
    }
    if (freed > 0)
        log_info("cache: blobs of an older version of a snapshot removed", "snapshot=%s freed=%lld", key, freed);
out:
    json_decref(m);
    unlock_cache(lk);
    return rc;
}

/* What an eviction did and found. */
struct evicted {
    long long freed;        /* bytes removed */
    long long held;         /* bytes of blobs named by snapshots that cannot go (pinned, or
                               not analysed yet) */
    int pinned_elsewhere;   /* snapshots pinned by other processes */
};

static int pinned_here(const struct cache *c, const char *key)
{
    for (int i = 0; i < CACHE_PINS_MAX; i++)
        if (c->pins[i].count > 0 && strcmp(c->pins[i].key, key) == 0)
            return 1;
    return 0;
}

/* With the cache locked: evict until the blobs use at most `target`
 * bytes (or nothing more is evictable). */
static int evict_locked(struct cache *c, long long target, struct evicted *out, struct err *e)
{
    memset(out, 0, sizeof *out);
    long long usage = cache_usage(c);
    struct snap *snaps = NULL;
    struct ref *refs = NULL;
    int ns = 0, cs = 0, nr = 0, cr = 0, rc = 0;
    long long freed = 0;
    char mdir[PATH_MAX], p[PATH_MAX * 2];
    snprintf(mdir, sizeof mdir, "%s/manifests", c->root);
    DIR *d1 = opendir(mdir);
    struct dirent *s1;
    while (d1 && (s1 = readdir(d1))) {
        if (s1->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", mdir, s1->d_name);
        DIR *d2 = opendir(p);
        struct dirent *s2;
        while (d2 && (s2 = readdir(d2))) {
            size_t len = strlen(s2->d_name);
            if (s2->d_name[0] == '.' || len < 6 || strcmp(s2->d_name + len - 5, ".json") != 0)
                continue;
            if (ns == cs) {
                cs = cs ? cs * 2 : 32;
                struct snap *q = realloc(snaps, (size_t)cs * sizeof *q);
                if (!q) {
                    rc = err_set(e, ERR_NOMEM, "cache", "out of memory");
                    closedir(d2);
                    goto out;
                }
                snaps = q;
            }
            struct snap *s = &snaps[ns];
            memset(s, 0, sizeof *s);
            if (snprintf(s->key, sizeof s->key, "%s/%.*s", s1->d_name, (int)(len - 5), s2->d_name) >=
                (int)sizeof s->key)
                continue;
            s->m = manifest_load(c, s->key);
            if (!s->m)
                continue;
            ns++;
            s->last_used = (long long)json_integer_value(json_object_get(s->m, "last_used"));
            int pin = pinned(c, s->key);
            s->evictable = !pin && manifest_evictable(c, s->m, s->last_used);
            out->pinned_elsewhere += pin && !pinned_here(c, s->key);
            json_t *f;
            size_t i;
            json_array_foreach(json_object_get(s->m, "files"), i, f) {
                const char *sha = json_string_value(json_object_get(f, "sha256"));
                if (!sha)
                    continue;
                struct ref *r = ref_find(refs, nr, sha);
                if (!r) {
                    if (nr == cr) {
                        cr = cr ? cr * 2 : 64;
                        struct ref *q = realloc(refs, (size_t)cr * sizeof *q);
                        if (!q) {
                            rc = err_set(e, ERR_NOMEM, "cache", "out of memory");
                            closedir(d2);
                            goto out;
                        }
                        refs = q;
                    }
                    r = &refs[nr++];
                    snprintf(r->sha, sizeof r->sha, "%s", sha);
                    r->count = 0;
                    r->held = 0;
                    r->size = (long long)json_integer_value(json_object_get(f, "size"));
                }
                r->count++;
                if (!s->evictable)
                    r->held = 1;
            }
        }
        if (d2)
            closedir(d2);
    }
    if (ns > 1)
        qsort(snaps, (size_t)ns, sizeof *snaps, cmp_snap);
    for (int k = 0; k < ns && usage - freed > target; k++) {
        struct snap *s = &snaps[k];
        if (!s->evictable)
            continue;
        manifest_path(c, s->key, p, sizeof p);
        unlink(p);
        char snap[PATH_MAX];
        if (cache_snapshot_dir(c, s->key, snap, sizeof snap, NULL) == 0)
            remove_tree(snap);
        json_t *f;
        size_t i;
        json_array_foreach(json_object_get(s->m, "files"), i, f) {
            const char *sha = json_string_value(json_object_get(f, "sha256"));
            struct ref *r = sha ? ref_find(refs, nr, sha) : NULL;
            if (!r || --r->count > 0)
                continue;
            struct stat st;
            blob_path(c, sha, p, sizeof p);
            if (lstat(p, &st) == 0 && unlink(p) == 0)
                freed += (long long)st.st_size;
        }
        log_info("cache: evicted", "snapshot=%s last_used_s_ago=%lld", s->key,
                 (long long)time(NULL) - s->last_used);
    }
    for (int k = 0; k < nr; k++)
        if (refs[k].held && refs[k].count > 0)
            out->held += refs[k].size;
out:
    if (d1)
        closedir(d1);
    for (int k = 0; k < ns; k++)
        json_decref(snaps[k].m);
    free(snaps);
    free(refs);
    out->freed = freed;
    return rc;
}

int cache_evict(struct cache *c, long long *freed_out, struct err *e)
{
    if (freed_out)
        *freed_out = 0;
    if (c->budget <= 0 || cache_usage(c) <= c->budget)
        return 0;
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    struct evicted ev;
    int rc = evict_locked(c, c->budget, &ev, e);
    unlock_cache(lk);
    if (freed_out)
        *freed_out = ev.freed;
    if (rc == 0 && cache_usage(c) > c->budget)
        log_warn("cache over budget; nothing more can be evicted (pinned or not analysed yet)",
                 "usage=%lld budget=%lld", cache_usage(c), c->budget);
    return rc;
}

/* ---- reservations, shared through the owners' lock files ---- */

static void add_reserved(const char *tag, const char *text, void *arg)
{
    (void)tag;
    long long v = 0;
    if (sscanf(text, "reserved %lld", &v) == 1 && v > 0)
        *(long long *)arg += v;
}

/* With the cache locked: the bytes the other live daemons on this cache
 * have reserved (the dead ones' partials are removed on the way). */
static int others_reserved(struct cache *c, long long *out, struct err *e)
{
    *out = 0;
    int rc = owner_each_live(c->owner, add_reserved, out, remove_dead_partials, NULL, e);
    return rc < 0 ? rc : 0;
}

/* With the cache locked: publish our reservation. */
static int publish_reserved(struct cache *c, struct err *e)
{
    char text[64];
    snprintf(text, sizeof text, RESERVED_FMT, c->reserved);
    return owner_write(c->owner, text, e);
}

/* With the cache locked: room for `bytes` within the budget, by eviction;
 * fills r (usage, reserved, freed, held, pinned_elsewhere). */
static int make_room_locked(struct cache *c, long long bytes, struct cache_room *r, struct err *e)
{
    long long others = 0;
    int rc = others_reserved(c, &others, e);
    if (rc < 0)
        return rc;
    r->reserved = others + c->reserved;
    long long target = c->budget - r->reserved - bytes;
    if (target >= 0) {
        struct evicted ev;
        if ((rc = evict_locked(c, target, &ev, e)) < 0)
            return rc;
        r->freed = ev.freed;
        r->held = ev.held;
        r->pinned_elsewhere = ev.pinned_elsewhere;
    }
    r->usage = cache_usage(c);
    if (target >= 0 && r->usage <= target)
        return 0;
    /* not even an empty cache holds it next to the other downloads, or
     * what remains cannot be evicted */
    return err_set(e, ERR_INVALID, "cache",
                   "cache budget %lld bytes cannot hold %lld more: %lld bytes in the cache (%lld of them pinned"
                   " or not analysed yet), %lld bytes promised to other downloads",
                   r->budget, bytes, r->usage, r->held, r->reserved);
}

int cache_reserve(struct cache *c, long long bytes, struct cache_room *room, struct err *e)
{
    struct cache_room r;
    memset(&r, 0, sizeof r);
    if (bytes < 0)
        bytes = 0;
    r.budget = c->budget;
    r.need = bytes;
    int lk = lock_cache(c, e);
    if (lk < 0)
        return lk;
    int rc = c->budget > 0 ? make_room_locked(c, bytes, &r, e) : 0;
    if (rc == 0) {
        c->reserved += bytes;
        if ((rc = publish_reserved(c, e)) < 0)
            c->reserved -= bytes;
    }
    unlock_cache(lk);
    if (room)
        *room = r;
    return rc;
}

void cache_release(struct cache *c, long long bytes)
{
    if (!c || bytes <= 0)
        return;
    struct err e;
    int lk = lock_cache(c, &e);
    c->reserved -= bytes;
    if (c->reserved < 0)
        c->reserved = 0;
    if (lk < 0 || publish_reserved(c, &e) < 0) /* others count too much until the next write */
        log_warn("cache: reservation not published", "error=%s", log_quote(err_str(&e)));
    unlock_cache(lk);
}

long long cache_reserved(const struct cache *c) { return c->reserved; }

void cache_set_budget(struct cache *c, long long budget_bytes) { c->budget = budget_bytes < 0 ? 0 : budget_bytes; }

long long cache_budget(const struct cache *c) { return c->budget; }

int cache_pins_held(const struct cache *c)
{
    int n = 0;
    for (int i = 0; i < CACHE_PINS_MAX; i++)
        n += c->pins[i].count > 0;
    return n;
}

/* ---- the HuggingFace cache ---- */

void cache_hf_dir(char *out, size_t n) { hfcache_dir(out, n); }

/* models--ORG--NAME/snapshots/<commit> of a revision (a ref, or a commit
 * itself) into out and the commit into commit[HUB_COMMIT_MAX]; 0 when
 * absent. */
static int hf_snapshot(const char *hub_dir, const char *repo, const char *revision, char *out, size_t n,
                       char *commit)
{
    char dir[2048], base[PATH_MAX];
    if (hub_dir && *hub_dir)
        snprintf(dir, sizeof dir, "%s", hub_dir);
    else
        cache_hf_dir(dir, sizeof dir);
    if (!dir[0] || hfcache_repo_dir(dir, repo, base, sizeof base, NULL) < 0 ||
        !hfcache_ref(dir, repo, revision, commit, HUB_COMMIT_MAX))
        return 0;
    struct stat st;
    if (snprintf(out, n, "%s/snapshots/%s", base, commit) >= (int)n || stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
        return 0;
    return 1;
}

int cache_hf_find(const char *hub_dir, const char *repo, const char *revision, const char *file,
                  char *out, size_t n)
{
    char snap[PATH_MAX], p[PATH_MAX * 2], real[PATH_MAX], commit[HUB_COMMIT_MAX];
    struct stat st;
    if (!hf_snapshot(hub_dir, repo, revision, snap, sizeof snap, commit))
        return 0;
    snprintf(p, sizeof p, "%s/%s", snap, file);
    if (!realpath(p, real) || stat(real, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    return snprintf(out, n, "%s", real) < (int)n;
}

static int hf_walk(const char *snap, const char *rel, struct hub_files *all, int *found, struct err *e)
{
    char dir[PATH_MAX * 2];
    snprintf(dir, sizeof dir, "%s%s%s", snap, rel[0] ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char name[HUB_NAME_MAX * 2], p[PATH_MAX * 3], real[PATH_MAX];
        snprintf(name, sizeof name, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
        snprintf(p, sizeof p, "%s/%s", snap, name);
        struct stat st;
        if (stat(p, &st) != 0)
            continue; /* a dangling link: that blob is gone */
        if (S_ISDIR(st.st_mode)) {
            if (strlen(name) < HUB_NAME_MAX / 2)
                rc = hf_walk(snap, name, all, found, e);
            continue;
        }
        if (!S_ISREG(st.st_mode) || strlen(name) >= HUB_NAME_MAX)
            continue;
        const char *sha = "", *etag = "";
        if (realpath(p, real)) {
            const char *b = strrchr(real, '/');
            if (b && sha256_is_hex(b + 1))
                sha = b + 1;
            if (b && hub_etag_ok(b + 1))
                etag = b + 1; /* huggingface_hub names a blob by its ETag */
        }
        if ((rc = hub_files_add(all, name, (long long)st.st_size, sha, e)) == 0) {
            snprintf(all->f[all->n - 1].etag, sizeof all->f[all->n - 1].etag, "%s", etag);
            (*found)++;
        }
    }
    closedir(d);
    return rc;
}

int cache_hf_list(const char *hub_dir, const char *repo, const char *revision, struct hub_files *all,
                  struct err *e)
{
    char snap[PATH_MAX], commit[HUB_COMMIT_MAX];
    if (!hf_snapshot(hub_dir, repo, revision, snap, sizeof snap, commit))
        return 0;
    snprintf(all->commit, sizeof all->commit, "%s", commit);
    int found = 0;
    int rc = hf_walk(snap, "", all, &found, e);
    return rc < 0 ? rc : found;
}
