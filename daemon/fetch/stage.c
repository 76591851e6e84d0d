#include "daemon/fetch/stage.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/sha256.h"
#include "daemon/fetch/cache.h"
#include "daemon/fetch/fetch.h"
#include "daemon/fetch/hfcache.h"
#include "daemon/plan/source.h"

enum st_phase {
    PH_START,
    PH_VERIFY,  /* hub, a cache hit: is the revision still at the cached commit? */
    PH_TREE,    /* hub: waiting for the file listing */
    PH_HEAD,    /* hub, every file placed from caches: the revision's commit */
    PH_PROBE,   /* template: HEAD one name after another */
    PH_FILES,   /* placing the chosen files */
    PH_DONE,
    PH_FAILED,
    PH_COUNT
};

enum file_state {
    FS_TODO,
    FS_FETCHING,
    FS_PLACED
};

struct stage {
    struct fetcher *f;
    struct cache *c;
    struct hub_source src;
    long long step;
    char rev[64];
    int offline;
    enum st_phase phase;
    char key[CACHE_KEY_MAX];
    int pinned;
    char dir[PATH_MAX];
    struct hub_files all;       /* what the revision has */
    struct hub_files plan;      /* what the checkpoint is (sha256 filled as placed) */
    enum file_state *fstate;
    long long *rsv;             /* bytes of the cache budget reserved per plan file */
    struct fetch_req *reqs;     /* one per plan file (stable while any is in flight) */
    int nreqs;                  /* entries of fstate/reqs initialised */
    int inflight;
    struct fetch_req meta;      /* tree listing or a HEAD probe */
    int probe;                  /* PH_PROBE: index into probe_names */
    struct err fail;
    double started;
    long long placed_bytes;
    long long fetched_bytes;    /* finished downloads of this stage */
    double room_wait_since;     /* > 0: waiting for cache space since then */
    double room_next_try;
    char commit[HUB_COMMIT_MAX]; /* hf: the revision's commit ("" not known yet) */
    int head_tried;             /* hf: the commit was asked for with a HEAD */
    char hf_dir[PATH_MAX];      /* hf: the HuggingFace cache written through; "" off */
    struct hub_files old;       /* hf: the cached snapshot's files when it is staged again */
};

/* How long a download waits for other checkpoints of this process to
 * free cache space before it fails. */
#define ROOM_WAIT_MAX_S 3600.0
#define ROOM_RETRY_S 0.25

static const char *const probe_names[5] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                           "pytorch_model.bin", "pytorch_model.bin.index.json"};

static void release_all(struct stage *st)
{
    for (int i = 0; i < st->nreqs; i++) {
        cache_release(st->c, st->rsv[i]);
        st->rsv[i] = 0;
    }
}

static int failf(struct stage *st, int code, const char *fmt, ...) CK_PRINTF(3, 4);
static int failf(struct stage *st, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st->fail.code = code;
    char ctx[64];
    snprintf(ctx, sizeof ctx, "step %lld", st->step);
    snprintf(st->fail.ctx, sizeof st->fail.ctx, "%s", ctx);
    vsnprintf(st->fail.msg, sizeof st->fail.msg, fmt, ap);
    va_end(ap);
    st->phase = PH_FAILED;
    for (int i = 0; i < st->nreqs; i++)
        if (st->fstate[i] == FS_FETCHING)
            fetcher_cancel(st->f, &st->reqs[i]);
    fetcher_cancel(st->f, &st->meta);
    st->inflight = 0;
    release_all(st);
    return code;
}

static int fail_err(struct stage *st, const struct err *e)
{
    return failf(st, e->code ? e->code : ERR_IO, "%s", err_str(e));
}

struct stage *stage_new(struct fetcher *f, struct cache *c, const char *source, long long step,
                        int offline, struct err *e)
{
    struct stage *st = calloc(1, sizeof *st);
    if (!st) {
        err_set(e, ERR_NOMEM, source, "out of memory");
        return NULL;
    }
    st->f = f;
    st->c = c;
    st->step = step;
    st->offline = offline;
    st->started = mono_now();
    hub_revision(step, st->rev, sizeof st->rev);
    if (hub_source_parse(&st->src, source, e) < 0)
        goto bad;
    if (st->src.kind != HUB_FILE) {
        if (!c) {
            err_set(e, ERR_INVALID, source, "a network source needs a cache directory");
            goto bad;
        }
        if (cache_key(source, st->rev, st->key, sizeof st->key, e) < 0 || cache_pin(c, st->key, e) < 0)
            goto bad;
        st->pinned = 1;
        if (cache_snapshot_dir(c, st->key, st->dir, sizeof st->dir, e) < 0)
            goto bad;
    }
    if (st->src.kind == HUB_HF)
        hfcache_dir(st->hf_dir, sizeof st->hf_dir);
    return st;
bad:
    stage_free(st);
    return NULL;
}

