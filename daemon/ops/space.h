/*
 * space.h - the free disk space a node needs to take work.
 *
 * A node writes into three directories: spool_dir (a worker's output until
 * it is stored), cache_dir (downloads) and artifact_dir (files items
 * write).  When one of them has less than disk_min_free_mb free, work that
 * fails there fails for want of space, not by its own fault: `ckptd serve`
 * gives such jobs back without counting the attempt (the error they record
 * says why), and claims nothing new until the space returns, saying once
 * when it stops and once when it resumes.  So a full disk costs time, never
 * jobs: they do not run out of attempts while an operator clears space.
 *
 *     char why[512];
 *     if (space_short(&cfg, why, sizeof why))
 *         ...  // "spool_dir /var/lib/ckptd/spool has 12 KB free, less than
 *              //  disk_min_free_mb (64 MB): free space there"
 */
#ifndef CKPTD_SPACE_H
#define CKPTD_SPACE_H

#include <stddef.h>

#include "common/err.h"

struct daemon_config;

/* Bytes free to an unprivileged writer on the filesystem holding `path`
 * (its nearest existing ancestor when it does not exist yet).  ERR_IO
 * naming the path when statvfs fails. */
int space_free(const char *path, long long *bytes, struct err *e) CK_WUR;

/* 1 when spool_dir, cache_dir or artifact_dir (in that order) has less
 * than c->disk_min_free_mb free, with `why` naming the first such
 * directory, what it has and what to do; 0 when all have room (or the
 * check is off: disk_min_free_mb 0).  A directory whose space cannot be
 * read counts as having room (the write itself will say what is wrong). */
int space_short(const struct daemon_config *c, char *why, size_t n);

#endif
