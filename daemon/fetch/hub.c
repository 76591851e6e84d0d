#include "daemon/fetch/hub.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_err.h"
#include "daemon/plan/source.h"

const char *const hub_weight_names[4] = {"model.safetensors", "model.safetensors.index.json",
                                          "pytorch_model.bin", "pytorch_model.bin.index.json"};

static int valid_repo_part(const char *s, size_t len)
{
    if (len == 0 || len > 96 || s[0] == '.' || s[0] == '-')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-_.", s[i]))
            return 0;
    for (size_t i = 0; i + 1 < len; i++)
        if (s[i] == '.' && s[i + 1] == '.')
            return 0;
    return 1;
}

int hub_source_parse(struct hub_source *s, const char *source, struct err *e)
{
    memset(s, 0, sizeof *s);
    int rc = source_check(source, e);
    if (rc < 0)
        return rc;
    if (snprintf(s->text, sizeof s->text, "%s", source) >= (int)sizeof s->text)
        return err_set(e, ERR_INVALID, "source", "source too long");
    if (strncmp(source, "hf://", 5) == 0) {
        const char *repo = source + 5;
        size_t len = strlen(repo);
        while (len && repo[len - 1] == '/')
            len--;
        const char *slash = memchr(repo, '/', len);
        if (!slash || !valid_repo_part(repo, (size_t)(slash - repo)) ||
            !valid_repo_part(slash + 1, len - (size_t)(slash - repo) - 1))
            return err_set(e, ERR_INVALID, source, "a hub source is hf://ORG/NAME (letters, digits, - _ .)");
        s->kind = HUB_HF;
        snprintf(s->repo, sizeof s->repo, "%.*s", (int)len, repo);
        const char *ep = getenv("HF_ENDPOINT");
        if (!ep || !*ep)
            ep = HUB_DEFAULT_ENDPOINT;
        if (strncmp(ep, "http://", 7) != 0 && strncmp(ep, "https://", 8) != 0)
            return err_set(e, ERR_INVALID, "HF_ENDPOINT", "'%s' is not an http(s) URL", ep);
        if (snprintf(s->endpoint, sizeof s->endpoint, "%s", ep) >= (int)sizeof s->endpoint)
            return err_set(e, ERR_INVALID, "HF_ENDPOINT", "too long");
        size_t el = strlen(s->endpoint);
        while (el > 8 && s->endpoint[el - 1] == '/')
            s->endpoint[--el] = '\0';
        return 0;
    }
    s->kind = strncmp(source, "http://", 7) == 0 || strncmp(source, "https://", 8) == 0 ? HUB_HTTP
                                                                                         : HUB_FILE;
    return 0;
}

void hub_revision(long long step, char *out, size_t n) { snprintf(out, n, "step%lld", step); }

int hub_file_url(const struct hub_source *s, const char *revision, long long step,
                 const char *file, char *out, size_t n, struct err *e)
{
    int w;
    if (s->kind == HUB_HF) {
        w = snprintf(out, n, "%s/%s/resolve/%s/%s", s->endpoint, s->repo, revision, file);
    } else {
        char dir[HUB_URL_MAX];
        int rc = source_checkpoint_url(s->text, step, dir, sizeof dir, e);
        if (rc < 0)
            return rc;
        if (s->kind == HUB_FILE && (rc = source_local_path(dir, dir, sizeof dir, e)) < 0)
            return rc;
        size_t len = strlen(dir);
        w = snprintf(out, n, "%s%s%s", dir, len && dir[len - 1] == '/' ? "" : "/", file);
    }
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, s->text, "URL of %s too long", file);
    return 0;
}

int hub_tree_url(const struct hub_source *s, const char *revision, char *out, size_t n, struct err *e)
{
    if (s->kind != HUB_HF)
        return err_set(e, ERR_INVALID, s->text, "not a hub source");
    int w = snprintf(out, n, "%s/api/models/%s/tree/%s", s->endpoint, s->repo, revision);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, s->text, "tree URL too long");
    return 0;
}