void stage_free(struct stage *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->nreqs; i++) {
        if (st->fstate[i] == FS_FETCHING)
            fetcher_cancel(st->f, &st->reqs[i]);
        /* a download that did not become a blob: its partial is ours alone
         * (cache.h), and a stage given up never comes back to it */
        if (st->fstate[i] != FS_PLACED && st->reqs[i].kind == FETCH_FILE && st->reqs[i].path[0])
            unlink(st->reqs[i].path);
        fetch_req_clear(&st->reqs[i]);
    }
    fetcher_cancel(st->f, &st->meta);
    fetch_req_clear(&st->meta);
    release_all(st);
    if (st->pinned)
        cache_unpin(st->c, st->key);
    hub_files_free(&st->all);
    hub_files_free(&st->plan);
    hub_files_free(&st->old);
    free(st->fstate);
    free(st->rsv);
    free(st->reqs);
    free(st);
}

void stage_set_hf_cache(struct stage *st, const char *hub_dir)
{
    if (!hub_dir || st->src.kind != HUB_HF)
        st->hf_dir[0] = '\0';
    else if (!*hub_dir)
        hfcache_dir(st->hf_dir, sizeof st->hf_dir);
    else
        snprintf(st->hf_dir, sizeof st->hf_dir, "%s", hub_dir);
}

const char *stage_dir(const struct stage *st) { return st->dir; }
const char *stage_key(const struct stage *st) { return st->key; }
const struct hub_files *stage_files(const struct stage *st) { return &st->plan; }

long long stage_downloaded(const struct stage *st)
{
    long long b = st->fetched_bytes;
    for (int i = 0; i < st->nreqs; i++)
        if (st->fstate[i] == FS_FETCHING)
            b += st->reqs[i].bytes_now - st->reqs[i].bytes_resumed;
    return b;
}

void stage_progress(const struct stage *st, long long *done, long long *total, double *rate)
{
    long long d = st->placed_bytes, t = st->plan.n ? 0 : -1;
    for (int i = 0; i < st->plan.n; i++) {
        if (st->plan.f[i].size >= 0 && t >= 0)
            t += st->plan.f[i].size;
        else
            t = -1;
        if (i < st->nreqs && st->fstate[i] == FS_FETCHING)
            d += st->reqs[i].bytes_now;
    }
    if (st->plan.index[0])
        t = -1; /* shards still to come */
    double el = mono_now() - st->started;
    *done = d;
    *total = t;
    *rate = el > 0 ? (double)stage_downloaded(st) / el : 0;
}

/* A local file last changed this many seconds or more before it was
 * hashed is remembered by its stat (sha256_file_memo). */
#define LOCAL_SETTLED_S 2.0

/* file:// : choose and hash in place. */
static int stage_local(struct stage *st)
{
    struct err e;
    err_clear(&e);
    char url[PATH_MAX];
    if (source_checkpoint_url(st->src.text, st->step, url, sizeof url, &e) < 0 ||
        source_local_path(url, st->dir, sizeof st->dir, &e) < 0)
        return fail_err(st, &e);
    for (int i = 0; i < 6; i++) {
        const char *name = i < 5 ? probe_names[i] : "task.json";
        char p[PATH_MAX * 2];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", st->dir, name);
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode) &&
            hub_files_add(&st->all, name, (long long)sb.st_size, "", &e) < 0)
            return fail_err(st, &e);
    }
    if (hub_select(&st->all, &st->plan, &e) < 0) {
        err_wrap(&e, "%s", st->dir);
        return fail_err(st, &e);
    }
    if (st->plan.index[0]) {
        char p[PATH_MAX * 2];
        snprintf(p, sizeof p, "%s/%s", st->dir, st->plan.index);
        if (hub_add_shards(&st->plan, p, NULL, &e) < 0)
            return fail_err(st, &e);
    }
    for (int i = 0; i < st->plan.n; i++) {
        char p[PATH_MAX * 2];
        snprintf(p, sizeof p, "%s/%s", st->dir, st->plan.f[i].name);
        /* staged again (an adaptive run's later phase, a retry): an
         * unchanged file is not read again */
        if (sha256_file_memo(p, st->plan.f[i].sha256, &st->plan.f[i].size, LOCAL_SETTLED_S, &e) < 0)
            return fail_err(st, &e);
        st->placed_bytes += st->plan.f[i].size;
    }
    st->phase = PH_DONE;
    return 1;
}

