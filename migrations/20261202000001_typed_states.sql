-- Every stored status and kind is one of its enum's spellings
-- (fulfil_core::status); a row that holds anything else is refused here,
-- not discovered later by the code that reads it.

-- Requests used to copy their run's status; their own vocabulary is coarser
-- (the run keeps the detail).
UPDATE fulfil.requests SET status = 'failed'
 WHERE status IN ('compensated', 'cancelled');
UPDATE fulfil.requests SET status = 'running'
 WHERE status IN ('pending', 'compensating');

ALTER TABLE fulfil.requests ADD CONSTRAINT requests_status_check CHECK (status IN
    ('accepted', 'running', 'succeeded', 'failed', 'deleting', 'deleted', 'delete_failed'));

ALTER TABLE fulfil.runs ADD CONSTRAINT runs_status_check CHECK (status IN
    ('pending', 'running', 'succeeded', 'failed', 'compensating', 'compensated', 'cancelled'));
ALTER TABLE fulfil.runs ADD CONSTRAINT runs_kind_check CHECK (kind IN
    ('configure', 'delete', 'reconcile'));

ALTER TABLE fulfil.steps ADD CONSTRAINT steps_status_check CHECK (status IN
    ('pending', 'ready', 'running', 'retrying', 'waiting', 'succeeded', 'failed', 'skipped',
     'cancelled', 'compensated'));
ALTER TABLE fulfil.steps ADD CONSTRAINT steps_compensation_status_check CHECK (compensation_status IN
    ('pending', 'ready', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'));

ALTER TABLE fulfil.attempts ADD CONSTRAINT attempts_status_check CHECK (status IN
    ('dispatched', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled'));
ALTER TABLE fulfil.attempts ADD CONSTRAINT attempts_kind_check CHECK (kind IN
    ('action', 'compensation'));

ALTER TABLE fulfil.timers ADD CONSTRAINT timers_kind_check CHECK (kind IN
    ('retry', 'compensation_retry', 'schedule_to_start', 'attempt_timeout', 'heartbeat_timeout',
     'run_timeout'));