int hub_refs_url(const struct hub_source *s, char *out, size_t n, struct err *e)
{
    if (s->kind != HUB_HF)
        return err_set(e, ERR_INVALID, s->text, "not a hub source");
    int w = snprintf(out, n, "%s/api/models/%s/refs", s->endpoint, s->repo);
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, s->text, "refs URL too long");
    return 0;
}

int hub_url_origin(const char *url, char *out, size_t n, struct err *e)
{
    const char *p = strstr(url, "://");
    if (!p || p == url)
        return err_set(e, ERR_INVALID, url, "not a URL");
    size_t slen = (size_t)(p - url);
    char scheme[16];
    if (slen >= sizeof scheme)
        return err_set(e, ERR_INVALID, url, "unknown scheme");
    for (size_t i = 0; i < slen; i++)
        scheme[i] = (char)tolower((unsigned char)url[i]);
    scheme[slen] = '\0';
    const char *h = p + 3;
    size_t hlen = strcspn(h, "/?#");
    const char *at = memchr(h, '@', hlen); /* user info is not part of the host */
    if (at) {
        hlen -= (size_t)(at + 1 - h);
        h = at + 1;
    }
    if (hlen == 0)
        return err_set(e, ERR_INVALID, url, "URL has no host");
    char host[256];
    if (hlen >= sizeof host)
        return err_set(e, ERR_INVALID, url, "host too long");
    for (size_t i = 0; i < hlen; i++)
        host[i] = (char)tolower((unsigned char)h[i]);
    host[hlen] = '\0';
    const char *colon = strrchr(host, ':');
    if (colon && strchr(colon, ']'))
        colon = NULL; /* [::1] without a port */
    int w = colon ? snprintf(out, n, "%s://%s", scheme, host)
                  : snprintf(out, n, "%s://%s:%s", scheme, host, strcmp(scheme, "https") == 0 ? "443" : "80");
    if (w < 0 || (size_t)w >= n)
        return err_set(e, ERR_INVALID, url, "origin too long");
    return 0;
}

static int name_ok(const char *name)
{
    if (!*name || name[0] == '/' || strlen(name) >= HUB_NAME_MAX)
        return 0;
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\' || *p == 0x7f)
            return 0;
    /* no ".." component, no "." component */
    const char *p = name;
    while (*p) {
        size_t len = strcspn(p, "/");
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += len;
        if (*p == '/')
            p++;
    }
    return 1;
}

int hub_files_add(struct hub_files *l, const char *name, long long size, const char *sha256,
                  struct err *e)
{
    if (!name_ok(name))
        return err_set(e, ERR_FORMAT, name, "unusable file name in a checkpoint listing");
    if (sha256 && *sha256 && !sha256_is_hex(sha256))
        return err_set(e, ERR_FORMAT, name, "'%s' is not a sha256", sha256);
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 16;
        struct hub_file *p = realloc(l->f, (size_t)nc * sizeof *p);
        if (!p)
            return err_set(e, ERR_NOMEM, name, "out of memory");
        l->f = p;
        l->cap = nc;
    }
    struct hub_file *f = &l->f[l->n++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->size = size;
    if (sha256 && *sha256)
        for (int i = 0; i < 65; i++)
            f->sha256[i] = (char)tolower((unsigned char)sha256[i]);
    return 0;
}

int hub_files_add_copy(struct hub_files *l, const struct hub_file *f, struct err *e)
{
    int rc = hub_files_add(l, f->name, f->size, f->sha256, e);
    if (rc == 0)
        snprintf(l->f[l->n - 1].etag, sizeof l->f[l->n - 1].etag, "%s", hub_etag_ok(f->etag) ? f->etag : "");
    return rc;
}

static int lower_hex(const char *s, size_t len)
{
    if (strlen(s) != len)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
            return 0;
    return 1;
}

int hub_commit_ok(const char *s) { return lower_hex(s, 40); }