static int start_meta(struct stage *st, enum fetch_kind kind, const char *url)
{
    struct err e;
    fetch_req_clear(&st->meta);
    memset(&st->meta, 0, sizeof st->meta);
    st->meta.kind = kind;
    st->meta.want_size = -1;
    st->meta.max_body = 16u << 20;
    snprintf(st->meta.url, sizeof st->meta.url, "%s", url);
    if (fetcher_add(st->f, &st->meta, &e) < 0)
        return fail_err(st, &e);
    return 0;
}

static int start_probe(struct stage *st)
{
    char url[HUB_URL_MAX];
    struct err e;
    if (hub_file_url(&st->src, st->rev, st->step, probe_names[st->probe], url, sizeof url, &e) < 0)
        return fail_err(st, &e);
    return start_meta(st, FETCH_HEAD, url);
}

/* The listing is known: choose the files, size the arrays. */
static int plan_files(struct stage *st)
{
    struct err e;
    if (hub_select(&st->all, &st->plan, &e) < 0) {
        err_wrap(&e, "%s revision %s", st->src.text, st->rev);
        return fail_err(st, &e);
    }
    st->phase = PH_FILES;
    return 0;
}

static int grow_arrays(struct stage *st)
{
    enum file_state *fs = realloc(st->fstate, (size_t)st->plan.n * sizeof *fs);
    if (!fs)
        return failf(st, ERR_NOMEM, "out of memory");
    st->fstate = fs;
    struct fetch_req *rq = realloc(st->reqs, (size_t)st->plan.n * sizeof *rq);
    if (!rq)
        return failf(st, ERR_NOMEM, "out of memory");
    st->reqs = rq;
    long long *rv = realloc(st->rsv, (size_t)st->plan.n * sizeof *rv);
    if (!rv)
        return failf(st, ERR_NOMEM, "out of memory");
    st->rsv = rv;
    for (int i = st->nreqs; i < st->plan.n; i++) { /* never started: nothing to free */
        memset(&st->reqs[i], 0, sizeof st->reqs[i]);
        st->fstate[i] = FS_TODO;
        st->rsv[i] = 0;
    }
    st->nreqs = st->plan.n;
    return 0;
}

/* The file is in blobs/: link it into the snapshot. */
static int place(struct stage *st, int i, long long size, const char *sha_in)
{
    struct err e;
    struct hub_file *f = &st->plan.f[i];
    char sha[SHA256_HEX];
    snprintf(sha, sizeof sha, "%s", sha_in); /* may be f->sha256 itself */
    f->size = size;
    memcpy(f->sha256, sha, sizeof sha);
    if (cache_snapshot_add(st->c, st->key, f->name, size, sha, &e) < 0)
        return fail_err(st, &e);
    st->fstate[i] = FS_PLACED;
    st->placed_bytes += size;
    cache_release(st->c, st->rsv[i]); /* a blob now: counted in the cache's usage */
    st->rsv[i] = 0;
    return 0;
}

