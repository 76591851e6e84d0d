/*
 * queue.h - the crash-safe job queue in PostgreSQL.
 *
 * One job per (checkpoint, battery item, item version).  A node claims all
 * the queued jobs of one checkpoint together: the checkpoint row is locked
 * with FOR UPDATE SKIP LOCKED (so concurrent claimers never wait on each
 * other, and never split a checkpoint), and its jobs become `running` with
 * a lease (owner, expiry).  The owner renews the lease while its worker
 * runs; a lease that expires (node dead, cut off) is returned to the queue
 * by any node.  Each claim counts an attempt; a failure waits
 * backoff_base * 2^(attempts-1) seconds (capped, with ±20% jitter) before
 * the job is claimable again, and after max_attempts the job is `dead` with
 * its last error kept.  Completion happens in ingest.c, in the transaction
 * that stores the results.
 *
 * Every state change that makes work claimable sends NOTIFY ckptd_jobs, so
 * idle daemons LISTENing wake at once; they also poll.
 *
 *     struct claim c;
 *     int got = queue_claim(db, "node1", 60, &c, &e);   // 1: claimed, 0: none
 *     ... queue_heartbeat(db, "node1", 60, c.job_ids, c.njobs, &e) ...
 *     ... on failure: queue_fail(db, "node1", c.job_ids, c.njobs, msg, &backoff, &e);
 */
#ifndef CKPTD_QUEUE_H
#define CKPTD_QUEUE_H

#include "common/err.h"

#define CLAIM_MAX_JOBS 64
#define CLAIM_OPTIONS_MAX 8192
#define QUEUE_CHANNEL "ckptd_jobs"

struct claim {
    long long checkpoint_id;
    long long run_id;
    long long step;
    char run[256];
    char url[2048];
    char source[2048];    /* the run's source (the stage fetches from it) */
    char options[CLAIM_OPTIONS_MAX]; /* the run's options JSON (add-run keeps it shorter) */
    int njobs;
    long long job_ids[CLAIM_MAX_JOBS];
    char items[CLAIM_MAX_JOBS][64];
    int versions[CLAIM_MAX_JOBS];
    int attempts;         /* highest attempt number among the jobs */
    long long prev_step;  /* the step whose artifacts the jobs read (--prev-artifacts), or -1 */
    int index, count;     /* the checkpoint's place among the run's, in step order */
    char artifact_dir[1024]; /* the artifact root the worker wrote under (set by serve when
                                an item needs artifacts), or "" */
};

struct backoff {
    double base_s, max_s;
};

struct db;

/* An item with the version to enqueue. */
struct queue_item {
    const char *name;
    int version;
};

/* Create the run (or find it: re-adding is idempotent), one checkpoint per
 * step and one job per (checkpoint, item) that does not exist yet.  A run
 * name that exists with a different source is an error.  *new_ckpts and
 * *new_jobs (may be NULL) get what was added. All in one transaction. */
int queue_add_run(struct db *db, const char *name, const char *source, const char *schedule,
                  const long long *steps, int nsteps, const struct queue_item *items, int nitems,
                  const char *options_json, int max_attempts, long *new_ckpts, long *new_jobs,
                  struct err *e) CK_WUR;

/* Claim the queued, due jobs of one checkpoint whose dependencies allow
 * it, the checkpoint whose due jobs have the lowest priority first (then the
 * oldest), and of it the jobs of that priority or lower (policy.h) (job_ready() in schema/005_sae.sql: a job of an item with depends_on
 * waits for that item's job of the same checkpoint, unless both are
 * claimed together; one that reads the previous checkpoint's artifacts
 * waits for the job there that writes them).  Jobs come in the order the
 * worker must run them: each after the item it depends on, else by id.
 * c->prev_step is the previous checkpoint whose artifacts the readers among
 * them get, or -1 (none: first checkpoint, the writing job dead or absent).
 * Returns 1 and fills c, 0 when nothing is claimable, or a negative code. */
int queue_claim(struct db *db, const char *node, double lease_s, struct claim *c,
                struct err *e) CK_WUR;

/* Renew the lease on jobs; returns how many are still ours (< n: the lease
 * was lost, the work must be dropped), or a negative code. */
int queue_heartbeat(struct db *db, const char *node, double lease_s, const long long *ids, int n,
                    struct err *e) CK_WUR;

/* A failed attempt: back to the queue after the backoff, or dead after the
 * last attempt; `error` is kept in last_error. Only jobs still leased by
 * `node` are touched.  Queued jobs of the same checkpoint that depend on a
 * job now dead become dead too (here and in queue_expire). */
int queue_fail(struct db *db, const char *node, const long long *ids, int n, const char *error,
               const struct backoff *b, struct err *e) CK_WUR;

/* Give jobs back without counting the attempt (orderly shutdown). */
int queue_release(struct db *db, const char *node, const long long *ids, int n,
                  struct err *e) CK_WUR;

/* Give jobs back without counting the attempt because this node could not
 * do the work (its disk is full), with `why` as their last_error; they are
 * due at once (another node may have room). */
int queue_giveback(struct db *db, const char *node, const long long *ids, int n, const char *why,
                   struct err *e) CK_WUR;

/* Return every expired lease to the queue (or make it dead); returns the
 * number of jobs affected. */
int queue_expire(struct db *db, const struct backoff *b, struct err *e) CK_WUR;

/* Re-queue dead jobs of a run (by name) or one job (by id, with the dead
 * jobs of its checkpoint that depend on its item): attempts reset.
 * Returns the number re-queued. */
int queue_retry(struct db *db, const char *run_or_job, struct err *e) CK_WUR;

/* Jobs queued (due now or later) and running, over all runs. */
int queue_counts(struct db *db, long *queued, long *running, struct err *e) CK_WUR;

/* Download progress of a checkpoint on this node (state fetching, done or
 * failed; total < 0: unknown; error may be NULL). */
int queue_fetch_progress(struct db *db, long long checkpoint_id, const char *node, const char *state,
                         long long done, long long total, double rate, const char *error,
                         struct err *e) CK_WUR;

/* NOTIFY idle daemons; LISTEN on this connection. */
int queue_notify(struct db *db, struct err *e) CK_WUR;
int queue_listen(struct db *db, struct err *e) CK_WUR;

#endif
