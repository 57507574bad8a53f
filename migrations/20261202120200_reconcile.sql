-- Reconcile (issue 14, part 3): the durable queue of due reconciles, one
-- row per enrolled request. A row is due at `due_at`; engines claim due
-- rows with FOR UPDATE SKIP LOCKED, start the request's reconcile run in
-- the same transaction and move `due_at` to the request's next phase
-- instant (or delete a one-off row). A row survives every restart, so a
-- reconcile asked for while another run of the request is in flight
-- ("queued") starts once that run has ended, whichever engine is up.
CREATE TABLE fulfil.reconcile_due (
    request_id    uuid        PRIMARY KEY REFERENCES fulfil.requests (id),
    promise       text        NOT NULL,
    due_at        timestamptz NOT NULL,
    -- The interval the phase was computed for (milliseconds); NULL for a
    -- one-off row of a Promise that does not reconcile on a clock. A row
    -- whose interval differs from its Promise's is re-phased.
    every_ms      bigint      CHECK (every_ms IS NULL OR every_ms >= 1000),
    -- Asked for by `POST /v1/requests/{id}/reconcile`: starts as soon as
    -- nothing of the request is in flight, outside `max_concurrent`.
    manual        boolean     NOT NULL DEFAULT false,
    requested_by  text,
    requested_at  timestamptz,
    -- The run it waits for, as last seen (shown to whoever asked).
    waiting_for   uuid
);
CREATE INDEX reconcile_due_due_at_idx ON fulfil.reconcile_due (due_at);
CREATE INDEX reconcile_due_promise_idx ON fulfil.reconcile_due (promise);

-- The request's latest reconcile run: how a delete finds a reconcile run
-- in flight to stop at its step boundary, and what `GET /v1/requests/{id}`
-- shows.
ALTER TABLE fulfil.requests ADD COLUMN reconcile_run_id uuid;
