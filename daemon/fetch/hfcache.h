/*
 * hfcache.h - the HuggingFace cache as huggingface_hub lays it out, and the
 * environment variables that place it, take it offline and carry the token.
 *
 * What ckptd downloads from an hf:// source is also put where
 * transformers, TransformerLens and nnsight look first, so a researcher who
 * opens the same checkpoint never downloads it again:
 *
 *   $HF_HUB_CACHE/
 *     models--ORG--NAME/
 *       blobs/<etag>                 the content, named by the hub's ETag (an
 *                                    LFS file's sha256, else the git blob sha1);
 *                                    a hard link to ckptd's blob (a copy
 *                                    across file systems): no byte is
 *                                    downloaded twice
 *       refs/<revision>              the commit (40 hex digits, no newline)
 *       snapshots/<commit>/<file>    a relative symlink: ../../blobs/<etag>
 *                                    (one ../ more per directory in <file>)
 *     .locks/models--ORG--NAME/<etag>.lock
 *     CACHEDIR.TAG
 *
 * Writers agree through huggingface_hub's convention: a blob is written
 * under flock(LOCK_EX) of its .lock file (Python's filelock takes the same
 * lock), first under a temporary name, then renamed into place; snapshot
 * links and refs are replaced by rename(), so a reader sees the old entry
 * or the new one, never a half-written one.  A ref is written after its
 * snapshot's files, and only when it changes.  Nothing is ever deleted: a
 * revision that moved keeps its old snapshot, as huggingface_hub keeps it.
 *
 * The environment, with huggingface_hub's precedence:
 *   hub cache   HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub
 *   HF_HOME     HF_HOME, else $XDG_CACHE_HOME/huggingface, else
 *               ~/.cache/huggingface  (a leading ~ and $VARS are expanded)
 *   offline     HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE: 1, ON, YES or TRUE
 *               (any case)
 *   token       HF_TOKEN, else HUGGING_FACE_HUB_TOKEN, else the file
 *               HF_TOKEN_PATH (default $HF_HOME/token); line breaks and
 *               surrounding blanks removed, empty means none
 *
 *     char hub[4096];
 *     hfcache_dir(hub, sizeof hub);
 *     hfcache_put(hub, "EleutherAI/pythia-70m", commit, "config.json", etag, "/cache/blobs/…", &e);
 *     hfcache_set_ref(hub, "EleutherAI/pythia-70m", "step1000", commit, &e);
 */
#ifndef CKPTD_HFCACHE_H
#define CKPTD_HFCACHE_H

#include <stddef.h>

#include "common/err.h"

#define HFCACHE_LOCK_WAIT_S 2.0

/* ---- the environment ---- */

/* HF_HOME as huggingface_hub resolves it; "" when not even HOME is set. */
void hfcache_home(char *out, size_t n);

/* The hub cache directory; "" when it cannot be placed. */
void hfcache_dir(char *out, size_t n);

/* 1 when HF_HUB_OFFLINE (or, unset or empty, TRANSFORMERS_OFFLINE) is true. */
int hfcache_offline(void);

/* The bearer token into out: 1 found (*from names where: the variable or
 * the file), 0 none.  A file that cannot be read counts as none. */
int hfcache_token(char *out, size_t n, char *from, size_t from_n);

/* Expand a leading "~" and $NAME / ${NAME} (unset names are kept as
 * written, like Python's os.path.expandvars). */
void hfcache_expand(const char *in, char *out, size_t n);

/* ---- the layout ---- */

/* <hub_dir>/models--ORG--NAME.  ERR_INVALID for a repo that is not ORG/NAME
 * or a path too long. */
int hfcache_repo_dir(const char *hub_dir, const char *repo, char *out, size_t n, struct err *e) CK_WUR;

/* The commit refs/<revision> holds (or the revision itself when it is a
 * commit id): 1 and the commit, 0 when there is none. */
int hfcache_ref(const char *hub_dir, const char *repo, const char *revision, char *commit, size_t n);

/* ---- writing ---- */

/* Put one file of a commit: blobs/<etag> (a hard link to src, which must
 * hold exactly the content the ETag names, else a copy) unless it is
 * there, then snapshots/<commit>/<file> pointing at it.  etag: 40 or 64
 * lowercase hex digits; commit: 40; file: a relative name without "." or
 * ".." components.  ERR_INVALID for bad names; ERR_IO naming the path
 * otherwise, also when another process holds the blob's lock for more than
 * HFCACHE_LOCK_WAIT_S (it is writing the same blob: this call does not wait
 * for it, the caller's loop must not stall).  A failure leaves no partial
 * file behind. */
int hfcache_put(const char *hub_dir, const char *repo, const char *commit, const char *file, const char *etag,
                const char *src, struct err *e) CK_WUR;

/* refs/<revision> := commit, atomically, when it differs. */
int hfcache_set_ref(const char *hub_dir, const char *repo, const char *revision, const char *commit,
                    struct err *e) CK_WUR;

/* The git blob id of a file (sha1 of "blob <size>\0" and the content):
 * the hub's ETag of a file not stored with LFS.  out: 41 bytes. */
int hfcache_git_sha1(const char *path, char *out, struct err *e) CK_WUR;

#endif