/* Try the caches for file i: 1 placed, 0 not there, negative failed. */
static int from_caches(struct stage *st, int i)
{
    struct hub_file *f = &st->plan.f[i];
    struct err e;
    char p[PATH_MAX];
    if (f->sha256[0] && cache_has_blob(st->c, f->sha256)) {
        char b[PATH_MAX + 80];
        struct stat sb;
        snprintf(b, sizeof b, "%s/blobs/%s", cache_root(st->c), f->sha256);
        if (stat(b, &sb) == 0 && (f->size < 0 || f->size == (long long)sb.st_size))
            return place(st, i, (long long)sb.st_size, f->sha256) < 0 ? -1 : 1;
    }
    if (st->src.kind != HUB_HF ||
        !cache_hf_find("", st->src.repo, st->commit[0] ? st->commit : st->rev, f->name, p, sizeof p))
        return 0;
    /* huggingface_hub names a blob by the file's ETag: another name is
     * another content (a ref that has not followed the hub, for one) */
    const char *bn = strrchr(p, '/');
    if (f->etag[0] && bn && strcmp(bn + 1, f->etag) != 0) {
        log_info("HuggingFace cache file is another version; not used", "path=%s etag=%s", log_quote(p), f->etag);
        return 0;
    }
    char sha[SHA256_HEX];
    long long size;
    if (sha256_file(p, sha, &size, &e) < 0) {
        log_warn("HuggingFace cache file unreadable; not used", "path=%s error=%s", log_quote(p),
                 log_quote(err_str(&e)));
        return 0;
    }
    if ((f->sha256[0] && strcmp(sha, f->sha256) != 0) || (f->size >= 0 && size != f->size)) {
        log_warn("HuggingFace cache file differs from the hub's; not used", "path=%s expected_sha256=%s got=%s",
                 log_quote(p), f->sha256, sha);
        return 0;
    }
    /* a blob named by its hash must hold that hash */
    const char *base = strrchr(p, '/');
    if (base && sha256_is_hex(base + 1) && strcmp(base + 1, sha) != 0) {
        log_warn("HuggingFace cache blob does not match its name; not used", "path=%s got=%s", log_quote(p), sha);
        return 0;
    }
    if (cache_link_blob(st->c, p, sha, &e) < 0)
        return fail_err(st, &e);
    if (!f->etag[0] && bn && hub_etag_ok(bn + 1))
        snprintf(f->etag, sizeof f->etag, "%s", bn + 1);
    log_info("taken from the HuggingFace cache", "file=%s path=%s", f->name, log_quote(p));
    return place(st, i, size, sha) < 0 ? -1 : 1;
}

static int start_file(struct stage *st, int i)
{
    struct hub_file *f = &st->plan.f[i];
    struct fetch_req *r = &st->reqs[i];
    struct err e;
    memset(r, 0, sizeof *r);
    r->kind = FETCH_FILE;
    r->want_size = f->size;
    snprintf(r->want_sha, sizeof r->want_sha, "%s", f->sha256);
    if (hub_file_url(&st->src, st->rev, st->step, f->name, r->url, sizeof r->url, &e) < 0)
        return fail_err(st, &e);
    char pname[80 + CACHE_KEY_MAX];
    if (f->sha256[0]) { /* per checkpoint: two stages never share a partial */
        int w = snprintf(pname, sizeof pname, "%s-%s", f->sha256, st->key);
        for (int k = 0; k < w; k++)
            if (pname[k] == '/')
                pname[k] = '_';
    } else { /* unknown content: name the partial after the URL */
        struct sha256 h;
        char hex[SHA256_HEX];
        if (sha256_init(&h, &e) < 0)
            return fail_err(st, &e);
        sha256_update(&h, r->url, strlen(r->url));
        sha256_final(&h, hex);
        snprintf(pname, sizeof pname, "url-%.40s", hex);
    }
    if (cache_partial_path(st->c, pname, r->path, sizeof r->path, &e) < 0 || fetcher_add(st->f, r, &e) < 0)
        return fail_err(st, &e);
    st->fstate[i] = FS_FETCHING;
    st->inflight++;
    return 0;
}

/* Room in the cache budget for the files still to download: 1 reserved
 * (or nothing to reserve), 0 waiting for this process's other
 * checkpoints to free space, negative failed. */
static int make_room(struct stage *st)
{
    long long need = 0;
    int unknown = 0;
    for (int i = 0; i < st->plan.n; i++)
        if (st->fstate[i] == FS_TODO && st->rsv[i] == 0) {
            if (st->plan.f[i].size < 0)
                unknown++;
            else
                need += st->plan.f[i].size;
        }
    if (need == 0)
        return 1;
    double now = mono_now();
    if (st->room_wait_since > 0 && now < st->room_next_try)
        return 0;
    struct err e;
    struct cache_room room;
    if (cache_reserve(st->c, need, &room, &e) == 0) {
        for (int i = 0; i < st->plan.n; i++)
            if (st->fstate[i] == FS_TODO && st->rsv[i] == 0 && st->plan.f[i].size > 0)
                st->rsv[i] = st->plan.f[i].size;
        if (room.budget > 0)
            log_info("cache: room made for a download", "step=%lld need=%lld usage=%lld reserved=%lld budget=%lld"
                     " evicted=%lld unknown_sizes=%d waited_s=%.3f", st->step, need, room.usage, room.reserved,
                     room.budget, room.freed, unknown, st->room_wait_since > 0 ? now - st->room_wait_since : 0.0);
        st->room_wait_since = 0;
        return 1;
    }
    if (e.code == ERR_INVALID && need <= room.budget &&
        (room.reserved > 0 ||
         ((cache_pins_held(st->c) > 1 || room.pinned_elsewhere > 0) && room.held > 0))) {
        /* other checkpoints (of this process or another on the cache) hold
         * the space: wait for them */
        if (st->room_wait_since == 0) {
            st->room_wait_since = now;
            log_info("cache: waiting for space", "step=%lld need=%lld usage=%lld held=%lld reserved=%lld budget=%lld",
                     st->step, need, room.usage, room.held, room.reserved, room.budget);
        }
        if (now - st->room_wait_since < ROOM_WAIT_MAX_S) {
            st->room_next_try = now + ROOM_RETRY_S;
            return 0;
        }
    }
    return failf(st, e.code ? e.code : ERR_INVALID, "%s revision %s (%lld bytes to download): %s", st->src.text,
                 st->rev, need, e.msg);
}

