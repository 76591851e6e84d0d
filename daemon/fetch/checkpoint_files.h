/*
 * checkpoint_files.h - what a staged checkpoint is made of, in the database.
 *
 * Once a checkpoint's files are known (downloaded and verified, or read in
 * place), their names, sizes and sha256s go to checkpoint_files, and the
 * checkpoint gets its size and weights sha256.  Checkpoints of one run whose
 * weights are identical are marked as duplicates of the earliest step that
 * is not suspect (the copy that fits the run's trajectory: the integrity
 * check, daemon/detect/integrity.h, marks the others), so their results
 * can be told apart from real change.
 *
 * For hub sources the commit the files came from (files->commit) is kept in
 * checkpoints.hub_commit.  A checkpoint staged at another commit than the
 * one recorded is a revision that moved on the hub (a re-upload): its
 * results are the old files', so in the same transaction its done jobs
 * are queued again (attempts 0), the rows measured at its step
 * (measurements, artifacts, sae_features) are removed, the change goes
 * into revision_changes (old and new commit and weights, jobs queued, rows
 * removed; schema/011_hub_commit.sql) and is logged as a warning.
 *
 *     long long dup;
 *     if (checkpoint_files_record(db, claim.checkpoint_id, stage_files(st), &dup, &e) < 0) ...
 *     if (dup >= 0) log_info("duplicate checkpoint", "of_step=%lld", dup);
 */
#ifndef CKPTD_CHECKPOINT_FILES_H
#define CKPTD_CHECKPOINT_FILES_H

#include "common/err.h"

struct db;
struct hub_files;

/* A checkpoint's files are known (fetched or read in place): store them in
 * checkpoint_files, set checkpoints.size and .sha256 (the weights' sha256,
 * or for shards the sha256 of their sorted sha256s joined by commas), and
 * mark duplicates: among the run's checkpoints whose weight files have the
 * same sha256s, the earliest step not marked suspect is the original and
 * every other one gets duplicate_of = it; record the commit as above.  One
 * transaction, serialised per run.  *dup_step gets the step this checkpoint
 * repeats, or -1.  Returns 0 when recorded, 1 when these files (names,
 * sizes, sha256s; and the commit, for a hub source) are the ones already
 * recorded (staged again: a later claim of the checkpoint, a retry):
 * nothing is written, and nothing changed for the integrity check to
 * judge; or a negative code. */
int checkpoint_files_record(struct db *db, long long checkpoint_id, const struct hub_files *files,
                            long long *dup_step, struct err *e) CK_WUR;

#endif
