/*
 * ingest.h - a finished worker's rows into `measurements`, exactly once,
 * item by item.
 *
 * The rows (COPY text from the worker: item, version, metric, layer, head,
 * idx, value) are checked and translated to measurement rows (run, step,
 * metric id, layer, head, idx, value) and streamed with COPY inside the
 * transaction that marks the checkpoint's jobs done — after locking those
 * jobs and checking the lease is still this node's.  Either the rows and the
 * `done` states commit together, or nothing does: a job's results appear
 * exactly once or not at all, and the primary key on measurements would
 * refuse a second copy anyway.  The jobs record the node that stored them
 * (jobs.done_by).
 *
 * In the same transaction: when c->artifact_dir is set, the files each
 * claimed item that needs artifacts wrote (artifacts.h; hashed before the
 * transaction begins) go into `artifacts`; when the claim holds the
 * sae_match item, its step's `sae_features` and the run's
 * `feature_lineages` are brought up to date (lineage.h).  Committing sends
 * NOTIFY ckptd_jobs: jobs that depend on these may be claimable now.
 *
 * Items are settled one by one (ingest_settle): what the worker reported
 * done (supervise_outcomes) is stored when its rows are whole, valid and
 * as many as reported; the rest fail in the same transaction, each job
 * with its own last_error and backoff (queue_fail), so one failing item
 * costs only its own job.  Rows of items that did not finish (a worker
 * killed while printing them) are read past and never stored.  A job is
 * done or failed exactly once: a retried claim holds only the jobs that
 * failed, and the primary key on measurements refuses a second copy.
 *
 *     struct item_outcome out[CLAIM_MAX_JOBS];
 *     struct ingest_result res;
 *     supervise_outcomes(&w, claim.items, claim.versions, claim.njobs, out);
 *     int rc = ingest_settle(db, &reg, node, &claim, w.out_path, w.seconds, out, &backoff,
 *                            &res, &e);
 *     // 0: stored and failed as out[] now says (res counts);
 *     // INGEST_LEASE_LOST: another node owns the jobs now, drop;
 *     // ERR_FORMAT: the server refused the rows (fail every job);
 *     // ERR_DB, ERR_NOMEM: nothing changed, try again later
 */
#ifndef CKPTD_INGEST_H
#define CKPTD_INGEST_H

#include "common/err.h"

#define INGEST_LEASE_LOST ERR_MISMATCH

struct db;
struct registry;
struct claim;
struct backoff;
struct item_outcome;

/* What ingest_settle did. */
struct ingest_result {
    long rows;              /* rows stored */
    int done, failed;       /* jobs marked done, jobs failed */
    long skipped;           /* rows of items that did not finish, not stored */
};

/* Store the done items of a claim and fail the others, in one transaction
 * (above).  out[i] (of c's job i) is updated: an item whose rows were
 * refused becomes ITEM_FAILED with "results rejected: <why>".  On any
 * error nothing is changed in the database. */
int ingest_settle(struct db *db, const struct registry *reg, const char *node,
                  const struct claim *c, const char *rows_path, double worker_seconds,
                  struct item_outcome *out, const struct backoff *b, struct ingest_result *res,
                  struct err *e) CK_WUR;

/* All or nothing: every item of the claim is done; any item's rows not
 * whole and valid refuse the whole output (ERR_FORMAT naming the first,
 * nothing stored, the jobs left running).  *rows gets the rows stored. */
int ingest_commit(struct db *db, const struct registry *reg, const char *node,
                  const struct claim *c, const char *rows_path, double worker_seconds,
                  long *rows, struct err *e) CK_WUR;

/* Parse one worker row (no trailing newline) into the measurement row for
 * COPY ("run\tstep\tmetric\tlayer\thead\tidx\tvalue\n") appended to out;
 * *job_index gets which of c's jobs it belongs to.  ERR_FORMAT with the
 * reason otherwise.  Exposed for tests. */
int ingest_translate(const struct registry *reg, const struct claim *c, char *line, char *out,
                     size_t n, int *job_index, struct err *e) CK_WUR;

#endif