/* One file into the HuggingFace cache: 1 put, 0 skipped (no ETag, or
 * the content is not what the ETag names), negative failed. */
static int write_through(struct stage *st, const struct hub_file *f, struct err *e)
{
    char p[PATH_MAX * 2], sha1[HUB_COMMIT_MAX];
    if (!hub_etag_ok(f->etag))
        return 0;
    snprintf(p, sizeof p, "%s/%s", st->dir, f->name);
    if (strlen(f->etag) == 64 ? strcmp(f->etag, f->sha256) != 0
                              : hfcache_git_sha1(p, sha1, e) < 0 || strcmp(f->etag, sha1) != 0) {
        log_warn("HuggingFace cache: the hub's ETag does not name this content; not written", "file=%s etag=%s",
                 f->name, f->etag);
        return 0;
    }
    int rc = hfcache_put(st->hf_dir, st->src.repo, st->commit, f->name, f->etag, p, e);
    return rc < 0 ? rc : 1;
}

/* Every file of the snapshot into the HuggingFace cache, then the ref.
 * A failure costs only the write-through: the checkpoint is staged. */
static void write_hf_cache(struct stage *st)
{
    if (!st->hf_dir[0] || st->src.kind != HUB_HF)
        return;
    if (!hub_commit_ok(st->commit)) {
        log_warn("HuggingFace cache not written: the hub stated no commit for the revision", "source=%s revision=%s",
                 log_quote(st->src.text), st->rev);
        return;
    }
    struct err e;
    int put = 0, skipped = 0, failed = 0;
    for (int i = 0; i < st->plan.n; i++) {
        err_clear(&e);
        int rc = write_through(st, &st->plan.f[i], &e);
        if (rc < 0 && failed++ == 0)
            log_warn("HuggingFace cache: a file not written", "file=%s error=%s", st->plan.f[i].name,
                     log_quote(err_str(&e)));
        put += rc > 0;
        skipped += rc == 0;
    }
    if (failed == 0 && hfcache_set_ref(st->hf_dir, st->src.repo, st->rev, st->commit, &e) < 0) {
        log_warn("HuggingFace cache: ref not written", "revision=%s error=%s", st->rev, log_quote(err_str(&e)));
        failed++;
    }
    log_info("HuggingFace cache written", "repo=%s revision=%s commit=%s files=%d skipped=%d failed=%d dir=%s",
             st->src.repo, st->rev, st->commit, put, skipped, failed, log_quote(st->hf_dir));
}

/* Every file is placed: learn the commit if no answer stated it yet,
 * write the HuggingFace cache through, record the snapshot's identity and
 * mark it complete.  0 while a HEAD is out, 1 done, negative failed. */
static int finish(struct stage *st)
{
    struct err e;
    if (st->src.kind == HUB_HF && !st->offline && !st->commit[0] && !st->head_tried) {
        char url[HUB_URL_MAX];
        st->head_tried = 1;
        if (hub_file_url(&st->src, st->rev, st->step, "config.json", url, sizeof url, &e) < 0)
            return fail_err(st, &e);
        if (start_meta(st, FETCH_HEAD, url) < 0)
            return st->fail.code;
        st->phase = PH_HEAD;
        return 0;
    }
    write_hf_cache(st);
    snprintf(st->plan.commit, sizeof st->plan.commit, "%s", st->commit);
    if (st->src.kind != HUB_FILE &&
        ((st->old.n > 0 && cache_snapshot_prune(st->c, st->key, &st->plan, &st->old, &e) < 0) ||
         cache_snapshot_identity(st->c, st->key, &st->plan, &e) < 0 ||
         cache_snapshot_complete(st->c, st->key, &e) < 0))
        return fail_err(st, &e);
    st->phase = PH_DONE;
    return 1;
}

