/*
 * owner.h - which daemon a file in a shared directory belongs to, and
 * whether that daemon still lives.
 *
 * Several daemons may put files into one directory (a node's spool, a
 * cache several daemons share).  Each holds, for as long as it lives, an
 * exclusive flock on DIR/.owners/<tag>.lock, where the tag is
 * "<node>.<pid>" (the node name with every character outside
 * [A-Za-z0-9_-] made '_', so the tag's only dot is the one before the pid),
 * and names the files it makes there "<tag>.<something>".  The kernel
 * drops a flock when the last descriptor of its holder closes, however the
 * holder ended; so a lock nobody holds belongs to a dead daemon, and
 * neither a reused pid nor a clock can make a dead owner look alive or a
 * live one dead.  Nothing is judged by age.
 *
 * On open, and on every owner_sweep, the locks nobody holds are taken in
 * turn: the caller's `on_dead` removes what carries that tag
 * (owner_remove_tagged does it for files directly in a directory), then
 * the lock file goes.  A live owner's files — another process's or ours —
 * are never touched.  A lock file also carries a short text its owner
 * writes (owner_write) and others read (owner_each_live): the cache keeps
 * each daemon's reserved bytes there.
 *
 *     struct owner *o = owner_open("/var/spool/ckptd", "node1", remove_spool, NULL, &e);
 *     // dead daemons' spool files are gone; ours will be "node1.<pid>.*"
 *     snprintf(name, sizeof name, "%s.ck17.rows", owner_tag(o));
 *     ...
 *     owner_close(o);   // our lock file removed
 *
 * The lock is a plain flock: the directory must be local to the host (or a
 * file system whose flock reaches every host that uses it).  Where flock
 * does not work at all, owners are never judged dead and nothing is
 * removed.
 */
#ifndef CKPTD_OWNER_H
#define CKPTD_OWNER_H

#include <stddef.h>

#include "common/err.h"

#define OWNER_TAG_MAX 96

struct owner;

/* Called for a dead owner's tag, with its lock held (no other sweeper
 * runs for it meanwhile); `dir` is the shared directory. */
typedef void (*owner_dead_fn)(const char *dir, const char *tag, void *arg);

/* Called for each live owner but the caller, with the text it wrote. */
typedef void (*owner_live_fn)(const char *tag, const char *text, void *arg);

/* ---- lifetime ---- */

/* Sweep the dead owners of `dir` (on_dead may be NULL: locks only), then
 * become an owner of it: the lock is created under a temporary name,
 * locked, and renamed into place, so it is never seen unlocked.  The
 * directory and .owners/ are created.  NULL with e filled on failure
 * (nothing is left behind). */
struct owner *owner_open(const char *dir, const char *node, owner_dead_fn on_dead, void *arg,
                         struct err *e);

/* Remove our lock file and release it.  Accepts NULL. */
void owner_close(struct owner *o);

/* "<node>.<pid>", and the shared directory.  Borrowed. */
const char *owner_tag(const struct owner *o);
const char *owner_dir(const struct owner *o);

/* ---- the others ---- */

/* Sweep again (daemons that died since): returns the number of dead
 * owners removed, or a negative code. */
int owner_sweep(struct owner *o, owner_dead_fn on_dead, void *arg, struct err *e) CK_WUR;

/* Each live owner but us with its text (dead ones found on the way are
 * swept with on_dead).  Returns the number of live owners listed. */
int owner_each_live(struct owner *o, owner_live_fn fn, void *arg, owner_dead_fn on_dead,
                    void *dead_arg, struct err *e) CK_WUR;

/* Whether the owner `tag` of o's directory lives: 1 (its lock is held,
 * or it is o), 0 (no lock file, or nobody holds it), negative when flock
 * cannot tell.  Nothing is taken or removed. */
int owner_alive(const struct owner *o, const char *tag);

/* Replace our lock file's text (at most 255 bytes). */
int owner_write(struct owner *o, const char *text, struct err *e) CK_WUR;

/* ---- helpers ---- */

/* Remove the files directly in `dir` whose names begin with "<tag>.";
 * returns how many. */
int owner_remove_tagged(const char *dir, const char *tag);

/* The tag a node and pid get (what owner_open uses). */
void owner_make_tag(char *out, size_t n, const char *node, long pid);

#endif
