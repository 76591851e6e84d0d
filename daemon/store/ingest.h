/*
 * ingest.h - a finished worker's rows into `measurements`, exactly once.
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
 *     long rows;
 *     int rc = ingest_commit(db, &reg, node, &claim, w.out_path, w.seconds, &rows, &e);
 *     // 0: stored; INGEST_LEASE_LOST: another node owns the jobs now, drop;
 *     // ERR_FORMAT: the rows are bad (fail the jobs); ERR_DB, ERR_NOMEM: try
 *     // again later (nothing is stored, the jobs stay ours)
 */
#ifndef CKPTD_INGEST_H
#define CKPTD_INGEST_H

#include "common/err.h"

#define INGEST_LEASE_LOST ERR_MISMATCH

struct db;
struct registry;
struct claim;

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
