/*
 * path.h - small filesystem helpers both binaries use.
 *
 *     if (path_mkdir_p("var/spool/x", &e) < 0) ...
 *     if (path_write_atomic("var/x/manifest.json", text, &e) < 0) ...
 */
#ifndef CKPTD_PATH_H
#define CKPTD_PATH_H

#include "common/err.h"

/* Create a directory and its missing parents (mode 0777 & umask). An
 * existing directory is success. ERR_IO names the part that failed. */
int path_mkdir_p(const char *dir, struct err *e) CK_WUR;

/* Replace path with the NUL-terminated text: atomic_file_write (written
 * beside it, fsync'ed, renamed over it, the directory fsync'ed).  A
 * reader sees the old file or the whole new one; on failure path is
 * untouched.  ERR_IO naming the step that failed, ERR_INVALID for a path
 * too long. */
int path_write_atomic(const char *path, const char *text, struct err *e) CK_WUR;

#endif
