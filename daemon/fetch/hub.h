/*
 * hub.h - what a checkpoint is made of: sources, revisions and file lists.
 *
 * Three kinds of source (see source.h for the URL templates):
 *   hf://ORG/NAME   the HuggingFace hub.  Endpoint from HF_ENDPOINT (default
 *                   https://huggingface.co); step N is revision "stepN";
 *                   files at {endpoint}/{repo}/resolve/{rev}/{file}; the
 *                   revision's files from {endpoint}/api/models/{repo}/tree/{rev}
 *                   (sizes, and the sha256 of LFS files as lfs.oid); its
 *                   steps from {endpoint}/api/models/{repo}/refs (branches
 *                   named step<N>).  The bearer token (hfcache.h:
 *                   HF_TOKEN, HUGGING_FACE_HUB_TOKEN or the token file) is
 *                   sent to the endpoint's host only.  Each file's ETag is
 *                   what the tree states (lfs.oid for LFS files, else the
 *                   git blob oid), the revision's commit what the resolve
 *                   answers say (X-Repo-Commit): the names the HuggingFace
 *                   cache uses (hfcache.h).
 *   http(s)://…     a URL template; the files are probed with HEAD in order.
 *   file://… , path read in place, never copied.
 *
 * A checkpoint is `config.json` plus the first weights present, in this
 * order: model.safetensors, model.safetensors.index.json (and the shards its
 * weight_map names), pytorch_model.bin, pytorch_model.bin.index.json (and
 * its shards).  Everything here is pure (no network): the fetcher brings the
 * bytes, this module says which bytes and what they should be.
 *
 *     struct hub_source s;
 *     hub_source_parse(&s, "hf://EleutherAI/pythia-160m", &e);
 *     hub_tree_url(&s, "step1000", url, sizeof url, &e);   // GET it, then:
 *     struct hub_files all = {0}, pick = {0};
 *     hub_parse_tree(body, &all, &e);
 *     hub_select(&all, &pick, &e);          // config.json + the weights
 *     ... if (pick.index[0]) hub_add_shards(&pick, index_path, &all, &e);
 *     hub_files_free(&all); hub_files_free(&pick);
 */
#ifndef CKPTD_HUB_H
#define CKPTD_HUB_H

#include <stddef.h>

#include "common/err.h"
#include "common/sha256.h"

#define HUB_DEFAULT_ENDPOINT "https://huggingface.co"
#define HUB_NAME_MAX 256
#define HUB_URL_MAX 2048
#define HUB_ETAG_MAX 72         /* a git sha1 (40) or a sha256 (64) and a NUL */
#define HUB_COMMIT_MAX 41       /* 40 hex digits and a NUL */

enum hub_kind {
    HUB_FILE,   /* file:// or a path */
    HUB_HF,     /* hf://ORG/NAME */
    HUB_HTTP,   /* http(s):// URL template */
    HUB_KIND_COUNT
};

struct hub_source {
    enum hub_kind kind;
    char text[HUB_URL_MAX];     /* the source as given */
    char repo[HUB_NAME_MAX];    /* hf: ORG/NAME */
    char endpoint[512];         /* hf: no trailing '/' */
};

/* One file of a checkpoint. */
struct hub_file {
    char name[HUB_NAME_MAX];    /* relative name in the checkpoint directory */
    long long size;             /* bytes; -1 when not known */
    char sha256[SHA256_HEX];    /* expected (or, once fetched, actual); "" unknown */
    char etag[HUB_ETAG_MAX];    /* hf: the hub's ETag (LFS: the sha256; else the git
                                   blob sha1), lowercase hex; "" unknown */
};

/* A list of files (growable; zero-initialise, hub_files_free when done).
 * `index` names a shard index whose shards are still to be added;
 * `commit` the revision's commit when known (hf: X-Repo-Commit). */
struct hub_files {
    int n, cap;
    struct hub_file *f;
    char index[HUB_NAME_MAX];
    char commit[HUB_COMMIT_MAX];
};

/* The names probed for weights, in order of preference. */
extern const char *const hub_weight_names[4];

/* Parse a source. HF_ENDPOINT is read here. ERR_INVALID names what is wrong. */
int hub_source_parse(struct hub_source *s, const char *source, struct err *e) CK_WUR;

/* "step<N>". */
void hub_revision(long long step, char *out, size_t n);

/* The URL of one file of a revision: hf resolve URL, or the checkpoint URL
 * of the template with "/file" appended.  For file:// the local path. */
int hub_file_url(const struct hub_source *s, const char *revision, long long step,
                 const char *file, char *out, size_t n, struct err *e) CK_WUR;

/* {endpoint}/api/models/{repo}/tree/{rev} and …/refs (hf only). */
int hub_tree_url(const struct hub_source *s, const char *revision, char *out, size_t n,
                 struct err *e) CK_WUR;
int hub_refs_url(const struct hub_source *s, char *out, size_t n, struct err *e) CK_WUR;

/* A host key "scheme://host:port" of a URL (default ports filled in), to
 * decide where the token may go. ERR_INVALID for a URL without a host. */
int hub_url_origin(const char *url, char *out, size_t n, struct err *e) CK_WUR;

/* Append a file (name copied; size -1 / sha "" for unknown). A name that
 * is absolute, contains "..", a backslash or a control character is
 * refused with ERR_FORMAT: it would escape the checkpoint directory. */
int hub_files_add(struct hub_files *l, const char *name, long long size, const char *sha256,
                  struct err *e) CK_WUR;
/* Append a copy of f (its name checked like hub_files_add), ETag included. */
int hub_files_add_copy(struct hub_files *l, const struct hub_file *f, struct err *e) CK_WUR;
const struct hub_file *hub_files_find(const struct hub_files *l, const char *name);
void hub_files_free(struct hub_files *l);

/* The tree API's answer (a JSON array of {type, oid, path, size,
 * lfs{oid,size}}) into a file list: files only; sha256 from lfs.oid when
 * present; the ETag is lfs.oid for LFS files, else oid (a git sha1), when
 * it is hex of that length. */
int hub_parse_tree(const char *json, struct hub_files *out, struct err *e) CK_WUR;

/* The refs API's answer ({"branches":[{"name":"step1000",…}],…}): the
 * steps of branches named step<N>, increasing, no duplicates.  *steps is
 * the caller's (free). An answer with no such branch is ERR_NOTFOUND. */
int hub_parse_refs(const char *json, long long **steps, int *n, struct err *e) CK_WUR;

/* Choose a checkpoint's files from what a revision has: config.json, the
 * first weights in hub_weight_names order, and task.json when there is one
 * (a toy run's task metadata, read by the `task` item).  When the weights are a shard
 * index, out->index names it (fetch it, then hub_add_shards).  ERR_NOTFOUND
 * says which files are missing. */
int hub_select(const struct hub_files *all, struct hub_files *out, struct err *e) CK_WUR;

/* Read a shard index (a JSON object whose weight_map maps tensor names to
 * file names) and add each shard once, with size and sha256 from `all`
 * when it knows them (may be NULL).  Clears out->index. */
int hub_add_shards(struct hub_files *out, const char *index_path, const struct hub_files *all,
                   struct err *e) CK_WUR;

/* 1 when s is a commit id: 40 lowercase hex digits. */
int hub_commit_ok(const char *s);

/* 1 when s can name a blob of the HuggingFace cache: 40 or 64 lowercase
 * hex digits (a git sha1 or a sha256). */
int hub_etag_ok(const char *s);

/* 1 for weight files (.safetensors, .bin), which decide duplicates. */
int hub_is_weights(const char *name);

#endif