int hub_etag_ok(const char *s) { return lower_hex(s, 40) || lower_hex(s, 64); }

const struct hub_file *hub_files_find(const struct hub_files *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->f[i].name, name) == 0)
            return &l->f[i];
    return NULL;
}

void hub_files_free(struct hub_files *l)
{
    if (!l)
        return;
    free(l->f);
    memset(l, 0, sizeof *l);
}

int hub_parse_tree(const char *json, struct hub_files *out, struct err *e)
{
    json_error_t je;
    errno = 0;
    json_t *root = json_loads(json, 0, &je);
    int rc = 0;
    if (!root)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, "tree", "out of memory reading the hub's file listing")
                                   : err_set(e, ERR_FORMAT, "tree", "the hub's file listing is not JSON: %s (line %d)",
                                             je.text, je.line);
    if (!json_is_array(root)) {
        rc = err_set(e, ERR_FORMAT, "tree", "the hub's file listing is not a JSON array");
        goto out;
    }
    size_t i;
    json_t *it;
    json_array_foreach(root, i, it) {
        const char *type = json_string_value(json_object_get(it, "type"));
        const char *path = json_string_value(json_object_get(it, "path"));
        if (!path || !type) {
            rc = err_set(e, ERR_FORMAT, "tree", "entry %zu has no type or path", i);
            goto out;
        }
        if (strcmp(type, "file") != 0)
            continue;
        json_t *sz = json_object_get(it, "size");
        json_t *lfs = json_object_get(it, "lfs");
        const char *oid = json_string_value(json_object_get(lfs, "oid"));
        json_t *lsz = json_object_get(lfs, "size");
        long long size = json_is_integer(sz) ? (long long)json_integer_value(sz) : -1;
        if (json_is_integer(lsz))
            size = (long long)json_integer_value(lsz);
        if ((json_is_integer(sz) && json_integer_value(sz) < 0) ||
            (json_is_integer(lsz) && json_integer_value(lsz) < 0)) {
            rc = err_set(e, ERR_FORMAT, "tree", "entry %zu (%.200s) has a negative size", i, path);
            goto out;
        }
        if (oid && strncmp(oid, "sha256:", 7) == 0)
            oid += 7;
        if ((rc = hub_files_add(out, path, size, oid && sha256_is_hex(oid) ? oid : "", e)) < 0) {
            err_wrap(e, "tree entry %zu", i);
            goto out;
        }
        /* the ETag the resolve answer will carry: huggingface_hub's blob name */
        const char *git_oid = json_string_value(json_object_get(it, "oid"));
        const char *etag = json_is_object(lfs) ? out->f[out->n - 1].sha256 : git_oid;
        if (etag && hub_etag_ok(etag))
            snprintf(out->f[out->n - 1].etag, sizeof out->f[out->n - 1].etag, "%s", etag);
    }
out:
    json_decref(root);
    return rc;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

int hub_parse_refs(const char *json, long long **steps, int *n, struct err *e)
{
    *steps = NULL;
    *n = 0;
    json_error_t je;
    errno = 0;
    json_t *root = json_loads(json, 0, &je);
    if (!root)
        return json_err_nomem(&je) ? err_set(e, ERR_NOMEM, "refs", "out of memory reading the hub's refs answer")
                                   : err_set(e, ERR_FORMAT, "refs", "the hub's refs answer is not JSON: %s (line %d)",
                                             je.text, je.line);
    json_t *br = json_object_get(root, "branches");
    int rc = 0;
    long long *v = NULL;
    int cnt = 0;
    if (!json_is_array(br)) {
        rc = err_set(e, ERR_FORMAT, "refs", "the hub's refs answer has no \"branches\" list");
        goto out;
    }
    v = malloc((json_array_size(br) + 1) * sizeof *v);
    if (!v) {
        rc = err_set(e, ERR_NOMEM, "refs", "out of memory");
        goto out;
    }
    size_t i;
    json_t *it;
    json_array_foreach(br, i, it) {
        const char *name = json_string_value(json_object_get(it, "name"));
        if (!name || strncmp(name, "step", 4) != 0 || !name[4] || strlen(name + 4) > 15)
            continue;
        const char *d = name + 4;
        while (isdigit((unsigned char)*d))
            d++;
        if (*d)
            continue; /* step1000-rc, stepX: not a step branch */
        v[cnt++] = atoll(name + 4);
    }
    qsort(v, (size_t)cnt, sizeof *v, cmp_ll);
    int u = 0;
    for (int k = 0; k < cnt; k++)
        if (k == 0 || v[k] != v[u - 1])
            v[u++] = v[k];
    cnt = u;
    if (!cnt) {
        rc = err_set(e, ERR_NOTFOUND, "refs", "the repository has no branch named step<N>");
        goto out;
    }
    *steps = v;
    *n = cnt;
    v = NULL;
out:
    free(v);
    json_decref(root);
    return rc;
}

