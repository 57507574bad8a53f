-- Timeouts, heartbeats, compensation (saga) and operator repair.

-- Why the run is stopping when it was not a step failure: an operator's
-- cancel or the run timeout. Set once, shown in the run's error.
ALTER TABLE fulfil.runs
    ADD COLUMN stop_reason text,
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

ALTER TABLE fulfil.steps
    -- Rendered input of the latest action attempt; compensations read it.
    ADD COLUMN input jsonb,
    ADD COLUMN compensation_status text,
    ADD COLUMN compensation_attempt int NOT NULL DEFAULT 0,
    ADD COLUMN compensation_outputs jsonb,
    ADD COLUMN compensation_error text;

-- An attempt is of the step's action or of its compensation; each counts
-- its attempts from 1.
ALTER TABLE fulfil.attempts
    ADD COLUMN kind text NOT NULL DEFAULT 'action',
    ADD COLUMN heartbeat_at timestamptz,
    ADD COLUMN heartbeat_details jsonb,
    DROP CONSTRAINT attempts_run_id_step_id_attempt_key,
    ADD CONSTRAINT attempts_run_step_kind_attempt_key UNIQUE (run_id, step_id, kind, attempt);

-- Attempt timers (schedule_to_start, attempt_timeout, heartbeat_timeout)
-- name their attempt; run and retry timers do not.
ALTER TABLE fulfil.timers ADD COLUMN task_id uuid;
CREATE INDEX timers_task_idx ON fulfil.timers (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX timers_run_idx ON fulfil.timers (run_id);
