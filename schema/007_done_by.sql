-- 007_done_by: which node stored a job's results.
--
-- lease_owner is cleared when a job is done, so after a node was cut off or
-- killed and its leases taken over, nothing said who finished the work.
-- done_by is set in the transaction that stores the rows (ingest) and is
-- NULL for jobs not done (or done before this migration).

ALTER TABLE jobs ADD COLUMN done_by text;
