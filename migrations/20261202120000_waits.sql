-- Engine-run steps (wait.event, approval, sleep): each waiting step is a row
-- here until it completes, fails or is cancelled (DESIGN.md "Waits").

ALTER TABLE fulfil.timers DROP CONSTRAINT timers_kind_check;
ALTER TABLE fulfil.timers ADD CONSTRAINT timers_kind_check CHECK (kind IN
    ('retry', 'compensation_retry', 'schedule_to_start', 'attempt_timeout', 'heartbeat_timeout',
     'run_timeout', 'wait_matched', 'wait_timeout', 'sleep_done'));

CREATE TABLE fulfil.waits (
    -- The task id of the step's attempt row: one wait per attempt.
    task_id        uuid        PRIMARY KEY,
    run_id         uuid        NOT NULL,
    step_id        text        NOT NULL,
    attempt        int         NOT NULL,
    kind           text        NOT NULL CONSTRAINT waits_kind_check CHECK (kind IN
                       ('event', 'approval', 'sleep')),
    began_at       timestamptz NOT NULL DEFAULT now(),
    -- When the step's timeout (or the sleep) ends it; NULL waits for ever.
    until          timestamptz,
    -- What the step shows as waiting_for (rendered settings, without
    -- decisions or until).
    waiting_for    jsonb       NOT NULL,
    -- Event waits: the key an arriving event is looked up by
    -- (type, correlation path, correlation value), and what a candidate is
    -- then checked against.
    match_key      text,
    subject        text,
    source         text,
    -- The match condition and the run's variables it reads, as they stood
    -- when the wait began.
    condition      text,
    context        jsonb,
    -- Set once, by the first matching event; the wait_matched timer then
    -- completes the step.
    matched_at     timestamptz,
    matched_ledger_id uuid,
    matched_event  jsonb,
    -- Approvals: [{by, decision, comment, at}] in order.
    decisions      jsonb       NOT NULL DEFAULT '[]',
    UNIQUE (run_id, step_id)
);

CREATE INDEX waits_by_match_key ON fulfil.waits (match_key)
    WHERE match_key IS NOT NULL AND matched_at IS NULL;
CREATE INDEX waits_by_kind ON fulfil.waits (kind, began_at);

-- Every (event type, correlation path) some wait was ever filed under: what an
-- arriving event reads to know which of its fields to look waits up by. Tiny
-- (one row per distinct wait.event shape), never pruned.
CREATE TABLE fulfil.wait_paths (
    event_type  text NOT NULL,
    path        text NOT NULL,
    PRIMARY KEY (event_type, path)
);

-- Lookback reads the ledger newest first by time within a type.
CREATE INDEX event_ledger_by_type_time ON fulfil.event_ledger (type, received_at DESC);
