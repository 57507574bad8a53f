-- Inbound events (DESIGN.md "Events"): every received CloudEvent is kept in
-- the ledger with what each trigger did with it and why, for a retention
-- window; bus messages that could not be used are dead letters with their
-- original bytes and headers, so an operator can read why and replay them.
-- Ledger and dead-letter ids are UUIDv7: time-ordered, so "newest first"
-- and the list cursors are the primary key order.

CREATE TABLE fulfil.event_ledger (
    ledger_id       uuid        PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    via             text        NOT NULL CHECK (via IN ('bus', 'http', 'replay')),
    nats_subject    text,
    event_id        text        NOT NULL,
    source          text        NOT NULL,
    type            text        NOT NULL,
    -- The whole CloudEvent in JSON format: attributes, extensions, data.
    event           jsonb       NOT NULL,
    -- [{trigger, promise, outcome, request_id, run_id, reason, violations}]
    outcomes        jsonb       NOT NULL DEFAULT '[]',
    waits_completed jsonb       NOT NULL DEFAULT '[]',
    dead_letter_id  uuid
);

CREATE INDEX event_ledger_by_type ON fulfil.event_ledger (type, ledger_id DESC);
CREATE INDEX event_ledger_by_source ON fulfil.event_ledger (source, ledger_id DESC);
-- outcome=filed|duplicate|filtered|invalid: containment on the outcomes array.
CREATE INDEX event_ledger_by_outcome ON fulfil.event_ledger USING gin (outcomes jsonb_path_ops);
-- Retention deletes the oldest first.
CREATE INDEX event_ledger_by_age ON fulfil.event_ledger (received_at);

CREATE TABLE fulfil.dead_letters (
    id           uuid        PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    subject      text,
    reason       text        NOT NULL,
    -- {name: [values]} as received.
    headers      jsonb       NOT NULL DEFAULT '{}',
    payload      bytea       NOT NULL,
    ledger_id    uuid,
    replays      integer     NOT NULL DEFAULT 0,
    replayed_at  timestamptz,
    -- The receipt of the last replay: what each trigger did then.
    last_replay  jsonb
);

CREATE INDEX dead_letters_by_age ON fulfil.dead_letters (received_at);
