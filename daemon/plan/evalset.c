#include "daemon/plan/evalset.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/child.h"
#include "common/log.h"
#include "common/path.h"
#include "common/sha256.h"

const char *evalset_data_dir(void)
{
    const char *d = getenv("CKPTD_DATA");
    return d && *d ? d : "var/data";
}

int evalset_tokenize(const char *worker, const char *text, const char *tokenizer,
                     const char *data_dir, char *out, size_t n, struct err *e)
{
    char ht[SHA256_HEX], hk[SHA256_HEX], key[SHA256_HEX];
    int rc;
    if ((rc = sha256_file(tokenizer, hk, NULL, e)) < 0 ||
        (rc = sha256_file(text, ht, NULL, e)) < 0)
        return rc;
    struct sha256 h;
    if ((rc = sha256_init(&h, e)) < 0)
        return rc;
    sha256_update(&h, hk, 64);
    sha256_update(&h, ht, 64);
    sha256_final(&h, key);
    if ((rc = path_mkdir_p(data_dir, e)) < 0)
        return rc;
    char dir[PATH_MAX], path[PATH_MAX];
    if (!realpath(data_dir, dir))
        return err_set(e, ERR_IO, data_dir, "cannot resolve: %s", strerror(errno));
    if ((size_t)snprintf(path, sizeof path, "%s/eval-%.16s.u32", dir, key) >= sizeof path ||
        (size_t)snprintf(out, n, "%s", path) >= n)
        return err_set(e, ERR_INVALID, data_dir, "path too long");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        log_info("eval text already tokenized", "text=%s tokens=%s", log_quote(text),
                 log_quote(path));
        return 0;
    }
    /* the worker writes the file atomically (common/atomic_file.h): a
     * concurrent add-run or a crash never leaves half a token file */
    const char *argv[] = {worker, "tokenize", "--tokenizer", tokenizer, "--in", text, "--out", path, NULL};
    struct child_opts o = {.in_fd = -1, .out_fd = -1, .err_fd = -1};
    struct child c;
    if ((rc = child_spawn(&c, argv, &o, e)) < 0)
        return rc;
    child_wait(&c);
    if (!child_ok(&c)) {
        char how[128];
        child_describe(&c, how, sizeof how);
        return err_set(e, ERR_CHILD, text, "'%s tokenize --tokenizer %s' failed (%s; its message is above)",
                       worker, tokenizer, how);
    }
    log_info("eval text tokenized", "text=%s tokens=%s", log_quote(text), log_quote(path));
    return 0;
}
