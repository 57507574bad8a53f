-- Admission policies (issue 16, docs/policies.md): `kind: Policy` documents
-- whose CEL rules every new request must pass before anything of it is
-- stored. The document is kept as applied; engines compile it when they
-- load it into their cache.

CREATE TABLE fulfil.policies (
    name        text        PRIMARY KEY,
    -- The document as applied; GET answers it.
    document    jsonb       NOT NULL,
    owner       text,
    -- The Promises it governs; null governs every Promise.
    promises    text[],
    applied_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A schedule tick whose request an admission policy refused is recorded
-- `denied`, with the policies and messages as its reason.
ALTER TABLE fulfil.schedule_ticks DROP CONSTRAINT schedule_ticks_outcome_check;
ALTER TABLE fulfil.schedule_ticks ADD CONSTRAINT schedule_ticks_outcome_check CHECK (outcome IN
    ('filed', 'skipped_overlap', 'missed', 'paused', 'buffered', 'failed', 'denied'));
