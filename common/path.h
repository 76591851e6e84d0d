/*
 * path.h - small filesystem helpers both binaries use.
 *
 *     if (path_mkdir_p("var/spool/x", &e) < 0) ...
 */
#ifndef CKPTD_PATH_H
#define CKPTD_PATH_H

#include "err.h"

/* Create a directory and its missing parents (mode 0777 & umask). An
 * existing directory is success. ERR_IO names the part that failed. */
int path_mkdir_p(const char *dir, struct err *e) CK_WUR;

#endif
