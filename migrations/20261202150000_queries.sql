-- Operator queries at scale (issue 15, part 1): every filter of
-- `GET /v1/runs` is served by an index, and retention finds old finished
-- runs without scanning. Lists are ordered by id (UUIDv7: creation order),
-- so each filtered index ends in `id DESC` and a page is one range scan.

-- The team owning the run's Promise (`metadata.owner`), copied at creation
-- so `?owner=` reads one index instead of joining the Promise versions.
ALTER TABLE fulfil.runs ADD COLUMN owner text;
UPDATE fulfil.runs r SET owner = p.owner
FROM fulfil.promises p
WHERE p.name = r.promise AND p.version = r.promise_version AND p.owner IS NOT NULL;
CREATE INDEX runs_owner_idx ON fulfil.runs (owner, id DESC) WHERE owner IS NOT NULL;

-- Most runs configure; an index of the other kinds costs those inserts
-- nothing, and `?kind=configure` reads the id order (nearly every row matches).
CREATE INDEX runs_rare_kind_idx ON fulfil.runs (kind, id DESC) WHERE kind <> 'configure';

-- A request's runs, newest first, in one range scan (replaces the plain index).
CREATE INDEX runs_request_id_idx ON fulfil.runs (request_id, id DESC);
DROP INDEX fulfil.runs_request_idx;

-- Retention walks finished runs oldest first.
CREATE INDEX runs_finished_idx ON fulfil.runs (finished_at) WHERE finished_at IS NOT NULL;

-- `?waiting_for=worker`: the open attempts (a few thousand among millions).
CREATE INDEX attempts_open_idx ON fulfil.attempts (run_id)
    WHERE status IN ('dispatched', 'running');

-- `?waiting_for=retry` reads retry timers by kind; `?waiting_for=event|approval|sleep`
-- uses waits_by_kind.
CREATE INDEX timers_kind_run_idx ON fulfil.timers (kind, run_id);

-- `GET /v1/requests?status=` in id order.
CREATE INDEX requests_status_idx ON fulfil.requests (status, id DESC);
