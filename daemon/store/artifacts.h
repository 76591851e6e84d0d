/*
 * artifacts.h - files battery items write (SAE dictionaries): where they
 * live, and their record in the `artifacts` table.
 *
 * Every worker of every node writes under one directory, the config's
 * `artifact_dir`, one subdirectory per run and step:
 *
 *     ARTIFACT_DIR/<run name>/step<N>/<item>/...
 *
 * In a cluster it must be a filesystem every node mounts at the same path:
 * a job on one node reads what the previous checkpoint's job wrote on
 * another (`--prev-artifacts`).  A claim whose items need artifacts gets
 * `--artifacts` that step's directory; before its worker starts, the
 * claimed items' own subdirectories are emptied (artifacts_prepare), so
 * after a successful run they hold that run's files alone, and a failed
 * attempt's half-written files are gone before the next one.  After the
 * worker succeeds, every regular file under them is hashed
 * (artifacts_scan, before the transaction) and recorded with the rows
 * (artifacts_record, inside it): run, step, job, kind = the item, path
 * relative to artifact_dir, sha256, size.  A failed worker's files are
 * never recorded.
 *
 *     struct artifact_list l = {0};
 *     artifacts_prepare(root, "pythia-70m", 1000, items, n, dir, sizeof dir, &e);
 *     ... worker runs with --artifacts dir ...
 *     artifacts_scan(&l, root, "pythia-70m", 1000, "sae", job_id, &e);
 *     ... BEGIN ... artifacts_record(db, run_id, 1000, &l, &e) ... COMMIT ...
 *     artifacts_list_free(&l);
 */
#ifndef CKPTD_ARTIFACTS_H
#define CKPTD_ARTIFACTS_H

#include <stddef.h>

#include "common/err.h"
#include "common/sha256.h"

#define ARTIFACT_PATH_MAX 1024
#define ARTIFACT_DEPTH_MAX 16 /* directory levels below an item's directory */

struct artifact_file {
    char path[ARTIFACT_PATH_MAX]; /* relative to artifact_dir */
    char kind[64];                /* the item */
    char sha256[SHA256_HEX];
    long long size;
    long long job_id;
};

struct artifact_list {
    int n, cap;
    struct artifact_file *f;
    int nkinds;            /* items scanned, with or without files */
    char kinds[64][64];
};

struct db;

/* root/<run>/step<step> into out (n bytes).  ERR_INVALID when the run's
 * name cannot be a relative path (an empty, "." or ".." component, a
 * leading '/') or the path is too long. */
int artifacts_step_dir(char *out, size_t n, const char *root, const char *run, long long step,
                       struct err *e) CK_WUR;

/* Before a worker: the step directory made (into dir_out), and the
 * subdirectory of each of the `nitems` items removed with everything in
 * it.  ERR_IO names what could not be created or removed. */
int artifacts_prepare(const char *root, const char *run, long long step, const char *const *items,
                      int nitems, char *dir_out, size_t n, struct err *e) CK_WUR;

/* Append every regular file below root/<run>/step<step>/<item>/ to l, with
 * its sha256 and size (symbolic links and other special files are skipped
 * with a warning; no directory is fine).  The item counts as scanned even
 * without files.  ERR_IO / ERR_NOMEM; on error l keeps what it had. */
int artifacts_scan(struct artifact_list *l, const char *root, const char *run, long long step,
                   const char *item, long long job_id, struct err *e) CK_WUR;

/* Inside the caller's transaction: for every scanned item, rows of that
 * step and kind whose file is no longer there are deleted and the files of
 * l upserted (a new job of the item replaces job_id, sha256 and size). */
int artifacts_record(struct db *db, long long run_id, long long step,
                     const struct artifact_list *l, struct err *e) CK_WUR;

void artifacts_list_free(struct artifact_list *l);

#endif
