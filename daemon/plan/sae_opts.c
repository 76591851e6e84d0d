/* SAE options of a run: the model name for SAE files, fixed dictionaries
 * checked by the worker.  See sae_opts.h. */
#include "daemon/plan/sae_opts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void sae_opts_model_name(const char *source, const char *run, char *out, size_t n)
{
    if (strncmp(source, "hf://", 5) == 0) {
        const char *repo = source + 5;
        size_t len = strlen(repo);
        while (len && repo[len - 1] == '/')
            len--;
        const char *slash = memchr(repo, '/', len);
        if (slash && slash + 1 < repo + len) {
            snprintf(out, n, "%.*s", (int)(repo + len - slash - 1), slash + 1);
            return;
        }
    }
    snprintf(out, n, "%s", run);
}

/* All of fd into a malloc'd NUL-terminated buffer, or NULL. */
static char *read_all(int fd)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    if (buf)
        buf[len] = '\0';
    return buf;
}

/* The value of error="..." in the last logfmt line of text, into out. */
static void last_error(const char *text, char *out, size_t n)
{
    const char *p = text, *hit = NULL;
    while ((p = strstr(p, "error=\""))) {
        hit = p + 7;
        p = hit;
    }
    if (!hit) {
        snprintf(out, n, "%s", text[0] ? text : "no message");
        out[strcspn(out, "\n")] = '\0';
        return;
    }
    size_t k = 0;
    for (; *hit && *hit != '"' && k + 1 < n; hit++) {
        if (*hit == '\\' && hit[1])
            hit++;
        out[k++] = *hit;
    }
    out[k] = '\0';
}

int sae_opts_check_dict(const char *worker, const char *dir, char *hook, size_t n, struct err *e)
{
    int out[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe(out) != 0 || pipe(errp) != 0) {
        if (out[0] >= 0) {
            close(out[0]);
            close(out[1]);
        }
        return err_set(e, ERR_CHILD, worker, "pipe failed");
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(out[0]), close(out[1]), close(errp[0]), close(errp[1]);
        return err_set(e, ERR_CHILD, worker, "fork failed");
    }
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(errp[1], 2);
        close(out[0]), close(out[1]), close(errp[0]), close(errp[1]);
        execlp(worker, worker, "--log-level", "error", "sae", dir, "--json", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    close(errp[1]);
    /* the outputs are a line each: stdout first cannot fill stderr's pipe */
    char *text = read_all(out[0]), *msg = read_all(errp[0]);
    close(out[0]);
    close(errp[0]);
    int status = 0, rc = 0;
    waitpid(pid, &status, 0);
    if (!text || !msg) {
        rc = err_set(e, ERR_NOMEM, dir, "out of memory");
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) == 127) {
        rc = err_set(e, ERR_CHILD, worker, "cannot run '%s sae' (status %d)", worker,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    } else if (WEXITSTATUS(status) != 0) {
        char why[ERR_MSG_MAX];
        last_error(msg, why, sizeof why);
        rc = err_set(e, ERR_INVALID, dir, "not a dictionary ckptd reads: %s", why);
    } else {
        json_t *j = json_loads(text, 0, NULL);
        const char *h = json_string_value(json_object_get(j, "hook_name"));
        if (!json_is_object(j))
            rc = err_set(e, ERR_CHILD, worker, "'sae --json' printed no JSON object");
        else
            snprintf(hook, n, "%s", h ? h : "");
        json_decref(j);
    }
    free(text);
    free(msg);
    return rc;
}