/* A cache hit is done: the HuggingFace cache written through, a commit
 * the manifest did not have yet recorded. */
static void finish_hit(struct stage *st)
{
    struct err e;
    write_hf_cache(st);
    if (hub_commit_ok(st->commit) && strcmp(st->commit, st->plan.commit) != 0) {
        snprintf(st->plan.commit, sizeof st->plan.commit, "%s", st->commit);
        if (cache_snapshot_identity(st->c, st->key, &st->plan, &e) < 0)
            log_warn("cache: commit not recorded", "snapshot=%s error=%s", st->key, log_quote(err_str(&e)));
    }
    st->phase = PH_DONE;
}

/* GET the revision's file listing. */
static void start_tree(struct stage *st)
{
    char url[HUB_URL_MAX];
    struct err e;
    if (hub_tree_url(&st->src, st->rev, url, sizeof url, &e) < 0)
        fail_err(st, &e);
    else if (start_meta(st, FETCH_MEMORY, url) == 0)
        st->phase = PH_TREE;
}

static int step_files(struct stage *st)
{
    struct err e;
    int todo = 0;
    for (int i = 0; i < st->plan.n; i++) {
        if (st->fstate[i] != FS_TODO)
            continue;
        int got = from_caches(st, i);
        if (got < 0)
            return st->fail.code;
        if (got > 0)
            continue;
        if (st->offline)
            return failf(st, ERR_NOTFOUND,
                         "offline (HF_HUB_OFFLINE=1): %s of %s revision %s is in neither the ckptd cache"
                         " nor the HuggingFace cache",
                         st->plan.f[i].name, st->src.text, st->rev);
        todo++;
    }
    if (todo > 0) {
        int room = make_room(st);
        if (room < 0)
            return st->fail.code;
        if (room == 0)
            return 0;
    }
    for (int i = 0; i < st->plan.n; i++) {
        if (st->fstate[i] == FS_TODO) {
            if (start_file(st, i) < 0)
                return st->fail.code;
        } else if (st->fstate[i] == FS_FETCHING && st->reqs[i].done) {
            struct fetch_req *r = &st->reqs[i];
            st->inflight--;
            if (!r->ok) {
                st->fstate[i] = FS_TODO;
                return failf(st, ERR_NET, "%s", r->error);
            }
            st->fetched_bytes += r->size - r->bytes_resumed;
            if (r->commit[0] && st->src.kind == HUB_HF) {
                if (st->commit[0] && strcmp(r->commit, st->commit) != 0)
                    return failf(st, ERR_NET, "%s revision %s moved on the hub while it was fetched (commit %s,"
                                 " then %s for %s); fetched again on the next attempt", st->src.text, st->rev,
                                 st->commit, r->commit, st->plan.f[i].name);
                if (hub_commit_ok(r->commit))
                    snprintf(st->commit, sizeof st->commit, "%.40s", r->commit);
            }
            if (hub_etag_ok(r->etag))
                snprintf(st->plan.f[i].etag, sizeof st->plan.f[i].etag, "%.71s", r->etag);
            if (cache_put_blob(st->c, r->path, r->sha256, &e) < 0)
                return fail_err(st, &e);
            if (place(st, i, r->size, r->sha256) < 0)
                return st->fail.code;
            log_info("downloaded", "file=%s bytes=%lld sha256=%s attempts=%d resumed_from=%lld",
                     st->plan.f[i].name, r->size, r->sha256, r->attempts, r->bytes_resumed);
        }
    }
    if (st->inflight > 0)
        return 0;
    if (st->plan.index[0]) {
        char p[PATH_MAX * 2];
        snprintf(p, sizeof p, "%s/%s", st->dir, st->plan.index);
        int before = st->plan.n;
        if (hub_add_shards(&st->plan, p, st->all.n ? &st->all : NULL, &e) < 0)
            return fail_err(st, &e);
        if (grow_arrays(st) < 0)
            return st->fail.code;
        for (int i = before; i < st->plan.n; i++)
            st->fstate[i] = FS_TODO;
        return step_files(st);
    }
    return finish(st);
}

