-- Compound Promises (docs/promises.md "Compound Promises"): a step
-- `uses: promise` files a child request. The child's request row names its
-- parent run and step; a parent finds its children by that index, and the
-- idempotency key `parent:<run>:<step>` keeps it to one child per step.
ALTER TABLE fulfil.requests
    ADD COLUMN parent_request_id uuid,
    ADD COLUMN parent_run_id uuid,
    ADD COLUMN parent_step text;
CREATE INDEX requests_parent_run_idx ON fulfil.requests (parent_run_id)
    WHERE parent_run_id IS NOT NULL;

-- The timers that carry a promise step across runs: filing its child
-- (`child_file`), the child's run or delete having ended (`child_done`, on
-- the parent run), and deleting the child to compensate (`child_delete`).
ALTER TABLE fulfil.timers DROP CONSTRAINT timers_kind_check;
ALTER TABLE fulfil.timers ADD CONSTRAINT timers_kind_check CHECK (kind IN
    ('retry', 'compensation_retry', 'schedule_to_start', 'attempt_timeout', 'heartbeat_timeout',
     'run_timeout', 'wait_matched', 'wait_timeout', 'sleep_done',
     'child_file', 'child_done', 'child_delete'));
CREATE INDEX requests_parent_request_idx ON fulfil.requests (parent_request_id)
    WHERE parent_request_id IS NOT NULL;
