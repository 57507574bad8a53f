-- Fulfil's durable core. Everything lives in its own schema so a shared
-- database stays tidy. Forward-only: later changes get new files.
CREATE SCHEMA IF NOT EXISTS fulfil;

-- Every applied version of every Promise; versions are immutable.
CREATE TABLE fulfil.promises (
    name        text        NOT NULL,
    version     text        NOT NULL,
    spec        jsonb       NOT NULL,
    digest      text        NOT NULL,
    owner       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- The version new requests use.
CREATE TABLE fulfil.promise_heads (
    name        text        PRIMARY KEY,
    version     text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (name, version) REFERENCES fulfil.promises (name, version)
);

CREATE TABLE fulfil.requests (
    id               uuid        PRIMARY KEY,
    promise          text        NOT NULL,
    promise_version  text        NOT NULL,
    params           jsonb       NOT NULL,
    idempotency_key  text,
    status           text        NOT NULL,
    run_id           uuid,
    outputs          jsonb,
    created_by       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (promise, promise_version) REFERENCES fulfil.promises (name, version),
    UNIQUE (promise, idempotency_key)
);
CREATE INDEX requests_promise_idx ON fulfil.requests (promise, id DESC);

CREATE TABLE fulfil.runs (
    id               uuid        PRIMARY KEY,
    request_id       uuid        NOT NULL REFERENCES fulfil.requests (id),
    promise          text        NOT NULL,
    promise_version  text        NOT NULL,
    kind             text        NOT NULL,
    status           text        NOT NULL,
    -- params, request and env as the run's expressions see them, captured
    -- once so every engine renders the same inputs.
    context          jsonb       NOT NULL,
    outputs          jsonb,
    error            text,
    -- Last history sequence number; bumped under the run's row lock.
    history_seq      bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX runs_status_idx ON fulfil.runs (status, id DESC);
CREATE INDEX runs_promise_idx ON fulfil.runs (promise, id DESC);
CREATE INDEX runs_request_idx ON fulfil.runs (request_id);

CREATE TABLE fulfil.steps (
    run_id      uuid        NOT NULL REFERENCES fulfil.runs (id),
    step_id     text        NOT NULL,
    position    int         NOT NULL,
    status      text        NOT NULL,
    attempt     int         NOT NULL DEFAULT 0,
    outputs     jsonb,
    error       text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step_id)
);

-- One row per dispatched attempt; task_id is the key results are applied by.
CREATE TABLE fulfil.attempts (
    task_id      uuid        PRIMARY KEY,
    run_id       uuid        NOT NULL,
    step_id      text        NOT NULL,
    attempt      int         NOT NULL,
    status       text        NOT NULL,
    handler      text        NOT NULL,
    queue        text        NOT NULL,
    input        jsonb       NOT NULL,
    worker       text,
    error        jsonb,
    dispatched_at timestamptz NOT NULL DEFAULT now(),
    deadline     timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    UNIQUE (run_id, step_id, attempt),
    FOREIGN KEY (run_id, step_id) REFERENCES fulfil.steps (run_id, step_id)
);

-- Append-only, ordered per run.
CREATE TABLE fulfil.history (
    run_id   uuid        NOT NULL REFERENCES fulfil.runs (id),
    seq      bigint      NOT NULL,
    type     text        NOT NULL,
    step_id  text,
    attempt  int,
    actor    text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    data     jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);

-- Transactional outbox: messages committed with the state that caused them,
-- published to JetStream by the relay, deleted once the stream acknowledged.
CREATE TABLE fulfil.outbox (
    id          bigserial   PRIMARY KEY,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Durable timers: retry backoffs. Due timers are claimed with SKIP LOCKED, so
-- any engine may fire them and each fires once.
CREATE TABLE fulfil.timers (
    id       bigserial   PRIMARY KEY,
    run_id   uuid        NOT NULL REFERENCES fulfil.runs (id),
    step_id  text        NOT NULL,
    kind     text        NOT NULL,
    fire_at  timestamptz NOT NULL
);
CREATE INDEX timers_fire_at_idx ON fulfil.timers (fire_at);
