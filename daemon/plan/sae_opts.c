/* SAE options of a run: the model name for SAE files, fixed dictionaries
 * checked by the worker.  See sae_opts.h. */
#include "daemon/plan/sae_opts.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/child.h"

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
    const char *argv[] = {worker, "--log-level", "error", "sae", dir, "--json", NULL};
    struct child c;
    char *text = NULL, *msg = NULL;
    size_t len = 0;
    int rc = child_capture(argv, SAE_OPTS_TIMEOUT_S, &c, &text, &len, &msg, e);
    if (rc < 0)
        return rc;
    if (!c.ended || !WIFEXITED(c.status) || WEXITSTATUS(c.status) == 127) {
        char how[128];
        child_describe(&c, how, sizeof how);
        rc = err_set(e, ERR_CHILD, worker, "cannot run '%s sae' (%s)", worker, how);
    } else if (WEXITSTATUS(c.status) != 0) {
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
