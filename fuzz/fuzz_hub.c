/*
 * fuzz_hub.c - the hub's answers (daemon/fetch/hub.c) on arbitrary bytes:
 * the same input as a revision's file listing (hub_parse_tree, then
 * hub_select), as a refs answer (hub_parse_refs) and as a shard index
 * (hub_add_shards against a fixed listing and against the parsed one).
 *
 * Checked beyond "no crash": the error contract on failure; on success
 * every file name is usable (relative, no "." or ".." component, no
 * backslash or control character: it must not escape the checkpoint
 * directory), every size is -1 (unknown) or non-negative, every sha256 is
 * empty or 64 lower-case hex digits, and the steps from refs are
 * non-negative and strictly increasing.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/fetch/hub.h"
#include "fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_files(const struct hub_files *l, const char *what)
{
    for (int i = 0; i < l->n; i++) {
        const struct hub_file *f = &l->f[i];
        const char *nm = f->name;
        if (!nm[0] || nm[0] == '/' || strchr(nm, '\\'))
            fuzz_fail("%s: unusable name \"%s\" accepted", what, nm);
        for (const char *p = nm; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                fuzz_fail("%s: control character in \"%s\"", what, nm);
        for (const char *p = nm; *p;) {
            size_t len = strcspn(p, "/");
            if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
                fuzz_fail("%s: \".\" or \"..\" component in \"%s\"", what, nm);
            p += len;
            if (*p == '/')
                p++;
        }
        if (f->size < -1)
            fuzz_fail("%s: size %lld for %s", what, f->size, nm);
        size_t hl = strlen(f->sha256);
        if (hl != 0 && hl != 64)
            fuzz_fail("%s: sha256 of %zu characters for %s", what, hl, nm);
        for (size_t k = 0; k < hl; k++)
            if (!isxdigit((unsigned char)f->sha256[k]) || isupper((unsigned char)f->sha256[k]))
                fuzz_fail("%s: sha256 \"%s\" of %s", what, f->sha256, nm);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    struct err e;

    struct hub_files all = {0}, pick = {0};
    int rc = hub_parse_tree(text, &all, &e);
    if (rc < 0) {
        fuzz_check_err("hub_parse_tree", rc, &e);
    } else {
        check_files(&all, "tree");
        rc = hub_select(&all, &pick, &e);
        if (rc < 0)
            fuzz_check_err("hub_select", rc, &e);
        else
            check_files(&pick, "select");
    }

    long long *steps = NULL;
    int n = 0;
    rc = hub_parse_refs(text, &steps, &n, &e);
    if (rc < 0) {
        fuzz_check_err("hub_parse_refs", rc, &e);
        if (steps || n)
            fuzz_fail("hub_parse_refs failed but returned steps");
    } else {
        if (n < 1)
            fuzz_fail("refs: %d steps", n);
        for (int i = 0; i < n; i++)
            if (steps[i] < 0 || (i && steps[i] <= steps[i - 1]))
                fuzz_fail("refs: step %d is %lld after %lld", i, steps[i], i ? steps[i - 1] : -1);
        free(steps);
    }

    const char *path = fuzz_write("model.safetensors.index.json", data, size);
    struct hub_files fixed = {0}, shards = {0};
    if (hub_files_add(&fixed, "model-00001-of-00002.safetensors", 100, "", NULL) < 0 ||
        hub_files_add(&fixed, "model-00002-of-00002.safetensors", -1, "", NULL) < 0)
        fuzz_fail("cannot build the fixed listing");
    rc = hub_add_shards(&shards, path, &fixed, &e);
    if (rc < 0)
        fuzz_check_err("hub_add_shards", rc, &e);
    check_files(&shards, "shards");
    hub_files_free(&shards);
    rc = hub_add_shards(&pick, path, NULL, &e);
    if (rc < 0)
        fuzz_check_err("hub_add_shards", rc, &e);
    check_files(&pick, "shards");

    hub_files_free(&fixed);
    hub_files_free(&pick);
    hub_files_free(&all);
    free(text);
    return 0;
}
