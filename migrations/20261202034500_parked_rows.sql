-- Rows that can never be processed are parked here with the reason, where an
-- operator sees them, instead of blocking or spinning the loop that reads
-- them (DESIGN.md, durability clause 10). Nothing reads these tables on a
-- hot path; an operator inspects them and deletes or replays rows by hand.

-- An outbox message the NATS server refuses for good (larger than its
-- max_payload). Its row left fulfil.outbox, so the messages behind it flow.
CREATE TABLE fulfil.parked_outbox (
    id          bigint      PRIMARY KEY,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     jsonb       NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);

-- A timer that cannot fire: its run is missing or cannot be loaded. Its row
-- left fulfil.timers, so the timers due after it fire.
CREATE TABLE fulfil.parked_timers (
    id          bigint      PRIMARY KEY,
    run_id      uuid        NOT NULL,
    step_id     text        NOT NULL,
    kind        text        NOT NULL,
    task_id     uuid,
    fire_at     timestamptz NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
