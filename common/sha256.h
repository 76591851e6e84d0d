/*
 * sha256.h - SHA-256 over OpenSSL's libcrypto (EVP), streaming or of a file.
 * libcrypto is loaded (common/lazylib.h) at the first digest, not at the
 * program's start.
 *
 * Digests are handled as 64 lowercase hex characters plus NUL, the form the
 * HuggingFace hub states for LFS files and the cache uses for blob names.
 *
 *     struct sha256 h;
 *     if (sha256_init(&h, &e) < 0) ...
 *     sha256_update(&h, buf, n);            // as bytes arrive
 *     char hex[SHA256_HEX];
 *     sha256_final(&h, hex);                // frees the context
 *     sha256_file("/x/model.safetensors", hex, NULL, &e);
 */
#ifndef CKPTD_SHA256_H
#define CKPTD_SHA256_H

#include <stddef.h>

#include "common/err.h"

#define SHA256_HEX 65 /* 64 hex digits and a NUL */

struct sha256 {
    void *ctx; /* EVP_MD_CTX *; NULL once final or freed */
};

/* Start a digest. ERR_NOMEM when libcrypto cannot make a context,
 * ERR_UNSUPPORTED when it cannot be loaded (common/lazylib.h). */
int sha256_init(struct sha256 *h, struct err *e) CK_WUR;

/* Add bytes. */
void sha256_update(struct sha256 *h, const void *data, size_t n);

/* The digest as hex into out[SHA256_HEX]; frees the context. */
void sha256_final(struct sha256 *h, char *out);

/* Drop a digest without finishing it. Accepts a zeroed or finished one. */
void sha256_free(struct sha256 *h);

/* Hash a whole file; *size (may be NULL) gets its length. ERR_IO names the
 * file and the reason. */
int sha256_file(const char *path, char *out, long long *size, struct err *e) CK_WUR;

/* sha256_file, remembered: a file this process hashed before and that is
 * unchanged since (the same device, inode, size, modification and change
 * times) is not read again.  Only a file last changed at least settled_s
 * seconds before it was hashed is remembered: the file system's clock
 * ticks coarsely, and a file rewritten within one tick of its hashing
 * could keep its times.  Remembers the last SHA256_MEMO_N files (by
 * inode), for one thread.  Errors as sha256_file. */
#define SHA256_MEMO_N 1024
int sha256_file_memo(const char *path, char *out, long long *size, double settled_s,
                     struct err *e) CK_WUR;

/* Answers sha256_file_memo gave without reading the file, since start. */
long sha256_memo_hits(void);

/* Hash the first `len` bytes of a file into a running digest (resuming a
 * download re-hashes what is already on disk).  ERR_IO when the file is
 * shorter or unreadable. */
int sha256_update_file(struct sha256 *h, const char *path, long long len, struct err *e) CK_WUR;

/* 1 when s is exactly 64 hex digits (either case), else 0. */
int sha256_is_hex(const char *s);

#endif
