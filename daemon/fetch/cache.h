/*
 * cache.h - the node's checkpoint cache: content-addressed, budgeted, shared.
 *
 * Layout under the cache directory (config "cache_dir"):
 *   blobs/<sha256>                 verified content, named by its hash (or a
 *                                  hard link / symlink to a file of the
 *                                  HuggingFace cache with that hash)
 *   snapshots/<slug>/<rev>/<file>  symlinks to blobs: the directory a worker
 *                                  reads (<slug>: the source, readable, plus
 *                                  12 hex digits of its sha256)
 *   manifests/<slug>/<rev>.json    a snapshot's files (name, size, sha256,
 *                                  the hub's ETag), the hub commit it was
 *                                  staged at, whether it is complete and
 *                                  analysed, the owner tag of the process
 *                                  that staged it, and when it was last
 *                                  used: the LRU index
 *   partial/<tag>.<name>.part      downloads in progress (resumed with Range
 *                                  by the same process); <tag> is the owner's
 *   pins/<slug>/<rev>.lock         held with flock(LOCK_SH) while pinned
 *   .lock                          flock(LOCK_EX) around manifest changes,
 *                                  eviction and reservations, so daemons
 *                                  sharing a cache agree
 *   .owners/<tag>.lock             one per process using the cache, held with
 *                                  flock(LOCK_EX) for its life
 *                                  (daemon/base/owner.h); its text is the
 *                                  bytes that process has reserved
 * A blob appears only by rename() after its size and sha256 were checked,
 * so no file in blobs/ ever differs from its name.  A snapshot's manifest
 * lists a blob before the snapshot links it, so eviction never removes a
 * blob a snapshot (complete or not) refers to.  Eviction, when blobs use
 * more than the budget, removes unpinned snapshots that were analysed,
 * that their stager (the manifest's "owner", a process tag) gave up
 * unanalysed ("released" at its last unpin: a lost lease, a failure, a
 * shutdown) or whose stager is dead (a daemon killed before its worker
 * ran): nobody will analyse them; and incomplete leftovers without an
 * owner older than an hour; least recently used first, and then the blobs
 * no remaining manifest names.  (A snapshot `ckptd fetch` brought in is
 * therefore evictable once it has exited.)  It runs after a checkpoint
 * was analysed (cache_evict) and, before a download starts, to make room
 * for the bytes it will write (cache_reserve): blobs plus the partials of
 * downloads in progress never exceed the budget, whatever the number of
 * processes sharing the cache (a checkpoint that cannot fit is refused
 * instead).  Reservations are shared: each process publishes its total in
 * its owner lock file, and a reservation counts every live process's.
 *
 * Crash leftovers: a process's partial downloads carry its owner tag
 * ("<node>.<pid>").  Opening the cache, and every reservation, removes the
 * partials of owners whose lock nobody holds (dead, however they died;
 * never judged by age), and their reservations with them; cache_close
 * removes its own.  A download is resumed within a process, not across
 * a restart.
 *
 * The HuggingFace cache (hfcache.h: $HF_HUB_CACHE, $HF_HOME/hub, …):
 * models--ORG--NAME/refs/<rev> holds a commit; snapshots/<commit>/<file>
 * links to its blob.  Files found there are linked in, never copied or
 * downloaded again (stage.h writes what it downloads there too).
 *
 *     struct cache *c = cache_open("/var/cache/ckptd", 50LL << 30, &e);
 *     cache_key("hf://EleutherAI/pythia-70m", "step1000", key, sizeof key);
 *     cache_pin(c, key, &e);
 *     ... cache_put_blob / cache_snapshot_add ... cache_snapshot_complete(c, key, &e);
 *     ... worker reads cache_snapshot_dir(c, key, dir, sizeof dir) ...
 *     cache_mark_analysed(c, key, &e); cache_unpin(c, key); cache_evict(c, NULL, &e);
 *     cache_close(c);
 */
#ifndef CKPTD_CACHE_H
#define CKPTD_CACHE_H

#include <stddef.h>

#include "common/err.h"
#include "daemon/fetch/hub.h"

#define CACHE_KEY_MAX 512
#define CACHE_PINS_MAX 64

struct cache;

/* Open (creating the directories) a cache as an owner named after `node`
 * (NULL: the host name), after removing the leftovers of dead owners;
 * budget_bytes 0: no limit.  NULL with e filled on failure. */
struct cache *cache_open_as(const char *root, long long budget_bytes, const char *node,
                            struct err *e);
struct cache *cache_open(const char *root, long long budget_bytes, struct err *e);
/* Unpins everything still pinned, removes this process's partial
 * downloads and its owner lock. Accepts NULL. */
void cache_close(struct cache *c);

/* The absolute root. Borrowed. */
const char *cache_root(const struct cache *c);

/* "<slug>/<revision>" for a source and revision. */
int cache_key(const char *source, const char *revision, char *out, size_t n, struct err *e) CK_WUR;

/* Paths of a snapshot directory and of a partial download (name: a sha256
 * or any [A-Za-z0-9._-] string; the path carries this process's tag). */
int cache_snapshot_dir(const struct cache *c, const char *key, char *out, size_t n, struct err *e) CK_WUR;
int cache_partial_path(const struct cache *c, const char *name, char *out, size_t n, struct err *e) CK_WUR;

