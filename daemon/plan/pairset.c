#include "daemon/plan/pairset.h"

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

int pairset_prepare(const char *worker, const char *file, const char *tokenizer,
                    const char *data_dir, char *out, size_t n, struct err *e)
{
    char hf[SHA256_HEX], hk[SHA256_HEX], key[SHA256_HEX];
    struct sha256 h;
    int rc;
    if ((rc = sha256_file(file, hf, NULL, e)) < 0)
        return rc;
    if (tokenizer) {
        if ((rc = sha256_file(tokenizer, hk, NULL, e)) < 0)
            return rc;
    } else {
        if ((rc = sha256_init(&h, e)) < 0)
            return rc;
        sha256_final(&h, hk);
    }
    if ((rc = sha256_init(&h, e)) < 0)
        return rc;
    sha256_update(&h, hk, 64);
    sha256_update(&h, hf, 64);
    sha256_final(&h, key);
    if ((rc = path_mkdir_p(data_dir, e)) < 0)
        return rc;
    char dir[PATH_MAX], path[PATH_MAX], tmp[PATH_MAX + 32];
    if (!realpath(data_dir, dir))
        return err_set(e, ERR_IO, data_dir, "cannot resolve: %s", strerror(errno));
    if ((size_t)snprintf(path, sizeof path, "%s/pairs-%.16s.json", dir, key) >= sizeof path ||
        (size_t)snprintf(out, n, "%s", path) >= n)
        return err_set(e, ERR_INVALID, data_dir, "path too long");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        log_info("pair set already checked", "file=%s tokens=%s", log_quote(file),
                 log_quote(path));
        return 0;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp%ld.json", path, (long)getpid());
    pid_t pid = fork();
    if (pid < 0)
        return err_set(e, ERR_CHILD, worker, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        dup2(STDERR_FILENO, STDOUT_FILENO); /* its summary goes with the logs */
        if (tokenizer)
            execlp(worker, worker, "pairs", "check", file, "--tokenizer", tokenizer, "--out", tmp,
                   (char *)NULL);
        else
            execlp(worker, worker, "pairs", "check", file, "--out", tmp, (char *)NULL);
        fprintf(stderr, "cannot execute %s: %s\n", worker, strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        unlink(tmp);
        return err_set(e, ERR_CHILD, file, "'%s pairs check' refused it (status %d; its message "
                       "is above)", worker, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    if (rename(tmp, path) != 0) {
        rc = err_set(e, ERR_IO, path, "cannot rename into place: %s", strerror(errno));
        unlink(tmp);
        return rc;
    }
    log_info("pair set checked", "file=%s tokens=%s", log_quote(file), log_quote(path));
    return 0;
}
