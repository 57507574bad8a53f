-- The delete lifecycle: a request remembers its delete run (so a second
-- delete answers with the same one), and a configure run stopped by a
-- delete remembers what to do when it ends (start that delete run, or mark
-- the request deleted) and who asked.
ALTER TABLE fulfil.requests ADD COLUMN delete_run_id uuid;

-- Set together, under the run's row lock, in the transaction that records
-- the delete; `delete_requested_by` set means the run is being handed off.
ALTER TABLE fulfil.runs
    ADD COLUMN delete_run_id       uuid,
    ADD COLUMN delete_requested_by text,
    ADD COLUMN delete_forced       boolean NOT NULL DEFAULT false;

-- No index on runs.kind: `GET /v1/runs?kind=` filters the id-ordered scan
-- the other filters use, and every run insert would pay for one.
