/*
 * atomic_file.h - the one way this project replaces a file.
 *
 * A reader sees the old file or the whole new one, never a part, and once
 * the commit has returned the new file survives a crash: it is written to a
 * temporary beside the target (same directory, so the rename cannot cross
 * file systems), flushed, fsync'ed, closed, renamed over the target, and
 * the directory is fsync'ed so the rename itself is on disk.  Whatever
 * fails, the temporary is removed and the target is untouched.  The
 * temporary is named PATH.tmp<pid>.<n>, unique within the machine, so
 * concurrent writers of one target never share a temporary; the last
 * rename wins.
 *
 * Streaming, for big or piecewise files (stdio, buffered):
 *
 *     struct atomic_file af;
 *     if (atomic_file_open(&af, "out/model.safetensors", &e) < 0) return ...;
 *     fwrite(header, 1, n, af.f);  ...  fprintf(af.f, "...");
 *     if (atomic_file_commit(&af, &e) < 0) return ...;   // or atomic_file_abort(&af)
 *
 * One buffer:   atomic_file_write("out/config.json", text, strlen(text), &e);
 * A file written elsewhere (a verified download), put in place durably:
 *               atomic_file_place("cache/partial/x", "cache/blobs/ab/x", &e);
 * A link replacing whatever is at its path:
 *               atomic_file_link("../../blobs/ab", "cache/snapshots/k/config.json", 1, &e);
 */
#ifndef CKPTD_ATOMIC_FILE_H
#define CKPTD_ATOMIC_FILE_H

#include <stddef.h>
#include <stdio.h>

#include "common/err.h"

#define ATOMIC_FILE_PATH_MAX 4096

struct atomic_file {
    FILE *f;                         /* write the contents here; NULL once committed or aborted */
    char path[ATOMIC_FILE_PATH_MAX]; /* the target */
    char tmp[ATOMIC_FILE_PATH_MAX];  /* the temporary beside it */
};

/* Start replacing path: create its temporary (mode 0666 less the umask).
 * ERR_INVALID for a path too long, ERR_IO (errno's text) when the
 * temporary cannot be made; then af->f is NULL and nothing exists. */
int atomic_file_open(struct atomic_file *af, const char *path, struct err *e) CK_WUR;

/* Make what was written the file at path: flush, fsync, close, rename,
 * fsync the directory.  On failure (ERR_IO naming the step) the temporary
 * is gone and path untouched, except when only the directory's fsync
 * failed: then the new file is in place but maybe not yet durable.  af->f
 * is NULL afterwards either way. */
int atomic_file_commit(struct atomic_file *af, struct err *e) CK_WUR;

/* Give up: close and remove the temporary; path untouched.  Does nothing
 * after a commit or an abort, or on a zeroed struct. */
void atomic_file_abort(struct atomic_file *af);

/* Replace path with the n bytes at data (open, write, commit). */
int atomic_file_write(const char *path, const void *data, size_t n, struct err *e) CK_WUR;

/* Put the finished file src at path (same file system): fsync src, rename
 * it over path, fsync path's directory.  On failure src stays where it
 * was.  ERR_IO naming the step. */
int atomic_file_place(const char *src, const char *path, struct err *e) CK_WUR;

/* Make path a link to target, replacing what is there in one step: a hard
 * link (symbolic 0; target on the same file system) or a symbolic one
 * (symbolic 1; target stored as given), made under a temporary name
 * beside path and renamed over it, then the directory fsync'ed.  On
 * failure path is untouched.  ERR_IO naming the step (errno's text: EXDEV
 * for a hard link across file systems). */
int atomic_file_link(const char *target, const char *path, int symbolic, struct err *e) CK_WUR;

#endif
