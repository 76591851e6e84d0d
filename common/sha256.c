#include "common/sha256.h"
#include "common/lazylib.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_CHUNK (1 << 20)

#ifndef CKPT_LIBCRYPTO_SONAME
#define CKPT_LIBCRYPTO_SONAME "libcrypto.so.3"
#endif

/* libcrypto's digest functions, found at the first digest: a program that
 * never hashes (a worker on a checkpoint) does not pay for loading it
 * (~170 pages written by the loader's relocations at every start). */
#define EVP_FUNCS(X, s) X(s, EVP_MD_CTX_new) X(s, EVP_MD_CTX_free) X(s, EVP_sha256) \
    X(s, EVP_DigestInit_ex) X(s, EVP_DigestUpdate) X(s, EVP_DigestFinal_ex)
LAZYLIB_DECLARE(evp, EVP_FUNCS);

int sha256_init(struct sha256 *h, struct err *e)
{
    h->ctx = NULL;
    int rc = LAZYLIB_LOAD(evp, CKPT_LIBCRYPTO_SONAME, e);
    if (rc < 0)
        return rc;
    EVP_MD_CTX *c = evp.EVP_MD_CTX_new();
    if (!c || evp.EVP_DigestInit_ex(c, evp.EVP_sha256(), NULL) != 1) {
        evp.EVP_MD_CTX_free(c);
        return err_set(e, ERR_NOMEM, "sha256", "cannot create a SHA-256 context");
    }
    h->ctx = c;
    return 0;
}

void sha256_update(struct sha256 *h, const void *data, size_t n)
{
    if (h->ctx && n)
        evp.EVP_DigestUpdate(h->ctx, data, n);
}

void sha256_final(struct sha256 *h, char *out)
{
    unsigned char md[32];
    unsigned int len = 0;
    out[0] = '\0';
    if (!h->ctx)
        return;
    evp.EVP_DigestFinal_ex(h->ctx, md, &len);
    for (unsigned i = 0; i < len && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    sha256_free(h);
}

void sha256_free(struct sha256 *h)
{
    if (h && h->ctx) {
        evp.EVP_MD_CTX_free(h->ctx);
        h->ctx = NULL;
    }
}

int sha256_update_file(struct sha256 *h, const char *path, long long len, struct err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(e, ERR_IO, path, "cannot open: %s", strerror(errno));
    char *buf = malloc(FILE_CHUNK);
    if (!buf) {
        close(fd);
        return err_set(e, ERR_NOMEM, path, "out of memory");
    }
    int rc = 0;
    long long left = len;
    while (left != 0) {
        size_t want = left < 0 || left > FILE_CHUNK ? FILE_CHUNK : (size_t)left;
        ssize_t got = read(fd, buf, want);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = err_set(e, ERR_IO, path, "read failed: %s", strerror(errno));
            break;
        }
        if (got == 0) {
            if (left > 0)
                rc = err_set(e, ERR_IO, path, "file ends %lld bytes early", left);
            break;
        }
        sha256_update(h, buf, (size_t)got);
        if (left > 0)
            left -= got;
    }
    free(buf);
    close(fd);
    return rc;
}

int sha256_file(const char *path, char *out, long long *size, struct err *e)
{
    struct sha256 h;
    out[0] = '\0';
    int rc = sha256_init(&h, e);
    if (rc < 0)
        return rc;
    /* length -1: to the end */
    if ((rc = sha256_update_file(&h, path, -1, e)) < 0) {
        sha256_free(&h);
        return rc;
    }
    sha256_final(&h, out);
    struct stat st;
    if (size)
        *size = stat(path, &st) == 0 ? (long long)st.st_size : -1;
    return 0;
}

/* One remembered file: what stat said of it when it was hashed. */
struct memo_entry {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    char hex[SHA256_HEX]; /* "": an empty entry */
};

static struct memo_entry memo[SHA256_MEMO_N];
static long memo_hits;

static struct memo_entry memo_key(const struct stat *st)
{
    return (struct memo_entry){st->st_dev, st->st_ino, st->st_size, st->st_mtim, st->st_ctim, ""};
}

static int same_file(const struct memo_entry *a, const struct memo_entry *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static double ts_seconds(struct timespec t)
{
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

int sha256_file_memo(const char *path, char *out, long long *size, double settled_s, struct err *e)
{
    struct stat st;
    if (stat(path, &st) != 0) /* sha256_file says why */
        return sha256_file(path, out, size, e);
    struct memo_entry before = memo_key(&st);
    struct memo_entry *m = &memo[((unsigned long long)st.st_ino * 0x9e3779b97f4a7c15ULL ^
                                  (unsigned long long)st.st_dev) % SHA256_MEMO_N];
    if (m->hex[0] && same_file(m, &before)) {
        memcpy(out, m->hex, SHA256_HEX);
        if (size)
            *size = (long long)st.st_size;
        memo_hits++;
        return 0;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int rc = sha256_file(path, out, size, e);
    if (rc < 0)
        return rc;
    double changed = ts_seconds(st.st_ctim) > ts_seconds(st.st_mtim) ? ts_seconds(st.st_ctim)
                                                                     : ts_seconds(st.st_mtim);
    if (ts_seconds(now) - changed < settled_s || stat(path, &st) != 0)
        return 0;
    struct memo_entry after = memo_key(&st);
    if (same_file(&before, &after)) { /* unchanged while it was read */
        memcpy(before.hex, out, SHA256_HEX);
        *m = before;
    }
    return 0;
}

long sha256_memo_hits(void)
{
    return memo_hits;
}

int sha256_is_hex(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return s[64] == '\0';
}
