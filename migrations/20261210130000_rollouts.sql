-- Controlled upgrades (issue 18 item 7, docs/rollouts.md): a rollout
-- re-runs the configure workflow of a Promise's live requests on another
-- version, at most `max_concurrent` at once, as runs of the new kind
-- `upgrade`. Its targets are fixed when it is created, one row each in
-- `rollout_targets`; an engine starts them under the Promise's advisory
-- lock, and the run's end moves its target in the transaction that ends
-- the run, so progress is exact.

ALTER TABLE fulfil.runs DROP CONSTRAINT runs_kind_check;
ALTER TABLE fulfil.runs ADD CONSTRAINT runs_kind_check CHECK (kind IN
    ('configure', 'delete', 'reconcile', 'upgrade'));

-- A pinned request stays on its version: no rollout ever targets it.
ALTER TABLE fulfil.requests ADD COLUMN pinned boolean NOT NULL DEFAULT false;

CREATE TABLE fulfil.rollouts (
    id             uuid        PRIMARY KEY,
    promise        text        NOT NULL,
    to_version     text        NOT NULL,
    max_concurrent int         NOT NULL CHECK (max_concurrent BETWEEN 1 AND 1000),
    -- CEL over `params` and `request`; NULL: every live request.
    selector       text,
    status         text        NOT NULL CHECK (status IN
        ('running', 'paused', 'succeeded', 'completed_with_failures', 'cancelled')),
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    FOREIGN KEY (promise, to_version) REFERENCES fulfil.promises (name, version)
);
-- At most one active rollout per Promise, whatever the number of API
-- processes racing to create one.
CREATE UNIQUE INDEX rollouts_one_active_idx ON fulfil.rollouts (promise)
    WHERE status IN ('running', 'paused');
CREATE INDEX rollouts_promise_idx ON fulfil.rollouts (promise, id DESC);
CREATE INDEX rollouts_running_idx ON fulfil.rollouts (id) WHERE status = 'running';

CREATE TABLE fulfil.rollout_targets (
    rollout_id   uuid        NOT NULL REFERENCES fulfil.rollouts (id),
    -- No foreign key: run retention removes deleted requests, and a
    -- target (`skipped`) outlives its request.
    request_id   uuid        NOT NULL,
    from_version text        NOT NULL,
    state        text        NOT NULL CHECK (state IN
        ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    run_id       uuid,
    error        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, request_id)
);
CREATE INDEX rollout_targets_state_idx ON fulfil.rollout_targets (rollout_id, state);
CREATE UNIQUE INDEX rollout_targets_run_idx ON fulfil.rollout_targets (run_id)
    WHERE run_id IS NOT NULL;
