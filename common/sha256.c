#include "common/sha256.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_CHUNK (1 << 20)

int sha256_init(struct sha256 *h, struct err *e)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(c);
        h->ctx = NULL;
        return err_set(e, ERR_NOMEM, "sha256", "cannot create a SHA-256 context");
    }
    h->ctx = c;
    return 0;
}

void sha256_update(struct sha256 *h, const void *data, size_t n)
{
    if (h->ctx && n)
        EVP_DigestUpdate(h->ctx, data, n);
}

void sha256_final(struct sha256 *h, char *out)
{
    unsigned char md[32];
    unsigned int len = 0;
    out[0] = '\0';
    if (!h->ctx)
        return;
    EVP_DigestFinal_ex(h->ctx, md, &len);
    for (unsigned i = 0; i < len && i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    sha256_free(h);
}

void sha256_free(struct sha256 *h)
{
    if (h && h->ctx) {
        EVP_MD_CTX_free(h->ctx);
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

int sha256_is_hex(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return s[64] == '\0';
}
