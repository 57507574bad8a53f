-- Schedules (DESIGN.md "Schedules and reconcile"): a Promise filed on a
-- clock. Every engine runs the ticker; a due schedule is claimed with
-- FOR UPDATE SKIP LOCKED, and its tick rows, the requests they file and its
-- advanced next_fire_at commit in one transaction, so a tick is decided
-- exactly once whatever the number of engines and restarts.

CREATE TABLE fulfil.schedules (
    name            text        PRIMARY KEY,
    -- The document as applied (defaults filled in); GET answers it.
    document        jsonb       NOT NULL,
    promise         text        NOT NULL,
    cron            text        NOT NULL,
    -- IANA name.
    timezone        text        NOT NULL,
    overlap         text        NOT NULL CHECK (overlap IN ('skip', 'buffer_one', 'allow')),
    catch_up_ms     bigint      NOT NULL DEFAULT 0 CHECK (catch_up_ms >= 0),
    params          jsonb       NOT NULL DEFAULT '{}',
    paused          boolean     NOT NULL DEFAULT false,
    -- The next tick not yet decided; null when the expression has no more.
    next_fire_at    timestamptz,
    -- buffer_one: the nominal time of the tick waiting for the run in
    -- flight to end (its ledger row says `buffered`).
    buffered_at     timestamptz,
    -- The request the last filed tick filed: "in flight" is its status.
    last_request_id uuid,
    paused_by       text,
    paused_at       timestamptz,
    resumed_by      text,
    resumed_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The ticker's claim and its sleep ("earliest next_fire_at").
CREATE INDEX schedules_due ON fulfil.schedules (next_fire_at);
CREATE INDEX schedules_buffered ON fulfil.schedules (buffered_at) WHERE buffered_at IS NOT NULL;

-- The tick ledger: one row per tick of every schedule, kept when the
-- schedule is deleted. The primary key makes a tick decided twice an error
-- rather than a second row, and serves newest-first paging per schedule
-- (scanned backwards).
CREATE TABLE fulfil.schedule_ticks (
    schedule    text        NOT NULL,
    nominal_at  timestamptz NOT NULL,
    -- clock_timestamp() of the deciding transaction.
    fired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    outcome     text        NOT NULL CHECK (outcome IN
                    ('filed', 'skipped_overlap', 'missed', 'paused', 'buffered', 'failed')),
    request_id  uuid,
    reason      text,
    PRIMARY KEY (schedule, nominal_at)
);
