#include "daemon/plan/evalset.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
    char dir[PATH_MAX], path[PATH_MAX], tmp[PATH_MAX + 32];
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
    snprintf(tmp, sizeof tmp, "%s.tmp%ld.u32", path, (long)getpid());
    pid_t pid = fork();
    if (pid < 0)
        return err_set(e, ERR_CHILD, worker, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        execlp(worker, worker, "tokenize", "--tokenizer", tokenizer, "--in", text, "--out", tmp,
               (char *)NULL);
        fprintf(stderr, "cannot execute %s: %s\n", worker, strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        unlink(tmp);
        return err_set(e, ERR_CHILD, text,
                       "'%s tokenize --tokenizer %s' failed (status %d; its message is above)",
                       worker, tokenizer, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    if (rename(tmp, path) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot rename into place: %s", strerror(errno));
        unlink(tmp);
        return rc;
    }
    log_info("eval text tokenized", "text=%s tokens=%s", log_quote(text), log_quote(path));
    return 0;
}