int stage_poll(struct stage *st, struct err *e)
{
    struct err le;
    char url[HUB_URL_MAX];
    for (;;) {
        switch (st->phase) {
        case PH_START:
            if (st->src.kind == HUB_FILE) {
                stage_local(st);
                break;
            }
            {
                int hit = cache_lookup(st->c, st->key, &st->plan, &le);
                if (hit < 0) {
                    fail_err(st, &le);
                    break;
                }
                if (hit > 0) {
                    for (int i = 0; i < st->plan.n; i++)
                        st->placed_bytes += st->plan.f[i].size;
                    log_info("cache hit", "snapshot=%s files=%d commit=%s", st->key, st->plan.n,
                             st->plan.commit[0] ? st->plan.commit : "-");
                    if (st->src.kind == HUB_HF && !st->offline) {
                        /* one HEAD: has the revision moved since? */
                        if (hub_file_url(&st->src, st->rev, st->step, "config.json", url, sizeof url, &le) < 0) {
                            fail_err(st, &le);
                            break;
                        }
                        st->head_tried = 1;
                        if (start_meta(st, FETCH_HEAD, url) == 0)
                            st->phase = PH_VERIFY;
                        break;
                    }
                    snprintf(st->commit, sizeof st->commit, "%s", st->plan.commit);
                    finish_hit(st);
                    break;
                }
            }
            if (st->offline) {
                if (st->src.kind != HUB_HF) {
                    failf(st, ERR_NOTFOUND, "offline (HF_HUB_OFFLINE=1) and %s revision %s is not in the cache",
                          st->src.text, st->rev);
                    break;
                }
                char hf[PATH_MAX];
                cache_hf_dir(hf, sizeof hf);
                int n = cache_hf_list("", st->src.repo, st->rev, &st->all, &le);
                if (n < 0) {
                    fail_err(st, &le);
                    break;
                }
                if (n == 0) {
                    failf(st, ERR_NOTFOUND,
                          "offline (HF_HUB_OFFLINE=1) and %s revision %s is in neither the ckptd cache nor the"
                          " HuggingFace cache (%s)", st->src.repo, st->rev, hf);
                    break;
                }
                snprintf(st->commit, sizeof st->commit, "%s", st->all.commit);
                if (plan_files(st) == 0)
                    grow_arrays(st);
                for (int i = 0; i < st->plan.n && st->phase == PH_FILES; i++)
                    st->fstate[i] = FS_TODO;
                break;
            }
            if (st->src.kind == HUB_HF) {
                start_tree(st);
            } else {
                st->probe = 0;
                if (start_probe(st) == 0)
                    st->phase = PH_PROBE;
            }
            break;
        case PH_VERIFY:
            if (!st->meta.done)
                return 0;
            if (!st->meta.ok) {
                log_warn("cache hit not confirmed: the hub did not answer; the cached snapshot is used",
                         "snapshot=%s commit=%s error=%s", st->key, st->plan.commit[0] ? st->plan.commit : "-",
                         log_quote(st->meta.error));
                snprintf(st->commit, sizeof st->commit, "%s", st->plan.commit);
                finish_hit(st);
                break;
            }
            if (!hub_commit_ok(st->meta.commit) || strcmp(st->meta.commit, st->plan.commit) == 0) {
                snprintf(st->commit, sizeof st->commit, "%.40s",
                         hub_commit_ok(st->meta.commit) ? st->meta.commit : st->plan.commit);
                finish_hit(st);
                break;
            }
            /* the revision moved (a re-upload), or the snapshot was cached
             * before commits were recorded: list the revision again; files
             * that did not change are found in the cache by their sha256,
             * and the old version's other blobs go once it is staged */
            if (st->plan.commit[0])
                log_warn("revision moved on the hub: staged again", "source=%s revision=%s cached_commit=%s"
                         " commit=%s", log_quote(st->src.text), st->rev, st->plan.commit, st->meta.commit);
            snprintf(st->commit, sizeof st->commit, "%.40s", st->meta.commit);
            hub_files_free(&st->old);
            st->old = st->plan;
            memset(&st->plan, 0, sizeof st->plan);
            st->placed_bytes = 0;
            start_tree(st);
            break;
        case PH_TREE:
            if (!st->meta.done)
                return 0;
            if (!st->meta.ok) {
                failf(st, ERR_NET, "file listing: %s", st->meta.error);
                break;
            }
            if (hub_parse_tree(st->meta.body, &st->all, &le) < 0) {
                err_wrap(&le, "%s", st->meta.url);
                fail_err(st, &le);
                break;
            }
            if (plan_files(st) == 0 && grow_arrays(st) == 0)
                for (int i = 0; i < st->plan.n; i++)
                    st->fstate[i] = FS_TODO;
            break;
        case PH_HEAD:
            if (!st->meta.done)
                return 0;
            if (st->meta.ok && hub_commit_ok(st->meta.commit)) {
                snprintf(st->commit, sizeof st->commit, "%.40s", st->meta.commit);
                struct hub_file *cfg = NULL;
                for (int i = 0; i < st->plan.n && !cfg; i++)
                    if (strcmp(st->plan.f[i].name, "config.json") == 0)
                        cfg = &st->plan.f[i];
                if (cfg && hub_etag_ok(st->meta.etag))
                    snprintf(cfg->etag, sizeof cfg->etag, "%.71s", st->meta.etag);
            } else {
                log_warn("the hub stated no commit for the revision", "source=%s revision=%s error=%s",
                         log_quote(st->src.text), st->rev, log_quote(st->meta.ok ? "no X-Repo-Commit" : st->meta.error));
            }
            if (finish(st) == 0)
                return 0;
            break;
        case PH_PROBE:
            if (!st->meta.done)
                return 0;
            if (st->meta.ok) {
                if (hub_files_add(&st->all, probe_names[st->probe], st->meta.size, st->meta.sha256, &le) < 0) {
                    fail_err(st, &le);
                    break;
                }
            } else if (st->meta.http_status != 404 && st->meta.http_status != 410) {
                failf(st, ERR_NET, "%s", st->meta.error);
                break;
            }
            if (st->probe == 0 && !st->meta.ok) {
                failf(st, ERR_NOTFOUND, "no config.json: %s", st->meta.error);
                break;
            }
            if (st->probe > 0 && st->meta.ok) { /* the first weights found */
                if (plan_files(st) == 0 && grow_arrays(st) == 0)
                    for (int i = 0; i < st->plan.n; i++)
                        st->fstate[i] = FS_TODO;
                break;
            }
            if (++st->probe == 5) {
                char base[HUB_URL_MAX];
                if (source_checkpoint_url(st->src.text, st->step, base, sizeof base, NULL) < 0)
                    base[0] = '\0';
                failf(st, ERR_NOTFOUND, "no weights at %s (HEAD of model.safetensors, model.safetensors.index.json,"
                      " pytorch_model.bin and pytorch_model.bin.index.json: 404)", base);
                break;
            }
            start_probe(st);
            return 0;
        case PH_FILES:
            if (step_files(st) == 0)
                return 0;
            break;
        case PH_DONE:
            return 1;
        case PH_FAILED:
            if (e)
                *e = st->fail;
            return st->fail.code ? st->fail.code : ERR_NET;
        default:
            return failf(st, ERR_INVALID, "bad stage phase");
        }
    }
}