/* A complete snapshot whose blobs are all there: 1 and its files (appended
 * to *files, may be NULL, with their ETags and files->commit as
 * cache_snapshot_identity recorded them); 0 when there is none; negative
 * on error.  Marks it used now. */
int cache_lookup(struct cache *c, const char *key, struct hub_files *files, struct err *e) CK_WUR;

/* 1 when blobs/<sha256> exists. */
int cache_has_blob(const struct cache *c, const char *sha256);

/* Move a verified file into blobs/<sha256> (atomic rename; when the blob
 * is already there the file is removed).  The caller has checked the hash. */
int cache_put_blob(struct cache *c, const char *path, const char *sha256, struct err *e) CK_WUR;

/* Make blobs/<sha256> refer to an existing file (a hard link, or a symlink
 * across file systems): for files of the HuggingFace cache. */
int cache_link_blob(struct cache *c, const char *path, const char *sha256, struct err *e) CK_WUR;

/* Record a file in the snapshot's manifest, then link
 * snapshots/<key>/<name> to its blob (which must exist). */
int cache_snapshot_add(struct cache *c, const char *key, const char *name, long long size,
                       const char *sha256, struct err *e) CK_WUR;

/* The snapshot has all its files. */
int cache_snapshot_complete(struct cache *c, const char *key, struct err *e) CK_WUR;

/* Record what the hub calls the snapshot: files->commit (none when it is
 * not a commit id) and each listed file's ETag. */
int cache_snapshot_identity(struct cache *c, const char *key, const struct hub_files *files,
                            struct err *e) CK_WUR;

/* A snapshot staged again (its revision moved on the hub): the files not
 * in `keep` leave its manifest and directory, and the blobs of `old` (its
 * files before, may be NULL) that no snapshot names any more are removed.
 * The caller holds the pin. */
int cache_snapshot_prune(struct cache *c, const char *key, const struct hub_files *keep,
                         const struct hub_files *old, struct err *e) CK_WUR;

/* The snapshot was analysed (it may be evicted once unpinned); used now. */
int cache_mark_analysed(struct cache *c, const char *key, struct err *e) CK_WUR;

/* Pin a snapshot against eviction, by this process (counted) and, through
 * flock, against other processes sharing the cache.  The last unpin of a
 * snapshot this process staged and did not mark analysed releases it
 * (evictable). */
int cache_pin(struct cache *c, const char *key, struct err *e) CK_WUR;
void cache_unpin(struct cache *c, const char *key);

/* Evict as described above until the blobs fit the budget; *freed (may be
 * NULL) gets the bytes removed.  A cache still over budget with nothing
 * evictable is not an error (it is logged). */
int cache_evict(struct cache *c, long long *freed, struct err *e) CK_WUR;

/* Bytes the blobs use (symlinks count as their own small size). */
long long cache_usage(const struct cache *c);

/* ---- room for a download ---- */

/* What a reservation found: the budget, the blobs' bytes after eviction,
 * the bytes already promised to downloads in progress (this process's
 * and every other live one's on the cache), the bytes asked for, the bytes
 * evicted, the bytes held by snapshots that cannot be evicted (pinned, or
 * not analysed yet), and how many snapshots other processes have pinned. */
struct cache_room {
    long long budget, usage, reserved, need, freed, held;
    int pinned_elsewhere;
};

/* Before a download of `bytes`: evict unpinned analysed snapshots, least
 * recently used first, until usage + reserved + bytes fits the budget,
 * then add `bytes` to the reserved total (give them back with
 * cache_release once the files are blobs, or on failure).  With no
 * budget it only counts.  When even eviction cannot make room, nothing
 * is reserved and ERR_INVALID says budget, bytes needed, bytes in the
 * cache, held and promised; *room (may be NULL) has the numbers either
 * way.  The check and the reservation happen under the cache's lock, so
 * daemons sharing the directory never promise the same bytes twice. */
int cache_reserve(struct cache *c, long long bytes, struct cache_room *room, struct err *e) CK_WUR;
void cache_release(struct cache *c, long long bytes);
/* This process's reserved bytes. */
long long cache_reserved(const struct cache *c);

/* The budget (0: none); settable while running (SIGHUP). */
void cache_set_budget(struct cache *c, long long budget_bytes);
long long cache_budget(const struct cache *c);

/* Snapshots this process has pinned. */
int cache_pins_held(const struct cache *c);

/* ---- the HuggingFace cache ---- */

/* The hub cache directory from the environment (hfcache_dir), "" when it
 * cannot be placed. */
void cache_hf_dir(char *out, size_t n);

/* The files of a revision (a ref or a commit) in the HF cache: appended
 * to *all (size from the file; sha256 when the blob's name is one), the
 * commit into all->commit.  Returns the number found, 0 when the revision
 * is not there.  hub_dir "" means cache_hf_dir(). */
int cache_hf_list(const char *hub_dir, const char *repo, const char *revision, struct hub_files *all,
                  struct err *e) CK_WUR;

/* One file of a revision in the HF cache: 1 and its real path (the blob)
 * in out, 0 when absent. */
int cache_hf_find(const char *hub_dir, const char *repo, const char *revision, const char *file,
                  char *out, size_t n);

#endif
