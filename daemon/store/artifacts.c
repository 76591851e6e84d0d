#include "daemon/store/artifacts.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/path.h"
#include "daemon/base/db.h"

int artifacts_step_dir(char *out, size_t n, const char *root, const char *run, long long step,
                       struct err *e)
{
    /* the name becomes directories: every component a plain name */
    const char *p = run;
    if (!*run || *run == '/')
        return err_set(e, ERR_INVALID, run, "a run name that is not a relative path cannot name "
                       "an artifact directory");
    while (*p) {
        size_t len = strcspn(p, "/");
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return err_set(e, ERR_INVALID, run, "run name has an empty, '.' or '..' component: "
                           "it cannot name an artifact directory");
        p += len;
        if (*p == '/' && !*++p)
            return err_set(e, ERR_INVALID, run, "run name ends with '/'");
    }
    int w = snprintf(out, n, "%s/%s/step%lld", root, run, step);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, run, "artifact path too long");
    return 0;
}

/* Remove path and, for a directory, everything below it (links are removed,
 * not followed).  A missing path is fine. */
static int remove_tree(const char *path, int depth, struct err *e)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT ? 0 : err_set(e, ERR_IO, path, "cannot stat: %s", strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        if (depth > ARTIFACT_DEPTH_MAX)
            return err_set(e, ERR_IO, path, "more than %d directory levels", ARTIFACT_DEPTH_MAX);
        DIR *d = opendir(path);
        if (!d)
            return err_set(e, ERR_IO, path, "cannot open: %s", strerror(errno));
        struct dirent *de;
        int rc = 0;
        while (rc == 0 && (de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char sub[ARTIFACT_PATH_MAX * 2];
            if (snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) >= (int)sizeof sub)
                rc = err_set(e, ERR_IO, path, "path too long below it");
            else
                rc = remove_tree(sub, depth + 1, e);
        }
        closedir(d);
        if (rc < 0)
            return rc;
        if (rmdir(path) != 0)
            return err_set(e, ERR_IO, path, "cannot remove: %s", strerror(errno));
        return 0;
    }
    if (unlink(path) != 0)
        return err_set(e, ERR_IO, path, "cannot remove: %s", strerror(errno));
    return 0;
}

int artifacts_prepare(const char *root, const char *run, long long step, const char *const *items,
                      int nitems, char *dir_out, size_t n, struct err *e)
{
    int rc = artifacts_step_dir(dir_out, n, root, run, step, e);
    if (rc < 0 || (rc = path_mkdir_p(dir_out, e)) < 0)
        return rc;
    for (int i = 0; i < nitems && rc == 0; i++) {
        char sub[ARTIFACT_PATH_MAX * 2];
        snprintf(sub, sizeof sub, "%s/%s", dir_out, items[i]);
        rc = remove_tree(sub, 0, e);
    }
    return rc;
}

static int list_add(struct artifact_list *l, const struct artifact_file *f, struct err *e)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        struct artifact_file *nf = realloc(l->f, (size_t)cap * sizeof *nf);
        if (!nf)
            return err_set(e, ERR_NOMEM, f->path, "out of memory");
        l->f = nf;
        l->cap = cap;
    }
    l->f[l->n++] = *f;
    return 0;
}