int stage_discover_steps(struct fetcher *f, const char *source, int offline, long long **steps, int *n,
                         struct err *e)
{
    struct hub_source src;
    char url[HUB_URL_MAX];
    *steps = NULL;
    *n = 0;
    int rc = hub_source_parse(&src, source, e);
    if (rc < 0)
        return rc;
    if (src.kind != HUB_HF)
        return err_set(e, ERR_INVALID, source,
                       "the refs schedule needs an hf://ORG/NAME source (its step<N> branches); give the steps"
                       " as a list for other sources");
    if ((rc = hub_refs_url(&src, url, sizeof url, e)) < 0)
        return rc;
    if (offline)
        return err_set(e, ERR_INVALID, url,
                       "offline (HF_HUB_OFFLINE=1): the refs schedule needs the hub's refs API; unset"
                       " HF_HUB_OFFLINE or give the steps as a list");
    struct fetch_req r;
    memset(&r, 0, sizeof r);
    r.kind = FETCH_MEMORY;
    r.want_size = -1;
    r.max_body = 16u << 20;
    snprintf(r.url, sizeof r.url, "%s", url);
    if ((rc = fetcher_add(f, &r, e)) < 0)
        return rc;
    while (!r.done)
        fetcher_run(f, NULL, 0, 500);
    if (!r.ok)
        rc = err_set(e, ERR_NET, "refs", "step discovery: %s", r.error);
    else if ((rc = hub_parse_refs(r.body, steps, n, e)) < 0)
        err_wrap(e, "%s", url);
    else
        log_info("steps discovered", "source=%s url=%s steps=%d first=%lld last=%lld", log_quote(source),
                 log_quote(url), *n, (*steps)[0], (*steps)[*n - 1]);
    fetch_req_clear(&r);
    return rc;
}
