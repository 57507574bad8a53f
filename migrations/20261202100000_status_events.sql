-- Status events (DESIGN.md "Events"): one row per history event whose kind is
-- a status kind (fulfil_core::status::StatusEventKind), written by the same
-- statement as the history row, published to `<prefix>.events.<kind>` by the
-- one status publisher that holds the advisory lock (engine/src/status_events.rs)
-- in `id` order, and deleted once the stream acknowledged it.
--
-- Kept apart from fulfil.outbox: tasks are published by whichever process
-- committed them, in any order, while status events must leave in the order
-- of each run's history (`seq` is the run's history sequence, sent as the
-- CloudEvent extension `fulfilseq`).
CREATE TABLE fulfil.status_outbox (
    id          bigserial   PRIMARY KEY,
    run_id      uuid        NOT NULL,
    seq         bigint      NOT NULL,
    kind        text        NOT NULL CONSTRAINT status_outbox_kind_check CHECK (kind IN
        ('request.accepted', 'run.started', 'step.started', 'step.succeeded', 'step.failed',
         'step.waiting', 'run.succeeded', 'run.failed', 'run.compensated', 'run.cancelled',
         'request.deleted', 'request.delete_failed')),
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A status event the NATS server refuses for good (larger than its
-- max_payload). Its row left fulfil.status_outbox, so the events behind it
-- flow; its run's subscribers see a gap in `fulfilseq`, never a reordering.
CREATE TABLE fulfil.parked_status_outbox (
    id          bigint      PRIMARY KEY,
    run_id      uuid        NOT NULL,
    seq         bigint      NOT NULL,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     jsonb       NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