/* Files below abs (whose path relative to the root is rel). */
static int scan_dir(struct artifact_list *l, const char *abs, const char *rel, int depth,
                    const struct artifact_file *tmpl, struct err *e)
{
    if (depth > ARTIFACT_DEPTH_MAX)
        return err_set(e, ERR_IO, abs, "more than %d directory levels", ARTIFACT_DEPTH_MAX);
    DIR *d = opendir(abs);
    if (!d)
        return errno == ENOENT && depth == 0 ? 0 : err_set(e, ERR_IO, abs, "cannot open: %s", strerror(errno));
    /* names sorted, so the rows come in a stable order */
    char **names = NULL;
    int nn = 0, cap = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (nn == cap) {
            cap = cap ? 2 * cap : 16;
            char **nv = realloc(names, (size_t)cap * sizeof *nv);
            if (!nv) {
                rc = err_set(e, ERR_NOMEM, abs, "out of memory");
                break;
            }
            names = nv;
        }
        if (!(names[nn] = strdup(de->d_name))) {
            rc = err_set(e, ERR_NOMEM, abs, "out of memory");
            break;
        }
        nn++;
    }
    closedir(d);
    for (int i = 1; i < nn; i++) /* insertion sort: a directory holds a few files */
        for (int k = i; k > 0 && strcmp(names[k - 1], names[k]) > 0; k--) {
            char *t = names[k];
            names[k] = names[k - 1];
            names[k - 1] = t;
        }
    for (int i = 0; i < nn && rc == 0; i++) {
        char a[ARTIFACT_PATH_MAX * 2];
        struct artifact_file f = *tmpl;
        if (snprintf(a, sizeof a, "%s/%s", abs, names[i]) >= (int)sizeof a ||
            snprintf(f.path, sizeof f.path, "%s/%s", rel, names[i]) >= (int)sizeof f.path) {
            rc = err_set(e, ERR_IO, abs, "artifact path too long: %s", names[i]);
            break;
        }
        struct stat sb;
        if (lstat(a, &sb) != 0) {
            rc = err_set(e, ERR_IO, a, "cannot stat: %s", strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            rc = scan_dir(l, a, f.path, depth + 1, tmpl, e);
        } else if (!S_ISREG(sb.st_mode)) {
            log_warn("artifact skipped: not a regular file", "path=%s", log_quote(a));
        } else if ((rc = sha256_file(a, f.sha256, &f.size, e)) == 0) {
            rc = list_add(l, &f, e);
        }
    }
    for (int i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    return rc;
}

int artifacts_scan(struct artifact_list *l, const char *root, const char *run, long long step,
                   const char *item, long long job_id, struct err *e)
{
    char dir[ARTIFACT_PATH_MAX], abs[ARTIFACT_PATH_MAX * 2];
    int rc = artifacts_step_dir(dir, sizeof dir, root, run, step, e);
    if (rc < 0)
        return rc;
    if ((size_t)l->nkinds >= sizeof l->kinds / sizeof *l->kinds || strlen(item) >= sizeof l->kinds[0])
        return err_set(e, ERR_INVALID, item, "too many artifact kinds in one claim");
    struct artifact_file tmpl;
    memset(&tmpl, 0, sizeof tmpl);
    snprintf(tmpl.kind, sizeof tmpl.kind, "%s", item);
    tmpl.job_id = job_id;
    char rel[ARTIFACT_PATH_MAX];
    snprintf(abs, sizeof abs, "%s/%s", dir, item);
    if (snprintf(rel, sizeof rel, "%s/step%lld/%s", run, step, item) >= (int)sizeof rel)
        return err_set(e, ERR_INVALID, run, "artifact path too long");
    int had = l->n;
    if ((rc = scan_dir(l, abs, rel, 0, &tmpl, e)) < 0) {
        l->n = had;
        return rc;
    }
    snprintf(l->kinds[l->nkinds++], sizeof l->kinds[0], "%s", item);
    return 0;
}

int artifacts_record(struct db *db, long long run_id, long long step,
                     const struct artifact_list *l, struct err *e)
{
    if (l->nkinds == 0)
        return 0;
    const char **kinds = calloc((size_t)l->nkinds, sizeof *kinds);
    const char **paths = calloc((size_t)l->n + 1, sizeof *paths);
    const char **fkinds = calloc((size_t)l->n + 1, sizeof *fkinds);
    const char **shas = calloc((size_t)l->n + 1, sizeof *shas);
    long long *sizes = calloc((size_t)l->n + 1, sizeof *sizes), *jobs = calloc((size_t)l->n + 1, sizeof *jobs);
    size_t acap = (size_t)l->n * 24 + 16;
    char *sizes_arr = malloc(acap), *jobs_arr = malloc(acap);
    char *kinds_arr = NULL, *paths_arr = NULL, *fkinds_arr = NULL, *shas_arr = NULL;
    int rc = 0;
    if (!kinds || !paths || !fkinds || !shas || !sizes || !jobs || !sizes_arr || !jobs_arr) {
        rc = err_set(e, ERR_NOMEM, "artifacts", "out of memory");
        goto out;
    }
    for (int i = 0; i < l->nkinds; i++)
        kinds[i] = l->kinds[i];
    for (int i = 0; i < l->n; i++) {
        paths[i] = l->f[i].path;
        fkinds[i] = l->f[i].kind;
        shas[i] = l->f[i].sha256;
        sizes[i] = l->f[i].size;
        jobs[i] = l->f[i].job_id;
    }
    db_int_array(sizes_arr, acap, sizes, l->n);
    db_int_array(jobs_arr, acap, jobs, l->n);
    kinds_arr = db_text_array(kinds, l->nkinds);
    paths_arr = db_text_array(paths, l->n);
    fkinds_arr = db_text_array(fkinds, l->n);
    shas_arr = db_text_array(shas, l->n);
    if (!kinds_arr || !paths_arr || !fkinds_arr || !shas_arr) {
        rc = err_set(e, ERR_NOMEM, "artifacts", "out of memory");
        goto out;
    }
    char run[32], st[32];
    snprintf(run, sizeof run, "%lld", run_id);
    snprintf(st, sizeof st, "%lld", step);
    const char *p1[4] = {run, st, kinds_arr, paths_arr};
    const char *p2[7] = {run, st, jobs_arr, fkinds_arr, paths_arr, shas_arr, sizes_arr};
    if ((rc = db_run(db,
            "DELETE FROM artifacts WHERE run_id = $1 AND step = $2 AND kind = ANY($3::text[])"
            "   AND NOT (path = ANY($4::text[]))", 4, p1, e)) < 0 ||
        (rc = db_run(db,
            "INSERT INTO artifacts (run_id, step, job_id, kind, path, sha256, size)"
            " SELECT $1, $2, x.job, x.kind, x.path, x.sha, x.size"
            " FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[])"
            "   AS x(job, kind, path, sha, size)"
            " ON CONFLICT (run_id, step, kind, path) DO UPDATE SET job_id = EXCLUDED.job_id,"
            "   sha256 = EXCLUDED.sha256, size = EXCLUDED.size, created_at = now()",
            7, p2, e)) < 0)
        goto out;
out:
    free(kinds);
    free(paths);
    free(fkinds);
    free(shas);
    free(sizes);
    free(jobs);
    free(sizes_arr);
    free(jobs_arr);
    free(kinds_arr);
    free(paths_arr);
    free(fkinds_arr);
    free(shas_arr);
    return rc;
}

void artifacts_list_free(struct artifact_list *l)
{
    if (!l)
        return;
    free(l->f);
    memset(l, 0, sizeof *l);
}