int hub_select(const struct hub_files *all, struct hub_files *out, struct err *e)
{
    const struct hub_file *cfg = hub_files_find(all, "config.json");
    const struct hub_file *w = NULL;
    for (int i = 0; i < 4 && !w; i++)
        w = hub_files_find(all, hub_weight_names[i]);
    if (!cfg || !w)
        return err_set(e, ERR_NOTFOUND, "checkpoint", "no %s%s%s", cfg ? "" : "config.json",
                       !cfg && !w ? " and no " : "",
                       w ? "" : "weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin"
                                " or pytorch_model.bin.index.json)");
    int rc;
    if ((rc = hub_files_add_copy(out, cfg, e)) < 0 || (rc = hub_files_add_copy(out, w, e)) < 0)
        return rc;
    /* a toy run's task metadata (`ckpt-worker train`), for the `task` item */
    const struct hub_file *task = hub_files_find(all, "task.json");
    if (task && (rc = hub_files_add_copy(out, task, e)) < 0)
        return rc;
    snprintf(out->commit, sizeof out->commit, "%s", all->commit);
    size_t len = strlen(w->name);
    if (len > 11 && strcmp(w->name + len - 11, ".index.json") == 0)
        snprintf(out->index, sizeof out->index, "%s", w->name);
    return 0;
}

int hub_add_shards(struct hub_files *out, const char *index_path, const struct hub_files *all,
                   struct err *e)
{
    json_error_t je;
    errno = 0;
    json_t *root = json_load_file(index_path, 0, &je);
    if (!root)
        return err_set(e, json_err_nomem(&je) ? ERR_NOMEM : ERR_FORMAT,
                       out->index[0] ? out->index : index_path, "shard index is not JSON: %s (line %d)",
                       json_err_nomem(&je) ? "out of memory" : je.text, je.line);
    json_t *map = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(map) || json_object_size(map) == 0) {
        rc = err_set(e, ERR_FORMAT, out->index[0] ? out->index : index_path,
                     "shard index has no weight_map");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
        const char *shard = json_string_value(v);
        if (!shard) {
            rc = err_set(e, ERR_FORMAT, k, "weight_map value is not a file name");
            goto out;
        }
        if (hub_files_find(out, shard))
            continue;
        const struct hub_file *known = all ? hub_files_find(all, shard) : NULL;
        if (all && all->n && !known) {
            rc = err_set(e, ERR_NOTFOUND, shard, "the shard index names %s, which the revision does not have", shard);
            goto out;
        }
        if ((rc = known ? hub_files_add_copy(out, known, e) : hub_files_add(out, shard, -1, "", e)) < 0)
            goto out;
    }
    out->index[0] = '\0';
out:
    json_decref(root);
    return rc;
}

int hub_is_weights(const char *name)
{
    size_t len = strlen(name);
    return (len > 12 && strcmp(name + len - 12, ".safetensors") == 0) ||
           (len > 4 && strcmp(name + len - 4, ".bin") == 0);
}
