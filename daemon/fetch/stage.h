/*
 * stage.h - bring one checkpoint into reach of a worker: the directory it
 * reads, every file verified, its sha256 known.
 *
 * A stage is a small state machine driven by stage_poll() from the
 * daemon's loop (or `ckptd fetch`), while the fetcher moves the bytes:
 *   file:// sources  read in place: the files are chosen (hub.h order) and
 *                    hashed where they are; nothing is copied.
 *   cache hit        a complete snapshot in the ckptd cache: done at once.
 *   hf://            the tree API lists the revision (sizes, LFS sha256s);
 *                    each chosen file is taken from the cache by its hash,
 *                    else from the HuggingFace cache (hashed, then linked),
 *                    else downloaded (resumable, verified) into a blob; a
 *                    shard index is fetched first and its shards added.
 *   http(s) template the files are probed with HEAD in hub.h order, then
 *                    fetched like the hub's (their sha256 is computed when
 *                    the server states none).
 *   offline          (HF_HUB_OFFLINE=1) no request at all: the caches, or a
 *                    clear failure.
 * Before the first byte of a file is downloaded, room for the files still
 * missing is reserved in the cache budget (cache_reserve: sizes from the
 * tree API or HEAD; unanalysed, unpinned snapshots evicted LRU).  When the
 * budget cannot hold them the stage waits while other checkpoints of this
 * process hold the space (a download or a pinned snapshot; at most an
 * hour), else fails naming budget, bytes needed and bytes held.
 * The snapshot is pinned from stage_new until stage_free; a failure leaves
 * no file in the cache that was not verified (partials stay in partial/
 * for a resume).
 *
 *     struct stage *st = stage_new(fetcher, cache, "hf://org/name", 1000, 0, &e);
 *     while ((rc = stage_poll(st, &e)) == 0) fetcher_run(fetcher, NULL, 0, 200);
 *     if (rc > 0) run_worker(stage_dir(st)); else log(e);
 *     stage_free(st);
 */
#ifndef CKPTD_STAGE_H
#define CKPTD_STAGE_H

#include "common/err.h"
#include "daemon/fetch/hub.h"

struct fetcher;
struct cache;
struct stage;

/* Start staging step `step` of `source`.  `offline`: no network.  NULL
 * with e filled on a bad source or when the cache cannot pin. */
struct stage *stage_new(struct fetcher *f, struct cache *c, const char *source, long long step,
                        int offline, struct err *e);

/* Advance: 0 still working, 1 done, negative when it failed (e says why:
 * the HTTP status and URL, the size or sha256 expected and got, …).
 * After 1 or a failure it keeps returning the same. */
int stage_poll(struct stage *st, struct err *e) CK_WUR;

/* Write what the stage places into the HuggingFace cache at hub_dir ("":
 * hfcache_dir(), the default; NULL: not at all).  hf:// sources only. */
void stage_set_hf_cache(struct stage *st, const char *hub_dir);

/* The directory for the worker (valid once done). Borrowed. */
const char *stage_dir(const struct stage *st);
/* The cache key ("" for file:// sources). Borrowed. */
const char *stage_key(const struct stage *st);
/* The checkpoint's files with size and sha256 (complete once done). */
const struct hub_files *stage_files(const struct stage *st);

/* Bytes in place (cached, linked or downloaded so far), bytes in all
 * (-1 until the listing is known), bytes/s downloaded since the start. */
void stage_progress(const struct stage *st, long long *done, long long *total, double *rate);
/* Bytes downloaded by this stage (not counting resumed or cached ones). */
long long stage_downloaded(const struct stage *st);

/* Cancel what is in flight, unpin. Accepts NULL. */
void stage_free(struct stage *st);

/* The steps an hf:// source has: GET {endpoint}/api/models/{repo}/refs
 * (with the token, like every hub request), branches named step<N>;
 * `main` and other branches are ignored.  Blocks until the answer (with
 * the fetcher's retries).  *steps (increasing) is the caller's.
 * ERR_INVALID for another kind of source or when offline (naming
 * HF_HUB_OFFLINE); ERR_NET with the URL and the HTTP status or transfer
 * error when the hub cannot be asked; ERR_FORMAT for an answer that is not
 * the refs JSON; ERR_NOTFOUND when no branch is named step<N>. */
int stage_discover_steps(struct fetcher *f, const char *source, int offline, long long **steps, int *n,
                         struct err *e) CK_WUR;

#endif
